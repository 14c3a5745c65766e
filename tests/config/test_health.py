from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from devtools.embedded_redis import EmbeddedRedis
from devtools.processes import free_port


def test_healthz_answers_without_dependencies(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_ok_when_database_and_redis_answer(client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


@pytest.mark.django_db
def test_readyz_is_503_naming_redis_when_redis_goes_down(client, settings) -> None:
    redis_server = EmbeddedRedis(port=free_port(), directory=Path(tempfile.mkdtemp()))
    redis_server.start()
    settings.REDIS_URL = redis_server.url
    settings.REDIS_SOCKET_TIMEOUT_SECONDS = 0.5
    assert client.get("/readyz").status_code == 200

    redis_server.stop()
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"] == {"database": "ok", "redis": "down"}
    assert "redis" in body["message"]


@pytest.mark.django_db
def test_readyz_is_503_naming_the_database_when_it_is_down(client, monkeypatch) -> None:
    from django.db import OperationalError, connection

    def refuse(*args: object, **kwargs: object) -> None:
        raise OperationalError("connection refused")

    # The database cannot be stopped inside a test transaction; its cursor can fail as it would.
    monkeypatch.setattr(connection, "cursor", refuse)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "down", "redis": "ok"}
