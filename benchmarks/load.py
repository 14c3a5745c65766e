"""Load test of the whole stack on this machine: simulated chat users, then the ceiling.

Starts what benchmarks/generation.py starts (its pieces are reused): a throwaway database
(SQLite, or the PostgreSQL database of ``--database-url``), Redis (an embedded redis-server,
or ``--redis-url``), the local Bedrock-compatible server in its own process, with realistic
latency (``--time-to-first-token`` 0.3 s, ``--seconds-per-token`` 0.02 s: 50 tokens/s;
answers of ``--answer-tokens`` 100 tokens), ONE Celery worker process and uvicorn (one
process). Then, in this order:

1. warm-up (not measured): every worker slot answers at least once;
2. chat load: ``--users`` simulated users (threads, each with its own HTTP session) for
   ``--duration`` seconds. A user creates a conversation, then loops: POST a turn, follow
   its answer over Server-Sent Events to ``done``, think ``--think-time`` seconds (uniform);
   every ``--turns-per-conversation`` turns, and after a failed turn, it starts a new
   conversation. Users start spread over the first think time; no turn starts after the
   duration, the ones in flight finish;
3. ceiling: as many clients (``--ceiling-clients``) with no think time hammer a trivial
   authenticated DRF endpoint (``GET /api/v1/tenant``) for ``--ceiling-duration`` seconds,
   then the plain Django ``/healthz`` for ``--healthz-duration`` seconds: what this machine
   serves at most, for comparison with the chat figures of the same run.

It prints one table: turns (messages created) and answers completed per second, p50/p95/p99
latency of ``POST /conversations/{id}/messages``, the time to first token the backend adds
(the local server sends its first chunk -> the client parses the first SSE ``delta``),
end-to-end TTFT (POST -> first delta), the error rate (non-2xx, timeouts, SSE ``error``
events, failed or cut answers) with a breakdown, and the ceiling's requests per second and
latency. A second table gives the CPU each process used in each phase (Linux): web, worker,
Redis and PostgreSQL (when they run on this machine), the local Bedrock server and this
process (the clients, so a saturated client is seen rather than mistaken for the server's
limit), the whole machine's (other work on a shared machine shows there), and CPU
milliseconds per operation, which stay steady when rates do not.

    .venv/bin/python benchmarks/load.py
    .venv/bin/python benchmarks/load.py --users 50 --duration 120
    .venv/bin/python benchmarks/load.py \\
        --database-url postgres://postgres@127.0.0.1:5432/bench_load \\
        --redis-url redis://127.0.0.1:6379/3

The worker runs the ``threads`` pool by default, one thread per user: an answer spends
nearly all its time waiting on Bedrock's stream, so one process holds every answer in flight
for the memory of one, while each prefork child is a whole interpreter with Django and the
tokenizer (measured on 20 users: 16 prefork children 2.6 GB RSS, 20 threads 0.25-0.35 GB,
the same latencies, and less CPU per answer). The GIL is not the limit at 50 tokens/s per
answer: the worker used under half a core for 50 users. ``--worker-pool prefork`` runs the
run command's pool instead (then at most 16 children by default; 8 for 20 users already
queues answers). Defaults take about two minutes. Every process started here is stopped at
the end, also on Ctrl-C or SIGTERM.

``--scenario noisy-neighbour`` measures something else (benchmarks/noisy_neighbour.py):
tenant B's few chat users, alone, then while tenant A floods (60 clients, no think time)
without a quota, then with an operator quota of 60 requests a minute; B's GET latency, time
to first token, queue wait and errors per phase, and A's requests by status. Its worker is
the run command's (``--pool=threads --concurrency=16``). About four minutes.

    .venv/bin/python benchmarks/load.py --scenario noisy-neighbour
    .venv/bin/python benchmarks/load.py --scenario noisy-neighbour \\
        --database-url postgres://postgres@127.0.0.1:5432/bench_noisy \\
        --redis-url redis://127.0.0.1:6379/9
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import random
import re
import shlex
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.generation import (
    ANSWER_TIMEOUT_SECONDS,
    HTTP_TIMEOUT_SECONDS,
    MARKER,
    MODEL_ID,
    NATURAL_LENGTH_MAX,
    NATURAL_LENGTH_MIN,
    AnswerTiming,
    Backend,
    BedrockReport,
    Client,
    Component,
    _interrupt,
    _is_postgres,
    celery_worker,
    cpu_seconds,
    format_table,
    percentile,
    problems,
    run_level,
    start_backend,
)
from devtools.local_bedrock import StreamStart
from devtools.processes import descendants, stat_fields

PROBLEM_LINES_SHOWN = 10
CEILING_WARMUP_REQUESTS = 5
# A user thread that is still busy this long after the duration is reported as stuck.
DRAIN_SECONDS = HTTP_TIMEOUT_SECONDS + ANSWER_TIMEOUT_SECONDS + 10
CPU_COMPONENTS = ("web", "worker", "Redis", "PostgreSQL", "Bedrock", "clients")
PER_OPERATION = ("web", "worker", "PostgreSQL")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One plain request (conversation creation, or the ceiling's)."""

    started_at: float
    seconds: float
    failure: str | None = None
    """None for a 2xx answer; otherwise the error kind, for the breakdown."""


