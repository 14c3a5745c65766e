"""Daily rollups of the two ledgers, kept in step with them, for the operators' cockpit.

`DailyCharge` sums the tenant-charge ledger (UsageRecord) by UTC day, tenant and model,
`DailyEndUserCharge` by day and end user, and `DailyProviderCost` the provider ledger
(ProviderAttempt) by day, tenant and model. Each ledger row is added by one `INSERT … ON
CONFLICT DO UPDATE` per rollup in the transaction that writes the row (`reservation_settle`,
`provider_attempt_record`), so a rollup never holds money that the ledger does not, nor
misses any; `daily_rollups_rebuild` recomputes them from the ledgers (after a restore, a
bulk import, or to check them).

Locks. The upsert locks its rollup row until the transaction commits, so answers of one
tenant and model that finish at the same moment queue on it for the rest of their
transaction (a millisecond or two; settlement already queues a tenant's answers on its
budget rows). The ledgers have separate rollup tables so that no transaction can hold one
rollup row while waiting for another in the opposite order: an answer's transaction takes
its provider row first (the attempt is recorded before the settlement), then the budget
rows, then the charge row, then its end user's; nothing takes them in another order. Call
these last in their service, to hold the rows for as short a time as possible.

On SQLite a decimal column stores about 15 significant digits (as the ledger's own sums
there do); PostgreSQL's numeric adds exactly.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate

from billing.models import (
    AttemptOutcome,
    DailyCharge,
    DailyEndUserCharge,
    DailyProviderCost,
    ProviderAttempt,
    UsageRecord,
)

UNPAID_OUTCOMES = (AttemptOutcome.FAILED, AttemptOutcome.LOST)
BATCH_SIZE = 2000


def utc_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def _upsert(model: type, key: dict[str, Any], values: dict[str, Any]) -> None:
    """Insert the row for `key` with `values`, or add the numbers among them to the row
    already there (a foreign key among them is only written when the row is new).

    One statement on both databases (SQLite 3.24+ and PostgreSQL): no read-then-write
    window in which two transactions could both insert, or one overwrite the other's sum.
    """
    table = connection.ops.quote_name(model._meta.db_table)

    def column(name: str) -> str:
        return connection.ops.quote_name(model._meta.get_field(name).column)

    columns = [column(name) for name in (*key, *values)]
    additions = ", ".join(
        f"{column(name)} = {table}.{column(name)} + EXCLUDED.{column(name)}"
        for name in values
        if not model._meta.get_field(name).is_relation
    )
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 - names from _meta
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({', '.join(column(name) for name in key)}) DO UPDATE SET {additions}"
    )
    params = [
        model._meta.get_field(name).get_db_prep_save(value, connection)
        for name, value in (*key.items(), *values.items())
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def daily_charge_add(*, record: UsageRecord) -> None:
    """Add one tenant-charge ledger row to its day (and its end user's day). Call in the
    transaction that wrote it."""
    day = utc_day(record.created_at)
    _upsert(
        DailyCharge,
        {"day": day, "tenant": record.tenant_id, "model": record.model_id},
        {
            "records": 1,
            "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens,
            "cost": record.cost,
        },
    )
    if record.end_user_id is not None:
        _upsert(
            DailyEndUserCharge,
            {"day": day, "end_user": record.end_user_id},
            {"tenant": record.tenant_id, "records": 1, "cost": record.cost},
        )


def daily_provider_cost_add(*, attempt: ProviderAttempt) -> None:
    """Add one provider-ledger row to its day. Call in the transaction that wrote it."""
    unpaid = attempt.outcome in UNPAID_OUTCOMES
    _upsert(
        DailyProviderCost,
        {
            "day": utc_day(attempt.created_at),
            "tenant": attempt.tenant_id,
            "model": attempt.model_id,
        },
        {
            "attempts": 1,
            "unpaid_attempts": 1 if unpaid else 0,
            "input_tokens": attempt.input_tokens,
            "output_tokens": attempt.output_tokens,
            "cost": attempt.cost,
            "unpaid_cost": attempt.cost if unpaid else Decimal(0),
        },
    )


def daily_rollups_rebuild() -> tuple[int, int, int]:
    """Recompute the rollups from the ledgers. Returns the rows written: daily charges,
    daily end-user charges, daily provider costs.

    On PostgreSQL the ledgers and rollups are locked against writes while it runs, so an
    answer's transaction waits rather than being counted twice or not at all; they are
    locked in the order an answer's transaction writes them (provider ledger, its rollup,
    charge ledger, its rollup), so waiting never turns into a deadlock. SQLite has one
    writer at a time anyway.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            tables = ", ".join(
                connection.ops.quote_name(model._meta.db_table)
                for model in (
                    ProviderAttempt, DailyProviderCost, UsageRecord, DailyCharge,
                    DailyEndUserCharge,
                )
            )  # fmt: skip
            with connection.cursor() as cursor:
                cursor.execute(f"LOCK TABLE {tables} IN SHARE ROW EXCLUSIVE MODE")
        DailyCharge.objects.all().delete()
        DailyEndUserCharge.objects.all().delete()
        DailyProviderCost.objects.all().delete()
        charges = (
            UsageRecord.objects.annotate(day=TruncDate("created_at"))
            .values("day", "tenant_id", "model_id")
            .annotate(
                records=Count("pk"),
                sum_input=Sum("input_tokens"),
                sum_output=Sum("output_tokens"),
                sum_cost=Sum("cost"),
            )
            .order_by()
        )
        charge_rows = DailyCharge.objects.bulk_create(
            (
                DailyCharge(
                    day=row["day"], tenant_id=row["tenant_id"], model_id=row["model_id"],
                    records=row["records"], input_tokens=row["sum_input"],
                    output_tokens=row["sum_output"], cost=row["sum_cost"],
                )
                for row in charges.iterator()
            ),
            batch_size=BATCH_SIZE,
        )  # fmt: skip
        end_users = (
            UsageRecord.objects.filter(end_user__isnull=False)
            .annotate(day=TruncDate("created_at"))
            .values("day", "tenant_id", "end_user_id")
            .annotate(records=Count("pk"), sum_cost=Sum("cost"))
            .order_by()
        )
        end_user_rows = DailyEndUserCharge.objects.bulk_create(
            (
                DailyEndUserCharge(
                    day=row["day"], tenant_id=row["tenant_id"], end_user_id=row["end_user_id"],
                    records=row["records"], cost=row["sum_cost"],
                )
                for row in end_users.iterator()
            ),
            batch_size=BATCH_SIZE,
        )  # fmt: skip
        unpaid = Q(outcome__in=UNPAID_OUTCOMES)
        attempts = (
            ProviderAttempt.objects.annotate(day=TruncDate("created_at"))
            .values("day", "tenant_id", "model_id")
            .annotate(
                count=Count("pk"),
                unpaid_count=Count("pk", filter=unpaid),
                sum_input=Sum("input_tokens"),
                sum_output=Sum("output_tokens"),
                sum_cost=Sum("cost"),
                sum_unpaid=Sum("cost", filter=unpaid),
            )
            .order_by()
        )
        provider_rows = DailyProviderCost.objects.bulk_create(
            (
                DailyProviderCost(
                    day=row["day"], tenant_id=row["tenant_id"], model_id=row["model_id"],
                    attempts=row["count"], unpaid_attempts=row["unpaid_count"],
                    input_tokens=row["sum_input"], output_tokens=row["sum_output"],
                    cost=row["sum_cost"], unpaid_cost=row["sum_unpaid"] or Decimal(0),
                )
                for row in attempts.iterator()
            ),
            batch_size=BATCH_SIZE,
        )  # fmt: skip
    return len(charge_rows), len(end_user_rows), len(provider_rows)
