"""Settings come from the environment; production refuses unsafe defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import (
    DEFAULT_SECRET_KEY,
    check_environment_name,
    production_problems,
    read_secret,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
GOOD_SECRET = "a-long-random-production-secret-key-0123456789"


def load_settings(**variables: str) -> subprocess.CompletedProcess[str]:
    """Import the settings in a fresh interpreter with exactly these variables set."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DJANGO_ENV", "DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL"}
    }
    environment.update(variables)
    script = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DEBUG, s.DATABASES['default']['ENGINE'], s.REDIS_URL, s.ALLOWED_HOSTS, "
        "s.SESSION_COOKIE_SECURE, s.AWS_REGION, s.BEDROCK_ENDPOINT_URL)"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env={**environment, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_embedded_defaults_need_no_variables() -> None:
    result = load_settings()
    assert result.returncode == 0, result.stderr
    debug, engine, *_ = result.stdout.split()
    assert debug == "True"
    assert engine == "django.db.backends.sqlite3"


def test_variables_override_defaults() -> None:
    result = load_settings(
        DATABASE_URL="postgres://user@db.example:5432/app",
        REDIS_URL="redis://cache.example:6379/3",
        AWS_REGION="us-east-1",
        BEDROCK_ENDPOINT_URL="http://127.0.0.1:9999",
        DEBUG="false",
    )
    assert result.returncode == 0, result.stderr
    assert "django.db.backends.postgresql" in result.stdout
    assert "redis://cache.example:6379/3" in result.stdout
    assert "us-east-1" in result.stdout
    assert "http://127.0.0.1:9999" in result.stdout
    assert result.stdout.startswith("False")


def test_production_refuses_debug_and_the_default_secret_key() -> None:
    result = load_settings(DJANGO_ENV="production", DEBUG="true", ALLOWED_HOSTS="api.example")
    assert result.returncode != 0
    assert "DEBUG must be off" in result.stderr
    assert "SECRET_KEY is the built-in development key" in result.stderr


def test_production_starts_with_safe_settings() -> None:
    result = load_settings(
        DJANGO_ENV="production", SECRET_KEY=GOOD_SECRET, ALLOWED_HOSTS="api.example"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "False"
    assert "True" in result.stdout.split()  # secure cookies
    assert "testserver" not in result.stdout


def test_production_problems_lists_each_problem() -> None:
    assert production_problems(debug=False, secret_key=GOOD_SECRET, allowed_hosts=["a"]) == []
    problems = production_problems(debug=True, secret_key=DEFAULT_SECRET_KEY, allowed_hosts=[])
    assert len(problems) == 3
    assert production_problems(debug=False, secret_key="short", allowed_hosts=["*"]) == [
        "SECRET_KEY must be at least 32 characters.",
        "ALLOWED_HOSTS must list the real host names (not empty, not '*').",
    ]


def test_secret_can_come_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(GOOD_SECRET + "\n")
    assert read_secret("SECRET_KEY", "default", {"SECRET_KEY_FILE": str(secret_file)}) == (
        GOOD_SECRET
    )
    assert read_secret("SECRET_KEY", "default", {}) == "default"
    assert read_secret("SECRET_KEY", "default", {"SECRET_KEY": "direct"}) == "direct"


def test_secret_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ImproperlyConfigured, match="cannot be read"):
        read_secret("SECRET_KEY", "d", {"SECRET_KEY_FILE": str(tmp_path / "missing")})
    with pytest.raises(ImproperlyConfigured, match="not both"):
        read_secret("SECRET_KEY", "d", {"SECRET_KEY": "x", "SECRET_KEY_FILE": "/x"})


def test_unknown_environment_name_is_refused() -> None:
    assert check_environment_name("production") == "production"
    with pytest.raises(ImproperlyConfigured, match="DJANGO_ENV"):
        check_environment_name("prod")
