"""The one process launcher: the run command's children, the tests' web servers and workers,
the benchmarks' systems, the embedded Redis.

A process starts in a session of its own, so a Ctrl-C reaches only whoever started it, which
then stops it in order; it leads its own process group, so what it starts in turn (a Celery
pool, a beat process) can be found and stopped with it. Its output goes to a log file, to a
pipe, or to our own stdout.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[1]
PROC = Path("/proc")
PR_SET_PDEATHSIG = 1
LOG_TAIL_CHARACTERS = 3000


class StartError(RuntimeError):
    """A process exited while it was awaited, or was not ready in time."""


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


def url_answers_200(url: str, *, timeout_seconds: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:  # noqa: S310
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the parenthesised command name (which may hold spaces): state,
    parent pid, process group, ... (proc(5) numbering minus 2); None once it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (fields := stat_fields(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
    return parents


def child_pids(parent_pid: int) -> list[int]:
    return [pid for pid, parent in _parents().items() if parent == parent_pid]


def descendants(pid: int) -> list[int]:
    parents = _parents()
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path | None = None
    stop_timeout_seconds: float = 15.0
    terminate_group: bool = False
    """SIGTERM to the whole process group rather than to the main process alone. Alone is the
    default: a Celery worker answers it with a warm shutdown, letting its pool finish the task
    at hand; the end-to-end tests stop a worker and its pool at once."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def exit_code(self) -> int | None:
        """The exit code (negative: the signal that ended it), or None while it runs. The
        process is not reaped: until `stop` reaps it, its pid, which is also its process
        group's id, cannot be given to another process."""
        if self.process.returncode is not None:
            return self.process.returncode
        try:
            state = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return self.process.poll()
        if state is None:
            return None
        return state.si_status if state.si_code == os.CLD_EXITED else -state.si_status

    def has_exited(self) -> bool:
        return self.exit_code() is not None

    def check_alive(self) -> None:
        code = self.exit_code()
        if code is not None:
            raise StartError(
                f"{self.name} exited with {code}:\n{self.log()[-LOG_TAIL_CHARACTERS:]}"
            )

    def wait_until(
        self,
        condition: Callable[[], object],
        what: str,
        *,
        timeout_seconds: float,
        interval_seconds: float = 0.05,
    ) -> None:
        """Return once `condition()` is true; StartError if the process exits first or
        `timeout_seconds` pass."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            self.check_alive()
            if condition():
                return
            time.sleep(interval_seconds)
        raise StartError(
            f"timed out after {timeout_seconds:g} s waiting for {what}:\n"
            f"{self.log()[-LOG_TAIL_CHARACTERS:]}"
        )

    def wait_for_log(self, text: str, *, timeout_seconds: float) -> None:
        self.wait_until(
            lambda: text in self.log(),
            f"{text!r} from {self.name}",
            timeout_seconds=timeout_seconds,
        )

    def wait_for_url(self, url: str, *, timeout_seconds: float) -> None:
        """Until `url` answers 200 (a health or readiness endpoint); a server still importing
        on a busy machine may take seconds to answer its first request."""
        self.wait_until(
            lambda: url_answers_200(url, timeout_seconds=5.0),
            f"{url} to answer 200",
            timeout_seconds=timeout_seconds,
            interval_seconds=0.1,
        )

    def _wait_for_exit(self, timeout_seconds: float) -> bool:
        deadline = time.monotonic() + timeout_seconds
        while not self.has_exited():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> int:
        """SIGTERM, up to `stop_timeout_seconds` to exit, then SIGKILL to whatever is left of
        its process group; return its exit code. A process already reaped is left alone."""
        process = self.process
        if process.returncode is not None:
            return process.returncode
        if not self.has_exited():
            with contextlib.suppress(ProcessLookupError):
                if self.terminate_group:
                    os.killpg(process.pid, signal.SIGTERM)
                else:
                    os.kill(process.pid, signal.SIGTERM)
            if not self._wait_for_exit(self.stop_timeout_seconds):
                print(f"{self.name} did not stop in time; killing it.", file=sys.stderr)
        # The whole group, while the unreaped leader still holds its id: whatever it started
        # (a pool process, a beat process) must not outlive it, even after SIGKILL.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        code = process.wait()
        _wait_for_group_to_vanish(process.pid)
        return code


def _wait_for_group_to_vanish(group_id: int, timeout_seconds: float = 5.0) -> None:
    """Grandchildren (pool processes) are reaped by init, not by us: wait until they are."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(group_id, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def start_process(
    name: str,
    command: list[str],
    environment: dict[str, str],
    *,
    log_path: Path | None = None,
    capture_output: bool = False,
    with_parent: bool = False,
    stop_timeout_seconds: float = 15.0,
    terminate_group: bool = False,
) -> ManagedProcess:
    """Start `command` from the repository's root. Its stdout and stderr go to `log_path`;
    without one, stdout goes to a pipe (`capture_output`) or to ours. `with_parent`: it gets
    SIGTERM when we die (see `die_with_parent`)."""
    with contextlib.ExitStack() as files:
        output: int | IO[bytes] | None = subprocess.PIPE if capture_output else None
        if log_path is not None:
            output = files.enter_context(log_path.open("wb"))
        process = subprocess.Popen(  # noqa: S603 - argv built by the caller, no shell
            command,
            cwd=REPO_ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT if log_path is not None else None,
            start_new_session=True,
            preexec_fn=die_with_parent if with_parent else None,
        )
    return ManagedProcess(
        name,
        process,
        log_path,
        stop_timeout_seconds=stop_timeout_seconds,
        terminate_group=terminate_group,
    )