@dataclass
class ChatUser:
    """What one simulated user did."""

    turns: list[AnswerTiming] = field(default_factory=list)
    conversations: list[Request] = field(default_factory=list)


@dataclass(frozen=True)
class PhaseUsage:
    """Wall time and CPU seconds of one phase: by component, and the whole machine's."""

    seconds: float
    cpu: dict[str, float]
    machine_busy: float | None
    """CPU seconds all processes of the machine used (every core), None without /proc."""


@dataclass(frozen=True)
class ChatResult:
    users: list[ChatUser]
    bedrock: BedrockReport
    usage: PhaseUsage
    stuck_users: int
    deadline: float
    """No turn was sent after this time.time()."""

    @property
    def turns(self) -> list[AnswerTiming]:
        return [turn for user in self.users for turn in user.turns]

    @property
    def conversations(self) -> list[Request]:
        return [request for user in self.users for request in user.conversations]

    @property
    def completed(self) -> list[AnswerTiming]:
        return [turn for turn in self.turns if turn.failure is None]

    @property
    def window(self) -> float:
        """First POST of a turn -> the end of the duration, when the last turns were sent.

        Rates are turns sent in this window over its length: in a closed loop that is the
        steady rate, without the tail of answers finishing after it.
        """
        turns = self.turns
        if not turns:
            return 0.0
        return self.deadline - min(t.posted_at for t in turns)

    @property
    def elapsed(self) -> float:
        """First POST of a turn -> last answer's end (or last failure)."""
        turns = self.turns
        if not turns:
            return 0.0
        return max(t.finished_at for t in turns) - min(t.posted_at for t in turns)

    def stream_starts(self) -> dict[str, StreamStart]:
        found: dict[str, StreamStart] = {}
        for start in self.bedrock.starts:
            # The prompt holds the whole history: the newest turn's marker is the last one.
            markers = MARKER.findall(start.prompt_tail)
            if markers:
                found.setdefault(markers[-1], start)
        return found


@dataclass(frozen=True)
class CeilingResult:
    path: str
    clients: int
    requests: list[Request]
    usage: PhaseUsage

    @property
    def succeeded(self) -> list[Request]:
        return [request for request in self.requests if request.failure is None]

    @property
    def elapsed(self) -> float:
        if not self.requests:
            return 0.0
        return max(r.started_at + r.seconds for r in self.requests) - min(
            r.started_at for r in self.requests
        )


def _machine_busy_seconds() -> float | None:
    """CPU seconds every process of the machine has used since boot (all cores)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(value) for value in fields]
    # user nice system idle iowait irq softirq steal (guest is counted in user already)
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def resident_megabytes(pid: int) -> tuple[float, int] | None:
    """Resident memory of a process and its descendants (a worker's pool), and how many."""
    if not Path("/proc").is_dir():
        return None
    total_kilobytes, processes = 0, 0
    for member in [pid, *descendants(pid)]:
        try:
            status = (Path("/proc") / str(member) / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kilobytes += int(line.split()[1])
                processes += 1
    return (total_kilobytes / 1024, processes) if processes else None


Probes = dict[str, Callable[[], float]]
"""Name of a process (or server) -> the CPU seconds it has used so far."""


def _server_cpu_seconds(pid: int) -> float:
    """A server's CPU including its exited children (PostgreSQL forks a backend for each
    connection and reaps it: its time lands in the postmaster's cutime and cstime)."""
    fields = stat_fields(pid)
    if fields is None:
        return 0.0
    # utime, stime, cutime, cstime: fields 14-17 of proc(5), 12th-15th after the ")".
    own = sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child, with_descendants=False) for child in descendants(pid))


