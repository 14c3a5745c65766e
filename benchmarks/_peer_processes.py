"""The processes benchmarks/peer_compare.py runs: the Bedrock stand-in, our stack, LiteLLM.

Each is started as the people who run it would start it: the local Bedrock server with
``python -m devtools.local_bedrock``, our stack with the run command
(``python -m devtools.stack``, the process ``make run`` starts) on free ports and pointed at
the shared stand-in, and the LiteLLM proxy with its own ``litellm`` command from a virtual
environment of its own (``var/litellm-venv``). Every one runs in a session of its own (Ctrl-C
reaches only the benchmark, which stops them in order) and is stopped, with whatever it
started, when the benchmark ends.

CPU is read from /proc: utime + stime of every process of a system, by role.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.generation import _maintenance_url, cpu_seconds, database, manage
from devtools.processes import (
    ManagedProcess,
    StartError,
    descendants,
    free_port,
    start_process,
    stat_fields,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
WORK_DIRECTORY = REPO_ROOT / "var" / "peer_compare"
LITELLM_VENV = REPO_ROOT / "var" / "litellm-venv"
# 1.x, and new enough for the `bedrock/invoke/` route prefix and `aws_bedrock_runtime_endpoint`.
LITELLM_REQUIREMENT = "litellm[proxy]>=1.60,<2"
MODEL_ID = "meta.llama3-1-8b-instruct-v1:0"
# LiteLLM's route prefix for Bedrock's InvokeModel API (the default for Meta is Converse,
# which the stand-in does not implement: a completion that works proves the route).
LITELLM_MODEL = f"bedrock/invoke/{MODEL_ID}"
DEMO_TENANT = "demo"
STARTUP_TIMEOUT_SECONDS = 240.0  # LiteLLM imports for 30-60 s on a busy 2-core machine
STOP_TIMEOUT_SECONDS = 40.0  # the run command stops five children one after the other
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _clean_environment() -> dict[str, str]:
    """This process's environment without what would change the systems' behaviour."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LOCAL_BEDROCK_", "DJANGO_", "LITELLM_", "AWS_"))
        and key not in ("DATABASE_URL", "REDIS_URL", "BEDROCK_ENDPOINT_URL", "PORT", "DEBUG")
    }


# ---------------------------------------------------------------------------------------
# The Bedrock stand-in
# ---------------------------------------------------------------------------------------


def start_stand_in(
    stack: contextlib.ExitStack,
    answer_tokens: int,
    directory: Path,
    seconds_per_token: float = 0.0,
) -> str:
    """The local Bedrock server, fixed answer length, zero latency unless told; its URL."""
    port = free_port()
    process = start_process(
        "Bedrock stand-in",
        [sys.executable, "-m", "devtools.local_bedrock",
         "--port", str(port), "--answer-tokens", str(answer_tokens),
         "--seconds-per-token", str(seconds_per_token)],
        {**_clean_environment(), "PYTHONUNBUFFERED": "1"},
        log_path=directory / "stand-in.log",
        stop_timeout_seconds=STOP_TIMEOUT_SECONDS,
    )  # fmt: skip
    stack.callback(process.stop)
    process.wait_for_log("Local Bedrock server on ", timeout_seconds=STARTUP_TIMEOUT_SECONDS)
    return f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------------------------------
# Our stack: the run command
# ---------------------------------------------------------------------------------------


@dataclass
class OurStack:
    base_url: str
    api_key: str
    process: ManagedProcess
    environment: dict[str, str]
    description: str
    extra_probes: dict[str, Callable[[], float]] = field(default_factory=dict)
    """Servers of this machine not started by the run command: a system Redis (counted
    whole, with whatever else it serves) and our database's PostgreSQL backends."""

    def roles(self) -> dict[str, list[int]]:
        """Role -> pids, from the run command's process tree as it is now."""
        found: dict[str, list[int]] = {"run command": [self.process.pid]}
        for pid in descendants(self.process.pid):
            found.setdefault(_role_of(pid), []).append(pid)
        return found

    def task_counts(self) -> tuple[int, int]:
        """Generation tasks the worker has received so far, and how many of them were
        wake-ups: an answer that waited because its tenant had its fair share running
        (GENERATION_TENANT_MAX_RUNNING), handed a slot when one of its answers ended."""
        received = woken = 0
        for line in self.process.log().splitlines():
            if "generate_answer[" not in line or "received" not in line:
                continue
            received += 1
            with contextlib.suppress(ValueError, KeyError, TypeError):
                if "woken" in str(json.loads(line)["data"]["kwargs"]):
                    woken += 1
        return received, woken

    def restarts(self) -> list[str]:
        return [line for line in self.process.log().splitlines() if "Restarted" in line]


