"""Governance under real concurrency: 50 clients at once, each with its own connection.

Every client is a thread with its own Django database connection (and, in the HTTP variant,
its own TCP connection to a threaded live server). All 50 wait behind a barrier with their
connection already open, then send one user turn each, on its own conversation, against a
limit that fits exactly 10: a hard budget of 10 worst-case answers, a quota of 10 answers
at once, or a quota of 10 requests per minute. Exactly 10 must pass, and after all settle
the spend must not exceed the limit and must equal the budget's counter.

These need committed data visible across connections, hence `transactional_db`. On
PostgreSQL the budget and quota row locks serialise the checks; on SQLite the IMMEDIATE
transactions do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing import rate_limits
from billing.models import (
    Budget,
    Quota,
    Reservation,
    ReservationStatus,
    UsageRecord,
)
from billing.pricing import price_in_force, token_cost
from billing.services import (
    BudgetExceededError,
    QuotaExceededError,
    budget_state,
    reservation_settle,
)
from config.redis_client import get_redis
from conversations.context import context_build, message_token_count
from conversations.models import Conversation, Message, MessageStatus, Tenant
from conversations.services import api_key_create
from conversations.services.conversations import (
    UserTurn,
    conversation_create,
    user_message_create,
)
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

CONTENT = "What does a hard budget protect against when fifty requests arrive at once?"


@pytest.fixture
def tenant(catalogue: None) -> Tenant:
    return make_tenant("concurrent")


@pytest.fixture
def conversations(tenant: Tenant) -> list[Conversation]:
    # One per client: a conversation accepts one pending answer at a time.
    return [conversation_create(tenant=tenant, model_id=MODEL_ID) for _ in range(CLIENTS)]


def worst_case_of_one_turn(conversation: Conversation) -> tuple[int, Decimal]:
    """(prompt tokens, worst-case cost) of CONTENT as the first turn of a conversation,
    computed the way the service computes them."""
    model = conversation.model
    context = context_build(
        conversation=conversation,
        max_gen_len=MAX_GEN_LEN,
        pending_user_content=CONTENT,
        pending_user_token_count=message_token_count(model, CONTENT),
    )
    price = price_in_force(model=model, at=timezone.now())
    amount = token_cost(
        input_tokens=context.prompt_token_count,
        output_tokens=MAX_GEN_LEN,
        input_price=price.input_price_per_million,
        output_price=price.output_price_per_million,
    )
    return context.prompt_token_count, amount


def send_turn(conversation: Conversation) -> Callable[[], UserTurn]:
    return lambda: user_message_create(
        conversation=conversation, content=CONTENT, max_gen_len=MAX_GEN_LEN
    )


def answer_settle(turn: UserTurn, *, output_tokens: int) -> Any:
    """What the worker does on the final chunk: store the answer and settle, in one
    transaction, with the token counts Bedrock reported."""
    with transaction.atomic():
        Message.objects.filter(pk=turn.answer.pk, status=MessageStatus.QUEUED).update(
            status=MessageStatus.COMPLETED,
            content="word " * output_tokens,
            prompt_token_count=turn.context.prompt_token_count,
            generation_token_count=output_tokens,
            completed_at=timezone.now(),
        )
        return reservation_settle(
            message_id=turn.answer.pk,
            conversation_id=turn.answer.conversation_id,
            input_tokens=turn.context.prompt_token_count,
            output_tokens=output_tokens,
            outcome=MessageStatus.COMPLETED,
        )


def assert_only_passed_turns_stored(
    conversations: list[Conversation], passed: list[UserTurn], enqueued: list[Any]
) -> None:
    passed_ids = {turn.answer.conversation_id for turn in passed}
    for conversation in conversations:
        expected = 2 if conversation.pk in passed_ids else 0
        assert conversation.messages.count() == expected
    assert sorted(enqueued) == sorted(turn.answer.pk for turn in passed)


def settle_concurrently(passed: list[UserTurn]) -> None:
    # Real-looking answers, all at most the worst case: 30, 60, ... output tokens.
    calls = [
        (lambda turn=turn, tokens=30 * (index + 1): answer_settle(turn, output_tokens=tokens))
        for index, turn in enumerate(passed)
    ]
    outcomes = run_clients(calls)
    assert [outcome.error for outcome in outcomes] == [None] * len(passed)
    assert all(outcome.value is not None for outcome in outcomes)


def test_fifty_concurrent_turns_against_a_budget_for_ten_pass_exactly_ten(
    tenant: Tenant, conversations: list[Conversation], enqueued: list[Any]
) -> None:
    prompt_tokens, worst_case = worst_case_of_one_turn(conversations[0])
    assert worst_case > 0
    limit = ALLOWED * worst_case
    budget = Budget.objects.create(
        tenant=tenant, name="monthly", period="month", limit_amount=limit, is_hard=True
    )

    outcomes = run_clients([send_turn(conversation) for conversation in conversations])
    passed, refused = split_outcomes(outcomes)

    assert len(passed) == ALLOWED
    assert len(refused) == CLIENTS - ALLOWED
    for error in refused:
        assert isinstance(error, BudgetExceededError), repr(error)
        assert error.code == "budget_exceeded"
        assert error.http_status == 402
        assert error.details["budget_id"] == str(budget.pk)
        assert Decimal(error.details["requested"]) == worst_case
    for turn in passed:
        assert turn.context.prompt_token_count == prompt_tokens
        assert turn.answer.reservation.amount == worst_case
    open_reservations = Reservation.objects.filter(status=ReservationStatus.OPEN)
    assert open_reservations.count() == ALLOWED
    assert open_reservations.aggregate(total=Sum("amount"))["total"] == limit
    assert_only_passed_turns_stored(conversations, passed, enqueued)

    settle_concurrently(passed)

    ledger_total = UsageRecord.objects.filter(tenant=tenant).aggregate(total=Sum("cost"))["total"]
    assert UsageRecord.objects.filter(tenant=tenant).count() == ALLOWED
    assert ledger_total <= limit
    budget.refresh_from_db()
    state = budget_state(budget)
    assert state.spent == ledger_total == budget.spent_amount
    assert state.reserved == 0
    assert not Reservation.objects.filter(status=ReservationStatus.OPEN).exists()


def test_fifty_concurrent_turns_against_ten_at_once_pass_exactly_ten(
    tenant: Tenant, conversations: list[Conversation], enqueued: list[Any]
) -> None:
    Quota.objects.create(tenant=tenant, max_concurrent=ALLOWED)

    outcomes = run_clients([send_turn(conversation) for conversation in conversations])
    passed, refused = split_outcomes(outcomes)

    assert len(passed) == ALLOWED
    assert len(refused) == CLIENTS - ALLOWED
    for error in refused:
        assert isinstance(error, QuotaExceededError), repr(error)
        assert error.code == "quota_exceeded"
        assert error.http_status == 429
        assert error.details["limit"] == "max_concurrent"
        assert int(error.headers["Retry-After"]) >= 1
    assert Reservation.objects.filter(status=ReservationStatus.OPEN).count() == ALLOWED
    assert_only_passed_turns_stored(conversations, passed, enqueued)

    settle_concurrently(passed)

    assert not Reservation.objects.filter(status=ReservationStatus.OPEN).exists()
    assert UsageRecord.objects.filter(tenant=tenant).count() == ALLOWED
    # Settled answers are no longer "at once": the refused conversations may go on.
    refused_conversation = next(c for c in conversations if not c.messages.exists())
    send_turn(refused_conversation)()


def test_fifty_concurrent_turns_against_ten_requests_per_minute_pass_exactly_ten(
    tenant: Tenant, conversations: list[Conversation], enqueued: list[Any]
) -> None:
    quota = Quota.objects.create(tenant=tenant, requests_per_minute=ALLOWED)
    started = rate_limits.now_seconds()

    outcomes = run_clients([send_turn(conversation) for conversation in conversations])
    finished = rate_limits.now_seconds()
    passed, refused = split_outcomes(outcomes)

    windows = {int(moment // rate_limits.MINUTE) for moment in (started, finished)}
    assert len(windows) == 1, "the run straddled a minute; the clock fixture pins it"
    assert len(passed) == ALLOWED
    assert len(refused) == CLIENTS - ALLOWED
    seconds_left = rate_limits.MINUTE - started % rate_limits.MINUTE
    for error in refused:
        assert isinstance(error, QuotaExceededError), repr(error)
        assert error.code == "quota_exceeded"
        assert error.http_status == 429
        assert error.details["limit"] == "requests per minute"
        retry_after = int(error.headers["Retry-After"])
        assert retry_after == error.details["retry_after_seconds"]
        # Rounded up, so a client that waits that long lands in the next window.
        assert 1 <= retry_after <= math.ceil(seconds_left)
    # Refused requests are not counted: the window holds exactly the ten that passed.
    key = rate_limits.window_key(str(quota.pk), "all", "rpm", started, rate_limits.MINUTE)
    assert int(get_redis().get(key)) == ALLOWED
    assert_only_passed_turns_stored(conversations, passed, enqueued)

    settle_concurrently(passed)
    assert UsageRecord.objects.filter(tenant=tenant).count() == ALLOWED


@pytest.fixture
def http_session_factory() -> Iterator[Callable[[], requests.Session]]:
    sessions: list[requests.Session] = []

    def new_session() -> requests.Session:
        session = requests.Session()
        sessions.append(session)
        return session

    yield new_session
    for session in sessions:
        session.close()


def test_fifty_concurrent_http_clients_against_a_budget_for_ten_get_ten_202_and_forty_402(
    live_server: Any,
    tenant: Tenant,
    conversations: list[Conversation],
    enqueued: list[Any],
    http_session_factory: Callable[[], requests.Session],
) -> None:
    _, worst_case = worst_case_of_one_turn(conversations[0])
    limit = ALLOWED * worst_case
    Budget.objects.create(tenant=tenant, period="month", limit_amount=limit, is_hard=True)
    secret = api_key_create(tenant=tenant, name="load test").secret

    def post_turn(conversation: Conversation) -> Callable[[], requests.Response]:
        session = http_session_factory()
        session.headers["Authorization"] = f"Bearer {secret}"
        # Open the client's keep-alive connection now, one client at a time: 50 connects at
        # once overflow the test server's listen backlog (10) and some get reset. The race
        # is then between the 50 requests themselves, each on its own server thread.
        session.get(f"{live_server.url}/healthz", timeout=30).raise_for_status()
        url = f"{live_server.url}/api/v1/conversations/{conversation.pk}/messages"
        return lambda: session.post(
            url, json={"content": CONTENT, "max_gen_len": MAX_GEN_LEN}, timeout=60
        )

    outcomes = run_clients(
        [post_turn(conversation) for conversation in conversations], connect=False
    )

    assert [outcome.error for outcome in outcomes] == [None] * CLIENTS
    responses = [outcome.value for outcome in outcomes]
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [202] * ALLOWED + [402] * (CLIENTS - ALLOWED)
    for response in responses:
        if response.status_code == 402:
            assert response.json()["error"]["code"] == "budget_exceeded"
    reserved = Reservation.objects.filter(status=ReservationStatus.OPEN)
    assert reserved.count() == ALLOWED
    assert reserved.aggregate(total=Sum("amount"))["total"] == limit
    assert len(enqueued) == ALLOWED
