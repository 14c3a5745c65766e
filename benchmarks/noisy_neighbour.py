"""The noisy-neighbour scenario of benchmarks/load.py (``--scenario noisy-neighbour``).

Tenant B chats steadily (``--neighbour-users`` simulated users, as load.py's users: create a
conversation, POST a turn, follow its answer over SSE, GET the conversation's history,
think ``--think-time`` seconds) while tenant A floods: ``--flood-clients`` clients, each in
its own conversation, POST turns with no think time (``--flood-mode sync``: each POST waits
for its answer, then the next is sent at once; ``async``: POST, follow the answer over SSE,
POST again). A's clients run in a process of their own, so their threads never take the GIL
from B's clients while B's times are taken. Three phases, each ``--phase-duration`` seconds
of B's turns:

1. B alone: the quiet baseline;
2. B while A floods, A without any quota;
3. B while A floods, A under an operator quota of ``--flood-quota-rpm`` requests a minute
   (``manage.py set_quota``, as an operator would). A 429 is retried at once unless
   ``--flood-honour-retry-after``: a neighbour that floods does not read Retry-After.

A starts ``--flood-ramp`` seconds before B's phase (so its backlog is there when B starts)
and stops when B's phase ends; its answers then drain before the next phase starts.

Queue wait is measured as: B's client sends the POST -> the local Bedrock server receives
the answer's request (both wall clocks of this machine). The worker claims the answer
(queued -> running, a conditional UPDATE) just before that call, so this is the time to
"running" plus a few milliseconds (reading the frozen call, opening the stream), and it
includes the POST itself (its row is in the table). It needs no polling, which would add
load and blur the figure by the poll interval.

A monitor thread samples once a second, outside the clients: answers queued and running per
tenant (from the database; a cheap count on the partial index of unfinished answers), the
length of A's and B's Redis queues, and the messages the worker holds unacknowledged (kombu's
``unacked`` hash: prefetched and running tasks, and countdowns of retries).
The worker's log gives the answer tasks that ended in each phase by outcome: ``deferred``
counts the times a task found its tenant at GENERATION_TENANT_MAX_RUNNING (the answer then
waits in the database until one of its tenant's answers ends and wakes it). The report
ends with the ratio of B's TTFT p50 during each flood to its quiet value, against the aim
(at most 2, and no error for B).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import random
import re
import resource
import shlex
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from benchmarks.generation import (
    ANSWER_TIMEOUT_SECONDS,
    HTTP_TIMEOUT_SECONDS,
    MARKER,
    MODEL_ID,
    AnswerTiming,
    Backend,
    BedrockReport,
    Client,
    Component,
    _is_postgres,
    celery_worker,
    manage,
    percentile,
    run_level,
    start_backend,
)
from benchmarks.load import (
    PROBLEM_LINES_SHOWN,
    ChatUser,
    PhaseUsage,
    Probes,
    Request,
    _create_conversation,
    _http_failure,
    cpu_probes,
    error_kind,
    measured,
    table,
)
from devtools.local_bedrock import StreamStart

# A sync POST waits up to GENERATION_SYNC_WAIT_SECONDS (60) for its answer: longer than that.
FLOOD_HTTP_TIMEOUT_SECONDS = 90.0
FLOOD_READY_TIMEOUT_SECONDS = 120.0
# A flood client stops after its request in flight: a sync one may wait for its answer.
FLOOD_STOP_TIMEOUT_SECONDS = FLOOD_HTTP_TIMEOUT_SECONDS + ANSWER_TIMEOUT_SECONDS + 10
DRAIN_TIMEOUT_SECONDS = 120.0
MONITOR_INTERVAL_SECONDS = 1.0
FLOOD_MARKER_PREFIX = "flood-"
AIM_TTFT_RATIO = 2.0
# Celery's INFO line for a finished task ends with its return value: the answer's outcome.
TASK_OUTCOME = re.compile(r"generate_answer\[[^\]]+\] succeeded in [0-9.e-]+s: '(\w+)'")


# ---------------------------------------------------------------------------------------
# Tenant A's flood, in a process of its own
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FloodSettings:
    base_url: str
    api_key: str
    clients: int
    mode: str
    """sync: POST with mode sync (answers when done); async: POST, then follow the SSE."""
    honour_retry_after: bool


@dataclass(frozen=True)
class FloodRequest:
    started_at: float
    seconds: float
    outcome: str
    """'201', '202', '429 quota_exceeded', 'ReadTimeout', ... (status and error code)."""


@dataclass(frozen=True)
class FloodReport:
    requests: list[FloodRequest]
    conversations_failed: list[str]
    cpu_seconds: float
    """CPU the flood process used while flooding (its client threads)."""
    stuck_clients: int


def _retry_after(response: requests.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


def _flood_turn(
    client: Client, conversation: str, settings: FloodSettings
) -> tuple[str, float, float, float | None]:
    """One POST of a turn (and, in async mode or after a sync 202, its answer followed to
    the end, so the next POST is not a 409). Returns the outcome, the POST's start and
    duration, and how long to wait before the next one (Retry-After, when honoured)."""
    marker = f"{FLOOD_MARKER_PREFIX}{uuid.uuid4().hex}"
    body: dict[str, Any] = {"content": f"Flood {marker}: what do llamas eat?"}
    if settings.mode == "sync":
        body["mode"] = "sync"
    started_at, started = time.time(), time.perf_counter()
    try:
        response = client.session.post(
            f"{client.base_url}/api/v1/conversations/{conversation}/messages",
            json=body,
            timeout=(HTTP_TIMEOUT_SECONDS, FLOOD_HTTP_TIMEOUT_SECONDS),
        )
    except requests.RequestException as error:
        return type(error).__name__, started_at, time.perf_counter() - started, None
    seconds = time.perf_counter() - started
    if response.status_code == 202:
        # Accepted, answer not done (async, or a sync wait that timed out): follow it, as a
        # client that wants its answers does; the record is the POST's.
        client._follow(response.json()["stream_url"], marker, started_at)
    outcome = _http_failure(response) if response.status_code >= 300 else str(response.status_code)
    wait = None
    if response.status_code == 429 and settings.honour_retry_after:
        wait = _retry_after(response)
    return outcome, started_at, seconds, wait


def _flood_client(
    settings: FloodSettings,
    conversation: str,
    go: threading.Event,
    stop: threading.Event,
    sink: list[FloodRequest],
) -> None:
    client = Client(settings.base_url, settings.api_key)
    try:
        go.wait()
        while not stop.is_set():
            outcome, started_at, seconds, wait = _flood_turn(client, conversation, settings)
            sink.append(FloodRequest(started_at, seconds, outcome))
            if wait is not None and stop.wait(wait):
                return
    finally:
        client.session.close()


def _flood_process(connection: Connection, settings: FloodSettings) -> None:
    """Child process: create the conversations, flood on "go" until "stop", report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the benchmark stops this process itself
    conversations, failed = [], []
    creator = Client(settings.base_url, settings.api_key)
    for _ in range(settings.clients):
        try:
            conversations.append(creator.new_conversation())
        except (RuntimeError, requests.RequestException) as error:
            failed.append(str(error)[:200])
    creator.session.close()
    go, stop = threading.Event(), threading.Event()
    sinks: list[list[FloodRequest]] = [[] for _ in conversations]
    threads = [
        threading.Thread(
            target=_flood_client, args=(settings, conversation, go, stop, sink), daemon=True
        )
        for conversation, sink in zip(conversations, sinks, strict=True)
    ]
    for thread in threads:
        thread.start()
    try:
        connection.send("ready")
        if connection.recv() != "go":
            return
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        go.set()
        connection.recv()  # "stop"
        stop.set()
        give_up_at = time.monotonic() + FLOOD_STOP_TIMEOUT_SECONDS
        for thread in threads:
            thread.join(timeout=max(0.0, give_up_at - time.monotonic()))
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (
            cpu_after.ru_stime - cpu_before.ru_stime
        )
        # list.append is atomic; a stuck thread's later requests are simply not reported.
        requests_made = [request for sink in sinks for request in list(sink)]
        stuck = sum(thread.is_alive() for thread in threads)
        connection.send(FloodReport(requests_made, failed, cpu, stuck))
    except EOFError:
        stop.set()  # the benchmark is gone


