"""Fault injection with real processes: workers started and killed per test, a tiny TCP
proxy to cut the database away from a worker, and the one invariant every scenario ends
with, `assert_books_balance`: nothing lost, nothing charged twice."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.db.models import Sum

from billing.limits import budget_create
from billing.models import (
    Budget,
    BudgetPeriod,
    ManagedBy,
    Reservation,
    ReservationStatus,
    UsageRecord,
)
from billing.pricing import token_cost
from billing.services import budget_state
from conversations.context import context_build
from conversations.models import Message, MessageRole, MessageStatus, Tenant
from models_catalog.bedrock.local_server import LocalBedrockServer, expected_generation
from tests.e2e import conftest as e2e
from tests.e2e.books import FINAL_STATUSES, budget_ledger_scope
from tests.e2e.conftest import (
    BEDROCK_SEED,
    LLAMA3,
    STARTUP_TIMEOUT_SECONDS,
    Api,
    ManagedProcess,
    process_environment,
    start_process,
    wait_for,
)

# The end-to-end fixtures, for this folder too (only the root conftest may list plugins).
web_server = e2e.web_server
api = e2e.api
bedrock = e2e.bedrock

# Fast retries, so a fault costs a test seconds rather than the production backoff.
WORKER_ENVIRONMENT = {
    "GENERATION_RETRY_BACKOFF_SECONDS": "0.05",
    "GENERATION_RETRY_BACKOFF_MAX_SECONDS": "0.2",
    "GENERATION_MAX_RETRIES": "8",
    # A killed worker's lease lapses in seconds, so its answer is taken over quickly.
    "GENERATION_LEASE_SECONDS": "2",
    "GENERATION_LEASE_RENEW_SECONDS": "0.4",
    # One stream entry per token: the fault points below are counted in stream entries.
    "ANSWER_STREAM_COALESCE_SECONDS": "0",
}


def is_postgresql() -> bool:
    return connection.vendor == "postgresql"


# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------


@pytest.fixture
def launch_worker(bedrock: LocalBedrockServer) -> Iterator[Callable[..., ManagedProcess]]:
    """Start Celery workers; unlike tests/e2e's `start_worker`, a worker started to replace
    a dead one must not purge the queue (the tasks it is meant to take up are there)."""
    workers: list[ManagedProcess] = []

    def launch(*, concurrency: int = 1, purge: bool = True, **extra: str) -> ManagedProcess:
        environment = process_environment(
            **{**WORKER_ENVIRONMENT, "BEDROCK_ENDPOINT_URL": bedrock.url, **extra}
        )
        command = [
            sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO",
            f"--concurrency={concurrency}", "--pool=prefork", "--without-gossip",
            "--without-mingle", "--without-heartbeat", f"--hostname=faults{len(workers)}@%h",
        ]  # fmt: skip
        if purge:
            command.append("--purge")
        worker = start_process(command, environment, "fault-worker")
        workers.append(worker)

        def ready() -> bool:
            if worker.process.poll() is not None:
                pytest.fail(f"worker exited:\n{worker.log()}")
            return " ready." in worker.log()

        wait_for(ready, timeout=STARTUP_TIMEOUT_SECONDS)
        return worker

    yield launch
    for worker in workers:
        worker.stop()


def start_web_server(**environment: str) -> tuple[ManagedProcess, str]:
    """An extra uvicorn, for a test that points it at other services than the session's."""
    from config.embedded import free_port

    port = free_port()
    server = start_process(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(port),
         "--no-access-log"],
        process_environment(**environment),
        "fault-web",
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        import requests

        if server.process.poll() is not None:
            pytest.fail(f"web server exited:\n{server.log()}")
        try:
            return requests.get(f"{base_url}/healthz", timeout=5).status_code == 200
        except requests.RequestException:  # not listening yet, or still importing
            return False

    wait_for(healthy, timeout=STARTUP_TIMEOUT_SECONDS)
    return server, base_url


# ---------------------------------------------------------------------------------------
# A tenant with budgets, and turns
# ---------------------------------------------------------------------------------------


@pytest.fixture
def tenant(api: Api) -> Tenant:
    """The `api` fixture's tenant, with a tenant-wide monthly hard budget (the invariant's
    ledger check needs one) and a model-scoped lifetime soft budget."""
    tenant = Tenant.objects.get(slug="e2e")
    budget_create(
        tenant=tenant,
        period=BudgetPeriod.MONTH,
        limit=Decimal("50"),
        managed_by=ManagedBy.OPERATOR,
        name="monthly",
    )
    budget_create(
        tenant=tenant,
        period=BudgetPeriod.TOTAL,
        limit=Decimal("100"),
        managed_by=ManagedBy.OPERATOR,
        name="llama lifetime",
        is_hard=False,
        model=LLAMA3,
    )
    return tenant


@dataclass(frozen=True)
class Turn:
    conversation_id: str
    user_id: str
    answer_id: str


