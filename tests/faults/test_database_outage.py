"""The database away while a worker settles an answer.

On PostgreSQL the worker reaches the database through a TCP proxy in this process, which
cuts every connection and refuses new ones for a few seconds, at a chosen moment of the
settlement. SQLite has no connection to cut: there another process holds the database's
write lock for a few seconds instead, so the settlement waits (the busy timeout) rather
than fails; the cases that need a lost connection are skipped.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from django.db import connection
from django.utils import timezone

from billing.models import Reservation, ReservationStatus, UsageRecord
from config.redis_client import get_redis
from conversations.answer_stream import stream_key
from conversations.expiry import stale_generations_expire
from conversations.models import Message
from devtools.local_bedrock import LocalBedrockServer
from tests.e2e.books import FINAL_STATUSES
from tests.faults.invariant import assert_books_balance
from tests.faults.tcp_proxy import TcpProxy, database_url_through, is_postgresql
from tests.faults.turns import assert_completed_exactly, send_turns, wait_all_final
from tests.support.live_api import Api
from tests.support.sse import stream_events
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

ANSWER_TOKENS = 200
OUTAGE_SECONDS = 3.0
# Retries that outlast the outage: full jitter up to 0.5 s, 30 times (about 7 s).
OUTLASTING_RETRIES = {
    "GENERATION_MAX_RETRIES": "30",
    "GENERATION_RETRY_BACKOFF_SECONDS": "0.2",
    "GENERATION_RETRY_BACKOFF_MAX_SECONDS": "0.5",
}


def usage_insert(data: bytes) -> bool:
    return b'INSERT INTO "billing_usagerecord"' in data


def commit(data: bytes) -> bool:
    return b"COMMIT" in data


def proxy_to_database() -> TcpProxy:
    database = connection.settings_dict
    return TcpProxy(database.get("HOST") or "127.0.0.1", int(database.get("PORT") or 5432))


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    if not is_postgresql():
        pytest.skip("SQLite: there is no database connection to lose (see the module doc)")
    proxy = proxy_to_database()
    yield proxy
    proxy.close()


def test_database_unreachable_during_settlement_retries_and_settles_once(
    tenant, api: Api, bedrock: LocalBedrockServer, launch_worker
) -> None:
    bedrock.configure(seconds_per_token=0.005, answer_tokens=ANSWER_TOKENS)
    if is_postgresql():
        proxy = proxy_to_database()
        # The settlement's ledger insert never reaches the server: the connection drops,
        # the transaction (the answer's final UPDATE with it) rolls back, and for 3 s no
        # connection gets through.
        proxy.cut_when(usage_insert, seconds=OUTAGE_SECONDS)
        try:
            launch_worker(DATABASE_URL=database_url_through(proxy), **OUTLASTING_RETRIES)
            [turn] = send_turns(api, 1, label="Outage")
            [answer] = wait_all_final([turn.answer_id], timeout=60)
        finally:
            proxy.close()
        assert proxy.tripped.is_set()
        assert proxy.refused >= 1  # retries knocked while it was away
        assert answer.attempt_count >= 2
        assert bedrock.request_count == 2  # one retry reached Bedrock, after the outage
        assert bedrock.streams_completed == 2
    else:
        launch_worker(**OUTLASTING_RETRIES)
        [turn] = send_turns(api, 1, label="Outage")
        wait_for(lambda: get_redis().xlen(stream_key(turn.answer_id)) >= 20, timeout=30)
        released_at = _hold_sqlite_write_lock(OUTAGE_SECONDS)
        [answer] = wait_all_final([turn.answer_id], timeout=60)
        assert answer.completed_at >= released_at  # it waited for the lock, then settled
        assert answer.attempt_count == 1

    assert_completed_exactly([turn.answer_id], answer_tokens=ANSWER_TOKENS)
    assert UsageRecord.objects.filter(message_id=turn.answer_id).count() == 1
    assert Reservation.objects.get(message_id=turn.answer_id).status == ReservationStatus.SETTLED
    events = stream_events(api, turn.answer_id)
    assert events[-1].event == "done"
    books = assert_books_balance()
    assert books["completed"] == 1


def _hold_sqlite_write_lock(seconds: float) -> datetime:
    """Take the database's write lock in another connection for `seconds`; returns when
    it was given back (as a timezone-aware time)."""
    holder = sqlite3.connect(connection.settings_dict["NAME"], timeout=20)
    holder.isolation_level = None
    holder.execute("BEGIN EXCLUSIVE")
    time.sleep(seconds)  # the fault itself: the lock is held this long
    # Taken before the lock is given back, so the worker cannot write earlier than this.
    released_at = timezone.now()
    holder.execute("COMMIT")
    holder.close()
    return released_at


def test_connection_lost_after_the_settlement_committed_charges_once(
    tenant, api: Api, bedrock: LocalBedrockServer, launch_worker, proxy: TcpProxy
) -> None:
    # The COMMIT reaches the server and succeeds; its reply is lost with the connection.
    # The worker cannot know the answer is stored: its retry must find it final.
    bedrock.configure(seconds_per_token=0.005, answer_tokens=ANSWER_TOKENS)
    armed = threading.Event()

    def arm_on_settlement(data: bytes) -> bool:
        if usage_insert(data):
            armed.set()
        return armed.is_set() and commit(data)

    proxy.cut_after_reply_to(arm_on_settlement, seconds=OUTAGE_SECONDS)
    launch_worker(DATABASE_URL=database_url_through(proxy), **OUTLASTING_RETRIES)
    [turn] = send_turns(api, 1, label="Ambiguous")
    wait_for(proxy.tripped.is_set, timeout=30)
    [answer] = wait_all_final([turn.answer_id], timeout=30)

    assert_completed_exactly([turn.answer_id], answer_tokens=ANSWER_TOKENS)
    assert answer.attempt_count == 1  # the retry found it final and left it alone
    assert bedrock.request_count == 1
    assert UsageRecord.objects.filter(message_id=turn.answer_id).count() == 1
    # No `done` was published (the worker thought it failed); readers learn it from the row.
    assert stream_events(api, turn.answer_id)[-1].data["message"]["status"] == "completed"
    books = assert_books_balance()
    assert books["completed"] == 1


def test_database_unreachable_longer_than_the_retries_the_answer_still_ends(
    tenant, api: Api, bedrock: LocalBedrockServer, launch_worker, proxy: TcpProxy
) -> None:
    """Retries used up while the database is away: the failure cannot be stored either.
    The answer must not stay `running` (holding its reservation) for good; at the latest
    the periodic expiry (run here at once, age 0) must end it."""
    bedrock.configure(seconds_per_token=0.005, answer_tokens=ANSWER_TOKENS)
    proxy.cut_when(usage_insert, seconds=OUTAGE_SECONDS)
    worker = launch_worker(
        DATABASE_URL=database_url_through(proxy),
        GENERATION_MAX_RETRIES="2",
        GENERATION_RETRY_BACKOFF_SECONDS="0.05",
        GENERATION_RETRY_BACKOFF_MAX_SECONDS="0.1",
    )
    [turn] = send_turns(api, 1, label="Longer")
    wait_for(proxy.tripped.is_set, timeout=30)

    def settled_down() -> bool:
        status = Message.objects.get(pk=turn.answer_id).status
        # Today the task gives up (its last words fail too) well within the outage.
        gave_up = "raised unexpected" in worker.log() and not proxy.is_refusing()
        return status in FINAL_STATUSES or gave_up

    wait_for(settled_down, timeout=30, interval=0.2)
    stale_generations_expire(older_than_seconds=0)
    answer = Message.objects.get(pk=turn.answer_id)
    assert answer.status in FINAL_STATUSES, (
        f"the answer is left {answer.status!r} with its reservation "
        f"{Reservation.objects.get(message_id=turn.answer_id).status!r}"
    )
    books = assert_books_balance()
    assert books[answer.status] == 1
