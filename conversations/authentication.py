"""API key authentication: resolves the tenant once, for every view behind it."""

from __future__ import annotations

from dataclasses import dataclass

from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from conversations.api_keys import split_key
from conversations.models import ApiKey, Tenant
from conversations.services import api_key_authenticate

BEARER = "bearer"


def bearer_key(header: str) -> str | None:
    """The key of an `Authorization: Bearer <key>` header; None for any other shape."""
    scheme, _, raw_key = header.partition(" ")
    if scheme.lower() != BEARER or not raw_key.strip():
        return None
    return raw_key.strip()


@dataclass(frozen=True)
class TenantPrincipal:
    """Stands in for request.user: the tenant and the key that made this request."""

    tenant: Tenant
    api_key: ApiKey
    is_authenticated: bool = True


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[TenantPrincipal, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        raw_key = bearer_key(header)
        if raw_key is None:
            raise exceptions.AuthenticationFailed(
                "Send the API key as 'Authorization: Bearer <key>'."
            )
        parts = split_key(raw_key)
        if parts is not None:
            # Failures are limited per key prefix as well as per address (config.middleware).
            request._request.presented_key_prefix = parts[0]
        api_key = api_key_authenticate(raw_key=raw_key)
        if api_key is None:
            # One message for unknown, wrong, revoked and inactive: no hint for a guesser.
            raise exceptions.AuthenticationFailed("Invalid, revoked or inactive API key.")
        # Set on the Django request so request.tenant works for every view and middleware.
        request._request.tenant = api_key.tenant
        return TenantPrincipal(tenant=api_key.tenant, api_key=api_key), api_key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class IsTenantAuthenticated(permissions.BasePermission):
    def has_permission(self, request: Request, view: object) -> bool:
        return isinstance(request.user, TenantPrincipal)
