"""Governance: reserve the worst case before Bedrock is called, settle the real cost once.

Lock order, everywhere: the answer's message row (by the caller), then its reservation, then
budget rows by id, then quota rows by id. Reserving locks every budget and quota that applies
to the call, so concurrent requests cannot all pass a check that only one of them fits; on
SQLite, IMMEDIATE transactions serialise writers to the same effect. Each ledger write
also adds to its daily rollup rows, last thing in its service (billing.rollups says why that
cannot deadlock).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone
from rest_framework import status

from billing import rate_limits
from billing.models import (
    Alert,
    AlertKind,
    AttemptOutcome,
    Budget,
    ProviderAttempt,
    Quota,
    Reservation,
    ReservationStatus,
    UsageRecord,
)
from billing.periods import period_bounds
from billing.pricing import price_in_force, token_cost
from billing.rollups import daily_charge_add, daily_provider_cost_add
from config.errors import ApplicationError

logger = logging.getLogger(__name__)
ZERO = Decimal(0)


class BudgetExceededError(ApplicationError):
    code = "budget_exceeded"
    http_status = status.HTTP_402_PAYMENT_REQUIRED


class QuotaExceededError(ApplicationError):
    code = "quota_exceeded"
    http_status = status.HTTP_429_TOO_MANY_REQUESTS


@dataclass(frozen=True)
class CallScope:
    """Who is calling which model: what decides the budgets and quotas that apply."""

    tenant_id: int
    end_user_id: Any  # UUID or None
    model_id: int
    time_zone: str = "UTC"


def _applying_to_call(limits: QuerySet, scope: CallScope) -> QuerySet:
    """Tenant-wide, or for this end user, or for this model: all that apply to the call."""
    limits = limits.filter(tenant_id=scope.tenant_id)
    limits = limits.filter(Q(end_user__isnull=True) | Q(end_user_id=scope.end_user_id))
    limits = limits.filter(Q(model__isnull=True) | Q(model_id=scope.model_id))
    if scope.end_user_id is None:
        # "Each end user" limits have no bucket for calls without an end user.
        limits = limits.filter(per_end_user=False)
    return limits


def budgets_for_call(scope: CallScope) -> QuerySet[Budget]:
    return _applying_to_call(Budget.objects.all(), scope)


def quotas_for_call(scope: CallScope) -> QuerySet[Quota]:
    return _applying_to_call(Quota.objects.all(), scope)


def _usage_filter(limit: Budget | Quota, end_user_id: Any) -> Q:
    """The ledger rows (and reservations) a budget or quota counts, for a call by end_user_id."""
    condition = Q(tenant_id=limit.tenant_id)
    if limit.end_user_id is not None:
        condition &= Q(end_user_id=limit.end_user_id)
    elif limit.per_end_user:
        condition &= Q(end_user_id=end_user_id)
    if limit.model_id is not None:
        condition &= Q(model_id=limit.model_id)
    return condition


def _ledger_sum(budget: Budget, end_user_id: Any, since: datetime) -> Decimal:
    rows = UsageRecord.objects.filter(_usage_filter(budget, end_user_id), created_at__gte=since)
    return rows.aggregate(total=Sum("cost"))["total"] or ZERO


@dataclass(frozen=True)
class OpenReservations:
    amount: Decimal
    count: int


def _open_reservations(limit: Budget | Quota, end_user_id: Any) -> OpenReservations:
    """What the answers in progress hold against a budget or quota: one read for both."""
    totals = Reservation.objects.filter(
        _usage_filter(limit, end_user_id), status=ReservationStatus.OPEN
    ).aggregate(amount=Sum("amount"), count=Count("pk"))
    return OpenReservations(totals["amount"] or ZERO, totals["count"])


def _open_reserved(budget: Budget, end_user_id: Any) -> Decimal:
    return _open_reservations(budget, end_user_id).amount


def _nothing_reserved(budget: Budget, end_user_id: Any) -> Decimal:
    return ZERO


class _OpenReservationsOnce:
    """Per call: budgets and quotas that count the same reservations (the common case: all
    tenant-wide) share one read."""

    def __init__(self) -> None:
        self._read: dict[Q, OpenReservations] = {}

    def __call__(self, limit: Budget | Quota, end_user_id: Any) -> OpenReservations:
        condition = _usage_filter(limit, end_user_id)
        if condition not in self._read:
            self._read[condition] = _open_reservations(limit, end_user_id)
        return self._read[condition]

    def amount(self, budget: Budget, end_user_id: Any) -> Decimal:
        return self(budget, end_user_id).amount


@dataclass(frozen=True)
class BudgetState:
    budget: Budget
    period_start: datetime
    period_end: datetime | None
    spent: Decimal
    reserved: Decimal

    @property
    def remaining(self) -> Decimal:
        return self.budget.limit_amount - self.spent - self.reserved


def budget_state(
    budget: Budget,
    *,
    end_user_id: Any = None,
    time_zone: str = "UTC",
    now: datetime | None = None,
    locked: bool = False,
    open_reserved: Callable[[Budget, Any], Decimal] = _open_reserved,
) -> BudgetState:
    """Spend and open reservations in the current period.

    When a new period has begun, the spend starts again from the ledger; with `locked`
    (the caller holds the budget's row lock) the counter is rolled over in the row too.
    Readers without the lock never write, so they cannot overwrite a settlement's count.
    `open_reserved`: how the open reservations are read (shared with the quotas' count, or
    not at all where only the spend matters).
    """
    now = now or timezone.now()
    start, end = period_bounds(budget.period, now, time_zone)
    if budget.per_end_user:
        spent = _ledger_sum(budget, end_user_id, start) if end_user_id is not None else ZERO
    else:
        if budget.period_start != start:
            # New period (or a new budget): start from the ledger, which is the truth.
            spent = _ledger_sum(budget, None, start)
            if locked:
                budget.period_start, budget.spent_amount = start, spent
                Budget.objects.filter(pk=budget.pk).update(period_start=start, spent_amount=spent)
        else:
            spent = budget.spent_amount
    has_bucket = not (budget.per_end_user and end_user_id is None)
    reserved = open_reserved(budget, end_user_id) if has_bucket else ZERO
    return BudgetState(budget, start, end, spent, reserved)


def _refuse_over_budget(state: BudgetState, amount: Decimal) -> None:
    budget = state.budget
    period_end = state.period_end.isoformat() if state.period_end else None
    currency = settings.MONEY_CURRENCY
    raise BudgetExceededError(
        f"This call could cost up to {amount} {currency}, which would cross the hard budget "
        f"'{budget.name or budget.get_period_display()}' of {budget.limit_amount} {currency}: "
        f"{state.spent} {currency} spent and {state.reserved} {currency} held by answers in "
        "progress this "
        + (f"period, which ends {period_end}." if period_end else "budget's lifetime."),
        details={
            "budget_id": str(budget.pk),
            "limit": str(budget.limit_amount),
            "spent": str(state.spent),
            "reserved": str(state.reserved),
            "requested": str(amount),
            "period": budget.period,
            "period_start": state.period_start.isoformat(),
            "period_end": period_end,
        },
    )


def _refuse_over_concurrency(
    quotas: list[Quota],
    end_user_id: Any,
    open_reservations: Callable[[Quota, Any], OpenReservations] = _open_reservations,
) -> None:
    for quota in quotas:
        if quota.max_concurrent is None:
            continue
        in_progress = open_reservations(quota, end_user_id).count
        if in_progress >= quota.max_concurrent:
            raise QuotaExceededError(
                f"{in_progress} answers are already in progress; the quota allows "
                f"{quota.max_concurrent} at once.",
                details={"quota_id": str(quota.pk), "limit": "max_concurrent",
                         "allowed": quota.max_concurrent, "retry_after_seconds": 1},
                headers={"Retry-After": "1"},
            )  # fmt: skip


def _rate_charges(
    quotas: list[Quota], end_user_id: Any, tokens: int, now: float
) -> list[rate_limits.RateCharge]:
    charges = []
    for quota in quotas:
        scope = str(end_user_id) if quota.per_end_user else "all"
        limits = (
            ("rpm", quota.requests_per_minute, 1, rate_limits.MINUTE, "requests per minute"),
            ("tpm", quota.tokens_per_minute, tokens, rate_limits.MINUTE, "tokens per minute"),
            ("tpd", quota.tokens_per_day, tokens, rate_limits.DAY, "tokens per day"),
        )
        for kind, limit, amount, window, description in limits:
            is_tokens = kind != "rpm"
            if limit is None:
                continue
            charges.append(
                rate_limits.RateCharge(
                    key=rate_limits.window_key(str(quota.pk), scope, kind, now, window),
                    amount=amount,
                    limit=limit,
                    window_seconds=window,
                    description=description,
                    refundable=is_tokens,
                )
            )
    return charges


@dataclass(frozen=True)
class FrozenCall:
    """Exactly what Bedrock will receive for one answer, decided when it is reserved."""

    bedrock_model_id: str
    prompt: str
    prompt_tokens: int
    max_gen_len: int
    temperature: Decimal
    top_p: Decimal


def reservation_create(
    *,
    scope: CallScope,
    message_id: Any,
    conversation_id: Any,
    model: Any,
    call: FrozenCall,
    counted: rate_limits.CountedCharges | None = None,
) -> Reservation:
    """Hold the worst-case cost of one answer and freeze its call, or refuse (402, 429).

    Must run inside the transaction that creates the answer, so a refusal stores nothing;
    pass `counted` from `rate_limits.given_back_unless_committed` around that transaction
    so rate counters taken here are given back if it does not commit.
    """
    now = timezone.now()
    price = price_in_force(model=model, at=now)
    amount = token_cost(
        input_tokens=call.prompt_tokens,
        output_tokens=call.max_gen_len,
        input_price=price.input_price_per_million,
        output_price=price.output_price_per_million,
    )
    budgets = list(budgets_for_call(scope).select_for_update().order_by("pk"))
    quotas = list(quotas_for_call(scope).select_for_update().order_by("pk"))
    open_reservations = _OpenReservationsOnce()
    for budget in budgets:
        state = budget_state(
            budget,
            end_user_id=scope.end_user_id,
            time_zone=scope.time_zone,
            now=now,
            locked=True,
            open_reserved=open_reservations.amount,
        )
        if budget.is_hard and state.spent + state.reserved + amount > budget.limit_amount:
            _refuse_over_budget(state, amount)
    _refuse_over_concurrency(quotas, scope.end_user_id, open_reservations)

    worst_case_tokens = call.prompt_tokens + call.max_gen_len
    clock = rate_limits.now_seconds()
    charges = _rate_charges(quotas, scope.end_user_id, worst_case_tokens, clock)
    refused = rate_limits.check_and_count(charges, clock, counted=counted)
    if refused is not None:
        raise _quota_refused(refused, clock)
    token_counters = [[charge.key, charge.amount] for charge in charges if charge.refundable]
    return Reservation.objects.create(
        tenant_id=scope.tenant_id,
        end_user_id=scope.end_user_id,
        model=model,
        message_id=message_id,
        conversation_id=conversation_id,
        bedrock_model_id=call.bedrock_model_id,
        prompt=call.prompt,
        temperature=call.temperature,
        top_p=call.top_p,
        prompt_tokens=call.prompt_tokens,
        max_gen_len=call.max_gen_len,
        input_price_per_million=price.input_price_per_million,
        output_price_per_million=price.output_price_per_million,
        amount=amount,
        rate_token_counters=token_counters,
    )


def _quota_refused(refused: rate_limits.RateCharge, clock: float) -> QuotaExceededError:
    retry_after = refused.retry_after_seconds(clock)
    return QuotaExceededError(
        f"Quota of {refused.limit} {refused.description} reached; retry in {retry_after} s.",
        details={"limit": refused.description, "allowed": refused.limit,
                 "retry_after_seconds": retry_after},
        headers={"Retry-After": str(retry_after)},
    )  # fmt: skip


def quota_precheck(*, scope: CallScope) -> None:
    """Refuse at once (429) a call whose requests-per-minute window is already full.

    One small read of the quotas and one Redis read, before any other work: a tenant
    flooding past its quota then costs the service little, so it cannot slow the others.
    Nothing is counted here (the exact check-and-count is in `reservation_create`). It is
    also the request's first touch of Redis: with Redis away it raises (the API's 503).
    """
    quotas = [q for q in quotas_for_call(scope) if q.requests_per_minute is not None]
    clock = rate_limits.now_seconds()
    charges = [
        charge
        for charge in _rate_charges(quotas, scope.end_user_id, 0, clock)
        if not charge.refundable
    ]
    full = rate_limits.first_full(charges)
    if full is not None:
        raise _quota_refused(full, clock)


def frozen_call_get(*, message_id: Any) -> FrozenCall | None:
    """The call an open reservation froze; None when the reservation is closed or missing."""
    reservation = Reservation.objects.filter(
        message_id=message_id, status=ReservationStatus.OPEN
    ).first()
    if reservation is None:
        return None
    return FrozenCall(
        bedrock_model_id=reservation.bedrock_model_id,
        prompt=reservation.prompt,
        prompt_tokens=reservation.prompt_tokens,
        max_gen_len=reservation.max_gen_len,
        temperature=reservation.temperature,
        top_p=reservation.top_p,
    )


def _alerts_check(state: BudgetState, end_user_id: Any) -> list[Alert]:
    budget = state.budget
    kinds = []
    if budget.limit_amount > 0:
        if state.spent * 100 >= budget.limit_amount * budget.soft_threshold_percent:
            kinds.append(AlertKind.SOFT_THRESHOLD)
        if state.spent >= budget.limit_amount:
            kinds.append(AlertKind.LIMIT_REACHED)
    created_alerts = []
    scope_key = str(end_user_id) if budget.per_end_user and end_user_id else ""
    for kind in kinds:
        # The budget row is locked: no two settlements race to create the same alert.
        alert, created = Alert.objects.get_or_create(
            budget=budget,
            scope_key=scope_key,
            kind=kind,
            period_start=state.period_start,
            defaults={
                "tenant_id": budget.tenant_id,
                "end_user_id": end_user_id if scope_key else None,
                "spent_amount": state.spent,
                "limit_amount": budget.limit_amount,
            },
        )
        if created:
            created_alerts.append(alert)
            transaction.on_commit(lambda alert_id=alert.pk: _enqueue_webhook(alert_id), robust=True)
    return created_alerts


def _enqueue_webhook(alert_id: Any) -> None:
    from billing.tasks import deliver_alert_webhook

    deliver_alert_webhook.delay(str(alert_id))


@dataclass(frozen=True)
class Settlement:
    record: UsageRecord
    alerts: list[Alert]


def reservation_lock(*, message_id: Any) -> Reservation | None:
    """The answer's reservation, its row locked until the transaction ends: for a caller
    that settles and records the provider attempt in one go. No join: on PostgreSQL a
    joined row would be locked too (the shared model row, deadlocking every reservation)."""
    return Reservation.objects.select_for_update().filter(message_id=message_id).first()


def reservation_settle(
    *,
    message_id: Any,
    conversation_id: Any,
    input_tokens: int,
    output_tokens: int,
    outcome: str,
    time_zone: str = "UTC",
    locked: Reservation | None = None,
) -> Settlement | None:
    """Turn the answer's reservation into one ledger entry at the real cost.

    Call inside the transaction that stores the answer. At most once per message: the
    reservation row is locked and must still be open, and the ledger's unique message_id
    backs that up. Returns None when there is nothing (more) to settle. `locked`: the
    reservation as `reservation_lock` returned it in this transaction (no second read).
    """
    reservation = locked or reservation_lock(message_id=message_id)
    if reservation is None or reservation.status != ReservationStatus.OPEN:
        return None
    now = timezone.now()
    reported_input, reported_output = input_tokens, output_tokens
    # The reservation is the contract: never charge past what was reserved, whatever the
    # provider reports. The excess is ours (the provider ledger has it) and an alert.
    input_tokens = min(reported_input, reservation.prompt_tokens)
    output_tokens = min(reported_output, reservation.max_gen_len)
    scope = CallScope(
        tenant_id=reservation.tenant_id,
        end_user_id=reservation.end_user_id,
        model_id=reservation.model_id,
        time_zone=time_zone,
    )
    budgets = list(budgets_for_call(scope).select_for_update().order_by("pk"))
    # Roll periods over before the new ledger row exists, so it is counted exactly once.
    # Alerts look at the spend only: the open reservations are not read.
    states = [
        budget_state(
            b,
            end_user_id=scope.end_user_id,
            time_zone=time_zone,
            now=now,
            locked=True,
            open_reserved=_nothing_reserved,
        )
        for b in budgets
    ]
    cost = token_cost(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        input_price=reservation.input_price_per_million,
        output_price=reservation.output_price_per_million,
    )
    record = UsageRecord.objects.create(
        tenant_id=reservation.tenant_id,
        end_user_id=reservation.end_user_id,
        conversation_id=conversation_id,
        message_id=message_id,
        model_id=reservation.model_id,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        input_price_per_million=reservation.input_price_per_million,
        output_price_per_million=reservation.output_price_per_million,
        cost=cost,
        outcome=outcome,
        created_at=now,
    )
    alerts = []
    for state in states:
        budget = state.budget
        if not budget.per_end_user:
            budget.spent_amount = state.spent + cost
            Budget.objects.filter(pk=budget.pk).update(spent_amount=budget.spent_amount)
        settled_state = BudgetState(
            budget, state.period_start, state.period_end, state.spent + cost, ZERO
        )
        alerts += _alerts_check(settled_state, scope.end_user_id)
    if (reported_input, reported_output) != (input_tokens, output_tokens):
        alerts.append(_overrun_alert(reservation, reported_input, reported_output, cost, now))
    Reservation.objects.filter(pk=reservation.pk).update(
        status=ReservationStatus.SETTLED, closed_at=now, close_reason=outcome, prompt=""
    )
    unused = reservation.prompt_tokens + reservation.max_gen_len - input_tokens - output_tokens
    if unused > 0:
        refunds = [(key, min(amount, unused)) for key, amount in reservation.rate_token_counters]
        transaction.on_commit(lambda: rate_limits.refund(refunds), robust=True)
    daily_charge_add(record=record)  # last: it locks the day's rollup rows until commit
    return Settlement(record=record, alerts=alerts)


def reservation_release(*, message_id: Any, reason: str) -> bool:
    """Close the answer's reservation without a charge (failed, expired, cancelled in queue)."""
    reservation = Reservation.objects.filter(
        message_id=message_id, status=ReservationStatus.OPEN
    ).first()
    if reservation is None:
        return False
    released = Reservation.objects.filter(pk=reservation.pk, status=ReservationStatus.OPEN).update(
        status=ReservationStatus.RELEASED, closed_at=timezone.now(), close_reason=reason, prompt=""
    )
    if released:
        refunds = [(key, amount) for key, amount in reservation.rate_token_counters]
        transaction.on_commit(lambda: rate_limits.refund(refunds), robust=True)
    return bool(released)


