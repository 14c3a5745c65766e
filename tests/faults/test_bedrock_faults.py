"""Bedrock misbehaving: throttling half the requests for a burst, hanging past the read
timeout, stalling on every attempt. Retries are the task's; money moves once."""

from __future__ import annotations

import time

import pytest

from billing.models import Reservation, ReservationStatus, UsageRecord
from conversations.models import Message, MessageStatus
from devtools.local_bedrock import LocalBedrockServer
from tests.e2e.books import FINAL_STATUSES
from tests.faults.invariant import assert_books_balance
from tests.faults.turns import assert_completed_exactly, send_turns, wait_all_final
from tests.support.live_api import Api
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

ANSWER_TOKENS = 20


def test_throttling_half_the_requests_for_a_burst_completes_every_answer_charged_once(
    tenant, api: Api, bedrock: LocalBedrockServer, launch_worker
) -> None:
    # The server's draws are seeded (the fixture's seed): the same requests are throttled
    # in every run that sends them in the same order.
    bedrock.configure(throttle_rate=0.5, answer_tokens=ANSWER_TOKENS)
    launch_worker(concurrency=2, GENERATION_MAX_RETRIES="10")
    turns = send_turns(api, 16, label="Burst")
    answer_ids = [turn.answer_id for turn in turns]

    def burst_over() -> bool:
        answers_final = not Message.objects.filter(
            pk__in=answer_ids, status__in=[MessageStatus.QUEUED, MessageStatus.RUNNING]
        ).exists()
        return bedrock.request_count >= 24 or answers_final

    wait_for(burst_over, timeout=60)
    bedrock.configure(throttle_rate=0.0)
    answers = wait_all_final(answer_ids, timeout=90)

    assert_completed_exactly(answer_ids, answer_tokens=ANSWER_TOKENS)
    assert bedrock.streams_completed == len(answer_ids)
    throttled = bedrock.request_count - bedrock.streams_completed
    assert throttled >= 4  # the burst did bite
    # One HTTP request per attempt: the task retried, botocore did not.
    assert sum(answer.attempt_count for answer in answers) == bedrock.request_count
    assert UsageRecord.objects.filter(message_id__in=answer_ids).count() == len(answer_ids)
    books = assert_books_balance()
    assert books["completed"] == len(answer_ids)


def test_bedrock_hanging_past_the_read_timeout_is_retried_and_completes(
    tenant, api: Api, bedrock: LocalBedrockServer, launch_worker
) -> None:
    bedrock.configure(hang_seconds=15)
    bedrock.script(["hang"])  # no response at all to the first request, then normal
    launch_worker(BEDROCK_READ_TIMEOUT_SECONDS="1")
    started = time.monotonic()
    [turn] = send_turns(api, 1, label="Hang")
    [answer] = wait_all_final([turn.answer_id], timeout=30)

    assert time.monotonic() - started >= 1  # the first attempt waited out the timeout
    assert_completed_exactly([turn.answer_id], answer_tokens=None)
    assert answer.attempt_count == 2
    assert bedrock.request_count == 2
    assert UsageRecord.objects.filter(message_id=turn.answer_id).count() == 1
    books = assert_books_balance()
    assert books["completed"] == 1


def test_a_stream_stalling_past_the_read_timeout_every_time_fails_and_releases(
    tenant, api: Api, bedrock: LocalBedrockServer, launch_worker
) -> None:
    # Headers come at once, the first token never in time: the timeout hits mid-stream.
    bedrock.configure(time_to_first_token_seconds=3)
    launch_worker(BEDROCK_READ_TIMEOUT_SECONDS="1", GENERATION_MAX_RETRIES="1")
    [turn] = send_turns(api, 1, label="Stall")
    wait_for(lambda: Message.objects.get(pk=turn.answer_id).status in FINAL_STATUSES, timeout=30)

    answer = Message.objects.get(pk=turn.answer_id)
    assert answer.status == MessageStatus.FAILED
    assert answer.error_code == "ReadTimeout"
    assert answer.attempt_count == 2
    assert bedrock.request_count == 2
    assert Reservation.objects.get(message_id=turn.answer_id).status == ReservationStatus.RELEASED
    assert not UsageRecord.objects.filter(message_id=turn.answer_id).exists()
    books = assert_books_balance()
    assert books["failed"] == 1
