"""The database is the truth about work: leases, the sweeper, fair-share claims, cancels
that always unblock, and 503 (never 500, never a 202 for work not queued) when Redis is away.

The broker is the real Redis (embedded or the machine's): a requeued task is counted in its
tenant's queue list, which no worker consumes during these tests.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import kombu.exceptions
import pytest
from django.utils import timezone

from billing.models import (
    AttemptOutcome,
    ProviderAttempt,
    Reservation,
    ReservationStatus,
)
from config.redis_client import get_redis
from conversations.models import Message, MessageStatus
from conversations.services import api_key_create
from conversations.services.conversations import (
    conversation_create,
    message_cancel,
    user_message_create,
)
from conversations.services.dispatch import generation_queue, generations_sweep
from conversations.services.generation import Outcome, _claim, generation_run
from conversations.tasks import generate_answer
from tests.factories import make_tenant
from tests.support.api import assert_error

pytestmark = pytest.mark.django_db

LLAMA31_8B = "meta.llama3-1-8b-instruct-v1:0"


@pytest.fixture
def tenant():
    return make_tenant("dispatched")


def queued_answer(tenant) -> Message:
    conversation = conversation_create(tenant=tenant, model_id=LLAMA31_8B)
    return user_message_create(conversation=conversation, content="Hello", max_gen_len=20).answer


def queue_length(tenant) -> int:
    return int(get_redis().llen(generation_queue(tenant.pk)))


def tasks_of(answer: Message) -> list[tuple[dict, bool]]:
    """The answer's tasks waiting in its tenant's queue: (their keyword arguments, whether
    they are delayed), as the broker holds them (kombu's JSON message, Celery's body)."""
    tasks = []
    for raw in get_redis().lrange(generation_queue(answer.tenant_id), 0, -1):
        message = json.loads(raw)
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        if args == [str(answer.pk)]:
            tasks.append((kwargs, message["headers"].get("eta") is not None))
    return tasks


def test_a_queued_answer_whose_task_was_lost_is_handed_to_the_broker_again(tenant) -> None:
    answer = queued_answer(tenant)
    recent = generations_sweep()
    assert recent["requeued_queued"] == 0  # just queued: left alone

    Message.objects.filter(pk=answer.pk).update(enqueued_at=timezone.now() - timedelta(hours=1))
    before = queue_length(tenant)
    assert generations_sweep()["requeued_queued"] == 1
    assert queue_length(tenant) == before + 1
    assert generations_sweep()["requeued_queued"] == 0  # stamped: not twice in a row
    answer.refresh_from_db()
    assert answer.status == MessageStatus.QUEUED


def test_a_running_answer_whose_worker_died_is_requeued_then_failed_when_attempts_run_out(
    tenant, settings
) -> None:
    settings.GENERATION_MAX_RETRIES = 1  # two attempts in all
    answer = queued_answer(tenant)
    claim = _claim(answer.pk)
    assert not isinstance(claim, Outcome)
    assert claim.attempt == 1

    assert generations_sweep()["requeued_running"] == 0  # its lease is fresh
    Message.objects.filter(pk=answer.pk).update(lease_expires_at=timezone.now())
    assert generations_sweep()["requeued_running"] == 1
    answer.refresh_from_db()
    assert answer.status == MessageStatus.QUEUED
    assert answer.lease_expires_at is None

    claim = _claim(answer.pk)
    assert not isinstance(claim, Outcome)
    assert claim.attempt == 2
    Message.objects.filter(pk=answer.pk).update(lease_expires_at=timezone.now())
    assert generations_sweep()["failed_running"] == 1
    answer.refresh_from_db()
    assert (answer.status, answer.error_code) == (MessageStatus.FAILED, "worker_lost")
    reservation = Reservation.objects.get(message_id=answer.pk)
    assert reservation.status == ReservationStatus.RELEASED
    lost = ProviderAttempt.objects.filter(message_id=answer.pk).order_by("attempt")
    assert [(row.attempt, row.outcome) for row in lost] == [
        (1, AttemptOutcome.LOST),
        (2, AttemptOutcome.LOST),
    ]


def test_a_duplicate_task_never_takes_an_answer_another_worker_holds(tenant) -> None:
    answer = queued_answer(tenant)
    first = _claim(answer.pk)
    assert not isinstance(first, Outcome)
    assert _claim(answer.pk) == Outcome.HELD  # leased to the first attempt
    Message.objects.filter(pk=answer.pk).update(lease_expires_at=timezone.now())
    second = _claim(answer.pk)  # the lease lapsed: a redelivered task takes it over
    assert not isinstance(second, Outcome)
    assert second.attempt == 2


def test_a_tenant_with_its_share_running_waits_and_another_tenant_does_not(
    tenant, settings
) -> None:
    settings.GENERATION_TENANT_MAX_RUNNING = 1
    running, waiting = queued_answer(tenant), queued_answer(tenant)
    other = queued_answer(make_tenant("neighbour"))
    assert not isinstance(_claim(running.pk), Outcome)

    assert _claim(waiting.pk) == Outcome.DEFERRED
    assert Message.objects.get(pk=waiting.pk).status == MessageStatus.QUEUED
    assert not isinstance(_claim(other.pk), Outcome)  # the neighbour is not held up
    Message.objects.filter(pk=running.pk).update(status=MessageStatus.COMPLETED)
    assert not isinstance(_claim(waiting.pk), Outcome)


def test_cancel_ends_an_answer_whose_worker_is_gone(tenant) -> None:
    answer = queued_answer(tenant)
    assert not isinstance(_claim(answer.pk), Outcome)
    Message.objects.filter(pk=answer.pk).update(lease_expires_at=timezone.now())

    cancelled = message_cancel(message=Message.objects.get(pk=answer.pk))

    assert cancelled.status == MessageStatus.CANCELLED
    assert Reservation.objects.get(message_id=answer.pk).status == ReservationStatus.RELEASED
    # The conversation takes the next turn at once.
    next_turn = user_message_create(
        conversation=answer.conversation, content="Again", max_gen_len=20
    )
    assert next_turn.answer.status == MessageStatus.QUEUED


def test_cancel_of_a_live_worker_answer_only_asks_it_to_stop(tenant) -> None:
    answer = queued_answer(tenant)
    assert not isinstance(_claim(answer.pk), Outcome)
    asked = message_cancel(message=Message.objects.get(pk=answer.pk))
    assert asked.status == MessageStatus.RUNNING
    assert asked.cancel_requested_at is not None


def test_posts_answer_503_and_store_nothing_while_redis_is_away(tenant, settings) -> None:
    conversation = conversation_create(tenant=tenant, model_id=LLAMA31_8B)
    key = api_key_create(tenant=tenant).secret
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there

    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    response = client.post(
        f"/api/v1/conversations/{conversation.pk}/messages", {"content": "Hi"}, format="json"
    )

    assert_error(response, 503, "service_unavailable")
    assert response["Retry-After"] == "5"
    assert not Message.objects.filter(conversation=conversation).exists()
    assert not Reservation.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_answer_the_broker_refuses_after_commit_fails_released_with_503(
    catalogue, monkeypatch
) -> None:
    tenant = make_tenant("refused")
    conversation = conversation_create(tenant=tenant, model_id=LLAMA31_8B)
    key = api_key_create(tenant=tenant).secret

    def broker_away(**_: object) -> None:
        raise kombu.exceptions.OperationalError("Connection refused")

    monkeypatch.setattr("conversations.services.dispatch.generation_enqueue", broker_away)
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    response = client.post(
        f"/api/v1/conversations/{conversation.pk}/messages", {"content": "Hi"}, format="json"
    )

    error = assert_error(response, 503, "service_unavailable")
    answer = Message.objects.get(pk=error["details"]["message_id"])
    assert (answer.status, answer.error_code) == (MessageStatus.FAILED, "not_queued")
    assert Reservation.objects.get(message_id=answer.pk).status == ReservationStatus.RELEASED


@pytest.mark.django_db(transaction=True)
def test_a_turn_is_queued_on_its_tenants_queue_and_stamped(catalogue) -> None:
    # Transactional: the task is handed to the broker when the turn commits.
    tenant = make_tenant("queued")
    before = queue_length(tenant)
    answer = queued_answer(tenant)
    answer.refresh_from_db()
    assert answer.enqueued_at is not None
    assert queue_length(tenant) == before + 1


def test_an_answer_waiting_for_its_tenants_share_is_woken_when_one_of_its_answers_ends(
    tenant, settings
) -> None:
    settings.GENERATION_TENANT_MAX_RUNNING = 1
    running, waiting = queued_answer(tenant), queued_answer(tenant)
    assert not isinstance(_claim(running.pk), Outcome)

    assert generate_answer(str(waiting.pk)) == Outcome.DEFERRED
    assert tasks_of(waiting) == []  # it waits in the database, with no task of its own
    assert Message.objects.get(pk=waiting.pk).enqueued_at is not None  # for the sweeper

    # The running answer's worker died; its redelivered task takes it over and ends it.
    Message.objects.filter(pk=running.pk).update(lease_expires_at=timezone.now())
    assert generation_run(message_id=running.pk) == Outcome.COMPLETED
    assert tasks_of(waiting) == [({"woken": True}, False)]  # now, not delayed

    # Woken while the share is taken again (a redelivered answer took the slot first): it
    # waits again, and no task is added.
    Message.objects.filter(pk=queued_answer(tenant).pk).update(
        status=MessageStatus.RUNNING, lease_expires_at=timezone.now() + timedelta(minutes=1)
    )
    assert generate_answer(str(waiting.pk), woken=True) == Outcome.DEFERRED
    assert tasks_of(waiting) == [({"woken": True}, False)]
