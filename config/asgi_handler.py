"""Django's ASGI handler, serving a request to a sync view in one thread hop.

Django runs the middleware of an ASGI request in async mode wherever it can, and a
`MiddlewareMixin` middleware (sessions, CSRF, authentication, messages, ...) in async mode
runs each of its hooks through `sync_to_async`: with our stack that is a dozen round trips
between the event loop and a thread per API request, then one more for the (sync) DRF view.
They cost CPU and latency on every request and buy nothing, since the view is sync anyway.

So a request whose view is sync goes through a second, sync-mode copy of the same middleware
chain, in one `sync_to_async` call: the middleware and the view run one after the other in
the request's thread. A request whose view is async (the SSE streams) keeps Django's async
chain, so waiting on a stream holds no thread.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, resolve


def view_is_async(request: HttpRequest) -> bool:
    try:
        match = resolve(request.path_info)
    except Resolver404:
        return False  # the sync chain answers it (a 404 in our error format)
    return iscoroutinefunction(match.func)


class OneHopASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=is_async)
        self._sync_handler = BaseHandler()
        self._sync_handler.load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        if view_is_async(request):
            return await super().get_response_async(request)
        return await sync_to_async(self._sync_handler.get_response, thread_sensitive=True)(request)
