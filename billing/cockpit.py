"""Reads for the operators' cockpit: the admin's front page and each tenant's page.

Plain functions returning dataclasses; the admin only draws them. Where the numbers come
from, and why they stay cheap as the ledgers grow:

- spend (charges by day and model, provider cost, margin, tenants and models by spend):
  the daily rollups (billing.rollups), at most tenants x models rows a day;
- end users by spend: the end users' daily rollup, and the tenant's for calls without one;
- budgets: each budget's spend counter (kept in step by settlement) or, for budgets not
  yet touched this period, their ledger rows of the period (one query for all of them);
  open reservations in one query; a per-end-user budget's top end user, one query each;
- alerts: the newest few (indexes `alert_recent`, `alert_kind_recent`);
- health of the last hour: reservations closed in the hour (index
  `reservation_closed_recent`: a reservation closes in the transaction that makes its
  answer final, with the answer's final status as its reason), failed provider attempts of
  the hour, and answers queued or running (the partial index `message_in_progress`).

Days are UTC days, as in the provider reconciliation. Money is Decimal throughout.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import reduce
from operator import or_
from typing import Any

from django.apps import apps
from django.db import connection
from django.db.models import Count, F, Min, Q, Sum
from django.utils import timezone

from billing.models import (
    Alert,
    AlertKind,
    AttemptOutcome,
    Budget,
    DailyCharge,
    DailyEndUserCharge,
    DailyProviderCost,
    ProviderAttempt,
    Reservation,
    ReservationStatus,
    UsageRecord,
)
from billing.percentages import percent_of
from billing.periods import period_bounds
from billing.services import _usage_filter  # which ledger rows a budget counts: one rule

ZERO = Decimal(0)
WINDOW_DAYS = 30
HEALTH_WINDOW = timedelta(hours=1)
# How a reservation closes is its answer's final status (billing.services, conversations'
# generation and expiry): settled as completed or cancelled, released as failed, cancelled
# (in the queue) or expired (failed with error code "expired").
ANSWER_STATUSES = ("completed", "failed", "cancelled", "expired")


def utc_today(now: datetime | None = None) -> date:
    return (now or timezone.now()).astimezone(UTC).date()


# --- Spend -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DaySpend:
    day: date
    charged: Decimal
    provider_cost: Decimal
    charged_by_model: dict[str, Decimal]

    @property
    def margin(self) -> Decimal:
        return self.charged - self.provider_cost


@dataclass(frozen=True)
class SpendLine:
    """One model's, tenant's or end user's spend over the window."""

    key: str
    label: str
    charged: Decimal
    answers: int
    provider_cost: Decimal | None = None  # None where the provider ledger has no such key
    unpaid_attempts: int = 0

    @property
    def margin(self) -> Decimal | None:
        return None if self.provider_cost is None else self.charged - self.provider_cost


@dataclass(frozen=True)
class SpendReport:
    first_day: date
    last_day: date
    days: list[DaySpend]  # every day of the window, oldest first, zero-filled
    models: list[SpendLine]  # by charges, largest first
    charged: Decimal
    provider_cost: Decimal
    answers: int
    provider_attempts: int
    unpaid_attempts: int
    unpaid_cost: Decimal

    @property
    def margin(self) -> Decimal:
        return self.charged - self.provider_cost

    @property
    def margin_percent(self) -> Decimal | None:
        """Margin as a share of charges."""
        return percent_of(self.margin, self.charged)

    @property
    def model_ids(self) -> list[str]:
        return [line.key for line in self.models]


def _window(today: date | None, days: int) -> tuple[date, date]:
    last = today or utc_today()
    return last - timedelta(days=days - 1), last