def _role_of(pid: int) -> str:
    try:
        command = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other"
    text = " ".join(part.decode(errors="replace") for part in command)
    if "redis-server" in text:
        return "Redis"
    if "uvicorn" in text:
        return "web"
    if "celery" in text and " beat" in text:
        return "beat"
    if "celery" in text and " worker" in text:
        return "worker"
    return "other"


def _set_governance(environment: dict[str, str]) -> list[str]:
    """A hard monthly budget and a quota on the demo tenant, far above what a run uses:
    every answer is reserved, checked and settled, none is refused."""
    budget = manage(
        environment, "set_budget", "--tenant", DEMO_TENANT, "--period", "month",
        "--limit", "1000000", "--hard",
    )  # fmt: skip
    quota = manage(
        environment, "set_quota", "--tenant", DEMO_TENANT, "--rpm", "1000000",
        "--tpm", "1000000000", "--tpd", "1000000000", "--concurrency", "10000",
    )  # fmt: skip
    return [budget.strip(), quota.strip()]


def start_our_stack(
    stack: contextlib.ExitStack,
    *,
    bedrock_url: str,
    directory: Path,
    scratch: Path,
    postgres_url: str | None,
    redis_url: str | None,
    django_debug: bool,
    extra_environment: dict[str, str] | None = None,
) -> tuple[OurStack, list[str]]:
    """`python -m devtools.stack` on free ports, its Bedrock the shared stand-in; its log in
    `directory`, its SQLite file, demo key and beat schedule in `scratch`."""
    port, redis_port = free_port(), free_port()
    environment = _clean_environment()
    environment.update(
        PORT=str(port),
        EMBEDDED_REDIS_PORT=str(redis_port),
        LOCAL_BEDROCK_PORT=str(free_port()),  # not started: BEDROCK_ENDPOINT_URL is set
        BEDROCK_ENDPOINT_URL=bedrock_url,
        # Not the run command's var/ files, which a `make run` beside us may be using.
        DEMO_API_KEY_FILE=str(scratch / "demo_api_key"),
        BEAT_SCHEDULE_FILE=str(scratch / "celerybeat-schedule"),
        DEBUG="true" if django_debug else "false",
        PYTHONUNBUFFERED="1",
    )
    if postgres_url is None:
        environment["DATABASE_URL"] = f"sqlite:///{scratch / 'db.sqlite3'}"
    else:
        environment["DATABASE_URL"] = stack.enter_context(database(postgres_url, scratch))
    if redis_url is not None:
        environment["REDIS_URL"] = redis_url
    environment.update(extra_environment or {})
    # SIGTERM to the run command alone: it then stops its children in order itself.
    process = start_process(
        "our stack",
        [sys.executable, "-m", "devtools.stack"],
        environment,
        log_path=directory / "stack.log",
        stop_timeout_seconds=STOP_TIMEOUT_SECONDS,
    )
    stack.callback(process.stop)
    process.wait_for_log("[stack] Ready at", timeout_seconds=STARTUP_TIMEOUT_SECONDS)
    api_key = (scratch / "demo_api_key").read_text().strip()
    management_environment = {
        **environment,
        "REDIS_URL": redis_url or f"redis://127.0.0.1:{redis_port}/0",
    }
    governance = _set_governance(management_environment)
    database_kind = "PostgreSQL" if postgres_url else "SQLite (throwaway file)"
    redis_kind = redis_url or "embedded redis-server"
    ours = OurStack(
        base_url=f"http://127.0.0.1:{port}",
        api_key=api_key,
        process=process,
        environment=management_environment,
        description=f"{database_kind}, Redis {redis_kind}",
    )
    ours.extra_probes = shared_server_probes(management_environment, ours)
    return ours, governance


