from __future__ import annotations

import threading
from typing import Any

import pytest
from rest_framework.test import APIClient

from billing import rate_limits
from billing.default_prices import default_prices_load
from billing.models import ModelPrice
from config import auth_throttle
from conversations.models import Tenant
from conversations.services import CreatedApiKey, api_key_create
from models_catalog.models import FoundationModel
from models_catalog.services import catalogue_load
from tests.factories import make_tenant
from tests.support.api import client_with_key
from tests.support.clock import Clock


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def owner_tenant(db) -> Tenant:
    return make_tenant("alice")


@pytest.fixture
def other_tenant(db) -> Tenant:
    return make_tenant("bob")


@pytest.fixture
def owner_key(owner_tenant: Tenant) -> CreatedApiKey:
    return api_key_create(tenant=owner_tenant, name="owner key")


@pytest.fixture
def other_key(other_tenant: Tenant) -> CreatedApiKey:
    return api_key_create(tenant=other_tenant, name="other key")


@pytest.fixture
def owner_client(owner_key: CreatedApiKey) -> APIClient:
    """The owner tenant's client (alice in the healthchecks alice/bob/charlie pattern)."""
    return client_with_key(owner_key.secret)


@pytest.fixture
def other_client(other_key: CreatedApiKey) -> APIClient:
    """A second tenant's client (bob)."""
    return client_with_key(other_key.secret)


@pytest.fixture
def anonymous_client(db) -> APIClient:
    """No key at all (charlie)."""
    return client_with_key(None)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """A SQLite test database in a file, not in memory: worker and web processes share it."""
    import tempfile
    from pathlib import Path

    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        directory = Path(tempfile.mkdtemp(prefix="tests-sqlite-"))
        database.setdefault("TEST", {})["NAME"] = str(directory / "test.sqlite3")


# A moment in the middle of every window the tests use (a minute, 900 s, a UTC day): counts
# must not reset under a test because the wall clock crossed a window's end.
MID_WINDOW_EPOCH_SECONDS = 1_000_000 * 900 + 450.0


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The wall clock that failed-authentication and rate-quota windows read (their seams),
    pinned mid-window; a test moves it (`clock.now = ...`, `clock.advance(...)`) rather than
    sleeping to a boundary. Processes the tests start read the real clock."""
    clock = Clock(MID_WINDOW_EPOCH_SECONDS)
    monkeypatch.setattr(auth_throttle, "clock", clock)
    monkeypatch.setattr(rate_limits, "now_seconds", clock)
    return clock


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Answers whose generation was handed to the broker (after commit), recorded instead:
    no worker runs these tests. Thread-safe, for the concurrency tests."""
    answer_ids: list[Any] = []
    lock = threading.Lock()

    def record(*, message_id: Any, tenant_id: int, **options: Any) -> None:
        with lock:
            answer_ids.append(message_id)

    monkeypatch.setattr("conversations.services.dispatch.generation_enqueue", record)
    return answer_ids


@pytest.fixture
def catalogue(transactional_db: None) -> None:
    """The migrations' catalogue and prices, put back: a transactional test flushes every
    table afterwards, data migrations' rows included (both loads are idempotent)."""
    catalogue_load()
    default_prices_load(model_class=FoundationModel, price_class=ModelPrice)


@pytest.fixture(autouse=True)
def _fresh_authentication_failure_counts() -> None:
    """Every test client is 127.0.0.1: one test's failed keys must not throttle the next."""
    from config.auth_throttle import KEY_PREFIX
    from config.redis_client import get_redis

    client = get_redis()
    for key in client.scan_iter(f"{KEY_PREFIX}:*"):
        client.delete(key)
