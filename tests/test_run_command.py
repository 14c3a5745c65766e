"""The README's run command, for real: every process starts, serves, is restarted when it
dies, and stops on a signal, leaving nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from devtools.processes import free_port, start_process
from tests.plugins.embedded_services import (
    EMBEDDED_FOR_TESTS_VARIABLE,
    LOCAL_BEDROCK_FOR_TESTS_VARIABLE,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_SECONDS = 90
RESTART_TIMEOUT_SECONDS = 20
ANSWER_TIMEOUT_SECONDS = 30
DEMO_MODEL = "meta.llama3-1-8b-instruct-v1:0"

pytestmark = pytest.mark.e2e


def process_group_exists(group_id: int) -> bool:
    try:
        os.killpg(group_id, 0)
    except ProcessLookupError:
        return False
    return True


def running_processes() -> dict[int, tuple[int, bytes]]:
    """Every process on the machine: pid -> (process group id, command line)."""
    processes = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command_line = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        # After the parenthesised command name: state, parent pid, process group id, ...
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":  # a zombie is gone already; only its parent has to reap it
            processes[int(entry.name)] = (int(fields[2]), command_line)
    return processes


def processes_naming(text: str) -> list[int]:
    return [pid for pid, (_, line) in running_processes().items() if text.encode() in line]


def stack_environment(tmp_path: Path, *, own_services: bool = False) -> dict[str, str]:
    """The stack's environment; `own_services`: it starts its own Redis and Bedrock server
    whatever the test run uses, so that they can be killed."""
    environment = dict(os.environ)
    if environment.pop(EMBEDDED_FOR_TESTS_VARIABLE, None) or own_services:
        # The stack must start its own Redis, as on a fresh machine.
        environment.pop("REDIS_URL", None)
    if environment.pop(LOCAL_BEDROCK_FOR_TESTS_VARIABLE, None) or own_services:
        environment.pop("BEDROCK_ENDPOINT_URL", None)  # the stack starts its own
    if not environment.get("DATABASE_URL"):
        environment["DATABASE_URL"] = f"sqlite:///{tmp_path / 'stack.sqlite3'}"
    environment.update(
        PORT=str(free_port()),
        EMBEDDED_REDIS_PORT=str(free_port()),
        LOCAL_BEDROCK_PORT=str(free_port()),
        DEMO_API_KEY_FILE=str(tmp_path / "demo_api_key"),
        BEAT_SCHEDULE_FILE=str(tmp_path / "celerybeat-schedule"),
        PYTHONUNBUFFERED="1",
    )
    return environment


class RunningStack:
    """`python -m devtools.stack` in the background, its output in a log file."""

    def __init__(self, environment: dict[str, str], log_path: Path) -> None:
        self.environment = environment
        # with_parent: a test run that dies takes the stack (and so its children) with it.
        self.stack = start_process(
            "run command",
            [sys.executable, "-m", "devtools.stack"],
            environment,
            log_path=log_path,
            with_parent=True,
            stop_timeout_seconds=60,
        )
        self.process = self.stack.process

    @property
    def lines(self) -> list[str]:
        return self.stack.log().splitlines()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def output_without_access_lines(self) -> str:
        return "\n".join(line for line in self.lines if '"logger": "access"' not in line)

    def wait_for_line(self, pattern: str, *, timeout: float, start: int = 0) -> re.Match[str]:
        """The first line from index `start` on that matches `pattern` (a regex)."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[start:]:
                if match := compiled.search(line):
                    return match
            if time.monotonic() >= deadline or self.stack.has_exited():
                break
            time.sleep(0.05)
        pytest.fail(f"no line matching {pattern!r} in {timeout} s:\n{self.output}")

    def wait_until_ready(self) -> None:
        self.wait_for_line(r"\[stack\] Ctrl-C stops everything\.", timeout=STARTUP_TIMEOUT_SECONDS)

    def pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"\(pid (\d+)\)", self.output)]

    def pid_of(self, name: str) -> int:
        found = re.findall(rf"(?:Started|Restarted) {re.escape(name)} \(pid (\d+)\)", self.output)
        assert found, f"no {name} in:\n{self.output}"
        return int(found[-1])

    def kill_and_wait_for_restart(self, name: str) -> int:
        """SIGKILL the child `name`; return the pid of the one the stack starts instead."""
        old_pid = self.pid_of(name)
        mark = len(self.lines)
        os.kill(old_pid, signal.SIGKILL)
        self.wait_for_line(
            rf"{re.escape(name)} \(pid {old_pid}\) killed by SIGKILL; restarting it in ",
            timeout=RESTART_TIMEOUT_SECONDS,
            start=mark,
        )
        match = self.wait_for_line(
            rf"Restarted {re.escape(name)} \(pid (\d+)\)",
            timeout=RESTART_TIMEOUT_SECONDS,
            start=mark,
        )
        assert self.process.poll() is None, self.output
        return int(match.group(1))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.environment['PORT']}"

    @property
    def api_key(self) -> str:
        return re.search(r"Demo tenant API key: (\S+)", self.output).group(1)

    def stop(self, stop_signal: signal.Signals = signal.SIGTERM) -> int:
        self.process.send_signal(stop_signal)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        """After a failure: stop it, and whatever is left in its process group."""
        self.stack.stop()


