"""Reads of billing data for the API: budget states, usage totals, ledger pages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import TruncDay

from billing.models import OPERATOR_ALERT_KINDS, Alert, Budget, Quota, UsageRecord
from billing.pricing import price_in_force_annotate
from models_catalog.models import FoundationModel
from models_catalog.selectors import foundation_model_get_active, foundation_model_list_active

GROUPINGS = {
    "day": "day",
    "model": "model__model_id",
    "end_user": "end_user__external_id",
    "conversation": "conversation_id",
}


def budget_list(*, tenant: Any) -> QuerySet[Budget]:
    return Budget.objects.filter(tenant=tenant).select_related("end_user", "model")


def quota_list(*, tenant: Any) -> QuerySet[Quota]:
    return Quota.objects.filter(tenant=tenant).select_related("end_user", "model")


def alert_list(*, tenant: Any) -> QuerySet[Alert]:
    """The tenant's budget alerts (operator-only kinds, such as overruns, are not theirs)."""
    return (
        Alert.objects.filter(tenant=tenant)
        .exclude(kind__in=OPERATOR_ALERT_KINDS)
        .select_related("budget", "end_user")
    )


def usage_record_list(
    *, tenant: Any, start: datetime | None = None, end: datetime | None = None
) -> QuerySet[UsageRecord]:
    records = UsageRecord.objects.filter(tenant=tenant).select_related("model", "end_user")
    if start is not None:
        records = records.filter(created_at__gte=start)
    if end is not None:
        records = records.filter(created_at__lt=end)
    return records


def usage_totals(
    *, tenant: Any, start: datetime, end: datetime, group_by: str | None = None
) -> dict[str, Any]:
    """Requests, tokens and cost in [start, end), overall and per group."""
    records = usage_record_list(tenant=tenant, start=start, end=end).order_by()
    measures = {
        "requests": Count("pk"),
        "input_tokens": Sum("input_tokens"),
        "output_tokens": Sum("output_tokens"),
        "cost": Sum("cost"),
    }
    totals = records.aggregate(**measures)
    result: dict[str, Any] = {"start": start, "end": end, "totals": _zero_filled(totals)}
    if group_by is not None:
        if group_by == "day":
            grouped = records.annotate(day=TruncDay("created_at")).values("day")
        else:
            grouped = records.values(GROUPINGS[group_by])
        result["group_by"] = group_by
        result["groups"] = [
            {"key": _group_key(row, group_by), **_zero_filled(row)}
            for row in grouped.annotate(**measures).order_by(
                "day" if group_by == "day" else GROUPINGS[group_by]
            )
        ]
    return result


def _group_key(row: dict[str, Any], group_by: str) -> Any:
    value = row["day"] if group_by == "day" else row[GROUPINGS[group_by]]
    if group_by == "day" and value is not None:
        return value.date().isoformat()
    return value


def _zero_filled(row: dict[str, Any]) -> dict[str, Any]:
    from decimal import Decimal

    return {
        "requests": row.get("requests") or 0,
        "input_tokens": row.get("input_tokens") or 0,
        "output_tokens": row.get("output_tokens") or 0,
        "cost": row.get("cost") or Decimal(0),
    }


def usage_by_message(*, tenant: Any, message_ids: list[Any]) -> dict[Any, UsageRecord]:
    """The tenant's ledger entries of these messages, keyed by message id (one query for a
    page). `tenant` is a tenant or its id."""
    return {
        record.message_id: record
        for record in UsageRecord.objects.filter(tenant=tenant, message_id__in=message_ids)
    }


def foundation_model_list_with_prices() -> QuerySet[FoundationModel]:
    """Active models with the price in force now."""
    return price_in_force_annotate(foundation_model_list_active())


def foundation_model_get_active_with_price(*, raw_model_id: str) -> FoundationModel:
    """The active model that raw_model_id names, with its price in force, or not_found."""
    return foundation_model_get_active(
        raw_model_id=raw_model_id, models=foundation_model_list_with_prices()
    )
