"""Reservations that a crash left open expire; running and recent answers are left alone."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from billing.models import Reservation, ReservationStatus
from conversations import answer_stream
from conversations.expiry import stale_generations_expire
from conversations.models import Message, MessageStatus
from conversations.services.conversations import conversation_create, user_message_create
from conversations.services.generation import Outcome, generation_run
from conversations.tasks import expire_stale_generations
from tests.factories import make_tenant

LLAMA3 = "meta.llama3-8b-instruct-v1:0"
EXPIRY_SECONDS = 3600


@pytest.fixture(autouse=True)
def _expiry_age(settings) -> None:
    settings.RESERVATION_EXPIRY_SECONDS = EXPIRY_SECONDS


@pytest.fixture
def tenant(db):
    return make_tenant("acme")


def new_answer(tenant) -> Message:
    """A user turn through the real services: a queued answer holding an open reservation."""
    conversation = conversation_create(tenant=tenant, model_id=LLAMA3, system_prompt="Be brief.")
    return user_message_create(conversation=conversation, content="What is 2 + 2?").answer


def age(answer: Message, seconds: int = EXPIRY_SECONDS + 60) -> None:
    Reservation.objects.filter(message=answer).update(
        created_at=timezone.now() - timedelta(seconds=seconds)
    )


def reservation_of(answer: Message) -> Reservation:
    return Reservation.objects.get(message=answer)


def end_without_settling(answer: Message, status: MessageStatus) -> None:
    """A final answer whose reservation stayed open: a crash between the two writes, or a
    path that forgot to close it (cancelling in the queue did, before it released)."""
    Message.objects.filter(pk=answer.pk).update(status=status, completed_at=timezone.now())


NOTHING = {"queued_failed": 0, "running_failed": 0, "final_released": 0, "running_skipped": 0}


def test_a_stale_queued_answer_fails_as_expired_and_its_reservation_is_released(
    tenant, django_capture_on_commit_callbacks
) -> None:
    answer = new_answer(tenant)
    age(answer)

    with django_capture_on_commit_callbacks(execute=True):
        counts = stale_generations_expire()

    assert counts == {**NOTHING, "queued_failed": 1}
    answer.refresh_from_db()
    assert answer.status == MessageStatus.FAILED
    assert answer.error_code == "expired"
    assert "send the message again" in answer.error_message
    assert answer.completed_at is not None
    reservation = reservation_of(answer)
    assert reservation.status == ReservationStatus.RELEASED
    assert reservation.close_reason == "expired"
    assert reservation.closed_at is not None
    # Clients waiting on the stream are told the answer is over.
    [final] = [
        entry
        for entry in answer_stream.read_until_final(answer.pk, timeout_seconds=1)
        if entry.type in answer_stream.FINAL_EVENT_TYPES
    ]
    assert final.type == answer_stream.ERROR


def test_a_running_answer_is_left_alone(tenant) -> None:
    answer = new_answer(tenant)
    Message.objects.filter(pk=answer.pk).update(status=MessageStatus.RUNNING)
    age(answer)

    assert stale_generations_expire() == {**NOTHING, "running_skipped": 1}

    answer.refresh_from_db()
    assert answer.status == MessageStatus.RUNNING
    assert reservation_of(answer).status == ReservationStatus.OPEN


def test_a_recent_reservation_is_left_alone(tenant) -> None:
    answer = new_answer(tenant)
    age(answer, seconds=EXPIRY_SECONDS - 60)

    assert stale_generations_expire() == NOTHING

    answer.refresh_from_db()
    assert answer.status == MessageStatus.QUEUED
    assert reservation_of(answer).status == ReservationStatus.OPEN


def test_the_age_and_the_clock_can_be_given(tenant) -> None:
    answer = new_answer(tenant)

    assert stale_generations_expire(older_than_seconds=60) == NOTHING
    later = timezone.now() + timedelta(seconds=61)
    assert stale_generations_expire(older_than_seconds=60, now=later)["queued_failed"] == 1

    answer.refresh_from_db()
    assert answer.error_code == "expired"


def test_a_settled_answer_is_left_alone(tenant) -> None:
    answer = new_answer(tenant)
    # Generated for real, against the local Bedrock-compatible server.
    assert generation_run(message_id=answer.pk) is Outcome.COMPLETED
    age(answer)
    settled = reservation_of(answer)

    assert stale_generations_expire() == NOTHING

    answer.refresh_from_db()
    assert answer.status == MessageStatus.COMPLETED
    assert reservation_of(answer).status == ReservationStatus.SETTLED
    assert reservation_of(answer).closed_at == settled.closed_at


@pytest.mark.parametrize(
    "status", [MessageStatus.COMPLETED, MessageStatus.FAILED, MessageStatus.CANCELLED]
)
def test_a_final_answer_with_an_open_reservation_is_released_as_expired(
    tenant, status: MessageStatus
) -> None:
    answer = new_answer(tenant)
    end_without_settling(answer, status)
    age(answer)

    assert stale_generations_expire() == {**NOTHING, "final_released": 1}

    answer.refresh_from_db()
    assert answer.status == status
    reservation = reservation_of(answer)
    assert (reservation.status, reservation.close_reason) == (ReservationStatus.RELEASED, "expired")


def test_a_second_run_changes_nothing_more(tenant) -> None:
    queued, running, cancelled = new_answer(tenant), new_answer(tenant), new_answer(tenant)
    Message.objects.filter(pk=running.pk).update(status=MessageStatus.RUNNING)
    end_without_settling(cancelled, MessageStatus.CANCELLED)
    for answer in (queued, running, cancelled):
        age(answer)

    first = stale_generations_expire()
    snapshot = {
        (r.message_id, r.status, r.closed_at) for r in Reservation.objects.filter(tenant=tenant)
    }
    second = stale_generations_expire()

    assert first == {**NOTHING, "queued_failed": 1, "final_released": 1, "running_skipped": 1}
    assert second == {**NOTHING, "running_skipped": 1}
    assert {
        (r.message_id, r.status, r.closed_at) for r in Reservation.objects.filter(tenant=tenant)
    } == snapshot


def test_the_beat_task_runs_the_expiry(tenant) -> None:
    answer = new_answer(tenant)
    age(answer)

    result = expire_stale_generations.apply()

    assert result.get() == {**NOTHING, "queued_failed": 1}
    answer.refresh_from_db()
    assert answer.status == MessageStatus.FAILED


def test_a_running_answer_whose_task_was_lost_long_ago_fails_as_expired(
    tenant, django_capture_on_commit_callbacks
) -> None:
    answer = new_answer(tenant)
    long_ago = timezone.now() - timedelta(seconds=EXPIRY_SECONDS + 60)
    Message.objects.filter(pk=answer.pk).update(status=MessageStatus.RUNNING, updated_at=long_ago)
    age(answer)
    with django_capture_on_commit_callbacks(execute=True):
        assert stale_generations_expire() == {**NOTHING, "running_failed": 1}
    answer.refresh_from_db()
    assert (answer.status, answer.error_code) == (MessageStatus.FAILED, "expired")
    assert reservation_of(answer).status == ReservationStatus.RELEASED