def cpu_probes(components: Sequence[Component], environment: dict[str, str]) -> Probes:
    """Our processes, and the PostgreSQL and Redis servers when they run on this machine
    (a shared server's other work counts there too)."""
    if not Path("/proc").is_dir():
        return {}
    probes: Probes = {
        component.name: functools.partial(
            cpu_seconds, component.pid, with_descendants=component.with_descendants
        )
        for component in components
    }
    database_url, redis_url = environment["DATABASE_URL"], environment["REDIS_URL"]
    if "Redis" not in probes and urlsplit(redis_url).hostname in LOOPBACK:
        with contextlib.suppress(Exception):
            import redis

            pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
            if "redis" in _command_name(pid):
                probes["Redis"] = functools.partial(cpu_seconds, pid, with_descendants=False)
    if _is_postgres(database_url) and urlsplit(database_url).hostname in LOOPBACK:
        with contextlib.suppress(Exception):
            import psycopg

            with psycopg.connect(database_url) as connection:
                row = connection.execute("SELECT pg_backend_pid()").fetchone()
            backend_fields = stat_fields(int(row[0])) if row else None
            postmaster = int(backend_fields[1]) if backend_fields else 0
            if "postgres" in _command_name(postmaster):
                probes["PostgreSQL"] = functools.partial(_server_cpu_seconds, postmaster)
    return probes


def _command_name(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "comm").read_text()
    except OSError:
        return ""


def _snapshot(probes: Probes) -> dict[str, float]:
    return {name: probe() for name, probe in probes.items()}


@contextlib.contextmanager
def measured(probes: Probes, sink: list[PhaseUsage]) -> Iterator[None]:
    cpu_before, machine_before = _snapshot(probes), _machine_busy_seconds()
    started = time.monotonic()
    try:
        yield
    finally:
        seconds = time.monotonic() - started
        cpu_after, machine_after = _snapshot(probes), _machine_busy_seconds()
        machine = (
            machine_after - machine_before
            if machine_before is not None and machine_after is not None
            else None
        )
        cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_after if name in cpu_before}
        sink.append(PhaseUsage(seconds, cpu, machine))


# ---------------------------------------------------------------------------------------
# Error kinds (from the failure texts benchmarks/generation.Client writes)
# ---------------------------------------------------------------------------------------

_KINDS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"^POST message answered (\d+): (.*)$", re.S),
     lambda m: f"POST /messages {m[1]}{_error_code(m[2])}"),
    (re.compile(r"^POST message: (\w+)"), lambda m: f"POST /messages {m[1]}"),
    (re.compile(r"^GET stream answered (\d+): (.*)$", re.S),
     lambda m: f"SSE GET {m[1]}{_error_code(m[2])}"),
    (re.compile(r"^stream: (\w+)"), lambda m: f"SSE {m[1]} (stuck or cut answer)"),
    (re.compile(r"^stream ended before done"), lambda m: "SSE ended before done"),
    (re.compile(r"^answer failed: (\S+)"), lambda m: f"SSE error event: {m[1]}"),
    (re.compile(r"^answer (\w+): (\S+)"), lambda m: f"answer {m[1]}: {m[2]}"),
]  # fmt: skip


def _error_code(body: str) -> str:
    try:
        return f" {json.loads(body)['error']['code']}"
    except (ValueError, KeyError, TypeError):
        return ""


def error_kind(failure: str) -> str:
    for pattern, name in _KINDS:
        if match := pattern.match(failure):
            return name(match)
    return failure[:80]


def _http_failure(response: requests.Response) -> str:
    return f"{response.status_code}{_error_code(response.text)}"


# ---------------------------------------------------------------------------------------
# Phase 2: chat users
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatSettings:
    users: int
    duration: float
    think_min: float
    think_max: float
    turns_per_conversation: int
    seed: int


def _create_conversation(client: Client, record: ChatUser) -> str | None:
    started_at, started = time.time(), time.perf_counter()
    try:
        response = client.session.post(
            f"{client.base_url}/api/v1/conversations",
            json={"model": MODEL_ID},
            timeout=HTTP_TIMEOUT_SECONDS,
        )
    except requests.RequestException as error:
        seconds = time.perf_counter() - started
        record.conversations.append(Request(started_at, seconds, type(error).__name__))
        return None
    seconds = time.perf_counter() - started
    if response.status_code != 201:
        record.conversations.append(Request(started_at, seconds, _http_failure(response)))
        return None
    record.conversations.append(Request(started_at, seconds))
    return str(response.json()["id"])


