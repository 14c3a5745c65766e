"""Real processes for end-to-end tests: the ASGI web server and Celery workers, sharing the
test database and Redis with the test process, and a local Bedrock server per test."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from conversations.services import api_key_create, tenant_create
from devtools import processes
from devtools.local_bedrock import LocalBedrockServer
from devtools.processes import ManagedProcess, free_port
from tests.support.live_api import Api
from tests.support.local_bedrock import BEDROCK_SEED

STARTUP_TIMEOUT_SECONDS = 60
SYNC_WAIT_SECONDS = 2


def database_url() -> str:
    """The test database, as the other processes must reach it."""
    database = connection.settings_dict
    if database["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{database['NAME']}"
    user = database.get("USER") or ""
    password = f":{database['PASSWORD']}" if database.get("PASSWORD") else ""
    credentials = f"{user}{password}@" if user else ""
    host = database.get("HOST") or "127.0.0.1"
    port = database.get("PORT") or 5432
    return f"postgres://{credentials}{host}:{port}/{database['NAME']}"


def process_environment(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def start_process(command: list[str], environment: dict[str, str], name: str) -> ManagedProcess:
    """A process of the test, its log in a directory of its own; stopped with SIGTERM to its
    whole process group (a worker's pool too), then SIGKILL after 20 s."""
    log_path = Path(tempfile.mkdtemp(prefix=f"e2e-{name}-")) / "output.log"
    return processes.start_process(
        name,
        command,
        environment,
        log_path=log_path,
        stop_timeout_seconds=20,
        terminate_group=True,
    )


# Log of each running web server by base URL, so a test that meets a 500 can show the
# server's traceback (CI keeps no other trace of it).
WEB_SERVER_LOGS: dict[str, Path] = {}


def server_traceback(base_url: str) -> str:
    """The last traceback the web server at base_url logged, or a note that it logged none."""
    log_path = WEB_SERVER_LOGS.get(base_url)
    if log_path is None:
        return "(no log known for this server)"
    lines = [
        line
        for line in log_path.read_text(errors="replace").splitlines()
        if "Traceback (most recent call last)" in line
    ]
    if not lines:
        return "(the server logged no traceback)"
    # JSON log lines carry the traceback with escaped newlines.
    return lines[-1].replace("\\n", "\n")[-4000:]


def start_uvicorn(environment: dict[str, str], name: str) -> tuple[ManagedProcess, str]:
    """uvicorn on a free port, once it answers /healthz; the process and its base URL."""
    port = free_port()
    server = start_process(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(port),
         "--no-access-log"],
        environment,
        name,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    server.wait_for_url(f"{base_url}/healthz", timeout_seconds=STARTUP_TIMEOUT_SECONDS)
    return server, base_url


@pytest.fixture(scope="session")
def web_server(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    server, base_url = start_uvicorn(
        process_environment(
            GENERATION_SYNC_WAIT_SECONDS=str(SYNC_WAIT_SECONDS), DATABASE_POOL_MAX_SIZE="40"
        ),
        "web",
    )
    WEB_SERVER_LOGS[base_url] = server.log_path
    yield base_url
    server.stop()


@pytest.fixture
def bedrock() -> Iterator[LocalBedrockServer]:
    with LocalBedrockServer(seed=BEDROCK_SEED) as server:
        yield server


@pytest.fixture
def start_worker(bedrock: LocalBedrockServer) -> Iterator[Callable[..., ManagedProcess]]:
    workers: list[ManagedProcess] = []

    def start(
        *, concurrency: int = 2, purge: bool = True, **extra_environment: str
    ) -> ManagedProcess:
        environment = process_environment(
            BEDROCK_ENDPOINT_URL=bedrock.url,
            GENERATION_RETRY_BACKOFF_SECONDS="0.05",
            GENERATION_RETRY_BACKOFF_MAX_SECONDS="0.2",
            GENERATION_MAX_RETRIES="3",
            GENERATION_LEASE_SECONDS="2",
            GENERATION_LEASE_RENEW_SECONDS="0.4",
            **extra_environment,
        )
        worker = start_process(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO",
             f"--concurrency={concurrency}", "--pool=prefork", "--without-gossip",
             "--without-mingle", "--without-heartbeat", *(["--purge"] if purge else [])],
            environment,
            "worker",
        )  # fmt: skip
        workers.append(worker)
        worker.wait_for_log(" ready.", timeout_seconds=STARTUP_TIMEOUT_SECONDS)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def api(web_server: str, catalogue: None) -> Api:
    tenant = tenant_create(slug="e2e")
    return Api(base_url=web_server, key=api_key_create(tenant=tenant).secret)
