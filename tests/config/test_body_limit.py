"""config.body_limit in process: the ASGI application is driven message by message, so the
test sees exactly what was read from the client and whether anything went to disk."""

from __future__ import annotations

import asyncio
import json
import tempfile
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.handlers import asgi as django_asgi

from config.asgi import application
from tests.support import asgi

CHUNK = 64 * 1024


class RecordingSpool(tempfile.SpooledTemporaryFile):
    """Django's body buffer, noting whether it ever rolled over to a file on disk."""

    rolled_over = False

    def rollover(self) -> None:
        RecordingSpool.rolled_over = True
        super().rollover()


@pytest.fixture(autouse=True)
def _recording_spool(monkeypatch) -> None:
    RecordingSpool.rolled_over = False
    monkeypatch.setattr(django_asgi.tempfile, "SpooledTemporaryFile", RecordingSpool)


def http_scope(path: str, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return asgi.http_scope(path, "POST", (b"content-type", b"application/json"), *headers)


def call(scope: dict[str, Any], chunks: int) -> tuple[int, list[dict[str, Any]]]:
    """Run the application on a body of `chunks` chunks; (chunks it read, what it sent)."""
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read == chunks:
            await asyncio.sleep(3600)  # the client has nothing more to say
        read += 1
        return {"type": "http.request", "body": b" " * CHUNK, "more_body": read < chunks}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(application(scope, receive, send), timeout=30))
    return read, sent


def status_and_body(sent: list[dict[str, Any]]) -> tuple[int, Any]:
    body = b"".join(message.get("body", b"") for message in sent[1:])
    return sent[0]["status"], json.loads(body)


def test_a_chunked_body_is_cut_off_when_it_passes_the_limit_and_never_spooled() -> None:
    limit = django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    chunks = 4 * limit // CHUNK  # four times the limit, without a Content-Length
    read, sent = call(http_scope("/api/v1/conversations"), chunks)
    assert read == limit // CHUNK + 1  # the chunk that passed the limit, and not one more
    status, body = status_and_body(sent)
    assert (status, body["error"]["code"]) == (413, "request_too_large")
    assert (b"connection", b"close") in sent[0]["headers"]
    # Below the limit the body stayed in memory: nothing was written to disk.
    assert not RecordingSpool.rolled_over


def test_a_declared_length_over_the_limit_is_not_read_at_all() -> None:
    declared = str(django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1).encode()
    read, sent = call(http_scope("/api/v1/conversations", (b"content-length", declared)), 100)
    assert read == 0
    assert status_and_body(sent)[0] == 413


def test_a_body_at_the_limit_reaches_the_application_in_memory() -> None:
    limit = django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    assert limit % CHUNK == 0
    read, sent = call(http_scope("/api/v1/tenant"), limit // CHUNK)
    assert read == limit // CHUNK
    status, body = status_and_body(sent)
    assert (status, body["error"]["code"]) == (401, "not_authenticated")  # Django answered
    assert not RecordingSpool.rolled_over


def test_the_spool_threshold_follows_the_body_limit() -> None:
    assert (
        django_settings.FILE_UPLOAD_MAX_MEMORY_SIZE == django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    )
