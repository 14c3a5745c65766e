from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from conversations.models import ApiKey, Tenant
from conversations.services import CreatedApiKey, api_key_revoke
from tests.support.api import assert_error, client_with_key

MODELS_URL = "/api/v1/models"


def test_valid_key_authenticates_and_resolves_its_tenant(owner_client, owner_tenant) -> None:
    response = owner_client.get("/api/v1/tenant")
    assert response.status_code == 200
    assert response.json()["slug"] == owner_tenant.slug


def test_missing_key_is_401_with_bearer_challenge(anonymous_client) -> None:
    response = anonymous_client.get(MODELS_URL)
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer lk_000000000000.not-a-real-secret",
        "Bearer not-even-shaped-like-a-key",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token lk_000000000000.secret",
    ],
)
def test_unknown_or_malformed_key_is_401(db, header: str) -> None:
    client = client_with_key(None)
    client.credentials(HTTP_AUTHORIZATION=header)
    assert_error(client.get(MODELS_URL), 401, "authentication_failed")


def test_right_prefix_with_wrong_secret_is_401(owner_key: CreatedApiKey) -> None:
    forged = f"{owner_key.api_key.prefix}.{'x' * 43}"
    assert_error(client_with_key(forged).get(MODELS_URL), 401, "authentication_failed")


def test_revoked_key_is_401(owner_key: CreatedApiKey) -> None:
    api_key_revoke(api_key=owner_key.api_key)
    assert_error(client_with_key(owner_key.secret).get(MODELS_URL), 401, "authentication_failed")


def test_key_of_inactive_tenant_is_401(owner_key: CreatedApiKey, owner_tenant: Tenant) -> None:
    Tenant.objects.filter(pk=owner_tenant.pk).update(is_active=False)
    assert_error(client_with_key(owner_key.secret).get(MODELS_URL), 401, "authentication_failed")


def test_use_is_recorded_at_most_once_a_minute(owner_key: CreatedApiKey, owner_client) -> None:
    assert owner_key.api_key.last_used_at is None
    owner_client.get(MODELS_URL)
    first_use = ApiKey.objects.get(pk=owner_key.api_key.pk).last_used_at
    assert first_use is not None

    owner_client.get(MODELS_URL)
    assert ApiKey.objects.get(pk=owner_key.api_key.pk).last_used_at == first_use

    long_ago = timezone.now() - timedelta(minutes=5)
    ApiKey.objects.filter(pk=owner_key.api_key.pk).update(last_used_at=long_ago)
    owner_client.get(MODELS_URL)
    assert ApiKey.objects.get(pk=owner_key.api_key.pk).last_used_at > long_ago


def test_only_a_salted_hash_of_the_secret_is_stored(owner_key: CreatedApiKey) -> None:
    stored = ApiKey.objects.get(pk=owner_key.api_key.pk)
    secret_part = owner_key.secret.split(".", 1)[1]
    stored_values = [str(value) for value in vars(stored).values()]
    assert not any(secret_part in value for value in stored_values)
    assert stored.salt
    assert len(stored.secret_hash) == 64
