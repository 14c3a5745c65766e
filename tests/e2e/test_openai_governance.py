"""Governance and idempotency through the OpenAI surface with concurrent real clients: the
openai SDK, the uvicorn web server, a Celery worker and the local Bedrock server.

Bedrock is slowed down so that no answer settles while the burst is decided: exactly the
answers that fit the limit pass, the others get the SDK's refusal, and the books balance.
"""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal
from typing import Any

import openai
import pytest

from billing.limits import quota_create
from billing.models import Budget, ManagedBy, Reservation, UsageRecord
from conversations.models import Message, Tenant
from devtools.local_bedrock import LocalBedrockServer
from tests.factories import LLAMA3
from tests.support.live_api import Api

pytestmark = pytest.mark.e2e

CLIENTS = 50
ALLOWED = 10
MAX_TOKENS = 40
QUESTION = [{"role": "user", "content": "What does a hard budget protect against?"}]


def concurrently(calls: list) -> list[Any]:
    """Run each call in its own thread, released together; results or exceptions."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait(timeout=60)
        try:
            results[index] = calls[index]()
        except Exception as error:  # reported to the test, never swallowed
            results[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not any(thread.is_alive() for thread in threads)
    return results


def clients(api: Api, **options: Any) -> list[openai.OpenAI]:
    return [
        openai.OpenAI(base_url=f"{api.base_url}/v1", api_key=api.key, max_retries=0, **options)
        for _ in range(CLIENTS)
    ]


def tenant() -> Tenant:
    return Tenant.objects.get(slug="e2e")


def one_reservation_amount(api: Api) -> Decimal:
    """What one call of the burst reserves (measured, then released by a quick answer)."""
    completion = openai.OpenAI(
        base_url=f"{api.base_url}/v1", api_key=api.key
    ).chat.completions.create(model=LLAMA3, messages=QUESTION, max_tokens=MAX_TOKENS)
    answer_id = completion.id.removeprefix("chatcmpl-")
    return Reservation.objects.get(message_id=answer_id).amount


def test_fifty_sdk_clients_against_a_budget_for_ten_get_ten_answers_and_forty_402(
    api: Api, start_worker, bedrock: LocalBedrockServer
) -> None:
    start_worker(concurrency=4)
    amount = one_reservation_amount(api)
    spent = UsageRecord.objects.get().cost
    budget = Budget.objects.create(
        tenant=tenant(), period="month", limit_amount=spent + ALLOWED * amount, is_hard=True
    )
    bedrock.configure(time_to_first_token_seconds=3.0)

    results = concurrently(
        [
            (lambda c=client: c.chat.completions.create(
                model=LLAMA3, messages=QUESTION, max_tokens=MAX_TOKENS))
            for client in clients(api, timeout=120)
        ]
    )  # fmt: skip

    answers = [r for r in results if isinstance(r, openai.types.chat.ChatCompletion)]
    refusals = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert len(answers) == ALLOWED, [r for r in results if not isinstance(r, type(answers[0]))][:3]
    assert len(refusals) == CLIENTS - ALLOWED
    assert {(r.status_code, r.code) for r in refusals} == {(402, "budget_exceeded")}
    assert UsageRecord.objects.count() == ALLOWED + 1
    budget.refresh_from_db()
    assert budget.spent_amount <= budget.limit_amount
    assert budget.spent_amount == sum(r.cost for r in UsageRecord.objects.all())


def test_fifty_sdk_clients_against_ten_at_once_get_ten_answers_and_forty_429(
    api: Api, start_worker, bedrock: LocalBedrockServer
) -> None:
    start_worker(concurrency=4)
    quota_create(tenant=tenant(), managed_by=ManagedBy.OPERATOR, max_concurrent=ALLOWED)
    bedrock.configure(time_to_first_token_seconds=3.0)

    results = concurrently(
        [
            (lambda c=client: c.chat.completions.create(
                model=LLAMA3, messages=QUESTION, max_tokens=MAX_TOKENS, stream=True,
                stream_options={"include_usage": True}))
            for client in clients(api, timeout=120)
        ]
    )  # fmt: skip

    streams = [r for r in results if isinstance(r, openai.Stream)]
    refusals = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(streams) == ALLOWED, [r for r in results if not isinstance(r, openai.Stream)][:3]
    assert len(refusals) == CLIENTS - ALLOWED
    assert all(r.code == "quota_exceeded" and r.response.headers["Retry-After"] for r in refusals)
    for stream in streams:
        chunks = list(stream)
        assert chunks[-1].usage.completion_tokens > 0
    assert UsageRecord.objects.count() == ALLOWED


def test_fifty_identical_posts_with_one_key_make_one_call_and_fifty_identical_answers(
    api: Api, start_worker, bedrock: LocalBedrockServer
) -> None:
    start_worker()
    bedrock.configure(time_to_first_token_seconds=1.0)
    key = {"Idempotency-Key": f"burst-{uuid.uuid4()}"}

    results = concurrently(
        [
            (lambda c=client: c.chat.completions.with_raw_response.create(
                model=LLAMA3, messages=QUESTION, max_tokens=MAX_TOKENS, extra_headers=key))
            for client in clients(api, timeout=120)
        ]
    )  # fmt: skip

    assert all(not isinstance(r, Exception) for r in results), results[:3]
    assert {r.status_code for r in results} == {200}
    assert len({r.content for r in results}) == 1  # byte for byte
    assert Message.objects.filter(tenant=tenant()).count() == 1
    assert Reservation.objects.count() == 1
    assert bedrock.request_count == 1
    assert UsageRecord.objects.count() == 1


def test_a_retry_after_a_dropped_connection_gets_the_original_answer(
    api: Api, start_worker, bedrock: LocalBedrockServer
) -> None:
    start_worker()
    bedrock.configure(time_to_first_token_seconds=2.0)
    key = {"Idempotency-Key": f"dropped-{uuid.uuid4()}"}
    impatient = openai.OpenAI(
        base_url=f"{api.base_url}/v1", api_key=api.key, max_retries=0, timeout=0.5
    )
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model=LLAMA3, messages=QUESTION, extra_headers=key)

    patient = openai.OpenAI(base_url=f"{api.base_url}/v1", api_key=api.key, max_retries=0)
    completion = patient.chat.completions.create(model=LLAMA3, messages=QUESTION, extra_headers=key)
    again = patient.chat.completions.create(model=LLAMA3, messages=QUESTION, extra_headers=key)
    streamed = list(
        patient.chat.completions.create(
            model=LLAMA3, messages=QUESTION, extra_headers={"Idempotency-Key": "other"},
            stream=True,
        )
    )  # fmt: skip

    answer = Message.objects.get(pk=completion.id.removeprefix("chatcmpl-"))
    assert completion.choices[0].message.content == answer.content
    assert again.model_dump() == completion.model_dump()
    assert Message.objects.filter(tenant=tenant()).count() == 2  # and the other key's
    assert bedrock.request_count == 2
    assert streamed[0].id != completion.id
    # The same key with another body is refused, by the SDK's error class.
    with pytest.raises(openai.UnprocessableEntityError) as reused:
        patient.chat.completions.create(
            model=LLAMA3, messages=QUESTION, max_tokens=7, extra_headers=key
        )
    assert reused.value.code == "idempotency_key_reused"


def test_a_stream_retried_with_its_key_reattaches_to_the_same_answer(
    api: Api, start_worker, bedrock: LocalBedrockServer
) -> None:
    start_worker()
    bedrock.configure(seconds_per_token=0.03)
    key = {"Idempotency-Key": f"stream-{uuid.uuid4()}"}
    client = openai.OpenAI(base_url=f"{api.base_url}/v1", api_key=api.key, max_retries=0)

    def stream_text() -> tuple[str, str]:
        chunks = list(
            client.chat.completions.create(
                model=LLAMA3, messages=QUESTION, max_tokens=MAX_TOKENS, stream=True,
                extra_headers=key,
            )
        )  # fmt: skip
        return chunks[0].id, "".join(c.choices[0].delta.content or "" for c in chunks)

    first = client.chat.completions.create(
        model=LLAMA3, messages=QUESTION, max_tokens=MAX_TOKENS, stream=True, extra_headers=key
    )
    first_chunk = next(iter(first))  # the connection drops after the first chunk
    first.close()
    retried_id, text = stream_text()
    assert retried_id == first_chunk.id
    answer = Message.objects.get(pk=retried_id.removeprefix("chatcmpl-"))
    assert text == answer.content
    assert stream_text() == (retried_id, text)  # once final, from the stored answer
    assert bedrock.request_count == 1
