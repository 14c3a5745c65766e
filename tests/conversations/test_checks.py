"""conversations/checks.py: settings whose timeouts contradict each other are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core import checks
from django.test import override_settings

from conversations.checks import (
    TYPICAL_PROXY_IDLE_TIMEOUT_SECONDS,
    longest_task_delivery_seconds,
    redelivery_delay_seconds,
    timeouts_agree,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_CHECKS = ("config.E010", "config.E011", "config.E012", "config.E013", "config.E014")


def error_ids() -> list[str]:
    return [message.id for message in timeouts_agree()]


def variables_without_timeouts() -> dict[str, str]:
    """The test run's environment, minus anything that would change what is checked."""
    prefixes = (
        "CELERY_", "BEDROCK_", "GENERATION_", "RESERVATION_", "SSE_", "PROXY_", "IDEMPOTENCY_",
        "OPENAI_",
    )  # fmt: skip
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def manage_py_check(*arguments: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", *arguments],
        cwd=REPO_ROOT,
        env={**variables_without_timeouts(), **variables},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_default_settings_pass() -> None:
    result = manage_py_check("--tag", "timeouts")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_the_checks_are_registered_for_check_and_refuse_at_error_level() -> None:
    result = manage_py_check(CELERY_VISIBILITY_TIMEOUT_SECONDS="300")
    assert result.returncode == 1
    assert "config.E010" in result.stderr
    assert "CELERY_VISIBILITY_TIMEOUT_SECONDS (300 s)" in result.stderr


def test_the_deploy_checks_run_them_too() -> None:
    result = manage_py_check(
        "--deploy",
        DJANGO_ENV="production",
        SECRET_KEY="a-long-random-production-secret-key-0123456789",
        ALLOWED_HOSTS="api.example.com",
        SSE_HEARTBEAT_SECONDS="75",
    )
    assert result.returncode == 1
    assert "config.E013" in result.stderr


DELIVERY_SETTINGS = {
    "GENERATION_RETRY_BACKOFF_MAX_SECONDS": 30.0,
    "GENERATION_LEASE_SECONDS": 30.0,
    "BEDROCK_CONNECT_TIMEOUT_SECONDS": 5.0,
    "BEDROCK_READ_TIMEOUT_SECONDS": 120.0,
    "RESERVATION_EXPIRY_SECONDS": 3600,
}


@override_settings(CELERY_VISIBILITY_TIMEOUT_SECONDS=300, **DELIVERY_SETTINGS)
def test_a_visibility_timeout_shorter_than_one_delivery_is_refused() -> None:
    # A 32 s countdown (deferred until a 30 s lease lapses, plus jitter) + 5 s connecting +
    # 120 s before the first token + 204.8 s streaming 2048 tokens at 10 a second: a worker
    # may hold a task 361.8 s, so with 300 s Redis delivers it twice.
    assert longest_task_delivery_seconds() == pytest.approx(361.8)
    [error] = timeouts_agree()
    assert error.id == "config.E010"
    assert isinstance(error, checks.Error)
    assert "361.8 s" in error.msg


@override_settings(
    CELERY_VISIBILITY_TIMEOUT_SECONDS=300,
    **{**DELIVERY_SETTINGS, "GENERATION_RETRY_BACKOFF_MAX_SECONDS": 120.0},
)
def test_the_longer_of_the_retry_backoff_and_the_lease_is_the_countdown() -> None:
    assert longest_task_delivery_seconds() == pytest.approx(449.8)
    assert error_ids() == ["config.E010"]


@override_settings(CELERY_VISIBILITY_TIMEOUT_SECONDS=362, **DELIVERY_SETTINGS)
def test_a_visibility_timeout_just_over_one_delivery_passes() -> None:
    assert error_ids() == []


@override_settings(
    GENERATION_MAX_RETRIES=30, BEDROCK_READ_TIMEOUT_SECONDS=120.0, RESERVATION_EXPIRY_SECONDS=3600
)
def test_more_retries_do_not_ask_for_a_longer_visibility_timeout() -> None:
    # Each retry is a new broker message: only one delivery has to fit in the timeout.
    assert error_ids() == []


@override_settings(
    CELERY_VISIBILITY_TIMEOUT_SECONDS=900,
    CELERY_BROKER_TRANSPORT_OPTIONS={
        "visibility_timeout": 900,
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
    },
)
@pytest.mark.parametrize(
    ("expiry", "ids"), [(900, ["config.E011"]), (910, ["config.E011"]), (911, [])]
)
def test_reservation_expiry_must_outlast_the_redelivery_of_a_dead_workers_task(
    expiry: int, ids: list[str]
) -> None:
    with override_settings(RESERVATION_EXPIRY_SECONDS=expiry):
        assert redelivery_delay_seconds() == 910
        assert error_ids() == ids


@override_settings(
    CELERY_VISIBILITY_TIMEOUT_SECONDS=900,
    RESERVATION_EXPIRY_SECONDS=1000,
    CELERY_BROKER_TRANSPORT_OPTIONS={"visibility_timeout": 900},
)
def test_kombus_own_restore_cadence_counts_when_the_options_leave_it_out() -> None:
    # kombu scans every 10 s, and only on every 10th tick: up to 100 s after the timeout.
    assert redelivery_delay_seconds() == 1000
    assert error_ids() == ["config.E011"]


@override_settings(PROXY_IDLE_TIMEOUT_SECONDS=0, GENERATION_SYNC_WAIT_SECONDS=600)
def test_without_a_declared_proxy_silent_waits_are_not_compared() -> None:
    assert error_ids() == []


@override_settings(
    PROXY_IDLE_TIMEOUT_SECONDS=60,
    GENERATION_SYNC_WAIT_SECONDS=60,
    IDEMPOTENCY_WAIT_SECONDS=30,
    OPENAI_COMPLETION_TIMEOUT_SECONDS=600,
)
def test_silent_waits_as_long_as_the_proxy_idle_timeout_are_refused() -> None:
    errors = timeouts_agree()
    assert [error.id for error in errors] == ["config.E012", "config.E012"]
    assert errors[0].msg.startswith("GENERATION_SYNC_WAIT_SECONDS (60 s)")
    assert errors[1].msg.startswith("OPENAI_COMPLETION_TIMEOUT_SECONDS (600 s)")


@override_settings(
    PROXY_IDLE_TIMEOUT_SECONDS=120,
    GENERATION_SYNC_WAIT_SECONDS=60,
    IDEMPOTENCY_WAIT_SECONDS=30,
    OPENAI_COMPLETION_TIMEOUT_SECONDS=110,
)
def test_silent_waits_below_the_proxy_idle_timeout_pass() -> None:
    assert error_ids() == []


@pytest.mark.parametrize(
    ("heartbeat", "proxy_idle", "ids"),
    [
        (15, 0, []),
        (TYPICAL_PROXY_IDLE_TIMEOUT_SECONDS, 0, ["config.E013"]),  # no proxy declared: 60 s
        (0, 0, ["config.E013"]),
        (75, 120, []),  # a declared proxy's own idle timeout counts
        (30, 30, ["config.E013"]),
    ],
)
def test_sse_heartbeats_must_beat_the_proxy_idle_timeout(
    heartbeat: float, proxy_idle: float, ids: list[str]
) -> None:
    # A declared proxy also compares the sync wait; keep it out of this test's way.
    with override_settings(
        SSE_HEARTBEAT_SECONDS=heartbeat,
        PROXY_IDLE_TIMEOUT_SECONDS=proxy_idle,
        GENERATION_SYNC_WAIT_SECONDS=1,
        IDEMPOTENCY_WAIT_SECONDS=1,
        OPENAI_COMPLETION_TIMEOUT_SECONDS=1,
    ):
        assert error_ids() == ids


@pytest.mark.parametrize(
    ("lease", "renew", "ids"),
    [(30, 5, []), (30, 15, []), (30, 16, ["config.E014"]), (30, 30, ["config.E014"]),
     (30, 0, ["config.E014"])],
)  # fmt: skip
def test_leases_are_renewed_at_least_twice_per_lease(
    lease: float, renew: float, ids: list[str]
) -> None:
    with override_settings(GENERATION_LEASE_SECONDS=lease, GENERATION_LEASE_RENEW_SECONDS=renew):
        assert error_ids() == ids


def test_every_contradiction_has_its_own_id() -> None:
    with override_settings(
        CELERY_VISIBILITY_TIMEOUT_SECONDS=60,
        RESERVATION_EXPIRY_SECONDS=60,
        PROXY_IDLE_TIMEOUT_SECONDS=50,
        GENERATION_SYNC_WAIT_SECONDS=55,
        SSE_HEARTBEAT_SECONDS=50,
        GENERATION_LEASE_RENEW_SECONDS=30,
    ):
        assert sorted(set(error_ids())) == list(TIMEOUT_CHECKS)
