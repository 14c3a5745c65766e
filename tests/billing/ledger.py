"""Hand-made ledgers for the cockpit's tests: rows written as the services write them.

Each builder writes one ledger row and adds it to its daily rollup with the function the
services call (billing.rollups), so selectors that read the rollups see it; tests of the
services themselves (tests/billing/test_rollups.py) prove the services do the same.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from billing.models import AttemptOutcome, ProviderAttempt, Reservation, UsageRecord
from billing.rollups import daily_charge_add, daily_provider_cost_add
from models_catalog.models import FoundationModel

LLAMA31_8B = "meta.llama3-1-8b-instruct-v1:0"
LLAMA33_70B = "meta.llama3-3-70b-instruct-v1:0"
PRICE = Decimal("0.22")


def model(model_id: str) -> FoundationModel:
    return FoundationModel.objects.get(model_id=model_id)


def charge(
    tenant: Any,
    cost: str,
    *,
    at: datetime,
    model_id: str = LLAMA31_8B,
    end_user: Any = None,
    outcome: str = "completed",
) -> UsageRecord:
    """One settled answer in the tenant-charge ledger."""
    record = UsageRecord.objects.create(
        tenant=tenant,
        end_user=end_user,
        conversation_id=uuid.uuid4(),
        message_id=uuid.uuid4(),
        model=model(model_id),
        input_tokens=100,
        output_tokens=50,
        input_price_per_million=PRICE,
        output_price_per_million=PRICE,
        cost=Decimal(cost),
        outcome=outcome,
        created_at=at,
    )
    daily_charge_add(record=record)
    return record


def attempt(
    tenant: Any,
    cost: str,
    *,
    at: datetime,
    model_id: str = LLAMA31_8B,
    outcome: str = AttemptOutcome.COMPLETED,
    error_code: str = "",
    message_id: Any = None,
    number: int = 1,
) -> ProviderAttempt:
    """One Bedrock attempt in the provider ledger."""
    row = ProviderAttempt.objects.create(
        tenant=tenant,
        conversation_id=uuid.uuid4(),
        message_id=message_id or uuid.uuid4(),
        attempt=number,
        model=model(model_id),
        outcome=outcome,
        error_code=error_code,
        input_tokens=100,
        output_tokens=50,
        input_price_per_million=PRICE,
        output_price_per_million=PRICE,
        cost=Decimal(cost),
        created_at=at,
    )
    daily_provider_cost_add(attempt=row)
    return row


def reservation(
    tenant: Any,
    amount: str,
    *,
    model_id: str = LLAMA31_8B,
    end_user: Any = None,
    message_id: Any = None,
    status: str = "open",
    created_at: datetime | None = None,
    closed_at: datetime | None = None,
    close_reason: str = "",
) -> Reservation:
    """A reservation (its answer need not exist: reservations outlive messages)."""
    row = Reservation.objects.create(
        tenant=tenant,
        end_user=end_user,
        model=model(model_id),
        message_id=message_id or uuid.uuid4(),
        prompt_tokens=100,
        max_gen_len=100,
        input_price_per_million=PRICE,
        output_price_per_million=PRICE,
        amount=Decimal(amount),
        status=status,
        closed_at=closed_at,
        close_reason=close_reason,
    )
    if created_at is not None:  # auto_now_add: set it afterwards
        Reservation.objects.filter(pk=row.pk).update(created_at=created_at)
        row.created_at = created_at
    return row
