"""The database is the truth about work; Redis carries it and may lose it.

- A task lost with Redis (the queue is not persisted) is handed to the broker again by the
  sweeper, and its answer is made: nothing waits an hour for the expiry.
- A worker killed outright leaves a running answer whose lease lapses; the sweeper takes it
  back and another worker completes it, long before the broker's visibility timeout.
- While Redis is away the API answers 503 with Retry-After (never 500, never a 202 for work
  it could not queue), /readyz says so, and everything works again once it is back.

The sweeper runs in the test process here, as Celery beat would run it every
GENERATION_SWEEP_SECONDS; the run command's own beat is tested in tests/test_run_command.py.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests

from config.redis_client import get_redis
from conversations.answer_stream import stream_key
from conversations.models import Message, MessageStatus
from conversations.services.dispatch import generations_sweep
from devtools.embedded_redis import EmbeddedRedis
from devtools.local_bedrock import LocalBedrockServer
from devtools.processes import ManagedProcess, free_port
from tests.e2e.books import FINAL_STATUSES
from tests.faults.conftest import start_web_server
from tests.faults.invariant import assert_books_balance
from tests.faults.turns import assert_completed_exactly, send_turns, wait_all_final
from tests.support.live_api import Api
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

ANSWER_TOKENS = 120


def sweep_until_final(answer_ids: list[str], *, timeout: float) -> float:
    """Run the sweeper every half second (beat's job) until the answers are final;
    returns how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        generations_sweep()
        if all(
            status in FINAL_STATUSES
            for status in Message.objects.filter(pk__in=answer_ids).values_list("status", flat=True)
        ):
            return time.monotonic() - started
        time.sleep(0.5)
    states = dict(Message.objects.filter(pk__in=answer_ids).values_list("pk", "status"))
    pytest.fail(f"answers not final after {timeout} s of sweeping: {states}")


def test_a_task_lost_with_redis_is_requeued_by_the_sweeper_and_answered(
    tenant, api: Api, bedrock: LocalBedrockServer, launch_worker, settings
) -> None:
    settings.GENERATION_REQUEUE_AFTER_SECONDS = 1
    # No worker yet: the tasks wait in their queues; then Redis loses them (as a restart
    # of a Redis without persistence does), while the database still has them queued.
    turns = send_turns(api, 3, label="Lost")
    answer_ids = [turn.answer_id for turn in turns]
    queues = [queue.name for queue in settings.CELERY_TASK_QUEUES]
    assert sum(get_redis().llen(name) for name in queues) >= 3
    get_redis().delete(*queues)
    bedrock.configure(answer_tokens=ANSWER_TOKENS)
    launch_worker(concurrency=2)
    time.sleep(1.5)
    statuses = set(Message.objects.filter(pk__in=answer_ids).values_list("status", flat=True))
    assert statuses == {MessageStatus.QUEUED}  # nothing will run them but the sweeper

    took = sweep_until_final(answer_ids, timeout=60)

    assert took < 30
    assert_completed_exactly(answer_ids, answer_tokens=ANSWER_TOKENS)
    books = assert_books_balance()
    assert books["completed"] == 3


def test_a_killed_worker_answer_is_taken_back_long_before_the_visibility_timeout(
    tenant, api: Api, bedrock: LocalBedrockServer, launch_worker
) -> None:
    bedrock.configure(seconds_per_token=0.01, answer_tokens=ANSWER_TOKENS * 2)
    worker = launch_worker(concurrency=1, CELERY_VISIBILITY_TIMEOUT_SECONDS="900")
    (turn,) = send_turns(api, 1, label="Killed")
    wait_for(lambda: get_redis().xlen(stream_key(turn.answer_id)) >= 30, timeout=30)
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait()
    assert Message.objects.get(pk=turn.answer_id).status == MessageStatus.RUNNING

    launch_worker(concurrency=1, purge=False, CELERY_VISIBILITY_TIMEOUT_SECONDS="900")
    took = sweep_until_final([turn.answer_id], timeout=60)

    assert took < 60  # the broker alone would have waited 900 s
    answer = Message.objects.get(pk=turn.answer_id)
    assert answer.status == MessageStatus.COMPLETED
    assert answer.attempt_count == 2
    assert_completed_exactly([turn.answer_id], answer_tokens=ANSWER_TOKENS * 2)
    assert_books_balance()


def test_while_redis_is_away_the_api_answers_503_and_recovers(
    tenant, api: Api, bedrock: LocalBedrockServer, launch_worker, tmp_path: Path
) -> None:
    port = free_port()
    redis_server = EmbeddedRedis(port=port, directory=tmp_path / "redis")
    redis_server.start()
    processes: list[ManagedProcess] = []
    try:
        web, base_url = start_web_server(REDIS_URL=redis_server.url)
        processes.append(web)
        processes.append(launch_worker(concurrency=1, REDIS_URL=redis_server.url))
        private_api = Api(base_url=base_url, key=api.key)
        conversation = private_api.new_conversation()
        redis_server.stop()

        refused = private_api.send(conversation, "Anyone there?")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "service_unavailable"
        assert int(refused.headers["Retry-After"]) >= 1
        assert not Message.objects.filter(conversation_id=conversation).exists()
        ready = requests.get(f"{base_url}/readyz", timeout=10)
        assert ready.status_code == 503

        redis_server = EmbeddedRedis(port=port, directory=tmp_path / "redis")
        redis_server.start()
        accepted = wait_for(
            lambda: (r := private_api.send(conversation, "And now?")).status_code == 202 and r,
            timeout=30,
            interval=0.5,
        )
        answer_id = accepted.json()["assistant_message"]["id"]
        wait_all_final([answer_id], timeout=60)
        assert Message.objects.get(pk=answer_id).status == MessageStatus.COMPLETED
        assert_books_balance()
    finally:
        for process in reversed(processes):
            process.stop()
        redis_server.stop()