def wait_until_ready(base_url: str) -> None:
    deadline = time.monotonic() + RESTART_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    pytest.fail(f"{base_url}/readyz did not answer 200 in {RESTART_TIMEOUT_SECONDS} s")


def assert_an_answer_completes(stack: RunningStack, *, after: str = "") -> None:
    """The whole path: web server, database, Redis (broker), worker, Bedrock."""
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    api = f"{stack.base_url}/api/v1"
    response = requests.post(
        f"{api}/conversations", json={"model": DEMO_MODEL}, headers=headers, timeout=10
    )
    assert response.status_code == 201, response.text
    response = requests.post(
        f"{api}/conversations/{response.json()['id']}/messages",
        json={"content": "Tell me about llamas."},
        headers=headers,
        timeout=10,
    )
    assert response.status_code == 202, response.text
    answer_url = f"{api}/messages/{response.json()['assistant_message']['id']}"
    deadline = time.monotonic() + ANSWER_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        answer = requests.get(answer_url, headers=headers, timeout=10).json()
        if answer["status"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    assert answer["status"] == "completed", (
        f"after {after or 'starting'}: {answer}\n{stack.output_without_access_lines()}"
    )


def assert_nothing_left_behind(pids: list[int], schedule_file: Path, output: str) -> None:
    remaining = {
        pid: line
        for pid, (group, line) in running_processes().items()
        if pid in pids or group in pids or str(schedule_file).encode() in line
    }
    assert remaining == {}, f"processes left behind: {remaining}\n{output}"


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_run_command_serves_the_api_and_stops_everything(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    environment = stack_environment(tmp_path)
    stack = RunningStack(environment, tmp_path / "stack.log")
    try:
        stack.wait_until_ready()
        lines, output = list(stack.lines), stack.output
        child_pids = stack.pids()
        # Redis and the local Bedrock server unless given; a worker, beat and the web server
        # always.
        expected_children = (
            5 - ("REDIS_URL" in environment) - ("BEDROCK_ENDPOINT_URL" in environment)
        )
        assert len(child_pids) == expected_children, output

        api_key = stack.api_key
        curl_line = re.search(r"curl -s -H \"(.+?)\" (\S+)", output)
        assert curl_line.group(1) == f"Authorization: Bearer {api_key}"
        response = requests.get(
            curl_line.group(2), headers={"Authorization": f"Bearer {api_key}"}, timeout=10
        )
        assert response.status_code == 200
        assert len(response.json()) == 12
        assert (tmp_path / "demo_api_key").read_text().strip() == api_key

        # The printed demo: create a conversation, then stream an answer to the terminal.
        demo_lines = [
            line.strip()
            for line in lines
            if line.strip().startswith(("export AUTH=", "CONVERSATION=", "STREAM=", "curl -sN"))
        ]
        assert len(demo_lines) == 4, output
        demo = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + "\n".join(demo_lines)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert demo.returncode == 0, demo.stderr
        assert "event: delta" in demo.stdout
        assert "event: done" in demo.stdout
        assert '"status": "completed"' in demo.stdout

        assert stack.stop(stop_signal) == 0
    finally:
        stack.kill()
    assert_nothing_left_behind(child_pids, tmp_path / "celerybeat-schedule", stack.output)


def test_a_worker_killed_with_sigkill_is_replaced_and_leaves_no_beat_behind(
    tmp_path: Path,
) -> None:
    environment = stack_environment(tmp_path)
    schedule_file = tmp_path / "celerybeat-schedule"
    stack = RunningStack(environment, tmp_path / "stack.log")
    try:
        stack.wait_until_ready()
        beat_pid = stack.pid_of("celery beat")
        assert processes_naming(str(schedule_file)) == [beat_pid], stack.output

        old_worker_pid = stack.pid_of("celery worker")

        new_worker_pid = stack.kill_and_wait_for_restart("celery worker")

        assert new_worker_pid != old_worker_pid
        assert old_worker_pid not in running_processes()
        assert_an_answer_completes(stack, after="killing the worker")
        # One beat, still the stack's own: none was left by the dead worker, none was added.
        assert processes_naming(str(schedule_file)) == [beat_pid], stack.output
        seen_pids = stack.pids()
        assert stack.stop() == 0
    finally:
        stack.kill()
    assert "[stack] All processes stopped." in stack.output
    assert_nothing_left_behind(seen_pids, schedule_file, stack.output)


def test_every_other_child_killed_comes_back_and_the_api_answers_again(tmp_path: Path) -> None:
    stack = RunningStack(stack_environment(tmp_path, own_services=True), tmp_path / "stack.log")
    try:
        stack.wait_until_ready()
        for name in ("web server", "local Bedrock server", "embedded Redis", "celery beat"):
            stack.kill_and_wait_for_restart(name)
            wait_until_ready(stack.base_url)
            assert_an_answer_completes(stack, after=f"killing the {name}")
        seen_pids = stack.pids()
        assert stack.stop() == 0
    finally:
        stack.kill()
    assert_nothing_left_behind(seen_pids, tmp_path / "celerybeat-schedule", stack.output)


def test_more_web_and_worker_processes_serve_together_and_stop_together(tmp_path: Path) -> None:
    environment = stack_environment(tmp_path) | {"WEB_PROCESSES": "2", "WORKER_PROCESSES": "2"}
    stack = RunningStack(environment, tmp_path / "stack.log")
    try:
        stack.wait_until_ready()
        first, second = stack.pid_of("celery worker 1"), stack.pid_of("celery worker 2")
        assert first != second
        web_children = [
            pid
            for pid, (group, line) in running_processes().items()
            if group == stack.pid_of("web server") and b"spawn_main" in line
        ]
        assert len(web_children) == 2, stack.output
        for _ in range(3):
            assert_an_answer_completes(stack, after="starting two of each")
        # Both web processes count their requests into the one /metrics (multiprocess mode).
        metrics = requests.get(f"{stack.base_url}/metrics", timeout=10).text
        served = [line for line in metrics.splitlines() if line.startswith("http_requests_total")]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in served) >= 6, metrics
        seen_pids = [*stack.pids(), *web_children]
        assert stack.stop() == 0
    finally:
        stack.kill()
    assert_nothing_left_behind(seen_pids, tmp_path / "celerybeat-schedule", stack.output)


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_process_count_that_is_not_one_or_more_stops_the_stack_with_a_clear_error(
    tmp_path: Path, value: str
) -> None:
    environment = stack_environment(tmp_path) | {"WEB_PROCESSES": value}
    completed = subprocess.run(
        [sys.executable, "-m", "devtools.stack"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 1
    assert f"WEB_PROCESSES must be a whole number of processes, 1 or more; got {value!r}" in (
        completed.stderr
    )
