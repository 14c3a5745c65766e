"""Reservations per second under concurrency: how far one tenant's budget row lets it go.

Clients each have their own database connection and are released together by a barrier
after a short warm-up; they are threads of one process (one GIL), or, with ``--kinds
processes``, forked processes. Every client reserves against a hard monthly budget, in two
modes:

- reserve: ``reservation_create`` alone, in its own transaction (the answer message exists
  beforehand): lock the budget row, sum the open reservations, insert the reservation;
- turn: ``user_message_create``, what a request does: lock the conversation, count the
  user's tokens, build the context, store the user message and the queued answer, reserve.

Each reservation is released right after (untimed, as a finished answer closes it), so
open reservations stay at most one per client, as in steady traffic. Scenarios: 1, 8 and
32 clients on one tenant's budget (the hot row), 32 clients on 32 tenants (one budget
each), and 32 clients on one tenant without a budget (the same work without the hot row).
Per row: reservations per second, p50/p95 latency of the timed call, how long a
reservation held the budget row lock (p50, from locking to commit, read by wrapping
``budget_state`` and an on-commit callback; PostgreSQL only), the CPU (clients' and
PostgreSQL backends', from /proc) per reservation, and the cores used. Then the two
ceilings those imply.

    .venv/bin/python benchmarks/governance.py [--backends postgres sqlite]
        [--kinds threads processes] [--operations 500]

The Celery enqueue after commit is replaced by a no-op: the broker is not governance, and a
throwaway database's answers must not reach a real queue. PostgreSQL runs in a database of
its own (``bench_governance``), created and dropped here.

Where the ceiling comes from (2 cores, PostgreSQL 15 on the same host; four runs made while
the machine was shared with other test suites, load average 3 to 20, so rates moved by up
to 3x between runs; figures below are for clients as threads, the default of the brief):

- One tenant is serialised by its budget row. Every reservation takes ``SELECT ... FOR
  UPDATE`` on each budget that applies and holds it until commit, so a tenant's
  reservations run one at a time and cannot exceed 1000 / (lock ms) per second, however
  many clients or web processes send them. A lone client holds the lock about 1.5 ms when
  it has a core to itself (quota lock, open-reservation sum, insert, commit; 2.6-4.8 ms on
  the busiest runs): some 650 reservations/s per tenant at best here; a database on
  another host adds its round trips inside the lock. More clients on one tenant add only
  queueing: in the quietest run the rate stayed flat from 1 to 8 to 32 clients (163, 178,
  159/s) while p50 grew with the queue (4, 40, 193 ms), and the lock was held longer
  (3.4-9 ms across runs) because its holder competes for CPU, and for the GIL, with the
  clients doing their work before the lock. A hot row also turns any stall of its holder
  (preemption, the GIL, a garbage collection) into a stall of the whole tenant: the
  one-tenant rows were the noisiest (reserve, 32 clients: 73-159/s).
- Across tenants nothing is shared: 32 clients on 32 tenants ran as fast as 32 clients of
  one tenant with no budget at all, and steadily (reserve 176-197/s vs 177-224/s; turn
  70-110/s vs 99-111/s), both CPU-bound. A reservation costs 5-7 ms of CPU (about three
  quarters in Python: the ORM and the service; a quarter in PostgreSQL), a full turn
  10.5-12 ms, so two cores give at most ~300-400 reservations/s or ~170 turns/s. Their
  long "lock" times there (40-60 ms; 100-160 ms with processes) are the holder waiting for
  a CPU among 32 runnable clients, not other reservations waiting for the row.
- On this 2-core host the CPU ceiling is at or below one tenant's lock ceiling, so 32
  clients of one hot tenant reached 0.4-0.85x (reserve) and 0.6-1.1x (turn) of the
  32-tenant rate, not 1/32 of it. With more CPU (a web tier on several hosts) all tenants
  together scale with it while one tenant stays capped at 1 / lock time; raising that cap
  means holding the row for less time: fewer statements between lock and commit, a
  database close by.
- Processes instead of threads remove the GIL but not the 2-core limit: with 32 processes
  on a busy host they did no better (more context switches, 8-21 ms of CPU per reservation).
- SQLite has one writer for the whole file (IMMEDIATE transactions): tenants do not help,
  and with 32 threads the busy handler's sleeps gave p95 of 0.2-2 s while the clients
  mostly slept (as little as 0.12 cores used).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._django import DEFAULT_POSTGRES_URL, setup_django

MODEL_ID = "meta.llama3-1-8b-instruct-v1:0"
MAX_GEN_LEN = 512
CONTENT = "Summarise our refund policy for a customer who bought the annual plan last week."
RESERVE_PROMPT_TOKENS = 27  # what CONTENT makes as a first turn (Llama 3 format)
# The frozen prompt a reservation stores: about what a first turn with CONTENT sends.
FROZEN_PROMPT = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + CONTENT
BENCH_DATABASE = "bench_governance"
WARM_UP_OPERATIONS = 3
MODES = ("reserve", "turn")
# (clients, tenants, with a budget)
SCENARIOS = ((1, 1, True), (8, 1, True), (32, 1, True), (32, 32, True), (32, 1, False))


@contextmanager
def throwaway_database(kind: str, postgres_admin_url: str) -> Iterator[str]:
    """Like benchmarks._django.throwaway_database, under a name of its own, so this script
    never drops a database another benchmark is using at the same time."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            yield f"sqlite:///{Path(directory) / 'bench.sqlite3'}"
        return
    import psycopg

    with psycopg.connect(postgres_admin_url, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {BENCH_DATABASE}")
    try:
        yield f"{postgres_admin_url.rsplit('/', 1)[0]}/{BENCH_DATABASE}"
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)")