def chat_user(
    backend: Backend,
    settings: ChatSettings,
    index: int,
    deadline: float,
    stop: threading.Event,
    record: ChatUser,
) -> None:
    random_numbers = random.Random(settings.seed * 1_000_003 + index)
    client = Client(backend.base_url, backend.api_key)
    try:
        # Users arrive spread over one think time rather than all in the same instant.
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
                if turn.failure is not None:
                    # The answer may still be pending: a new turn there would only get 409.
                    conversation = None
            if stop.wait(random_numbers.uniform(settings.think_min, settings.think_max)):
                return
    finally:
        client.session.close()


def run_chat(
    backend: Backend, settings: ChatSettings, stop: threading.Event
) -> tuple[list[ChatUser], int, float]:
    records = [ChatUser() for _ in range(settings.users)]
    deadline = time.time() + settings.duration
    # Daemon threads: on Ctrl-C nothing waits for a user blocked on a stream; stopping the
    # web server afterwards ends its connection anyway.
    threads = [
        threading.Thread(
            target=chat_user,
            args=(backend, settings, index, deadline, stop, record),
            name=f"user-{index}",
            daemon=True,
        )
        for index, record in enumerate(records)
    ]
    for thread in threads:
        thread.start()
    give_up_at = time.monotonic() + settings.duration + DRAIN_SECONDS
    for thread in threads:
        thread.join(timeout=max(0.0, give_up_at - time.monotonic()))
    # Reported, and left to end on their own (they are daemons): `stop` is for Ctrl-C.
    stuck = sum(thread.is_alive() for thread in threads)
    return records, stuck, deadline


# ---------------------------------------------------------------------------------------
# Phase 3: the ceiling
# ---------------------------------------------------------------------------------------


def _hammer(
    url: str,
    api_key: str | None,
    barrier: threading.Barrier,
    duration: float,
    stop: threading.Event,
    sink: list[Request],
) -> None:
    session = requests.Session()
    if api_key is not None:
        session.headers["Authorization"] = f"Bearer {api_key}"
    try:
        # Open the connection (and warm this path) before the clock starts.
        for _ in range(CEILING_WARMUP_REQUESTS):
            with contextlib.suppress(requests.RequestException):
                session.get(url, timeout=HTTP_TIMEOUT_SECONDS)
        barrier.wait()
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline and not stop.is_set():
            started_at, started = time.time(), time.perf_counter()
            try:
                response = session.get(url, timeout=HTTP_TIMEOUT_SECONDS)
            except requests.RequestException as error:
                seconds = time.perf_counter() - started
                sink.append(Request(started_at, seconds, type(error).__name__))
                continue
            seconds = time.perf_counter() - started
            failure = None if 200 <= response.status_code < 300 else _http_failure(response)
            sink.append(Request(started_at, seconds, failure))
    except threading.BrokenBarrierError:
        pass
    finally:
        session.close()


def run_ceiling(
    backend: Backend,
    path: str,
    clients: int,
    duration: float,
    authenticated: bool,
    stop: threading.Event,
    probes: Probes,
) -> CeilingResult:
    sinks: list[list[Request]] = [[] for _ in range(clients)]
    # One more party: the CPU measurement starts when every client is ready.
    barrier = threading.Barrier(clients + 1)
    threads = [
        threading.Thread(
            target=_hammer,
            args=(
                backend.base_url + path,
                backend.api_key if authenticated else None,
                barrier,
                duration,
                stop,
                sink,
            ),
            name=f"ceiling-{index}",
            daemon=True,
        )
        for index, sink in enumerate(sinks)
    ]
    for thread in threads:
        thread.start()
    usage: list[PhaseUsage] = []
    try:
        barrier.wait(timeout=HTTP_TIMEOUT_SECONDS * CEILING_WARMUP_REQUESTS)
    except threading.BrokenBarrierError as error:
        raise RuntimeError(f"the {path} clients did not get ready") from error
    with measured(probes, usage):
        for thread in threads:
            thread.join(timeout=duration + HTTP_TIMEOUT_SECONDS + 5)
    return CeilingResult(path, clients, [r for sink in sinks for r in sink], usage[0])


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: list[list[str]]) -> str:
    """Like generation.format_table, with the first column (the labels) aligned left."""
    lines = format_table(headers, rows).splitlines()
    width = max(len(row[0]) for row in [list(headers), *rows])
    cells = [list(headers), ["-" * width], *rows]
    return "\n".join(
        cell[0].ljust(width) + line[width:] for cell, line in zip(cells, lines, strict=True)
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _percentiles(values: Sequence[float]) -> list[str]:
    return [_ms(percentile(sorted(values), p)) for p in (50, 95, 99)]


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:.2f}" if seconds > 0 else "-"


