"""Where our CPU goes per answer: py-spy on the web server and the worker (peer_compare --profile).

One client sends ``answers`` non-streaming answers one after the other while py-spy samples
the uvicorn process and the Celery worker (``py-spy record --format raw``: collapsed stacks,
threads on a CPU only). Samples / rate / answers is CPU milliseconds per answer; /proc gives
each process's utime + stime over the same window, as a check (py-spy's own pauses of the
process it samples inflate those a little).

py-spy is not a dependency of the project: ``.venv/bin/pip install py-spy`` for this.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.generation import format_table

SAMPLE_RATE = 250  # per second
TOP = 15

# Innermost frame's file -> area. First match wins; paths are as py-spy prints them
# (relative to site-packages or the repository).
AREAS: list[tuple[str, str]] = [
    ("django/db/backends/sqlite3", "ORM: SQLite driver"),
    ("psycopg", "ORM: psycopg"),
    ("django/db", "ORM: Django query building"),
    ("sqlite3/", "ORM: SQLite driver"),
    ("redis/", "redis-py"),
    ("hiredis", "redis-py"),
    ("kombu/", "Celery/kombu"),
    ("celery/", "Celery/kombu"),
    ("billiard/", "Celery/kombu"),
    ("vine/", "Celery/kombu"),
    ("amqp/", "Celery/kombu"),
    ("botocore/", "boto3/botocore"),
    ("boto3/", "boto3/botocore"),
    ("urllib3/", "boto3/botocore"),
    ("http/client", "boto3/botocore"),
    ("tiktoken", "tokenizer"),
    ("rest_framework/", "DRF"),
    ("drf_spectacular/", "DRF"),
    ("asgiref/", "asgiref (sync/async hops)"),
    ("concurrent/futures", "threads"),
    ("threading.py", "threads"),
    ("queue.py", "threads"),
    ("uvicorn/", "uvicorn/asyncio"),
    ("asyncio/", "uvicorn/asyncio"),
    ("uvloop", "uvicorn/asyncio"),
    ("httptools", "uvicorn/asyncio"),
    ("logging/", "logging"),
    ("config/logging.py", "logging"),
    ("pythonjsonlogger", "logging"),
    ("json/", "json"),
    ("prometheus_client/", "metrics"),
    ("django/", "Django (other)"),
    ("decimal", "Decimal"),
    ("_strptime", "datetime parsing"),
    ("datetime", "datetime parsing"),
    ("uuid", "uuid"),
    ("re/", "regex"),
    ("copy.py", "copy"),
    ("conversations/", "ours: conversations"),
    ("billing/", "ours: billing"),
    ("openai_api/", "ours: openai_api"),
    ("models_catalog/", "ours: models_catalog"),
    ("idempotency/", "ours: idempotency"),
    ("config/", "ours: config"),
]
# Named costs: samples whose stack holds a frame containing the pattern (inclusive), in the
# process named (None: any); a pattern starting with "!" counts the stacks without it.
SPOTS: list[tuple[str, str, str | None]] = [
    ("Celery apply_async (enqueue the answer's task)", "Task.apply_async (", "web"),
    ("  of which: result-backend lookup (entry points)", "load_extension_class_names", "web"),
    ("new database connection (CONN_MAX_AGE=0)", "get_new_connection (", None),
    ("database connection close", "BaseDatabaseWrapper.close (", None),
    ("new Redis connection (connect, handshake)", "AbstractConnection.connect (", None),
    ("redis-py reading its version (each new connection)", "get_lib_version (", None),
    ("answer stream read (XREAD until done)", "read_until_final (", "web"),
    ("outside the view: uvicorn, handler, middleware, hops", "!APIView.dispatch (", "web"),
    ("API key authentication", "api_key_authenticate (", "web"),
    ("reservation (budgets and quotas)", "reservation_create (", "web"),
    ("  of which: quota pre-check", "quota_precheck (", "web"),
    ("rate-limit counters in Redis (Lua)", "billing/rate_limits.py", None),
    ("DRF serializers", "rest_framework/serializers.py", "web"),
    ("  of which: usage lookup per message", "get_usage (", "web"),
    ("token counting (tiktoken)", "models_catalog/tokenizer", None),
    ("claim the answer (4 queries)", "_claim (conversations/services/generation.py", "worker"),
    ("the boto3 stream (signing, parsing)", "stream (models_catalog/bedrock/client", "worker"),
    ("publish to the answer stream", "publish (conversations/answer_stream.py", "worker"),
    ("store, provider ledger, settle (_finish)", "_finish (conversations/services/gen", "worker"),
    ("lease renewal (one thread per process)", "_LeaseRenewer", "worker"),
    ("outside our task: Celery consumer, kombu, ack", "!generate_answer (", "worker"),
    ("logging", "logging/__init__.py", None),
]
OUR_PACKAGES = (
    "conversations/", "billing/", "openai_api/", "models_catalog/", "idempotency/", "config/",
)  # fmt: skip


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy (not a dependency)")
    return found


@dataclass
class Recorder:
    name: str
    process: subprocess.Popen[bytes]
    output: Path

    def stop(self) -> list[tuple[list[str], int]]:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        stacks = []
        for line in self.output.read_text(errors="replace").splitlines():
            frames, _, count = line.rpartition(" ")
            if frames and count.isdigit():
                stacks.append((frames.split(";"), int(count)))
        return stacks


def record(name: str, pid: int, directory: Path, tag: str) -> Recorder:
    output = directory / f"py-spy-{tag}-{name}.txt"
    process = subprocess.Popen(
        [py_spy(), "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE), "--format", "raw",
         "--nonblocking",
         "--output", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return Recorder(name, process, output)


def _file_of(frame: str) -> str:
    # "function (path/to/file.py:123)"
    if "(" not in frame:
        return frame
    return frame.rsplit("(", 1)[1].rstrip(")").rsplit(":", 1)[0]


def _function_of(frame: str) -> str:
    # The function and its file, without the line: one row per function.
    if "(" not in frame:
        return frame
    function, location = frame.rsplit(" (", 1)
    return f"{function} ({location.rstrip(')').rsplit(':', 1)[0]})"


def area_of(frame: str) -> str:
    path = _file_of(frame)
    for prefix, area in AREAS:
        if prefix in path:
            return area
    return "other"


@dataclass(frozen=True)
class Profile:
    name: str
    samples: int
    self_by_function: Counter[str]
    inclusive_by_function: Counter[str]
    self_by_area: Counter[str]
    spots: Counter[str]


def summarise(name: str, stacks: Sequence[tuple[list[str], int]]) -> Profile:
    self_by_function: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    spots: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        total += count
        joined = ";".join(frames)
        for label, pattern, process in SPOTS:
            if process not in (None, name):
                continue
            absent = pattern.startswith("!")
            if (pattern.removeprefix("!") in joined) != absent:
                spots[label] += count
        leaf = frames[-1]
        self_by_function[_function_of(leaf)] += count
        areas[area_of(leaf)] += count
        for function in {_function_of(frame) for frame in frames}:
            inclusive[function] += count
    return Profile(name, total, self_by_function, inclusive, areas, spots)


def report(profile: Profile, answers: int, cpu_seconds: float) -> str:
    """Shares of the samples, and milliseconds per answer scaled to the process's /proc CPU:
    on a loaded machine py-spy also counts threads that are runnable but waiting for a core,
    so its raw sample time runs above the CPU actually used."""
    share = profile.samples or 1
    sampled = profile.samples / SAMPLE_RATE

    def ms(count: int) -> str:
        return f"{count / share * cpu_seconds / answers * 1000:.2f}"

    lines = [
        f"{profile.name}: {cpu_seconds / answers * 1000:.1f} ms CPU per answer (/proc); "
        f"{profile.samples} py-spy samples at {SAMPLE_RATE} Hz = {sampled / answers * 1000:.1f} "
        "ms per answer on a core or waiting for one. ms/answer below: share x /proc CPU."
    ]
    spots = []
    for label, _, _ in SPOTS:
        count = profile.spots.get(label, 0)
        if count:
            spots.append([label, ms(count), f"{count / share * 100:.1f}%"])
    lines.append(format_table(["named cost (inclusive)", "ms/answer", "share"], spots))
    areas = [
        [area, ms(count), f"{count / share * 100:.0f}%"]
        for area, count in profile.self_by_area.most_common()
    ]
    lines.append(format_table(["where the CPU is (innermost frame)", "ms/answer", "share"], areas))
    top_self = [
        [function[:110], ms(count), f"{count / share * 100:.1f}%"]
        for function, count in profile.self_by_function.most_common(TOP)
    ]
    lines.append(format_table(["top self (function)", "ms/answer", "share"], top_self))
    ours = [
        (function, count)
        for function, count in profile.inclusive_by_function.most_common()
        if any(package in function for package in OUR_PACKAGES)
    ][:TOP]
    top_ours = [
        [function[:110], ms(count), f"{count / share * 100:.1f}%"] for function, count in ours
    ]
    lines.append(format_table(["our functions, inclusive", "ms/answer", "share"], top_ours))
    return "\n".join(lines)


def profile_answers(
    *,
    pids: dict[str, int],
    cpu_of: Callable[[], dict[str, float]],
    send: Callable[[], object],
    answers: int,
    directory: Path,
    tag: str,
) -> tuple[list[Profile], dict[str, float], float]:
    """Record `pids` while `send` runs `answers` times; profiles, /proc CPU s, wall s."""
    recorders = [record(name, pid, directory, tag) for name, pid in pids.items()]
    time.sleep(1.0)  # py-spy attaches
    before = cpu_of()
    started = time.perf_counter()
    for _ in range(answers):
        send()
    time.sleep(0.3)
    wall = time.perf_counter() - started
    after = cpu_of()
    profiles = [summarise(recorder.name, recorder.stop()) for recorder in recorders]
    used = {name: after[name] - before.get(name, 0.0) for name in after}
    return profiles, used, wall
