"""manage.py provider_report: what Bedrock billed us against what tenants were charged.

One line per tenant, model and UTC day in the range (default: this month so far), then
totals. The difference (margin) is explained by unpaid attempts (retried, failed or lost
with a worker), overruns (Bedrock reported more than was reserved) and `other` (price
changes between reservation and call, rounding).
"""

from __future__ import annotations

from argparse import ArgumentParser
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.reconciliation import ReconciliationRow, provider_reconciliation

HEADER = (
    f"{'day':<10}  {'tenant':<20} {'model':<34} {'charged':>14} {'provider':>14} "
    f"{'margin':>14} {'unpaid att.':>11} {'unpaid cost':>14} {'overruns':>8} "
    f"{'overrun cost':>14} {'other':>14}"
)


def _day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CommandError(f"--{option} must be a date like 2026-12-01; got {text!r}.") from None


def _line(row: ReconciliationRow, day: str) -> str:
    return (
        f"{day:<10}  {row.tenant[:20]:<20} {row.model[:34]:<34} {row.charged:>14.8f} "
        f"{row.provider_cost:>14.8f} {row.margin:>14.8f} {row.unpaid_attempts:>11} "
        f"{row.unpaid_attempts_cost:>14.8f} {row.overruns:>8} {row.overrun_cost:>14.8f} "
        f"{row.other:>14.8f}"
    )


class Command(BaseCommand):
    help = (
        "Provider cost (Bedrock) against tenant charges per tenant, model and day "
        f"({settings.MONEY_CURRENCY})."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--start", help="first UTC day, YYYY-MM-DD (default: the 1st)")
        parser.add_argument("--end", help="last UTC day, inclusive (default: today)")
        parser.add_argument("--tenant", help="only this tenant (slug)")

    def handle(self, *args: object, **options: Any) -> None:
        today = timezone.now().astimezone(UTC).date()
        first = _day(options["start"], "start") if options["start"] else today.replace(day=1)
        last = _day(options["end"], "end") if options["end"] else today
        if last < first:
            raise CommandError("--end is before --start.")
        tenant_id = None
        if options["tenant"]:
            tenant_id = (
                apps.get_model("conversations", "Tenant")  # by app label: DESIGN.md
                .objects.filter(slug=options["tenant"])
                .values_list("pk", flat=True)
                .first()
            )
            if tenant_id is None:
                raise CommandError(f"No tenant with slug {options['tenant']!r}.")
        report = provider_reconciliation(
            start=datetime.combine(first, time.min, tzinfo=UTC),
            end=datetime.combine(last + timedelta(days=1), time.min, tzinfo=UTC),
            tenant_id=tenant_id,
        )
        self.stdout.write(
            f"Provider cost against tenant charges, {first} to {last} (UTC), "
            f"{settings.MONEY_CURRENCY}"
        )
        self.stdout.write(HEADER)
        for row in report.rows:
            self.stdout.write(_line(row, row.day.isoformat()))
        self.stdout.write(_line(report.totals, "total"))
