"""Our per-answer overhead against the LiteLLM proxy's, in front of the same Bedrock stand-in.

Three systems answer the same questions from one Bedrock stand-in (the local
Bedrock-compatible server, ``python -m devtools.local_bedrock``: zero latency,
answers of ``--answer-tokens`` 100 tokens), and boto3 calling the stand-in directly gives
the floor (what a client that added nothing would see):

- ours (native): the run command (``python -m devtools.stack``, what ``make run`` starts: the
  ASGI web server, one Celery worker with 16 threads, Celery beat, an embedded Redis, SQLite
  in a throwaway file) on free ports, its Bedrock the stand-in, with governance on: a hard
  monthly budget and a quota (rpm, tpm, tokens per day, concurrency) on the demo tenant, far
  above what a run uses, so every answer is reserved, counted and settled and none refused.
  ``POST /api/v1/conversations/{id}/messages`` with ``mode: sync``, each request the first
  turn of a fresh conversation created beforehand (its creation is not timed; its own
  latency is reported apart), so every system gets the same one-message prompt; streaming:
  the async POST, then ``GET /api/v1/messages/{id}/stream`` (SSE) to the first ``delta``;
- ours (/v1/): the same stack's OpenAI-compatible ``POST /v1/chat/completions``: the
  apples-to-apples comparison with LiteLLM;
- LiteLLM: the LiteLLM proxy (``litellm``, one worker, master key only, no database: no
  budgets, no spend logs) with ``bedrock/invoke/<model>`` (Bedrock's InvokeModel API, which
  is all the stand-in implements) and ``aws_bedrock_runtime_endpoint`` the stand-in;
- boto3 floor: ``invoke_model`` / ``invoke_model_with_response_stream`` from this process.

Measured, every phase interleaving the systems (a rotating order per round or short slice,
so the noise of this shared 2-core machine hits every system alike):

1. one client, sync: latency, and overhead over boto3 (the system's time minus the boto3
   call of the same round), p50/p95;
2. one client, streaming: time to first token, and its overhead over boto3's;
3. ``--clients`` concurrent clients, each looping non-streaming requests: answers/s and
   latency (``--duration`` seconds per system, in ``--slices`` slices);
4. ``--clients`` concurrent clients, chats of ``--turns`` turns: per-turn latency (ours
   native: one conversation; ours /v1/: the ``conversation`` extension, one user message per
   request; LiteLLM: the client resends the whole history, as OpenAI clients do);
5. CPU per answer: utime + stime (/proc) of every process of each system (ours: web, worker,
   Redis, beat, and the run command itself; LiteLLM: its process tree) over
   ``--cpu-answers`` non-streaming answers from ``--cpu-clients`` clients (4: under our
   tenant's running cap of 8, so it is the answer's own path), less what the system burns
   idle over the same time. The stand-in and the clients are not counted. Phases 3 and 4
   are metered the same way, and the report says how many of our answers waited for a
   running slot of the tenant's share (GENERATION_TENANT_MAX_RUNNING) meanwhile.

``--profile`` measures something else: py-spy on our web server and worker while one client
sends ``--profile-answers`` sync answers (native, then /v1/), and where their CPU goes
(py-spy is not a project dependency: ``.venv/bin/pip install py-spy``).

    .venv/bin/python benchmarks/peer_compare.py --install-litellm   # first time
    .venv/bin/python benchmarks/peer_compare.py
    .venv/bin/python benchmarks/peer_compare.py --postgres   # PostgreSQL + Redis
    .venv/bin/python benchmarks/peer_compare.py --profile    # where our CPU goes

``--postgres`` runs our stack on a bench database (created and dropped; default
``postgres://postgres@127.0.0.1:5432/bench_peer_compare``) and the Redis of ``--redis-url``
(default ``redis://127.0.0.1:6379/12``). Those servers are shared with whatever else runs:
Redis is counted whole, PostgreSQL as the backends serving our database. The LiteLLM
config and every process's log are kept in var/peer_compare/. About four minutes with the
defaults (LiteLLM alone takes 30-60 s to start here). Every process started is stopped at
the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import resource
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _peer_processes as processes
from benchmarks._peer_clients import (
    FLOOR,
    SYSTEMS,
    Caller,
    Outcome,
    Targets,
    bedrock_client,
    question,
)
from benchmarks.generation import _interrupt, format_table, percentile
from devtools.processes import StartError

MODEL_ID = processes.MODEL_ID
LABELS = {
    "native": "ours (native)",
    "v1": "ours (/v1/)",
    "litellm": "LiteLLM",
    FLOOR: "boto3 floor",
}
IDLE_SECONDS = 5.0
SETTLE_SECONDS = 0.5  # after a metered run: work that follows the last response
DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/bench_peer_compare"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"


def rotated(items: Sequence[str], turn: int) -> list[str]:
    shift = turn % len(items)
    return [*items[shift:], *items[:shift]]


# ---------------------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------------------


@dataclass
class SingleClient:
    """Phases 1 and 2: one client, the systems in turn within each round."""

    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)
    overheads: dict[str, list[float]] = field(default_factory=dict)
    """System -> its time minus the boto3 call of the same round, per round."""


def single_client(caller: Caller, rounds: int, streaming: bool) -> SingleClient:
    result = SingleClient({name: [] for name in (*SYSTEMS, FLOOR)}, {name: [] for name in SYSTEMS})
    for round_number in range(rounds):
        caller.conversations.append(caller.create_conversation())  # not timed
        this_round: dict[str, Outcome] = {}
        for system in rotated((FLOOR, *SYSTEMS), round_number):
            outcome = caller.stream(system) if streaming else caller.sync(system)
            result.outcomes[system].append(outcome)
            this_round[system] = outcome
        floor = this_round[FLOOR]
        for system in SYSTEMS:
            outcome = this_round[system]
            if outcome.failure is None and floor.failure is None:
                if streaming and outcome.first_token is not None and floor.first_token is not None:
                    result.overheads[system].append(outcome.first_token - floor.first_token)
                elif not streaming:
                    result.overheads[system].append(outcome.seconds - floor.seconds)
    return result


@dataclass
class LoopResult:
    """Phase 3 (and the CPU phase): concurrent clients looping requests."""

    outcomes: list[Outcome] = field(default_factory=list)
    elapsed: float = 0.0
    inline_creations: int = 0

    @property
    def completed(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.failure is None]


def _prepare_conversations(callers: Sequence[Caller], per_caller: int) -> None:
    """Fresh conversations for the native requests to come, created before timing starts."""
    with ThreadPoolExecutor(max_workers=len(callers)) as pool:
        for caller in callers:
            missing = per_caller - len(caller.conversations)
            if missing > 0:
                pool.submit(
                    lambda c=caller, n=missing: c.conversations.extend(
                        c.create_conversation() for _ in range(n)
                    )
                )


def closed_loop(
    callers: Sequence[Caller],
    system: str,
    *,
    seconds: float | None = None,
    answers: int | None = None,
) -> LoopResult:
    """Every caller loops sync requests until `seconds` pass or `answers` are sent."""
    result = LoopResult()
    lock = threading.Lock()
    remaining = [answers if answers is not None else math.inf]
    start = threading.Barrier(len(callers) + 1)
    deadline = [math.inf]
    inline_before = sum(caller.inline_creations for caller in callers)

    def claim() -> bool:
        with lock:
            if remaining[0] <= 0 or time.perf_counter() >= deadline[0]:
                return False
            remaining[0] -= 1
            return True

    def run(caller: Caller) -> None:
        start.wait()
        mine = []
        while claim():
            mine.append(caller.sync(system))
        with lock:
            result.outcomes += mine

    threads = [threading.Thread(target=run, args=(caller,), daemon=True) for caller in callers]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    if seconds is not None:
        deadline[0] = started + seconds
    start.wait()
    for thread in threads:
        thread.join()
    result.elapsed = time.perf_counter() - started
    result.inline_creations = sum(c.inline_creations for c in callers) - inline_before
    return result


def concurrent_clients(
    callers: Sequence[Caller],
    seconds: float,
    slices: int,
    meter: Meter,
) -> tuple[dict[str, LoopResult], dict[str, CpuResult]]:
    """Phase 3: each system for seconds/slices at a time, in a rotating order."""
    results = {name: LoopResult() for name in (*SYSTEMS, FLOOR)}
    cpu = {name: CpuResult() for name in (*SYSTEMS, FLOOR)}
    per_slice = seconds / slices
    native_rate = 4.0  # answers/s per client, a generous first guess; then what was seen
    for slice_number in range(slices):
        for system in rotated((*SYSTEMS, FLOOR), slice_number):
            if system == "native":
                _prepare_conversations(callers, math.ceil(native_rate * per_slice * 1.5) + 2)
            print(f"  {LABELS[system]}, slice {slice_number + 1}/{slices} ...", file=sys.stderr)
            loop = meter.run(
                system, cpu[system], lambda s=system: closed_loop(callers, s, seconds=per_slice)
            )
            total = results[system]
            total.outcomes += loop.outcomes
            total.elapsed += loop.elapsed
            total.inline_creations += loop.inline_creations
            if system == "native" and loop.elapsed > 0:
                native_rate = len(loop.outcomes) / len(callers) / loop.elapsed
    return results, cpu


@dataclass
class Chat:
    """One client's chat with one system, continued slice after slice."""

    conversation: str | None = None
    """Ours: the stored conversation (created before its first turn, not timed)."""
    history: list[dict[str, str]] = field(default_factory=list)
    """LiteLLM: every message so far, resent with each turn as OpenAI clients do."""
    broken: bool = False


