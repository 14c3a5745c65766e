"""Redis restarted while answers stream: at once, and away for two seconds (a restart
that takes its time). The embedded Redis keeps nothing on disk, so a restart loses the
streams, the queue and the broker's record of the tasks in progress.

What must hold: an answer in flight is still completed and stored, charged once; an SSE
client keeps its connection through the outage (or reconnects with Last-Event-ID) and gets
the rest (a `reset` and the answer again) or, if the stream is gone and the answer is
final, the final message. A task still
waiting in the queue is gone with the queue: its answer stays queued until the periodic
expiry fails it and releases its money.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests

from billing.models import Reservation, ReservationStatus, UsageRecord
from conversations.expiry import stale_generations_expire
from conversations.models import Message, MessageStatus
from devtools.embedded_redis import EmbeddedRedis
from devtools.local_bedrock import LocalBedrockServer
from devtools.processes import ManagedProcess, free_port
from tests.faults.conftest import start_web_server
from tests.faults.invariant import assert_books_balance
from tests.faults.turns import assert_completed_exactly, send_turns, wait_all_final
from tests.support.live_api import Api
from tests.support.sse import SseEvent, read_sse
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

ANSWER_TOKENS = 250  # 5 s at 20 ms a token: Redis goes away mid-answer


class SseFollower(threading.Thread):
    """A client that follows an answer the way EventSource does: on a dropped connection
    it reconnects, sending the id of the last event it got as Last-Event-ID."""

    def __init__(self, api: Api, answer_id: str, *, timeout: float = 90) -> None:
        super().__init__(daemon=True)
        self.url = f"{api.base_url}/api/v1/messages/{answer_id}/stream"
        self.headers = api.headers
        self.deadline = time.monotonic() + timeout
        self.events: list[SseEvent] = []
        self.connections = 0
        self.resumed_with: list[str] = []
        self.final: SseEvent | None = None

    @property
    def deltas(self) -> int:
        return sum(1 for event in self.events if event.event == "delta")

    def text(self) -> str:
        """The answer as a client shows it: `reset` starts it again."""
        text = ""
        for event in self.events:
            if event.event == "reset":
                text = ""
            elif event.event == "delta":
                text += event.data["text"]
        return text

    def run(self) -> None:
        last_id: str | None = None
        while self.final is None and time.monotonic() < self.deadline:
            headers = dict(self.headers)
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
                self.resumed_with.append(last_id)
            self.connections += 1
            try:
                with requests.get(self.url, headers=headers, stream=True, timeout=15) as response:
                    if response.status_code == 200:
                        for event in read_sse(response):
                            self.events.append(event)
                            last_id = event.id or last_id
                            if event.event in ("done", "error"):
                                self.final = event
                                return
            except requests.RequestException:
                pass
            time.sleep(0.2)  # the `retry:` the server asks for is 1 s; keep the test short


@pytest.mark.parametrize("down_seconds", [0, 2], ids=["restart", "down-2s"])
def test_redis_restarted_while_answers_stream(
    tenant,
    api: Api,
    bedrock: LocalBedrockServer,
    launch_worker,
    tmp_path: Path,
    down_seconds: float,
) -> None:
    port = free_port()
    redis_server = EmbeddedRedis(port=port, directory=tmp_path / "redis")
    redis_server.start()
    processes: list[ManagedProcess] = []
    try:
        web, base_url = start_web_server(REDIS_URL=redis_server.url)
        processes.append(web)
        private_api = Api(base_url=base_url, key=api.key)
        bedrock.configure(seconds_per_token=0.02, answer_tokens=ANSWER_TOKENS)
        processes.append(launch_worker(concurrency=2, REDIS_URL=redis_server.url))
        # Two answers stream (one per pool process); the third waits in the queue.
        turns = send_turns(private_api, 3, label="Restart")
        streaming, waiting = turns[:2], turns[2]
        followers = [SseFollower(private_api, turn.answer_id) for turn in streaming]
        for follower in followers:
            follower.start()
        wait_for(lambda: all(f.deltas >= 20 for f in followers), timeout=30)
        assert Message.objects.get(pk=waiting.answer_id).status == MessageStatus.QUEUED

        redis_server.stop()
        time.sleep(down_seconds)  # the fault itself: how long a restart keeps Redis away
        redis_server = EmbeddedRedis(port=port, directory=tmp_path / "redis")
        redis_server.start()

        answer_ids = [turn.answer_id for turn in streaming]
        wait_all_final(answer_ids, timeout=30)
        assert_completed_exactly(answer_ids, answer_tokens=ANSWER_TOKENS)
        for follower in followers:
            follower.join(timeout=30)
            assert follower.final is not None, f"no final event in {follower.connections}"
            assert follower.final.event == "done"
            final = follower.final.data["message"]
            assert final["status"] == "completed"
            # The server rides the outage out on the same connection (it polls the
            # database meanwhile) or the client reconnects with Last-Event-ID: either way
            # it ends with the final message.
            assert follower.connections >= 1
            # The rest of the stream (a reset and the answer again) or the final message:
            # what the client assembled has no gap and nothing twice.
            assert final["content"].startswith(follower.text())

        # The queued task was lost with Redis: nothing will ever run it.
        assert Message.objects.get(pk=waiting.answer_id).status == MessageStatus.QUEUED
        counts = stale_generations_expire(older_than_seconds=0)
        assert counts["queued_failed"] == 1
        lost = Message.objects.get(pk=waiting.answer_id)
        assert (lost.status, lost.error_code) == (MessageStatus.FAILED, "expired")
        reservation = Reservation.objects.get(message_id=waiting.answer_id)
        assert reservation.status == ReservationStatus.RELEASED
        assert UsageRecord.objects.filter(message_id__in=answer_ids).count() == 2
        books = assert_books_balance()
        assert (books["completed"], books["failed"]) == (2, 1)
    finally:
        for process in reversed(processes):  # before their Redis goes
            process.stop()
        redis_server.stop()
