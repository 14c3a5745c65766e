"""The run command: the whole embedded stack in one foreground process.

`python -m devtools.stack` migrates, loads the model catalogue, makes sure the demo tenant has
a key, then runs Redis (unless REDIS_URL is set), the local Bedrock-compatible server
(unless BEDROCK_ENDPOINT_URL is set), Celery workers (WORKER_PROCESSES, 1), Celery beat
and the ASGI web server (WEB_PROCESSES processes, 1) until Ctrl-C or SIGTERM, and then stops
every one of them. It is a laptop tool: production refuses it.

It supervises its children: one that exits on its own is restarted after a short backoff
(the embedded Redis on the same port, empty: the database is the record of truth), and only
a child that keeps crashing (CRASH_LIMIT times in CRASH_WINDOW_SECONDS) stops the stack.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import django
from django.core.management.base import SystemCheckError

from config.web_server import uvicorn_command
from devtools.embedded_redis import EmbeddedRedis, EmbeddedRedisError, wait_until_answering
from devtools.processes import ManagedProcess, port_is_open, start_process, url_answers_200

DEMO_MODEL = "meta.llama3-1-8b-instruct-v1:0"
JSON_FIELD = "python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])'"
STOP_TIMEOUT_SECONDS = 15.0
READY_TIMEOUT_SECONDS = 60.0
WATCH_INTERVAL_SECONDS = 0.2
# A child that dies is restarted after 0.5 s, then 1, 2, 4 s (capped) if it keeps dying; its
# fifth exit within a minute stops the stack: something is wrong that a restart won't fix.
RESTART_BACKOFF_SECONDS = 0.5
RESTART_BACKOFF_MAX_SECONDS = 8.0
CRASH_LIMIT = 5
CRASH_WINDOW_SECONDS = 60.0


class StackError(RuntimeError):
    pass


class Child:
    """One process of the stack, restartable: the same command, environment and readiness
    check every time it is started."""

    def __init__(
        self,
        name: str,
        command: list[str],
        environment: dict[str, str],
        *,
        capture_output: bool = False,
        ready: Callable[[subprocess.Popen[bytes]], None] | None = None,
    ) -> None:
        self.name = name
        self.command = command
        self.environment = environment
        self.capture_output = capture_output
        self.ready = ready  # raises StackError when the process did not come up
        self.running: ManagedProcess | None = None
        self.exits: collections.deque[float] = collections.deque()  # when it died, recently
        self.restart_at: float | None = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return None if self.running is None else self.running.process

    def start(self, *, verb: str = "Started") -> None:
        # Ctrl-C reaches only the run command, which then stops children in order (the
        # launcher gives each a session of its own); a child dies with the run command.
        self.running = start_process(
            self.name,
            self.command,
            self.environment,
            capture_output=self.capture_output,
            with_parent=True,
            stop_timeout_seconds=STOP_TIMEOUT_SECONDS,
        )
        process = self.running.process
        print(f"[stack] {verb} {self.name} (pid {process.pid})", flush=True)
        if self.ready is not None:
            self.ready(process)
        if self.capture_output:
            self._forward_output(process)

    @staticmethod
    def _forward_output(process: subprocess.Popen[bytes]) -> None:
        """Copy the rest of a captured stdout to ours, so its pipe never fills up."""

        def copy() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()

        threading.Thread(target=copy, daemon=True).start()

    def has_exited(self) -> bool:
        return self.running is None or self.running.has_exited()

    def stop(self) -> int | None:
        """Stop the process (if it still runs) and everything left in its process group;
        return its exit code (None when it was never started or is already reaped).

        SIGTERM goes to the main process only: a Celery worker then finishes its tasks (warm
        shutdown) and stops its own pool; signalling the whole group would kill tasks
        mid-answer."""
        if self.running is None or self.running.process.returncode is not None:
            return None
        return self.running.stop()


def _exit_description(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Starts children in order, restarts one that exits, stops them in reverse order.

    Everything runs on the main thread: a child's death signal fires when the thread that
    started it ends, and the signal handlers (Ctrl-C, SIGTERM) run there.
    """

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(self, child: Child) -> None:
        self.children.append(child)  # before starting: a child that fails to start is stopped
        child.start()

    def watch(self) -> None:
        """Restart children that exited, once their backoff is over."""
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    self._restart(child)
            elif child.has_exited():
                assert child.process is not None
                pid = child.process.pid
                code = child.stop()
                how = _exit_description(code) if code is not None else "exited"
                self._schedule_restart(child, f"{child.name} (pid {pid}) {how}")

    def _restart(self, child: Child) -> None:
        try:
            child.start(verb="Restarted")
        except StackError as error:
            child.stop()
            self._schedule_restart(child, f"{child.name} did not come back ({error})")

    def _schedule_restart(self, child: Child, what_happened: str) -> None:
        now = time.monotonic()
        child.exits.append(now)
        while child.exits and child.exits[0] < now - CRASH_WINDOW_SECONDS:
            child.exits.popleft()
        crashes = len(child.exits)
        if crashes >= CRASH_LIMIT:
            raise StackError(
                f"{what_happened}: {crashes} exits in {CRASH_WINDOW_SECONDS:.0f} s, giving up"
            )
        delay = min(RESTART_BACKOFF_SECONDS * 2 ** (crashes - 1), RESTART_BACKOFF_MAX_SECONDS)
        print(f"[stack] {what_happened}; restarting it in {delay:g} s", flush=True)
        child.restart_at = now + delay

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