def send_turns(api: Api, count: int, *, label: str, **fields: Any) -> list[Turn]:
    turns = []
    for index in range(count):
        conversation_id = api.new_conversation()
        response = api.send(conversation_id, f"{label} question number {index}", **fields)
        assert response.status_code == 202, response.text
        body = response.json()
        turns.append(
            Turn(conversation_id, body["user_message"]["id"], body["assistant_message"]["id"])
        )
    return turns


def expected_text(answer_id: str, *, answer_tokens: int | None = None) -> str:
    """What the local server answers for this answer's prompt (the prompt as the worker
    builds it: the history through the user turn)."""
    answer = Message.objects.select_related("conversation__model").get(pk=answer_id)
    context = context_build(
        conversation=answer.conversation,
        max_gen_len=answer.max_gen_len,
        through_sequence=answer.sequence - 1,
    )
    return expected_generation(
        context.prompt, answer.max_gen_len, BEDROCK_SEED, answer_tokens=answer_tokens
    )


def wait_all_final(answer_ids: list[str], *, timeout: float) -> list[Message]:
    def final() -> list[Message] | None:
        answers = list(Message.objects.filter(pk__in=answer_ids))
        return answers if all(a.status in FINAL_STATUSES for a in answers) else None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers = final()
        if answers is not None:
            return answers
        time.sleep(0.1)
    states = dict(Message.objects.filter(pk__in=answer_ids).values_list("pk", "status"))
    pytest.fail(f"answers not final after {timeout} s: {states}")


def assert_completed_exactly(answer_ids: list[str], *, answer_tokens: int | None) -> None:
    for answer in Message.objects.filter(pk__in=answer_ids):
        assert answer.status == MessageStatus.COMPLETED, (answer.pk, answer.error_code)
        assert answer.content == expected_text(str(answer.pk), answer_tokens=answer_tokens)


# ---------------------------------------------------------------------------------------
# The invariant
# ---------------------------------------------------------------------------------------


def assert_books_balance() -> dict[str, int]:
    """Nothing lost, nothing charged twice, across everything in the test database:

    - every user message is followed (sequence + 1) by exactly one assistant message, in a
      final state, and every assistant message answers a user message;
    - a completed answer, and a cancelled one that was charged, has exactly one usage
      record, at Bedrock's counts and the reservation's prices; failed and uncharged
      answers have none, and no usage record belongs to anything else;
    - no reservation is open; settled ones have their record, released ones none;
    - for every budget that is not per end user, the spend `budget_state` reports equals
      the sum of the ledger in its scope for the current period, and nothing is held.

    Returns counts (answers by status, records, budgets checked) for the caller to assert on.
    """
    problems: list[str] = []
    messages = list(Message.objects.order_by("conversation_id", "sequence"))
    by_position: dict[tuple[Any, int], list[Message]] = defaultdict(list)
    for message in messages:
        by_position[(message.conversation_id, message.sequence)].append(message)
    answers = [m for m in messages if m.role == MessageRole.ASSISTANT]
    for message in messages:
        if message.role == MessageRole.USER:
            following = by_position[(message.conversation_id, message.sequence + 1)]
            if [m.role for m in following] != [MessageRole.ASSISTANT]:
                problems.append(f"user message {message.pk} is followed by {following}")
            elif following[0].status not in FINAL_STATUSES:
                problems.append(f"answer {following[0].pk} is still {following[0].status}")
        elif message.role == MessageRole.ASSISTANT:
            before = by_position[(message.conversation_id, message.sequence - 1)]
            if [m.role for m in before] != [MessageRole.USER]:
                problems.append(f"answer {message.pk} does not follow one user message")

    records_per_message = Counter(UsageRecord.objects.values_list("message_id", flat=True))
    records = {r.message_id: r for r in UsageRecord.objects.all()}
    reservations = {r.message_id: r for r in Reservation.objects.all()}
    for answer in answers:
        count = records_per_message[answer.pk]
        reservation = reservations.get(answer.pk)
        reservation_status = reservation.status if reservation else None
        charged = answer.status == MessageStatus.COMPLETED or (
            answer.status == MessageStatus.CANCELLED
            and reservation_status == ReservationStatus.SETTLED
        )
        if charged:
            if count != 1:
                problems.append(f"{answer.status} answer {answer.pk} has {count} usage records")
            if reservation_status != ReservationStatus.SETTLED:
                problems.append(f"charged answer {answer.pk}: reservation {reservation_status}")
        else:
            if count:
                problems.append(f"{answer.status} answer {answer.pk} has {count} usage records")
            if reservation is not None and reservation_status != ReservationStatus.RELEASED:
                problems.append(f"uncharged answer {answer.pk}: reservation {reservation_status}")
        record = records.get(answer.pk)
        if record is not None and reservation is not None:
            cost = token_cost(
                input_tokens=record.input_tokens,
                output_tokens=record.output_tokens,
                input_price=reservation.input_price_per_million,
                output_price=reservation.output_price_per_million,
            )
            if record.cost != cost:
                problems.append(f"answer {answer.pk}: charged {record.cost}, tokens cost {cost}")
        if record is not None and reservation is not None and answer.prompt_token_count is not None:
            # Bedrock's counts, capped at the reservation: the most a tenant can be charged.
            counts = (
                min(answer.prompt_token_count, reservation.prompt_tokens),
                min(answer.generation_token_count or 0, reservation.max_gen_len),
            )
            if (record.input_tokens, record.output_tokens) != counts:
                problems.append(f"answer {answer.pk}: ledger tokens differ from Bedrock's")
    answer_ids = {answer.pk for answer in answers}
    for message_id in set(records_per_message) - answer_ids:
        problems.append(f"usage record for {message_id}, which is no answer")
    for reservation in Reservation.objects.filter(status=ReservationStatus.OPEN):
        problems.append(f"reservation of {reservation.message_id} is still open")

    budgets = list(Budget.objects.filter(per_end_user=False).select_related("tenant"))
    for budget in budgets:
        state = budget_state(budget, time_zone=budget.tenant.time_zone)
        ledger = UsageRecord.objects.filter(
            budget_ledger_scope(budget), created_at__gte=state.period_start
        ).aggregate(total=Sum("cost"))["total"] or Decimal(0)
        if state.spent != ledger:
            problems.append(f"budget {budget.name!r}: spent {state.spent}, ledger {ledger}")
        if state.reserved:
            problems.append(f"budget {budget.name!r}: {state.reserved} still reserved")

    assert not problems, "books do not balance:\n" + "\n".join(problems)
    summary = Counter(str(answer.status) for answer in answers)
    return {
        **summary,
        "usage_records": len(records),
        "budgets": len(budgets),
        "tenant_wide_budgets": sum(
            1 for b in budgets if b.end_user_id is None and b.model_id is None
        ),
    }


