from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis

from config.auth_throttle import KEY_PREFIX
from config.redis_client import get_redis


def _forget_failed_authentications(client: Redis) -> None:
    keys = list(client.scan_iter(match=f"{KEY_PREFIX}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(autouse=True)
def _fresh_failed_authentication_counts() -> Iterator[None]:
    """Every test here starts under the limit, and leaves no count behind for other suites."""
    client = get_redis()  # the real one, even if a test points REDIS_URL elsewhere
    _forget_failed_authentications(client)
    yield
    _forget_failed_authentications(client)
