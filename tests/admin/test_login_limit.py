"""Failed admin logins are limited per username and per client address (config/admin_site.py)."""

from __future__ import annotations

import logging

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.test import Client

from tests.factories import PASSWORD
from tests.support.clock import Clock

LOGIN_URL = "/admin/login/?next=/admin/"
LIMIT = 5


@pytest.fixture
def operator(db) -> User:
    return User.objects.create_user("operator", password=PASSWORD, is_staff=True)


@pytest.fixture(autouse=True)
def _small_limit(settings) -> None:
    settings.ADMIN_LOGIN_FAILURE_LIMIT = LIMIT


def log_in(username: str, password: str, *, address: str = "203.0.113.1", **extra: str):
    client = Client(REMOTE_ADDR=address, **extra)
    response = client.post(
        LOGIN_URL, {"username": username, "password": password, "next": "/admin/"}
    )
    return client, response


def assert_logged_in(client: Client, response) -> None:
    assert response.status_code == 302, response.content[:500]
    assert response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def assert_refused_for_too_many_failures(response) -> None:
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    assert 1 <= int(response["Retry-After"]) <= django_settings.ADMIN_LOGIN_FAILURE_WINDOW_SECONDS
    # Still the login page, ready for the next try.
    assert b'name="password"' in response.content


def test_the_default_limit_is_ten_in_fifteen_minutes() -> None:
    from config import settings as defaults  # the module, untouched by the fixture

    assert (defaults.ADMIN_LOGIN_FAILURE_LIMIT, defaults.ADMIN_LOGIN_FAILURE_WINDOW_SECONDS) == (
        10,
        900,
    )


def test_the_right_password_is_refused_after_too_many_wrong_ones(operator) -> None:
    for attempt in range(LIMIT):
        _, response = log_in("operator", f"wrong {attempt}", address=f"198.51.100.{attempt}")
        assert response.status_code == 200
        assert b"correct username and password" in response.content
    _, refused = log_in("operator", "wrong again", address="198.51.100.99")
    assert_refused_for_too_many_failures(refused)
    # The right password, from yet another address: guessing must not go on at full speed.
    client, right = log_in("operator", PASSWORD, address="198.51.100.100")
    assert_refused_for_too_many_failures(right)
    assert client.get("/admin/").status_code == 302  # not logged in


def test_the_username_count_ignores_case(operator) -> None:
    for attempt in range(LIMIT):
        log_in("Operator" if attempt % 2 else "OPERATOR", "wrong", address=f"192.0.2.{attempt}")
    _, refused = log_in("operator", PASSWORD, address="192.0.2.99")
    assert_refused_for_too_many_failures(refused)


def test_an_address_that_sprays_usernames_is_refused(operator) -> None:
    for attempt in range(LIMIT):
        log_in(f"guess-{attempt}", "wrong", address="203.0.113.50")
    _, refused = log_in("operator", PASSWORD, address="203.0.113.50")
    assert_refused_for_too_many_failures(refused)
    # The operator, elsewhere, is not affected.
    client, response = log_in("operator", PASSWORD, address="203.0.113.51")
    assert_logged_in(client, response)


def test_two_hundred_wrong_passwords_then_the_right_one_does_not_log_in(operator, settings) -> None:
    settings.ADMIN_LOGIN_FAILURE_LIMIT = 10
    statuses = [log_in("operator", f"guess {n}")[1].status_code for n in range(200)]
    assert statuses[:10] == [200] * 10
    assert set(statuses[10:]) == {429}
    client, right = log_in("operator", PASSWORD)
    assert right.status_code == 429
    assert client.get("/admin/").status_code == 302


def test_logins_under_the_limit_work_and_do_not_count(operator) -> None:
    for _ in range(LIMIT * 2):
        client, response = log_in("operator", PASSWORD)
        assert_logged_in(client, response)
    for attempt in range(LIMIT - 1):
        log_in("operator", f"typo {attempt}")
    client, response = log_in("operator", PASSWORD)
    assert_logged_in(client, response)


def test_the_limit_ends_with_its_window(operator, settings, clock: Clock) -> None:
    clock.now = 1_000_000 * settings.ADMIN_LOGIN_FAILURE_WINDOW_SECONDS + 30.0
    for attempt in range(LIMIT):
        log_in("operator", f"wrong {attempt}")
    _, refused = log_in("operator", PASSWORD)
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) == settings.ADMIN_LOGIN_FAILURE_WINDOW_SECONDS - 30
    clock.advance(settings.ADMIN_LOGIN_FAILURE_WINDOW_SECONDS)
    client, response = log_in("operator", PASSWORD)
    assert_logged_in(client, response)


def test_forwarded_for_is_ignored_without_trusted_proxies(operator, settings) -> None:
    assert settings.TRUSTED_PROXY_COUNT == 0
    for attempt in range(LIMIT):
        log_in(f"guess-{attempt}", "wrong", HTTP_X_FORWARDED_FOR=f"192.0.2.{attempt}")
    _, refused = log_in("someone", "wrong", HTTP_X_FORWARDED_FOR="192.0.2.200")
    assert_refused_for_too_many_failures(refused)


def test_the_login_page_itself_is_not_limited(operator) -> None:
    for attempt in range(LIMIT + 1):
        log_in("operator", f"wrong {attempt}")
    assert Client(REMOTE_ADDR="203.0.113.1").get(LOGIN_URL).status_code == 200


def test_redis_down_fails_open_and_logs(operator, settings, caplog) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    settings.REDIS_SOCKET_TIMEOUT_SECONDS = 0.5
    with caplog.at_level(logging.WARNING, logger="config.auth_throttle"):
        for attempt in range(LIMIT + 1):
            log_in("operator", f"wrong {attempt}")
        client, response = log_in("operator", PASSWORD)
    assert_logged_in(client, response)
    assert "limiter unavailable" in caplog.text
