"""A limit on failed API key authentications per client address, against key guessing.

A fixed window in Redis counts the 401s each address earns while presenting credentials.
Once an address is over AUTH_FAILURE_LIMIT in a window, every request of it that presents
credentials answers 429 before its key is looked at, until the window ends: a guesser learns
nothing more, not even from a right guess. Requests that authenticate do not count, and
requests without credentials are not guesses.

Redis being unreachable must not lock every client out, so the limiter then fails open (and
logs it): authentication itself stays constant-time and salted either way.
"""

from __future__ import annotations

import ipaddress
import logging
import time

import redis
from django.conf import settings
from django.http import HttpRequest

from config.redis_client import get_redis

logger = logging.getLogger(__name__)

KEY_PREFIX = "auth-failures"


def client_address(request: HttpRequest) -> str:
    """The address the request came from.

    X-Forwarded-For is trusted only with TRUSTED_PROXY_COUNT > 0 proxies in front: each of them
    appends the address it received from, so the client is the one that many from the right.
    Anything a client could have forged (further left, or not an IP address) is ignored.
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


def _window() -> tuple[int, int]:
    """(this window's number, seconds until it ends)."""
    window_seconds = settings.AUTH_FAILURE_WINDOW_SECONDS
    now = time.time()
    number = int(now // window_seconds)
    return number, max(1, int((number + 1) * window_seconds - now + 0.999))


def _key(address: str, window_number: int) -> str:
    return f"{KEY_PREFIX}:{address}:{window_number}"


def failed_authentication_retry_after(address: str) -> int | None:
    """Seconds until this address may try again, or None when it is under the limit."""
    window_number, seconds_left = _window()
    try:
        failures = get_redis().get(_key(address, window_number))
    except redis.RedisError:
        logger.warning(
            "Failed-authentication limiter unavailable (Redis error); letting the request through",
            exc_info=True,
        )
        return None
    if failures is not None and int(failures) >= settings.AUTH_FAILURE_LIMIT:
        return seconds_left
    return None


def failed_authentication_record(address: str) -> None:
    window_number, seconds_left = _window()
    key = _key(address, window_number)
    try:
        pipeline = get_redis().pipeline(transaction=True)
        pipeline.incr(key)
        pipeline.expire(key, seconds_left + 1)
        pipeline.execute()
    except redis.RedisError:
        logger.warning(
            "Failed-authentication limiter unavailable (Redis error); failure not counted",
            exc_info=True,
        )