def _share(failed: int, total: int) -> str:
    return f"{failed}/{total} ({failed / total * 100:.1f}%)" if total else "-"


def chat_rows(chat: ChatResult) -> list[list[str]]:
    turns, completed, window = chat.turns, chat.completed, chat.window
    # Answers done from the first one to the end of the duration, over that time: the rate
    # turns come in when the backend keeps up, its service rate when it does not (the tail
    # of a queue after the duration is not counted).
    done_in_window = [t for t in completed if t.finished_at <= chat.deadline]
    answers_window = chat.deadline - min((t.finished_at for t in completed), default=0.0)
    starts = chat.stream_starts()
    accepted = [t for t in turns if t.accepted_at is not None]
    post_latency = [t.accepted_at - t.posted_at for t in accepted if t.accepted_at is not None]
    with_delta = [t for t in completed if t.first_delta_at is not None]
    ttft = [t.first_delta_at - t.posted_at for t in with_delta if t.first_delta_at is not None]
    added = [
        t.first_delta_at - starts[t.marker].first_chunk_at
        for t in with_delta
        if t.first_delta_at is not None and t.marker in starts
    ]
    to_bedrock = [
        starts[t.marker].received_at - t.posted_at for t in completed if t.marker in starts
    ]
    end_to_end = [t.finished_at - t.posted_at for t in completed]
    conversations = chat.conversations
    created = [r.seconds for r in conversations if r.failure is None]
    failed_turns = len(turns) - len(completed)
    failed_posts = len(turns) - len(accepted)
    users = str(len(chat.users))
    return [
        ["chat: POST /conversations/{id}/messages", users, str(len(accepted)),
         _rate(len(accepted), window), *_percentiles(post_latency),
         _share(failed_posts, len(turns))],
        ["chat: answers (POST -> SSE done)", users, str(len(completed)),
         _rate(len(done_in_window), answers_window), *_percentiles(end_to_end),
         _share(failed_turns, len(turns))],
        ["chat: TTFT end to end (POST -> 1st delta)", users, str(len(ttft)), "",
         *_percentiles(ttft), ""],
        ["chat: TTFT added by backend (Bedrock 1st chunk -> 1st delta)", users,
         str(len(added)), "", *_percentiles(added), ""],
        ["chat: POST -> Bedrock request (web, queue, worker)", users, str(len(to_bedrock)), "",
         *_percentiles(to_bedrock), ""],
        ["chat: POST /conversations", users, str(len(created)),
         _rate(len(created), window), *_percentiles(created),
         _share(len(conversations) - len(created), len(conversations))],
    ]  # fmt: skip


def ceiling_row(result: CeilingResult, label: str) -> list[str]:
    succeeded = result.succeeded
    return [
        label,
        str(result.clients),
        str(len(succeeded)),
        _rate(len(succeeded), result.elapsed),
        *_percentiles([r.seconds for r in succeeded]),
        _share(len(result.requests) - len(succeeded), len(result.requests)),
    ]


HEADERS = ["what", "clients", "count", "per second", "p50 ms", "p95 ms", "p99 ms", "errors"]


def cpu_row(
    label: str, usage: PhaseUsage, operations: int, names: Sequence[str], per_op: Sequence[str]
) -> list[str]:
    def percent(seconds: float | None) -> str:
        if seconds is None or usage.seconds <= 0:
            return "-"
        return f"{seconds / usage.seconds * 100:.0f}"

    def per_operation(name: str) -> str:
        seconds = usage.cpu.get(name)
        if seconds is None or not operations:
            return "-"
        return f"{seconds / operations * 1000:.1f}"

    ours = sum(usage.cpu.values())
    others = usage.machine_busy - ours if usage.machine_busy is not None else None
    return [
        label,
        f"{usage.seconds:.0f}",
        *(percent(usage.cpu.get(name)) for name in names),
        percent(usage.machine_busy),
        percent(max(0.0, others) if others is not None else None),
        str(operations),
        *(per_operation(name) for name in per_op),
    ]


def error_breakdown(chat: ChatResult, ceilings: Sequence[CeilingResult]) -> list[str]:
    kinds: Counter[str] = Counter()
    for turn in chat.turns:
        if turn.failure is not None:
            kinds[f"chat turn: {error_kind(turn.failure)}"] += 1
    for request in chat.conversations:
        if request.failure is not None:
            kinds[f"chat POST /conversations: {request.failure}"] += 1
    for ceiling in ceilings:
        for request in ceiling.requests:
            if request.failure is not None:
                kinds[f"ceiling {ceiling.path}: {request.failure}"] += 1
    return [f"{count} x {kind}" for kind, count in kinds.most_common()]


