"""Fault injection with real processes: workers started and killed per test, and a tenant
with budgets. The proxy that cuts the database away is in tcp_proxy.py; the invariant every
scenario ends with, `assert_books_balance`, in invariant.py."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest

from billing.limits import budget_create
from billing.models import BudgetPeriod, ManagedBy
from conversations.models import Tenant
from devtools.local_bedrock import LocalBedrockServer
from devtools.processes import ManagedProcess
from tests.e2e import conftest as e2e
from tests.e2e.conftest import (
    STARTUP_TIMEOUT_SECONDS,
    process_environment,
    start_process,
    start_uvicorn,
)
from tests.factories import LLAMA3
from tests.support.live_api import Api

# The end-to-end fixtures, for this folder too (only the root conftest may list plugins).
web_server = e2e.web_server
api = e2e.api
bedrock = e2e.bedrock

# Fast retries, so a fault costs a test seconds rather than the production backoff.
WORKER_ENVIRONMENT = {
    "GENERATION_RETRY_BACKOFF_SECONDS": "0.05",
    "GENERATION_RETRY_BACKOFF_MAX_SECONDS": "0.2",
    "GENERATION_MAX_RETRIES": "8",
    # A killed worker's lease lapses in seconds, so its answer is taken over quickly.
    "GENERATION_LEASE_SECONDS": "2",
    "GENERATION_LEASE_RENEW_SECONDS": "0.4",
    # One stream entry per token: the fault points below are counted in stream entries.
    "ANSWER_STREAM_COALESCE_SECONDS": "0",
}


# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------


@pytest.fixture
def launch_worker(bedrock: LocalBedrockServer) -> Iterator[Callable[..., ManagedProcess]]:
    """Start Celery workers; unlike tests/e2e's `start_worker`, a worker started to replace
    a dead one must not purge the queue (the tasks it is meant to take up are there)."""
    workers: list[ManagedProcess] = []

    def launch(*, concurrency: int = 1, purge: bool = True, **extra: str) -> ManagedProcess:
        environment = process_environment(
            **{**WORKER_ENVIRONMENT, "BEDROCK_ENDPOINT_URL": bedrock.url, **extra}
        )
        command = [
            sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO",
            f"--concurrency={concurrency}", "--pool=prefork", "--without-gossip",
            "--without-mingle", "--without-heartbeat", f"--hostname=faults{len(workers)}@%h",
        ]  # fmt: skip
        if purge:
            command.append("--purge")
        worker = start_process(command, environment, "fault-worker")
        workers.append(worker)
        worker.wait_for_log(" ready.", timeout_seconds=STARTUP_TIMEOUT_SECONDS)
        return worker

    yield launch
    for worker in workers:
        worker.stop()


def start_web_server(**environment: str) -> tuple[ManagedProcess, str]:
    """An extra uvicorn, for a test that points it at other services than the session's."""
    return start_uvicorn(process_environment(**environment), "fault-web")


# ---------------------------------------------------------------------------------------
# A tenant with budgets
# ---------------------------------------------------------------------------------------


@pytest.fixture
def tenant(api: Api) -> Tenant:
    """The `api` fixture's tenant, with a tenant-wide monthly hard budget (the invariant's
    ledger check needs one) and a model-scoped lifetime soft budget."""
    tenant = Tenant.objects.get(slug="e2e")
    budget_create(
        tenant=tenant,
        period=BudgetPeriod.MONTH,
        limit=Decimal("50"),
        managed_by=ManagedBy.OPERATOR,
        name="monthly",
    )
    budget_create(
        tenant=tenant,
        period=BudgetPeriod.TOTAL,
        limit=Decimal("100"),
        managed_by=ManagedBy.OPERATOR,
        name="llama lifetime",
        is_hard=False,
        model=LLAMA3,
    )
    return tenant
