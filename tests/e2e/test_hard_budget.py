"""The hard budget holds on every path: each way it was once overspent, as a hostile tenant
would try it, with real workers, the web server and the local Bedrock server.

Each test lowers a hard budget to exactly what its first answer reserved, attacks, and
ends with the books of `tests.e2e.books`: nothing delivered uncharged, nothing charged past
its reservation, every hard budget within its limit.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
import requests

from billing.limits import budget_create, quota_create
from billing.models import (
    Alert,
    AlertKind,
    AttemptOutcome,
    Budget,
    BudgetPeriod,
    ManagedBy,
    ProviderAttempt,
    Reservation,
    UsageRecord,
)
from conversations.models import Message, MessageStatus, Tenant
from conversations.services import api_key_create, tenant_create
from tests.e2e.books import assert_books_balance_for
from tests.support.live_api import Api
from tests.support.sse import read_sse, stream_events
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

LLAMA2 = "meta.llama2-13b-chat-v1"


def hard_budget(tenant: Tenant, limit: Decimal = Decimal("1")) -> Budget:
    return budget_create(
        tenant=tenant,
        period=BudgetPeriod.MONTH,
        limit=limit,
        managed_by=ManagedBy.OPERATOR,
        name="hard monthly",
    )


def room_for_exactly(budget: Budget, answer_id: str) -> Reservation:
    """Lower the budget to what this (first) answer holds: nothing else fits."""
    reservation = Reservation.objects.get(message_id=answer_id)
    Budget.objects.filter(pk=budget.pk).update(limit_amount=reservation.amount)
    return reservation


def ledger_total(tenant: Tenant) -> Decimal:
    return sum((r.cost for r in UsageRecord.objects.filter(tenant=tenant)), Decimal(0))


def test_a_conversation_cannot_be_deleted_from_under_its_streaming_answer(
    api: Api, bedrock, start_worker
) -> None:
    """Deleting once made a streaming answer free (its reservation cascaded away) and let a
    concurrency quota be overlapped; now DELETE answers 409 until the answer has stopped,
    and the answer is charged."""
    bedrock.configure(seconds_per_token=0.05, answer_tokens=60)
    start_worker()
    tenant = Tenant.objects.get(slug="e2e")
    budget = hard_budget(tenant)
    quota_create(tenant=tenant, managed_by=ManagedBy.OPERATOR, max_concurrent=1)
    conversation = api.new_conversation()
    sent = api.send(conversation, "Tell me a long story about llamas.", max_gen_len=64)
    assert sent.status_code == 202, sent.text
    answer_id = sent.json()["assistant_message"]["id"]
    wait_for(lambda: api.message(answer_id)["status"] == "running", timeout=30)

    url = f"{api.base_url}/api/v1/conversations/{conversation}"
    for _ in range(5):
        refused = requests.delete(url, headers=api.headers, timeout=30)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "generation_in_progress"
        # The concurrency quota still counts the answer: no second call overlaps it.
        overlapping = api.send(api.new_conversation(), "Me too, at the same time.")
        assert overlapping.status_code == 429, overlapping.text
    room_for_exactly(budget, answer_id)
    refused = api.send(api.new_conversation(), "And me, after the budget is full.")
    assert refused.status_code in (402, 429), refused.text

    events = stream_events(api, answer_id)
    assert events[-1].event == "done"
    assert events[-1].data["message"]["status"] == "completed"
    assert requests.delete(url, headers=api.headers, timeout=30).status_code == 204

    assert bedrock.streams_completed == 1
    record = UsageRecord.objects.get(message_id=answer_id)  # survived the delete
    assert record.conversation_id is not None
    assert ledger_total(tenant) <= Budget.objects.get(pk=budget.pk).limit_amount
    assert_books_balance_for([tenant.pk])


def test_an_edit_after_the_post_is_neither_sent_nor_charged(
    api: Api, bedrock, start_worker
) -> None:
    """The worker once rebuilt the prompt when it ran, so a 120,000-character system prompt
    patched while the answer waited was sent and charged against a 76-token reservation."""
    tenant = Tenant.objects.get(slug="e2e")
    budget = hard_budget(tenant)
    conversation = api.new_conversation(system_prompt="Be brief.")
    sent = api.send(conversation, "What do llamas eat?", max_gen_len=32)
    answer_id = sent.json()["assistant_message"]["id"]
    reservation = room_for_exactly(budget, answer_id)
    frozen_prompt = reservation.prompt

    patched = requests.patch(
        f"{api.base_url}/api/v1/conversations/{conversation}",
        json={"system_prompt": "Say everything twice. " * 5_500, "max_gen_len": 2048},
        headers=api.headers,
        timeout=30,
    )
    assert patched.status_code == 200, patched.text
    # Throttled first, so the answer also waits in retry backoff after the edit.
    bedrock.script(["throttle", "throttle"])
    start_worker(purge=False)  # the answer's task is waiting in the queue
    final = api.wait_final(answer_id)

    assert final["status"] == "completed", final
    assert bedrock.stream_starts[-1].prompt_tail == frozen_prompt[-1000:]
    answer = Message.objects.get(pk=answer_id)
    assert answer.prompt_token_count == reservation.prompt_tokens  # Bedrock counted the frozen one
    assert answer.generation_token_count <= 32
    record = UsageRecord.objects.get(message_id=answer_id)
    assert record.cost <= reservation.amount
    assert ledger_total(tenant) <= Budget.objects.get(pk=budget.pk).limit_amount
    attempts = ProviderAttempt.objects.filter(message_id=answer_id).order_by("attempt")
    assert [a.outcome for a in attempts] == ["failed", "failed", "completed"]
    assert [a.input_tokens + a.output_tokens for a in attempts][:2] == [0, 0]
    assert_books_balance_for([tenant.pk])


def test_a_cancelled_llama2_answer_is_charged_bedrocks_counts_within_the_reservation(
    api: Api, bedrock, start_worker
) -> None:
    """A cancelled Llama 2 answer was once charged a byte-count re-estimate of its text:
    44 tokens streamed, max_gen_len 64, 258-276 tokens charged."""
    bedrock.configure(seconds_per_token=0.03, answer_tokens=60)
    start_worker()
    tenant = Tenant.objects.get(slug="e2e")
    budget = hard_budget(tenant)
    conversation = api.new_conversation(model=LLAMA2)
    sent = api.send(conversation, "Count to one hundred, slowly: 1 2 3 4 5 ✓ 🦙", max_gen_len=64)
    answer_id = sent.json()["assistant_message"]["id"]
    reservation = room_for_exactly(budget, answer_id)

    deltas = 0
    with requests.get(
        f"{api.base_url}/api/v1/messages/{answer_id}/stream",
        headers=api.headers,
        stream=True,
        timeout=60,
    ) as response:
        for event in read_sse(response):
            if event.event == "delta":
                deltas += 1
                if deltas == 12:
                    cancelled = api.post(f"/api/v1/messages/{answer_id}/cancel")
                    assert cancelled.status_code in (200, 202), cancelled.text
            if event.event in ("done", "error"):
                break
    final = api.wait_final(answer_id)

    assert final["status"] == "cancelled", final
    answer = Message.objects.get(pk=answer_id)
    record = UsageRecord.objects.get(message_id=answer_id)
    # Bedrock's own running counts, as its chunks reported them; never a re-count of text.
    assert 12 <= record.output_tokens == answer.generation_token_count < 60
    assert record.output_tokens <= reservation.max_gen_len
    assert record.input_tokens == answer.prompt_token_count <= reservation.prompt_tokens
    assert record.outcome == MessageStatus.CANCELLED
    assert ledger_total(tenant) <= Budget.objects.get(pk=budget.pk).limit_amount
    attempt = ProviderAttempt.objects.get(message_id=answer_id)
    assert attempt.outcome == AttemptOutcome.CANCELLED
    assert attempt.output_tokens == record.output_tokens
    assert_books_balance_for([tenant.pk])


def test_one_tenants_traffic_never_changes_what_another_tenant_reserves(
    api: Api, bedrock, start_worker
) -> None:
    """The Llama 2 tokens-per-byte ratio was once learned from every tenant's traffic, so
    one tenant's English pulled it down and another's dense prompts were under-reserved."""
    start_worker()
    dense = "7391 0482 5566 🦙🦙🦙 ∑∫√ 4242 " * 30
    victim = tenant_create(slug="dense")
    victim_api = Api(base_url=api.base_url, key=api_key_create(tenant=victim).secret)
    budget = hard_budget(victim)

    def reserve_dense() -> Reservation:
        sent = victim_api.send(victim_api.new_conversation(model=LLAMA2), dense, max_gen_len=64)
        assert sent.status_code == 202, sent.text
        answer_id = sent.json()["assistant_message"]["id"]
        victim_api.wait_final(answer_id)
        return Reservation.objects.get(message_id=answer_id)

    before = reserve_dense()
    english = [
        api.send(api.new_conversation(model=LLAMA2), f"Tell me about llamas, please. {index}")
        for index in range(24)
    ]
    for sent in english:
        api.wait_final(sent.json()["assistant_message"]["id"])
    after = reserve_dense()

    assert after.prompt_tokens == before.prompt_tokens
    for reservation in (before, after):
        answer = Message.objects.get(pk=reservation.message_id)
        assert answer.status == MessageStatus.COMPLETED
        assert answer.prompt_token_count <= reservation.prompt_tokens
    assert not Alert.objects.filter(kind=AlertKind.OVERRUN).exists()
    assert ledger_total(victim) <= Budget.objects.get(pk=budget.pk).limit_amount
    assert_books_balance_for([victim.pk, Tenant.objects.get(slug="e2e").pk])


def test_an_over_reporting_provider_never_charges_past_the_reservation(
    api: Api, bedrock, start_worker
) -> None:
    """Settlement once trusted reported counts: 200 output tokens reported for max_gen_len
    32 took the ledger to 4.8 times a hard limit."""
    tenant = Tenant.objects.get(slug="e2e")
    budget = hard_budget(tenant)
    conversation = api.new_conversation()
    sent = api.send(conversation, "Say something short.", max_gen_len=32)
    answer_id = sent.json()["assistant_message"]["id"]
    reservation = room_for_exactly(budget, answer_id)
    bedrock.script(["overreport:7"])
    start_worker(purge=False)  # the answer's task is waiting in the queue
    final = api.wait_final(answer_id)

    assert final["status"] == "completed", final
    answer = Message.objects.get(pk=answer_id)
    assert answer.generation_token_count > 32  # what the provider claimed
    record = UsageRecord.objects.get(message_id=answer_id)
    assert (record.input_tokens, record.output_tokens) == (reservation.prompt_tokens, 32)
    assert record.cost == reservation.amount
    assert ledger_total(tenant) <= Budget.objects.get(pk=budget.pk).limit_amount

    attempt = ProviderAttempt.objects.get(message_id=answer_id)
    assert attempt.output_tokens == answer.generation_token_count
    assert attempt.input_tokens == answer.prompt_token_count == 7 * reservation.prompt_tokens
    assert attempt.cost > record.cost
    overrun = Alert.objects.get(kind=AlertKind.OVERRUN, tenant=tenant)
    assert overrun.details["reported_output_tokens"] == answer.generation_token_count
    assert overrun.details["reserved_output_tokens"] == 32
    assert Decimal(overrun.details["charged"]) == record.cost
    # An operator's alert: not in the tenant's list of budget alerts.
    kinds = {alert["kind"] for alert in api.get("/api/v1/alerts").json()["results"]}
    assert kinds == {"soft_threshold", "limit_reached"}  # the budget is full, exactly
    # The next call finds the budget used up.
    refused = api.send(conversation, "And another thing.", max_gen_len=32)
    assert refused.status_code == 402, refused.text
    assert_books_balance_for([tenant.pk])
