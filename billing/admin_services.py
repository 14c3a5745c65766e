"""Operator-side reads of billing data and the operator's rules for limits, for the admin and
management commands.

The admin and `set_budget` / `set_quota` stay thin: they validate input and call these.
What only an operator may do (limits that the tenant cannot change, one per scope, spend
across tenants) lives here; the rows themselves are written by billing.limits, the one
writer of budgets and quotas for tenants and operators alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import transaction
from django.db.models import (
    Case,
    DecimalField,
    ExpressionWrapper,
    F,
    IntegerField,
    OuterRef,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.end_users import end_user_get_or_create
from billing.limits import limit_delete, limit_insert, limit_update
from billing.models import Budget, BudgetPeriod, ManagedBy, Quota, UsageRecord
from billing.periods import period_bounds
from config.errors import ApplicationError, NotFoundError
from models_catalog.selectors import foundation_model_get_active

ZERO = Decimal(0)
BUDGET_EDITABLE_FIELDS = frozenset(
    {
        "name", "period", "limit_amount", "soft_threshold_percent", "is_hard",
        "end_user", "model", "per_end_user",
    }
)  # fmt: skip
QUOTA_EDITABLE_FIELDS = frozenset(
    {
        "end_user", "model", "per_end_user", "requests_per_minute", "tokens_per_minute",
        "tokens_per_day", "max_concurrent",
    }
)  # fmt: skip


def _money_output() -> DecimalField:
    return DecimalField(
        max_digits=settings.MONEY_MAX_DIGITS, decimal_places=settings.MONEY_DECIMAL_PLACES
    )


# --- Reads -------------------------------------------------------------------------------


def tenant_monthly_hard_budgets(tenant_ref: Any) -> QuerySet[Budget]:
    """Tenant-wide monthly hard budgets (every model, every end user) of tenant_ref."""
    return Budget.objects.filter(
        tenant=tenant_ref,
        period=BudgetPeriod.MONTH,
        is_hard=True,
        end_user__isnull=True,
        model__isnull=True,
        per_end_user=False,
    )


def tenant_list_with_month_spend(
    *, queryset: QuerySet | None = None, now: datetime | None = None
) -> QuerySet:
    """Tenants annotated with this month's spend against their monthly hard budget.

    - `month_spend`: the ledger's cost since the start of the current month **in UTC** (not
      in each tenant's time zone, so one query serves every row; a budget's own period may
      start a few hours apart from it);
    - `month_limit`: the smallest tenant-wide monthly hard budget, the one that binds (None
      without one); `month_soft_threshold`: that budget's soft threshold percent;
    - `month_percent`: spend * 100 / limit, None without a positive limit.

    All three are database expressions, so the admin can sort by them.
    """
    tenant_model = apps.get_model("conversations", "Tenant")
    tenants = queryset if queryset is not None else tenant_model.objects.all()
    month_start, _ = period_bounds(BudgetPeriod.MONTH, now or timezone.now(), "UTC")
    spend = (
        UsageRecord.objects.filter(tenant=OuterRef("pk"), created_at__gte=month_start)
        .order_by()
        .values("tenant")
        .annotate(total=Sum("cost"))
        .values("total")
    )
    binding_budget = tenant_monthly_hard_budgets(OuterRef("pk")).order_by("limit_amount", "pk")
    return tenants.annotate(
        month_spend=Coalesce(
            Subquery(spend, output_field=_money_output()),
            Value(ZERO, output_field=_money_output()),
            output_field=_money_output(),
        ),
        month_limit=Subquery(
            binding_budget.values("limit_amount")[:1], output_field=_money_output()
        ),
        month_soft_threshold=Subquery(
            binding_budget.values("soft_threshold_percent")[:1], output_field=IntegerField()
        ),
    ).annotate(
        month_percent=Case(
            When(
                month_limit__gt=0,
                then=ExpressionWrapper(
                    F("month_spend") * Value(Decimal(100)) / F("month_limit"),
                    output_field=_money_output(),
                ),
            ),
            default=Value(None),
            output_field=_money_output(),
        )
    )


# --- Budgets and quotas the operator sets -------------------------------------------------


def _operator_changes(
    limit: Budget | Quota, editable: frozenset[str], changed_fields: Iterable[str]
) -> dict[str, Any]:
    """The fields an operator may edit that the form or command changed, as they now are."""
    return {name: getattr(limit, name) for name in editable.intersection(changed_fields)}


def operator_budget_save(*, budget: Budget, changed_fields: Iterable[str] | None = None) -> Budget:
    """Create a budget as the operator's, or write the fields an operator changed."""
    if budget._state.adding:
        budget.full_clean()
        return limit_insert(limit=budget, managed_by=ManagedBy.OPERATOR)
    fields = _operator_changes(budget, BUDGET_EDITABLE_FIELDS, changed_fields or ())
    return limit_update(limit=budget, managed_by=ManagedBy.OPERATOR, fields=fields)


def operator_quota_save(*, quota: Quota, changed_fields: Iterable[str] | None = None) -> Quota:
    """Create a quota as the operator's, or write the fields an operator changed."""
    if quota._state.adding:
        quota.full_clean()
        return limit_insert(limit=quota, managed_by=ManagedBy.OPERATOR)
    fields = _operator_changes(quota, QUOTA_EDITABLE_FIELDS, changed_fields or ())
    return limit_update(limit=quota, managed_by=ManagedBy.OPERATOR, fields=fields)


