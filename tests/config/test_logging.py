"""Log lines are JSON, carry the request id, tenant and task id, and never a secret."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
from asgiref.sync import async_to_sync
from django.http import HttpRequest, JsonResponse
from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.celery import app
from config.logging import JsonFormatter, formatter_for, redact
from config.urls import urlpatterns as real_urlpatterns

probe_logger = logging.getLogger("tests.probe")
KEY = "lk_0123456789ab.SuperSecretPart-_xyz"


class LogProbeApi(APIView):
    """Behind API key authentication, like every tenant endpoint."""

    def get(self, request: Request) -> Response:
        probe_logger.info("inside the view")
        return Response({"ok": True})


async def async_log_probe(request: HttpRequest) -> JsonResponse:
    probe_logger.info("inside the async view")
    return JsonResponse({"ok": True})


urlpatterns = [
    *real_urlpatterns,
    path("log-probe", LogProbeApi.as_view()),
    path("log-probe-async", async_log_probe),
]
with_probe_urls = pytest.mark.urls(__name__)


@app.task(name="tests.config.log_probe_task")
def log_probe_task(word: str) -> str:
    probe_logger.info("inside the task: %s", word)
    return word


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict]]]:
    """Every line the configured console handler writes during the test, parsed."""
    [handler] = [h for h in logging.getLogger().handlers if h.get_name() == "console"]
    buffer = io.StringIO()
    previous_stream = handler.setStream(buffer)
    previous_formatter = handler.formatter
    handler.setFormatter(JsonFormatter())  # whatever LOG_FORMAT the run has
    root = logging.getLogger()
    previous_level = root.level
    root.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    finally:
        handler.setStream(previous_stream)
        handler.setFormatter(previous_formatter)
        root.setLevel(previous_level)


def only(lines: list[dict], **fields: object) -> dict:
    matching = [line for line in lines if all(line.get(k) == v for k, v in fields.items())]
    assert len(matching) == 1, lines
    return matching[0]


def test_every_line_is_one_json_object_with_timestamp_level_logger_message_and_extras(
    log_lines,
) -> None:
    probe_logger.warning("two\nlines, %s", "formatted", extra={"answer": 42, "model": "m"})
    try:
        raise ValueError("bad value")
    except ValueError:
        probe_logger.exception("it failed")

    first, second = log_lines()
    assert first["level"] == "WARNING"
    assert first["logger"] == "tests.probe"
    assert first["message"] == "two\nlines, formatted"
    assert (first["answer"], first["model"]) == (42, "m")
    assert first["timestamp"].endswith("Z")
    assert datetime.fromisoformat(first["timestamp"]).utcoffset().total_seconds() == 0
    assert second["level"] == "ERROR"
    assert "ValueError: bad value" in second["exception"]
    assert "request_id" not in first  # outside a request, no context is invented


def test_a_request_id_is_generated_echoed_and_on_the_access_line(client, log_lines) -> None:
    response = client.get("/healthz")
    request_id = response["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    access = only(log_lines(), logger="access")
    assert access["request_id"] == request_id
    assert access["method"] == "GET"
    assert access["path"] == "/healthz"
    assert access["status"] == 200
    assert access["route"] == "healthz"
    assert isinstance(access["duration_ms"], float)
    assert access["level"] == "INFO"
    assert "tenant" not in access


def test_every_request_gets_its_own_id(client) -> None:
    assert client.get("/healthz")["X-Request-ID"] != client.get("/healthz")["X-Request-ID"]


@with_probe_urls
def test_a_sane_incoming_request_id_is_kept_on_every_line_and_echoed(
    owner_client, log_lines
) -> None:
    response = owner_client.get("/log-probe", HTTP_X_REQUEST_ID="edge-7f3a.b_9")
    assert response.status_code == 200, response.content
    assert response["X-Request-ID"] == "edge-7f3a.b_9"
    lines = log_lines()
    assert only(lines, message="inside the view")["request_id"] == "edge-7f3a.b_9"
    assert only(lines, logger="access")["request_id"] == "edge-7f3a.b_9"


@pytest.mark.parametrize(
    "incoming", ["a" * 65, "with space", 'quote"d', "semi;colon", "", "ünïcode"]
)
def test_an_insane_incoming_request_id_is_replaced(client, incoming: str) -> None:
    response = client.get("/healthz", HTTP_X_REQUEST_ID=incoming)
    assert re.fullmatch(r"[0-9a-f]{32}", response["X-Request-ID"])


@with_probe_urls
def test_lines_after_authentication_carry_the_tenant(owner_client, owner_tenant, log_lines) -> None:
    owner_client.get("/log-probe")
    lines = log_lines()
    for line in (only(lines, message="inside the view"), only(lines, logger="access")):
        assert line["tenant"] == "alice"
        assert line["tenant_id"] == owner_tenant.pk


def test_api_access_lines_carry_the_tenant(owner_client, owner_tenant, log_lines) -> None:
    assert owner_client.get("/api/v1/tenant").status_code == 200
    access = only(log_lines(), logger="access")
    assert access["tenant"] == "alice"
    assert access["route"] == "tenant-me"  # the URL name, not the path


def test_the_context_ends_with_the_request(owner_client, log_lines) -> None:
    owner_client.get("/api/v1/tenant")
    probe_logger.info("after the request")
    after = only(log_lines(), message="after the request")
    assert "request_id" not in after
    assert "tenant" not in after


def test_djangos_own_error_lines_carry_the_request_id(client, log_lines) -> None:
    # django.request logs a 404 after the middleware has returned.
    response = client.get("/no-such-page")
    assert response.status_code == 404
    warning = only(log_lines(), logger="django.request")
    assert warning["request_id"] == response["X-Request-ID"]
    assert warning["request"] == "GET /no-such-page"


@with_probe_urls
def test_async_views_under_asgi_get_the_request_id(async_client, log_lines) -> None:
    response = async_to_sync(async_client.get)(
        "/log-probe-async", headers={"X-Request-ID": "async-1"}
    )
    assert response.status_code == 200
    assert response["X-Request-ID"] == "async-1"
    lines = log_lines()
    assert only(lines, message="inside the async view")["request_id"] == "async-1"
    assert only(lines, logger="access")["request_id"] == "async-1"


@with_probe_urls
def test_sync_views_under_asgi_get_the_request_id_and_tenant(
    async_client, owner_key, log_lines
) -> None:
    response = async_to_sync(async_client.get)(
        "/log-probe",
        headers={"Authorization": f"Bearer {owner_key.secret}", "X-Request-ID": "asgi-2"},
    )
    assert response.status_code == 200, response.content
    lines = log_lines()
    for line in (only(lines, message="inside the view"), only(lines, logger="access")):
        assert (line["request_id"], line["tenant"]) == ("asgi-2", "alice")


def test_lines_logged_inside_a_task_carry_its_id_and_name(log_lines) -> None:
    result = log_probe_task.apply(args=["hello"])
    assert result.get() == "hello"
    probe_logger.info("after the task")
    lines = log_lines()
    inside = only(lines, message="inside the task: hello")
    assert inside["task_id"] == result.id
    assert inside["task_name"] == "tests.config.log_probe_task"
    assert "task_id" not in only(lines, message="after the task")


def test_each_task_gets_its_own_id(log_lines) -> None:
    first = log_probe_task.apply(args=["one"])
    second = log_probe_task.apply(args=["two"])
    lines = log_lines()
    assert only(lines, message="inside the task: one")["task_id"] == first.id
    assert only(lines, message="inside the task: two")["task_id"] == second.id
    assert first.id != second.id


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (KEY, "lk_0123456789ab.[REDACTED]"),
        (f"key={KEY}&x=1", "key=lk_0123456789ab.[REDACTED]&x=1"),
        (f"Authorization: Bearer {KEY}", "Authorization: Bearer lk_0123456789ab.[REDACTED]"),
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer [REDACTED]"),
        ("authorization: bearer s3cr3t, next", "authorization: bearer [REDACTED], next"),
        (f"'{KEY}'", "'lk_0123456789ab.[REDACTED]'"),
        ("nothing secret here", "nothing secret here"),
        # Prose pays for certainty: a word after "bearer" is taken for a token.
        ("the bearer of bad news", "the bearer [REDACTED] bad news"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_secrets_are_redacted_from_messages_args_extras_and_exceptions(log_lines) -> None:
    probe_logger.info("key %s", KEY)
    probe_logger.info("header %(header)s", {"header": f"Bearer {KEY}"})
    probe_logger.info("extra", extra={"authorization": "Bearer opaque-token-123"})
    try:
        raise RuntimeError(f"failed with {KEY}")
    except RuntimeError:
        probe_logger.exception("boom")
    output = json.dumps(log_lines())
    assert "SuperSecretPart" not in output
    assert "opaque-token-123" not in output
    assert output.count("lk_0123456789ab.[REDACTED]") == 3


@pytest.mark.parametrize("url", ["/api/v1/tenant", "/healthz", "/no-such-page"])
def test_keys_in_headers_and_query_strings_never_reach_the_logs(client, log_lines, url) -> None:
    client.get(f"{url}?api_key={KEY}&q={KEY}", HTTP_AUTHORIZATION=f"Bearer {KEY}")
    lines = log_lines()
    assert only(lines, logger="access")["path"] == url  # the path, never the query string
    assert "SuperSecretPart" not in json.dumps(lines)


def test_the_plain_format_is_one_readable_line_with_the_context() -> None:
    formatter = formatter_for("plain")
    record = logging.LogRecord("tests.probe", logging.INFO, __file__, 1, "hi %s", ("x",), None)
    record.request_id, record.tenant = "abc", "alice"
    line = formatter.format(record)
    assert line.endswith(" INFO tests.probe [request_id=abc tenant=alice] hi x")


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        formatter_for("xml")
