"""GET /api/v1/messages/{id}/stream: an answer as Server-Sent Events.

An async view: each client costs one coroutine and one Redis connection, not a thread.
Events: `delta` {"text"}, `reset` {"attempt"} (an earlier attempt's text is void, start
again), then one `done` or `error` carrying the final message. Event ids are the Redis
stream's, so `Last-Event-ID` resumes; a client that comes late reads from the start.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import redis.asyncio as redis_async
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET

from config.api_base import dangerously_unscoped
from config.credentials import WWW_AUTHENTICATE
from config.errors import error_body
from conversations import answer_stream
from conversations.authentication import TenantPrincipal, request_authenticate
from conversations.chat_serializers import MessageOutputSerializer
from conversations.models import Message, MessageRole, MessageStatus, Tenant

FINAL_STATUSES = (MessageStatus.COMPLETED, MessageStatus.FAILED, MessageStatus.CANCELLED)
STREAM_ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
# How long one XREAD waits before the database is asked whether the answer ended anyway
# (a worker that died between committing and publishing must not leave clients hanging).
QUIET_CHECK_SECONDS = 5.0
# While Redis is away, how often the database is asked whether the answer ended.
REDIS_RETRY_SECONDS = 1.0
T = TypeVar("T")


def _error(status: int, code: str, message: str) -> JsonResponse:
    response = JsonResponse(error_body(code, message), status=status)
    if status == 401:
        response["WWW-Authenticate"] = WWW_AUTHENTICATE
    return response


def _tenant_for(request: HttpRequest) -> Tenant | JsonResponse:
    outcome = request_authenticate(request)
    if isinstance(outcome, TenantPrincipal):
        return outcome.tenant
    return _error(401, outcome.code, outcome.message)


def _event(event_type: str, data: dict[str, Any], entry_id: str | None = None) -> str:
    lines = [f"id: {entry_id}"] if entry_id else []
    lines += [f"event: {event_type}", f"data: {json.dumps(data, default=str)}", "", ""]
    return "\n".join(lines)


def _released(read: Callable[[], T]) -> T:
    """Run a database read and give the connection back: a stream may stay open for
    minutes, and must not hold one of the database's connections while it waits."""
    try:
        return read()
    finally:
        if not connection.in_atomic_block:
            connection.close()


def _final_event_sync(message_id: uuid.UUID, entry_id: str | None) -> str:
    message = Message.objects.filter(pk=message_id).first()
    if message is None:  # deleted with its conversation: end the stream, never hang
        gone = error_body("not_found", "The answer was deleted with its conversation.")
        return _event("error", gone, entry_id)
    data = dict(MessageOutputSerializer(message).data)
    event_type = "error" if message.status == MessageStatus.FAILED else "done"
    return _event(event_type, {"message": data}, entry_id)


async def _final_event(message_id: uuid.UUID, entry_id: str | None) -> str:
    return await sync_to_async(_released)(lambda: _final_event_sync(message_id, entry_id))


async def _is_final(message_id: uuid.UUID) -> bool:
    """Final, or gone (a deleted answer never changes again either)."""
    status = await sync_to_async(_released)(
        lambda: Message.objects.filter(pk=message_id).values_list("status", flat=True).first()
    )
    return status is None or status in FINAL_STATUSES


async def _answer_events(message_id: uuid.UUID, after: str) -> AsyncIterator[str]:
    # A connection of its own, outside the shared pool, for as long as the client listens.
    client = redis_async.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=QUIET_CHECK_SECONDS + settings.REDIS_SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT_SECONDS,
    )
    key = answer_stream.stream_key(message_id)
    quiet_seconds = 0.0
    try:
        yield "retry: 1000\n\n"
        while True:
            try:
                # No stream: finished long ago (it expired) or not started; the row knows.
                if after == "0-0" and not await client.exists(key) and await _is_final(message_id):
                    yield await _final_event(message_id, None)
                    return
                response = await client.xread(
                    {key: after}, block=int(QUIET_CHECK_SECONDS * 1000), count=500
                )
            except redis_async.RedisError:
                # Redis away: the database still knows when the answer ends. Poll it, keep
                # the client's connection alive, and read the stream again once Redis is back
                # (from where this client was: nothing is skipped or repeated).
                if await _is_final(message_id):
                    yield await _final_event(message_id, None)
                    return
                yield ": stream unavailable, waiting\n\n"
                await asyncio.sleep(REDIS_RETRY_SECONDS)
                continue
            if not response:
                if await _is_final(message_id):
                    yield await _final_event(message_id, None)
                    return
                quiet_seconds += QUIET_CHECK_SECONDS
                if quiet_seconds >= settings.SSE_HEARTBEAT_SECONDS:
                    quiet_seconds = 0.0
                    yield ": keep-alive\n\n"
                continue
            quiet_seconds = 0.0
            for _, entries in response:
                for raw_id, fields in entries:
                    entry = answer_stream.decode_entry(raw_id, fields)
                    after = entry.entry_id
                    if entry.type in answer_stream.FINAL_EVENT_TYPES:
                        yield await _final_event(message_id, entry.entry_id)
                        return
                    yield _event(entry.type, entry.data, entry.entry_id)
    finally:
        await client.aclose()


@dangerously_unscoped(
    "An async function view (DRF has no async views): it authenticates itself and reads the "
    "answer with tenant= before streaming anything."
)
@require_GET
async def message_stream(request: HttpRequest, message_id: uuid.UUID) -> HttpResponse:
    tenant = await sync_to_async(_tenant_for)(request)
    if isinstance(tenant, JsonResponse):
        return tenant
    message = await sync_to_async(_released)(
        lambda: Message.objects.filter(tenant=tenant, pk=message_id).first()
    )
    if message is None:
        return _error(404, "not_found", "Not found.")
    if message.role != MessageRole.ASSISTANT:
        return _error(409, "not_streamable", "Only an assistant's answer can be streamed.")
    after = request.headers.get("Last-Event-ID") or request.GET.get("last_event_id") or "0-0"
    if not STREAM_ENTRY_ID.match(after):
        return _error(400, "validation_error", "Last-Event-ID must be an event id we sent.")
    response = StreamingHttpResponse(
        _answer_events(message.pk, after), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # proxies must pass events through at once
    return response
