"""Hostile input: guessing keys. A wrong secret and an unknown prefix look the same, and
failed authentications over the limit answer 429 per address and per key prefix."""

from __future__ import annotations

import logging
import secrets

import pytest
from django.conf import settings as django_settings

from config import auth_throttle
from conversations.services import CreatedApiKey
from tests.support.api import assert_error, client_from
from tests.support.clock import Clock


def test_a_wrong_secret_and_an_unknown_prefix_look_the_same(owner_key: CreatedApiKey) -> None:
    prefix = owner_key.api_key.prefix
    wrong_secret = client_from("198.51.100.1", f"{prefix}.{'x' * 43}").get("/api/v1/tenant")
    unknown_prefix = client_from("198.51.100.2", f"lk_ffffffffffff.{'x' * 43}").get(
        "/api/v1/tenant"
    )
    assert_error(wrong_secret, 401, "authentication_failed")
    assert wrong_secret.status_code == unknown_prefix.status_code
    assert wrong_secret.json() == unknown_prefix.json()
    assert wrong_secret["WWW-Authenticate"] == unknown_prefix["WWW-Authenticate"]


def wrong_key(prefix: str | None = None) -> str:
    """A well-formed key that is not one: a fresh unknown prefix unless one is given."""
    return f"{prefix or 'lk_' + secrets.token_hex(6)}.{'x' * 43}"


def fail_to_authenticate(
    address: str, times: int, url: str = "/api/v1/tenant", *, prefix: str | None = None
) -> None:
    """Failed authentications from one address, each with a new unknown prefix unless one
    is given (so only the address's count grows)."""
    for _ in range(times):
        guesser = client_from(address, wrong_key(prefix))
        assert_error(guesser.get(url), 401, "authentication_failed")


def test_failures_over_the_limit_answer_429_with_retry_after(db, settings) -> None:
    settings.AUTH_FAILURE_LIMIT = 5
    fail_to_authenticate("203.0.113.5", 5)
    blocked = client_from("203.0.113.5", wrong_key()).get("/api/v1/tenant")
    error = assert_error(blocked, 429, "too_many_failed_authentications")
    assert 1 <= int(blocked["Retry-After"]) <= settings.AUTH_FAILURE_WINDOW_SECONDS
    assert error["details"] == {"retry_after_seconds": int(blocked["Retry-After"])}
    # Malformed credentials are failures too.
    malformed = client_from("203.0.113.5", "not-a-key").get("/api/v1/tenant")
    assert_error(malformed, 429, "too_many_failed_authentications")
    # Another address is not affected.
    elsewhere = client_from("203.0.113.6", wrong_key()).get("/api/v1/tenant")
    assert_error(elsewhere, 401, "authentication_failed")


def test_a_valid_key_is_served_from_an_address_that_floods_bad_keys(
    owner_key: CreatedApiKey, other_key: CreatedApiKey, settings
) -> None:
    # Bob shares Alice's address (a NAT, an office, a proxy) while something there guesses.
    settings.AUTH_FAILURE_LIMIT = 20
    fail_to_authenticate("203.0.113.21", 20)
    assert client_from("203.0.113.21", wrong_key()).get("/api/v1/tenant").status_code == 429
    for key in (owner_key, other_key):
        response = client_from("203.0.113.21", key.secret).get("/api/v1/tenant")
        assert response.status_code == 200, response.content
        assert response.json()["slug"] == key.api_key.tenant.slug
    # ... and the guesser is still refused.
    assert client_from("203.0.113.21", wrong_key()).get("/api/v1/tenant").status_code == 429


def test_a_prefix_that_keeps_failing_is_limited_from_every_address(
    owner_key: CreatedApiKey, settings
) -> None:
    settings.AUTH_FAILURE_LIMIT = 3
    prefix = owner_key.api_key.prefix
    for number in range(3):
        # A guesser rotating addresses, aiming at one key.
        guess = client_from(f"198.51.100.{number}", wrong_key(prefix)).get("/api/v1/tenant")
        assert_error(guess, 401, "authentication_failed")
    blocked = client_from("198.51.100.99", wrong_key(prefix)).get("/api/v1/tenant")
    assert_error(blocked, 429, "too_many_failed_authentications")
    # The owner of that prefix is not locked out, from any address.
    for address in ("198.51.100.0", "198.51.100.100"):
        assert client_from(address, owner_key.secret).get("/api/v1/tenant").status_code == 200
    # Other prefixes from a fresh address are not limited.
    other = client_from("198.51.100.101", wrong_key()).get("/api/v1/tenant")
    assert_error(other, 401, "authentication_failed")


def test_the_default_limit_is_twenty_a_minute(owner_key) -> None:
    assert (django_settings.AUTH_FAILURE_LIMIT, django_settings.AUTH_FAILURE_WINDOW_SECONDS) == (
        20,
        60,
    )
    fail_to_authenticate("203.0.113.20", 20)
    blocked = client_from("203.0.113.20", wrong_key()).get("/api/v1/tenant")
    assert_error(blocked, 429, "too_many_failed_authentications")


