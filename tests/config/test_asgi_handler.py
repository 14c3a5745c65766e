"""config.asgi_handler: a sync view's request runs the middleware in sync mode (one thread
hop for the whole request), an async view's (the SSE stream) in async mode, and every
middleware still runs on both."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from asgiref.sync import iscoroutinefunction
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.utils.decorators import sync_and_async_middleware

from config.asgi_handler import OneHopASGIHandler
from tests.support.asgi import http_scope

pytestmark = pytest.mark.django_db(transaction=True)

modes_seen: list[str] = []


@sync_and_async_middleware
def recording_middleware(get_response: Any) -> Any:
    """Notes the mode Django put it in, as Django's own middleware (sessions, CSRF, ...)
    would run in that mode: async mode means a thread hop for each of their hooks."""
    if iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> HttpResponse:
            modes_seen.append("async")
            return await get_response(request)

        return async_middleware

    def sync_middleware(request: HttpRequest) -> HttpResponse:
        modes_seen.append("sync")
        return get_response(request)

    return sync_middleware


def get(handler: ASGIHandler, path: str, authorization: str = "") -> tuple[int, dict, bytes]:
    scope = http_scope(path, "GET", (b"authorization", authorization.encode()))
    requests = [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.sleep(3600)  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(handler(scope, receive, send), timeout=30))
    headers = {name.decode().lower(): value.decode() for name, value in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(message.get("body", b"") for message in sent[1:])


@pytest.fixture
def handlers(settings) -> dict[str, ASGIHandler]:
    modes_seen.clear()
    middleware = [*settings.MIDDLEWARE, f"{__name__}.recording_middleware"]
    with override_settings(MIDDLEWARE=middleware):
        return {"ours": OneHopASGIHandler(), "django": ASGIHandler()}


def test_a_sync_view_runs_the_middleware_in_sync_mode_where_django_would_hop_per_hook(
    handlers, owner_key, catalogue
) -> None:
    status, headers, body = get(handlers["ours"], "/api/v1/models", f"Bearer {owner_key.secret}")
    assert status == 200
    assert json.loads(body)
    assert modes_seen == ["sync"]
    # Every layer still ran: request context, security, clickjacking.
    assert headers["x-request-id"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"

    modes_seen.clear()
    status, _, _ = get(handlers["django"], "/api/v1/models", f"Bearer {owner_key.secret}")
    assert (status, modes_seen) == (200, ["async"])


def test_an_unknown_path_is_answered_by_the_sync_chain_in_the_json_error_format(handlers) -> None:
    status, headers, body = get(handlers["ours"], "/api/v1/no-such-endpoint")
    assert status == 404
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "not_found"
    assert modes_seen == ["sync"]


def test_an_async_view_keeps_the_async_chain(handlers, owner_key) -> None:
    status, _, body = get(
        handlers["ours"], f"/api/v1/messages/{uuid.uuid4()}/stream", f"Bearer {owner_key.secret}"
    )
    assert status == 404
    assert json.loads(body)["error"]["code"] == "not_found"
    assert modes_seen == ["async"]
