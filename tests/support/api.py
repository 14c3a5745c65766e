"""REST clients for the three actors of every endpoint test, and our error format."""

from __future__ import annotations

from typing import Any

from rest_framework.test import APIClient


def client_with_key(secret: str | None) -> APIClient:
    client = APIClient()
    if secret is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def client_from(address: str, secret: str | None = None, **extra: str) -> APIClient:
    """A client whose requests come from this address (REMOTE_ADDR)."""
    client = APIClient(REMOTE_ADDR=address, **extra)
    if secret is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def assert_error(response: Any, status_code: int, code: str) -> dict:
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