def spend_report(
    *, today: date | None = None, days: int = WINDOW_DAYS, tenant_id: Any = None
) -> SpendReport:
    """Charges by day and model, provider cost and margin over the last `days` UTC days
    (today included), for every tenant or one."""
    first, last = _window(today, days)
    scope: dict[str, Any] = {"day__gte": first, "day__lte": last}
    if tenant_id is not None:
        scope["tenant_id"] = tenant_id
    charges = (
        DailyCharge.objects.filter(**scope)
        .values("day", "model__model_id")
        .annotate(cost=Sum("cost"), answers=Sum("records"))
        .order_by()
    )
    attempts = (
        DailyProviderCost.objects.filter(**scope)
        .values("day", "model__model_id")
        .annotate(
            cost=Sum("cost"),
            attempts=Sum("attempts"),
            unpaid=Sum("unpaid_attempts"),
            unpaid_cost=Sum("unpaid_cost"),
        )
        .order_by()
    )
    by_day_model: dict[date, dict[str, Decimal]] = defaultdict(dict)
    model_charged: dict[str, Decimal] = defaultdict(Decimal)
    model_answers: dict[str, int] = defaultdict(int)
    for row in charges:
        model = row["model__model_id"]
        by_day_model[row["day"]][model] = row["cost"]
        model_charged[model] += row["cost"]
        model_answers[model] += row["answers"]
    day_provider: dict[date, Decimal] = defaultdict(Decimal)
    model_provider: dict[str, Decimal] = defaultdict(Decimal)
    model_unpaid: dict[str, int] = defaultdict(int)
    provider_attempts = unpaid_attempts = 0
    unpaid_cost = ZERO
    for row in attempts:
        model = row["model__model_id"]
        day_provider[row["day"]] += row["cost"]
        model_provider[model] += row["cost"]
        model_unpaid[model] += row["unpaid"]
        provider_attempts += row["attempts"]
        unpaid_attempts += row["unpaid"]
        unpaid_cost += row["unpaid_cost"]
    days_list = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        by_model = by_day_model.get(day, {})
        days_list.append(
            DaySpend(
                day=day,
                charged=sum(by_model.values(), ZERO),
                provider_cost=day_provider.get(day, ZERO),
                charged_by_model=dict(by_model),
            )
        )
    models = [
        SpendLine(
            key=model,
            label=model,
            charged=model_charged.get(model, ZERO),
            answers=model_answers.get(model, 0),
            provider_cost=model_provider.get(model, ZERO),
            unpaid_attempts=model_unpaid.get(model, 0),
        )
        for model in {*model_charged, *model_provider}
    ]
    models.sort(key=lambda line: (-line.charged, -(line.provider_cost or ZERO), line.key))
    return SpendReport(
        first_day=first,
        last_day=last,
        days=days_list,
        models=models,
        charged=sum(model_charged.values(), ZERO),
        provider_cost=sum(model_provider.values(), ZERO),
        answers=sum(model_answers.values()),
        provider_attempts=provider_attempts,
        unpaid_attempts=unpaid_attempts,
        unpaid_cost=unpaid_cost,
    )


def tenants_by_spend(
    *, today: date | None = None, days: int = WINDOW_DAYS, limit: int = 10
) -> list[SpendLine]:
    """The tenants charged most over the window, with what their calls cost us."""
    first, last = _window(today, days)
    scope = {"day__gte": first, "day__lte": last}
    charged = {
        row["tenant_id"]: row
        for row in DailyCharge.objects.filter(**scope)
        .values("tenant_id", "tenant__slug")
        .annotate(cost=Sum("cost"), answers=Sum("records"))
        .order_by()
    }
    provider = {
        row["tenant_id"]: row
        for row in DailyProviderCost.objects.filter(**scope)
        .values("tenant_id", "tenant__slug")
        .annotate(cost=Sum("cost"), unpaid=Sum("unpaid_attempts"))
        .order_by()
    }
    lines = []
    for tenant_id in {*charged, *provider}:
        charge, cost = charged.get(tenant_id), provider.get(tenant_id)
        lines.append(
            SpendLine(
                key=str(tenant_id),
                label=(charge or cost or {})["tenant__slug"],
                charged=charge["cost"] if charge else ZERO,
                answers=charge["answers"] if charge else 0,
                provider_cost=cost["cost"] if cost else ZERO,
                unpaid_attempts=cost["unpaid"] if cost else 0,
            )
        )
    lines.sort(key=lambda line: (-line.charged, -(line.provider_cost or ZERO), line.label))
    return lines[:limit]


