"""Writes of budgets and quotas: the one place they are created, changed and deleted.

Both sides come here: tenants through their API key (managed_by="tenant", the functions by
entity name below) and operators through the admin and the commands (managed_by="operator",
via billing.admin_services). Each side changes only the limits it manages; the operator's
apply on top of the tenant's and are read-only to the tenant, and the other way round.

Changes and deletes take the row lock that reservations and settlement take, so a limit
never changes halfway through a check against it; a change that finds the row gone is a
404, a delete that finds it gone has nothing to do.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, TypeVar

from django.db import transaction
from rest_framework import status

from billing.end_users import end_user_get_or_create
from billing.models import Budget, ManagedBy, Quota
from config.errors import ApplicationError, NotFoundError
from models_catalog.selectors import foundation_model_get_active

ZERO = Decimal(0)
# A budget's spend counter counts one period of one scope; once either changes it counts the
# wrong rows, so it is dropped and recounted from the ledger at the next locked read
# (billing.services.budget_state).
COUNTER_SCOPE_FIELDS = frozenset({"period", "end_user", "model", "per_end_user"})

Limit = TypeVar("Limit", Budget, Quota)


class OperatorManagedError(ApplicationError):
    code = "permission_denied"
    http_status = status.HTTP_403_FORBIDDEN


# --- For either side ---------------------------------------------------------------------


def _refuse_unless_managed_by(limit: Budget | Quota, managed_by: str) -> None:
    if limit.managed_by == managed_by:
        return
    if managed_by == ManagedBy.TENANT:
        raise OperatorManagedError(
            "This limit is set by the service operator; it can be read but not changed here."
        )
    raise OperatorManagedError(
        "This limit was set by the tenant through its API; the operator can see it but "
        "changes it only through the tenant.",
    )


def _row_locked(limit: Budget | Quota) -> bool:
    """Take the row lock settlement and reservations take (inside a transaction); False
    when the row is gone."""
    return type(limit).objects.select_for_update().filter(pk=limit.pk).exists()


def limit_insert(*, limit: Limit, managed_by: str) -> Limit:
    """Store a new budget or quota, built in memory by the API, a form or a command."""
    limit.managed_by = managed_by
    limit.save(force_insert=True)
    return limit


def limit_update(*, limit: Limit, managed_by: str, fields: dict[str, Any]) -> Limit:
    """Write only `fields` (model field names to values), under the limit's row lock.

    A full save() would write back the spend counter as it was read, undoing a settlement
    committed in between. A budget whose counter scope changes is recounted from the ledger.
    """
    _refuse_unless_managed_by(limit, managed_by)
    if not fields:
        return limit
    with transaction.atomic():
        if not _row_locked(limit):
            raise NotFoundError("Not found.")  # deleted since it was looked up
        if isinstance(limit, Budget) and COUNTER_SCOPE_FIELDS & set(fields):
            fields = {**fields, "period_start": None, "spent_amount": ZERO}
        for key, value in fields.items():
            setattr(limit, key, value)
        limit.save(update_fields=[*fields, "updated_at"])
    return limit


def limit_delete(*, limit: Budget | Quota, managed_by: str) -> None:
    """Delete a budget or quota under the row lock settlement and reservations take.

    Without it, a settlement committing an alert for this budget between the delete's
    collection of its alerts and its commit breaks the alert's foreign key (a 500); with
    it, the settlement either went first (its alert is deleted with the budget) or finds
    the row gone and skips it. Already gone: nothing to do.
    """
    _refuse_unless_managed_by(limit, managed_by)
    with transaction.atomic():
        if _row_locked(limit):
            limit.delete()


# --- The tenant API's: scopes named by external ids ---------------------------------------


def _scope(tenant: Any, *, end_user: str | None, model: str | None) -> dict[str, Any]:
    scope: dict[str, Any] = {"end_user": None, "model": None}
    if end_user:
        scope["end_user"] = end_user_get_or_create(tenant=tenant, external_id=end_user)
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
    budget = Budget(
        tenant=tenant,
        period=period,
        limit_amount=limit,
        name=name,
        soft_threshold_percent=soft_threshold_percent,
        is_hard=is_hard,
        per_end_user=per_end_user,
        **_scope(tenant, end_user=end_user, model=model),
    )
    return limit_insert(limit=budget, managed_by=managed_by)


def budget_update(*, budget: Budget, managed_by: str, **changes: Any) -> Budget:
    # Refused before the scope is resolved, which may create an end user.
    _refuse_unless_managed_by(budget, managed_by)
    field_names = {"limit": "limit_amount"}
    fields = _changed_scope(budget, changes)
    for key, value in changes.items():
        fields[field_names.get(key, key)] = value
    return limit_update(limit=budget, managed_by=managed_by, fields=fields)


def budget_delete(*, budget: Budget, managed_by: str) -> None:
    limit_delete(limit=budget, managed_by=managed_by)


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
    quota = Quota(
        tenant=tenant,
        per_end_user=per_end_user,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        tokens_per_day=tokens_per_day,
        max_concurrent=max_concurrent,
        **_scope(tenant, end_user=end_user, model=model),
    )
    return limit_insert(limit=quota, managed_by=managed_by)


def quota_update(*, quota: Quota, managed_by: str, **changes: Any) -> Quota:
    # Refused before the scope is resolved, which may create an end user.
    _refuse_unless_managed_by(quota, managed_by)
    fields = {**_changed_scope(quota, changes), **changes}
    return limit_update(limit=quota, managed_by=managed_by, fields=fields)


def quota_delete(*, quota: Quota, managed_by: str) -> None:
    limit_delete(limit=quota, managed_by=managed_by)
