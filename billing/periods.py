"""Budget periods: calendar day, week (from Monday), month, or all time, in a tenant's zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from billing.models import BudgetPeriod

# "total" budgets never reset: their one period starts at the epoch.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def tenant_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def period_bounds(
    period: str, at: datetime, zone_name: str = "UTC"
) -> tuple[datetime, datetime | None]:
    """[start, end) of the period containing `at`; end is None for "total"."""
    if period == BudgetPeriod.TOTAL:
        return EPOCH, None
    zone = tenant_zone(zone_name)
    local = at.astimezone(zone)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == BudgetPeriod.DAY:
        start_local, end_local = midnight, midnight + timedelta(days=1)
    elif period == BudgetPeriod.WEEK:
        start_local = midnight - timedelta(days=local.weekday())
        end_local = start_local + timedelta(days=7)
    elif period == BudgetPeriod.MONTH:
        start_local = midnight.replace(day=1)
        next_month = (start_local + timedelta(days=32)).replace(day=1)
        end_local = next_month
    else:
        raise ValueError(f"unknown budget period {period!r}")
    # Re-attach the zone so a DST change inside the period does not shift its boundaries.
    return (
        start_local.replace(tzinfo=zone).astimezone(UTC),
        end_local.replace(tzinfo=zone).astimezone(UTC),
    )
