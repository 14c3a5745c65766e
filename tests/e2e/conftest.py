"""Real processes for end-to-end tests: the ASGI web server and Celery workers, sharing the
test database and Redis with the test process, and a local Bedrock server per test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings
from django.db import connection

from billing.default_prices import default_prices_load
from billing.models import ModelPrice
from config.embedded import free_port
from conversations.services import api_key_create, tenant_create
from models_catalog.bedrock.local_server import LocalBedrockServer
from models_catalog.models import FoundationModel
from models_catalog.services import catalogue_load

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_SECONDS = 60
LLAMA3 = "meta.llama3-1-8b-instruct-v1:0"
BEDROCK_SEED = 11
SYNC_WAIT_SECONDS = 2


def wait_for(condition: Callable[[], Any], *, timeout: float = 30, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {condition}")


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


def child_pids(parent_pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The parent pid is the 2nd field after the parenthesised command name.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent_pid:
            children.append(int(entry.name))
    return children


@dataclass
class ManagedProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_process(command: list[str], environment: dict[str, str], name: str) -> ManagedProcess:
    log_path = Path(tempfile.mkdtemp(prefix=f"e2e-{name}-")) / "output.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ManagedProcess(process=process, log_path=log_path)


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


@pytest.fixture(scope="session")
def web_server(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    port = free_port()
    server = start_process(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(port),
         "--no-access-log"],
        process_environment(
            GENERATION_SYNC_WAIT_SECONDS=str(SYNC_WAIT_SECONDS), DATABASE_POOL_MAX_SIZE="40"
        ),
        "web",
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if server.process.poll() is not None:
            pytest.fail(f"web server exited:\n{server.log()}")
        try:
            return requests.get(f"{base_url}/healthz", timeout=5).status_code == 200
        except requests.RequestException:  # not listening yet, or still importing
            return False

    wait_for(healthy, timeout=STARTUP_TIMEOUT_SECONDS)
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

        def ready() -> bool:
            if worker.process.poll() is not None:
                pytest.fail(f"worker exited:\n{worker.log()}")
            return " ready." in worker.log()

        wait_for(ready, timeout=STARTUP_TIMEOUT_SECONDS)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@dataclass
class Api:
    base_url: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.base_url + path, headers=self.headers, timeout=30, **kwargs)

    def post(self, path: str, payload: dict | None = None, **kwargs: Any) -> requests.Response:
        return requests.post(
            self.base_url + path, json=payload or {}, headers=self.headers, timeout=90, **kwargs
        )

    def new_conversation(self, **fields: Any) -> str:
        response = self.post("/api/v1/conversations", {"model": LLAMA3, **fields})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def send(self, conversation_id: str, content: str, **fields: Any) -> requests.Response:
        return self.post(
            f"/api/v1/conversations/{conversation_id}/messages", {"content": content, **fields}
        )

    def message(self, message_id: str) -> dict[str, Any]:
        return self.get(f"/api/v1/messages/{message_id}").json()

    def wait_final(self, message_id: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(
            lambda: (
                (m := self.message(message_id))["status"] in ("completed", "failed", "cancelled")
                and m
            ),
            timeout=timeout,
        )


@pytest.fixture
def api(web_server: str, transactional_db: None) -> Api:
    # Transactional tests empty the tables between tests, data migrations' rows included.
    catalogue_load()
    default_prices_load(model_class=FoundationModel, price_class=ModelPrice)
    tenant = tenant_create(slug="e2e")
    return Api(base_url=web_server, key=api_key_create(tenant=tenant).secret)


@dataclass
class SseEvent:
    event: str
    data: Any
    id: str | None


def read_sse(
    response: requests.Response, *, stop_after: Callable[[SseEvent], bool] | None = None
) -> Iterator[SseEvent]:
    """Parse text/event-stream the way a browser's EventSource does."""
    event_type, data_lines, event_id = "message", [], None
    for raw_line in response.iter_lines(decode_unicode=True):
        line = raw_line if raw_line is not None else ""
        if line == "":
            if data_lines:
                event = SseEvent(event_type, json.loads("\n".join(data_lines)), event_id)
                yield event
                if stop_after is not None and stop_after(event):
                    return
            event_type, data_lines = "message", []
            continue
        if line.startswith(":"):
            continue  # comment (keep-alive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event_type = value
        elif name == "data":
            data_lines.append(value)
        elif name == "id":
            event_id = value


def stream_events(api: Api, message_id: str, **headers: str) -> list[SseEvent]:
    with requests.get(
        f"{api.base_url}/api/v1/messages/{message_id}/stream",
        headers={**api.headers, **headers},
        stream=True,
        timeout=60,
    ) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/event-stream")
        return list(read_sse(response, stop_after=lambda e: e.event in ("done", "error")))
