"""The native governance races, through the OpenAI surface's service: 50 concurrent calls,
each with its own database connection, against limits that fit exactly 10 (a hard budget,
10 answers at once, 10 requests a minute). Exactly 10 pass; the refused store nothing.
Real HTTP clients through the SDK: tests/e2e/test_openai_governance.py.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db.models import Sum
from django.utils import timezone

from billing import rate_limits
from billing.models import Budget, Quota, Reservation, ReservationStatus, UsageRecord
from billing.pricing import price_in_force, token_cost
from billing.services import BudgetExceededError, QuotaExceededError
from conversations.models import Conversation, Message, Tenant
from models_catalog.models import FoundationModel
from models_catalog.tokenizer import count_prompt_tokens
from openai_api.parsing import chat_completion_parse
from openai_api.services import _prompt, chat_completion_create
from tests.factories import make_tenant
from tests.support.concurrency import (
    ALLOWED,
    CLIENTS,
    MAX_GEN_LEN,
    MODEL_ID,
    run_clients,
    split_outcomes,
)

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = chat_completion_parse(
    {
        "model": MODEL_ID,
        "messages": [
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": "What does a hard budget protect against?"},
        ],
        "max_tokens": MAX_GEN_LEN,
        "user": "someone",
    }
)


@pytest.fixture
def tenant(catalogue: None) -> Tenant:
    return make_tenant("concurrent-openai")


def worst_case(model: FoundationModel) -> Decimal:
    prompt_tokens = count_prompt_tokens(_prompt(model, CHAT), model.family)
    price = price_in_force(model=model, at=timezone.now())
    return token_cost(
        input_tokens=prompt_tokens,
        output_tokens=MAX_GEN_LEN,
        input_price=price.input_price_per_million,
        output_price=price.output_price_per_million,
    )


def call(tenant: Tenant):
    return lambda: chat_completion_create(tenant=tenant, chat=CHAT)


def assert_exactly_ten_stored(passed: list[Message], enqueued: list[Any]) -> None:
    assert len(passed) == ALLOWED
    assert Conversation.objects.filter(ephemeral=True).count() == ALLOWED
    assert Message.objects.count() == ALLOWED
    assert Reservation.objects.filter(status=ReservationStatus.OPEN).count() == ALLOWED
    assert sorted(enqueued) == sorted(answer.pk for answer in passed)


def test_fifty_concurrent_calls_against_a_budget_for_ten_pass_exactly_ten(
    tenant: Tenant, enqueued: list[Any]
) -> None:
    limit = ALLOWED * worst_case(FoundationModel.objects.get(model_id=MODEL_ID))
    Budget.objects.create(tenant=tenant, period="month", limit_amount=limit, is_hard=True)

    passed, refused = split_outcomes(run_clients([call(tenant) for _ in range(CLIENTS)]))

    assert len(refused) == CLIENTS - ALLOWED
    assert all(isinstance(error, BudgetExceededError) for error in refused), refused[:1]
    assert_exactly_ten_stored(passed, enqueued)
    reserved = Reservation.objects.aggregate(total=Sum("amount"))["total"]
    assert reserved == limit
    assert not UsageRecord.objects.exists()


def test_fifty_concurrent_calls_against_ten_at_once_pass_exactly_ten(
    tenant: Tenant, enqueued: list[Any]
) -> None:
    Quota.objects.create(tenant=tenant, max_concurrent=ALLOWED)
    passed, refused = split_outcomes(run_clients([call(tenant) for _ in range(CLIENTS)]))
    assert len(refused) == CLIENTS - ALLOWED
    assert all(isinstance(error, QuotaExceededError) for error in refused), refused[:1]
    assert all(error.details["limit"] == "max_concurrent" for error in refused)
    assert_exactly_ten_stored(passed, enqueued)


def test_fifty_concurrent_calls_against_ten_requests_a_minute_pass_exactly_ten(
    tenant: Tenant, enqueued: list[Any]
) -> None:
    Quota.objects.create(tenant=tenant, per_end_user=True, requests_per_minute=ALLOWED)
    passed, refused = split_outcomes(run_clients([call(tenant) for _ in range(CLIENTS)]))
    assert len(refused) == CLIENTS - ALLOWED
    for error in refused:
        assert isinstance(error, QuotaExceededError), repr(error)
        assert error.details["limit"] == "requests per minute"
        assert 1 <= int(error.headers["Retry-After"]) <= rate_limits.MINUTE
    assert_exactly_ten_stored(passed, enqueued)