class Flood:
    """Tenant A's flood clients in their own process: start(), go(), then stop()."""

    def __init__(self, settings: FloodSettings) -> None:
        # spawn, not fork: a clean interpreter, not a copy of this one's client threads.
        context = multiprocessing.get_context("spawn")
        self._connection, child_end = context.Pipe()
        self._process = context.Process(
            target=_flood_process, args=(child_end, settings), name="flood", daemon=True
        )

    def start(self) -> Flood:
        self._process.start()
        if not self._connection.poll(FLOOD_READY_TIMEOUT_SECONDS):
            raise RuntimeError("the flood clients did not get ready")
        self._connection.recv()
        return self

    def go(self) -> None:
        self._connection.send("go")

    def stop(self) -> FloodReport:
        self._connection.send("stop")
        if not self._connection.poll(FLOOD_STOP_TIMEOUT_SECONDS + 10):
            raise RuntimeError("the flood clients did not stop")
        report: FloodReport = self._connection.recv()
        self._process.join(timeout=10)
        return report

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


# ---------------------------------------------------------------------------------------
# Tenant B's chat users
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NeighbourSettings:
    users: int
    phase_duration: float
    think_min: float
    think_max: float
    turns_per_conversation: int
    seed: int
    flood_clients: int
    flood_mode: str
    flood_ramp: float
    quota_rpm: int
    honour_retry_after: bool


