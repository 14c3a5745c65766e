"""Answers per second and the latency the backend adds, through the real HTTP API.

Starts the pieces the run command starts, each under this script's control: a throwaway
database (SQLite by default, or the PostgreSQL database of ``--database-url``), Redis (an
embedded redis-server, or ``--redis-url``), the local Bedrock-compatible server with zero
latency (in its own process, so its threads never compete with the clients' for one GIL),
the ASGI web server (uvicorn, one process) and ONE Celery worker process (prefork pool,
``--concurrency=2`` as in the run command, then 4). Simulated clients (threads), each in a
conversation of its own, send a turn, follow its Server-Sent Events to ``done`` and send
the next turn. For 1, 4 and 16 clients it prints answers completed per second and:

- TTFT: POST of the turn -> the client parses the first ``delta`` event;
- added TTFT: the local server sends its first chunk -> the client parses the first
  ``delta`` (worker -> Redis stream -> SSE view -> client), on one machine's wall clock;
- to Bedrock: POST of the turn -> the local server receives the request (web request,
  queue, worker pick-up, context build);
- end to end: POST of the turn -> the client parses ``done``.

A second table gives the CPU milliseconds each process used per answer (Linux only): on a
shared machine that is steadier than rates, and it shows which process would saturate
first. The warm-up answers of each fresh worker are reported apart, as its cold start.
Answers have the local server's natural length (12-48 tokens) unless ``--answer-tokens``.

    .venv/bin/python benchmarks/generation.py
    .venv/bin/python benchmarks/generation.py \\
        --database-url postgres://postgres@127.0.0.1:5432/bench_generation \\
        --redis-url redis://127.0.0.1:6379/2

A PostgreSQL database that does not exist yet is created and dropped afterwards; one that
exists is used as it is (migrated, and given a new tenant). Every process started here is
stopped at the end, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from config.web_server import uvicorn_command  # noqa: E402
from devtools.embedded_redis import EmbeddedRedis  # noqa: E402
from devtools.local_bedrock import (  # noqa: E402
    NATURAL_LENGTH_MAX,
    NATURAL_LENGTH_MIN,
    LocalBedrockServer,
    StreamStart,
)
from devtools.processes import (  # noqa: E402
    ManagedProcess,
    descendants,
    free_port,
    start_process,
    stat_fields,
)

MODEL_ID = "meta.llama3-1-8b-instruct-v1:0"
BEDROCK_SEED = 1
MARKER = re.compile(r"bench-[0-9a-f]{32}")
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
HTTP_TIMEOUT_SECONDS = 30.0
# Longer than the SSE view's heartbeat (15 s), so a quiet but healthy stream is not cut;
# an answer still silent after this is reported as stuck.
ANSWER_TIMEOUT_SECONDS = 60.0
PROBLEM_LINES_SHOWN = 10


# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerTiming:
    """One turn as a client saw it; times are time.time() of this machine."""

    marker: str
    posted_at: float
    first_delta_at: float | None
    finished_at: float
    failure: str | None = None
    """None for a completed answer; otherwise what went wrong, for the report."""
    resets: int = 0
    generation_tokens: int | None = None
    accepted_at: float | None = None
    """When the POST of the turn answered 202 (None if it did not)."""


@dataclass(frozen=True)
class BedrockReport:
    """What the local Bedrock server saw since the previous report."""

    starts: list[StreamStart]
    completed: int
    failed: int
    aborted: int


@dataclass(frozen=True)
class LevelResult:
    worker_concurrency: int
    clients: int
    answers: list[AnswerTiming]
    bedrock: BedrockReport
    cpu_seconds: dict[str, float]
    """CPU time each component used during the level (empty without /proc)."""
    warmup: bool = False
    """The first answers of a fresh worker: reported apart, as the cold start."""

    @property
    def completed(self) -> list[AnswerTiming]:
        return [answer for answer in self.answers if answer.failure is None]

    @property
    def answers_per_second(self) -> float:
        completed = self.completed
        if not completed:
            return 0.0
        # From the first POST to the last `done`, so thread start-up is not counted.
        elapsed = max(a.finished_at for a in completed) - min(a.posted_at for a in self.answers)
        return len(completed) / elapsed

    def stream_starts(self) -> dict[str, StreamStart]:
        """Marker of the turn -> its Bedrock stream (the first attempt's, if retried)."""
        found: dict[str, StreamStart] = {}
        for start in self.bedrock.starts:
            # The prompt holds the whole history: the newest turn's marker is the last one.
            markers = MARKER.findall(start.prompt_tail)
            if markers:
                found.setdefault(markers[-1], start)
        return found


def percentile(values: Sequence[float], percent: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


# ---------------------------------------------------------------------------------------
# The local Bedrock server, in a process of its own
# ---------------------------------------------------------------------------------------


def _serve_local_bedrock(
    connection: Connection,
    answer_tokens: int | None,
    time_to_first_token_seconds: float = 0.0,
    seconds_per_token: float = 0.0,
) -> None:
    """Child process: serve until told to stop, reporting stream starts when asked."""
    # Ctrl-C reaches the whole process group; the benchmark stops this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server = LocalBedrockServer(
        seed=BEDROCK_SEED,
        time_to_first_token_seconds=time_to_first_token_seconds,
        seconds_per_token=seconds_per_token,
        answer_tokens=answer_tokens,
    ).start()
    try:
        connection.send(server.url)
        while connection.recv() == "report":
            connection.send(
                BedrockReport(
                    starts=server.stream_starts,
                    completed=server.streams_completed,
                    failed=server.streams_failed,
                    aborted=server.streams_aborted,
                )
            )
            server.reset_counters()
    except EOFError:
        pass  # the benchmark is gone: just stop
    finally:
        server.stop()


class LocalBedrockProcess:
    """The local Bedrock server in a process of its own; zero latency unless given."""

    def __init__(
        self,
        *,
        answer_tokens: int | None,
        time_to_first_token_seconds: float = 0.0,
        seconds_per_token: float = 0.0,
    ) -> None:
        # spawn, not fork: a clean interpreter, whatever this process holds at the time.
        context = multiprocessing.get_context("spawn")
        self._connection, child_end = context.Pipe()
        self._process = context.Process(
            target=_serve_local_bedrock,
            args=(child_end, answer_tokens, time_to_first_token_seconds, seconds_per_token),
            name="local-bedrock",
            daemon=True,
        )
        self.url = ""

    @property
    def pid(self) -> int:
        return self._process.pid or 0

    def start(self) -> LocalBedrockProcess:
        self._process.start()
        if not self._connection.poll(STARTUP_TIMEOUT_SECONDS):
            raise RuntimeError("the local Bedrock server did not start")
        self.url = self._connection.recv()
        return self

    def report(self) -> BedrockReport:
        """Stream starts and endings since the previous report."""
        self._connection.send("report")
        return self._connection.recv()

    def stop(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self._connection.send("stop")
        self._process.join(timeout=STOP_TIMEOUT_SECONDS)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


# ---------------------------------------------------------------------------------------
# CPU accounting (Linux /proc): on a shared machine, CPU per answer is steadier than rates
# ---------------------------------------------------------------------------------------

PROC = Path("/proc")


def cpu_seconds(pid: int, *, with_descendants: bool) -> float:
    """User + system CPU of a process (and its live descendants, e.g. a worker's pool)."""
    ticks = 0
    for member in [pid, *(descendants(pid) if with_descendants else [])]:
        fields = stat_fields(member)
        if fields is not None:
            # utime and stime: fields 14 and 15 of proc(5), 12th and 13th after the ")".
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Component:
    name: str
    pid: int
    with_descendants: bool


def cpu_snapshot(components: Sequence[Component]) -> dict[str, float]:
    if not PROC.is_dir():
        return {}
    return {
        component.name: cpu_seconds(component.pid, with_descendants=component.with_descendants)
        for component in components
    }


# ---------------------------------------------------------------------------------------
# Processes, database and Redis
# ---------------------------------------------------------------------------------------


def manage(environment: dict[str, str], *arguments: str) -> str:
    completed = subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(arguments)} failed:\n{completed.stderr}")
    return completed.stdout


def _is_postgres(url: str) -> bool:
    return urlsplit(url).scheme in ("postgres", "postgresql", "pgsql")


def _maintenance_url(url: str) -> tuple[str, str]:
    """The `postgres` database of the same server, and the name of the one in `url`."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/postgres")), parts.path.lstrip("/")


@contextlib.contextmanager
def database(url: str | None, directory: Path) -> Iterator[str]:
    """The DATABASE_URL to use; a throwaway SQLite file by default."""
    if url is None:
        yield f"sqlite:///{directory / 'bench.sqlite3'}"
        return
    if not _is_postgres(url):
        yield url
        return
    import psycopg
    from psycopg import sql

    maintenance, name = _maintenance_url(url)
    with psycopg.connect(maintenance, autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if not exists:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield url
    finally:
        if not exists:  # only what this run created is dropped
            with psycopg.connect(maintenance, autocommit=True) as connection:
                connection.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


@contextlib.contextmanager
def redis_server(url: str | None, directory: Path) -> Iterator[tuple[str, int | None]]:
    """The REDIS_URL to use, and the pid of the redis-server when it is ours."""
    if url:
        yield url, None
        return
    # A free port rather than the run command's 6380, which a `make run` may be using.
    embedded = EmbeddedRedis(port=free_port(), directory=directory / "redis")
    embedded.start()
    try:
        assert embedded.process is not None
        yield embedded.url, embedded.process.pid
    finally:
        embedded.stop()


# ---------------------------------------------------------------------------------------
# The backend under test
# ---------------------------------------------------------------------------------------


@dataclass
class Backend:
    base_url: str
    api_key: str
    environment: dict[str, str]
    bedrock: LocalBedrockProcess
    log_directory: Path
    web: ManagedProcess
    description: str
    components: list[Component]
    """What CPU is counted for, besides the worker (added per configuration)."""
    workers: list[ManagedProcess] = field(default_factory=list)


def backend_environment(database_url: str, redis_url: str, bedrock_url: str) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LOCAL_BEDROCK_", "DJANGO_"))
    }
    environment.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        BEDROCK_ENDPOINT_URL=bedrock_url,
        DJANGO_SETTINGS_MODULE="config.settings",
        # Production behaviour (no query log) with the laptop's other defaults.
        DEBUG="false",
        PYTHONUNBUFFERED="1",
    )
    return environment


def start_backend(
    stack: contextlib.ExitStack,
    arguments: argparse.Namespace,
    directory: Path,
    *,
    time_to_first_token_seconds: float = 0.0,
    seconds_per_token: float = 0.0,
) -> Backend:
    """Database, Redis, the local Bedrock server, a tenant with a key and the web server;
    each stopped by `stack`. Uses arguments.database_url, redis_url and answer_tokens."""
    database_url = stack.enter_context(database(arguments.database_url, directory))
    redis_url, redis_pid = stack.enter_context(redis_server(arguments.redis_url, directory))
    bedrock = LocalBedrockProcess(
        answer_tokens=arguments.answer_tokens,
        time_to_first_token_seconds=time_to_first_token_seconds,
        seconds_per_token=seconds_per_token,
    ).start()
    stack.callback(bedrock.stop)
    environment = backend_environment(database_url, redis_url, bedrock.url)
    manage(environment, "migrate", "--noinput")
    # A new tenant each run, so that an existing database can be reused.
    slug = f"bench-{uuid.uuid4().hex[:8]}"
    manage(environment, "create_tenant", slug)
    api_key = manage(environment, "create_api_key", slug).strip().splitlines()[-1]
    port = free_port()
    web = start_process(
        "web",
        uvicorn_command(
            environment,
            ["--host", "127.0.0.1", "--port", str(port), "--no-access-log",
             # Interrupted clients may leave SSE streams open; do not wait for them at the end.
             "--timeout-graceful-shutdown", "2"],
        ),
        environment,
        log_path=directory / "web.log",
    )  # fmt: skip
    stack.callback(web.stop)
    base_url = f"http://127.0.0.1:{port}"
    web.wait_for_url(f"{base_url}/readyz", timeout_seconds=STARTUP_TIMEOUT_SECONDS)
    database_kind = "PostgreSQL" if _is_postgres(database_url) else "SQLite"
    description = (
        f"{database_kind} ({arguments.database_url or 'throwaway file'}), "
        f"Redis {arguments.redis_url or '(embedded redis-server)'}"
    )
    components = [
        Component("web", web.process.pid, with_descendants=True),
        Component("Bedrock", bedrock.pid, with_descendants=False),
        # This process holds only the client threads (and the main thread waiting).
        Component("clients", os.getpid(), with_descendants=False),
    ]
    if redis_pid is not None:
        components.append(Component("Redis", redis_pid, with_descendants=False))
    return Backend(base_url, api_key, environment, bedrock, directory, web, description, components)


@contextlib.contextmanager
def celery_worker(
    backend: Backend, concurrency: int, *, pool: str = "prefork"
) -> Iterator[ManagedProcess]:
    """ONE worker process with `concurrency` prefork children (as the run command starts),
    or `concurrency` threads with pool="threads"."""
    name = (
        f"worker-concurrency-{concurrency}" if pool == "prefork" else f"worker-{pool}-{concurrency}"
    )
    worker = start_process(
        name,
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO",
         f"--concurrency={concurrency}", f"--pool={pool}", "--without-gossip",
         "--without-mingle", f"--hostname=bench-{uuid.uuid4().hex[:8]}@%h"],
        backend.environment,
        # SIGTERM to the main process only: the worker then shuts down warm, letting its pool
        # finish the task at hand (SIGTERM to the pool itself is a lost worker).
        log_path=backend.log_directory / f"{name}.log",
    )  # fmt: skip
    backend.workers.append(worker)
    try:
        worker.wait_for_log(" ready.", timeout_seconds=STARTUP_TIMEOUT_SECONDS)
        yield worker
    finally:
        worker.stop()


# ---------------------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSentEvent:
    type: str
    data: str


def server_sent_events(response: requests.Response) -> Iterator[ServerSentEvent]:
    """Events of an SSE body as they arrive (id, retry and comments do not matter here)."""
    buffer = b""
    event_type, data_lines = "message", []
    # chunk_size=None: whatever has arrived, at once, rather than waiting for a full block.
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        while b"\n" in buffer:
            raw_line, buffer = buffer.split(b"\n", 1)
            line = raw_line.rstrip(b"\r").decode()
            if not line:
                if data_lines:
                    yield ServerSentEvent(event_type, "\n".join(data_lines))
                event_type, data_lines = "message", []
            elif line.startswith("event:"):
                event_type = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data_lines.append(line.removeprefix("data:").removeprefix(" "))


class Client:
    """One simulated user: its own HTTP session (sessions are not thread-safe)."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    def new_conversation(self) -> str:
        response = self.session.post(
            f"{self.base_url}/api/v1/conversations",
            json={"model": MODEL_ID},
            timeout=HTTP_TIMEOUT_SECONDS,
        )
        if response.status_code != 201:
            raise RuntimeError(f"creating a conversation: {response.status_code} {response.text}")
        return response.json()["id"]

    def ask(self, conversation_id: str) -> AnswerTiming:
        marker = f"bench-{uuid.uuid4().hex}"
        posted_at = time.time()

        def failed(reason: str) -> AnswerTiming:
            return AnswerTiming(marker, posted_at, None, time.time(), failure=reason)

        try:
            response = self.session.post(
                f"{self.base_url}/api/v1/conversations/{conversation_id}/messages",
                json={"content": f"Question {marker}: what do llamas eat?"},
                timeout=HTTP_TIMEOUT_SECONDS,
            )
        except requests.RequestException as error:
            return failed(f"POST message: {type(error).__name__}: {error}")
        if response.status_code != 202:
            return failed(f"POST message answered {response.status_code}: {response.text[:300]}")
        accepted_at = time.time()
        timing = self._follow(response.json()["stream_url"], marker, posted_at)
        return dataclasses.replace(timing, accepted_at=accepted_at)

    def _follow(self, stream_url: str, marker: str, posted_at: float) -> AnswerTiming:
        first_delta_at: float | None = None
        resets = 0
        try:
            with self.session.get(
                self.base_url + stream_url,
                stream=True,
                timeout=(HTTP_TIMEOUT_SECONDS, ANSWER_TIMEOUT_SECONDS),
            ) as response:
                if response.status_code != 200:
                    reason = f"GET stream answered {response.status_code}: {response.text[:300]}"
                    return AnswerTiming(marker, posted_at, None, time.time(), failure=reason)
                for event in server_sent_events(response):
                    if event.type == "delta" and first_delta_at is None:
                        first_delta_at = time.time()
                    elif event.type == "reset":
                        resets += 1
                    elif event.type in ("done", "error"):
                        return self._final(event, marker, posted_at, first_delta_at, resets)
        except requests.RequestException as error:
            reason = f"stream: {type(error).__name__}: {error}"
            return AnswerTiming(marker, posted_at, first_delta_at, time.time(), reason, resets)
        return AnswerTiming(
            marker, posted_at, first_delta_at, time.time(), "stream ended before done", resets
        )

    @staticmethod
    def _final(
        event: ServerSentEvent,
        marker: str,
        posted_at: float,
        first_delta_at: float | None,
        resets: int,
    ) -> AnswerTiming:
        finished_at = time.time()
        message = json.loads(event.data)["message"]
        failure = None
        if message["status"] != "completed":
            failure = (
                f"answer {message['status']}: {message.get('error_code')} "
                f"{message.get('error_message')}"
            )
        return AnswerTiming(
            marker,
            posted_at,
            first_delta_at,
            finished_at,
            failure,
            resets,
            message.get("generation_token_count"),
        )


def client_turns(client: Client, conversation_id: str, turns: int) -> list[AnswerTiming]:
    # One turn at a time: a conversation refuses a new turn while an answer is pending.
    return [client.ask(conversation_id) for _ in range(turns)]


def split_evenly(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def run_level(backend: Backend, clients: int, answers: int) -> list[AnswerTiming]:
    """`answers` turns spread over `clients` concurrent clients, each in its conversation."""
    users = [Client(backend.base_url, backend.api_key) for _ in range(clients)]
    conversations = [user.new_conversation() for user in users]
    pool = ThreadPoolExecutor(max_workers=clients, thread_name_prefix="client")
    try:
        futures = [
            pool.submit(client_turns, user, conversation, turns)
            for user, conversation, turns in zip(
                users, conversations, split_evenly(answers, clients), strict=True
            )
        ]
        return [timing for future in futures for timing in future.result()]
    finally:
        # Not `with`: on Ctrl-C, do not wait for clients blocked on a stream; stopping the
        # web server ends their connections.
        pool.shutdown(wait=False, cancel_futures=True)
        for user in users:
            user.session.close()


def measure_worker(
    backend: Backend, concurrency: int, levels: Sequence[tuple[int, int]]
) -> list[LevelResult]:
    results = []
    with celery_worker(backend, concurrency) as worker:
        components = [*backend.components, Component("worker", worker.process.pid, True)]
        # Each pool process opens its connections on first use (the tokenizers it inherits,
        # loaded at worker start): warm all of them up before measuring.
        warmup = run_level(backend, clients=2 * concurrency, answers=4 * concurrency)
        results.append(
            LevelResult(
                concurrency, 2 * concurrency, warmup, backend.bedrock.report(), {}, warmup=True
            )
        )
        for clients, answers in levels:
            print(f"  worker concurrency {concurrency}, {clients} clients ...", file=sys.stderr)
            before = cpu_snapshot(components)
            timings = run_level(backend, clients, answers)
            after = cpu_snapshot(components)
            used = {name: after[name] - before[name] for name in after}
            results.append(
                LevelResult(concurrency, clients, timings, backend.bedrock.report(), used)
            )
    return results


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def milliseconds(values: Sequence[float]) -> str:
    p50, p95 = percentile(values, 50), percentile(values, 95)
    if p50 is None or p95 is None:
        return "-"
    return f"{p50 * 1000:.1f} / {p95 * 1000:.1f}"


def table_row(result: LevelResult) -> list[str]:
    completed = result.completed
    starts = result.stream_starts()
    first_deltas = [(a, a.first_delta_at) for a in completed if a.first_delta_at is not None]
    ttft = [first_delta - a.posted_at for a, first_delta in first_deltas]
    added = [
        first_delta - starts[a.marker].first_chunk_at
        for a, first_delta in first_deltas
        if a.marker in starts
    ]
    to_bedrock = [
        starts[a.marker].received_at - a.posted_at for a in completed if a.marker in starts
    ]
    end_to_end = [a.finished_at - a.posted_at for a in completed]
    return [
        str(result.worker_concurrency),
        str(result.clients),
        f"{len(completed)}/{len(result.answers)}",
        f"{result.answers_per_second:.1f}",
        milliseconds(ttft),
        milliseconds(added),
        milliseconds(to_bedrock),
        milliseconds(end_to_end),
    ]


HEADERS = [
    "worker conc.",
    "clients",
    "completed",
    "answers/s",
    "TTFT p50/p95 ms",
    "added TTFT p50/p95 ms",
    "to Bedrock p50/p95 ms",
    "end to end p50/p95 ms",
]


CPU_COMPONENTS = ("web", "worker", "Redis", "Bedrock", "clients")


def cpu_row(result: LevelResult) -> list[str]:
    answers = len(result.completed) or 1
    cells = [
        f"{result.cpu_seconds[name] / answers * 1000:.1f}" if name in result.cpu_seconds else "-"
        for name in CPU_COMPONENTS
    ]
    total = sum(result.cpu_seconds.values()) / answers * 1000
    return [str(result.worker_concurrency), str(result.clients), *cells, f"{total:.1f}"]


def format_table(headers: Sequence[str], rows: list[list[str]]) -> str:
    table = [list(headers), *rows]
    widths = [max(len(row[column]) for row in table) for column in range(len(headers))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
             for row in table]  # fmt: skip
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def cold_start_line(result: LevelResult) -> str:
    ttft = [a.first_delta_at - a.posted_at for a in result.completed if a.first_delta_at]
    end_to_end = [a.finished_at - a.posted_at for a in result.completed]
    if not ttft or not end_to_end:
        return f"Cold start, worker concurrency {result.worker_concurrency}: no answer completed"
    return (
        f"Cold start (warm-up, not in the tables), worker concurrency "
        f"{result.worker_concurrency}: {len(result.answers)} answers from {result.clients} "
        f"clients, TTFT max {max(ttft) * 1000:.0f} ms, end to end max "
        f"{max(end_to_end) * 1000:.0f} ms."
    )


def answer_length(results: Sequence[LevelResult], answer_tokens: int | None) -> str:
    counts = [
        a.generation_tokens
        for result in results
        for a in result.completed
        if a.generation_tokens is not None
    ]
    mean = f", mean {statistics.mean(counts):.1f}" if counts else ""
    if answer_tokens is not None:
        return f"{answer_tokens} tokens each{mean}"
    return f"natural length {NATURAL_LENGTH_MIN}-{NATURAL_LENGTH_MAX} tokens{mean}"


def problems(results: Sequence[LevelResult], backend: Backend) -> list[str]:
    """Failed or retried answers, streams Bedrock saw cut, and errors in the logs."""
    found = []
    for result in results:
        label = f"worker concurrency {result.worker_concurrency}, {result.clients} clients"
        if result.warmup:
            label += " (warm-up)"
        for answer in result.answers:
            if answer.failure is not None:
                found.append(f"{label}: {answer.failure}")
            if answer.resets:
                found.append(f"{label}: answer restarted {answer.resets} time(s) (retry)")
        starts = result.stream_starts()
        missing = [a for a in result.completed if a.marker not in starts]
        if missing:
            found.append(f"{label}: {len(missing)} answers without a Bedrock stream start")
        if result.bedrock.failed or result.bedrock.aborted:
            found.append(
                f"{label}: Bedrock streams failed {result.bedrock.failed}, "
                f"aborted {result.bedrock.aborted}"
            )
    for managed in [backend.web, *backend.workers]:
        for line in managed.log().splitlines():
            if "Traceback" in line or "ERROR" in line or "CRITICAL" in line:
                found.append(f"{managed.name} log: {line.strip()[:300]}")
    return found


def print_report(
    all_results: Sequence[LevelResult],
    backend: Backend,
    arguments: argparse.Namespace,
    load_average: float,
) -> None:
    results = [result for result in all_results if not result.warmup]
    print(
        f"Generation through the HTTP API: {backend.description}; uvicorn (1 process); "
        f"ONE Celery worker process (prefork pool of 'worker conc.' children); "
        f"local Bedrock server with zero latency (separate process); {MODEL_ID}; "
        f"answers of {answer_length(results, arguments.answer_tokens)}; "
        f"{os.cpu_count()} CPUs shared by everything (load average at start {load_average:.2f})."
    )
    print(format_table(HEADERS, [table_row(result) for result in results]))
    print(
        "TTFT: POST of the turn -> first SSE delta parsed. added TTFT: Bedrock sent its first "
        "chunk -> first SSE delta parsed.\nto Bedrock: POST of the turn -> Bedrock received the "
        "request. end to end: POST -> SSE done. answers/s: completed answers / (last done - "
        "first POST)."
    )
    if any(result.cpu_seconds for result in results):
        print("\nCPU milliseconds per completed answer, by process (a worker with its pool):")
        headers = ["worker conc.", "clients", *CPU_COMPONENTS, "total"]
        print(format_table(headers, [cpu_row(result) for result in results]))
    for result in all_results:
        if result.warmup:
            print(cold_start_line(result))
    found = problems(all_results, backend)
    print(f"Problems: {len(found) or 'none'}")
    for line in found[:PROBLEM_LINES_SHOWN]:
        print(f"  {line}")
    if len(found) > PROBLEM_LINES_SHOWN:
        print(f"  ... and {len(found) - PROBLEM_LINES_SHOWN} more")


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--database-url", help="default: a throwaway SQLite file")
    parser.add_argument("--redis-url", help="default: an embedded redis-server on a free port")
    parser.add_argument("--worker-concurrency", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--answers", type=int, nargs="+", default=[20, 40, 80], help="per --clients value"
    )
    parser.add_argument(
        "--answer-tokens",
        type=int,
        help=f"fixed answer length (default: the local server's natural "
        f"{NATURAL_LENGTH_MIN}-{NATURAL_LENGTH_MAX} tokens)",
    )
    arguments = parser.parse_args(argv)
    if len(arguments.answers) != len(arguments.clients):
        parser.error("give one --answers value per --clients value")
    if any(
        answers < clients
        for clients, answers in zip(arguments.clients, arguments.answers, strict=True)
    ):
        parser.error("each --answers value must be at least its --clients value")
    return arguments


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C or SIGTERM: unwind the context managers, which stop every process.

    Only once: a second Ctrl-C (or timeout(1) forwarding the same one) must not cut the
    orderly stop short and leave processes behind.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    levels = list(zip(arguments.clients, arguments.answers, strict=True))
    results: list[LevelResult] = []
    # Other work on the machine skews every number here; the report says how busy it was.
    load_average = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-gen-")))
        print("Starting the backend ...", file=sys.stderr)
        backend = start_backend(stack, arguments, directory)
        for concurrency in arguments.worker_concurrency:
            results += measure_worker(backend, concurrency, levels)
        print_report(results, backend, arguments, load_average)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("Interrupted; every process this run started is stopped.", file=sys.stderr)
        sys.exit(130)
