"""Limits on failed authentications, against guessing: API keys and admin passwords.

Fixed windows in Redis count failures per scope: a client address, and what was guessed at
(an API key's prefix, an admin username). Scopes are counted separately, so a guesser who
rotates addresses is still caught by the key's count, and one who sprays keys by the
address's.

API keys (config.middleware): a presented key is always checked first, and a valid one is
always served, so neither a flood of bad keys from a shared address nor one aimed at a
known prefix can lock its owner out. Only failing attempts are limited: once a scope is
over AUTH_FAILURE_LIMIT in a window, its failures answer 429 instead of 401 until the window
ends. Keys are 256-bit random secrets, so the limit is there to slow and flag guessing, not
to make a right guess unlikely.

Admin logins (config.admin_site): passwords can be guessed, so once the username or the
address is over ADMIN_LOGIN_FAILURE_LIMIT, the login answers 429 before the password is
looked at, right or wrong, until the window ends.

Redis being unreachable must not lock everyone out, so the limits then fail open (and log
it): authentication itself stays salted and constant-time either way.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from django.conf import settings
from django.http import HttpRequest

from config.redis_client import get_redis

logger = logging.getLogger(__name__)

# Every counter's Redis key starts with this (tests clear them by it).
KEY_PREFIX = "auth-failures"


def clock() -> float:
    """Seconds since the epoch, by which windows are numbered (a seam: tests pin it)."""
    return time.time()


def client_address(request: HttpRequest) -> str:
    """The address the request came from.

    X-Forwarded-For is trusted only with TRUSTED_PROXY_COUNT > 0 proxies in front: each of them
    appends the address it received from, so the client is the one that many from the right.
    Anything a client could have forged (further left, or not an IP address) is ignored.
    The web server must not rewrite REMOTE_ADDR from the header either (config.web_server).
    """
    remote_address = request.META.get("REMOTE_ADDR", "") or "unknown"
    proxy_count = settings.TRUSTED_PROXY_COUNT
    if proxy_count <= 0:
        return remote_address
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    if len(forwarded) < proxy_count:
        return remote_address
    candidate = forwarded[-proxy_count]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote_address


def address_scope(address: str) -> str:
    return f"address:{address}"


def digest_scope(kind: str, value: str) -> str:
    """A scope named by something a client chose (a username): bounded, and not in clear."""
    return f"{kind}:{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"


@dataclass(frozen=True)
class FailureLimit:
    """A fixed-window failure count per scope; the limit and window are named settings."""

    name: str
    limit_setting: str
    window_setting: str

    @property
    def limit(self) -> int:
        return int(getattr(settings, self.limit_setting))

    def _window(self) -> tuple[int, int]:
        """(this window's number, seconds until it ends)."""
        window_seconds = int(getattr(settings, self.window_setting))
        now = clock()
        number = int(now // window_seconds)
        return number, max(1, int((number + 1) * window_seconds - now + 0.999))

    def _keys(self, scopes: Sequence[str], window_number: int) -> list[str]:
        return [f"{KEY_PREFIX}:{self.name}:{scope}:{window_number}" for scope in scopes]

    def retry_after(self, scopes: Sequence[str]) -> int | None:
        """Seconds until these scopes may try again, or None when all are under the limit."""
        window_number, seconds_left = self._window()
        try:
            counts = get_redis().mget(self._keys(scopes, window_number))
        except redis.RedisError:
            logger.warning(
                "Failed-authentication limiter unavailable (Redis error); letting the "
                "request through",
                exc_info=True,
            )
            return None
        if any(count is not None and int(count) >= self.limit for count in counts):
            return seconds_left
        return None

    def record_failure(self, scopes: Sequence[str]) -> int | None:
        """Count one failure in every scope; seconds to wait if one is now over the limit."""
        window_number, seconds_left = self._window()
        keys = self._keys(scopes, window_number)
        try:
            pipeline = get_redis().pipeline(transaction=True)
            for key in keys:
                pipeline.incr(key)
                pipeline.expire(key, seconds_left + 1)
            results = pipeline.execute()
        except redis.RedisError:
            logger.warning(
                "Failed-authentication limiter unavailable (Redis error); failure not counted",
                exc_info=True,
            )
            return None
        counts = results[::2]
        if any(int(count) > self.limit for count in counts):
            return seconds_left
        return None


API_KEYS = FailureLimit("api", "AUTH_FAILURE_LIMIT", "AUTH_FAILURE_WINDOW_SECONDS")
ADMIN_LOGINS = FailureLimit(
    "admin", "ADMIN_LOGIN_FAILURE_LIMIT", "ADMIN_LOGIN_FAILURE_WINDOW_SECONDS"
)