@dataclass
class NeighbourUser(ChatUser):
    """A chat user who also reloads the conversation's history after each answer."""

    history_gets: list[Request] = field(default_factory=list)


def _get_history(client: Client, conversation: str, record: NeighbourUser) -> None:
    started_at, started = time.time(), time.perf_counter()
    try:
        response = client.session.get(
            f"{client.base_url}/api/v1/conversations/{conversation}/messages",
            timeout=HTTP_TIMEOUT_SECONDS,
        )
    except requests.RequestException as error:
        seconds = time.perf_counter() - started
        record.history_gets.append(Request(started_at, seconds, type(error).__name__))
        return
    seconds = time.perf_counter() - started
    failure = None if 200 <= response.status_code < 300 else _http_failure(response)
    record.history_gets.append(Request(started_at, seconds, failure))


def neighbour_user(
    backend: Backend,
    settings: NeighbourSettings,
    index: int,
    deadline: float,
    stop: threading.Event,
    record: NeighbourUser,
) -> None:
    random_numbers = random.Random(settings.seed * 1_000_003 + index)
    client = Client(backend.base_url, backend.api_key)
    try:
        if stop.wait(random_numbers.uniform(0, settings.think_max)):
            return
        conversation: str | None = None
        turns_in_conversation = 0
        while not stop.is_set() and time.time() < deadline:
            if conversation is None or turns_in_conversation >= settings.turns_per_conversation:
                conversation = _create_conversation(client, record)
                turns_in_conversation = 0
            if conversation is not None:
                turn = client.ask(conversation)
                record.turns.append(turn)
                turns_in_conversation += 1
                if turn.failure is None:
                    _get_history(client, conversation, record)
                else:
                    conversation = None  # its answer may still be pending: a new turn is 409
            if stop.wait(random_numbers.uniform(settings.think_min, settings.think_max)):
                return
    finally:
        client.session.close()


def run_neighbours(
    backend: Backend, settings: NeighbourSettings, stop: threading.Event
) -> tuple[list[NeighbourUser], int, float, float]:
    """B's users for one phase: their records, how many got stuck, the phase's start and
    its deadline (no turn is sent after it; turns in flight finish)."""
    records = [NeighbourUser() for _ in range(settings.users)]
    started = time.time()
    deadline = started + settings.phase_duration
    threads = [
        threading.Thread(
            target=neighbour_user,
            args=(backend, settings, index, deadline, stop, record),
            name=f"neighbour-{index}",
            daemon=True,
        )
        for index, record in enumerate(records)
    ]
    for thread in threads:
        thread.start()
    give_up_at = time.monotonic() + settings.phase_duration + FLOOD_STOP_TIMEOUT_SECONDS
    for thread in threads:
        thread.join(timeout=max(0.0, give_up_at - time.monotonic()))
    return records, sum(thread.is_alive() for thread in threads), started, deadline


# ---------------------------------------------------------------------------------------
# The monitor: queue and running counts, sampled outside the clients
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float
    running: dict[int, int]
    queued: dict[int, int]
    queue_lengths: dict[int, int]
    """Redis list length of each watched tenant's queue."""
    unacked: int | None


def _database_connection(url: str) -> Any:
    if _is_postgres(url):
        import psycopg

        return psycopg.connect(url, autocommit=True)
    # django-environ's spelling: sqlite:///relative or sqlite:////absolute.
    return sqlite3.connect(urlsplit(url).path[1:], timeout=5, isolation_level=None)


def tenant_id_of(database_url: str, slug: str) -> int:
    query = (
        "SELECT id FROM conversations_tenant WHERE slug = %s"
        if _is_postgres(database_url)
        else "SELECT id FROM conversations_tenant WHERE slug = ?"
    )
    connection = _database_connection(database_url)
    try:
        row = connection.execute(query, (slug,)).fetchone()
    finally:
        connection.close()
    if row is None:
        raise RuntimeError(f"no tenant {slug}")
    return int(row[0])


def unfinished_answers(database_url: str) -> dict[tuple[int, str], int]:
    connection = _database_connection(database_url)
    try:
        return _unfinished(connection)
    finally:
        connection.close()


