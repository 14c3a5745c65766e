"""`stream: true`: an answer as `chat.completion.chunk` Server-Sent Events, then [DONE].

Read from the answer's Redis stream from its start (so a retry with the same
Idempotency-Key re-attaches to the same answer and gets all of it), through a Relay; the
end (text not yet sent, finish_reason, usage) comes from the stored answer. Failures end
the stream with an OpenAI error event, which the openai SDK raises as APIError.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import redis
import redis.asyncio as redis_async
from asgiref.sync import sync_to_async
from django.conf import settings

from conversations import answer_stream
from conversations.models import Message, MessageStatus
from openai_api.errors import openai_error
from openai_api.relay import (
    FINAL_STATUSES,
    QUIET_CHECK_SECONDS,
    Relay,
    cancel_after_stop,
    release_connection,
)
from openai_api.rendering import ChunkFrame, failure_of, finish_reason_of

DONE = "data: [DONE]\n\n"
T = TypeVar("T")


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _error_event(http_status: int, code: str, message: str) -> str:
    body = {"error": {"code": code, "message": message, "details": None}}
    return _event(openai_error(http_status, body))


def _released(read: Callable[[], T]) -> T:
    """A database read that gives its connection back: a stream may stay open for minutes."""
    try:
        return read()
    finally:
        release_connection()


async def _status(answer_id: uuid.UUID) -> str | None:
    return await sync_to_async(_released)(
        lambda: Message.objects.filter(pk=answer_id).values_list("status", flat=True).first()
    )


async def _is_final(answer_id: uuid.UUID) -> bool:
    status = await _status(answer_id)
    return status is None or status in FINAL_STATUSES


async def _follow(
    answer_id: uuid.UUID, relay: Relay, frame: ChunkFrame, cancel_on_stop: bool
) -> AsyncIterator[str]:
    """Content chunks while the answer is generated; returns once it is final."""
    client = redis_async.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=QUIET_CHECK_SECONDS + settings.REDIS_SOCKET_TIMEOUT_SECONDS,
    )
    key = answer_stream.stream_key(answer_id)
    after, quiet_seconds, cancelled = "0-0", 0.0, False
    try:
        if not await client.exists(key) and await _is_final(answer_id):
            return
        while True:
            response = await client.xread(
                {key: after}, block=int(QUIET_CHECK_SECONDS * 1000), count=500
            )
            if not response:
                if await _is_final(answer_id):
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
                        return
                    if entry.type == answer_stream.RESET:
                        relay.reset()
                        continue
                    piece = relay.feed(entry.data.get("text", ""))
                    if piece:
                        yield _event(frame.chunk({"content": piece}))
                    if relay.diverged:
                        return
                    if relay.stopped and cancel_on_stop and not cancelled:
                        await sync_to_async(_released)(lambda: cancel_after_stop(answer_id))
                        cancelled = True
    except redis.RedisError:
        # Best effort: without Redis, wait for the stored answer and send the rest from it.
        while not await _is_final(answer_id):
            yield ": keep-alive\n\n"
            await asyncio.sleep(1.0)
    finally:
        await client.aclose()


async def completion_chunks(
    *,
    answer_id: uuid.UUID,
    frame: ChunkFrame,
    stops: tuple[str, ...],
    cancel_on_stop: bool,
) -> AsyncIterator[str]:
    relay = Relay(stops)
    yield _event(frame.chunk({"role": "assistant", "content": ""}))
    async for event in _follow(answer_id, relay, frame, cancel_on_stop):
        yield event
    message = await sync_to_async(_released)(lambda: Message.objects.filter(pk=answer_id).first())
    if message is None:
        yield _error_event(404, "not_found", "The answer was deleted with its conversation.")
        return
    if relay.diverged:
        yield _error_event(
            502,
            "answer_restarted",
            "The answer was restarted after a provider failure and no longer matches the text "
            "already sent; send the request again.",
        )
        return
    if message.status == MessageStatus.FAILED:
        failure = failure_of(message)
        yield _error_event(failure.http_status, failure.code, failure.message)
        return
    rest = relay.finish(message.content)
    if relay.diverged:
        yield _error_event(502, "answer_restarted", "The stored answer differs from what was sent.")
        return
    if rest:
        yield _event(frame.chunk({"content": rest}))
    yield _event(frame.chunk({}, finish_reason_of(message, relay.stopped)))
    if frame.include_usage:
        yield _event(frame.usage_chunk(message))
    yield DONE
