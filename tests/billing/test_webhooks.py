"""Budget alert webhooks, sent to a real HTTP receiver on 127.0.0.1 (no mocked urllib)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import transaction

from billing.models import Alert, AlertKind, Budget
from billing.services import reservation_settle
from billing.tasks import deliver_alert_webhook
from billing.webhooks import (
    DeliveryResult,
    alert_webhook_build,
    alert_webhook_deliver,
    retry_delay_seconds,
    webhook_signature,
    webhook_signature_verify,
)
from conversations.services.conversations import conversation_create, user_message_create
from devtools.processes import free_port
from tests.factories import make_tenant

SECRET = "whsec_test_0123456789"
LLAMA3 = "meta.llama3-8b-instruct-v1:0"


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A tenant's endpoint: records each request, answers with the next queued status."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    requests: list[ReceivedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_status(self) -> int:
        with self.lock:
            return self.statuses.pop(0) if self.statuses else 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                state.requests.append(ReceivedRequest(self.path, dict(self.headers), body))
            status = state.next_status()
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # only a followed redirect would come here
            with state.lock:
                state.requests.append(ReceivedRequest(self.path, dict(self.headers), b""))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll interval: shutdown() waits for the loop to notice, once per test.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/budget?token=abc"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _webhook_settings(settings) -> None:
    settings.WEBHOOK_TIMEOUT_SECONDS = 5.0
    settings.WEBHOOK_MAX_RETRIES = 2


def make_alert(tenant, *, kind: str = AlertKind.SOFT_THRESHOLD, **fields: object) -> Alert:
    budget = Budget.objects.create(
        tenant=tenant, name="Monthly", period="month", limit_amount=Decimal("10")
    )
    return Alert.objects.create(
        tenant=tenant,
        budget=budget,
        kind=kind,
        period_start=datetime(2025, 6, 1, tzinfo=UTC),
        spent_amount=Decimal("8.25"),
        limit_amount=Decimal("10"),
        **fields,
    )


def loaded(alert: Alert) -> Alert:
    return Alert.objects.select_related("tenant", "budget", "end_user").get(pk=alert.pk)


# --- the request and its signature (pure) --------------------------------------------------


def test_built_body_describes_the_alert_and_its_signature_verifies(db) -> None:
    tenant = make_tenant("acme", webhook_url="https://example.com/h", webhook_secret=SECRET)
    alert = loaded(make_alert(tenant))
    now = int(time.time())

    request = alert_webhook_build(alert, timestamp=now)

    body = json.loads(request.body)
    assert body == {
        "type": "budget_alert",
        "id": str(alert.pk),
        "kind": "soft_threshold",
        "tenant": "acme",
        "budget": {
            "id": str(alert.budget_id),
            "name": "Monthly",
            "period": "month",
            "is_hard": True,
            "soft_threshold_percent": 80,
        },
        "end_user": None,
        "period_start": "2025-06-01T00:00:00+00:00",
        "spent_amount": "8.2500000000",
        "limit_amount": "10.0000000000",
        "currency": "USD",
        "created_at": alert.created_at.isoformat(),
    }
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("llama-governor")
    assert request.headers["X-Alert-Id"] == str(alert.pk)
    assert request.headers["X-Signature"].startswith(f"t={now},v1=")
    assert webhook_signature_verify(
        body=request.body, header=request.headers["X-Signature"], secret=SECRET
    )


def test_zero_amounts_are_plain_decimal_strings(db) -> None:
    tenant = make_tenant("acme", webhook_secret=SECRET)
    alert = make_alert(tenant)
    Alert.objects.filter(pk=alert.pk).update(spent_amount=Decimal(0))
    body = json.loads(alert_webhook_build(loaded(alert), timestamp=1).body)
    assert body["spent_amount"] == "0.0000000000"


def test_verification_rejects_tampering_wrong_secrets_replays_and_garbage() -> None:
    body = b'{"id":"1","kind":"limit_reached"}'
    now = 1_750_000_000
    header = webhook_signature(secret=SECRET, timestamp=now, body=body)

    assert webhook_signature_verify(body=body, header=header, secret=SECRET, now=now + 10)
    tampered = body.replace(b"limit_reached", b"soft_threshold")
    assert not webhook_signature_verify(body=tampered, header=header, secret=SECRET, now=now)
    assert not webhook_signature_verify(body=body, header=header, secret="other", now=now)
    assert not webhook_signature_verify(body=body, header=header, secret="", now=now)
    # The same request replayed ten minutes later is refused.
    assert not webhook_signature_verify(body=body, header=header, secret=SECRET, now=now + 600)
    # Moving the timestamp breaks the MAC, since the timestamp is signed too.
    shifted = header.replace(f"t={now}", f"t={now + 600}")
    assert not webhook_signature_verify(body=body, header=shifted, secret=SECRET, now=now + 600)
    digest = header.split("v1=")[1]
    garbage_headers = (
        "", "nonsense", "v1=abc", f"t={now}", f"t=x,v1={digest}", f"t=\u00b2,v1={digest}",
        f"t={now},t={now},v1={digest}", f"t={now},v1=\u00e9{digest[1:]}",
    )  # fmt: skip
    for garbage in garbage_headers:
        assert not webhook_signature_verify(body=body, header=garbage, secret=SECRET, now=now)


def test_verification_accepts_any_of_several_v1_signatures_for_secret_rotation() -> None:
    body = b"{}"
    signed = webhook_signature(secret=SECRET, timestamp=100, body=body)
    header = f"t=100,v1={'0' * 64},{signed.split(',')[1]},v2=future"
    assert webhook_signature_verify(body=body, header=header, secret=SECRET, now=100)


def test_an_empty_secret_signs_nothing() -> None:
    with pytest.raises(ValueError, match="unsigned"):
        webhook_signature(secret="", timestamp=1, body=b"{}")


def test_retry_delays_grow_exponentially_with_jitter_and_a_cap() -> None:
    assert retry_delay_seconds(0, 0.0) == 15.0
    assert retry_delay_seconds(0, 1.0) == 30.0
    assert retry_delay_seconds(3, 0.5) == pytest.approx(180.0)
    assert retry_delay_seconds(50, 1.0) == 3600.0
    assert retry_delay_seconds(50, 0.0) == 1800.0


# --- delivery to a real receiver ----------------------------------------------------------


def test_task_delivers_a_signed_alert_once(db, receiver: Receiver) -> None:
    tenant = make_tenant("acme", webhook_url=receiver.url, webhook_secret=SECRET)
    alert = make_alert(tenant, kind=AlertKind.LIMIT_REACHED)

    result = deliver_alert_webhook.apply(args=[str(alert.pk)])

    assert result.get() == "delivered"
    [request] = receiver.requests
    assert request.path == "/hooks/budget?token=abc"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Alert-Id"] == str(alert.pk)
    assert webhook_signature_verify(
        body=request.body, header=request.headers["X-Signature"], secret=SECRET
    )
    assert json.loads(request.body)["kind"] == "limit_reached"
    alert.refresh_from_db()
    assert alert.webhook_delivered_at is not None
    assert alert.webhook_attempts == 1

    # Delivered alerts are never sent again, by a duplicate task or a manual retry.
    assert deliver_alert_webhook.apply(args=[str(alert.pk)]).get() == "skipped"
    assert len(receiver.requests) == 1


def test_receiver_errors_are_recorded_and_retried_until_the_limit(db, receiver) -> None:
    tenant = make_tenant("acme", webhook_url=receiver.url, webhook_secret=SECRET)
    alert = make_alert(tenant)
    receiver.statuses = [500, 500, 500]

    result = deliver_alert_webhook.apply(args=[str(alert.pk)])

    # WEBHOOK_MAX_RETRIES = 2: the first try and two retries, then it gives up.
    assert result.get() == "abandoned"
    assert len(receiver.requests) == 3
    alert.refresh_from_db()
    assert alert.webhook_delivered_at is None
    assert alert.webhook_attempts == 3
    assert alert.webhook_last_error == "HTTP 500 Internal Server Error"


def test_a_retry_after_a_failure_delivers(db, receiver: Receiver) -> None:
    tenant = make_tenant("acme", webhook_url=receiver.url, webhook_secret=SECRET)
    alert = make_alert(tenant)
    receiver.statuses = [503]

    assert deliver_alert_webhook.apply(args=[str(alert.pk)]).get() == "delivered"

    assert len(receiver.requests) == 2
    # A retry is the same alert: the receiver deduplicates on X-Alert-Id.
    assert {request.headers["X-Alert-Id"] for request in receiver.requests} == {str(alert.pk)}
    alert.refresh_from_db()
    assert alert.webhook_delivered_at is not None
    assert alert.webhook_attempts == 2
    assert alert.webhook_last_error == "HTTP 503 Service Unavailable"


def test_service_reports_a_failure_for_the_task_to_retry(db, receiver: Receiver) -> None:
    tenant = make_tenant("acme", webhook_url=receiver.url, webhook_secret=SECRET)
    alert = make_alert(tenant)
    receiver.statuses = [429]

    assert alert_webhook_deliver(alert_id=alert.pk) is DeliveryResult.FAILED
    alert.refresh_from_db()
    assert (alert.webhook_attempts, alert.webhook_last_error) == (1, "HTTP 429 Too Many Requests")


def test_redirects_are_not_followed(db, receiver: Receiver) -> None:
    tenant = make_tenant("acme", webhook_url=receiver.url, webhook_secret=SECRET)
    alert = make_alert(tenant)
    receiver.statuses = [302]

    assert alert_webhook_deliver(alert_id=alert.pk) is DeliveryResult.FAILED
    # urllib would have turned the POST into a bodiless GET of /elsewhere and called it sent.
    assert [request.path for request in receiver.requests] == ["/hooks/budget?token=abc"]
    alert.refresh_from_db()
    assert alert.webhook_delivered_at is None
    assert alert.webhook_last_error.startswith("HTTP 302")


def test_an_unreachable_receiver_is_a_retryable_failure_without_the_url(db) -> None:
    url = f"http://127.0.0.1:{free_port()}/hooks?token=do-not-log"
    tenant = make_tenant("acme", webhook_url=url, webhook_secret=SECRET)
    alert = make_alert(tenant)

    assert alert_webhook_deliver(alert_id=alert.pk) is DeliveryResult.FAILED
    alert.refresh_from_db()
    assert alert.webhook_attempts == 1
    assert alert.webhook_last_error.startswith("connection failed")
    assert "do-not-log" not in alert.webhook_last_error


def test_no_url_means_nothing_is_sent(db, receiver: Receiver) -> None:
    tenant = make_tenant("acme", webhook_secret=SECRET)
    alert = make_alert(tenant)

    assert deliver_alert_webhook.apply(args=[str(alert.pk)]).get() == "skipped"
    assert receiver.requests == []
    alert.refresh_from_db()
    assert (alert.webhook_delivered_at, alert.webhook_attempts) == (None, 0)


def test_no_secret_means_no_unsigned_alert_is_sent(db, receiver) -> None:
    tenant = make_tenant("acme", webhook_url=receiver.url)
    alert = make_alert(tenant)

    # Refused once, not retried: retrying cannot make up a secret.
    assert deliver_alert_webhook.apply(args=[str(alert.pk)]).get() == "refused"
    assert receiver.requests == []
    alert.refresh_from_db()
    assert alert.webhook_attempts == 0
    assert "no webhook secret" in alert.webhook_last_error


def test_secret_and_url_are_never_logged(db, receiver, caplog) -> None:
    tenant = make_tenant("acme", webhook_url=receiver.url, webhook_secret=SECRET)
    alert = make_alert(tenant)
    receiver.statuses = [500, 200]

    with caplog.at_level("DEBUG"):
        deliver_alert_webhook.apply(args=[str(alert.pk)])

    assert str(alert.pk) in caplog.text
    assert SECRET not in caplog.text
    assert "token=abc" not in caplog.text


def test_an_alert_created_by_settlement_is_sent_after_commit(
    db, receiver, settings, django_capture_on_commit_callbacks
) -> None:
    tenant = make_tenant("acme", webhook_url=receiver.url, webhook_secret=SECRET)
    # A soft budget, so the turn is accepted, that this one answer fills at once.
    Budget.objects.create(
        tenant=tenant, period="month", limit_amount=Decimal("0.00001"), is_hard=False
    )
    conversation = conversation_create(tenant=tenant, model_id=LLAMA3)
    turn = user_message_create(conversation=conversation, content="Hello")
    # Celery reads its configuration from the Django settings (namespace CELERY).
    settings.CELERY_TASK_ALWAYS_EAGER = True

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with transaction.atomic():
            settlement = reservation_settle(
                message_id=turn.answer.pk,
                conversation_id=conversation.pk,
                input_tokens=turn.context.prompt_token_count,
                output_tokens=200,
                outcome="completed",
            )
        # Nothing leaves before the transaction that created the alerts has committed.
        assert receiver.requests == []
    for callback in callbacks:
        callback()

    assert settlement is not None
    assert {alert.kind for alert in settlement.alerts} == {"soft_threshold", "limit_reached"}
    sent = sorted(json.loads(request.body)["kind"] for request in receiver.requests)
    assert sent == ["limit_reached", "soft_threshold"]
    assert not Alert.objects.filter(tenant=tenant, webhook_delivered_at__isnull=True).exists()
