from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from conversations.models import Tenant
from conversations.services import CreatedApiKey, api_key_create, tenant_create


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_tenant(slug: str, **fields: object) -> Tenant:
    tenant = tenant_create(slug=slug, name=f"{slug.title()} Inc.")
    if fields:
        Tenant.objects.filter(pk=tenant.pk).update(**fields)
        tenant.refresh_from_db()
    return tenant


def client_with_key(secret: str | None) -> APIClient:
    client = APIClient()
    if secret is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


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


def assert_error(response, status_code: int, code: str) -> dict:
    """The response is our JSON error format with this status and code."""
    assert response.status_code == status_code, response.content
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    return body["error"]


def stored_message(conversation, role: str, content: str):
    """A completed message written as the services write them (count at write time)."""
    from django.db.models import F
    from django.utils import timezone

    from conversations.context import message_token_count
    from conversations.models import Conversation, Message, MessageStatus

    Conversation.objects.filter(pk=conversation.pk).update(last_sequence=F("last_sequence") + 1)
    conversation.refresh_from_db(fields=["last_sequence"])
    return Message.objects.create(
        tenant_id=conversation.tenant_id,
        conversation=conversation,
        sequence=conversation.last_sequence,
        role=role,
        content=content,
        status=MessageStatus.COMPLETED,
        token_count=message_token_count(conversation.model, content),
        completed_at=timezone.now(),
    )


def tiny_model(family: str = "llama3", *, context_window: int = 200, cap: int = 50):
    """A catalogue entry with a small window, so trimming boundaries are easy to reach."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from billing.models import ModelPrice
    from models_catalog.models import FoundationModel

    model = FoundationModel.objects.create(
        model_id=f"test.{family}-tiny-v1:0",
        name=f"Tiny {family}",
        family=family,
        context_window=context_window,
        max_gen_len_cap=cap,
        default_max_gen_len=min(cap, 16),
    )
    ModelPrice.objects.create(
        model=model,
        input_price_per_million=Decimal("1.00"),
        output_price_per_million=Decimal("2.00"),
        effective_from=datetime(2024, 1, 1, tzinfo=UTC),
    )
    return model


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


# A moment in the middle of every failure window the tests use (60 s and 900 s): counts
# must not reset under a test because the wall clock crossed a window's end.
MID_WINDOW_EPOCH_SECONDS = 1_000_000 * 900 + 450.0


@pytest.fixture(autouse=True)
def _authentication_failure_clock_mid_window(monkeypatch) -> None:
    from config import auth_throttle

    monkeypatch.setattr(auth_throttle, "clock", lambda: MID_WINDOW_EPOCH_SECONDS)


@pytest.fixture(autouse=True)
def _fresh_authentication_failure_counts() -> None:
    """Every test client is 127.0.0.1: one test's failed keys must not throttle the next."""
    from config.auth_throttle import KEY_PREFIX
    from config.redis_client import get_redis

    client = get_redis()
    for key in client.scan_iter(f"{KEY_PREFIX}:*"):
        client.delete(key)
