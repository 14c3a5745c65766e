"""Writes of budgets and quotas, for operators (admin, commands) and tenants (the API).

A tenant's API key manages only the budgets and quotas it created (managed_by="tenant");
the operator's apply on top and are read-only to the tenant.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.apps import apps
from django.db import transaction
from rest_framework import status

from billing.models import Budget, ManagedBy, Quota
from config.errors import ApplicationError, NotFoundError
from models_catalog.selectors import foundation_model_get_active

UNSET: Any = object()
ZERO = Decimal(0)


class OperatorManagedError(ApplicationError):
    code = "permission_denied"
    http_status = status.HTTP_403_FORBIDDEN


def _scope(tenant: Any, *, end_user: str | None, model: str | None) -> dict[str, Any]:
    scope: dict[str, Any] = {"end_user": None, "model": None}
    if end_user:
        end_user_model = apps.get_model("conversations", "EndUser")
        scope["end_user"], _ = end_user_model.objects.get_or_create(
            tenant=tenant, external_id=end_user
        )
    if model:
        try:
            scope["model"] = foundation_model_get_active(raw_model_id=model)
        except NotFoundError as error:
            raise ApplicationError(
                "The request is not valid; see details for each field.",
                code="validation_error",
                details={"model": [error.message]},
            ) from None
    return scope


def _changed_scope(limit: Budget | Quota, changes: dict[str, Any]) -> dict[str, Any]:
    """Pop end_user / model (given as external ids) from changes, resolved to rows."""
    scope_changes = {key: changes.pop(key) for key in ("end_user", "model") if key in changes}
    if not scope_changes:
        return {}
    current = {
        "end_user": limit.end_user.external_id if limit.end_user else None,
        "model": limit.model.model_id if limit.model else None,
    }
    return _scope(limit.tenant, **{**current, **scope_changes})


def _check_managed_by(instance: Budget | Quota, managed_by: str) -> None:
    if managed_by == ManagedBy.TENANT and instance.managed_by != ManagedBy.TENANT:
        raise OperatorManagedError(
            "This limit is set by the service operator; it can be read but not changed here."
        )


def budget_create(
    *,
    tenant: Any,
    period: str,
    limit: Decimal,
    managed_by: str,
    name: str = "",
    soft_threshold_percent: int = 80,
    is_hard: bool = True,
    end_user: str | None = None,
    model: str | None = None,
    per_end_user: bool = False,
) -> Budget:
    return Budget.objects.create(
        tenant=tenant,
        period=period,
        limit_amount=limit,
        managed_by=managed_by,
        name=name,
        soft_threshold_percent=soft_threshold_percent,
        is_hard=is_hard,
        per_end_user=per_end_user,
        **_scope(tenant, end_user=end_user, model=model),
    )


# Changing any of these changes which ledger rows the spend counter stands for.
COUNTER_SCOPE_FIELDS = frozenset({"end_user", "model", "per_end_user", "period"})


def _row_locked(limit: Budget | Quota) -> bool:
    """Take the row lock settlement and reservations take (inside a transaction); False
    when the row is gone."""
    return type(limit).objects.select_for_update().filter(pk=limit.pk).exists()


def budget_update(*, budget: Budget, managed_by: str, **changes: Any) -> Budget:
    """Write only the changed fields, under the budget's row lock.

    A full save() would write back the spend counter as it was read, undoing a settlement
    committed in between; a new scope or period recounts the spend from the ledger.
    """
    _check_managed_by(budget, managed_by)
    field_names = {"limit": "limit_amount"}
    fields = _changed_scope(budget, changes)
    for key, value in changes.items():
        fields[field_names.get(key, key)] = value
    if not fields:
        return budget
    with transaction.atomic():
        if not _row_locked(budget):
            raise NotFoundError("Not found.")  # deleted since it was looked up
        if COUNTER_SCOPE_FIELDS & set(fields):
            fields.update(period_start=None, spent_amount=ZERO)
        for key, value in fields.items():
            setattr(budget, key, value)
        budget.save(update_fields=[*fields, "updated_at"])
    return budget


def budget_delete(*, budget: Budget, managed_by: str) -> None:
    _check_managed_by(budget, managed_by)
    limit_row_delete(budget)


def limit_row_delete(limit: Budget | Quota) -> None:
    """Delete a budget or quota under the row lock settlement and reservations take.

    Without it, a settlement committing an alert for this budget between the delete's
    collection of its alerts and its commit breaks the alert's foreign key (a 500); with
    it, the settlement either went first (its alert is deleted with the budget) or finds
    the row gone and skips it. Already gone: nothing to do.
    """
    with transaction.atomic():
        if _row_locked(limit):
            limit.delete()


def quota_create(
    *,
    tenant: Any,
    managed_by: str,
    end_user: str | None = None,
    model: str | None = None,
    per_end_user: bool = False,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    tokens_per_day: int | None = None,
    max_concurrent: int | None = None,
) -> Quota:
    return Quota.objects.create(
        tenant=tenant,
        managed_by=managed_by,
        per_end_user=per_end_user,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        tokens_per_day=tokens_per_day,
        max_concurrent=max_concurrent,
        **_scope(tenant, end_user=end_user, model=model),
    )


def quota_update(*, quota: Quota, managed_by: str, **changes: Any) -> Quota:
    _check_managed_by(quota, managed_by)
    fields = {**_changed_scope(quota, changes), **changes}
    if not fields:
        return quota
    for key, value in fields.items():
        setattr(quota, key, value)
    with transaction.atomic():
        if not _row_locked(quota):
            raise NotFoundError("Not found.")  # deleted since it was looked up
        quota.save(update_fields=[*fields, "updated_at"])
    return quota


def quota_delete(*, quota: Quota, managed_by: str) -> None:
    _check_managed_by(quota, managed_by)
    limit_row_delete(quota)
