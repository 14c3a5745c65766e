"""The governance tests' helpers: turns sent and settled with the real services.

Time is frozen only where the API takes it (`now=`, `at=`), by dating ledger rows and budget
counters into the past, or, for rate quotas, by the `clock` fixture (tests/conftest.py),
which pins `billing.rate_limits.now_seconds` (the one clock those read).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing.models import Alert, Budget, Reservation, UsageRecord
from billing.periods import period_bounds
from billing.services import Settlement, reservation_release, reservation_settle
from conversations.models import MessageStatus, Tenant
from conversations.services.conversations import UserTurn, conversation_create, user_message_create

LLAMA31_8B = "meta.llama3-1-8b-instruct-v1:0"  # 0.22 / 0.22 USD per 1M tokens
LLAMA3_8B = "meta.llama3-8b-instruct-v1:0"  # 0.30 / 0.60
PRICE_031 = Decimal("0.22")
MAX_GEN_LEN = 200
QUANTUM = settings.MONEY_QUANTUM
BIG = Decimal(1000)


def send_turn(
    tenant: Tenant,
    *,
    end_user: str | None = None,
    model_id: str = LLAMA31_8B,
    max_gen_len: int = MAX_GEN_LEN,
) -> UserTurn:
    """The first turn of a new conversation (so every turn has the same prompt)."""
    conversation = conversation_create(
        tenant=tenant, model_id=model_id, end_user_external_id=end_user
    )
    return user_message_create(
        conversation=conversation, content="What will this answer cost?", max_gen_len=max_gen_len
    )


def settle(
    turn: UserTurn,
    *,
    output_tokens: int,
    input_tokens: int | None = None,
    outcome: str = MessageStatus.COMPLETED,
    time_zone: str = "UTC",
) -> Settlement | None:
    """As the worker settles: inside the transaction that stores the answer."""
    with transaction.atomic():
        return reservation_settle(
            message_id=turn.answer.pk,
            conversation_id=turn.answer.conversation_id,
            input_tokens=turn.context.prompt_token_count if input_tokens is None else input_tokens,
            output_tokens=output_tokens,
            outcome=outcome,
            time_zone=time_zone,
        )


def reservation_of(turn: UserTurn) -> Reservation:
    return Reservation.objects.get(message_id=turn.answer.pk)


def worst_case_of_a_turn(tenant: Tenant, **turn_options: Any) -> Decimal:
    """What one turn reserves, measured with the real service, then released."""
    turn = send_turn(tenant, **turn_options)
    amount = reservation_of(turn).amount
    assert reservation_release(message_id=turn.answer.pk, reason="probe")
    return amount


def ledger_total(tenant: Tenant, **filters: Any) -> Decimal:
    rows = UsageRecord.objects.filter(tenant=tenant, **filters)
    return rows.aggregate(total=Sum("cost"))["total"] or Decimal(0)


def current_month_start() -> datetime:
    return period_bounds("month", timezone.now())[0]


def date_into_last_month(tenant: Tenant) -> datetime:
    """Pretend everything so far happened last month: ledger rows, budget counters, alerts."""
    this_start = current_month_start()
    last_start = period_bounds("month", this_start - timedelta(microseconds=1))[0]
    UsageRecord.objects.filter(tenant=tenant).update(created_at=this_start - timedelta(days=1))
    Budget.objects.filter(tenant=tenant, period_start=this_start).update(period_start=last_start)
    Alert.objects.filter(tenant=tenant, period_start=this_start).update(period_start=last_start)
    return last_start