def chat_notes(
    chat: ChatResult, settings: ChatSettings, arguments: argparse.Namespace
) -> list[str]:
    notes = []
    completed = chat.completed
    tokens = [t.generation_tokens for t in completed if t.generation_tokens is not None]
    if tokens and chat.window > 0:
        mean_tokens = statistics.mean(tokens)
        # A closed loop: each user waits for its answer, then thinks. With a backend that
        # added nothing, a turn would take the think time plus Bedrock's own time.
        bedrock_seconds = (
            arguments.time_to_first_token + (mean_tokens - 1) * arguments.seconds_per_token
        )
        mean_think = (settings.think_min + settings.think_max) / 2
        median_turn = statistics.median(t.finished_at - t.posted_at for t in completed)
        ideal = settings.users / (mean_think + bedrock_seconds)
        notes.append(
            f"Answers: mean {mean_tokens:.1f} tokens, {sum(tokens) / chat.elapsed:.0f} tokens/s "
            f"streamed in all. Bedrock's own time per answer: {bedrock_seconds:.2f} s; median "
            f"turn {median_turn:.2f} s, so the backend adds {median_turn - bedrock_seconds:.2f} "
            f"s. A backend adding nothing would give {ideal:.2f} "
            f"turns/s ({settings.users} users / ({mean_think:g} s mean think + "
            f"{bedrock_seconds:.2f} s)); sent {len(chat.turns) / chat.window:.2f} over the "
            f"{chat.window:.1f} s window (first POST -> end of the duration; the last answers "
            f"ended {max(0.0, chat.elapsed - chat.window):.1f} s after it)."
        )
    resets = sum(t.resets for t in chat.turns)
    if resets:
        notes.append(f"{resets} answer restart(s) (Bedrock error retried by the worker).")
    starts = chat.stream_starts()
    missing = [t for t in completed if t.marker not in starts]
    if missing:
        notes.append(f"{len(missing)} completed answers without a Bedrock stream start.")
    if chat.bedrock.failed or chat.bedrock.aborted:
        notes.append(
            f"Bedrock streams failed {chat.bedrock.failed}, aborted {chat.bedrock.aborted} "
            f"(aborted: the worker stopped reading)."
        )
    if chat.stuck_users:
        notes.append(f"{chat.stuck_users} users still busy {DRAIN_SECONDS} s after the end.")
    return notes


