"""Authentication has one entry point: config.credentials reads the Authorization header, and
conversations.authentication.request_authenticate turns it into a tenant or a failure.

The API views (DRF), the SSE stream, the failed-authentication limit and /metrics all go
through it, so they answer the same credentials the same way, and a new surface that reads
the header by itself is refused here.
"""

from __future__ import annotations

import ast
import uuid
from pathlib import Path

import pytest
from django.test import Client

from conversations.services import CreatedApiKey, api_key_revoke
from tests.support.api import assert_error

REPO_ROOT = Path(__file__).resolve().parents[2]
NOT_SERVER_CODE = {"tests", "benchmarks"}
HEADER_NAMES = {"authorization", "http_authorization"}
# The one module that reads the header from a Django request.
ENTRY_POINT = "config/credentials.py"
# Modules that may look at the raw header for something else than deciding access, and why.
ALLOWED_READERS = {
    # ASGI, before Django: groups waiting requests by the key's clear prefix; it never lets a
    # request in or keeps one out (authentication still runs, through the entry point).
    "config/fair_share.py",
}
SURFACES = {
    "api": "/api/v1/tenant",
    "openai": "/v1/models",
    "stream": f"/api/v1/messages/{uuid.UUID(int=0)}/stream",
}


def _header_reads(tree: ast.AST) -> list[int]:
    """Lines that read an Authorization header: its name used as a lookup (a subscript, an
    argument, a comparison), its ASGI bytes name anywhere, or DRF's header helper."""
    lines = []
    for node in ast.walk(tree):
        looked_up: list[ast.expr] = []
        if isinstance(node, ast.Subscript):
            looked_up = [node.slice]
        elif isinstance(node, ast.Call):
            looked_up = list(node.args)
        elif isinstance(node, ast.Compare):
            looked_up = [node.left, *node.comparators]
        for expression in looked_up:
            if (
                isinstance(expression, ast.Constant)
                and isinstance(expression.value, str)
                and expression.value.lower() in HEADER_NAMES
            ):
                lines.append(expression.lineno)
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, bytes)
            and node.value.lower() in {name.encode() for name in HEADER_NAMES}
        ):
            lines.append(node.lineno)
        name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
        if name == "get_authorization_header":
            lines.append(node.lineno)
    return lines


def _server_modules() -> list[Path]:
    return [
        path
        for package in sorted(REPO_ROOT.iterdir())
        if (package / "__init__.py").exists() and package.name not in NOT_SERVER_CODE
        for path in sorted(package.rglob("*.py"))
    ]


def test_only_the_entry_point_reads_the_authorization_header() -> None:
    readers = {}
    for path in _server_modules():
        lines = _header_reads(ast.parse(path.read_text(), filename=str(path)))
        if lines:
            readers[path.relative_to(REPO_ROOT).as_posix()] = lines
    assert ENTRY_POINT in readers  # the check itself still finds a read
    unexpected = {path: lines for path, lines in readers.items() if path != ENTRY_POINT}
    assert set(unexpected) <= ALLOWED_READERS, (
        f"Only {ENTRY_POINT} reads the Authorization header; go through it "
        f"(conversations.authentication.request_authenticate for API keys): {unexpected}"
    )


def _from(address: str, header: str) -> Client:
    return Client(REMOTE_ADDR=address, HTTP_AUTHORIZATION=header)


@pytest.mark.parametrize(
    "header_of",
    [
        pytest.param(lambda key: f"Bearer {key}", id="revoked-key"),
        pytest.param(lambda key: f"Basic {key}", id="malformed"),
        pytest.param(lambda key: "Bearer ", id="empty"),
    ],
)
def test_every_surface_refuses_the_same_credentials_the_same_way(
    owner_key: CreatedApiKey, settings, header_of
) -> None:
    settings.METRICS_TOKEN = "operator-metrics-token-0123456789"
    api_key_revoke(api_key=owner_key.api_key)
    header = header_of(owner_key.secret)

    api = _from("198.51.100.1", header).get(SURFACES["api"])
    stream = _from("198.51.100.2", header).get(SURFACES["stream"])
    error = assert_error(api, 401, "authentication_failed")
    assert_error(stream, 401, "authentication_failed")
    assert stream.json() == api.json()
    assert stream["WWW-Authenticate"] == api["WWW-Authenticate"] == 'Bearer realm="api"'
    # The OpenAI-compatible surface says the same, in OpenAI's shape.
    openai = _from("198.51.100.3", header).get(SURFACES["openai"])
    assert openai.status_code == 401
    assert openai.json()["error"]["message"] == error["message"]
    # /metrics: a tenant's credentials, revoked or not, are nothing there.
    assert _from("127.0.0.1", header).get("/metrics").status_code == 404


def test_no_credentials_are_refused_the_same_way_and_never_counted(db, settings) -> None:
    settings.AUTH_FAILURE_LIMIT = 1
    for _ in range(3):
        api = Client(REMOTE_ADDR="198.51.100.9").get(SURFACES["api"])
        stream = Client(REMOTE_ADDR="198.51.100.9").get(SURFACES["stream"])
        assert_error(api, 401, "not_authenticated")
        assert stream.json() == api.json()
        assert stream["WWW-Authenticate"] == api["WWW-Authenticate"]


def test_failures_on_every_surface_count_against_the_same_key_prefix(
    owner_key: CreatedApiKey, settings
) -> None:
    settings.AUTH_FAILURE_LIMIT = len(SURFACES)
    api_key_revoke(api_key=owner_key.api_key)
    header = f"Bearer {owner_key.secret}"
    # A new address each time: only the key's prefix can add the failures up.
    for number, url in enumerate(SURFACES.values()):
        assert _from(f"203.0.113.{number}", header).get(url).status_code == 401
    for number, url in enumerate(SURFACES.values(), start=100):
        assert _from(f"203.0.113.{number}", header).get(url).status_code == 429
