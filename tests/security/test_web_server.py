"""The web server as deployed: uvicorn started by config.web_server's command, as the run
command, the Dockerfile and docker-compose.yml start it, with raw sockets where a client
library would hide what matters (when the answer comes, and how much was sent by then)."""

from __future__ import annotations

import json
import secrets
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from config.web_server import proxy_header_arguments, uvicorn_command
from conversations.services import api_key_create
from devtools.processes import ManagedProcess, free_port
from models_catalog.services import catalogue_load
from tests.e2e.conftest import (
    STARTUP_TIMEOUT_SECONDS,
    process_environment,
    start_process,
)
from tests.factories import make_tenant
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

BODY_LIMIT = 100_000
FAILURE_LIMIT = 3
CONVERSATIONS = "/api/v1/conversations"
MODEL_ID = "meta.llama3-1-8b-instruct-v1:0"
CHUNK = 16 * 1024


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
        MAX_REQUEST_BODY_BYTES=str(BODY_LIMIT),
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


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def read_response(connection: socket.socket, timeout: float = 10) -> RawResponse:
    """One HTTP/1.1 response with a Content-Length, read off a raw socket."""
    connection.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return RawResponse(int(status_line.split()[1]), headers, body)


def request_head(server: WebServer, path: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", *headers, "", ""]
    return "\r\n".join(lines).encode()


def assert_too_large(response: RawResponse) -> None:
    assert response.status == 413, response
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == "request_too_large"
    assert str(BODY_LIMIT) in error["message"]
    assert response.headers.get("connection") == "close"
    assert response.headers.get("x-request-id")


# --- Body size --------------------------------------------------------------------------


def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(web_server) -> None:
    """No Content-Length: the server counts what arrives and answers as soon as it is over,
    while the client is far from done (it would send 500 times the limit)."""
    intended = 500 * BODY_LIMIT
    chunk = f"{CHUNK:x}\r\n".encode() + b"x" * CHUNK + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", web_server.port)) as connection:
        connection.sendall(
            request_head(
                web_server,
                CONVERSATIONS,
                "Content-Type: application/json",
                "Transfer-Encoding: chunked",
            )
        )
        answered = False
        while sent < intended:
            readable, _, _ = select.select([connection], [], [], 0.005)
            if readable:
                answered = True
                break
            try:
                connection.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                answered = True
                break
            sent += CHUNK
        assert answered, "the server read the whole body without answering"
        response = read_response(connection)
    assert_too_large(response)
    # Over the limit by at most what was in flight (uvicorn buffers 64 KiB, sockets a few).
    assert BODY_LIMIT < sent < 10 * BODY_LIMIT, sent


def test_a_declared_length_over_the_limit_is_refused_before_any_byte_is_read(
    web_server,
) -> None:
    """A 300 MB Content-Length, unauthenticated, with `Expect: 100-continue`: the answer is
    413 at once, without the 100 Continue that would ask for the body, and without waiting
    for a byte of it."""
    with socket.create_connection(("127.0.0.1", web_server.port)) as connection:
        connection.sendall(
            request_head(
                web_server,
                CONVERSATIONS,
                "Content-Type: application/json",
                f"Content-Length: {300 * 1024 * 1024}",
                "Expect: 100-continue",
            )
        )
        started = time.monotonic()
        response = read_response(connection, timeout=5)
        assert time.monotonic() - started < 5
    assert_too_large(response)


def test_a_declared_length_that_lies_is_refused_when_the_bytes_pass_the_limit(
    web_server,
) -> None:
    """A Content-Length over the limit that the client never means to send: it sends a few
    bytes and waits, and gets its 413 without the server waiting for the rest."""
    with socket.create_connection(("127.0.0.1", web_server.port)) as connection:
        connection.sendall(
            request_head(
                web_server,
                CONVERSATIONS,
                "Content-Type: application/json",
                f"Content-Length: {BODY_LIMIT + 1}",
            )
            + b'{"model": '
        )
        response = read_response(connection, timeout=5)
    assert_too_large(response)


@pytest.fixture
def api_key(web_server, transactional_db) -> str:
    catalogue_load()
    return api_key_create(tenant=make_tenant("alice")).secret


def padded_body(size: int) -> bytes:
    """A JSON body of exactly `size` bytes that creates a conversation."""
    body = json.dumps({"model": MODEL_ID}).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


def chunks_of(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), CHUNK):
        yield body[start : start + CHUNK]


def test_bodies_at_the_limit_are_served(web_server, api_key) -> None:
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    declared = requests.post(
        web_server.url + CONVERSATIONS, data=padded_body(BODY_LIMIT), headers=headers, timeout=30
    )
    assert declared.status_code == 201, declared.text
    chunked = requests.post(
        web_server.url + CONVERSATIONS,
        data=chunks_of(padded_body(BODY_LIMIT)),  # a generator: sent chunked
        headers=headers,
        timeout=30,
    )
    assert chunked.request.headers.get("Transfer-Encoding") == "chunked"
    # It reached the application (DRF itself reads only bodies with a Content-Length).
    assert chunked.status_code != 413, chunked.text


def test_a_chunked_body_one_byte_over_the_limit_is_refused(web_server, api_key) -> None:
    response = requests.post(
        web_server.url + CONVERSATIONS,
        data=chunks_of(padded_body(BODY_LIMIT + 1)),
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"


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


def test_a_valid_key_is_served_while_its_address_floods_bad_keys(web_server, api_key) -> None:
    other_tenant_key = api_key_create(tenant=make_tenant("bob")).secret
    statuses = [get_tenant(web_server, wrong_key()).status_code for _ in range(FAILURE_LIMIT + 5)]
    assert statuses == [401] * FAILURE_LIMIT + [429] * 5
    for key, slug in ((other_tenant_key, "bob"), (api_key, "alice")):
        response = get_tenant(web_server, key)
        assert response.status_code == 200, response.text
        assert response.json()["slug"] == slug


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
