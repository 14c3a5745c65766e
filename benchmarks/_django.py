"""Shared set-up for benchmark scripts: Django on a throwaway database of the chosen kind."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DATABASE = "bench_llama_backend"
DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/postgres"


@contextmanager
def throwaway_database(kind: str, postgres_admin_url: str) -> Iterator[str]:
    """Yield a DATABASE_URL for an empty database of `kind` (sqlite/postgres), then drop it."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            yield f"sqlite:///{Path(directory) / 'bench.sqlite3'}"
        return
    import psycopg

    with psycopg.connect(postgres_admin_url, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE}")
        connection.execute(f"CREATE DATABASE {BENCH_DATABASE}")
    base = postgres_admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{BENCH_DATABASE}"
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)")


def setup_django(database_url: str) -> None:
    sys.path.insert(0, str(REPO_ROOT))
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
