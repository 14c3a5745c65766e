"""Answers through the whole stack: web server, a real Celery worker, real Redis, and real
boto3 over HTTP against the local Bedrock-compatible server."""

from __future__ import annotations

import os
import signal
from decimal import Decimal

import pytest

from billing.models import Reservation, UsageRecord
from billing.pricing import token_cost
from conversations.context import context_build
from conversations.models import Conversation, Message
from conversations.tasks import generate_answer
from devtools.local_bedrock import LocalBedrockServer, expected_generation
from devtools.processes import child_pids
from models_catalog.tokenizer import count_llama3_tokens
from tests.support.live_api import Api
from tests.support.local_bedrock import BEDROCK_SEED
from tests.support.sse import stream_events
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


def expected_answer(
    conversation_id: str,
    user_sequence: int,
    max_gen_len: int = 512,
    answer_tokens: int | None = None,
) -> str:
    conversation = Conversation.objects.select_related("model").get(pk=conversation_id)
    context = context_build(
        conversation=conversation, max_gen_len=max_gen_len, through_sequence=user_sequence
    )
    return expected_generation(
        context.prompt, max_gen_len, BEDROCK_SEED, answer_tokens=answer_tokens
    )


def test_async_answer_is_generated_and_stored_with_bedrocks_counts(api: Api, start_worker) -> None:
    start_worker()
    conversation_id = api.new_conversation(system_prompt="Be brief.")
    response = api.send(conversation_id, "What is a llama?")
    assert response.status_code == 202, response.text
    body = response.json()
    answer = api.wait_final(body["assistant_message"]["id"])

    assert answer["status"] == "completed"
    assert answer["content"] == expected_answer(conversation_id, 1)
    assert answer["stop_reason"] == "stop"
    assert answer["generation_token_count"] == count_llama3_tokens(answer["content"])
    assert answer["prompt_token_count"] == body["context"]["prompt_token_count"]
    assert answer["token_count"] == count_llama3_tokens(answer["content"].strip())

    # The next turn sees the answer in its history.
    # One ledger entry, at Bedrock's counts and the price in force when the call was made.
    record = UsageRecord.objects.get(message_id=answer["id"])
    assert (record.input_tokens, record.output_tokens) == (
        answer["prompt_token_count"],
        answer["generation_token_count"],
    )
    assert record.cost == token_cost(
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        input_price=Decimal("0.22"),
        output_price=Decimal("0.22"),
    )
    assert Decimal(answer["usage"]["cost"]) == record.cost
    assert Reservation.objects.get(message_id=answer["id"]).status == "settled"

    second = api.send(conversation_id, "And an alpaca?").json()
    assert len(second["context"]["kept_message_ids"]) == 3
    second_answer = api.wait_final(second["assistant_message"]["id"])
    assert second_answer["content"] == expected_answer(conversation_id, 3)


def test_sync_mode_waits_for_the_answer(api: Api, start_worker) -> None:
    start_worker()
    conversation_id = api.new_conversation()
    response = api.send(conversation_id, "Hello", mode="sync", max_gen_len=5)
    assert response.status_code == 201, response.text
    answer = response.json()["assistant_message"]
    assert answer["status"] == "completed"
    assert answer["stop_reason"] == "length"
    assert answer["generation_token_count"] == 5
    assert answer["content"] == expected_answer(conversation_id, 1, max_gen_len=5)


def test_sync_mode_answers_202_when_the_answer_is_not_ready_in_time(
    api: Api, start_worker, bedrock: LocalBedrockServer
) -> None:
    # The web server waits GENERATION_SYNC_WAIT_SECONDS (2 s in these tests, see conftest);
    # an answer that takes about 4 s is not ready in time.
    bedrock.configure(seconds_per_token=0.02, answer_tokens=200)
    start_worker()
    conversation_id = api.new_conversation()
    response = api.send(conversation_id, "Tell me everything", mode="sync")
    assert response.status_code == 202, response.text
    answer = response.json()["assistant_message"]
    assert answer["status"] in ("queued", "running")
    assert api.wait_final(answer["id"])["status"] == "completed"


def test_sse_streams_deltas_then_done_and_late_clients_get_everything(
    api: Api, start_worker, bedrock: LocalBedrockServer
) -> None:
    bedrock.configure(seconds_per_token=0.01)
    start_worker()
    conversation_id = api.new_conversation()
    answer_id = api.send(conversation_id, "Stream it").json()["assistant_message"]["id"]

    live = stream_events(api, answer_id)
    deltas = [event for event in live if event.event == "delta"]
    assert len(deltas) > 3
    assert live[-1].event == "done"
    final = live[-1].data["message"]
    assert final["status"] == "completed"
    assert "".join(event.data["text"] for event in deltas) == final["content"]
    assert final["content"] == expected_answer(conversation_id, 1)

    # A client that connects after the end reads the same stream from the start.
    late = stream_events(api, answer_id)
    assert [event.data for event in late] == [event.data for event in live]

    # Last-Event-ID resumes after the given event.
    resumed = stream_events(api, answer_id, **{"Last-Event-ID": deltas[2].id})
    resumed_text = "".join(event.data["text"] for event in resumed if event.event == "delta")
    assert "".join(event.data["text"] for event in deltas[:3]) + resumed_text == final["content"]