def operator_limit_delete(*, limit: Budget | Quota) -> None:
    limit_delete(limit=limit, managed_by=ManagedBy.OPERATOR)


@dataclass(frozen=True)
class LimitScope:
    """Which calls a budget or quota counts: all of the tenant's, one end user's or each
    end user's, optionally only those to one model."""

    tenant: Any
    end_user: Any = None  # EndUser or None
    model: Any = None  # FoundationModel or None
    per_end_user: bool = False

    def describe(self) -> str:
        if self.end_user is not None:
            who = f"end user {self.end_user.external_id!r}"
        elif self.per_end_user:
            who = "each end user"
        else:
            who = "tenant-wide"
        return f"{who}, {self.model.model_id}" if self.model is not None else who


def limit_scope_resolve(
    *,
    tenant_slug: str,
    end_user_external_id: str | None = None,
    model_id: str | None = None,
    per_end_user: bool = False,
) -> LimitScope:
    """The tenant, end user and model that an operator named, or a clear ApplicationError.

    An end user who has not called yet is created, as the tenant API does, so a limit can be
    set before their first call.
    """
    tenant_model = apps.get_model("conversations", "Tenant")
    try:
        tenant = tenant_model.objects.get(slug=tenant_slug)
    except tenant_model.DoesNotExist:
        raise NotFoundError(f"No tenant with slug {tenant_slug!r}.") from None
    if per_end_user and end_user_external_id:
        raise ApplicationError(
            "Use either --end-user (one person) or --per-end-user (each person), not both.",
            code="validation_error",
        )
    model = None
    if model_id:
        model = foundation_model_get_active(raw_model_id=model_id)
    end_user = None
    if end_user_external_id:
        end_user = end_user_get_or_create(tenant=tenant, external_id=end_user_external_id)
    return LimitScope(tenant=tenant, end_user=end_user, model=model, per_end_user=per_end_user)


def _operator_limits_in_scope(
    queryset: QuerySet, scope: LimitScope, what: str, **filters: Any
) -> Any:
    """The operator's one row for this scope (locked), or None; refuses ambiguous scopes."""
    rows = list(
        queryset.select_for_update()
        .filter(
            tenant=scope.tenant,
            managed_by=ManagedBy.OPERATOR,
            end_user=scope.end_user,
            model=scope.model,
            per_end_user=scope.per_end_user,
            **filters,
        )
        .order_by("created_at")
    )
    if len(rows) > 1:
        ids = ", ".join(str(row.pk) for row in rows)
        raise ApplicationError(
            f"{len(rows)} operator {what}s already cover this scope ({ids}); "
            "remove the extra ones in the admin first.",
            code="ambiguous_scope",
        )
    return rows[0] if rows else None


@dataclass(frozen=True)
class LimitSet:
    limit: Any  # Budget or Quota
    created: bool


def operator_budget_set(
    *,
    scope: LimitScope,
    period: str,
    limit: Decimal,
    is_hard: bool | None = None,
    soft_threshold_percent: int | None = None,
    name: str | None = None,
) -> LimitSet:
    """Create or update the operator's budget for this tenant, scope and period.

    There is one per tenant + period + scope; a second call changes its limit (and whatever
    else is given). None means "leave as it is" (or the model default when creating).
    """
    changes: dict[str, Any] = {"limit_amount": limit}
    if is_hard is not None:
        changes["is_hard"] = is_hard
    if soft_threshold_percent is not None:
        changes["soft_threshold_percent"] = soft_threshold_percent
    if name is not None:
        changes["name"] = name
    with transaction.atomic():
        budget = _operator_limits_in_scope(Budget.objects, scope, "budget", period=period)
        if budget is None:
            budget = Budget(
                tenant=scope.tenant,
                end_user=scope.end_user,
                model=scope.model,
                per_end_user=scope.per_end_user,
                period=period,
                **changes,
            )
            return LimitSet(operator_budget_save(budget=budget), created=True)
        for field, value in changes.items():
            setattr(budget, field, value)
        budget.full_clean(exclude=["tenant", "end_user", "model"])
        return LimitSet(operator_budget_save(budget=budget, changed_fields=changes), False)


def operator_quota_set(*, scope: LimitScope, **limits: int | None) -> LimitSet:
    """Create or update the operator's quota for this tenant and scope.

    `limits` maps quota fields (requests_per_minute, ...) to a number, or to None to lift
    that limit; fields not passed are left as they are.
    """
    unknown = set(limits) - QUOTA_EDITABLE_FIELDS
    if unknown:
        raise ValueError(f"not quota limits: {sorted(unknown)}")
    with transaction.atomic():
        quota = _operator_limits_in_scope(Quota.objects, scope, "quota")
        if quota is None:
            if not any(value is not None for value in limits.values()):
                raise ApplicationError(
                    "A new quota needs at least one limit.", code="validation_error"
                )
            quota = Quota(
                tenant=scope.tenant,
                end_user=scope.end_user,
                model=scope.model,
                per_end_user=scope.per_end_user,
                **limits,
            )
            return LimitSet(operator_quota_save(quota=quota), created=True)
        for field, value in limits.items():
            setattr(quota, field, value)
        quota.full_clean(exclude=["tenant", "end_user", "model"])
        return LimitSet(operator_quota_save(quota=quota, changed_fields=limits), False)
