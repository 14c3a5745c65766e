"""/metrics: for operators only, right across processes, and up while dependencies are down."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import transaction
from prometheus_client.parser import text_string_to_metric_families

from billing.models import Reservation, ReservationStatus
from billing.services import reservation_settle
from config.metrics import BEDROCK_ERRORS_KEY, record_bedrock_error
from config.redis_client import get_redis
from conversations.models import Message, MessageStatus
from conversations.services.conversations import conversation_create, user_message_create
from devtools.processes import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
LLAMA3 = "meta.llama3-1-8b-instruct-v1:0"
TOKEN = "operator-metrics-token-0123456789"
OUTSIDER = "10.0.0.5"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client, **headers: str) -> Samples:
    headers.setdefault("HTTP_AUTHORIZATION", f"Bearer {TOKEN}")
    response = client.get("/metrics", REMOTE_ADDR=OUTSIDER, **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def answered_turn(tenant, *, output_tokens: int):
    """A turn whose answer completed and settled as a worker does it (see the billing tests)."""
    conversation = conversation_create(tenant=tenant, model_id=LLAMA3)
    turn = user_message_create(conversation=conversation, content="Hello there")
    with transaction.atomic():
        Message.objects.filter(pk=turn.answer.pk).update(status=MessageStatus.COMPLETED)
        settlement = reservation_settle(
            message_id=turn.answer.pk,
            conversation_id=conversation.pk,
            input_tokens=turn.context.prompt_token_count,
            output_tokens=output_tokens,
            outcome="completed",
        )
    return settlement.record


@pytest.fixture
def token(settings) -> str:
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


@pytest.fixture
def no_token(settings) -> None:
    settings.METRICS_TOKEN = ""


@pytest.mark.django_db
def test_the_token_opens_it_from_anywhere_and_it_names_every_metric(client, token) -> None:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}", REMOTE_ADDR=OUTSIDER)
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    text = response.content.decode()
    for name in (
        "http_requests_total",
        "http_request_duration_seconds",
        "llama_generations",
        "llama_tokens_total",
        "llama_cost_usd_total",
        "llama_reservations_open",
        "llama_bedrock_errors_total",
        "llama_celery_queue_length",
        "llama_dependency_up",
    ):
        assert f"# TYPE {name} " in text, name


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"HTTP_AUTHORIZATION": "Bearer wrong-token"},
        {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}x"},
        {"HTTP_AUTHORIZATION": f"Basic {TOKEN}"},
        {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}", "REMOTE_ADDR": OUTSIDER, "method": "post"},
        # With a token set, being local is not enough.
        {"REMOTE_ADDR": "127.0.0.1"},
    ],
)
@pytest.mark.django_db
def test_without_the_token_it_is_404(client, token, headers: dict[str, str]) -> None:
    headers = {"REMOTE_ADDR": OUTSIDER, **headers}
    method = getattr(client, headers.pop("method", "get"))
    assert method("/metrics", **headers).status_code == 404


def test_the_404_looks_like_any_other(client, token) -> None:
    hidden = client.get("/metrics", REMOTE_ADDR=OUTSIDER)
    missing = client.get("/no-such-page", REMOTE_ADDR=OUTSIDER)
    assert (hidden.status_code, hidden.content) == (missing.status_code, missing.content)


@pytest.mark.parametrize("with_token", [True, False], ids=["token-set", "no-token"])
def test_a_tenant_api_key_gets_404(owner_client, settings, with_token: bool) -> None:
    settings.METRICS_TOKEN = TOKEN if with_token else ""
    assert owner_client.get("/metrics").status_code == 404  # from loopback, even
    assert owner_client.get("/metrics", REMOTE_ADDR=OUTSIDER).status_code == 404


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "127.0.0.2"])
@pytest.mark.django_db
def test_without_a_token_loopback_may_read_it(client, no_token, address: str) -> None:
    assert client.get("/metrics", REMOTE_ADDR=address).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"REMOTE_ADDR": OUTSIDER},
        {"REMOTE_ADDR": "192.168.1.20"},
        {"REMOTE_ADDR": "2001:db8::1"},
        {"REMOTE_ADDR": ""},
        # A reverse proxy on this host makes every client look local.
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9"},
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_FORWARDED": "for=203.0.113.9"},
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_REAL_IP": "203.0.113.9"},
    ],
)
def test_without_a_token_anything_else_gets_404(client, no_token, headers) -> None:
    assert client.get("/metrics", **headers).status_code == 404


def test_generations_tokens_cost_and_reservations_match_the_database(
    client, token, owner_tenant, other_tenant
) -> None:
    records = [
        answered_turn(owner_tenant, output_tokens=100),
        answered_turn(owner_tenant, output_tokens=7),
        answered_turn(other_tenant, output_tokens=50),
    ]
    pending = conversation_create(tenant=owner_tenant, model_id=LLAMA3)
    user_message_create(conversation=pending, content="Still thinking")
    failed = conversation_create(tenant=other_tenant, model_id=LLAMA3)
    failed_answer = user_message_create(conversation=failed, content="Doomed").answer
    Message.objects.filter(pk=failed_answer.pk).update(status=MessageStatus.FAILED)

    samples = scrape(client)

    generations = {
        status: value(samples, "llama_generations", status=status)
        for status in MessageStatus.values
    }
    assert generations == {
        "queued": 1,
        "running": 0,
        "completed": 3,
        "failed": 1,
        "cancelled": 0,
    }
    assert value(samples, "llama_tokens_total", model=LLAMA3, direction="input") == sum(
        record.input_tokens for record in records
    )
    assert value(samples, "llama_tokens_total", model=LLAMA3, direction="output") == 157
    cost = sum((record.cost for record in records), Decimal(0))
    assert cost > 0
    assert value(samples, "llama_cost_usd_total", model=LLAMA3) == pytest.approx(float(cost))
    open_reservations = Reservation.objects.filter(status=ReservationStatus.OPEN).count()
    assert open_reservations == 2
    assert value(samples, "llama_reservations_open") == open_reservations
    assert value(samples, "llama_dependency_up", dependency="database") == 1
    assert value(samples, "llama_dependency_up", dependency="redis") == 1


@pytest.mark.django_db
def test_bedrock_errors_are_counted_in_redis_by_code(client, token) -> None:
    before = scrape(client)
    record_bedrock_error("ThrottlingException")
    record_bedrock_error("ThrottlingException")
    record_bedrock_error("not a code; {labels}")
    after = scrape(client)

    def grown(code: str) -> float:
        name = "llama_bedrock_errors_total"
        return value(after, name, code=code) - (value(before, name, code=code) or 0)

    assert grown("ThrottlingException") == 2
    assert grown("other") == 1
    assert int(get_redis().hget(BEDROCK_ERRORS_KEY, "ThrottlingException")) >= 2


@pytest.mark.django_db
def test_the_celery_queue_length_is_read_from_redis(client, token) -> None:
    redis = get_redis()
    redis.rpush("celery", "a fake task", "another")
    try:
        samples = scrape(client)
        assert value(samples, "llama_celery_queue_length", queue="celery") == redis.llen("celery")
        assert redis.llen("celery") >= 2
    finally:
        redis.lrem("celery", 0, "a fake task")
        redis.lrem("celery", 0, "another")


@pytest.mark.django_db
def test_http_requests_are_counted_by_method_url_name_and_status(client, token) -> None:
    def count(samples: Samples, method: str, route: str, status: str) -> float:
        labels = {"method": method, "route": route, "status": status}
        return value(samples, "http_requests_total", **labels) or 0

    before = scrape(client)
    client.get("/healthz")
    client.get("/healthz")
    client.get("/no-such-page/42")
    client.generic("BREW", "/healthz")
    after = scrape(client)

    assert count(after, "GET", "healthz", "200") - count(before, "GET", "healthz", "200") == 2
    grown_unmatched = count(after, "GET", "unmatched", "404") - count(
        before, "GET", "unmatched", "404"
    )
    assert grown_unmatched == 1  # the path is never a label
    assert count(after, "other", "healthz", "405") - count(before, "other", "healthz", "405") == 1
    assert not any("no-such-page" in str(labels) for _, labels in after)
    buckets = value(after, "http_request_duration_seconds_count", method="GET", route="healthz")
    assert buckets is not None
    assert buckets >= 2


@pytest.mark.django_db
def test_redis_down_drops_only_the_redis_numbers(client, token, settings) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings.REDIS_SOCKET_TIMEOUT_SECONDS = 0.5

    record_bedrock_error("ThrottlingException")  # must not raise either
    samples = scrape(client)

    assert value(samples, "llama_dependency_up", dependency="redis") == 0
    assert value(samples, "llama_dependency_up", dependency="database") == 1
    assert value(samples, "llama_celery_queue_length", queue="celery") is None
    assert value(samples, "llama_generations", status="queued") == 0


@pytest.mark.django_db
def test_database_down_drops_only_the_database_numbers(client, token, monkeypatch) -> None:
    from django.db import OperationalError, connection

    def refuse(*args: object, **kwargs: object) -> None:
        raise OperationalError("connection refused")

    # The database cannot be stopped inside a test transaction; its cursor can fail as it would.
    monkeypatch.setattr(connection, "cursor", refuse)
    samples = scrape(client)

    assert value(samples, "llama_dependency_up", dependency="database") == 0
    assert value(samples, "llama_dependency_up", dependency="redis") == 1
    assert value(samples, "llama_generations", status="queued") is None
    assert value(samples, "llama_reservations_open") is None
    assert value(samples, "llama_celery_queue_length", queue="celery") is not None


@pytest.mark.django_db
def test_multiprocess_mode_sums_the_http_metrics_of_every_process(
    client, token, tmp_path, monkeypatch
) -> None:
    script = (
        "import django; django.setup()\n"
        "from config.metrics import http_request_observe\n"
        "for _ in range(3):\n"
        "    http_request_observe(method='GET', route='probe', status=200, seconds=0.1)\n"
    )
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    for _ in range(2):  # two "web processes"
        subprocess.run(
            [sys.executable, "-c", script], cwd=REPO_ROOT, env=environment, check=True, timeout=60
        )
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    samples = scrape(client)

    assert value(samples, "http_requests_total", method="GET", route="probe", status="200") == 6
    assert value(samples, "llama_dependency_up", dependency="database") == 1