def _unfinished(connection: Any) -> dict[tuple[int, str], int]:
    rows = connection.execute(
        "SELECT tenant_id, status, COUNT(*) FROM conversations_message "
        "WHERE status IN ('queued', 'running') GROUP BY tenant_id, status"
    ).fetchall()
    return {(int(tenant), str(status)): int(count) for tenant, status, count in rows}


class Monitor:
    """Samples, once a second, what is queued and running for each tenant watched."""

    def __init__(self, environment: dict[str, str], queues: dict[int, str]) -> None:
        self.database_url = environment["DATABASE_URL"]
        self.redis_url = environment["REDIS_URL"]
        self.queues = queues
        self.samples: list[Sample] = []
        self.errors: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        import redis

        connection = _database_connection(self.database_url)
        broker = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            while not self._stop.wait(MONITOR_INTERVAL_SECONDS):
                try:
                    self.samples.append(self._sample(connection, broker))
                except Exception as error:  # a busy database: skip one sample, say so
                    self.errors[type(error).__name__] += 1
        finally:
            connection.close()
            broker.close()

    def _sample(self, connection: Any, broker: Any) -> Sample:
        at = time.time()
        counts = _unfinished(connection)
        running = {tenant: counts.get((tenant, "running"), 0) for tenant in self.queues}
        queued = {tenant: counts.get((tenant, "queued"), 0) for tenant in self.queues}
        lengths = {tenant: int(broker.llen(queue)) for tenant, queue in self.queues.items()}
        # kombu's Redis transport keeps every delivered, unacknowledged message here.
        unacked = int(broker.hlen("unacked"))
        return Sample(at, running, queued, lengths, unacked)

    def between(self, start: float, end: float) -> list[Sample]:
        return [sample for sample in self.samples if start <= sample.at <= end]


# ---------------------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseResult:
    name: str
    users: list[NeighbourUser]
    stuck_users: int
    started: float
    deadline: float
    bedrock: BedrockReport
    usage: PhaseUsage
    samples: list[Sample]
    flood: FloodReport | None = None
    flood_window: tuple[float, float] | None = None
    drain_seconds: float | None = None
    quota: str = ""
    task_outcomes: Counter[str] = field(default_factory=Counter)
    """generate_answer tasks that ended during the phase, by outcome (from the worker log):
    completed, deferred (its tenant had its share running), held, skipped ..."""

    @property
    def turns(self) -> list[AnswerTiming]:
        return [turn for user in self.users for turn in user.turns]

    @property
    def completed(self) -> list[AnswerTiming]:
        return [turn for turn in self.turns if turn.failure is None]

    def stream_starts(self) -> dict[str, StreamStart]:
        """B's turn marker -> its Bedrock stream (A's prompts carry no such marker)."""
        found: dict[str, StreamStart] = {}
        for start in self.bedrock.starts:
            markers = MARKER.findall(start.prompt_tail)
            if markers:
                found.setdefault(markers[-1], start)
        return found

    def flood_streams(self) -> int:
        return sum(FLOOD_MARKER_PREFIX in start.prompt_tail for start in self.bedrock.starts)


