"""Gives the test run a real Redis when REDIS_URL is not set (the embedded one), and a
local Bedrock-compatible server when BEDROCK_ENDPOINT_URL is not set.

It must run before pytest-django imports the settings, hence the wrapper around
pytest_load_initial_conftests rather than a fixture.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Generator
from pathlib import Path

import pytest

from devtools.embedded_redis import EmbeddedRedis
from devtools.local_bedrock import LocalBedrockServer
from devtools.processes import free_port

EMBEDDED_FOR_TESTS_VARIABLE = "TESTS_STARTED_EMBEDDED_REDIS"
LOCAL_BEDROCK_FOR_TESTS_VARIABLE = "TESTS_STARTED_LOCAL_BEDROCK"
_started: list[EmbeddedRedis | LocalBedrockServer] = []


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> Generator[None, None, None]:
    if not os.environ.get("REDIS_URL"):
        directory = Path(tempfile.mkdtemp(prefix="tests-redis-"))
        embedded = EmbeddedRedis(port=free_port(), directory=directory)
        embedded.start()
        _started.append(embedded)
        os.environ["REDIS_URL"] = embedded.url
        os.environ[EMBEDDED_FOR_TESTS_VARIABLE] = "1"
    # The tests' own threads race dozens of connections at once on purpose (concurrency
    # tests); a bounded pool in the test process would make them wait on each other. The
    # web servers the tests start get the production pool (tests/e2e/conftest.py).
    os.environ.setdefault("DATABASE_POOL_MAX_SIZE", "0")
    if not os.environ.get("BEDROCK_ENDPOINT_URL"):
        bedrock = LocalBedrockServer(seed=7).start()
        _started.append(bedrock)
        os.environ["BEDROCK_ENDPOINT_URL"] = bedrock.url
        os.environ[LOCAL_BEDROCK_FOR_TESTS_VARIABLE] = "1"
    return (yield)


def pytest_unconfigure(config: pytest.Config) -> None:
    while _started:
        _started.pop().stop()
