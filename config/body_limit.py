"""Refuses request bodies over MAX_REQUEST_BODY_BYTES while they arrive, under ASGI.

Django's ASGI handler reads the whole body (spooling it to a temporary file past 2.5 MB)
before any middleware runs, and a chunked body has no Content-Length for a middleware to
look at. So this wraps the Django application itself: a declared length over the limit is
answered 413 without reading a byte (and without the `100 Continue` a client may wait for),
and otherwise the bytes of `http.request` messages are counted as Django receives them; the
moment they pass the limit Django is told the client went away (it then stops without
answering) and the 413 goes out with `Connection: close`, so the server reads no further.

ApiJsonErrorMiddleware keeps its own Content-Length check for WSGI and the test client.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings

from config.errors import error_body
from config.request_context import REQUEST_ID_HEADER, SANE_REQUEST_ID

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApplication = Callable[[Scope, Receive, Send], Awaitable[None]]

TOO_LARGE_CODE = "request_too_large"
CLIENT_DISCONNECTED: Message = {"type": "http.disconnect"}


def too_large_message(limit: int) -> str:
    return f"The request body must be at most {limit} bytes."


def _header(scope: Scope, name: bytes) -> bytes | None:
    for header_name, value in scope.get("headers", ()):
        if header_name.lower() == name:
            return value
    return None


def _declared_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None  # the server refuses a malformed Content-Length itself


def _request_id(scope: Scope) -> str:
    candidate = (_header(scope, REQUEST_ID_HEADER.lower().encode()) or b"").decode("latin-1")
    return candidate if SANE_REQUEST_ID.fullmatch(candidate) else uuid.uuid4().hex


async def _refuse(scope: Scope, send: Send, limit: int) -> None:
    request_id = _request_id(scope)
    logger.warning(
        "Refused a request body over %s bytes: %s %s",
        limit,
        scope.get("method"),
        scope.get("path"),
        extra={"request_id": request_id, "status": 413},
    )
    body = json.dumps(error_body(TOO_LARGE_CODE, too_large_message(limit))).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of the body is never read: the connection cannot be reused.
                (b"connection", b"close"),
                (REQUEST_ID_HEADER.encode(), request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class BodySizeLimit:
    """ASGI middleware around the Django application; see the module docstring."""

    def __init__(self, app: AsgiApplication) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _refuse(scope, send, limit)
            return

        received = 0
        too_large = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                return CLIENT_DISCONNECTED
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    # Django's handler stops reading and returns without answering.
                    return CLIENT_DISCONNECTED
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if too_large:
                return  # nothing may follow the 413 (Django sends nothing after a disconnect)
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)
        if too_large and not response_started:
            await _refuse(scope, send, limit)
