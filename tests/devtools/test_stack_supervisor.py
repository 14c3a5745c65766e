"""The run command's supervisor with small stand-in children (tests/test_run_command.py runs
the real stack): restarts, giving up, and nothing left behind a child that died."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools import stack
from devtools.stack import Child, StackError, Supervisor


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "RESTART_BACKOFF_SECONDS", 0.01)
    monkeypatch.setattr(stack, "RESTART_BACKOFF_MAX_SECONDS", 0.05)


def python_child(name: str, code: str) -> Child:
    return Child(name, [sys.executable, "-c", code], dict(os.environ))


def watch_until(supervisor: Supervisor, condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        supervisor.watch()
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_child_that_exits_is_restarted_and_its_exit_code_logged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    supervisor = Supervisor()
    child = python_child("sleeper", "import time; time.sleep(0.3); raise SystemExit(3)")
    try:
        supervisor.start(child)
        first_pid = child.process.pid
        watch_until(supervisor, lambda: child.process.pid != first_pid)
        output = capsys.readouterr().out
        assert f"sleeper (pid {first_pid}) exit code 3; restarting it in 0.01 s" in output
        assert f"Restarted sleeper (pid {child.process.pid})" in output
    finally:
        supervisor.stop()


def test_a_child_that_keeps_crashing_stops_the_stack() -> None:
    supervisor = Supervisor()
    child = python_child("crasher", "raise SystemExit(1)")
    try:
        supervisor.start(child)
        with pytest.raises(StackError, match=r"crasher \(pid \d+\) exit code 1: 5 exits in 60 s"):
            watch_until(supervisor, lambda: False)
    finally:
        supervisor.stop()


def test_a_restart_that_is_not_ready_counts_as_a_crash(capsys: pytest.CaptureFixture[str]) -> None:
    starts = []

    def ready(process: object) -> None:
        starts.append(process)
        if len(starts) > 1:
            raise StackError("no ready line")

    supervisor = Supervisor()
    child = Child("flaky", [sys.executable, "-c", "raise SystemExit(2)"], dict(os.environ))
    child.ready = ready
    try:
        supervisor.start(child)
        with pytest.raises(StackError, match="flaky did not come back"):
            watch_until(supervisor, lambda: False)
    finally:
        supervisor.stop()
    assert "flaky did not come back (no ready line); restarting it in" in capsys.readouterr().out


def test_what_a_killed_child_started_dies_with_it() -> None:
    """A child killed with SIGKILL cannot stop its own children (celery's --beat process):
    the supervisor kills the rest of its process group before starting a new one."""
    supervisor = Supervisor()
    child = python_child(
        "forker",
        "import subprocess, sys, time;"
        "grandchild = subprocess.Popen(['sleep', '60']);"
        "print(grandchild.pid, flush=True); time.sleep(60)",
    )
    child.capture_output = True
    grandchild_pids: list[int] = []
    child.ready = lambda process: grandchild_pids.append(int(process.stdout.readline()))
    try:
        supervisor.start(child)
        first_pid, grandchild = child.process.pid, grandchild_pids[0]
        assert alive(grandchild)
        os.kill(first_pid, signal.SIGKILL)
        watch_until(supervisor, lambda: child.process.pid != first_pid)
        assert not alive(grandchild)
    finally:
        supervisor.stop()
    assert not any(alive(pid) for pid in grandchild_pids)


def test_stopping_stops_children_in_reverse_order(capsys: pytest.CaptureFixture[str]) -> None:
    supervisor = Supervisor()
    code = (
        "import signal, sys, time\n"
        "def stop(*_): print(sys.argv[1], 'stopped', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    children = [
        Child(name, [sys.executable, "-c", code, name], dict(os.environ), capture_output=True)
        for name in ("first", "second", "third")
    ]
    for child in children:
        child.ready = lambda process: process.stdout.readline()
        supervisor.start(child)
    supervisor.stop()
    time.sleep(0.2)  # the output threads copy the last lines
    lines = [line for line in capsys.readouterr().out.splitlines() if "stopped" in line]
    assert lines == ["third stopped", "second stopped", "first stopped"]
    assert not any(alive(child.process.pid) for child in children)
