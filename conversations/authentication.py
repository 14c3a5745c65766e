"""API key authentication: the one entry point that turns a request's credentials into its
tenant and key, or a typed failure. The DRF class (every API view) and the SSE view call it;
the failed-authentication limit reads the failure it notes (config.credentials)."""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from config.credentials import (
    WWW_AUTHENTICATE,
    AuthenticationFailure,
    authentication_failure_note,
    presented_credentials,
)
from conversations.api_keys import split_key
from conversations.models import ApiKey, Tenant
from conversations.services import api_key_authenticate

NOT_PROVIDED = AuthenticationFailure(
    code="not_authenticated",
    message=str(exceptions.NotAuthenticated.default_detail),
    presented=False,
)
MALFORMED = AuthenticationFailure(
    code="authentication_failed",
    message="Send the API key as 'Authorization: Bearer <key>'.",
    presented=True,
)
# One message for unknown, wrong, revoked and inactive: no hint for a guesser.
INVALID_MESSAGE = "Invalid, revoked or inactive API key."


@dataclass(frozen=True)
class TenantPrincipal:
    """Stands in for request.user: the tenant and the key that made this request."""

    tenant: Tenant
    api_key: ApiKey
    is_authenticated: bool = True


def request_authenticate(request: HttpRequest) -> TenantPrincipal | AuthenticationFailure:
    """The tenant and key the request's credentials prove, or why they prove nothing.

    On success request.tenant is set, for every view and middleware after; a failure is
    noted on the request for the failed-authentication limit (config.middleware)."""
    credentials = presented_credentials(request)
    if credentials is None:
        return NOT_PROVIDED
    failure = MALFORMED
    if credentials.bearer is not None:
        api_key = api_key_authenticate(raw_key=credentials.bearer)
        if api_key is not None:
            request.tenant = api_key.tenant  # type: ignore[attr-defined]
            return TenantPrincipal(tenant=api_key.tenant, api_key=api_key)
        parts = split_key(credentials.bearer)
        # Failures are limited per key prefix as well as per address.
        failure = AuthenticationFailure(
            code="authentication_failed",
            message=INVALID_MESSAGE,
            presented=True,
            key_prefix=parts[0] if parts is not None else None,
        )
    authentication_failure_note(request, failure)
    return failure


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[TenantPrincipal, ApiKey] | None:
        outcome = request_authenticate(request._request)
        if isinstance(outcome, TenantPrincipal):
            return outcome, outcome.api_key
        if not outcome.presented:
            return None  # anonymous: the view's permissions decide (public views allow it)
        raise exceptions.AuthenticationFailed(outcome.message)

    def authenticate_header(self, request: Request) -> str:
        return WWW_AUTHENTICATE


class IsTenantAuthenticated(permissions.BasePermission):
    def has_permission(self, request: Request, view: object) -> bool:
        return isinstance(request.user, TenantPrincipal)
