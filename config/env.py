"""Reading settings from the environment, and refusing unsafe production settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

# Known to everyone who reads this repository, so production must never run with it.
DEFAULT_SECRET_KEY = "insecure-development-only-secret-key-do-not-use-in-production"  # noqa: S105
MINIMUM_PRODUCTION_SECRET_KEY_LENGTH = 32
ENVIRONMENTS = ("development", "production")


def read_secret(name: str, default: str, environ: Mapping[str, str] = os.environ) -> str:
    """Return NAME, or the contents of the file named by NAME_FILE (Docker/Kubernetes secrets).

    Setting both is ambiguous, so it is refused rather than silently preferring one.
    """
    file_variable = f"{name}_FILE"
    if file_variable in environ and name in environ:
        raise ImproperlyConfigured(f"Set {name} or {file_variable}, not both.")
    if file_variable in environ:
        path = Path(environ[file_variable])
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ImproperlyConfigured(
                f"{file_variable} points to {path}, which cannot be read: {error}"
            ) from error
    return environ.get(name, default)


def production_problems(*, debug: bool, secret_key: str, allowed_hosts: list[str]) -> list[str]:
    """Everything that makes these settings unsafe to serve the public with."""
    problems = []
    if debug:
        problems.append("DEBUG must be off (set DEBUG=false).")
    if secret_key == DEFAULT_SECRET_KEY:
        problems.append("SECRET_KEY is the built-in development key; set your own.")
    elif len(secret_key) < MINIMUM_PRODUCTION_SECRET_KEY_LENGTH:
        problems.append(
            f"SECRET_KEY must be at least {MINIMUM_PRODUCTION_SECRET_KEY_LENGTH} characters."
        )
    if not allowed_hosts or "*" in allowed_hosts:
        problems.append("ALLOWED_HOSTS must list the real host names (not empty, not '*').")
    return problems


def check_production_settings(*, debug: bool, secret_key: str, allowed_hosts: list[str]) -> None:
    problems = production_problems(debug=debug, secret_key=secret_key, allowed_hosts=allowed_hosts)
    if problems:
        raise ImproperlyConfigured(
            "Refusing to start with DJANGO_ENV=production: " + " ".join(problems)
        )


def check_environment_name(name: str) -> str:
    if name not in ENVIRONMENTS:
        raise ImproperlyConfigured(
            f"DJANGO_ENV must be one of {', '.join(ENVIRONMENTS)}; got {name!r}."
        )
    return name
