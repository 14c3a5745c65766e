"""Workers killed with SIGKILL while answers stream: late acks bring every task back, the
answer is made again from the start, and it is charged once."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from billing.models import UsageRecord
from config.redis_client import get_redis
from conversations.answer_stream import stream_key
from conversations.models import Message, MessageStatus
from devtools.local_bedrock import LocalBedrockServer
from devtools.processes import child_pids
from tests.e2e.books import FINAL_STATUSES
from tests.faults.invariant import assert_books_balance
from tests.faults.turns import assert_completed_exactly, send_turns, wait_all_final
from tests.support.live_api import Api
from tests.support.sse import stream_events
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

ANSWER_TOKENS = 200
# With late acks a task whose whole worker died comes back after the broker's visibility
# timeout; 5 s keeps the test short (answers here take about a second).
VISIBILITY_TIMEOUT = "5"


def stream_entries(answer_ids: list[str]) -> int:
    pipeline = get_redis().pipeline(transaction=False)
    for answer_id in answer_ids:
        pipeline.xlen(stream_key(answer_id))
    return sum(pipeline.execute())


def only_pool_process(worker_pid: int, *, not_pid: int | None = None) -> int | None:
    children = child_pids(worker_pid)
    if len(children) == 1 and children[0] != not_pid:
        return children[0]
    return None


def assert_streams_replay_the_stored_answers(api: Api, answer_ids: list[str]) -> None:
    """A client reading the stream now sees, after the last `reset`, exactly the answer."""
    for answer_id in answer_ids:
        events = stream_events(api, answer_id)
        kinds = [event.event for event in events]
        last_reset = len(kinds) - 1 - kinds[::-1].index("reset") if "reset" in kinds else -1
        text = "".join(e.data["text"] for e in events[last_reset + 1 :] if e.event == "delta")
        assert events[-1].event == "done"
        assert text == events[-1].data["message"]["content"]


def test_pool_process_killed_at_random_points_of_streams_loses_nothing_and_charges_once(
    tenant, api: Api, bedrock: LocalBedrockServer, launch_worker
) -> None:
    bedrock.configure(seconds_per_token=0.005, answer_tokens=ANSWER_TOKENS)
    worker = launch_worker(concurrency=1, CELERY_VISIBILITY_TIMEOUT_SECONDS=VISIBILITY_TIMEOUT)
    turns = send_turns(api, 6, label="Kill")
    answer_ids = [turn.answer_id for turn in turns]
    random_points = random.Random(20250611)  # reproducible fault points

    kills = 0
    pool_process = wait_for(lambda: only_pool_process(worker.process.pid))
    # Six answers make at least 1,200 stream entries; five kills after at most 200 each
    # always land before the work runs out.
    for _ in range(5):
        start = stream_entries(answer_ids)
        point = random_points.randint(1, ANSWER_TOKENS)
        wait_for(lambda: stream_entries(answer_ids) >= start + point, timeout=60)  # noqa: B023
        os.kill(pool_process, signal.SIGKILL)
        kills += 1
        # The worker replaces its pool process; the lost task goes back to the queue.
        pool_process = wait_for(
            lambda: only_pool_process(worker.process.pid, not_pid=pool_process),  # noqa: B023
            timeout=30,
        )

    answers = wait_all_final(answer_ids, timeout=120)
    assert worker.process.poll() is None
    assert worker.log().count("SIGKILL") >= kills, worker.log()[-3000:]
    assert_completed_exactly(answer_ids, answer_tokens=ANSWER_TOKENS)
    # Some answers were made more than once, none is charged more than once.
    assert sum(answer.attempt_count for answer in answers) > len(answers)
    assert UsageRecord.objects.filter(message_id__in=answer_ids).count() == len(answer_ids)
    assert_streams_replay_the_stored_answers(api, answer_ids)
    books = assert_books_balance()
    assert books["completed"] == 6
    assert books["tenant_wide_budgets"] == 1


def test_whole_worker_killed_mid_answer_a_fresh_worker_takes_the_task_up(
    tenant, api: Api, bedrock: LocalBedrockServer, launch_worker
) -> None:
    bedrock.configure(seconds_per_token=0.005, answer_tokens=ANSWER_TOKENS)
    worker = launch_worker(concurrency=1, CELERY_VISIBILITY_TIMEOUT_SECONDS=VISIBILITY_TIMEOUT)
    turns = send_turns(api, 3, label="Crash")
    answer_ids = [turn.answer_id for turn in turns]

    # The worker takes tasks in order: the first answer is the one streaming.
    wait_for(lambda: get_redis().xlen(stream_key(answer_ids[0])) >= 50, timeout=30)
    os.killpg(worker.process.pid, signal.SIGKILL)  # the main process and its pool at once
    worker.process.wait()
    killed_at = time.monotonic()
    assert Message.objects.get(pk=answer_ids[0]).status == MessageStatus.RUNNING

    # A supervisor starts a replacement straight away; it must not purge the queue.
    launch_worker(concurrency=1, purge=False, CELERY_VISIBILITY_TIMEOUT_SECONDS=VISIBILITY_TIMEOUT)
    wait_all_final(answer_ids[1:], timeout=60)  # the queued ones go at once
    # Back within one restore sweep after the timeout; kombu's default sweep (every
    # 10 x 10 s) would leave it for about 100 s (see the report: transport options).
    wait_for(
        lambda: Message.objects.get(pk=answer_ids[0]).status in FINAL_STATUSES,
        timeout=30,
        interval=0.2,
    )
    # The lost task came back only once the broker deemed it abandoned.
    assert time.monotonic() - killed_at >= int(VISIBILITY_TIMEOUT)
    assert_completed_exactly(answer_ids, answer_tokens=ANSWER_TOKENS)
    assert Message.objects.get(pk=answer_ids[0]).attempt_count == 2
    assert UsageRecord.objects.filter(message_id__in=answer_ids).count() == 3
    assert_streams_replay_the_stored_answers(api, answer_ids)
    books = assert_books_balance()
    assert books["completed"] == 3
