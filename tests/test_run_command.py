"""The README's run command, for real: every process starts, serves, and stops on a signal."""

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

from config.embedded import free_port
from tests.plugins.embedded_services import (
    EMBEDDED_FOR_TESTS_VARIABLE,
    LOCAL_BEDROCK_FOR_TESTS_VARIABLE,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_SECONDS = 90

pytestmark = pytest.mark.e2e


def process_group_exists(group_id: int) -> bool:
    try:
        os.killpg(group_id, 0)
    except ProcessLookupError:
        return False
    return True


def stack_environment(tmp_path: Path) -> dict[str, str]:
    environment = dict(os.environ)
    if environment.pop(EMBEDDED_FOR_TESTS_VARIABLE, None):
        # The stack must start its own Redis, as on a fresh machine.
        environment.pop("REDIS_URL", None)
    if environment.pop(LOCAL_BEDROCK_FOR_TESTS_VARIABLE, None):
        environment.pop("BEDROCK_ENDPOINT_URL", None)  # the stack starts its own
    if not environment.get("DATABASE_URL"):
        environment["DATABASE_URL"] = f"sqlite:///{tmp_path / 'stack.sqlite3'}"
    environment.update(
        PORT=str(free_port()),
        EMBEDDED_REDIS_PORT=str(free_port()),
        LOCAL_BEDROCK_PORT=str(free_port()),
        DEMO_API_KEY_FILE=str(tmp_path / "demo_api_key"),
        PYTHONUNBUFFERED="1",
    )
    return environment


def read_until_ready(process: subprocess.Popen[str]) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if "[stack] Ctrl-C stops everything." in line:
            return lines
    process.kill()
    pytest.fail("the stack did not become ready:\n" + "\n".join(lines))


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_run_command_serves_the_api_and_stops_everything(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    environment = stack_environment(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "config.stack"],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = read_until_ready(process)
        output = "\n".join(lines)
        child_pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", output)]
        # Redis and the local Bedrock server unless given; a worker and the web server always.
        expected_children = (
            4 - ("REDIS_URL" in environment) - ("BEDROCK_ENDPOINT_URL" in environment)
        )
        assert len(child_pids) == expected_children, output

        api_key = re.search(r"Demo tenant API key: (\S+)", output).group(1)
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

        process.send_signal(stop_signal)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    remaining = [pid for pid in child_pids if process_group_exists(pid)]
    leftovers = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in remaining}
    assert remaining == [], f"processes left behind: {leftovers}\n{output}"