def test_the_limit_ends_with_its_window(owner_key, settings, clock: Clock) -> None:
    settings.AUTH_FAILURE_LIMIT = 2
    clock.now = 1_000_000 * settings.AUTH_FAILURE_WINDOW_SECONDS + 5.0
    fail_to_authenticate("203.0.113.7", 2)
    throttled = client_from("203.0.113.7", wrong_key()).get("/api/v1/tenant")
    assert throttled.status_code == 429
    assert int(throttled["Retry-After"]) == settings.AUTH_FAILURE_WINDOW_SECONDS - 5
    clock.advance(settings.AUTH_FAILURE_WINDOW_SECONDS)
    assert client_from("203.0.113.7", wrong_key()).get("/api/v1/tenant").status_code == 401


def test_successes_and_requests_without_credentials_do_not_count(owner_key, settings) -> None:
    settings.AUTH_FAILURE_LIMIT = 3
    good = client_from("203.0.113.8", owner_key.secret)
    anonymous = client_from("203.0.113.8")
    for _ in range(10):
        assert good.get("/api/v1/tenant").status_code == 200
        assert_error(anonymous.get("/api/v1/tenant"), 401, "not_authenticated")
    fail_to_authenticate("203.0.113.8", 3)
    assert client_from("203.0.113.8", wrong_key()).get("/api/v1/tenant").status_code == 429
    assert good.get("/api/v1/tenant").status_code == 200


def test_failures_on_the_stream_endpoint_count_too(owner_key, settings) -> None:
    settings.AUTH_FAILURE_LIMIT = 2
    fail_to_authenticate("203.0.113.9", 2, url=f"/api/v1/messages/{owner_key.api_key.pk}/stream")
    blocked = client_from("203.0.113.9", wrong_key()).get("/api/v1/tenant")
    assert_error(blocked, 429, "too_many_failed_authentications")


def test_redis_down_fails_open_and_logs(owner_key, settings, caplog) -> None:
    settings.AUTH_FAILURE_LIMIT = 1
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    settings.REDIS_SOCKET_TIMEOUT_SECONDS = 0.5
    with caplog.at_level(logging.WARNING, logger="config.auth_throttle"):
        fail_to_authenticate("203.0.113.10", 3)
        good = client_from("203.0.113.10", owner_key.secret).get("/api/v1/tenant")
    assert good.status_code == 200
    assert "limiter unavailable" in caplog.text


def test_forwarded_for_is_ignored_without_trusted_proxies(owner_key, settings) -> None:
    settings.AUTH_FAILURE_LIMIT = 2
    assert settings.TRUSTED_PROXY_COUNT == 0
    for spoofed in ("192.0.2.1", "192.0.2.2"):
        # A guesser cannot escape the limit by making up addresses.
        client_from("203.0.113.11", wrong_key(), HTTP_X_FORWARDED_FOR=spoofed).get("/api/v1/tenant")
    blocked = client_from("203.0.113.11", wrong_key(), HTTP_X_FORWARDED_FOR="192.0.2.9")
    assert blocked.get("/api/v1/tenant").status_code == 429


def test_forwarded_for_names_the_client_behind_trusted_proxies(db, settings) -> None:
    settings.AUTH_FAILURE_LIMIT = 2
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = "10.0.0.1"
    # The client may put anything in front; the proxy appends the address it saw, last.
    for _ in range(2):
        client_from(proxy, wrong_key(), HTTP_X_FORWARDED_FOR="1.1.1.1, 192.0.2.50").get(
            "/api/v1/tenant"
        )
    honest = client_from(proxy, wrong_key(), HTTP_X_FORWARDED_FOR="192.0.2.51")
    assert honest.get("/api/v1/tenant").status_code == 401
    same_guesser = client_from(proxy, wrong_key(), HTTP_X_FORWARDED_FOR="192.0.2.50")
    assert same_guesser.get("/api/v1/tenant").status_code == 429


@pytest.mark.parametrize(
    ("proxies", "forwarded", "expected"),
    [
        (0, "192.0.2.1", "10.0.0.1"),
        (1, "192.0.2.1", "192.0.2.1"),
        (1, "6.6.6.6, 192.0.2.1", "192.0.2.1"),
        (2, "192.0.2.1, 10.0.0.2", "192.0.2.1"),
        (2, "10.0.0.2", "10.0.0.1"),  # fewer entries than proxies: someone skipped a hop
        (1, "not-an-address", "10.0.0.1"),
        (1, "", "10.0.0.1"),
        (1, "2001:db8::1", "2001:db8::1"),
    ],
)
def test_client_address(rf, settings, proxies, forwarded, expected) -> None:
    settings.TRUSTED_PROXY_COUNT = proxies
    request = rf.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=forwarded)
    assert auth_throttle.client_address(request) == expected