def end_users_by_spend(
    *, tenant_id: Any, today: date | None = None, days: int = WINDOW_DAYS, limit: int = 10
) -> list[SpendLine]:
    """One tenant's end users charged most over the window; calls without an end user are
    one line, "no end user" (the tenant's charges less its end users')."""
    first, last = _window(today, days)
    scope = {"tenant_id": tenant_id, "day__gte": first, "day__lte": last}
    end_users = DailyEndUserCharge.objects.filter(**scope)
    top = (
        end_users.values("end_user_id", "end_user__external_id")
        .annotate(cost=Sum("cost"), answers=Sum("records"))
        .order_by("-cost", "end_user__external_id")[:limit]
    )
    lines = [
        SpendLine(
            key=str(row["end_user_id"]),
            label=row["end_user__external_id"],
            charged=row["cost"],
            answers=row["answers"],
        )
        for row in top
    ]
    every_end_user = end_users.aggregate(cost=Sum("cost"), answers=Sum("records"))
    tenant = DailyCharge.objects.filter(**scope).aggregate(cost=Sum("cost"), answers=Sum("records"))
    anonymous = SpendLine(
        key="",
        label="no end user",
        charged=(tenant["cost"] or ZERO) - (every_end_user["cost"] or ZERO),
        answers=(tenant["answers"] or 0) - (every_end_user["answers"] or 0),
    )
    if anonymous.answers:
        lines.append(anonymous)
        lines.sort(key=lambda line: (-line.charged, line.label))
    return lines[:limit]


# --- Budgets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetUse:
    budget_id: Any
    tenant_id: Any
    tenant: str
    name: str
    scope: str
    period: str
    is_hard: bool
    limit: Decimal
    spent: Decimal
    reserved: Decimal
    soft_threshold_percent: int
    period_start: datetime
    period_end: datetime | None  # None for "total" budgets
    end_user: str | None = None  # per-end-user budgets: the end user nearest the limit

    @property
    def used(self) -> Decimal:
        return self.spent + self.reserved

    @property
    def percent_used(self) -> Decimal | None:
        """Spent and held by answers in progress, as the API's budgets report it."""
        return percent_of(self.used, self.limit)

    @property
    def soft_threshold_crossed(self) -> bool:
        """Spend alone (no reservations) at or past the soft threshold: the rule alerts use."""
        return self.limit > 0 and self.spent * 100 >= self.limit * self.soft_threshold_percent

    @property
    def state(self) -> str:
        if self.limit > 0 and self.spent >= self.limit:
            return "limit"
        return "soft" if self.soft_threshold_crossed else "ok"


