"""Idempotency-Key on POST /api/v1/conversations and POST …/messages (test client)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.utils import timezone

from billing.limits import budget_create
from billing.models import BudgetPeriod, ManagedBy, Reservation
from conversations.models import Conversation, Message
from conversations.services.conversations import conversation_create
from idempotency.models import IdempotencyRecord, IdempotencyStatus
from idempotency.services import idempotency_records_purge
from tests.support.api import assert_error

MODEL = "meta.llama3-1-8b-instruct-v1:0"


def create(client, key: str | None = None, **body):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    return client.post("/api/v1/conversations", {"model": MODEL, **body}, format="json", **headers)


def send(client, conversation_id, key: str | None = None, **body):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    return client.post(
        f"/api/v1/conversations/{conversation_id}/messages",
        {"content": "Hello", **body},
        format="json",
        **headers,
    )


def test_a_retried_create_returns_the_original_conversation(owner_client) -> None:
    first = create(owner_client, "key-1", title="Llamas")
    again = create(owner_client, "key-1", title="Llamas")
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert Conversation.objects.count() == 1
    record = IdempotencyRecord.objects.get()
    assert (record.status, str(record.resource_id)) == (
        IdempotencyStatus.COMPLETED,
        first.json()["id"],
    )


def test_the_same_key_with_another_body_is_422_and_changes_nothing(owner_client) -> None:
    create(owner_client, "key-1", title="Llamas")
    response = create(owner_client, "key-1", title="Alpacas")
    assert_error(response, 422, "idempotency_key_reused")
    assert Conversation.objects.count() == 1


def test_keys_are_per_tenant(owner_client, other_client) -> None:
    mine = create(owner_client, "shared-key").json()
    theirs = create(other_client, "shared-key").json()
    assert mine["id"] != theirs["id"]
    assert Conversation.objects.count() == 2


def test_malformed_keys_are_refused_naming_the_header(owner_client) -> None:
    for key in ("has space", "x" * 256, "é"):
        response = create(owner_client, key.encode("utf-8").decode("latin-1"))
        error = assert_error(response, 400, "validation_error")
        assert "Idempotency-Key" in error["details"]
    assert Conversation.objects.count() == 0


def test_without_a_key_every_post_creates(owner_client) -> None:
    create(owner_client)
    create(owner_client)
    assert Conversation.objects.count() == 2
    assert not IdempotencyRecord.objects.exists()


def test_an_expired_key_runs_again(owner_client) -> None:
    first = create(owner_client, "old-key").json()
    IdempotencyRecord.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    second = create(owner_client, "old-key").json()
    assert first["id"] != second["id"]
    assert IdempotencyRecord.objects.count() == 1


def test_expired_records_are_purged(owner_client) -> None:
    create(owner_client, "a")
    create(owner_client, "b")
    IdempotencyRecord.objects.filter(key="a").update(expires_at=timezone.now())
    assert idempotency_records_purge() == 1
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["b"]


def test_a_retried_turn_makes_one_message_one_reservation_and_the_same_answer(
    owner_client, owner_tenant
) -> None:
    conversation = conversation_create(tenant=owner_tenant, model_id=MODEL)
    first = send(owner_client, conversation.pk, "turn-1")
    again = send(owner_client, conversation.pk, "turn-1")
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert conversation.messages.count() == 2
    assert Reservation.objects.count() == 1
    # Without the key the retry is a new turn, refused while the first answer is pending.
    assert_error(send(owner_client, conversation.pk), 409, "generation_in_progress")


def test_a_refused_turn_keeps_nothing_of_its_key(owner_client, owner_tenant) -> None:
    conversation = conversation_create(tenant=owner_tenant, model_id=MODEL)
    budget = budget_create(
        tenant=owner_tenant, period=BudgetPeriod.DAY, limit=Decimal("0.0000001"),
        managed_by=ManagedBy.OPERATOR,
    )  # fmt: skip
    assert_error(send(owner_client, conversation.pk, "turn-1"), 402, "budget_exceeded")
    assert not IdempotencyRecord.objects.exists()
    assert Message.objects.count() == 0
    budget.delete()
    # With room again the same key runs, once.
    assert send(owner_client, conversation.pk, "turn-1").status_code == 202
    assert send(owner_client, conversation.pk, "turn-1").status_code == 202
    assert Message.objects.count() == 2


def test_bad_input_with_a_key_is_400_and_keeps_nothing(owner_client, owner_tenant) -> None:
    conversation = conversation_create(tenant=owner_tenant, model_id=MODEL)
    assert_error(send(owner_client, conversation.pk, "k", content=""), 400, "validation_error")
    assert not IdempotencyRecord.objects.exists()
    assert_error(create(owner_client, "k", model="meta.nothing-v1:0"), 400, "validation_error")
    assert not IdempotencyRecord.objects.exists()


def test_a_sync_turn_stores_its_final_answer_for_replays(owner_client, owner_tenant, settings):
    settings.GENERATION_SYNC_WAIT_SECONDS = 0.05  # no worker: the answer stays queued
    conversation = conversation_create(tenant=owner_tenant, model_id=MODEL)
    first = send(owner_client, conversation.pk, "sync-1", mode="sync")
    assert first.status_code == 202
    record = IdempotencyRecord.objects.get()
    assert record.status == IdempotencyStatus.IN_PROGRESS
    answer = Message.objects.get(role="assistant")
    Message.objects.filter(pk=answer.pk).update(status="completed", content="Hi there.")
    again = send(owner_client, conversation.pk, "sync-1", mode="sync")
    assert again.status_code == 201
    assert again.json()["assistant_message"]["content"] == "Hi there."
    assert again.json()["user_message"] == first.json()["user_message"]
    record.refresh_from_db()
    assert record.status == IdempotencyStatus.COMPLETED
    assert send(owner_client, conversation.pk, "sync-1", mode="sync").json() == again.json()