class Stop(Exception):  # noqa: N818 - a control-flow signal, not an error
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def _embedded_redis(redis_server: EmbeddedRedis) -> Child:
    """The embedded Redis as a child: restarted on the same port and directory, empty."""

    def ready(process: subprocess.Popen[bytes]) -> None:
        try:
            wait_until_answering(redis_server.port, process)
        except EmbeddedRedisError as error:
            raise StackError(str(error)) from error

    redis_server.directory.mkdir(parents=True, exist_ok=True)
    return Child("embedded Redis", redis_server.command(), dict(os.environ), ready=ready)


def _local_bedrock(environment: dict[str, str], port: str) -> Child:
    """The local Bedrock-compatible server as a child, ready once it prints its ready line."""

    def ready(process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        if not line.startswith("Local Bedrock server on "):
            raise StackError(f"the local Bedrock server did not start (port {port} taken?)")

    return Child(
        "local Bedrock server",
        [sys.executable, "-m", "devtools.local_bedrock", "--port", port],
        environment,
        capture_output=True,
        ready=ready,
    )


def _wait_until_ready(url: str, supervisor: Supervisor) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        supervisor.watch()
        if url_answers_200(url):
            return
        time.sleep(WATCH_INTERVAL_SECONDS)
    raise StackError(f"the web server was not ready at {url} in {READY_TIMEOUT_SECONDS:.0f} s")


def _bootstrap(base_dir: Path) -> str:
    from django.core.management import call_command

    # Settings whose timeouts contradict each other (conversations/checks.py) stop us here.
    call_command("check", fail_level="ERROR")
    call_command("migrate", interactive=False, verbosity=0)
    call_command("load_model_catalogue")
    key_file = os.environ.get("DEMO_API_KEY_FILE") or base_dir / "var" / "demo_api_key"
    # By name, like the commands above: the run command drives the project as an operator would.
    # The key is returned, not printed: the banner shows it.
    return call_command("ensure_demo_api_key", key_file=str(key_file), stdout=io.StringIO())


def _banner(base_url: str, api_key: str, environment: dict[str, str]) -> str:
    authorization = f"Authorization: Bearer {api_key}"
    return "\n".join(
        [
            "",
            f"[stack] Ready at {base_url}  (Redis {environment['REDIS_URL']}, "
            f"Bedrock {environment['BEDROCK_ENDPOINT_URL']})",
            f"[stack] Demo tenant API key: {api_key}",
            "[stack] Try:",
            f'  curl -s -H "{authorization}" {base_url}/api/v1/models',
            "[stack] Start a conversation, then stream an answer to the terminal:",
            f'  export AUTH="{authorization}"',
            f"  CONVERSATION=$(curl -s -H \"$AUTH\" -H 'Content-Type: application/json' "
            f'-d \'{{"model": "{DEMO_MODEL}"}}\' {base_url}/api/v1/conversations '
            f"| {JSON_FIELD} id)",
            f"  STREAM=$(curl -s -H \"$AUTH\" -H 'Content-Type: application/json' "
            f'-d \'{{"content": "Tell me about llamas."}}\' '
            f"{base_url}/api/v1/conversations/$CONVERSATION/messages | {JSON_FIELD} stream_url)",
            f'  curl -sN -H "$AUTH" {base_url}$STREAM',
            f"[stack] API docs: {base_url}/api/docs/   Admin: {base_url}/admin/",
            "[stack] Ctrl-C stops everything.",
            "",
        ]
    )


def _process_count(variable: str) -> int:
    value = os.environ.get(variable) or "1"
    if not value.isdigit() or int(value) < 1:
        raise StackError(
            f"{variable} must be a whole number of processes, 1 or more; got {value!r}"
        )
    return int(value)


def _empty_directory(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def run() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    base_dir = Path(__file__).resolve().parent.parent
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    beat_schedule = os.environ.get("BEAT_SCHEDULE_FILE") or str(
        base_dir / "var" / "celerybeat-schedule"
    )
    supervisor = Supervisor()
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        web_processes = _process_count("WEB_PROCESSES")
        worker_processes = _process_count("WORKER_PROCESSES")
        if port_is_open(port, host):
            raise StackError(f"port {port} is already in use; set PORT to a free port")
        if not os.environ.get("REDIS_URL"):
            redis_port = int(os.environ.get("EMBEDDED_REDIS_PORT", "6380"))
            if port_is_open(redis_port):
                raise StackError(
                    f"port {redis_port} is already in use; set EMBEDDED_REDIS_PORT to a free "
                    "port or REDIS_URL to use that Redis"
                )
            redis_server = EmbeddedRedis(port=redis_port, directory=base_dir / "var" / "redis")
            supervisor.start(_embedded_redis(redis_server))
            os.environ["REDIS_URL"] = redis_server.url
            print(f"[stack] Embedded Redis: {redis_server.executable} on {redis_server.url}")
        if os.environ.get("DJANGO_ENV") == "production":
            raise StackError(
                "the run command starts laptop stand-ins (embedded Redis, local Bedrock); "
                "in production run the web server and workers as docker-compose.yml does"
            )
        django.setup()
        api_key = _bootstrap(base_dir)
        if web_processes > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # /metrics in any of them then counts the requests of all (config.metrics).
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(
                _empty_directory(base_dir / "var" / "prometheus")
            )
        environment = dict(os.environ)
        if not environment.get("BEDROCK_ENDPOINT_URL"):
            bedrock_port = environment.get("LOCAL_BEDROCK_PORT", "8001")
            supervisor.start(_local_bedrock(environment, bedrock_port))
            environment["BEDROCK_ENDPOINT_URL"] = f"http://127.0.0.1:{bedrock_port}"
            os.environ["BEDROCK_ENDPOINT_URL"] = environment["BEDROCK_ENDPOINT_URL"]
        celery = [sys.executable, "-m", "celery", "-A", "config"]
        # The worker's threads live as long as it does, so each may keep its database
        # connection between tasks (opening a SQLite one, PRAGMAs and all, cost about a
        # millisecond of every answer). Not the web server's: under ASGI each request's sync
        # code runs in a thread of its own. A PostgreSQL pool ignores it (config.settings).
        worker_environment = {"DATABASE_CONN_MAX_AGE": "300", **environment}
        for number in range(1, worker_processes + 1):
            name = "celery worker" if worker_processes == 1 else f"celery worker {number}"
            supervisor.start(
                Child(
                    name,
                    [*celery, "worker", "--loglevel=INFO", "--pool=threads", "--concurrency=16",
                     "--without-gossip", "--without-mingle", "-n", f"worker{number}@%h"],
                    worker_environment,
                )
            )  # fmt: skip
        # Beat as a child of ours rather than inside the worker (--beat): the worker's own
        # child would outlive a worker killed with SIGKILL, and a second one would start
        # beside it with the new worker.
        supervisor.start(
            Child(
                "celery beat",
                [*celery, "beat", "--loglevel=INFO", "--schedule", beat_schedule],
                environment,
            )
        )
        web_arguments = ["--host", host, "--port", str(port)]
        web_arguments += ["--no-access-log", "--timeout-graceful-shutdown", "5"]
        if web_processes > 1:
            web_arguments += ["--workers", str(web_processes)]
        supervisor.start(
            Child("web server", uvicorn_command(environment, web_arguments), environment)
        )
        base_url = f"http://{host}:{port}"
        _wait_until_ready(f"{base_url}/readyz", supervisor)
        print(_banner(base_url, api_key, environment), flush=True)
        while True:
            supervisor.watch()
            time.sleep(WATCH_INTERVAL_SECONDS)
    except Stop as stop:
        print(f"\n[stack] {stop}: stopping.", flush=True)
        return 0
    except (StackError, SystemCheckError) as error:
        print(f"[stack] error: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        # A second Ctrl-C must not interrupt the orderly stop and leave orphans.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        supervisor.stop()
        print("[stack] All processes stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(run())
