"""The reservation is the contract: what was reserved is what is sent and the most that is
charged. The call is frozen at reservation, settlement is capped at it (overruns go to the
provider ledger and an operator alert), Redis counters are given back when the transaction
that took them does not commit, and a tenant can be made to name its end users."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import transaction

from billing import rate_limits
from billing.limits import budget_create, quota_create
from billing.models import (
    Alert,
    AlertKind,
    AttemptOutcome,
    Budget,
    ManagedBy,
    ProviderAttempt,
    Reservation,
    ReservationStatus,
    UsageRecord,
)
from billing.services import (
    frozen_call_get,
    provider_attempt_record,
    provider_lost_attempts_record,
    reservation_settle,
)
from config.redis_client import get_redis
from conversations.models import Message, MessageStatus
from conversations.services.conversations import (
    UserTurn,
    conversation_create,
    conversation_update,
    user_message_create,
)
from tests.factories import make_tenant
from tests.support.api import assert_error

pytestmark = pytest.mark.django_db

LLAMA31_8B = "meta.llama3-1-8b-instruct-v1:0"  # 0.22 / 0.22 USD per 1M tokens


@pytest.fixture
def tenant():
    return make_tenant("contract")


def send_turn(tenant, *, content: str = "What will this cost?", **options) -> UserTurn:
    conversation = conversation_create(
        tenant=tenant, model_id=LLAMA31_8B, system_prompt="Be brief.", **options
    )
    return user_message_create(conversation=conversation, content=content, max_gen_len=50)


def settle(turn: UserTurn, input_tokens: int, output_tokens: int):
    with transaction.atomic():
        return reservation_settle(
            message_id=turn.answer.pk,
            conversation_id=turn.answer.conversation_id,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            outcome="completed",
        )


def test_the_call_is_frozen_when_reserved_and_later_edits_apply_to_later_turns(tenant) -> None:
    turn = send_turn(tenant)
    frozen = frozen_call_get(message_id=turn.answer.pk)
    assert frozen is not None
    assert frozen.prompt == turn.context.prompt
    assert frozen.prompt_tokens == turn.context.prompt_token_count
    assert (frozen.max_gen_len, frozen.temperature, frozen.top_p) == (
        50,
        turn.parameters.temperature,
        turn.parameters.top_p,
    )
    assert frozen.bedrock_model_id == LLAMA31_8B

    conversation = turn.answer.conversation
    conversation_update(
        conversation=conversation, system_prompt="Ramble. " * 1000, temperature=Decimal("0.1")
    )
    assert frozen_call_get(message_id=turn.answer.pk) == frozen

    settle(turn, frozen.prompt_tokens, 10)
    Message.objects.filter(pk=turn.answer.pk).update(
        status=MessageStatus.COMPLETED, content="Ten tokens.", token_count=4
    )
    assert frozen_call_get(message_id=turn.answer.pk) is None  # closed: nothing more to send
    assert Reservation.objects.get(message_id=turn.answer.pk).prompt == ""  # space given back
    later = user_message_create(conversation=conversation, content="And now?", max_gen_len=50)
    later_call = frozen_call_get(message_id=later.answer.pk)
    assert later_call is not None
    assert "Ramble." in later_call.prompt
    assert later_call.temperature == Decimal("0.10")


def test_settlement_never_charges_past_the_reservation_and_alerts_operators(tenant) -> None:
    budget = budget_create(
        tenant=tenant, period="month", limit=Decimal(1), managed_by=ManagedBy.OPERATOR
    )
    turn = send_turn(tenant)
    reservation = Reservation.objects.get(message_id=turn.answer.pk)
    Budget.objects.filter(pk=budget.pk).update(limit_amount=reservation.amount)

    settlement = settle(turn, reservation.prompt_tokens * 3, 200)

    assert settlement is not None
    record = UsageRecord.objects.get(message_id=turn.answer.pk)
    assert (record.input_tokens, record.output_tokens) == (reservation.prompt_tokens, 50)
    assert record.cost == reservation.amount
    budget.refresh_from_db()
    assert budget.spent_amount == reservation.amount  # exactly the limit, never past it
    overrun = Alert.objects.get(kind=AlertKind.OVERRUN)
    assert overrun in settlement.alerts
    assert overrun.budget is None
    assert overrun.details["reported_input_tokens"] == reservation.prompt_tokens * 3
    assert overrun.details["reported_output_tokens"] == 200
    assert Decimal(overrun.details["reported_cost"]) > record.cost


def test_settlement_within_the_reservation_raises_no_alert(tenant) -> None:
    turn = send_turn(tenant)
    reservation = Reservation.objects.get(message_id=turn.answer.pk)
    settle(turn, reservation.prompt_tokens, 50)
    assert not Alert.objects.filter(kind=AlertKind.OVERRUN).exists()
    record = UsageRecord.objects.get(message_id=turn.answer.pk)
    assert record.cost == reservation.amount


def test_overrun_alerts_are_not_in_the_tenants_alert_list(tenant, client) -> None:
    from conversations.services import api_key_create

    turn = send_turn(tenant)
    settle(turn, 10_000, 10_000)
    key = api_key_create(tenant=tenant).secret
    listed = client.get("/api/v1/alerts", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert listed.status_code == 200
    assert listed.json()["results"] == []
    assert Alert.objects.filter(tenant=tenant, kind=AlertKind.OVERRUN).count() == 1


def test_rate_counters_are_given_back_when_the_transaction_does_not_commit(
    tenant, monkeypatch
) -> None:
    quota = quota_create(
        tenant=tenant,
        managed_by=ManagedBy.OPERATOR,
        requests_per_minute=10,
        tokens_per_minute=10**6,
    )
    conversation = conversation_create(tenant=tenant, model_id=LLAMA31_8B)

    def fail_after_counting(*args, **kwargs):
        raise RuntimeError("the database went away before commit")

    # on_commit is registered after the counters are taken, inside the transaction.
    monkeypatch.setattr(
        "conversations.services.conversations.transaction.on_commit", fail_after_counting
    )
    with pytest.raises(RuntimeError):
        user_message_create(conversation=conversation, content="Hello", max_gen_len=50)

    assert not Reservation.objects.exists()
    counters = [get_redis().get(key) for key in get_redis().scan_iter(f"quota:{quota.pk}:*")]
    assert counters, "the quota's counters were taken"
    assert all(int(value) == 0 for value in counters)


def test_counted_charges_are_given_back_only_when_the_block_fails() -> None:
    charge = rate_limits.RateCharge(
        key="quota:test-rollback:all:rpm:1", amount=3, limit=10, window_seconds=60,
        description="requests per minute",
    )  # fmt: skip
    get_redis().delete(charge.key)
    with rate_limits.given_back_unless_committed() as counted:
        assert rate_limits.check_and_count([charge], counted=counted) is None
    assert int(get_redis().get(charge.key)) == 3

    def count_then_fail() -> None:
        with rate_limits.given_back_unless_committed() as counted:
            assert rate_limits.check_and_count([charge], counted=counted) is None
            assert int(get_redis().get(charge.key)) == 6
            raise LookupError("after counting")

    with pytest.raises(LookupError, match="after counting"):
        count_then_fail()
    assert int(get_redis().get(charge.key)) == 3
    get_redis().delete(charge.key)


def test_a_tenant_can_be_required_to_name_end_users(tenant, client) -> None:
    from conversations.services import api_key_create

    old = conversation_create(tenant=tenant, model_id=LLAMA31_8B)
    tenant.require_end_user = True
    tenant.save()
    key = api_key_create(tenant=tenant).secret
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}

    refused = client.post(
        "/api/v1/conversations", {"model": LLAMA31_8B}, content_type="application/json", **auth
    )
    error = assert_error(refused, 400, "end_user_required")
    assert "end_user" in error["details"]
    accepted = client.post(
        "/api/v1/conversations",
        {"model": LLAMA31_8B, "end_user": "u-1"},
        content_type="application/json",
        **auth,
    )
    assert accepted.status_code == 201, accepted.content
    # A conversation made before the rule cannot be used to sidestep it.
    sent = client.post(
        f"/api/v1/conversations/{old.pk}/messages",
        {"content": "Hello"},
        content_type="application/json",
        **auth,
    )
    assert_error(sent, 400, "end_user_required")
    assert not Reservation.objects.exists()


def test_every_attempt_enters_the_provider_ledger_once_and_lost_ones_at_the_worst_case(
    tenant,
) -> None:
    turn = send_turn(tenant)
    reservation = Reservation.objects.get(message_id=turn.answer.pk)
    with transaction.atomic():
        provider_attempt_record(
            message_id=turn.answer.pk, attempt=2, outcome=AttemptOutcome.FAILED,
            input_tokens=reservation.prompt_tokens, output_tokens=3, error_code="X",
        )  # fmt: skip
        # Recording the same attempt again changes nothing.
        provider_attempt_record(
            message_id=turn.answer.pk, attempt=2, outcome=AttemptOutcome.FAILED,
            input_tokens=999, output_tokens=999,
        )  # fmt: skip
        assert provider_lost_attempts_record(message_id=turn.answer.pk, before_attempt=4) == 2

    rows = {row.attempt: row for row in ProviderAttempt.objects.filter(message_id=turn.answer.pk)}
    assert sorted(rows) == [1, 2, 3]
    assert (rows[2].output_tokens, rows[2].error_code, rows[2].counts_reported) == (3, "X", True)
    for lost in (rows[1], rows[3]):
        assert lost.outcome == AttemptOutcome.LOST
        assert not lost.counts_reported
        assert (lost.input_tokens, lost.output_tokens) == (reservation.prompt_tokens, 50)
        assert lost.cost == reservation.amount
    assert reservation.status == ReservationStatus.OPEN  # the provider ledger charges no one


def test_an_answer_failed_after_its_worker_died_leaves_the_lost_attempt_in_the_provider_ledger(
    tenant,
) -> None:
    from conversations.services.generation import generation_fail

    turn = send_turn(tenant)
    # Claimed by a worker that then died mid-call (as the expiry check finds it).
    Message.objects.filter(pk=turn.answer.pk).update(status=MessageStatus.RUNNING, attempt_count=1)
    with transaction.atomic():
        assert generation_fail(message_id=turn.answer.pk, code="expired", message="gone")
    lost = ProviderAttempt.objects.get(message_id=turn.answer.pk)
    assert (lost.attempt, lost.outcome, lost.counts_reported) == (1, AttemptOutcome.LOST, False)
    assert Reservation.objects.get(message_id=turn.answer.pk).status == ReservationStatus.RELEASED
    assert not UsageRecord.objects.filter(message_id=turn.answer.pk).exists()
