"""Settling, cancelling and releasing with the real services: an answer is charged once,
a cancelled one for the tokens streamed, a failed one not at all, and the token quota
gets back what was not used.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import IntegrityError, transaction

from billing.models import Budget, Quota, ReservationStatus, UsageRecord
from billing.pricing import token_cost
from billing.services import BudgetExceededError, budget_state, reservation_release
from config.redis_client import get_redis
from conversations.models import MessageStatus, Tenant
from conversations.services.conversations import message_cancel
from conversations.services.generation import generation_fail
from tests.billing.governance import (
    BIG,
    MAX_GEN_LEN,
    PRICE_031,
    ledger_total,
    reservation_of,
    send_turn,
    settle,
    worst_case_of_a_turn,
)

pytestmark = pytest.mark.django_db


# -- settle once, cancel, release -------------------------------------------------------------


def test_settling_twice_charges_once(tenant: Tenant) -> None:
    budget = Budget.objects.create(tenant=tenant, period="month", limit_amount=BIG)
    turn = send_turn(tenant)

    first = settle(turn, output_tokens=120)
    again = settle(turn, output_tokens=120)  # a redelivered task

    assert first is not None
    assert again is None
    assert UsageRecord.objects.filter(message_id=turn.answer.pk).count() == 1
    budget.refresh_from_db()
    assert budget.spent_amount == first.record.cost == ledger_total(tenant)
    assert reservation_of(turn).status == ReservationStatus.SETTLED
    assert reservation_release(message_id=turn.answer.pk, reason="failed") is False


def test_one_usage_record_per_message_is_a_database_constraint(tenant: Tenant) -> None:
    turn = send_turn(tenant)
    record = settle(turn, output_tokens=10).record
    duplicate = {
        field.attname: getattr(record, field.attname)
        for field in UsageRecord._meta.concrete_fields
        if field.attname != "id"
    }
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageRecord.objects.create(**duplicate)


def test_cancelled_answer_is_charged_for_the_tokens_streamed(tenant: Tenant) -> None:
    budget = Budget.objects.create(tenant=tenant, period="month", limit_amount=BIG)
    turn = send_turn(tenant)
    prompt = turn.context.prompt_token_count

    settlement = settle(turn, output_tokens=37, outcome=MessageStatus.CANCELLED)

    assert settlement is not None
    record = settlement.record
    assert record.outcome == MessageStatus.CANCELLED
    assert (record.input_tokens, record.output_tokens) == (prompt, 37)
    assert record.cost == token_cost(
        input_tokens=prompt, output_tokens=37, input_price=PRICE_031, output_price=PRICE_031
    )
    assert record.cost < reservation_of(turn).amount
    reservation = reservation_of(turn)
    assert (reservation.status, reservation.close_reason) == (
        ReservationStatus.SETTLED,
        "cancelled",
    )
    budget.refresh_from_db()
    assert budget.spent_amount == record.cost


def test_answer_cancelled_while_queued_is_not_charged(tenant: Tenant) -> None:
    turn = send_turn(tenant)
    message_cancel(message=turn.answer)
    reservation = reservation_of(turn)
    assert (reservation.status, reservation.close_reason) == (
        ReservationStatus.RELEASED,
        "cancelled",
    )
    assert not UsageRecord.objects.exists()


def test_failed_answer_releases_its_reservation_and_frees_the_budget(tenant: Tenant) -> None:
    worst_case = worst_case_of_a_turn(tenant)
    budget = Budget.objects.create(tenant=tenant, period="day", limit_amount=worst_case)
    failing = send_turn(tenant)
    with pytest.raises(BudgetExceededError):
        send_turn(tenant)

    assert generation_fail(message_id=failing.answer.pk, code="model_error", message="bad input")

    reservation = reservation_of(failing)
    assert reservation.status == ReservationStatus.RELEASED
    assert reservation.close_reason == MessageStatus.FAILED
    assert reservation.closed_at is not None
    assert not UsageRecord.objects.exists()
    assert budget_state(budget).reserved == 0
    send_turn(tenant)  # the room is back
    assert reservation_release(message_id=failing.answer.pk, reason="failed") is False


def test_token_quota_counts_the_worst_case_and_gets_back_what_was_not_used(
    tenant: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    Quota.objects.create(tenant=tenant, tokens_per_minute=100_000)
    settled, failed = send_turn(tenant), send_turn(tenant)
    prompt = settled.context.prompt_token_count
    [[key, counted]] = reservation_of(settled).rate_token_counters
    assert counted == prompt + MAX_GEN_LEN
    assert int(get_redis().get(key)) == 2 * (prompt + MAX_GEN_LEN)

    with django_capture_on_commit_callbacks(execute=True):
        settle(settled, output_tokens=50)
    assert int(get_redis().get(key)) == (prompt + 50) + (prompt + MAX_GEN_LEN)

    with django_capture_on_commit_callbacks(execute=True):
        generation_fail(message_id=failed.answer.pk, code="model_error", message="bad input")
    assert int(get_redis().get(key)) == prompt + 50