# ---------------------------------------------------------------------------------------
# A TCP proxy that can cut the database away
# ---------------------------------------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target, until told to fail.

    `outage(seconds)` closes every open connection and refuses new ones (accepted, then
    closed at once, as a server that is going down does) for that long. `cut_when` arms a
    trip wire on client-to-server bytes: the first packet that matches starts an outage
    *instead of* reaching the server; `cut_after_reply_to` lets a matching packet through,
    waits for the server's reply (so the server has acted on it) and then starts an
    outage without passing the reply on: the client cannot know whether it happened.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.refuse_until = 0.0
        self.closed = False
        self.sockets: set[socket.socket] = set()
        self.trip_before: Callable[[bytes], bool] | None = None
        self.trip_after_reply: Callable[[bytes], bool] | None = None
        self.outage_seconds = 0.0
        self.tripped = threading.Event()
        self.outage_started_at: float | None = None
        self.outage_ended_at: float | None = None
        self.refused = 0
        threading.Thread(target=self._accept_loop, daemon=True, name="tcp-proxy").start()

    # -- control ---------------------------------------------------------------------

    def outage(self, seconds: float) -> None:
        with self.lock:
            now = time.monotonic()
            self.refuse_until = now + seconds
            self.outage_started_at, self.outage_ended_at = now, now + seconds
            victims = list(self.sockets)
            self.sockets.clear()
        for victim in victims:
            self._close(victim)

    def cut_when(self, matches: Callable[[bytes], bool], *, seconds: float) -> None:
        self.trip_before, self.outage_seconds = matches, seconds

    def cut_after_reply_to(self, matches: Callable[[bytes], bool], *, seconds: float) -> None:
        self.trip_after_reply, self.outage_seconds = matches, seconds

    def is_refusing(self) -> bool:
        return time.monotonic() < self.refuse_until

    def close(self) -> None:
        self.closed = True
        self._close(self.listener)
        self.outage(0)

    # -- plumbing ----------------------------------------------------------------------

    @staticmethod
    def _close(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()

    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.is_refusing():
                self.refused += 1
                self._close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                self._close(client)
                continue
            with self.lock:
                self.sockets.update((client, upstream))
            pair = {"await_reply": False}
            threading.Thread(
                target=self._pump, args=(client, upstream, pair, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, pair, False), daemon=True
            ).start()

    def _trip(self) -> None:
        self.trip_before = self.trip_after_reply = None
        self.tripped.set()
        self.outage(self.outage_seconds)

    def _pump(
        self, source: socket.socket, sink: socket.socket, pair: dict, to_server: bool
    ) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if to_server and self.trip_before is not None and self.trip_before(data):
                    self._trip()
                    break
                if to_server and self.trip_after_reply is not None and self.trip_after_reply(data):
                    pair["await_reply"] = True
                elif not to_server and pair["await_reply"]:
                    self._trip()  # the server answered; the client never hears it
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with self.lock:
                    self.sockets.discard(sock)
                self._close(sock)


def database_url_through(proxy: TcpProxy) -> str:
    database = connection.settings_dict
    user = database.get("USER") or "postgres"
    password = f":{database['PASSWORD']}" if database.get("PASSWORD") else ""
    return f"postgres://{user}{password}@127.0.0.1:{proxy.port}/{database['NAME']}"
