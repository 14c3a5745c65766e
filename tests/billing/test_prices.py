"""Exact money and prices with the real services: costs are exact decimals rounded once,
and a price change between reservation and settlement charges the price at the call.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.utils import timezone

from billing.models import Budget, ModelPrice, UsageRecord
from billing.pricing import token_cost
from billing.services import budget_state
from conversations.models import Tenant
from models_catalog.models import FoundationModel
from tests.billing.governance import (
    BIG,
    LLAMA31_8B,
    MAX_GEN_LEN,
    PRICE_031,
    QUANTUM,
    ledger_total,
    reservation_of,
    send_turn,
    settle,
)

pytestmark = pytest.mark.django_db


# -- exact money ------------------------------------------------------------------------------


def test_token_cost_is_an_exact_decimal_rounded_half_up_once() -> None:
    cost = token_cost(
        input_tokens=1234, output_tokens=567, input_price=PRICE_031, output_price=PRICE_031
    )
    assert isinstance(cost, Decimal)
    assert cost == Decimal("0.00039622")  # (1234 + 567) * 0.22 / 1,000,000, no float residue
    assert cost.as_tuple().exponent == -settings.MONEY_DECIMAL_PLACES
    # 5 tokens at 0.00001 per million is 0.00000000005: half a quantum, rounded up once.
    half = token_cost(
        input_tokens=5, output_tokens=0, input_price=Decimal("0.00001"), output_price=Decimal(0)
    )
    assert half == QUANTUM
    # Different input and output prices, each applied to its own side.
    mixed = token_cost(
        input_tokens=1000,
        output_tokens=3,
        input_price=Decimal("0.30"),
        output_price=Decimal("0.60"),
    )
    assert mixed == Decimal("0.0003018")


def test_settlement_stores_exact_decimals_in_the_ledger_and_the_budget(tenant: Tenant) -> None:
    budget = Budget.objects.create(tenant=tenant, period="month", limit_amount=BIG)
    turn = send_turn(tenant, max_gen_len=600)
    settlement = settle(turn, input_tokens=10, output_tokens=567)
    assert settlement is not None

    # (10 + 567) tokens at 0.22 USD per million.
    record = UsageRecord.objects.get(message_id=turn.answer.pk)
    assert record.cost == Decimal("0.00012694")
    assert isinstance(record.cost, Decimal)
    assert (record.input_tokens, record.output_tokens) == (10, 567)
    assert record.input_price_per_million == record.output_price_per_million == PRICE_031
    assert record.currency == "USD"
    budget.refresh_from_db()
    assert budget.spent_amount == Decimal("0.00012694")
    assert budget_state(budget).spent == ledger_total(tenant) == Decimal("0.00012694")


# -- prices -----------------------------------------------------------------------------------


def test_price_change_between_reservation_and_settlement_charges_the_price_at_the_call(
    tenant: Tenant,
) -> None:
    model = FoundationModel.objects.get(model_id=LLAMA31_8B)
    # A price announced for tomorrow is not in force yet.
    ModelPrice.objects.create(
        model=model,
        input_price_per_million=Decimal("9.00"),
        output_price_per_million=Decimal("9.00"),
        effective_from=timezone.now() + timedelta(days=1),
    )
    before = send_turn(tenant)
    prompt = before.context.prompt_token_count
    assert reservation_of(before).input_price_per_million == PRICE_031
    assert reservation_of(before).amount == token_cost(
        input_tokens=prompt,
        output_tokens=MAX_GEN_LEN,
        input_price=PRICE_031,
        output_price=PRICE_031,
    )

    # The operator changes the price while that answer is being generated.
    ModelPrice.objects.create(
        model=model,
        input_price_per_million=Decimal("0.50"),
        output_price_per_million=Decimal("1.25"),
        effective_from=timezone.now(),
    )
    after = send_turn(tenant)
    old_settlement = settle(before, output_tokens=150)
    new_settlement = settle(after, output_tokens=150)
    assert old_settlement is not None
    assert new_settlement is not None

    old_record, new_record = old_settlement.record, new_settlement.record
    assert old_record.cost == token_cost(
        input_tokens=prompt, output_tokens=150, input_price=PRICE_031, output_price=PRICE_031
    )
    assert (old_record.input_price_per_million, old_record.output_price_per_million) == (
        PRICE_031,
        PRICE_031,
    )
    assert new_record.cost == token_cost(
        input_tokens=prompt,
        output_tokens=150,
        input_price=Decimal("0.50"),
        output_price=Decimal("1.25"),
    )
    assert (new_record.input_price_per_million, new_record.output_price_per_million) == (
        Decimal("0.50"),
        Decimal("1.25"),
    )
    assert reservation_of(after).amount == token_cost(
        input_tokens=prompt,
        output_tokens=MAX_GEN_LEN,
        input_price=Decimal("0.50"),
        output_price=Decimal("1.25"),
    )
