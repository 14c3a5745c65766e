"""The answer stream: one Redis stream per assistant message, written by the worker.

Entries carry `type` (delta, reset, done, error), the `text` of a delta and the
generation `attempt`. Readers (SSE clients, sync waiters) read from any entry id, so a
client that connects late gets everything from the start and Last-Event-ID resumes.
The stream is capped and expires: the stored message is the record, this is the wire.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings

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


def publish(message_id: uuid.UUID | str, event_type: str, **data: Any) -> bool:
    """Append an event; False when Redis is away. Best effort by design: the stored message
    is the record, readers that miss events read the final state from the database."""
    key = stream_key(message_id)
    pipeline = get_redis().pipeline(transaction=False)
    pipeline.xadd(
        key,
        {"type": event_type, "data": json.dumps(data, default=str)},
        maxlen=settings.ANSWER_STREAM_MAX_EVENTS,
        approximate=True,
    )
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


def read_until_final(
    message_id: uuid.UUID | str, *, timeout_seconds: float, after: str = "0-0"
) -> Iterator[StreamEntry]:
    """Blocking reader for a web thread (sync mode): yields entries up to a final one.

    It reads on a connection of its own, outside the shared pool, so any number of waiters
    never starve other requests of pooled connections; Redis going away ends the wait (the
    caller reads the answer's state from the database).
    """
    import time

    release_request_slot()  # waiting is not work: the tenant's next request may go ahead
    client = redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT_SECONDS + 1.0,
        socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT_SECONDS,
        single_connection_client=True,
    )
    key = stream_key(message_id)
    deadline = time.monotonic() + timeout_seconds
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            # Below the client's socket timeout, so a quiet stream is not a Redis error.
            block_ms = max(1, int(min(remaining, 1.0) * 1000))
            response = client.xread({key: after}, block=block_ms, count=500)
            for _, entries in response or []:
                for entry_id, fields in entries:
                    entry = decode_entry(entry_id, fields)
                    after = entry.entry_id
                    yield entry
                    if entry.type in FINAL_EVENT_TYPES:
                        return
    except redis.RedisError as error:
        logger.warning("Answer stream %s unreadable: %s", message_id, error)
    finally:
        client.close()
