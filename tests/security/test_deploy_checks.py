"""Production settings: Django's deploy checks pass, and what they promise holds."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from conversations.services import CreatedApiKey
from tests.security.urls import FAILURE_DETAIL
from tests.support.api import client_with_key

REPO_ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_HOST = "api.example.com"
TECHNICAL_PAGE_MARKERS = ("Traceback", "DEBUG = True", "URLconf", "technical_500", FAILURE_DETAIL)

pytestmark = pytest.mark.urls("tests.security.urls")


def production_environment(tmp_path: Path, **variables: str) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DEBUG", "SECRET_KEY", "SECRET_KEY_FILE", "ALLOWED_HOSTS"}
    }
    # A random-looking key of 64 characters, as `secrets` makes them; never django-insecure.
    secret_key = secrets.token_urlsafe(48)
    environment.update(
        DJANGO_ENV="production",
        DJANGO_SETTINGS_MODULE="config.settings",
        SECRET_KEY=secret_key,
        ALLOWED_HOSTS=PRODUCTION_HOST,
        STATIC_ROOT=str(tmp_path / "static"),
    )
    environment.setdefault("DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite3'}")
    environment.update(variables)
    return environment


def run(arguments: list[str], environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *arguments],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_deploy_checks_pass_in_production(tmp_path) -> None:
    result = run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        production_environment(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout, result.stdout + result.stderr


# Runs in the production interpreter: its settings, and a few requests through its middleware.
PRODUCTION_PROBE = """
import json
import django
django.setup()
from django.conf import settings
from django.test import Client

