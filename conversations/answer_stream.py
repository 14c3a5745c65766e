"""The answer stream: one Redis stream per assistant message, written by the worker.

Entries carry `type` (delta, reset, done, error), the `text` of a delta and the
generation `attempt`. Readers (SSE clients, sync waiters) read from any entry id, so a
client that connects late gets everything from the start and Last-Event-ID resumes.
The stream is capped and expires: the stored message is the record, this is the wire.

A final event also goes to a key of its own (`final_key`), so a sync waiter, which wants
nothing but the end, blocks on that one entry instead of reading every delta to find it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from redis.driver_info import DriverInfo

from config.fair_share import release_request_slot
from config.redis_client import get_redis

logger = logging.getLogger(__name__)

DELTA = "delta"
RESET = "reset"
DONE = "done"
ERROR = "error"
FINAL_EVENT_TYPES = frozenset({DONE, ERROR})


@dataclass(frozen=True)
class StreamEntry:
    entry_id: str
    type: str
    data: dict[str, Any]


def stream_key(message_id: uuid.UUID | str) -> str:
    return f"answer:{message_id}"


def final_key(message_id: uuid.UUID | str) -> str:
    return f"answer:{message_id}:final"


def publish(
    message_id: uuid.UUID | str, event_type: str, *, expire: bool = True, **data: Any
) -> bool:
    """Append an event; False when Redis is away. Best effort by design: the stored message
    is the record, readers that miss events read the final state from the database.

    `expire=False` leaves the stream's expiry as it is: for a writer that already set it
    (the worker, after its first event); a final event always sets it again.
    """
    return publish_events(message_id, [(event_type, data)], expire=expire)


def publish_events(
    message_id: uuid.UUID | str, events: list[tuple[str, dict[str, Any]]], *, expire: bool = True
) -> bool:
    """Append events in order, in one round trip (see `publish`)."""
    key = stream_key(message_id)
    pipeline = get_redis().pipeline(transaction=False)
    for event_type, data in events:
        fields = {"type": event_type, "data": json.dumps(data, default=str)}
        pipeline.xadd(key, fields, maxlen=settings.ANSWER_STREAM_MAX_EVENTS, approximate=True)
        if event_type in FINAL_EVENT_TYPES:
            expire = True
            pipeline.xadd(final_key(message_id), fields)
            pipeline.expire(final_key(message_id), settings.ANSWER_STREAM_TTL_SECONDS)
    if expire:
        pipeline.expire(key, settings.ANSWER_STREAM_TTL_SECONDS)
    try:
        pipeline.execute()
    except redis.RedisError as error:
        logger.warning("Answer stream %s unavailable: %s", message_id, error)
        return False
    return True


def decode_entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> StreamEntry:
    identifier = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return StreamEntry(
        entry_id=identifier,
        type=fields[b"type"].decode(),
        data=json.loads(fields[b"data"]),
    )


def _waiter_client() -> redis.Redis:
    """A connection of its own, outside the shared pool, so any number of waiters never
    starve other requests of pooled connections."""
    return redis.Redis.from_url(
        settings.REDIS_URL,
        # Above the longest block below, so a quiet wait is not a Redis error.
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT_SECONDS + 1.0,
        socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT_SECONDS,
        single_connection_client=True,
        # No CLIENT SETINFO round trips on connect: this connection lives for one wait.
        driver_info=DriverInfo(name=None, lib_version=None),
    )


def _blocking_reads(
    key: str, *, timeout_seconds: float, after: str, count: int
) -> Iterator[StreamEntry]:
    """Entries of one stream key as they arrive, until the time is up, on a connection of
    the waiter's own (`_waiter_client`); the waiter's request slot is given back first.
    Redis errors reach the caller."""
    release_request_slot()  # waiting is not work: the tenant's next request may go ahead
    client = _waiter_client()
    deadline = time.monotonic() + timeout_seconds
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            block_ms = max(1, int(min(remaining, 1.0) * 1000))
            response = client.xread({key: after}, block=block_ms, count=count)
            for _, entries in response or []:
                for entry_id, fields in entries:
                    entry = decode_entry(entry_id, fields)
                    after = entry.entry_id
                    yield entry
    finally:
        client.close()


def wait_final(message_id: uuid.UUID | str, *, timeout_seconds: float) -> StreamEntry | None:
    """Block until the answer's final event (a web thread's sync wait); None when the time
    is up first. Raises redis.RedisError when Redis is away: the caller reads the answer's
    state from the database either way, the final event only says when to."""
    reads = _blocking_reads(
        final_key(message_id), timeout_seconds=timeout_seconds, after="0-0", count=1
    )
    with contextlib.closing(reads):
        return next(reads, None)


def read_until_final(
    message_id: uuid.UUID | str, *, timeout_seconds: float, after: str = "0-0"
) -> Iterator[StreamEntry]:
    """Blocking reader for a web thread that needs the deltas (a stop sequence to watch
    for): yields entries up to a final one. Redis going away ends the wait (the caller
    reads the answer's state from the database).
    """
    reads = _blocking_reads(
        stream_key(message_id), timeout_seconds=timeout_seconds, after=after, count=500
    )
    try:
        with contextlib.closing(reads):
            for entry in reads:
                yield entry
                if entry.type in FINAL_EVENT_TYPES:
                    return
    except redis.RedisError as error:
        logger.warning("Answer stream %s unreadable: %s", message_id, error)