@dataclass
class Row:
    kind: str
    mode: str
    clients: int
    tenants: int
    budget: bool
    operations: int
    seconds: float
    p50_ms: float
    p95_ms: float
    lock_p50_ms: float | None
    clients_cpu: float
    database_cpu: float | None

    @property
    def per_second(self) -> float:
        return self.operations / self.seconds

    @property
    def cores_used(self) -> float:
        return self.clients_cpu + (self.database_cpu or 0)

    @property
    def cpu_ms_per_reservation(self) -> float:
        """Client and database CPU per reservation: steadier than rates on a shared machine."""
        return self.cores_used * 1000 / self.per_second


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def cpu_seconds(pids: list[int]) -> float:
    """CPU (user + system, all threads) the given local processes have used, from /proc."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


# Per client thread: when reservation_create got its budget row locks, and for how long it
# held them (until the commit). Read by wrapping budget_state, which it calls right after
# locking, and by an on-commit callback; the service itself is not changed.
lock_clock = threading.local()


def lock_clock_install() -> None:
    from django.db import connection

    import billing.services as services
    import conversations.services.dispatch as dispatch

    # The turn's enqueue runs on commit: the no-op that replaces it reads the clock.
    dispatch.generation_enqueue = lambda **_: lock_released()
    if connection.vendor != "postgresql":
        return  # SQLite locks the whole database from BEGIN: there is no row lock to time
    original = services.budget_state

    def budget_state(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("locked") and "acquired" not in lock_clock.__dict__:
            lock_clock.acquired = time.perf_counter()
        return original(*args, **kwargs)

    services.budget_state = budget_state


def lock_released() -> None:
    acquired = lock_clock.__dict__.pop("acquired", None)
    if acquired is not None:
        lock_clock.held = time.perf_counter() - acquired


class Client:
    """One simulated client: its tenant, and the rows its operations will use."""

    def __init__(self, tenant: Any, model: Any, count: int) -> None:
        from conversations.models import Conversation, Message, MessageRole, MessageStatus

        self.tenant, self.model = tenant, model
        # A fresh conversation per turn: each accepts one pending answer, and a constant
        # history keeps the context build the same from the first turn to the last.
        self.conversations = Conversation.objects.bulk_create(
            Conversation(tenant=tenant, model=model, bedrock_model_id=model.model_id)
            for _ in range(count)
        )
        holder = Conversation.objects.create(
            tenant=tenant, model=model, bedrock_model_id=model.model_id
        )
        self.answers = Message.objects.bulk_create(
            Message(
                tenant=tenant,
                conversation=holder,
                sequence=sequence,
                role=MessageRole.ASSISTANT,
                status=MessageStatus.QUEUED,
                max_gen_len=MAX_GEN_LEN,
            )
            for sequence in range(1, count + 1)
        )

    def operation(self, mode: str, index: int) -> Callable[[], tuple[float, float | None]]:
        """The index-th operation: returns the seconds of its timed call and how long it held
        the budget row lock (None without a budget)."""
        from django.db import transaction

        from billing.services import (
            CallScope,
            FrozenCall,
            reservation_create,
            reservation_release,
        )
        from conversations.services.conversations import user_message_create

        if mode == "turn":
            conversation = self.conversations[index]

            def timed() -> Any:
                turn = user_message_create(
                    conversation=conversation, content=CONTENT, max_gen_len=MAX_GEN_LEN
                )
                return turn.answer.pk

        else:
            answer = self.answers[index]

            def timed() -> Any:
                with transaction.atomic():
                    transaction.on_commit(lock_released)
                    reservation_create(
                        scope=CallScope(
                            tenant_id=self.tenant.pk, end_user_id=None, model_id=self.model.pk
                        ),
                        message_id=answer.pk,
                        conversation_id=answer.conversation_id,
                        model=self.model,
                        call=FrozenCall(
                            bedrock_model_id=self.model.model_id,
                            prompt=FROZEN_PROMPT,
                            prompt_tokens=RESERVE_PROMPT_TOKENS,
                            max_gen_len=MAX_GEN_LEN,
                            temperature=Decimal("0.5"),
                            top_p=Decimal("0.9"),
                        ),
                    )
                return answer.pk

        def run() -> tuple[float, float | None]:
            started = time.perf_counter()
            answer_id = timed()
            elapsed = time.perf_counter() - started
            held = lock_clock.__dict__.pop("held", None)
            reservation_release(message_id=answer_id, reason="benchmark")
            return elapsed, held

        return run


def client_life(
    simulated_client: Client,
    mode: str,
    count: int,
    report: Any,
    started_together: Any,
    finished_together: Any,
    measured: Any,
) -> None:
    """One client, as a thread or a process: warm up, say it is ready, run when all are,
    and stay connected until its backend's CPU has been read."""
    from django.db import connection

    try:
        for index in range(WARM_UP_OPERATIONS):
            simulated_client.operation(mode, index)()
        backend_pid = None
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                backend_pid = cursor.fetchone()[0]
        operations = [
            simulated_client.operation(mode, WARM_UP_OPERATIONS + index) for index in range(count)
        ]
        report.put(("ready", backend_pid, os.getpid()))
        started_together.wait()
        latencies = [operation() for operation in operations]
        report.put(("done", latencies, None))
        finished_together.wait()
        measured.wait()
    except BaseException as error:
        report.put(("error", repr(error), None))
        started_together.abort()
        finished_together.abort()
    finally:
        connection.close()


