"""Budget periods with the real services: period bounds at the boundary, spend counted from
the first instant of the period, counters rolled over in a new period, and the tenant's
day beginning at midnight in its own time zone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import Budget, UsageRecord
from billing.periods import EPOCH, period_bounds
from billing.services import BudgetExceededError, budget_state
from conversations.models import Tenant
from tests.billing.governance import (
    BIG,
    current_month_start,
    date_into_last_month,
    ledger_total,
    reservation_of,
    send_turn,
    settle,
)
from tests.factories import make_tenant

pytestmark = pytest.mark.django_db


# -- periods ----------------------------------------------------------------------------------


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "at", "zone", "start", "end"),
    [
        # The last instant of a month belongs to it, the first of the next starts a new one.
        ("month", utc(2025, 2, 28, 23, 59, 59, 999999), "UTC", utc(2025, 2, 1), utc(2025, 3, 1)),
        ("month", utc(2025, 3, 1), "UTC", utc(2025, 3, 1), utc(2025, 4, 1)),
        ("month", utc(2025, 12, 31, 12), "UTC", utc(2025, 12, 1), utc(2026, 1, 1)),
        ("day", utc(2025, 6, 10, 23, 59, 59, 999999), "UTC", utc(2025, 6, 10), utc(2025, 6, 11)),
        ("day", utc(2025, 6, 11), "UTC", utc(2025, 6, 11), utc(2025, 6, 12)),
        ("week", utc(2025, 6, 15, 23, 59), "UTC", utc(2025, 6, 9), utc(2025, 6, 16)),  # Sunday
        ("week", utc(2025, 6, 16), "UTC", utc(2025, 6, 16), utc(2025, 6, 23)),  # Monday
        # Tokyo is UTC+9: its day begins at 15:00 UTC the day before.
        ("day", utc(2025, 6, 10, 14, 59), "Asia/Tokyo", utc(2025, 6, 9, 15), utc(2025, 6, 10, 15)),
        ("day", utc(2025, 6, 10, 15), "Asia/Tokyo", utc(2025, 6, 10, 15), utc(2025, 6, 11, 15)),
        # New York's month begins at 04:00 UTC in summer (EDT) ...
        ("month", utc(2025, 7, 1, 3), "America/New_York", utc(2025, 6, 1, 4), utc(2025, 7, 1, 4)),
        # ... and the day clocks spring forward lasts 23 hours.
        ("day", utc(2025, 3, 9, 12), "America/New_York", utc(2025, 3, 9, 5), utc(2025, 3, 10, 4)),
        ("total", utc(2025, 6, 10), "UTC", EPOCH, None),
    ],
)  # fmt: skip
def test_period_bounds_at_the_boundary(
    period: str, at: datetime, zone: str, start: datetime, end: datetime | None
) -> None:
    assert period_bounds(period, at, zone) == (start, end)


def test_spend_counts_ledger_rows_from_the_first_instant_of_the_period(tenant: Tenant) -> None:
    first, second = send_turn(tenant), send_turn(tenant)
    settle(first, output_tokens=100)
    settle(second, output_tokens=100)
    cost = UsageRecord.objects.get(message_id=second.answer.pk).cost
    this_start = current_month_start()
    UsageRecord.objects.filter(message_id=first.answer.pk).update(
        created_at=this_start - timedelta(microseconds=1)
    )
    UsageRecord.objects.filter(message_id=second.answer.pk).update(created_at=this_start)

    budget = Budget.objects.create(tenant=tenant, period="month", limit_amount=BIG)
    state = budget_state(budget)
    assert state.period_start == this_start
    assert state.spent == cost  # the row at the boundary counts, the one before it does not


def test_new_period_resets_spend_from_the_ledger_when_reserving(tenant: Tenant) -> None:
    budget = Budget.objects.create(tenant=tenant, period="month", limit_amount=BIG)
    settled = send_turn(tenant)
    last_months_cost = settle(settled, output_tokens=150).record.cost
    worst_case = reservation_of(settled).amount
    # Room for exactly one more worst case, and some spend already: refused this month.
    Budget.objects.filter(pk=budget.pk).update(limit_amount=worst_case)
    with pytest.raises(BudgetExceededError):
        send_turn(tenant)

    last_start = date_into_last_month(tenant)
    budget.refresh_from_db()
    assert (budget.period_start, budget.spent_amount) == (last_start, last_months_cost)
    # Readers see the new period at once, without writing (they hold no lock).
    assert budget_state(budget).spent == 0
    budget.refresh_from_db()
    assert budget.period_start == last_start

    send_turn(tenant)  # the new month starts from the ledger: nothing spent yet

    budget.refresh_from_db()
    assert budget.period_start == current_month_start()
    assert budget.spent_amount == 0


def test_settlement_in_a_new_period_rolls_the_counter_over_before_charging(
    tenant: Tenant,
) -> None:
    budget = Budget.objects.create(tenant=tenant, period="month", limit_amount=BIG)
    settle(send_turn(tenant), output_tokens=150)
    pending = send_turn(tenant)
    date_into_last_month(tenant)

    cost = settle(pending, output_tokens=80).record.cost

    budget.refresh_from_db()
    assert budget.period_start == current_month_start()
    assert budget.spent_amount == cost  # not last month's spend plus this one
    assert ledger_total(tenant, created_at__gte=current_month_start()) == cost


# -- the tenant's time zone -------------------------------------------------------------------


def test_day_budget_begins_at_midnight_in_the_tenant_time_zone() -> None:
    # UTC+14: the local day never begins at UTC midnight.
    tenant = make_tenant("kiritimati", time_zone="Pacific/Kiritimati")
    yesterdays, todays = send_turn(tenant), send_turn(tenant)
    settle(yesterdays, output_tokens=100)
    cost = settle(todays, output_tokens=100).record.cost
    local_start = period_bounds("day", timezone.now(), "Pacific/Kiritimati")[0]
    assert local_start != period_bounds("day", timezone.now(), "UTC")[0]
    UsageRecord.objects.filter(message_id=yesterdays.answer.pk).update(
        created_at=local_start - timedelta(microseconds=1)
    )
    UsageRecord.objects.filter(message_id=todays.answer.pk).update(created_at=local_start)
    budget = Budget.objects.create(tenant=tenant, period="day", limit_amount=cost)

    with pytest.raises(BudgetExceededError) as refused:
        send_turn(tenant)

    details = refused.value.details
    assert Decimal(details["spent"]) == cost  # only the row since local midnight
    assert details["period_start"] == local_start.isoformat()
    assert details["period_end"] == (local_start + timedelta(days=1)).isoformat()
    Budget.objects.filter(pk=budget.pk).update(limit_amount=cost + Decimal(details["requested"]))
    send_turn(tenant)
