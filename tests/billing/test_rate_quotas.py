"""Rate quotas with the real services: refusals say when to retry (Retry-After), and a
retry after that many seconds is accepted. The `clock` fixture pins the one clock rate
windows read (`billing.rate_limits.now_seconds`); tests move it.
"""

from __future__ import annotations

import math

import pytest

from billing import rate_limits
from billing.models import Quota, Reservation
from billing.services import QuotaExceededError
from conversations.models import Tenant
from tests.billing.governance import MAX_GEN_LEN, send_turn, settle
from tests.support.clock import Clock

pytestmark = pytest.mark.django_db


def into_the_minute(clock: Clock, seconds: float) -> float:
    """Set the clock this many seconds into its minute; returns the minute's start."""
    minute_start = math.floor(clock.now / rate_limits.MINUTE) * rate_limits.MINUTE
    clock.now = minute_start + seconds
    return minute_start


# -- rate quotas ------------------------------------------------------------------------------


def test_requests_per_minute_refusal_says_when_the_window_reopens(
    tenant: Tenant, clock: Clock
) -> None:
    minute_start = into_the_minute(clock, 42)
    quota = Quota.objects.create(tenant=tenant, requests_per_minute=1)
    send_turn(tenant)

    with pytest.raises(QuotaExceededError) as refused:
        send_turn(tenant)

    error = refused.value
    assert (error.code, error.http_status) == ("quota_exceeded", 429)
    assert error.headers == {"Retry-After": "18"}  # 42 s into the minute
    assert error.details == {
        "limit": "requests per minute",
        "allowed": 1,
        "retry_after_seconds": 18,
    }
    assert Reservation.objects.filter(tenant=tenant).count() == 1  # the refusal stored nothing

    clock.now = minute_start + 60
    send_turn(tenant)
    assert Quota.objects.get(pk=quota.pk).requests_per_minute == 1


def test_tokens_per_day_refusal_waits_until_utc_midnight(tenant: Tenant, clock: Clock) -> None:
    day_start = math.floor(clock.now / rate_limits.DAY) * rate_limits.DAY
    clock.now = day_start + rate_limits.DAY - 3600  # 23:00 UTC
    first = send_turn(tenant)
    one_turn = first.context.prompt_token_count + MAX_GEN_LEN
    Quota.objects.create(tenant=tenant, tokens_per_day=2 * one_turn)
    send_turn(tenant)
    send_turn(tenant)  # exactly fills the day

    with pytest.raises(QuotaExceededError) as refused:
        send_turn(tenant)

    assert refused.value.headers == {"Retry-After": "3600"}
    assert refused.value.details["limit"] == "tokens per day"


def test_concurrency_quota_refusal_asks_to_retry_soon(tenant: Tenant) -> None:
    Quota.objects.create(tenant=tenant, max_concurrent=2)
    first = send_turn(tenant)
    send_turn(tenant)
    with pytest.raises(QuotaExceededError) as refused:
        send_turn(tenant)
    assert refused.value.headers == {"Retry-After": "1"}
    assert refused.value.details["limit"] == "max_concurrent"

    settle(first, output_tokens=10)
    send_turn(tenant)


# -- regressions ------------------------------------------------------------------------------


# A bug this test found, fixed since: Retry-After rounded down.


def test_retrying_after_the_retry_after_seconds_is_accepted(tenant: Tenant, clock: Clock) -> None:
    into_the_minute(clock, 42.5)
    Quota.objects.create(tenant=tenant, requests_per_minute=1)
    send_turn(tenant)
    with pytest.raises(QuotaExceededError) as refused:
        send_turn(tenant)

    clock.advance(int(refused.value.headers["Retry-After"]))
    send_turn(tenant)