def print_report(
    arguments: argparse.Namespace,
    settings: ChatSettings,
    backend: Backend,
    chat: ChatResult,
    ceilings: Sequence[CeilingResult],
    load_averages: tuple[float, float],
    argv: Sequence[str],
    worker_memory: tuple[float, int] | None,
) -> None:
    answers = (
        f"{arguments.answer_tokens} tokens"
        if arguments.answer_tokens is not None
        else f"natural length {NATURAL_LENGTH_MIN}-{NATURAL_LENGTH_MAX} tokens"
    )
    print(f"$ {shlex.join(['.venv/bin/python', 'benchmarks/load.py', *argv])}")
    print(
        f"Machine: {os.cpu_count()} CPUs ({platform.machine()}, Python "
        f"{platform.python_version()}), shared by every process below and by whatever else "
        f"runs; load average {load_averages[0]:.2f} at start, {load_averages[1]:.2f} at end.\n"
        f"Stack: {backend.description}; uvicorn (1 process); ONE Celery worker process, "
        f"--pool={arguments.worker_pool} --concurrency={arguments.worker_concurrency}; local "
        f"Bedrock server (own process): TTFT {arguments.time_to_first_token:g} s, "
        f"{arguments.seconds_per_token:g} s/token, answers of {answers}; {MODEL_ID}.\n"
        f"Chat: {settings.users} users for {settings.duration:g} s, think "
        f"{settings.think_min:g}-{settings.think_max:g} s, a new conversation every "
        f"{settings.turns_per_conversation} turns. Ceiling: "
        + ", ".join(f"{c.path} {c.clients} clients {c.usage.seconds:.0f} s" for c in ceilings)
        + ", no think time."
    )
    rows = chat_rows(chat)
    labels = {"/api/v1/tenant": "ceiling: GET /api/v1/tenant (DRF, key auth)",
              "/healthz": "ceiling: GET /healthz (plain Django view)"}  # fmt: skip
    rows += [ceiling_row(ceiling, labels.get(ceiling.path, ceiling.path)) for ceiling in ceilings]
    print(table(HEADERS, rows))
    print(
        "per second: turns sent from the first POST to the end of --duration, answers done "
        "from the first done to the end of --duration, or the ceiling phase. "
        "errors: failed / attempted (a failed turn: non-2xx POST, SSE error event, timeout, "
        "stream cut, answer not completed)."
    )
    for note in chat_notes(chat, settings, arguments):
        print(note)
    breakdown = error_breakdown(chat, ceilings)
    print(f"Errors: {'none' if not breakdown else ''}")
    for line in breakdown[:PROBLEM_LINES_SHOWN]:
        print(f"  {line}")
    if chat.usage.cpu:
        print("\nCPU by process, % of one core, per phase (machine: all processes, of "
              f"{(os.cpu_count() or 1) * 100}%; other: the machine minus the processes "
              "listed, e.g. other people's work; a Redis or PostgreSQL server of this machine "
              "is counted whole, with whatever else it serves):")  # fmt: skip
        measured_names = {name for usage in [chat.usage, *(c.usage for c in ceilings)]
                          for name in usage.cpu}  # fmt: skip
        names = [name for name in CPU_COMPONENTS if name in measured_names]
        per_op = [name for name in PER_OPERATION if name in measured_names]
        headers = [
            "phase", "seconds", *names, "machine", "other",
            "operations", *(f"{name} ms/op" for name in per_op),
        ]  # fmt: skip
        cpu_rows = [cpu_row("chat (op: a turn)", chat.usage, len(chat.completed), names, per_op)]
        cpu_rows += [
            cpu_row(f"ceiling {c.path} (op: a request)", c.usage, len(c.succeeded), names, per_op)
            for c in ceilings
        ]
        print(table(headers, cpu_rows))
        print(
            "ms/op: CPU milliseconds per operation (steadier than rates on a shared machine; "
            "one uvicorn process tops out near 1000 / web ms/op per second)."
        )
    if worker_memory is not None:
        print(
            f"Worker memory after the chat phase: {worker_memory[0]:.0f} MB RSS in "
            f"{worker_memory[1]} process(es) (--pool={arguments.worker_pool} "
            f"--concurrency={arguments.worker_concurrency})."
        )
    found = problems([], backend)  # the web and worker logs: tracebacks, ERROR, CRITICAL
    print(f"Log problems: {len(found) or 'none'}")
    for line in found[:PROBLEM_LINES_SHOWN]:
        print(f"  {line}")
    if len(found) > PROBLEM_LINES_SHOWN:
        print(f"  ... and {len(found) - PROBLEM_LINES_SHOWN} more")


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def _answer_tokens(value: str) -> int | None:
    if value == "natural":
        return None
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1, or 'natural'")
    return number


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    from benchmarks import noisy_neighbour  # here, not at the top: it imports this module

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--scenario", choices=["chat", "noisy-neighbour"], default="chat",
        help="chat: users, then the ceiling (default); noisy-neighbour: tenant B's users "
        "alone, then while tenant A floods, without and with a quota",
    )  # fmt: skip
    parser.add_argument("--database-url", help="default: a throwaway SQLite file")
    parser.add_argument("--redis-url", help="default: an embedded redis-server on a free port")
    parser.add_argument("--users", type=int, default=20, help="simulated chat users (20)")
    parser.add_argument("--duration", type=float, default=60.0, help="chat seconds (60)")
    parser.add_argument(
        "--think-time", type=float, nargs=2, default=[1.0, 3.0], metavar=("MIN", "MAX"),
        help="seconds between an answer and the next turn, uniform (1 3)",
    )  # fmt: skip
    parser.add_argument("--turns-per-conversation", type=int, default=5)
    parser.add_argument("--time-to-first-token", type=float, default=0.3, help="seconds (0.3)")
    parser.add_argument("--seconds-per-token", type=float, default=0.02, help="0.02: 50 tokens/s")
    parser.add_argument(
        "--answer-tokens", type=_answer_tokens, default=100,
        help=f"tokens per answer (100), or 'natural' ({NATURAL_LENGTH_MIN}-{NATURAL_LENGTH_MAX})",
    )  # fmt: skip
    parser.add_argument("--worker-pool", choices=["threads", "prefork"], default="threads")
    parser.add_argument(
        "--worker-concurrency", type=int,
        help="worker threads or prefork children (default: --users, i.e. one per answer in "
        "flight at most, for threads; at most 16 for prefork; noisy-neighbour: 16, as the "
        "run command)",
    )  # fmt: skip
    parser.add_argument("--ceiling-clients", type=int, help="default: --users")
    parser.add_argument("--ceiling-duration", type=float, default=15.0, help="seconds (15)")
    parser.add_argument(
        "--healthz-duration", type=float, default=10.0, help="seconds (10); 0 skips /healthz"
    )
    parser.add_argument("--seed", type=int, default=1, help="of the think times")
    noisy_neighbour.add_arguments(parser)
    arguments = parser.parse_args(argv)
    think_min, think_max = arguments.think_time
    if arguments.users < 1 or arguments.duration <= 0 or arguments.turns_per_conversation < 1:
        parser.error("--users, --duration and --turns-per-conversation must be positive")
    if not 0 <= think_min <= think_max:
        parser.error("--think-time needs 0 <= MIN <= MAX")
    if arguments.scenario == "noisy-neighbour":
        if arguments.answer_tokens is None:
            parser.error("--scenario noisy-neighbour needs a fixed --answer-tokens")
        if min(arguments.neighbour_users, arguments.flood_clients) < 1:
            parser.error("--neighbour-users and --flood-clients must be positive")
        if arguments.worker_concurrency is None:
            # The run command's worker (devtools/stack.py): what fair sharing is meant for.
            arguments.worker_concurrency = 16
    if arguments.worker_concurrency is None:
        arguments.worker_concurrency = (
            arguments.users if arguments.worker_pool == "threads" else min(arguments.users, 16)
        )
    if arguments.ceiling_clients is None:
        arguments.ceiling_clients = arguments.users
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = parse_arguments(argv)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if arguments.scenario == "noisy-neighbour":
        from benchmarks.noisy_neighbour import run_noisy_neighbour

        return run_noisy_neighbour(arguments, argv)
    settings = ChatSettings(
        users=arguments.users,
        duration=arguments.duration,
        think_min=arguments.think_time[0],
        think_max=arguments.think_time[1],
        turns_per_conversation=arguments.turns_per_conversation,
        seed=arguments.seed,
    )
    # Tells every client thread to give up (Ctrl-C, or a stuck phase).
    stop = threading.Event()
    load_at_start = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-load-")))
        print("Starting the backend ...", file=sys.stderr)
        backend = start_backend(
            stack,
            arguments,
            directory,
            time_to_first_token_seconds=arguments.time_to_first_token,
            seconds_per_token=arguments.seconds_per_token,
        )
        # Stopped before the backend (the stack unwinds in reverse), so no answer is lost.
        worker = stack.enter_context(
            celery_worker(backend, arguments.worker_concurrency, pool=arguments.worker_pool)
        )
        stack.callback(stop.set)  # on the way out, clients give up before anything stops
        components = [*backend.components, Component("worker", worker.process.pid, True)]
        probes = cpu_probes(components, backend.environment)
        concurrency = arguments.worker_concurrency
        print(f"Warm-up: {2 * concurrency} answers from {concurrency} clients ...", file=sys.stderr)
        run_level(backend, clients=concurrency, answers=2 * concurrency)
        backend.bedrock.report()  # forget the warm-up's streams
        print(f"Chat: {settings.users} users for {settings.duration:g} s ...", file=sys.stderr)
        usage: list[PhaseUsage] = []
        with measured(probes, usage):
            users, stuck, deadline = run_chat(backend, settings, stop)
        chat = ChatResult(users, backend.bedrock.report(), usage[0], stuck, deadline)
        worker_memory = resident_megabytes(worker.process.pid)
        ceilings = []
        phases = [("/api/v1/tenant", arguments.ceiling_duration, True),
                  ("/healthz", arguments.healthz_duration, False)]  # fmt: skip
        for path, duration, authenticated in phases:
            if duration > 0:
                print(f"Ceiling: {path} for {duration:g} s ...", file=sys.stderr)
                ceilings.append(
                    run_ceiling(
                        backend,
                        path,
                        arguments.ceiling_clients,
                        duration,
                        authenticated,
                        stop,
                        probes,
                    )
                )
        print_report(
            arguments,
            settings,
            backend,
            chat,
            ceilings,
            (load_at_start, os.getloadavg()[0]),
            argv,
            worker_memory,
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("Interrupted; every process this run started is stopped.", file=sys.stderr)
        sys.exit(130)