def shared_server_probes(
    environment: dict[str, str], ours: OurStack
) -> dict[str, Callable[[], float]]:
    """A Redis not started by the run command, and PostgreSQL, when on this machine."""
    probes: dict[str, Callable[[], float]] = {}
    redis_url = environment["REDIS_URL"]
    if "Redis" not in ours.roles() and urlsplit(redis_url).hostname in LOOPBACK:
        with contextlib.suppress(Exception):
            import redis

            pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
            if stat_fields(pid) is not None:
                probes["Redis (shared)"] = lambda: cpu_seconds(pid, with_descendants=False)
    database_url = environment["DATABASE_URL"]
    if database_url.startswith("postgres") and urlsplit(database_url).hostname in LOOPBACK:
        with contextlib.suppress(Exception):
            probes["PostgreSQL (our backends)"] = PostgresBackends(database_url)
    return probes


class PostgresBackends:
    """CPU of the PostgreSQL backends serving our database: the server is shared with other
    work, but each connection has a backend process of its own, and our processes keep
    theirs in a pool. Cumulative: a backend that ends keeps the CPU last seen for it (what
    it used after the last look is missed; pooled connections rarely end)."""

    def __init__(self, database_url: str) -> None:
        import psycopg

        maintenance, self.name = _maintenance_url(database_url)
        self.connection = psycopg.connect(maintenance, autocommit=True)
        self.seen: dict[int, float] = {}

    def __call__(self) -> float:
        rows = self.connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,)
        ).fetchall()
        for (pid,) in rows:
            if stat_fields(pid) is not None:
                self.seen[pid] = cpu_seconds(pid, with_descendants=False)
        return sum(self.seen.values())


# ---------------------------------------------------------------------------------------
# LiteLLM
# ---------------------------------------------------------------------------------------


def install_litellm(venv: Path) -> None:
    """A virtual environment of its own for LiteLLM (its pins are not ours)."""
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", LITELLM_REQUIREMENT],
        check=True,
    )  # fmt: skip


def litellm_version(venv: Path) -> str:
    completed = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return completed.stdout.strip() or "?"


@dataclass
class LiteLLMProxy:
    base_url: str
    master_key: str
    process: ManagedProcess
    version: str

    def pids(self) -> list[int]:
        return [self.process.pid, *descendants(self.process.pid)]


def _write_litellm_config(directory: Path, bedrock_url: str, master_key: str) -> Path:
    # JSON is YAML: no YAML writer needed here.
    config = {
        "model_list": [
            {
                "model_name": MODEL_ID,
                "litellm_params": {
                    "model": LITELLM_MODEL,
                    "aws_bedrock_runtime_endpoint": bedrock_url,
                    "aws_access_key_id": "local",
                    "aws_secret_access_key": "local",
                    "aws_region_name": "us-west-2",
                },
            }
        ],
        "general_settings": {"master_key": master_key},
    }
    path = directory / "litellm_config.yaml"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_litellm(
    stack: contextlib.ExitStack, *, venv: Path, bedrock_url: str, directory: Path
) -> LiteLLMProxy:
    executable = venv / "bin" / "litellm"
    if not executable.exists():
        raise StartError(
            f"no LiteLLM at {executable}: run with --install-litellm (creates {venv} and "
            f"installs {LITELLM_REQUIREMENT!r} into it)"
        )
    port = free_port()
    master_key = f"sk-bench-{uuid.uuid4().hex}"
    config = _write_litellm_config(directory, bedrock_url, master_key)
    environment = _clean_environment()
    environment.update(
        # The model price map from the package, not from the internet (there is none here).
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        PYTHONUNBUFFERED="1",
    )
    process = start_process(
        "LiteLLM proxy",
        [str(executable), "--config", str(config), "--host", "127.0.0.1",
         "--port", str(port), "--num_workers", "1"],
        environment,
        log_path=directory / "litellm.log",
        stop_timeout_seconds=STOP_TIMEOUT_SECONDS,
    )  # fmt: skip
    stack.callback(process.stop)
    base_url = f"http://127.0.0.1:{port}"
    process.wait_for_url(f"{base_url}/health/liveliness", timeout_seconds=STARTUP_TIMEOUT_SECONDS)
    return LiteLLMProxy(base_url, master_key, process, litellm_version(venv))


# ---------------------------------------------------------------------------------------
# CPU
# ---------------------------------------------------------------------------------------


def cpu_by_role(roles: dict[str, list[int]]) -> dict[str, float]:
    return {
        role: sum(cpu_seconds(pid, with_descendants=False) for pid in pids)
        for role, pids in roles.items()
    }


def problem_lines(log: str, patterns: tuple[str, ...]) -> list[str]:
    return [line.strip()[:300] for line in log.splitlines() if any(p in line for p in patterns)]