def collect(report: Any, count: int) -> list[tuple[Any, Any]]:
    messages = []
    while len(messages) < count:
        kind, first, second = report.get(timeout=600)
        if kind == "error":
            raise RuntimeError(f"a client failed: {first}")
        messages.append((first, second))
    return messages


def run_scenario(kind: str, mode: str, clients: int, tenants: int, budget: bool, total: int) -> Row:
    import multiprocessing
    import queue

    from django.db import connection, connections

    from billing.models import Budget
    from conversations.services import tenant_create
    from models_catalog.models import FoundationModel

    model = FoundationModel.objects.get(model_id=MODEL_ID)
    per_client = max(1, total // clients)
    stamp = f"{kind}-{mode}-{clients}-{tenants}-{int(budget)}"
    tenant_rows = [tenant_create(slug=f"bench-{stamp}-{n}") for n in range(tenants)]
    if budget:
        for tenant in tenant_rows:
            Budget.objects.create(
                tenant=tenant, period="month", limit_amount=Decimal(10**9), is_hard=True
            )
    simulated = [
        Client(tenant_rows[n % tenants], model, per_client + WARM_UP_OPERATIONS)
        for n in range(clients)
    ]
    vendor = connection.vendor
    if vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")

    if kind == "threads":
        report: Any = queue.Queue()
        primitives: Any = threading
        start = threading.Thread
    else:
        # Forked after the set-up, with no connection open: each child opens its own.
        connections.close_all()
        context = multiprocessing.get_context("fork")
        report, primitives, start = context.Queue(), context, context.Process
    # Start together; at the end, CPU is read before the clients disconnect and exit.
    started_together = primitives.Barrier(clients + 1)
    finished_together = primitives.Barrier(clients + 1)
    measured = primitives.Event()
    workers = [
        start(
            target=client_life,
            args=(
                simulated[n],
                mode,
                per_client,
                report,
                started_together,
                finished_together,
                measured,
            ),
        )
        for n in range(clients)
    ]
    for worker in workers:
        worker.start()
    try:
        ready = collect(report, clients)
        backend_pids = [backend for backend, _ in ready if backend is not None]
        client_pids = sorted({pid for _, pid in ready})
        started_together.wait()
        started = time.perf_counter()
        clients_before, database_before = cpu_seconds(client_pids), cpu_seconds(backend_pids)
        finished_together.wait()
        seconds = time.perf_counter() - started
        clients_cpu = (cpu_seconds(client_pids) - clients_before) / seconds
        database_cpu = (cpu_seconds(backend_pids) - database_before) / seconds
        done = collect(report, clients)
    finally:
        measured.set()
        for worker in workers:
            worker.join()
    timed = [latency * 1000 for latencies, _ in done for latency, _ in latencies]
    held = [lock * 1000 for latencies, _ in done for _, lock in latencies if lock is not None]
    return Row(
        kind=kind,
        mode=mode,
        clients=clients,
        tenants=tenants,
        budget=budget,
        operations=len(timed),
        seconds=seconds,
        p50_ms=statistics.median(timed),
        p95_ms=percentile(timed, 0.95),
        lock_p50_ms=statistics.median(held) if held else None,
        clients_cpu=clients_cpu,
        database_cpu=database_cpu if vendor == "postgresql" else None,
    )


def measure(database_url: str, total: int, kinds: list[str]) -> list[dict[str, Any]]:
    setup_django(database_url)
    lock_clock_install()
    rows = []
    for kind in kinds:
        for clients, tenants, budget in SCENARIOS:
            for mode in MODES:
                rows.append(asdict(run_scenario(kind, mode, clients, tenants, budget, total)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["postgres", "sqlite"])
    parser.add_argument("--postgres-admin-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--operations", type=int, default=500, help="timed reservations per row")
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=["threads", "processes"],
        choices=["threads", "processes"],
        help="clients as threads of one process (one GIL) or as processes",
    )
    parser.add_argument(
        "--redis-url", help="Redis for the rate counters (default: an embedded redis-server)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    arguments = parser.parse_args()

    if arguments.child:  # one backend per process: Django is set up once per process
        print(json.dumps(measure(arguments.child, arguments.operations, arguments.kinds)))
        return
    with contextlib.ExitStack() as stack:
        redis_url = arguments.redis_url or stack.enter_context(_embedded_redis())
        _report(arguments, redis_url)


@contextlib.contextmanager
def _embedded_redis() -> Iterator[str]:
    """A redis-server of our own on a free port: a turn's quota check reads Redis's clock."""
    from devtools.embedded_redis import EmbeddedRedis
    from devtools.processes import free_port

    with tempfile.TemporaryDirectory(prefix="bench-governance-") as directory:
        embedded = EmbeddedRedis(port=free_port(), directory=Path(directory))
        embedded.start()
        try:
            yield embedded.url
        finally:
            embedded.stop()


def _report(arguments: argparse.Namespace, redis_url: str) -> None:
    print(f"Reservations against hard budgets, {MODEL_ID}, max_gen_len {MAX_GEN_LEN};")
    print(f"{arguments.operations} timed reservations per row.")
    print("clients as threads share one process (one GIL); as processes they do not.")
    print("lock ms: p50 of how long a reservation held its budget row, locked to committed;")
    print("one tenant cannot reserve faster than 1000 / lock ms per second.")
    print("CPU ms: clients' and PostgreSQL backends' CPU per reservation; cores: CPU used.\n")
    header = (
        f"{'backend':<9} {'clients as':<10} {'mode':<8} {'clients':>7} {'tenants':>7} "
        f"{'budget':>6} {'reserv./s':>9} {'p50 ms':>7} {'p95 ms':>7} {'lock ms':>7} "
        f"{'CPU ms':>6} {'cores':>5}"
    )
    print(header)
    print("-" * len(header))
    summaries: list[str] = []
    for backend in arguments.backends:
        try:
            with throwaway_database(backend, arguments.postgres_admin_url) as database_url:
                output = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        database_url,
                        "--operations",
                        str(arguments.operations),
                        "--kinds",
                        *arguments.kinds,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                    env={**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url},
                ).stdout
        except subprocess.CalledProcessError as error:
            print(f"{backend:<9} failed: {error.stderr.strip().splitlines()[-1:]}")
            continue
        except Exception as error:
            print(f"{backend:<9} unavailable: {error}")
            continue
        rows = [Row(**data) for data in json.loads(output.strip().splitlines()[-1])]
        for row in rows:
            lock = "-" if row.lock_p50_ms is None else f"{row.lock_p50_ms:.2f}"
            print(
                f"{backend:<9} {row.kind:<10} {row.mode:<8} {row.clients:>7} {row.tenants:>7} "
                f"{'yes' if row.budget else 'no':>6} {row.per_second:>9,.0f} "
                f"{row.p50_ms:>7.1f} {row.p95_ms:>7.1f} {lock:>7} "
                f"{row.cpu_ms_per_reservation:>6.1f} {row.cores_used:>5.2f}"
            )
        if backend == "postgres":
            summaries.extend(ceilings(rows))
    for line in summaries:
        print(line)


def ceilings(rows: list[Row]) -> list[str]:
    """The two limits, from the rows: the row lock for one tenant, CPU for the machine."""
    cores = os.cpu_count() or 1
    lines = ["", f"Ceilings on PostgreSQL ({cores} cores):"]
    for mode in MODES:
        alone = [r for r in rows if r.mode == mode and r.clients == 1 and r.lock_p50_ms]
        spread = [r for r in rows if r.mode == mode and r.tenants > 1]
        if not alone or not spread:
            continue
        lock_ms = statistics.median(r.lock_p50_ms or 0 for r in alone)
        cpu_ms = statistics.median(r.cpu_ms_per_reservation for r in spread)
        lines.append(
            f"  {mode:<8} row lock held {lock_ms:.2f} ms by a lone client: one tenant at most "
            f"{1000 / lock_ms:,.0f}/s"
        )
        lines.append(
            f"  {'':<8} {cpu_ms:.1f} ms of CPU per reservation (and its release) across "
            f"tenants: the machine at most {cores * 1000 / cpu_ms:,.0f}/s"
        )
    return lines


if __name__ == "__main__":
    main()
