"""The web server as deployed: uvicorn started by config.web_server's command, as the run
command, the Dockerfile and docker-compose.yml start it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from config.embedded import free_port
from config.web_server import proxy_header_arguments, uvicorn_command
from conversations.services import api_key_create
from models_catalog.services import catalogue_load
from tests.conftest import make_tenant
from tests.e2e.conftest import (
    STARTUP_TIMEOUT_SECONDS,
    ManagedProcess,
    process_environment,
    start_process,
    wait_for,
)

pytestmark = pytest.mark.e2e

FAILURE_LIMIT = 3


@dataclass
class WebServer:
    process: ManagedProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def web_server(django_db_setup: None) -> Iterator[WebServer]:
    port = free_port()
    environment = process_environment(
        AUTH_FAILURE_LIMIT=str(FAILURE_LIMIT),
        TRUSTED_PROXY_COUNT="0",
    )
    command = uvicorn_command(
        environment, ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    )
    process = start_process(command, environment, "security-web")
    server = WebServer(process=process, port=port)

    def healthy() -> bool:
        if process.process.poll() is not None:
            pytest.fail(f"web server exited:\n{process.log()}")
        try:
            return requests.get(f"{server.url}/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(healthy, timeout=STARTUP_TIMEOUT_SECONDS)
    yield server
    process.stop()


@pytest.fixture
def api_key(web_server, transactional_db) -> str:
    catalogue_load()
    return api_key_create(tenant=make_tenant("alice")).secret


# --- Failed authentications -----------------------------------------------------------------


def wrong_key() -> str:
    return f"lk_{secrets.token_hex(6)}.{'x' * 43}"


def get_tenant(server: WebServer, key: str, **headers: str) -> requests.Response:
    return requests.get(
        server.url + "/api/v1/tenant",
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=10,
    )


def test_rotating_forwarded_for_does_not_reset_the_count(web_server, api_key) -> None:
    for number in range(FAILURE_LIMIT):
        forged = {"X-Forwarded-For": f"192.0.2.{number}"}
        assert get_tenant(web_server, wrong_key(), **forged).status_code == 401
    blocked = get_tenant(web_server, wrong_key(), **{"X-Forwarded-For": "192.0.2.200"})
    assert blocked.status_code == 429, blocked.text
    assert blocked.json()["error"]["code"] == "too_many_failed_authentications"
    assert int(blocked.headers["Retry-After"]) >= 1


def test_uvicorn_trusts_forwarding_headers_only_behind_trusted_proxies() -> None:
    assert proxy_header_arguments({}) == ["--no-proxy-headers"]
    assert proxy_header_arguments({"TRUSTED_PROXY_COUNT": "0"}) == ["--no-proxy-headers"]
    assert proxy_header_arguments({"TRUSTED_PROXY_COUNT": "1"}) == [
        "--proxy-headers",
        "--forwarded-allow-ips",
        "127.0.0.1",
    ]
    behind_balancer = {"TRUSTED_PROXY_COUNT": "2", "FORWARDED_ALLOW_IPS": "10.0.0.0/8"}
    assert proxy_header_arguments(behind_balancer)[-1] == "10.0.0.0/8"
    command = uvicorn_command({}, ["--port", "8000"])
    assert command[-4:] == ["config.asgi:application", "--no-proxy-headers", "--port", "8000"]