class _OpenReservations:
    """Open reservations summed by tenant, end user and model: what budgets hold. Matched
    to a budget as `_usage_filter` matches ledger rows."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.by_tenant: dict[Any, list[tuple[Any, Any, Decimal]]] = defaultdict(list)
        for row in rows:
            self.by_tenant[row["tenant_id"]].append(
                (row["end_user_id"], row["model_id"], row["total"])
            )

    def held(self, budget: Budget, end_user_id: Any = None) -> Decimal:
        wanted_end_user = budget.end_user_id if budget.end_user_id is not None else end_user_id
        per_end_user = budget.end_user_id is not None or budget.per_end_user
        return sum(
            (
                amount
                for reserved_end_user, model_id, amount in self.by_tenant.get(budget.tenant_id, [])
                if (budget.model_id is None or model_id == budget.model_id)
                and (not per_end_user or reserved_end_user == wanted_end_user)
            ),
            ZERO,
        )


def _scope_text(budget: Budget) -> str:
    if budget.end_user_id is not None:
        who = f"end user {budget.end_user.external_id}"
    elif budget.per_end_user:
        who = "each end user"
    else:
        who = "tenant-wide"
    return f"{who} · {budget.model.model_id}" if budget.model_id is not None else who


def _top_end_user_spend(
    budget: Budget, since: datetime
) -> tuple[Any, str | None, Decimal]:  # (end user id, external id, spent)
    rows = UsageRecord.objects.filter(
        tenant_id=budget.tenant_id, end_user__isnull=False, created_at__gte=since
    )
    if budget.model_id is not None:
        rows = rows.filter(model_id=budget.model_id)
    top = (
        rows.values("end_user_id", "end_user__external_id")
        .annotate(total=Sum("cost"))
        .order_by("-total")
        .first()
    )
    if top is None:
        return None, None, ZERO
    return top["end_user_id"], top["end_user__external_id"], top["total"]


def _ledger_spend(stale: list[tuple[Budget, datetime]]) -> dict[Any, Decimal]:
    """Each budget's ledger spend since its period start, in one query per hundred budgets:
    a sum per budget, filtered by the rule settlement counts by (`_usage_filter`)."""
    spend: dict[Any, Decimal] = {}
    for first in range(0, len(stale), 100):
        chunk = stale[first : first + 100]
        conditions = {
            f"budget_{index}": _usage_filter(budget, None) & Q(created_at__gte=start)
            for index, (budget, start) in enumerate(chunk)
        }
        totals = UsageRecord.objects.filter(reduce(or_, conditions.values())).aggregate(
            **{name: Sum("cost", filter=condition) for name, condition in conditions.items()}
        )
        for index, (budget, _) in enumerate(chunk):
            spend[budget.pk] = totals[f"budget_{index}"] or ZERO
    return spend


def budget_uses(*, now: datetime | None = None, tenant_id: Any = None) -> list[BudgetUse]:
    """Every budget with its spend and holds this period (in the tenant's time zone), the
    nearest its limit first. A per-end-user budget shows its end user nearest the limit."""
    now = now or timezone.now()
    budgets = Budget.objects.select_related("tenant", "model", "end_user")
    reservations = Reservation.objects.filter(status=ReservationStatus.OPEN)
    if tenant_id is not None:
        budgets = budgets.filter(tenant_id=tenant_id)
        reservations = reservations.filter(tenant_id=tenant_id)
    held = _OpenReservations(
        list(
            reservations.values("tenant_id", "end_user_id", "model_id")
            .annotate(total=Sum("amount"))
            .order_by()
        )
    )
    budgets = list(budgets)
    periods = {
        budget.pk: period_bounds(budget.period, now, budget.tenant.time_zone) for budget in budgets
    }
    # Not touched yet this period (a new period, a new budget, a scope just changed): the
    # ledger decides, as budget_state does; one query for all of them.
    from_ledger = _ledger_spend(
        [
            (budget, periods[budget.pk][0])
            for budget in budgets
            if not budget.per_end_user and budget.period_start != periods[budget.pk][0]
        ]
    )
    uses = []
    for budget in budgets:
        start, end = periods[budget.pk]
        end_user = None
        if budget.per_end_user:
            end_user_id, end_user, spent = _top_end_user_spend(budget, start)
            reserved = held.held(budget, end_user_id) if end_user_id is not None else ZERO
        else:
            # Settlement keeps the counter in step with the ledger, under the row's lock.
            spent = from_ledger.get(budget.pk, budget.spent_amount)
            reserved = held.held(budget)
        uses.append(
            BudgetUse(
                budget_id=budget.pk,
                tenant_id=budget.tenant_id,
                tenant=budget.tenant.slug,
                name=budget.name or budget.get_period_display(),
                scope=_scope_text(budget),
                period=budget.period,
                is_hard=budget.is_hard,
                limit=budget.limit_amount,
                spent=spent,
                reserved=reserved,
                soft_threshold_percent=budget.soft_threshold_percent,
                period_start=start,
                period_end=end,
                end_user=end_user,
            )
        )
    uses.sort(key=lambda use: (-(use.percent_used or Decimal(-1)), use.tenant, str(use.budget_id)))
    return uses


# --- Alerts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertLine:
    alert_id: Any
    created_at: datetime
    tenant_id: Any
    tenant: str
    kind: str
    kind_label: str
    budget_id: Any
    budget: str
    spent: Decimal
    limit: Decimal


@dataclass(frozen=True)
class OverrunLine:
    """Bedrock reported more tokens than the reservation held; the tenant paid the
    reservation (`charged`), Bedrock billed us `reported_cost`."""

    alert_id: Any
    created_at: datetime
    tenant_id: Any
    tenant: str
    message_id: str
    reported_input_tokens: int
    reported_output_tokens: int
    reserved_input_tokens: int
    reserved_output_tokens: int
    reported_cost: Decimal
    charged: Decimal

    @property
    def excess(self) -> Decimal:
        return self.reported_cost - self.charged


@dataclass(frozen=True)
class OverrunSummary:
    since: datetime
    count: int
    excess: Decimal  # what Bedrock billed beyond what tenants paid, over the window
    recent: list[OverrunLine] = field(default_factory=list)


def recent_alerts(*, limit: int = 10, tenant_id: Any = None) -> list[AlertLine]:
    """The newest budget alerts (soft threshold crossed, limit reached), newest first."""
    alerts = (
        Alert.objects.exclude(kind=AlertKind.OVERRUN)
        .select_related("tenant", "budget")
        .order_by("-created_at")
    )
    if tenant_id is not None:
        alerts = alerts.filter(tenant_id=tenant_id)
    return [
        AlertLine(
            alert_id=alert.pk,
            created_at=alert.created_at,
            tenant_id=alert.tenant_id,
            tenant=alert.tenant.slug,
            kind=alert.kind,
            kind_label=alert.get_kind_display(),
            budget_id=alert.budget_id,
            budget=(alert.budget.name or alert.budget.get_period_display()) if alert.budget else "",
            spent=alert.spent_amount,
            limit=alert.limit_amount,
        )
        for alert in alerts[:limit]
    ]


def overrun_summary(
    *, now: datetime | None = None, days: int = WINDOW_DAYS, limit: int = 5, tenant_id: Any = None
) -> OverrunSummary:
    """Overrun alerts of the last `days` days: how many, what they cost us beyond the
    charges, and the newest few with Bedrock's counts against the reservation's."""
    since = (now or timezone.now()) - timedelta(days=days)
    overruns = Alert.objects.filter(kind=AlertKind.OVERRUN, created_at__gte=since)
    if tenant_id is not None:
        overruns = overruns.filter(tenant_id=tenant_id)
    # An overrun alert stores Bedrock's cost as spent_amount and the charge as limit_amount.
    totals = overruns.aggregate(
        count=Count("pk"), excess=Sum(F("spent_amount") - F("limit_amount"))
    )
    recent = []
    for alert in overruns.select_related("tenant").order_by("-created_at")[:limit]:
        details = alert.details or {}
        recent.append(
            OverrunLine(
                alert_id=alert.pk,
                created_at=alert.created_at,
                tenant_id=alert.tenant_id,
                tenant=alert.tenant.slug,
                message_id=str(details.get("message_id", "")),
                reported_input_tokens=int(details.get("reported_input_tokens", 0)),
                reported_output_tokens=int(details.get("reported_output_tokens", 0)),
                reserved_input_tokens=int(details.get("reserved_input_tokens", 0)),
                reserved_output_tokens=int(details.get("reserved_output_tokens", 0)),
                reported_cost=Decimal(str(details.get("reported_cost", alert.spent_amount))),
                charged=Decimal(str(details.get("charged", alert.limit_amount))),
            )
        )
    return OverrunSummary(
        since=since, count=totals["count"], excess=totals["excess"] or ZERO, recent=recent
    )


# --- Health of the last hour ---------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    since: datetime
    now: datetime
    answers: dict[str, int]  # ANSWER_STATUSES in order, zero-filled
    failed_by_code: list[tuple[str, int]]  # final failures (not expiries), most first
    bedrock_errors: list[tuple[str, int]]  # failed provider attempts, retried ones included
    provider_attempts: int
    lost_attempts: int
    queued: int
    running: int
    oldest_queued_at: datetime | None
    latency_p50_seconds: float | None  # accepted turn -> answer stored, completed answers
    latency_p95_seconds: float | None

    @property
    def finished(self) -> int:
        return sum(self.answers.values())

    @property
    def bedrock_error_count(self) -> int:
        return sum(count for _, count in self.bedrock_errors)

    @property
    def oldest_queued_seconds(self) -> float | None:
        if self.oldest_queued_at is None:
            return None
        return max(0.0, (self.now - self.oldest_queued_at).total_seconds())


def nearest_rank(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted values (PostgreSQL's percentile_disc)."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _latency_percentiles(completed: Any) -> tuple[float | None, float | None]:
    if connection.vendor == "postgresql":
        # In the database: the hour may hold tens of thousands of answers.
        table = connection.ops.quote_name(Reservation._meta.db_table)
        sql, params = completed.values("pk").query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT percentile_disc(ARRAY[0.5, 0.95]) WITHIN GROUP "  # noqa: S608
                "(ORDER BY EXTRACT(EPOCH FROM closed_at - created_at)) "
                f"FROM {table} WHERE id IN ({sql})",
                params,
            )
            (values,) = cursor.fetchone()
        if values is None:
            return None, None
        return float(values[0]), float(values[1])
    durations = sorted(
        (closed - created).total_seconds()
        for created, closed in completed.values_list("created_at", "closed_at")
    )
    if not durations:
        return None, None
    return nearest_rank(durations, 0.5), nearest_rank(durations, 0.95)


def health(*, now: datetime | None = None, window: timedelta = HEALTH_WINDOW) -> Health:
    """Answers finished in the window by final status, Bedrock errors by code, the queue,
    and answer latency percentiles."""
    now = now or timezone.now()
    since = now - window
    closed = Reservation.objects.filter(closed_at__gte=since, closed_at__lte=now)
    by_reason = dict(closed.values_list("close_reason").annotate(count=Count("pk")).order_by())
    answers = {status: by_reason.get(status, 0) for status in ANSWER_STATUSES}
    failed_by_code = [
        (code or "unknown", count)
        for code, count in closed.filter(close_reason="failed")
        .values_list("message__error_code")
        .annotate(count=Count("pk"))
        .order_by("-count", "message__error_code")
    ]
    attempts = ProviderAttempt.objects.filter(created_at__gte=since, created_at__lte=now)
    attempt_counts = attempts.aggregate(
        total=Count("pk"), lost=Count("pk", filter=Q(outcome=AttemptOutcome.LOST))
    )
    bedrock_errors = [
        (code or "unknown", count)
        for code, count in attempts.filter(outcome=AttemptOutcome.FAILED)
        .values_list("error_code")
        .annotate(count=Count("pk"))
        .order_by("-count", "error_code")
    ]
    message_model = apps.get_model("conversations", "Message")
    # Exactly the partial index's condition, so both databases use it.
    in_progress = message_model.objects.filter(status__in=["queued", "running"]).aggregate(
        queued=Count("pk", filter=Q(status="queued")),
        running=Count("pk", filter=Q(status="running")),
        oldest=Min("created_at", filter=Q(status="queued")),
    )
    p50, p95 = _latency_percentiles(closed.filter(close_reason="completed"))
    return Health(
        since=since,
        now=now,
        answers=answers,
        failed_by_code=failed_by_code,
        bedrock_errors=bedrock_errors,
        provider_attempts=attempt_counts["total"],
        lost_attempts=attempt_counts["lost"],
        queued=in_progress["queued"],
        running=in_progress["running"],
        oldest_queued_at=in_progress["oldest"],
        latency_p50_seconds=p50,
        latency_p95_seconds=p95,
    )
