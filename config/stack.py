"""The run command: the whole embedded stack in one foreground process.

`python -m config.stack` migrates, loads the model catalogue, makes sure the demo tenant has
a key, then runs Redis (unless REDIS_URL is set), the local Bedrock-compatible server
(unless BEDROCK_ENDPOINT_URL is set), a Celery worker and the ASGI web server until Ctrl-C
or SIGTERM, and then stops every one of them. It is a laptop tool: production refuses it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

import django

from config.embedded import die_with_parent
from config.web_server import uvicorn_command

DEMO_MODEL = "meta.llama3-1-8b-instruct-v1:0"
JSON_FIELD = "python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])'"
STOP_TIMEOUT_SECONDS = 15.0
READY_TIMEOUT_SECONDS = 60.0


class StackError(RuntimeError):
    pass


class Child:
    def __init__(
        self,
        name: str,
        command: list[str],
        environment: dict[str, str],
        *,
        capture_output: bool = False,
    ) -> None:
        self.name = name
        # Own session: Ctrl-C reaches only the run command, which then stops children in order.
        self.process = subprocess.Popen(  # noqa: S603 - argv built here, no shell
            command,
            env=environment,
            start_new_session=True,
            preexec_fn=die_with_parent,
            stdout=subprocess.PIPE if capture_output else None,
        )
        print(f"[stack] Started {name} (pid {self.process.pid})", flush=True)

    def forward_output(self) -> None:
        """Copy the rest of a captured stdout to ours, so its pipe never fills up."""

        def copy() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()

        threading.Thread(target=copy, daemon=True).start()

    def is_running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if not self.is_running():
            return
        # The main process only: a Celery worker then finishes its tasks (warm shutdown) and
        # stops its own pool; signalling the whole group would kill tasks mid-answer.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            print(f"[stack] {self.name} did not stop in time; killing it.", flush=True)
        # The whole group: a Celery worker's pool processes must not outlive it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        _wait_for_group_to_vanish(self.process.pid)


def _wait_for_group_to_vanish(group_id: int, timeout_seconds: float = 5.0) -> None:
    """Grandchildren (pool processes) are reaped by init, not by us: wait until they are."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(group_id, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


class Stop(Exception):  # noqa: N818 - a control-flow signal, not an error
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def _start_local_bedrock(environment: dict[str, str]) -> Child:
    """The local Bedrock-compatible server, as a child; waits for its ready line."""
    port = environment.get("LOCAL_BEDROCK_PORT", "8001")
    child = Child(
        "local Bedrock server",
        [sys.executable, "-m", "models_catalog.bedrock.local_server", "--port", port],
        environment,
        capture_output=True,
    )
    assert child.process.stdout is not None
    line = child.process.stdout.readline().decode()
    if not line.startswith("Local Bedrock server on "):
        raise StackError(f"the local Bedrock server did not start (port {port} taken?)")
    child.forward_output()
    return child


def _wait_until_ready(url: str, children: list[Child]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        for child in children:
            if not child.is_running():
                raise StackError(f"{child.name} exited with {child.process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our URL
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise StackError(f"the web server was not ready at {url} in {READY_TIMEOUT_SECONDS:.0f} s")


def _bootstrap(base_dir: Path) -> str:
    from django.core.management import call_command

    from conversations.demo import demo_api_key_ensure

    call_command("migrate", interactive=False, verbosity=0)
    call_command("load_model_catalogue")
    key_file = os.environ.get("DEMO_API_KEY_FILE") or base_dir / "var" / "demo_api_key"
    return demo_api_key_ensure(key_file=Path(key_file))


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


def run() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    base_dir = Path(__file__).resolve().parent.parent
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    children: list[Child] = []
    embedded_redis = None
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        from config.embedded import EmbeddedRedis, port_is_open

        if port_is_open(port, host):
            raise StackError(f"port {port} is already in use; set PORT to a free port")
        if not os.environ.get("REDIS_URL"):
            redis_port = int(os.environ.get("EMBEDDED_REDIS_PORT", "6380"))
            embedded_redis = EmbeddedRedis(port=redis_port, directory=base_dir / "var" / "redis")
            embedded_redis.start()
            os.environ["REDIS_URL"] = embedded_redis.url
            print(
                f"[stack] Embedded Redis ({embedded_redis.executable}) on {embedded_redis.url} "
                f"(pid {embedded_redis.process.pid})",
                flush=True,
            )
        if os.environ.get("DJANGO_ENV") == "production":
            raise StackError(
                "the run command starts laptop stand-ins (embedded Redis, local Bedrock); "
                "in production run the web server and workers as docker-compose.yml does"
            )
        django.setup()
        api_key = _bootstrap(base_dir)
        environment = dict(os.environ)
        if not environment.get("BEDROCK_ENDPOINT_URL"):
            children.append(_start_local_bedrock(environment))
            environment["BEDROCK_ENDPOINT_URL"] = (
                f"http://127.0.0.1:{environment.get('LOCAL_BEDROCK_PORT', '8001')}"
            )
            os.environ["BEDROCK_ENDPOINT_URL"] = environment["BEDROCK_ENDPOINT_URL"]
        python = sys.executable
        children.append(
            Child(
                "celery worker",
                [python, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO",
                 "--pool=threads", "--concurrency=16", "--without-gossip",
                 "--without-mingle", "--beat",
                 "--schedule", str(base_dir / "var" / "celerybeat-schedule")],
                environment,
            )
        )  # fmt: skip
        web_arguments = ["--host", host, "--port", str(port)]
        web_arguments += ["--no-access-log", "--timeout-graceful-shutdown", "5"]
        children.append(
            Child("web server", uvicorn_command(environment, web_arguments), environment)
        )
        base_url = f"http://{host}:{port}"
        _wait_until_ready(f"{base_url}/readyz", children)
        print(_banner(base_url, api_key, environment), flush=True)
        while True:
            for child in children:
                if not child.is_running():
                    raise StackError(f"{child.name} exited with {child.process.returncode}")
            time.sleep(0.5)
    except Stop as stop:
        print(f"\n[stack] {stop}: stopping.", flush=True)
        return 0
    except StackError as error:
        print(f"[stack] error: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        # A second Ctrl-C must not interrupt the orderly stop and leave orphans.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in reversed(children):
            child.stop()
        if embedded_redis is not None:
            embedded_redis.stop()
        print("[stack] All processes stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(run())
