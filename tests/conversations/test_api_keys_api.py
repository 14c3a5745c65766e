"""Tenant scoping, shown on the API keys endpoints: owner, second tenant, no key."""

from __future__ import annotations

import uuid

from conversations.models import ApiKey
from conversations.services import CreatedApiKey
from tests.support.api import assert_error, client_with_key


def test_list_shows_only_the_callers_keys(owner_client, owner_key, other_key) -> None:
    response = owner_client.get("/api/v1/api-keys")
    assert response.status_code == 200
    prefixes = [item["prefix"] for item in response.json()["results"]]
    assert prefixes == [owner_key.api_key.prefix]
    assert "key" not in response.json()["results"][0]
    assert "secret_hash" not in response.json()["results"][0]


def test_owner_sees_own_key(owner_client, owner_key: CreatedApiKey) -> None:
    response = owner_client.get(f"/api/v1/api-keys/{owner_key.api_key.id}")
    assert response.status_code == 200
    assert response.json()["prefix"] == owner_key.api_key.prefix


def test_another_tenants_key_is_404_not_403(other_client, owner_key: CreatedApiKey) -> None:
    response = other_client.get(f"/api/v1/api-keys/{owner_key.api_key.id}")
    assert_error(response, 404, "not_found")


def test_unknown_key_id_is_404(owner_client) -> None:
    assert_error(owner_client.get(f"/api/v1/api-keys/{uuid.uuid4()}"), 404, "not_found")


def test_no_key_is_401_on_every_endpoint(anonymous_client, owner_key: CreatedApiKey) -> None:
    key_id = owner_key.api_key.id
    for method, url in [
        ("get", "/api/v1/api-keys"),
        ("post", "/api/v1/api-keys"),
        ("get", f"/api/v1/api-keys/{key_id}"),
        ("post", f"/api/v1/api-keys/{key_id}/revoke"),
        ("get", "/api/v1/tenant"),
        ("get", "/api/v1/models"),
        ("get", "/api/v1/models/meta.llama3-8b-instruct-v1:0"),
    ]:
        assert_error(getattr(anonymous_client, method)(url), 401, "not_authenticated")
    assert ApiKey.objects.get(pk=key_id).revoked_at is None


def test_created_key_is_shown_once_and_works(owner_client, owner_tenant) -> None:
    response = owner_client.post("/api/v1/api-keys", {"name": "ci"}, format="json")
    assert response.status_code == 201
    secret = response.json()["key"]
    assert response.json()["name"] == "ci"
    me = client_with_key(secret).get("/api/v1/tenant")
    assert me.json()["slug"] == owner_tenant.slug
    listed = owner_client.get(f"/api/v1/api-keys/{response.json()['id']}").json()
    assert "key" not in listed


def test_create_rejects_bad_input_and_creates_nothing(owner_client, owner_tenant) -> None:
    before = ApiKey.objects.count()
    error = assert_error(
        owner_client.post("/api/v1/api-keys", {"name": "x" * 101}, format="json"),
        400,
        "validation_error",
    )
    assert "name" in error["details"]
    assert ApiKey.objects.count() == before


def test_revoke_own_key_then_it_stops_working(owner_client, owner_tenant) -> None:
    created = owner_client.post("/api/v1/api-keys", {}, format="json").json()
    response = owner_client.post(f"/api/v1/api-keys/{created['id']}/revoke")
    assert response.status_code == 200
    assert response.json()["is_revoked"] is True
    first_revocation = response.json()["revoked_at"]
    again = owner_client.post(f"/api/v1/api-keys/{created['id']}/revoke")
    assert again.json()["revoked_at"] == first_revocation
    assert_error(
        client_with_key(created["key"]).get("/api/v1/tenant"), 401, "authentication_failed"
    )


def test_revoking_another_tenants_key_is_404_and_changes_nothing(
    other_client, owner_key: CreatedApiKey
) -> None:
    response = other_client.post(f"/api/v1/api-keys/{owner_key.api_key.id}/revoke")
    assert_error(response, 404, "not_found")
    assert ApiKey.objects.get(pk=owner_key.api_key.pk).revoked_at is None
