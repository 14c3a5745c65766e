"""The one reader of a request's `Authorization` header, and what a failed check leaves behind.

Every surface that looks at credentials goes through here: API key authentication
(`conversations.authentication.request_authenticate`, behind the DRF class and the SSE
view), the failed-authentication limit (config.middleware) and /metrics (config.metrics).
It lives in config because config imports no app: resolving a key to its tenant needs the
conversations models, so that half is in conversations and reports back through
`authentication_failure_note`. tests/security/test_authentication_entry_point.py refuses
any other module that reads the header.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest

BEARER = "bearer"
# The challenge of every 401 the API answers.
WWW_AUTHENTICATE = 'Bearer realm="api"'


@dataclass(frozen=True)
class Credentials:
    """What a request presented: `bearer` is the token of an `Authorization: Bearer <token>`
    header, None when the header has any other shape."""

    bearer: str | None


@dataclass(frozen=True)
class AuthenticationFailure:
    """Why a request is not authenticated, as the client is told (code, message), and what
    the failed-authentication limit counts it against besides the address."""

    code: str
    message: str
    # False when nothing was presented: not a guess, so the limit does not count it.
    presented: bool
    key_prefix: str | None = None


def presented_credentials(request: HttpRequest) -> Credentials | None:
    """The request's credentials, or None when it sent no Authorization header."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != BEARER or not token.strip():
        return Credentials(bearer=None)
    return Credentials(bearer=token.strip())


def authentication_failure_note(request: HttpRequest, failure: AuthenticationFailure) -> None:
    request.authentication_failure = failure  # type: ignore[attr-defined]


def authentication_failure(request: HttpRequest) -> AuthenticationFailure | None:
    """The failure authentication noted on this request, if it failed."""
    return getattr(request, "authentication_failure", None)
