"""The OpenAI-compatible surface through the real `openai` package and langchain-openai's
ChatOpenAI: a real web server, Celery workers, Redis and the local Bedrock server.

Every call is governed as a turn of our own API: a reservation before Bedrock, a ledger
entry after, the same budgets and quotas; refusals raise the SDK's own error classes.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import openai
import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from billing.limits import budget_create, quota_create
from billing.models import BudgetPeriod, ManagedBy, Reservation, ReservationStatus, UsageRecord
from conversations.models import Conversation, Message, MessageStatus, Tenant
from devtools.local_bedrock import LocalBedrockServer
from tests.factories import LLAMA3
from tests.support.live_api import Api
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "Tell me about llamas."}]


def sdk(api: Api, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.base_url}/v1", api_key=api.key, **options)


def async_sdk(api: Api, **options) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{api.base_url}/v1", api_key=api.key, **options)


def tenant() -> Tenant:
    return Tenant.objects.get(slug="e2e")


def answer_of(completion_id: str) -> Message:
    return Message.objects.get(pk=completion_id.removeprefix("chatcmpl-"))


def test_a_completion_is_governed_charged_and_hidden_from_the_conversation_list(
    api: Api, start_worker, bedrock: LocalBedrockServer
) -> None:
    start_worker()
    completion = sdk(api).chat.completions.create(
        model=LLAMA3,
        messages=[{"role": "system", "content": "Be brief."}, *QUESTION],
        max_tokens=40,
        temperature=0.2,
        user="alice",
    )

    assert completion.object == "chat.completion"
    assert completion.model == LLAMA3
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    answer = answer_of(completion.id)
    assert choice.message.content == answer.content
    assert completion.usage.prompt_tokens == answer.prompt_token_count
    assert completion.usage.completion_tokens == answer.generation_token_count
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    # Governed like our own turns: the frozen call, one ledger row, the end user's.
    reservation = Reservation.objects.get(message_id=answer.pk)
    assert reservation.status == ReservationStatus.SETTLED
    assert (reservation.max_gen_len, reservation.temperature) == (40, Decimal("0.20"))
    record = UsageRecord.objects.get(message_id=answer.pk)
    assert record.end_user.external_id == "alice"
    assert (record.input_tokens, record.output_tokens) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert bedrock.request_count == 1
    # Nothing but the ledger entry, from the tenant's point of view.
    assert answer.conversation.ephemeral
    assert api.get("/api/v1/conversations").json()["results"] == []
    assert api.get(f"/api/v1/messages/{answer.pk}").status_code == 404
    usage = api.get("/api/v1/usage/records").json()
    assert [row["message"] for row in usage["results"]] == [str(answer.pk)]


def test_a_stream_sends_chunks_then_usage_then_done(api: Api, start_worker) -> None:
    start_worker()
    stream = sdk(api).chat.completions.create(
        model=LLAMA3,
        messages=QUESTION,
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    finishing = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert len(finishing) == 1
    assert chunks[-1].choices == []
    answer = answer_of(chunks[0].id)
    assert text == answer.content
    assert chunks[-1].usage.completion_tokens == answer.generation_token_count
    assert chunks[-1].usage.prompt_tokens == answer.prompt_token_count


def test_async_client_non_streaming_and_streaming(api: Api, start_worker) -> None:
    start_worker()

    async def run() -> tuple[str, str]:
        async with async_sdk(api) as client:
            completion = await client.chat.completions.create(
                model=LLAMA3, messages=QUESTION, max_tokens=20
            )
            stream = await client.chat.completions.create(
                model=LLAMA3,
                messages=QUESTION,
                max_tokens=20,
                stream=True,
                stream_options={"include_usage": True},
            )
            pieces = [
                chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices
            ]
            return completion.choices[0].message.content, "".join(pieces)

    text, streamed = asyncio.run(run())
    assert text
    # The local server is deterministic for one prompt: the same question, the same answer.
    assert streamed == text
    assert UsageRecord.objects.filter(tenant=tenant()).count() == 2


def test_stop_sequences_cut_the_answer_returned_and_stop_a_stateless_call(
    api: Api, start_worker, bedrock: LocalBedrockServer
) -> None:
    bedrock.configure(seconds_per_token=0.02, answer_tokens=80)
    start_worker()
    client = sdk(api)
    full = client.chat.completions.create(model=LLAMA3, messages=QUESTION, max_tokens=100)
    text = full.choices[0].message.content
    stop = text.split()[3]  # a word from the start of the answer
    cut = text[: text.find(stop)]

    completion = client.chat.completions.create(
        model=LLAMA3, messages=QUESTION, max_tokens=100, stop=[stop, "never appears"]
    )
    assert completion.choices[0].message.content == cut
    assert completion.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model=LLAMA3, messages=QUESTION, max_tokens=100, stop=stop, stream=True
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"
    # Stateless calls are stopped at the sequence: charged what Bedrock generated, less
    # than the whole answer.
    for completion_id in (completion.id, chunks[0].id):
        answer = answer_of(completion_id)
        assert answer.status == MessageStatus.CANCELLED
        assert answer.content.startswith(cut + stop)
        record = UsageRecord.objects.get(message_id=answer.pk)
        assert record.output_tokens == answer.generation_token_count
        assert record.output_tokens < full.usage.completion_tokens


def test_a_stateful_call_appends_to_a_stored_conversation(api: Api, start_worker) -> None:
    start_worker()
    conversation = api.new_conversation(system_prompt="You are a llama expert.")
    client = sdk(api)
    first = client.chat.completions.create(
        model=LLAMA3, messages=QUESTION, extra_body={"conversation": conversation}
    )
    second = client.chat.completions.create(
        model=LLAMA3,
        messages=[{"role": "user", "content": "And alpacas?"}],
        extra_body={"conversation": conversation},
    )

    history = api.get(f"/api/v1/conversations/{conversation}/messages").json()["results"]
    assert [(m["role"], m["status"]) for m in history] == [
        ("user", "completed"),
        ("assistant", "completed"),
        ("user", "completed"),
        ("assistant", "completed"),
    ]
    assert history[1]["id"] == first.id.removeprefix("chatcmpl-")
    assert history[3]["content"] == second.choices[0].message.content
    # The second prompt was built from the stored history, as our own API builds it.
    prompt_tokens = Message.objects.get(pk=history[3]["id"]).prompt_token_count
    assert second.usage.prompt_tokens == prompt_tokens > first.usage.prompt_tokens
    assert not Conversation.objects.filter(ephemeral=True).exists()


def test_refusals_raise_the_sdks_error_classes(api: Api, start_worker) -> None:
    start_worker()
    client = sdk(api, max_retries=0)

    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=LLAMA3, messages=QUESTION, n=2)
    assert (bad.value.param, bad.value.code) == ("n", "unsupported_parameter")
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(
            model="meta.llama3-8b-instruct-v1:0",
            messages=[{"role": "user", "content": "llama " * 9000}],
        )
    assert too_long.value.code == "context_length_exceeded"
    assert "8192" in too_long.value.message
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{api.base_url}/v1", api_key="lk_000000000000.wrong", max_retries=0
        ).chat.completions.create(model=LLAMA3, messages=QUESTION)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="meta.llama9-huge-v1:0", messages=QUESTION)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("meta.llama9-huge-v1:0")

    budget_create(
        tenant=tenant(), period=BudgetPeriod.MONTH, limit=Decimal("0.000001"),
        managed_by=ManagedBy.OPERATOR,
    )  # fmt: skip
    with pytest.raises(openai.APIStatusError) as over_budget:
        client.chat.completions.create(model=LLAMA3, messages=QUESTION)
    assert over_budget.value.status_code == 402
    assert over_budget.value.code == "budget_exceeded"
    assert over_budget.value.body["type"] == "insufficient_quota"

    tenant().budgets.all().delete()
    quota_create(tenant=tenant(), managed_by=ManagedBy.OPERATOR, requests_per_minute=1)
    client.chat.completions.create(model=LLAMA3, messages=QUESTION, max_tokens=5)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model=LLAMA3, messages=QUESTION, max_tokens=5)
    assert limited.value.code == "quota_exceeded"
    assert 1 <= int(limited.value.response.headers["Retry-After"]) <= 60
    # Refusals stored nothing: one answer, one reservation, one ledger row.
    assert Message.objects.filter(tenant=tenant()).count() == 1
    assert Reservation.objects.filter(tenant=tenant()).count() == 1


def test_streams_raise_refusals_before_the_first_chunk(api: Api, start_worker) -> None:
    start_worker()
    quota_create(tenant=tenant(), managed_by=ManagedBy.OPERATOR, max_concurrent=0)
    with pytest.raises(openai.RateLimitError):
        sdk(api, max_retries=0).chat.completions.create(
            model=LLAMA3, messages=QUESTION, stream=True
        )


def test_models_in_openais_list_shape(api: Api) -> None:
    client = sdk(api)
    models = client.models.list()
    assert LLAMA3 in [model.id for model in models]
    assert all(model.owned_by == "meta" and model.object == "model" for model in models)
    profile = client.models.retrieve(f"us.{LLAMA3}")
    assert profile.id == f"us.{LLAMA3}"


def test_langchain_chat_openai_invoke_and_stream(api: Api, start_worker) -> None:
    start_worker()
    chat = ChatOpenAI(
        model=LLAMA3, base_url=f"{api.base_url}/v1", api_key=api.key, max_tokens=30,
        temperature=0.3, max_retries=0,
    )  # fmt: skip
    messages = [SystemMessage("Be brief."), HumanMessage("Tell me about llamas.")]
    answer = chat.invoke(messages)
    assert answer.content
    assert answer.usage_metadata["output_tokens"] > 0
    streamed = "".join(chunk.content for chunk in chat.stream(messages))
    assert streamed == answer.content
    assert UsageRecord.objects.filter(tenant=tenant()).count() == 2
    wait_for(lambda: not Reservation.objects.filter(status=ReservationStatus.OPEN).exists())