def chat_turns(caller: Caller, system: str, state: Chat, turns: int) -> list[Outcome]:
    """Phase 4: the next `turns` turns of a chat."""
    outcomes = []
    for _ in range(turns):
        if state.broken:
            break
        content = question()
        if system == "litellm":
            state.history.append({"role": "user", "content": content})
            outcome = caller.openai_sync("litellm", state.history)
            state.history.append({"role": "assistant", "content": outcome.text})
        elif system == "native":
            outcome = caller.native_sync(state.conversation or "", content)
        else:
            outcome = caller.openai_sync(
                "v1", [{"role": "user", "content": content}], conversation=state.conversation
            )
        outcomes.append(outcome)
        state.broken = outcome.failure is not None
    return outcomes


def chats(
    callers: Sequence[Caller], turns: int, slices: int, meter: Meter
) -> tuple[dict[str, LoopResult], dict[str, CpuResult]]:
    """Every system's chats are cut into `slices` runs of turns, the systems taking turns
    (ABC, CBA, ...): each system gets early and late turns at comparable times."""
    results = {name: LoopResult() for name in SYSTEMS}
    cpu = {name: CpuResult() for name in (*SYSTEMS, FLOOR)}
    states = {(index, name): Chat() for index in range(len(callers)) for name in SYSTEMS}
    pieces = [turns // slices + (1 if index < turns % slices else 0) for index in range(slices)]
    for slice_number, piece in enumerate(pieces):
        order = list(SYSTEMS) if slice_number % 2 == 0 else list(reversed(SYSTEMS))
        for system in order:
            print(
                f"  {LABELS[system]}, {piece} turns (slice {slice_number + 1}/{slices}) ...",
                file=sys.stderr,
            )
            if system != "litellm":  # conversations are made before the clock starts
                missing = [i for i in range(len(callers)) if states[i, system].conversation is None]
                with ThreadPoolExecutor(max_workers=len(callers)) as pool:
                    made = list(pool.map(lambda i: callers[i].create_conversation(), missing))
                for index, conversation in zip(missing, made, strict=True):
                    states[index, system].conversation = conversation

            def run_slice(name: str = system, count: int = piece) -> LoopResult:
                started = time.perf_counter()
                with ThreadPoolExecutor(max_workers=len(callers)) as pool:
                    futures = [
                        pool.submit(chat_turns, caller, name, states[index, name], count)
                        for index, caller in enumerate(callers)
                    ]
                    outcomes = [outcome for future in futures for outcome in future.result()]
                return LoopResult(outcomes, time.perf_counter() - started)

            loop = meter.run(system, cpu[system], run_slice)
            results[system].outcomes += loop.outcomes
            results[system].elapsed += loop.elapsed
    return results, cpu


# ---------------------------------------------------------------------------------------
# CPU
# ---------------------------------------------------------------------------------------


@dataclass
class Systems:
    ours: processes.OurStack
    litellm: processes.LiteLLMProxy

    def snapshot(self, system: str) -> dict[str, float]:
        """Role -> CPU seconds so far, for the processes of one system."""
        if system == "litellm":
            return {"LiteLLM proxy": processes.cpu_by_role({"proxy": self.litellm.pids()})["proxy"]}
        if system == FLOOR:
            return {}
        cpu = processes.cpu_by_role(self.ours.roles())
        cpu.update({name: probe() for name, probe in self.ours.extra_probes.items()})
        return cpu


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuResult:
    answers: int = 0
    failures: int = 0
    seconds: float = 0.0
    by_role: dict[str, float] = field(default_factory=dict)
    """CPU seconds used over the rounds, idle burn taken off."""
    client: float = 0.0
    inline_creations: int = 0
    tasks: int = 0
    """Ours: generation tasks the worker received (a waiting answer's wake-up too)."""
    woken: int = 0
    """Ours: of those, wake-ups of answers that waited for the tenant's share."""

    def per_answer(self) -> float | None:
        if not self.answers or not self.by_role:
            return None
        return sum(self.by_role.values()) / self.answers


def idle_rates(systems: Systems) -> dict[str, dict[str, float]]:
    """CPU seconds per second each process burns with nothing to do (beat, timers, polls)."""
    names = ("native", "litellm")
    before = {name: systems.snapshot(name) for name in names}
    time.sleep(IDLE_SECONDS)
    after = {name: systems.snapshot(name) for name in names}
    rates = {
        name: {role: (after[name][role] - before[name].get(role, 0.0)) / IDLE_SECONDS
               for role in after[name]}
        for name in names
    }  # fmt: skip
    rates["v1"] = rates["native"]
    return rates


class Meter:
    """CPU of a system's processes around a run of requests, less their idle burn."""

    def __init__(self, systems: Systems, idle: dict[str, dict[str, float]]) -> None:
        self.systems = systems
        self.idle = idle

    def run(self, system: str, into: CpuResult, action: Callable[[], LoopResult]) -> LoopResult:
        ours = system in ("native", "v1")
        tasks_before = self.systems.ours.task_counts() if ours else (0, 0)
        before, client_before = self.systems.snapshot(system), _client_cpu()
        started = time.perf_counter()
        loop = action()
        time.sleep(SETTLE_SECONDS)
        wall = time.perf_counter() - started
        after, client_after = self.systems.snapshot(system), _client_cpu()
        into.answers += len(loop.completed)
        into.failures += len(loop.outcomes) - len(loop.completed)
        into.seconds += wall
        into.client += client_after - client_before
        into.inline_creations += loop.inline_creations
        idle = self.idle.get(system, {})
        for role, value in after.items():
            used = value - before.get(role, value) - idle.get(role, 0.0) * wall
            into.by_role[role] = into.by_role.get(role, 0.0) + used
        if ours:
            tasks_after = self.systems.ours.task_counts()
            into.tasks += tasks_after[0] - tasks_before[0]
            into.woken += tasks_after[1] - tasks_before[1]
        return loop


def cpu_per_answer(callers: Sequence[Caller], meter: Meter, answers: int) -> dict[str, CpuResult]:
    """Phase 5: a fixed number of answers per system, in two halves (ABCD, DCBA)."""
    results = {name: CpuResult() for name in (*SYSTEMS, FLOOR)}
    halves = [answers // 2, answers - answers // 2]
    for half, count in enumerate(halves):
        order = [*SYSTEMS, FLOOR] if half == 0 else [FLOOR, *reversed(SYSTEMS)]
        for system in order:
            print(f"  {LABELS[system]}: {count} answers ...", file=sys.stderr)
            if system == "native":
                # Fast clients take more than their share: twice it, so none creates inline.
                _prepare_conversations(callers, 2 * math.ceil(count / len(callers)) + 2)
            meter.run(
                system,
                results[system],
                lambda s=system, n=count: closed_loop(callers, s, answers=n),
            )
    return results


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def _ms_pair(values: Sequence[float]) -> str:
    p50, p95 = percentile(values, 50), percentile(values, 95)
    if p50 is None or p95 is None:
        return "-"
    return f"{p50 * 1000:.1f} / {p95 * 1000:.1f}"


def _p50(values: Sequence[float]) -> float | None:
    return percentile(values, 50)


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs <= 0:
        return "-"
    return f"{ours / theirs:.2f}"


def _ratios(values: dict[str, float | None]) -> str:
    return (
        f"native {_ratio(values.get('native'), values.get('litellm'))}, "
        f"/v1/ {_ratio(values.get('v1'), values.get('litellm'))}"
    )


def _seconds(outcomes: Sequence[Outcome]) -> list[float]:
    return [outcome.seconds for outcome in outcomes if outcome.failure is None]


def _first_tokens(outcomes: Sequence[Outcome]) -> list[float]:
    return [o.first_token for o in outcomes if o.failure is None and o.first_token is not None]


@dataclass
class Results:
    sync: SingleClient
    stream: SingleClient
    loops: dict[str, LoopResult]
    chats: dict[str, LoopResult]
    loop_cpu: dict[str, CpuResult]
    chat_cpu: dict[str, CpuResult]
    cpu: dict[str, CpuResult]
    idle: dict[str, dict[str, float]]
    creation_seconds: list[float]


def main_rows(results: Results, clients: int, turns: int, cpu_clients: int) -> list[list[str]]:
    rows = []
    every = (*SYSTEMS, FLOOR)

    def row(label: str, cells: dict[str, str], ratio: str) -> None:
        rows.append([label, *(cells.get(name, "-") for name in every), ratio])

    sync_latency = {n: _seconds(results.sync.outcomes[n]) for n in every}
    row("1 client, sync: latency p50 / p95 ms", {n: _ms_pair(v) for n, v in sync_latency.items()},
        _ratios({n: _p50(v) for n, v in sync_latency.items()}))  # fmt: skip
    row("1 client, sync: overhead over boto3 p50 / p95 ms",
        {**{n: _ms_pair(results.sync.overheads[n]) for n in SYSTEMS}, FLOOR: "0"},
        _ratios({n: _p50(results.sync.overheads[n]) for n in SYSTEMS}))  # fmt: skip
    ttft = {n: _first_tokens(results.stream.outcomes[n]) for n in every}
    row("1 client, stream: TTFT p50 / p95 ms", {n: _ms_pair(v) for n, v in ttft.items()},
        _ratios({n: _p50(v) for n, v in ttft.items()}))  # fmt: skip
    row("1 client, stream: TTFT overhead over boto3 p50 / p95 ms",
        {**{n: _ms_pair(results.stream.overheads[n]) for n in SYSTEMS}, FLOOR: "0"},
        _ratios({n: _p50(results.stream.overheads[n]) for n in SYSTEMS}))  # fmt: skip
    stream_total = {n: _seconds(results.stream.outcomes[n]) for n in every}
    row("1 client, stream: whole answer p50 / p95 ms",
        {n: _ms_pair(v) for n, v in stream_total.items()},
        _ratios({n: _p50(v) for n, v in stream_total.items()}))  # fmt: skip
    rates = {
        n: (len(loop.completed) / loop.elapsed if loop.elapsed else None)
        for n, loop in results.loops.items()
    }
    row(f"{clients} clients, sync: answers/s",
        {n: f"{rate:.1f}" if rate is not None else "-" for n, rate in rates.items()},
        _ratios(rates))  # fmt: skip
    loop_latency = {n: _seconds(loop.outcomes) for n, loop in results.loops.items()}
    row(f"{clients} clients, sync: latency p50 / p95 ms",
        {n: _ms_pair(v) for n, v in loop_latency.items()},
        _ratios({n: _p50(v) for n, v in loop_latency.items()}))  # fmt: skip
    turn_latency = {n: _seconds(loop.outcomes) for n, loop in results.chats.items()}
    row(f"{clients} clients, {turns}-turn chats: per-turn p50 / p95 ms",
        {n: _ms_pair(v) for n, v in turn_latency.items()},
        _ratios({n: _p50(v) for n, v in turn_latency.items()}))  # fmt: skip
    turn_rates = {
        n: (len(loop.completed) / loop.elapsed if loop.elapsed else None)
        for n, loop in results.chats.items()
    }
    row(f"{clients} clients, {turns}-turn chats: turns/s",
        {n: f"{rate:.1f}" if rate is not None else "-" for n, rate in turn_rates.items()},
        _ratios(turn_rates))  # fmt: skip
    for label, by_system in (
        (f"CPU ms per answer, {clients} clients (phase 3)", results.loop_cpu),
        (f"CPU ms per turn, {turns}-turn chats (phase 4)", results.chat_cpu),
        (f"CPU ms per answer, {cpu_clients} clients (phase 5)", results.cpu),
    ):
        cpu = {n: r.per_answer() for n, r in by_system.items()}
        row(label,
            {n: f"{value * 1000:.1f}" if value is not None else "-" for n, value in cpu.items()},
            _ratios(cpu))  # fmt: skip
    failures = {
        n: sum(o.failure is not None for o in [
            *results.sync.outcomes.get(n, []), *results.stream.outcomes.get(n, []),
            *(results.loops[n].outcomes if n in results.loops else []),
            *(results.chats[n].outcomes if n in results.chats else []),
        ]) + results.cpu[n].failures
        for n in every
    }  # fmt: skip
    row("failed requests", {n: str(count) for n, count in failures.items()}, "")
    return rows


HEADERS = ["metric", *(LABELS[n] for n in (*SYSTEMS, FLOOR)), "ours/LiteLLM (p50)"]


def cpu_rows(
    by_system: dict[str, CpuResult], idle: dict[str, dict[str, float]]
) -> tuple[list[str], list[list[str]]]:
    roles: list[str] = []
    for name in ("native", "v1", "litellm"):
        for role in by_system[name].by_role:
            if role not in roles:
                roles.append(role)
    headers = ["system", "answers", *(f"{role} ms" for role in roles), "clients ms"]
    rows = []
    for name in (*SYSTEMS, FLOOR):
        result = by_system[name]
        answers = result.answers or 1
        cells = [
            f"{result.by_role[role] / answers * 1000:.1f}" if role in result.by_role else ""
            for role in roles
        ]
        rows.append([LABELS[name], str(result.answers), *cells,
                     f"{result.client / answers * 1000:.1f}"])  # fmt: skip
    idle = [
        "idle, % of a core",
        "",
        *(
            f"{idle['native'].get(role, idle['litellm'].get(role, 0.0)) * 100:.1f}"
            for role in roles
        ),
        "",
    ]
    rows.append(idle)
    return headers, rows


def failure_lines(results: Results) -> list[str]:
    kinds: Counter[str] = Counter()
    groups = [
        ("1 client sync", results.sync.outcomes),
        ("1 client stream", results.stream.outcomes),
        ("concurrent", {n: loop.outcomes for n, loop in results.loops.items()}),
        ("chats", {n: loop.outcomes for n, loop in results.chats.items()}),
    ]
    for phase, by_system in groups:
        for system, outcomes in by_system.items():
            for outcome in outcomes:
                if outcome.failure is not None:
                    kinds[f"{phase}, {LABELS[system]}: {outcome.failure}"] += 1
    return [f"{count} x {kind}" for kind, count in kinds.most_common(12)]


def print_report(
    results: Results,
    arguments: argparse.Namespace,
    argv: Sequence[str],
    systems: Systems,
    governance: list[str],
    loads: tuple[float, float],
) -> None:
    print(f"$ {shlex.join(['.venv/bin/python', 'benchmarks/peer_compare.py', *argv])}")
    print(
        f"Machine: {os.cpu_count()} CPUs ({platform.machine()}, Python "
        f"{platform.python_version()}), shared with other work: load average "
        f"{loads[0]:.2f} at start, {loads[1]:.2f} at end. Systems interleaved (rotating order "
        "per round, slice or half), so that noise falls on all alike.\n"
        f"Stand-in: local Bedrock server, {arguments.seconds_per_token:g} s per token (0: no "
        f"upstream delay), {arguments.answer_tokens}-token answers; "
        f"max tokens {arguments.max_tokens}; {MODEL_ID}.\n"
        f"Ours: python -m devtools.stack ({systems.ours.description}; DEBUG "
        f"{'on' if arguments.django_debug else 'off'}), governance on: "
        + " ".join(governance)
        + f"\nLiteLLM {systems.litellm.version}: litellm --num_workers 1, {processes.LITELLM_MODEL}"
        ", aws_bedrock_runtime_endpoint = the stand-in, master key only (no database: no "
        "budgets, keys or spend logs); each logs one access line per request (LiteLLM: "
        "uvicorn's; ours: its own JSON access log, uvicorn's being off)."
    )
    rows = main_rows(results, arguments.clients, arguments.turns, arguments.cpu_clients)
    print(format_table(HEADERS, rows))
    print(
        "Last column: ours / LiteLLM, of the p50s (or of the rates): above 1 means ours is "
        "slower or costlier, except for answers/s and turns/s, where below 1 does."
    )
    creations = _ms_pair(results.creation_seconds)
    inline = sum(loop.inline_creations for loop in results.loops.values())
    print(
        f"Phases 1-2: {arguments.rounds} rounds each, one request per system per round; "
        "overhead = the system's time minus the boto3 call of the same round. Native: each "
        "request is the first turn of a fresh conversation created before it (not timed; "
        f"POST /api/v1/conversations took {creations} ms p50 / p95"
        + (f"; {inline} created inline under load" if inline else "")
        + "). Ours streaming: async POST then SSE GET, timed from the POST.\n"
        f"Phase 3: {arguments.clients} clients, {arguments.duration:g} s per system in "
        f"{arguments.slices} slices. Phase 4: {arguments.clients} clients x "
        f"one chat of {arguments.turns} turns per system, in {arguments.chat_slices} slices of "
        "turns, the systems alternating (ours native: one conversation, created before the "
        "clock starts; ours /v1/: the `conversation` extension; LiteLLM: the whole history resent "
        "each turn).\n"
        f"CPU: the system's processes (stand-in and clients excluded), less their idle burn "
        f"over the same wall time, per completed answer; phase 5: {arguments.cpu_answers} "
        f"answers per system from {arguments.cpu_clients} clients, in two halves (ABCD DCBA)."
    )
    for system in ("native", "v1"):
        for phase, by_system in (
            ("phase 3", results.loop_cpu),
            ("phase 4", results.chat_cpu),
            ("phase 5", results.cpu),
        ):
            result = by_system[system]
            if result.woken:
                print(
                    f"{LABELS[system]}, {phase}: {result.woken} of {result.tasks} generation "
                    "tasks were wake-ups of answers that waited for a slot (the tenant had "
                    "GENERATION_TENANT_MAX_RUNNING answers running)."
                )
    for phase, clients, by_system in (
        ("phase 3", arguments.clients, results.loop_cpu),
        ("phase 5", arguments.cpu_clients, results.cpu),
    ):
        headers, cpu_table = cpu_rows(by_system, results.idle)
        print(
            f"\nCPU milliseconds per answer by process, {phase} ({clients} clients; clients: "
            "this benchmark's own process):"
        )
        print(format_table(headers, cpu_table))
    failures = failure_lines(results)
    print(f"Failures: {'none' if not failures else ''}")
    for line in failures:
        print(f"  {line}")
    started = (("our stack", systems.ours.process), ("LiteLLM", systems.litellm.process))
    for name, process in started:
        if process.process.poll() is not None:
            said = [line for line in process.log().splitlines() if line.startswith("[stack]")]
            print(
                f"{name} EXITED during the run (code {process.process.returncode}); its last "
                f"words: {' | '.join(said[-3:]) or process.log()[-300:]}"
            )
    restarts = systems.ours.restarts()
    if restarts:
        print("Our stack restarted children: " + "; ".join(restarts[:5]))
    problems = processes.problem_lines(
        systems.ours.process.log(), ("Traceback", "ERROR", "CRITICAL")
    ) + processes.problem_lines(systems.litellm.process.log(), ("Traceback", "ERROR"))
    print(f"Log problems: {len(problems) or 'none'}")
    for line in problems[:10]:
        print(f"  {line}")


# ---------------------------------------------------------------------------------------
# Start-up, checks and the command line
# ---------------------------------------------------------------------------------------


def verify(caller: Caller) -> None:
    """One answer from every system, non-streaming and streaming, before measuring."""
    caller.conversations += [caller.create_conversation(), caller.create_conversation()]
    for system in (FLOOR, *SYSTEMS):
        for kind, outcome in (("sync", caller.sync(system)), ("stream", caller.stream(system))):
            if outcome.failure is not None:
                raise StartError(f"{LABELS[system]} {kind}: {outcome.failure}")
            print(
                f"  {LABELS[system]} {kind}: {outcome.seconds * 1000:.0f} ms "
                "(answer of the expected length)",
                file=sys.stderr,
            )


def warm_up(callers: Sequence[Caller]) -> None:
    for system in (*SYSTEMS, FLOOR):
        if system == "native":
            _prepare_conversations(callers, 2)
        closed_loop(callers, system, answers=2 * len(callers))
        for caller in callers[:2]:
            if system == "native":
                caller.conversations.append(caller.create_conversation())
            caller.stream(system)


def run_profile(arguments: argparse.Namespace, argv: Sequence[str]) -> int:
    """--profile: py-spy on our web server and worker, one client, sync answers."""
    from benchmarks import _peer_profile

    _peer_profile.py_spy()  # fails early when it is not installed
    directory = processes.WORK_DIRECTORY
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-peer-")))
        print("Starting the stand-in and our stack ...", file=sys.stderr)
        bedrock_url = processes.start_stand_in(
            stack, arguments.answer_tokens, directory, arguments.seconds_per_token
        )
        ours, governance = processes.start_our_stack(
            stack,
            bedrock_url=bedrock_url,
            directory=directory,
            scratch=scratch,
            postgres_url=arguments.postgres,
            redis_url=arguments.redis_url,
            django_debug=arguments.django_debug,
        )
        targets = Targets(
            ours_url=ours.base_url,
            ours_key=ours.api_key,
            litellm_url="",
            litellm_key="",
            bedrock=bedrock_client(bedrock_url),
            answer_tokens=arguments.answer_tokens,
            max_tokens=arguments.max_tokens,
        )
        caller = Caller(targets)
        stack.callback(caller.close)
        answers = arguments.profile_answers
        print(f"$ {shlex.join(['.venv/bin/python', 'benchmarks/peer_compare.py', *argv])}")
        print(
            f"Ours: python -m devtools.stack ({ours.description}), governance on: "
            + " ".join(governance)
            + f"\nOne client, {answers} sync answers of {arguments.answer_tokens} tokens one "
            f"after the other per surface, the stand-in at {arguments.seconds_per_token:g} s "
            f"per token; load average {os.getloadavg()[0]:.2f}."
        )
        for system in ("native", "v1"):
            warm_up_answers = 5 if arguments.seconds_per_token else 20
            caller.conversations = [
                caller.create_conversation() for _ in range(answers + warm_up_answers)
            ]
            for _ in range(warm_up_answers):  # every code path taken once, caches filled
                caller.sync(system)
            roles = ours.roles()
            pids = {"web": roles["web"][0], "worker": roles["worker"][0]}
            failures: list[str] = []

            def send(name: str = system, failed: list[str] = failures) -> None:
                outcome = caller.sync(name)
                if outcome.failure is not None:
                    failed.append(outcome.failure)

            print(f"Profiling {LABELS[system]} ...", file=sys.stderr)
            profiles, used, wall = _peer_profile.profile_answers(
                pids=pids,
                cpu_of=lambda: processes.cpu_by_role(ours.roles()),
                send=send,
                answers=answers,
                directory=directory,
                tag=system,
            )
            cpu = ", ".join(
                f"{role} {seconds / answers * 1000:.1f}" for role, seconds in used.items()
            )
            print(
                f"\n=== {LABELS[system]}: {answers} answers in {wall:.1f} s "
                f"({wall / answers * 1000:.0f} ms each), {len(failures)} failed. /proc CPU ms "
                f"per answer (py-spy attached): {cpu}"
            )
            for profile in profiles:
                print(_peer_profile.report(profile, answers, used.get(profile.name, 0.0)))
    return 0


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--install-litellm", action="store_true",
        help=f"create {processes.LITELLM_VENV.relative_to(processes.REPO_ROOT)} and pip install "
        f"{processes.LITELLM_REQUIREMENT!r} into it first",
    )  # fmt: skip
    parser.add_argument("--litellm-venv", type=Path, default=processes.LITELLM_VENV)
    parser.add_argument(
        "--postgres", nargs="?", const=DEFAULT_POSTGRES_URL, metavar="URL",
        help=f"our stack on PostgreSQL + Redis (default {DEFAULT_POSTGRES_URL})",
    )  # fmt: skip
    parser.add_argument(
        "--redis-url", help=f"with --postgres: our Redis (default {DEFAULT_REDIS_URL})"
    )
    parser.add_argument("--answer-tokens", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=128, help="max_tokens / max_gen_len")
    parser.add_argument(
        "--seconds-per-token", type=float, default=0.0,
        help="the stand-in's pace (0: no upstream delay; 0.02 is 50 tokens/s, like Bedrock)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=40, help="phases 1 and 2 (40)")
    parser.add_argument("--clients", type=int, default=20, help="phases 3-5 (20)")
    parser.add_argument("--duration", type=float, default=10.0, help="phase 3, s per system")
    parser.add_argument("--slices", type=int, default=3, help="phase 3 slices (3)")
    parser.add_argument("--turns", type=int, default=10, help="phase 4 turns per chat (10)")
    parser.add_argument(
        "--chat-slices", type=int, default=2,
        help="phase 4: the chats run in this many slices of turns, the systems alternating (2)",
    )  # fmt: skip
    parser.add_argument("--cpu-answers", type=int, default=160, help="phase 5 per system")
    parser.add_argument(
        "--cpu-clients", type=int, default=4,
        help="phase 5 clients (4: under our tenant's running cap of 8, so no answer is "
        "deferred and the figure is the answer's own path)",
    )  # fmt: skip
    parser.add_argument(
        "--django-debug", action="store_true",
        help="our stack with DEBUG on, as make run's development default (default: off, as "
        "in production and the other benchmarks)",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true",
        help="instead of the comparison: py-spy on our web server and worker over sync answers "
        "from one client (native, then /v1/); needs py-spy (.venv/bin/pip install py-spy)",
    )  # fmt: skip
    parser.add_argument("--profile-answers", type=int, default=100, help="per surface (100)")
    arguments = parser.parse_args(argv)
    if arguments.postgres and arguments.redis_url is None:
        arguments.redis_url = DEFAULT_REDIS_URL
    if arguments.redis_url and not arguments.postgres:
        parser.error("--redis-url goes with --postgres (the default stack embeds its Redis)")
    if not 1 <= arguments.cpu_clients <= arguments.clients:
        parser.error("--cpu-clients must be between 1 and --clients")
    if min(arguments.rounds, arguments.clients, arguments.slices, arguments.turns) < 1:
        parser.error("--rounds, --clients, --slices and --turns must be at least 1")
    if not 1 <= arguments.chat_slices <= arguments.turns:
        parser.error("--chat-slices must be between 1 and --turns")
    if arguments.max_tokens < arguments.answer_tokens:
        parser.error("--max-tokens must be at least --answer-tokens")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = parse_arguments(argv)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if arguments.profile:
        return run_profile(arguments, argv)
    if arguments.install_litellm:
        print(f"Installing {processes.LITELLM_REQUIREMENT} ...", file=sys.stderr)
        processes.install_litellm(arguments.litellm_venv)
    load_at_start = os.getloadavg()[0]
    directory = processes.WORK_DIRECTORY
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-peer-")))
        print("Starting the stand-in, our stack and LiteLLM ...", file=sys.stderr)
        bedrock_url = processes.start_stand_in(
            stack, arguments.answer_tokens, directory, arguments.seconds_per_token
        )
        with ThreadPoolExecutor(max_workers=1) as starter:
            # LiteLLM takes longest to import: it starts while our stack migrates.
            litellm_future = starter.submit(
                processes.start_litellm,
                stack,
                venv=arguments.litellm_venv,
                bedrock_url=bedrock_url,
                directory=directory,
            )
            ours, governance = processes.start_our_stack(
                stack,
                bedrock_url=bedrock_url,
                directory=directory,
                scratch=scratch,
                postgres_url=arguments.postgres,
                redis_url=arguments.redis_url,
                django_debug=arguments.django_debug,
            )
            litellm = litellm_future.result()
        systems = Systems(ours, litellm)
        targets = Targets(
            ours_url=ours.base_url,
            ours_key=ours.api_key,
            litellm_url=litellm.base_url,
            litellm_key=litellm.master_key,
            bedrock=bedrock_client(bedrock_url),
            answer_tokens=arguments.answer_tokens,
            max_tokens=arguments.max_tokens,
        )
        callers = [Caller(targets) for _ in range(arguments.clients)]
        stack.callback(lambda: [caller.close() for caller in callers])
        print("Verifying one answer from each ...", file=sys.stderr)
        verify(callers[0])
        print("Warm-up ...", file=sys.stderr)
        warm_up(callers)
        print(f"Idle CPU for {IDLE_SECONDS:g} s ...", file=sys.stderr)
        idle = idle_rates(systems)
        creation_before = len(callers[0].creation_seconds)
        print("Phase 1: one client, sync ...", file=sys.stderr)
        sync = single_client(callers[0], arguments.rounds, streaming=False)
        print("Phase 2: one client, streaming ...", file=sys.stderr)
        streamed = single_client(callers[0], arguments.rounds, streaming=True)
        creation_seconds = callers[0].creation_seconds[creation_before:]
        meter = Meter(systems, idle)
        print(f"Phase 3: {arguments.clients} clients ...", file=sys.stderr)
        loops, loop_cpu = concurrent_clients(callers, arguments.duration, arguments.slices, meter)
        print(f"Phase 4: {arguments.clients} clients, chats ...", file=sys.stderr)
        chat_results, chat_cpu = chats(callers, arguments.turns, arguments.chat_slices, meter)
        print("Phase 5: CPU per answer ...", file=sys.stderr)
        cpu = cpu_per_answer(callers[: arguments.cpu_clients], meter, arguments.cpu_answers)
        results = Results(
            sync, streamed, loops, chat_results, loop_cpu, chat_cpu, cpu, idle, creation_seconds
        )
        print_report(
            results, arguments, argv, systems, governance, (load_at_start, os.getloadavg()[0])
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("Interrupted; every process this run started is stopped.", file=sys.stderr)
        sys.exit(130)
    except StartError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