client = Client(HTTP_HOST="api.example.com")
plain = client.get("/healthz")
secure = client.get("/healthz", secure=True)
login = client.get("/admin/login/", secure=True)
missing = client.get("/no-such-page", secure=True)
print(json.dumps({
    "DEBUG": settings.DEBUG,
    "SESSION_COOKIE_SECURE": settings.SESSION_COOKIE_SECURE,
    "CSRF_COOKIE_SECURE": settings.CSRF_COOKIE_SECURE,
    "SESSION_COOKIE_HTTPONLY": settings.SESSION_COOKIE_HTTPONLY,
    "SECURE_SSL_REDIRECT": settings.SECURE_SSL_REDIRECT,
    "SECURE_HSTS_SECONDS": settings.SECURE_HSTS_SECONDS,
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": settings.SECURE_HSTS_INCLUDE_SUBDOMAINS,
    "SECURE_CONTENT_TYPE_NOSNIFF": settings.SECURE_CONTENT_TYPE_NOSNIFF,
    "X_FRAME_OPTIONS": settings.X_FRAME_OPTIONS,
    "TRUSTED_PROXY_COUNT": settings.TRUSTED_PROXY_COUNT,
    "plain_status": plain.status_code,
    "plain_location": plain.get("Location"),
    "secure_status": secure.status_code,
    "hsts": secure.get("Strict-Transport-Security"),
    "nosniff": secure.get("X-Content-Type-Options"),
    "login_status": login.status_code,
    "csrf_cookie_secure": bool(login.cookies["csrftoken"]["secure"]),
    "frame_options": login.get("X-Frame-Options"),
    "missing_status": missing.status_code,
    "missing_body": missing.content.decode(),
}))
"""


@pytest.fixture(scope="module")
def production(tmp_path_factory) -> dict:
    result = run(["-c", PRODUCTION_PROBE], production_environment(tmp_path_factory.mktemp("prod")))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_production_turns_debug_off(production) -> None:
    assert production["DEBUG"] is False


def test_production_cookies_are_secure(production) -> None:
    assert production["SESSION_COOKIE_SECURE"] is True
    assert production["CSRF_COOKIE_SECURE"] is True
    assert production["SESSION_COOKIE_HTTPONLY"] is True
    assert production["csrf_cookie_secure"] is True


def test_production_redirects_http_to_https(production) -> None:
    assert production["SECURE_SSL_REDIRECT"] is True
    assert production["plain_status"] == 301
    assert production["plain_location"] == f"https://{PRODUCTION_HOST}/healthz"


def test_production_sends_hsts_and_other_security_headers(production) -> None:
    assert production["SECURE_HSTS_SECONDS"] >= 31_536_000
    assert production["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert production["secure_status"] == 200
    assert production["hsts"].startswith("max-age=31536000")
    assert "includeSubDomains" in production["hsts"]
    assert production["nosniff"] == "nosniff"
    assert production["frame_options"] == "DENY"


def test_production_trusts_no_forwarded_for_by_default(production) -> None:
    assert production["TRUSTED_PROXY_COUNT"] == 0


def test_production_has_no_debug_pages(production) -> None:
    assert production["missing_status"] == 404
    assert not any(marker in production["missing_body"] for marker in TECHNICAL_PAGE_MARKERS)


def test_production_refuses_to_start_with_debug_on(tmp_path) -> None:
    result = run(["manage.py", "check"], production_environment(tmp_path, DEBUG="true"))
    assert result.returncode != 0
    assert "DEBUG must be off" in result.stderr


# --- Error pages with DEBUG off ---------------------------------------------------------------


@pytest.fixture
def debug_off(settings) -> None:
    settings.DEBUG = False


@pytest.mark.django_db
def test_a_404_outside_the_api_is_no_technical_page(client, debug_off) -> None:
    response = client.get("/no-such-page")
    assert response.status_code == 404
    body = response.content.decode()
    assert not any(marker in body for marker in TECHNICAL_PAGE_MARKERS), body


@pytest.mark.django_db
def test_a_500_outside_the_api_is_no_technical_page(client, debug_off) -> None:
    client.raise_request_exception = False
    response = client.get("/boom")
    assert response.status_code == 500
    body = response.content.decode()
    assert not any(marker in body for marker in TECHNICAL_PAGE_MARKERS), body


def test_a_500_in_the_api_is_json_without_detail(owner_client, debug_off) -> None:
    response = owner_client.get("/api/test/explode")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert FAILURE_DETAIL not in response.content.decode()


# --- Admin ---------------------------------------------------------------------------------


@pytest.fixture
def people(db) -> dict:
    users = get_user_model().objects
    return {
        "member": users.create_user("member", password="a-long-password-1"),
        "staff": users.create_user("staff", password="a-long-password-2", is_staff=True),
    }


def test_the_admin_login_page_is_reachable(client, db, debug_off) -> None:
    response = client.get("/admin/login/")
    assert response.status_code == 200
    assert b'name="password"' in response.content


@pytest.mark.parametrize("url", ["/admin/", "/admin/conversations/tenant/", "/admin/auth/user/"])
def test_admin_views_send_anyone_but_staff_to_the_login(client, people, debug_off, url) -> None:
    anonymous = client.get(url)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/admin/login/")
    client.force_login(people["member"])
    member = client.get(url)
    assert member.status_code == 302
    assert member["Location"].startswith("/admin/login/")


def test_staff_get_the_admin(client, people, debug_off) -> None:
    client.force_login(people["staff"])
    assert client.get("/admin/").status_code == 200


def test_an_api_key_does_not_open_the_admin(owner_key: CreatedApiKey, debug_off) -> None:
    response = client_with_key(owner_key.secret).get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


# --- Secrets in logs ----------------------------------------------------------------------------


def all_logged_text(caplog) -> str:
    """Messages, tracebacks and every text or number a formatter could put on a line.

    django.request records also carry the request object, whose repr holds the query string:
    formatters must not print it whole (config.logging prints its method and path).
    """
    parts = [caplog.text]
    for record in caplog.records:
        parts += [record.getMessage(), record.exc_text or ""]
        parts += [
            str(value) for value in vars(record).values() if isinstance(value, str | int | float)
        ]
    return "\n".join(parts)


def test_secrets_never_reach_the_logs(owner_key: CreatedApiKey, caplog, debug_off) -> None:
    secret = owner_key.secret
    secret_part = secret.partition(".")[2]
    client = client_with_key(secret)
    with caplog.at_level(logging.DEBUG):
        client.raise_request_exception = False
        assert client.get("/api/test/explode").status_code == 500
        assert client.get("/boom").status_code == 500
        assert client.get("/api/v1/tenant").status_code == 200
        assert client.get(f"/api/v1/models?api_key={secret}").status_code == 400
        wrong = client_with_key(f"{owner_key.api_key.prefix}.{secret_part[::-1]}")
        assert wrong.get("/api/v1/tenant").status_code == 401
    logged = all_logged_text(caplog)
    assert "Unhandled error" in logged  # the failures were logged ...
    assert secret_part not in logged  # ... without the key
    assert secret_part[::-1] not in logged