def _overrun_alert(
    reservation: Reservation,
    reported_input: int,
    reported_output: int,
    charged: Decimal,
    now: datetime,
) -> Alert:
    reported_cost = token_cost(
        input_tokens=reported_input,
        output_tokens=reported_output,
        input_price=reservation.input_price_per_million,
        output_price=reservation.output_price_per_million,
    )
    logger.warning(
        "Provider overrun on %s: reported %s/%s tokens, reserved %s/%s",
        reservation.message_id,
        reported_input,
        reported_output,
        reservation.prompt_tokens,
        reservation.max_gen_len,
    )
    return Alert.objects.create(
        tenant_id=reservation.tenant_id,
        budget=None,
        end_user_id=reservation.end_user_id,
        scope_key=str(reservation.message_id),
        kind=AlertKind.OVERRUN,
        period_start=now,
        spent_amount=reported_cost,
        limit_amount=charged,
        details={
            "message_id": str(reservation.message_id),
            "reported_input_tokens": reported_input,
            "reported_output_tokens": reported_output,
            "reserved_input_tokens": reservation.prompt_tokens,
            "reserved_output_tokens": reservation.max_gen_len,
            "reported_cost": str(reported_cost),
            "charged": str(charged),
        },
    )


def provider_attempt_record(
    *,
    message_id: Any,
    attempt: int,
    outcome: AttemptOutcome | str,
    input_tokens: int,
    output_tokens: int,
    counts_reported: bool = True,
    error_code: str = "",
    reservation: Reservation | None = None,
) -> ProviderAttempt | None:
    """Record one Bedrock attempt in the provider ledger, at the price in force now.

    Idempotent per (message, attempt). None when the answer has no reservation (nothing
    was ever sent for it). `reservation`: the answer's, when the caller holds it already.
    """
    if reservation is None:
        reservation = Reservation.objects.filter(message_id=message_id).first()
    if reservation is None:
        return None
    now = timezone.now()
    price = price_in_force(model=reservation.model_id, at=now)
    try:
        # Inserted first (a savepoint, not a read before): a second record of the same
        # attempt is the rare case, and the unique (message, attempt) catches it.
        with transaction.atomic():
            attempt_row = ProviderAttempt.objects.create(
                message_id=message_id,
                attempt=attempt,
                tenant_id=reservation.tenant_id,
                conversation_id=reservation.conversation_id,
                model_id=reservation.model_id,
                outcome=outcome,
                error_code=error_code[:64],
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                counts_reported=counts_reported,
                input_price_per_million=price.input_price_per_million,
                output_price_per_million=price.output_price_per_million,
                cost=token_cost(
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    input_price=price.input_price_per_million,
                    output_price=price.output_price_per_million,
                ),
                created_at=now,
            )
    except IntegrityError:
        return ProviderAttempt.objects.get(message_id=message_id, attempt=attempt)
    daily_provider_cost_add(attempt=attempt_row)  # last: locks the day's rollup row
    return attempt_row


def provider_lost_attempts_record(*, message_id: Any, before_attempt: int) -> int:
    """Record attempts before this one that left no provider row: their worker died (or the
    task failed in our code) mid-call. Bedrock's counts were never seen, so the worst case
    the reservation allowed is recorded, flagged as not reported. Returns rows added."""
    if before_attempt <= 1:
        return 0
    reservation = Reservation.objects.filter(message_id=message_id).first()
    if reservation is None:
        return 0
    recorded = set(
        ProviderAttempt.objects.filter(message_id=message_id).values_list("attempt", flat=True)
    )
    added = 0
    for attempt in range(1, before_attempt):
        if attempt not in recorded:
            provider_attempt_record(
                message_id=message_id,
                attempt=attempt,
                outcome=AttemptOutcome.LOST,
                input_tokens=reservation.prompt_tokens,
                output_tokens=reservation.max_gen_len,
                counts_reported=False,
            )
            added += 1
    return added