def test_stream_endpoint_is_tenant_scoped_and_needs_a_key(api: Api, start_worker) -> None:
    import requests

    from conversations.services import api_key_create, tenant_create

    conversation_id = api.new_conversation()
    answer_id = api.send(conversation_id, "mine").json()["assistant_message"]["id"]
    url = f"{api.base_url}/api/v1/messages/{answer_id}/stream"
    other = api_key_create(tenant=tenant_create(slug="intruder")).secret

    stranger = requests.get(url, headers={"Authorization": f"Bearer {other}"}, timeout=10)
    assert stranger.status_code == 404
    assert stranger.json()["error"]["code"] == "not_found"
    anonymous = requests.get(url, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "not_authenticated"
    bad_resume = requests.get(url, headers={**api.headers, "Last-Event-ID": "x"}, timeout=10)
    assert bad_resume.status_code == 400


def test_throttled_twice_then_succeeds(api: Api, start_worker, bedrock: LocalBedrockServer) -> None:
    bedrock.script(["throttle", "throttle"])
    start_worker()
    conversation_id = api.new_conversation()
    answer_id = api.send(conversation_id, "Busy?").json()["assistant_message"]["id"]
    answer = api.wait_final(answer_id)
    assert answer["status"] == "completed"
    assert answer["content"] == expected_answer(conversation_id, 1)
    assert Message.objects.get(pk=answer_id).attempt_count == 3
    assert bedrock.request_count == 3  # our task retried; botocore did not


def test_retries_used_up_fail_the_answer_with_the_error_code(
    api: Api, start_worker, bedrock: LocalBedrockServer
) -> None:
    bedrock.script(["throttle"] * 4)  # first attempt + 3 retries
    start_worker()
    conversation_id = api.new_conversation()
    answer_id = api.send(conversation_id, "Busy?").json()["assistant_message"]["id"]
    answer = api.wait_final(answer_id)
    assert answer["status"] == "failed"
    assert answer["error"]["code"] == "ThrottlingException"
    assert bedrock.request_count == 4
    assert Reservation.objects.get(message_id=answer_id).status == "released"
    assert not UsageRecord.objects.filter(message_id=answer_id).exists()
    events = stream_events(api, answer_id)
    assert events[-1].event == "error"
    # The conversation is free for the next turn.
    assert api.send(conversation_id, "Again").status_code == 202


def test_final_error_fails_at_once(api: Api, start_worker, bedrock: LocalBedrockServer) -> None:
    bedrock.script(["AccessDeniedException"])
    start_worker()
    conversation_id = api.new_conversation()
    answer_id = api.send(conversation_id, "Hi").json()["assistant_message"]["id"]
    answer = api.wait_final(answer_id)
    assert answer["status"] == "failed"
    assert answer["error"]["code"] == "AccessDeniedException"
    assert bedrock.request_count == 1


def test_failure_in_the_middle_of_a_stream_is_retried_without_duplicating_text(
    api: Api, start_worker, bedrock: LocalBedrockServer
) -> None:
    bedrock.script(["midstream_error"])
    start_worker()
    conversation_id = api.new_conversation()
    answer_id = api.send(conversation_id, "Careful").json()["assistant_message"]["id"]
    answer = api.wait_final(answer_id)
    expected = expected_answer(conversation_id, 1)
    assert answer["status"] == "completed"
    assert answer["content"] == expected

    events = stream_events(api, answer_id)
    kinds = [event.event for event in events]
    assert "reset" in kinds
    after_reset = events[kinds.index("reset") + 1 :]
    assert "".join(e.data["text"] for e in after_reset if e.event == "delta") == expected


def test_cancel_a_running_answer_keeps_what_was_streamed(
    api: Api, start_worker, bedrock: LocalBedrockServer
) -> None:
    bedrock.configure(seconds_per_token=0.02, answer_tokens=400)
    start_worker()
    conversation_id = api.new_conversation()
    answer_id = api.send(conversation_id, "Talk a lot").json()["assistant_message"]["id"]
    wait_for(lambda: api.message(answer_id)["status"] == "running")
    wait_for(lambda: Message.objects.get(pk=answer_id).attempt_count == 1)
    response = api.post(f"/api/v1/messages/{answer_id}/cancel")
    assert response.status_code in (200, 202), response.text
    answer = api.wait_final(answer_id)
    assert answer["status"] == "cancelled"
    full = expected_answer(conversation_id, 1, answer_tokens=400)
    assert answer["content"]
    assert full.startswith(answer["content"])
    assert len(answer["content"]) < len(full)
    wait_for(lambda: bedrock.streams_aborted == 1, timeout=10)  # we stopped reading
    record = UsageRecord.objects.get(message_id=answer_id)  # charged for what it streamed
    assert record.outcome == "cancelled"
    assert record.output_tokens == count_llama3_tokens(answer["content"].strip())
    assert Reservation.objects.get(message_id=answer_id).status == "settled"
    assert api.post(f"/api/v1/messages/{answer_id}/cancel").json()["status"] == "cancelled"


def test_cancel_a_queued_answer_then_the_worker_skips_it(
    api: Api, start_worker, bedrock: LocalBedrockServer
) -> None:
    conversation_id = api.new_conversation()
    answer_id = api.send(conversation_id, "Never mind").json()["assistant_message"]["id"]
    response = api.post(f"/api/v1/messages/{answer_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    start_worker()
    # Let the worker take the queued task; it must leave the cancelled answer alone.
    follow_up = api.send(conversation_id, "Now answer").json()["assistant_message"]["id"]
    assert api.wait_final(follow_up)["status"] == "completed"
    assert api.message(answer_id)["content"] == ""
    assert bedrock.request_count == 1
    assert Reservation.objects.get(message_id=answer_id).status == "released"
    assert not UsageRecord.objects.filter(message_id=answer_id).exists()


def test_completed_finished_user_turns_reject_cancel(api: Api, start_worker) -> None:
    start_worker()
    conversation_id = api.new_conversation()
    body = api.send(conversation_id, "Hi", mode="sync").json()
    done = api.post(f"/api/v1/messages/{body['assistant_message']['id']}/cancel")
    assert done.status_code == 409
    assert done.json()["error"]["code"] == "not_cancellable"
    user_turn = api.post(f"/api/v1/messages/{body['user_message']['id']}/cancel")
    assert user_turn.status_code == 409


def test_a_task_run_twice_never_duplicates_the_answer(api: Api, start_worker) -> None:
    start_worker()
    conversation_id = api.new_conversation()
    answer_id = api.send(conversation_id, "Once").json()["assistant_message"]["id"]
    first = api.wait_final(answer_id)
    assert generate_answer.apply(args=[answer_id]).get() == "skipped"
    generate_answer.delay(answer_id)  # and once more through the real worker
    wait_for(lambda: "skipped" in "".join(_worker_results(answer_id)), timeout=5, interval=0.1)
    assert api.message(answer_id) == first
    assert Message.objects.filter(conversation_id=conversation_id).count() == 2
    assert UsageRecord.objects.filter(message_id=answer_id).count() == 1


def _worker_results(answer_id: str) -> list[str]:
    message = Message.objects.get(pk=answer_id)
    # A skipped run changes nothing; the attempt count proves no second claim happened.
    return ["skipped"] if message.attempt_count == 1 else []


def test_a_worker_killed_mid_answer_leaves_it_to_run_again_once(
    api: Api, start_worker, bedrock: LocalBedrockServer
) -> None:
    bedrock.configure(seconds_per_token=0.01, answer_tokens=300)
    worker = start_worker(concurrency=1)
    conversation_id = api.new_conversation()
    answer_id = api.send(conversation_id, "Long answer").json()["assistant_message"]["id"]

    # Kill the pool process while it streams (after some deltas reached Redis).
    from config.redis_client import get_redis
    from conversations.answer_stream import stream_key

    wait_for(lambda: get_redis().xlen(stream_key(answer_id)) >= 10, timeout=30)
    [pool_process] = child_pids(worker.process.pid)
    os.kill(pool_process, signal.SIGKILL)

    answer = api.wait_final(answer_id, timeout=60)
    assert answer["status"] == "completed"
    expected = expected_answer(conversation_id, 1, answer_tokens=300)
    assert answer["content"] == expected  # whole, once
    assert Message.objects.get(pk=answer_id).attempt_count == 2
    assert Message.objects.filter(conversation_id=conversation_id, role="assistant").count() == 1
    assert bedrock.request_count == 2
    assert UsageRecord.objects.filter(message_id=answer_id).count() == 1  # charged once
    events = stream_events(api, answer_id)
    kinds = [event.event for event in events]
    after_reset = events[kinds.index("reset") + 1 :]
    assert "".join(e.data["text"] for e in after_reset if e.event == "delta") == expected