def _wait_for_drain(database_url: str, tenant_id: int) -> float:
    """Wait until the tenant has nothing queued or running; return how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < DRAIN_TIMEOUT_SECONDS:
        counts = unfinished_answers(database_url)
        if not any(count for (tenant, _), count in counts.items() if tenant == tenant_id):
            break
        time.sleep(0.5)
    return time.monotonic() - started


def run_phase(
    name: str,
    backend: Backend,
    settings: NeighbourSettings,
    stop: threading.Event,
    probes: Probes,
    monitor: Monitor,
    flood_settings: FloodSettings | None,
    flood_tenant_id: int | None,
    worker_log: Callable[[], str],
    quota: str = "",
) -> PhaseResult:
    backend.bedrock.report()  # forget what came before
    log_offset = len(worker_log())
    flood = None
    if flood_settings is not None:
        print(f"  {name}: {flood_settings.clients} flood clients get ready ...", file=sys.stderr)
        flood = Flood(flood_settings).start()
    usage: list[PhaseUsage] = []
    flood_report, flood_window, drain = None, None, None
    try:
        with measured(probes, usage):
            flood_started = time.time()
            if flood is not None:
                flood.go()
                stop.wait(settings.flood_ramp)
            print(f"  {name}: B for {settings.phase_duration:g} s ...", file=sys.stderr)
            users, stuck, started, deadline = run_neighbours(backend, settings, stop)
            if flood is not None:
                flood_report = flood.stop()
                flood_window = (flood_started, time.time())
    finally:
        if flood is not None:
            flood.kill()
    if flood_tenant_id is not None:
        drain = _wait_for_drain(backend.environment["DATABASE_URL"], flood_tenant_id)
    return PhaseResult(
        name=name,
        users=users,
        stuck_users=stuck,
        started=started,
        deadline=deadline,
        bedrock=backend.bedrock.report(),
        usage=usage[0],
        samples=monitor.between(started, deadline),
        flood=flood_report,
        flood_window=flood_window,
        drain_seconds=drain,
        quota=quota,
        task_outcomes=Counter(TASK_OUTCOME.findall(worker_log()[log_offset:])),
    )


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def _p50_p95(values: Sequence[float]) -> str:
    ordered = sorted(values)
    p50, p95 = percentile(ordered, 50), percentile(ordered, 95)
    if p50 is None or p95 is None:
        return "-"
    return f"{p50 * 1000:.0f} / {p95 * 1000:.0f}"


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass(frozen=True)
class BFigures:
    ttft: list[float]
    queue_wait: list[float]
    posts: list[float]
    history: list[float]
    end_to_end: list[float]
    errors: Counter[str]
    attempts: int


def b_figures(phase: PhaseResult) -> BFigures:
    starts = phase.stream_starts()
    completed = phase.completed
    errors: Counter[str] = Counter()
    attempts = 0
    for turn in phase.turns:
        attempts += 1
        if turn.failure is not None:
            errors[f"turn: {error_kind(turn.failure)}"] += 1
    for user in phase.users:
        for request in user.conversations:
            attempts += 1
            if request.failure is not None:
                errors[f"POST /conversations: {request.failure}"] += 1
        for request in user.history_gets:
            attempts += 1
            if request.failure is not None:
                errors[f"GET /messages: {request.failure}"] += 1
    return BFigures(
        ttft=[t.first_delta_at - t.posted_at for t in completed if t.first_delta_at is not None],
        queue_wait=[
            starts[t.marker].received_at - t.posted_at for t in phase.turns if t.marker in starts
        ],
        posts=[t.accepted_at - t.posted_at for t in phase.turns if t.accepted_at is not None],
        history=[r.seconds for u in phase.users for r in u.history_gets if r.failure is None],
        end_to_end=[t.finished_at - t.posted_at for t in completed],
        errors=errors,
        attempts=attempts,
    )


def _flood_outcomes(report: FloodReport | None) -> str:
    if report is None:
        return "-"
    counts = Counter(request.outcome for request in report.requests)
    return ", ".join(f"{outcome}: {count}" for outcome, count in counts.most_common())


def _flood_rate(phase: PhaseResult) -> str:
    if phase.flood is None or phase.flood_window is None:
        return "-"
    seconds = phase.flood_window[1] - phase.flood_window[0]
    return f"{len(phase.flood.requests)} ({len(phase.flood.requests) / seconds:.1f}/s)"


def _flood_latency(report: FloodReport | None, accepted: bool) -> str:
    if report is None:
        return "-"
    seconds = [
        r.seconds for r in report.requests if r.outcome.startswith("2" if accepted else "429")
    ]
    return _p50_p95(seconds) if seconds else "-"


def _sampled(phase: PhaseResult, value: Callable[[Sample], int | None]) -> str:
    values = [v for sample in phase.samples if (v := value(sample)) is not None]
    if not values:
        return "-"
    return f"{statistics.mean(values):.1f} / {max(values)}"


def _cpu(phase: PhaseResult, name: str) -> str:
    seconds = phase.usage.cpu.get(name)
    if seconds is None or phase.usage.seconds <= 0:
        return "-"
    return f"{seconds / phase.usage.seconds * 100:.0f}"


def report_rows(
    phases: Sequence[PhaseResult], tenant_a: int, tenant_b: int
) -> tuple[list[str], list[list[str]]]:
    figures = [b_figures(phase) for phase in phases]
    headers = ["", *(phase.name for phase in phases)]

    def row(label: str, cell: Callable[[PhaseResult, BFigures], str]) -> list[str]:
        return [label, *(cell(phase, f) for phase, f in zip(phases, figures, strict=True))]

    def flood_cpu(phase: PhaseResult, _: BFigures) -> str:
        if phase.flood is None or phase.usage.seconds <= 0:
            return "-"
        return f"{phase.flood.cpu_seconds / phase.usage.seconds * 100:.0f}"

    rows = [
        row("B turns completed / sent", lambda p, f: f"{len(p.completed)} / {len(p.turns)}"),
        row("B POST /messages p50 / p95 ms", lambda p, f: _p50_p95(f.posts)),
        row("B GET /conversations/{id}/messages p50 / p95 ms", lambda p, f: _p50_p95(f.history)),
        row("B TTFT (POST -> 1st SSE delta) p50 / p95 ms", lambda p, f: _p50_p95(f.ttft)),
        row("B queue wait (POST -> Bedrock request) p50 / p95 ms",
            lambda p, f: _p50_p95(f.queue_wait)),
        row("B answer end to end p50 / p95 ms", lambda p, f: _p50_p95(f.end_to_end)),
        row("B errors / requests",
            lambda p, f: f"{sum(f.errors.values())} / {f.attempts}"),
        row("A quota", lambda p, f: p.quota or "-"),
        row("A requests (rate)", lambda p, f: _flood_rate(p)),
        row("A requests by status", lambda p, f: _flood_outcomes(p.flood)),
        row("A accepted POST p50 / p95 ms (sync: until done)",
            lambda p, f: _flood_latency(p.flood, accepted=True)),
        row("A 429 p50 / p95 ms", lambda p, f: _flood_latency(p.flood, accepted=False)),
        row("A answers sent to Bedrock", lambda p, f: str(p.flood_streams()) if p.flood else "-"),
        row("A running (sampled) mean / max",
            lambda p, f: _sampled(p, lambda s: s.running.get(tenant_a))),
        row("A queued (sampled) mean / max",
            lambda p, f: _sampled(p, lambda s: s.queued.get(tenant_a))),
        row("A's Redis queue length mean / max",
            lambda p, f: _sampled(p, lambda s: s.queue_lengths.get(tenant_a))),
        row("B running / queued max",
            lambda p, f: f"{max((s.running.get(tenant_b, 0) for s in p.samples), default=0)}"
            f" / {max((s.queued.get(tenant_b, 0) for s in p.samples), default=0)}"),
        row("running answers, both tenants, max",
            lambda p, f: str(max((sum(s.running.values()) for s in p.samples), default=0))),
        row("worker's unacked messages mean / max", lambda p, f: _sampled(p, lambda s: s.unacked)),
        row("CPU % of one core: web / worker", lambda p, f: f"{_cpu(p, 'web')} / "
            f"{_cpu(p, 'worker')}"),
        row("CPU %: B clients / A clients / machine (of 200)",
            lambda p, f: f"{_cpu(p, 'clients')} / {flood_cpu(p, f)} / "
            + (f"{p.usage.machine_busy / p.usage.seconds * 100:.0f}"
               if p.usage.machine_busy is not None and p.usage.seconds > 0 else "-")),
        row("worker: answer tasks by outcome",
            lambda p, f: ", ".join(f"{k} {v}" for k, v in p.task_outcomes.most_common()) or "-"),
        row("A drain after the phase s",
            lambda p, f: f"{p.drain_seconds:.1f}" if p.drain_seconds is not None else "-"),
    ]  # fmt: skip
    return headers, rows


def _ratio(phase: PhaseResult, quiet: PhaseResult) -> float | None:
    during, alone = _median(b_figures(phase).ttft), _median(b_figures(quiet).ttft)
    if during is None or alone is None or alone <= 0:
        return None
    return during / alone


def print_neighbour_report(
    arguments: argparse.Namespace,
    settings: NeighbourSettings,
    backend: Backend,
    phases: Sequence[PhaseResult],
    tenants: tuple[int, int],
    worker_line: str,
    monitor: Monitor,
    load_averages: tuple[float, float],
    argv: Sequence[str],
) -> None:
    tenant_a, tenant_b = tenants
    shards = int(backend.environment.get("GENERATION_QUEUE_SHARDS", "16"))
    print(f"$ {shlex.join(['.venv/bin/python', 'benchmarks/load.py', *argv])}")
    print(
        f"Machine: {os.cpu_count()} CPUs ({platform.machine()}, Python "
        f"{platform.python_version()}), shared by every process below and by whatever else "
        f"runs; load average {load_averages[0]:.2f} at start, {load_averages[1]:.2f} at end.\n"
        f"Stack: {backend.description}; uvicorn (1 process); ONE Celery worker process "
        f"(--pool={arguments.worker_pool} --concurrency={arguments.worker_concurrency}; its "
        f"banner: {worker_line or '?'}); local Bedrock server: TTFT "
        f"{arguments.time_to_first_token:g} s, {arguments.seconds_per_token:g} s/token, "
        f"answers of {arguments.answer_tokens} tokens; {MODEL_ID}.\n"
        f"B (tenant {tenant_b}, queue generation.{tenant_b % shards}): {settings.users} users, "
        f"think {settings.think_min:g}-{settings.think_max:g} s, a new conversation every "
        f"{settings.turns_per_conversation} turns, {settings.phase_duration:g} s a phase.\n"
        f"A (tenant {tenant_a}, queue generation.{tenant_a % shards}): {settings.flood_clients} "
        f"clients, each in its own conversation, no think time, mode {settings.flood_mode}, "
        f"starting {settings.flood_ramp:g} s before B's phase; on 429: "
        f"{'waits Retry-After' if settings.honour_retry_after else 'retries at once'}."
    )
    headers, rows = report_rows(phases, tenant_a, tenant_b)
    print(table(headers, rows))
    print(
        "queue wait: B's POST sent -> the local Bedrock server receives the answer's call (the "
        "claim to running is just before it; includes the POST). Sampled rows: once a second "
        "during B's phase, from the database (running, queued) and Redis (queue length, "
        "unacked: prefetched and running tasks, and retry countdowns, the worker holds). "
        "A's requests: "
        "from its first POST to its stop (ramp included). CPU: during the whole phase."
    )
    quiet = phases[0]
    ratios = []
    for phase in phases[1:]:
        ratio = _ratio(phase, quiet)
        ratios.append((phase, ratio))
    met = all(ratio is not None and ratio <= AIM_TTFT_RATIO for _, ratio in ratios)
    errors = sum(sum(b_figures(phase).errors.values()) for phase in phases)
    print(
        "Ratio, B's TTFT p50 during A's flood / quiet: "
        + "; ".join(
            f"{phase.name}: {'-' if ratio is None else f'{ratio:.2f}'}" for phase, ratio in ratios
        )
        + f". Aim: <= {AIM_TTFT_RATIO:g} and B errors 0: "
        + ("met." if met and errors == 0 else f"NOT met (B errors {errors}).")
    )
    for phase in phases:
        breakdown = b_figures(phase).errors
        if breakdown:
            print(f"B errors, {phase.name}:")
            for kind, count in breakdown.most_common(PROBLEM_LINES_SHOWN):
                print(f"  {count} x {kind}")
        notes = []
        if phase.stuck_users:
            notes.append(f"{phase.stuck_users} B users stuck")
        if phase.flood is not None:
            if phase.flood.stuck_clients:
                notes.append(f"{phase.flood.stuck_clients} flood clients did not stop")
            if phase.flood.conversations_failed:
                notes.append(
                    f"{len(phase.flood.conversations_failed)} flood conversations not created: "
                    f"{phase.flood.conversations_failed[0]}"
                )
        if phase.bedrock.failed or phase.bedrock.aborted:
            notes.append(
                f"Bedrock streams failed {phase.bedrock.failed}, aborted {phase.bedrock.aborted}"
            )
        if notes:
            print(f"{phase.name}: " + "; ".join(notes))
    if monitor.errors:
        print(f"Monitor samples skipped: {dict(monitor.errors)}")
    found = log_problems(backend)
    print(f"Log problems: {sum(found.values()) or 'none'}")
    for line, count in found.most_common(PROBLEM_LINES_SHOWN):
        print(f"  {count} x {line}")


def log_problems(backend: Backend) -> Counter[str]:
    """ERROR and CRITICAL lines of the web and worker logs, by process, logger, message and
    the exception's last line (JSON log lines; other lines as generation.problems finds
    them)."""
    found: Counter[str] = Counter()
    for managed in [backend.web, *backend.workers]:
        for line in managed.log().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                if "Traceback" in line or "ERROR" in line or "CRITICAL" in line:
                    found[f"{managed.name} log: {line.strip()[:200]}"] += 1
                continue
            if record.get("level") not in ("ERROR", "CRITICAL"):
                continue
            exception = str(record.get("exception") or "").strip().splitlines()
            cause = f" <- {exception[-1][:200]}" if exception else ""
            found[f"{managed.name} log: {record.get('logger')}: "
                  f"{str(record.get('message'))[:120]}{cause}"] += 1  # fmt: skip
    return found


# ---------------------------------------------------------------------------------------
# The scenario
# ---------------------------------------------------------------------------------------


def _worker_banner_line(log: str) -> str:
    for line in log.splitlines():
        if "concurrency:" in line:
            return line.split("concurrency:", 1)[1].strip()
    return ""


def _tenant_with_key(environment: dict[str, str], prefix: str) -> tuple[str, str]:
    slug = f"{prefix}-{uuid.uuid4().hex[:8]}"
    manage(environment, "create_tenant", slug)
    key = manage(environment, "create_api_key", slug).strip().splitlines()[-1]
    return slug, key


def run_noisy_neighbour(arguments: argparse.Namespace, argv: Sequence[str]) -> int:
    settings = NeighbourSettings(
        users=arguments.neighbour_users,
        phase_duration=arguments.phase_duration,
        think_min=arguments.think_time[0],
        think_max=arguments.think_time[1],
        turns_per_conversation=arguments.turns_per_conversation,
        seed=arguments.seed,
        flood_clients=arguments.flood_clients,
        flood_mode=arguments.flood_mode,
        flood_ramp=arguments.flood_ramp,
        quota_rpm=arguments.flood_quota_rpm,
        honour_retry_after=arguments.flood_honour_retry_after,
    )
    stop = threading.Event()
    load_at_start = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-nn-")))
        print("Starting the backend ...", file=sys.stderr)
        backend = start_backend(
            stack,
            arguments,
            directory,
            time_to_first_token_seconds=arguments.time_to_first_token,
            seconds_per_token=arguments.seconds_per_token,
        )
        environment = backend.environment
        slug_a, key_a = _tenant_with_key(environment, "flood")
        slug_b = requests.get(
            f"{backend.base_url}/api/v1/tenant",
            headers={"Authorization": f"Bearer {backend.api_key}"},
            timeout=HTTP_TIMEOUT_SECONDS,
        ).json()["slug"]
        database_url = environment["DATABASE_URL"]
        tenant_a, tenant_b = tenant_id_of(database_url, slug_a), tenant_id_of(database_url, slug_b)
        shards = int(environment.get("GENERATION_QUEUE_SHARDS", "16"))
        worker = stack.enter_context(
            celery_worker(backend, arguments.worker_concurrency, pool=arguments.worker_pool)
        )
        stack.callback(stop.set)
        worker_line = _worker_banner_line(worker.log())
        components = [*backend.components, Component("worker", worker.process.pid, True)]
        probes = cpu_probes(components, environment)
        concurrency = arguments.worker_concurrency
        print(f"Warm-up: {2 * concurrency} answers from {concurrency} clients ...", file=sys.stderr)
        run_level(backend, clients=concurrency, answers=2 * concurrency)
        queues = {tenant_a: f"generation.{tenant_a % shards}",
                  tenant_b: f"generation.{tenant_b % shards}"}  # fmt: skip
        flood = FloodSettings(
            backend.base_url,
            key_a,
            settings.flood_clients,
            settings.flood_mode,
            settings.honour_retry_after,
        )
        monitor = stack.enter_context(Monitor(environment, queues))
        phases = []
        print("Phase 1: B alone ...", file=sys.stderr)
        phases.append(
            run_phase("B alone", backend, settings, stop, probes, monitor, None, None, worker.log)
        )
        print("Phase 2: B while A floods, no quota ...", file=sys.stderr)
        phases.append(
            run_phase(
                "B + A's flood",
                backend,
                settings,
                stop,
                probes,
                monitor,
                flood,
                tenant_a,
                worker.log,
                "none",
            )
        )
        quota = manage(
            environment, "set_quota", "--tenant", slug_a, "--rpm", str(settings.quota_rpm)
        ).strip()
        print(f"Phase 3: B while A floods, {quota}", file=sys.stderr)
        phases.append(
            run_phase(
                f"B + A's flood, A {settings.quota_rpm} rpm",
                backend,
                settings,
                stop,
                probes,
                monitor,
                flood,
                tenant_a,
                worker.log,
                f"{settings.quota_rpm} requests/min",
            )
        )
        print_neighbour_report(
            arguments,
            settings,
            backend,
            phases,
            (tenant_a, tenant_b),
            worker_line,
            monitor,
            (load_at_start, os.getloadavg()[0]),
            argv,
        )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--scenario noisy-neighbour")
    group.add_argument("--neighbour-users", type=int, default=4, help="tenant B's users (4)")
    group.add_argument(
        "--phase-duration", type=float, default=45.0, help="seconds of B's turns a phase (45)"
    )
    group.add_argument("--flood-clients", type=int, default=60, help="tenant A's clients (60)")
    group.add_argument("--flood-mode", choices=["sync", "async"], default="sync")
    group.add_argument(
        "--flood-ramp", type=float, default=5.0, help="seconds A floods before B's phase (5)"
    )
    group.add_argument("--flood-quota-rpm", type=int, default=60, help="A's quota, phase 3 (60)")
    group.add_argument(
        "--flood-honour-retry-after", action="store_true",
        help="A waits Retry-After after a 429 (default: retries at once, as a flood does)",
    )  # fmt: skip
