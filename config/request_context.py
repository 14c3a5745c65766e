"""What the code is working for right now (request, tenant, Celery task), for every log line.

A context variable holds it, so it follows a request through sync and async views under
ASGI (asgiref copies the context into the threads it runs sync code in, and copies changes
back), and a task through a worker. `config.logging.RequestContextFilter` reads it.

The tenant is read lazily from the request: authentication sets `request.tenant` long after
the middleware bound the request, and every line logged from then on carries it. A task's
lines carry its id and name, not a tenant.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware

REQUEST_ID_HEADER = "X-Request-ID"
# Anything else a client sends (too long, spaces, newlines, quotes) could forge or break log
# lines, so it is replaced rather than trusted.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

access_logger = logging.getLogger("access")


@dataclasses.dataclass(frozen=True)
class LogContext:
    request: HttpRequest | None = None
    request_id: str | None = None
    task_id: str | None = None
    task_name: str | None = None

    def current_tenant(self) -> Any:
        """A conversations.Tenant, typed loosely so config imports no app."""
        return getattr(self.request, "tenant", None)


_EMPTY = LogContext()
_context: contextvars.ContextVar[LogContext] = contextvars.ContextVar("log_context", default=_EMPTY)
# Tokens of the task scopes still open, by task id: prerun and postrun are separate signals.
_task_tokens: dict[str, contextvars.Token[LogContext]] = {}


def current() -> LogContext:
    return _context.get()


def _tenant_fields(tenant: Any) -> dict[str, Any]:
    return {
        "tenant": getattr(tenant, "slug", str(tenant)),
        "tenant_id": getattr(tenant, "pk", None),
    }


def log_fields() -> dict[str, Any]:
    """The fields every log line gets: only those that are known right now."""
    context = _context.get()
    if context is _EMPTY:
        return {}
    fields: dict[str, Any] = {}
    if context.request_id is not None:
        fields["request_id"] = context.request_id
    tenant = context.current_tenant()
    if tenant is not None:
        fields |= _tenant_fields(tenant)
    if context.task_id is not None:
        fields["task_id"] = context.task_id
        fields["task_name"] = context.task_name
    return fields


def request_log_fields(request: object) -> dict[str, Any]:
    """The same fields from a request object, for lines logged after its scope ended."""
    fields: dict[str, Any] = {}
    request_id = getattr(request, "request_id", None)
    if isinstance(request_id, str):
        fields["request_id"] = request_id
    tenant = getattr(request, "tenant", None)
    if tenant is not None:
        fields |= _tenant_fields(tenant)
    return fields


@contextmanager
def request_scope(request: HttpRequest, request_id: str) -> Iterator[None]:
    token = _context.set(
        dataclasses.replace(_context.get(), request=request, request_id=request_id)
    )
    try:
        yield
    finally:
        _context.reset(token)


def task_scope_begin(task_id: str, task_name: str | None) -> None:
    # Keeps an eagerly applied outer task (or a request) in place below the task's scope.
    _task_tokens[task_id] = _context.set(
        dataclasses.replace(_context.get(), task_id=task_id, task_name=task_name)
    )


def task_scope_end(task_id: str) -> None:
    token = _task_tokens.pop(task_id, None)
    if token is None:
        return
    try:
        _context.reset(token)
    except ValueError:
        # Ended in another context than it began in (should not happen): never leak the id.
        _context.set(_EMPTY)


def incoming_request_id(request: HttpRequest) -> str:
    candidate = request.headers.get(REQUEST_ID_HEADER, "")
    if SANE_REQUEST_ID.fullmatch(candidate):
        return candidate
    return uuid.uuid4().hex


def route_name(request: HttpRequest) -> str:
    """The URL pattern's name: a bounded label, unlike the raw path."""
    match = getattr(request, "resolver_match", None)
    if match is not None:
        return match.view_name
    static_prefix = "/" + settings.STATIC_URL.lstrip("/")
    if request.path.startswith(static_prefix):
        return "static"  # served by WhiteNoise before URL resolution
    return "unmatched"


def _finish(request: HttpRequest, response: HttpResponse, request_id: str, started: float) -> None:
    from config.metrics import http_request_observe

    seconds = time.perf_counter() - started
    response[REQUEST_ID_HEADER] = request_id
    route = route_name(request)
    http_request_observe(
        method=request.method or "", route=route, status=response.status_code, seconds=seconds
    )
    duration_ms = round(seconds * 1000, 2)
    streaming = bool(getattr(response, "streaming", False))
    # The path only: query strings may carry secrets. A streamed response (SSE) is logged
    # when its headers are ready, so its duration is the time to the first byte.
    access_logger.info(
        "%s %s %s %.2fms",
        request.method,
        request.path,
        response.status_code,
        duration_ms,
        extra={
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": duration_ms,
            "route": route,
            "streaming": streaming,
        },
    )


@sync_and_async_middleware
def request_context_middleware(
    get_response: Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]],
) -> Callable[[HttpRequest], Any]:
    """First in MIDDLEWARE: binds the request id, then writes the access line and metrics."""
    if iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> HttpResponse:
            started = time.perf_counter()
            request_id = incoming_request_id(request)
            request.request_id = request_id  # type: ignore[attr-defined]
            with request_scope(request, request_id):
                response = await get_response(request)  # type: ignore[misc]
                _finish(request, response, request_id, started)
            return response

        return async_middleware

    def middleware(request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        request_id = incoming_request_id(request)
        request.request_id = request_id  # type: ignore[attr-defined]
        with request_scope(request, request_id):
            response = get_response(request)
            _finish(request, response, request_id, started)  # type: ignore[arg-type]
        return response  # type: ignore[return-value]

    return middleware
