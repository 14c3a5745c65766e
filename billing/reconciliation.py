"""Provider cost against tenant charges, per tenant, model and day, with the difference
explained: what Bedrock billed us (the provider ledger) and what we charged (the ledger).

The two differ by attempts no tenant pays for (retried or failed attempts, attempts lost
with a worker, counted at the reservation's worst case), by overruns (Bedrock reported
more than was reserved; the tenant paid the reservation), and by price changes between a
reservation and its call. `other` is what is left after the first two: price changes and
rounding.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.db.models import Count, Sum
from django.db.models.functions import TruncDate

from billing.models import Alert, AlertKind, AttemptOutcome, ProviderAttempt, UsageRecord

ZERO = Decimal(0)
UNPAID_OUTCOMES = (AttemptOutcome.FAILED, AttemptOutcome.LOST)


@dataclass
class ReconciliationRow:
    tenant: str
    model: str
    day: date
    charged: Decimal = ZERO
    provider_cost: Decimal = ZERO
    unpaid_attempts: int = 0
    unpaid_attempts_cost: Decimal = ZERO
    overruns: int = 0
    overrun_cost: Decimal = ZERO

    @property
    def margin(self) -> Decimal:
        return self.charged - self.provider_cost

    @property
    def other(self) -> Decimal:
        """Price changes between reservation and call, and rounding."""
        return self.margin + self.unpaid_attempts_cost + self.overrun_cost


@dataclass
class Reconciliation:
    rows: list[ReconciliationRow] = field(default_factory=list)

    @property
    def totals(self) -> ReconciliationRow:
        total = ReconciliationRow(tenant="all", model="all", day=date.min)
        for row in self.rows:
            total.charged += row.charged
            total.provider_cost += row.provider_cost
            total.unpaid_attempts += row.unpaid_attempts
            total.unpaid_attempts_cost += row.unpaid_attempts_cost
            total.overruns += row.overruns
            total.overrun_cost += row.overrun_cost
        return total


def provider_reconciliation(
    *, start: datetime, end: datetime, tenant_id: Any = None
) -> Reconciliation:
    """Rows for [start, end), newest day first, then tenant and model (UTC days)."""
    scope: dict[str, Any] = {"created_at__gte": start, "created_at__lt": end}
    if tenant_id is not None:
        scope["tenant_id"] = tenant_id
    rows: dict[tuple[str, str, date], ReconciliationRow] = {}

    def row(tenant: str, model: str, day: date) -> ReconciliationRow:
        key = (tenant, model, day)
        if key not in rows:
            rows[key] = ReconciliationRow(tenant=tenant, model=model, day=day)
        return rows[key]

    grouping = ("tenant__slug", "model__model_id", "day")
    charges = (
        UsageRecord.objects.filter(**scope)
        .annotate(day=TruncDate("created_at"))
        .values(*grouping)
        .annotate(total=Sum("cost"))
        .order_by()
    )
    for item in charges:
        row(item["tenant__slug"], item["model__model_id"], item["day"]).charged = item["total"]
    attempts = (
        ProviderAttempt.objects.filter(**scope)
        .annotate(day=TruncDate("created_at"))
        .values(*grouping, "outcome")
        .annotate(total=Sum("cost"), count=Count("pk"))
        .order_by()
    )
    for item in attempts:
        target = row(item["tenant__slug"], item["model__model_id"], item["day"])
        target.provider_cost += item["total"]
        if item["outcome"] in UNPAID_OUTCOMES:
            target.unpaid_attempts += item["count"]
            target.unpaid_attempts_cost += item["total"]
    overruns: dict[tuple[str, str, date], list[Decimal]] = defaultdict(list)
    overrun_alerts = Alert.objects.filter(kind=AlertKind.OVERRUN, **scope).values(
        "tenant__slug", "details", "created_at"
    )
    message_models = dict(
        UsageRecord.objects.filter(
            message_id__in=[alert["details"].get("message_id") for alert in overrun_alerts]
        ).values_list("message_id", "model__model_id")
    )
    for alert in overrun_alerts:
        details = alert["details"]
        model = message_models.get(_uuid(details.get("message_id")), "")
        excess = Decimal(details["reported_cost"]) - Decimal(details["charged"])
        overruns[(alert["tenant__slug"], model, alert["created_at"].date())].append(excess)
    for key, excesses in overruns.items():
        target = row(*key)
        target.overruns += len(excesses)
        target.overrun_cost += sum(excesses, ZERO)
    ordered = sorted(rows.values(), key=lambda r: (-r.day.toordinal(), r.tenant, r.model))
    return Reconciliation(rows=ordered)


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None
