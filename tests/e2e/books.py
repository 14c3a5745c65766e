"""The money invariants of a set of tenants, checked from the database and Redis alone.

Used by the hard-budget attacks and the randomized schedules: whatever a tenant did, after
every answer is final these hold for its books.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.db.models import Q, Sum

from billing.models import (
    Budget,
    ProviderAttempt,
    Quota,
    Reservation,
    ReservationStatus,
    UsageRecord,
)
from billing.services import budget_state
from config.redis_client import get_redis
from conversations.models import Message, MessageRole, MessageStatus

FINAL_STATUSES = frozenset({MessageStatus.COMPLETED, MessageStatus.FAILED, MessageStatus.CANCELLED})


def budget_ledger_scope(budget: Budget) -> Q:
    scope = Q(tenant_id=budget.tenant_id)
    if budget.end_user_id is not None:
        scope &= Q(end_user_id=budget.end_user_id)
    if budget.model_id is not None:
        scope &= Q(model_id=budget.model_id)
    return scope


def books_problems(
    tenant_ids: Iterable[Any], *, strict_budget_ids: Iterable[Any] | None = None
) -> list[str]:
    """Everything wrong with these tenants' books; empty when they balance.

    - no answer is queued or running, and no reservation is open;
    - a settled reservation has exactly one ledger row, a released one none, and the row
      costs at most what was reserved, at the reservation's prices;
    - every completed answer, and every cancelled answer that streamed text, was charged;
    - the provider ledger holds at least the tokens charged, answer by answer;
    - every hard budget (those in `strict_budget_ids`, default all: a budget whose limit
      was lowered below its spend can legitimately be over it) has its period's ledger
      within its limit, and every budget's spend equals the ledger in its scope;
    - every rate-quota token counter in Redis holds exactly what the settled reservations
      counted in it and kept (nothing leaked by a rollback, a failure or a release).
    """
    tenant_ids = list(tenant_ids)
    problems: list[str] = []
    unfinished = Message.objects.filter(
        tenant_id__in=tenant_ids, role=MessageRole.ASSISTANT
    ).exclude(status__in=FINAL_STATUSES)
    problems += [
        f"answer {pk} is still {status}" for pk, status in unfinished.values_list("pk", "status")
    ]

    reservations = list(Reservation.objects.filter(tenant_id__in=tenant_ids))
    records = defaultdict(list)
    for record in UsageRecord.objects.filter(tenant_id__in=tenant_ids):
        records[record.message_id].append(record)
    provider_tokens: dict[Any, int] = defaultdict(int)
    for message_id, tokens_in, tokens_out in ProviderAttempt.objects.filter(
        tenant_id__in=tenant_ids
    ).values_list("message_id", "input_tokens", "output_tokens"):
        provider_tokens[message_id] += tokens_in + tokens_out
    expected_counters: dict[str, int] = defaultdict(int)
    for reservation in reservations:
        rows = records.get(reservation.message_id, [])
        if reservation.status == ReservationStatus.OPEN:
            problems.append(f"reservation of {reservation.message_id} is still open")
        elif reservation.status == ReservationStatus.SETTLED:
            if len(rows) != 1:
                problems.append(f"settled {reservation.message_id} has {len(rows)} ledger rows")
        elif rows:
            problems.append(f"released {reservation.message_id} has {len(rows)} ledger rows")
        for record in rows:
            if record.cost > reservation.amount:
                problems.append(
                    f"{reservation.message_id} charged {record.cost} > reserved "
                    f"{reservation.amount}"
                )
            if (
                record.input_tokens > reservation.prompt_tokens
                or record.output_tokens > reservation.max_gen_len
            ):
                problems.append(f"{reservation.message_id} charged tokens past the reservation")
            charged_tokens = record.input_tokens + record.output_tokens
            if provider_tokens[reservation.message_id] < charged_tokens:
                problems.append(
                    f"{reservation.message_id}: provider ledger has "
                    f"{provider_tokens[reservation.message_id]} tokens, tenant charged "
                    f"{charged_tokens}"
                )
        # Settlement gives back the unused part of each token counter; a release, all of it.
        refund_cap = 0
        if reservation.status == ReservationStatus.SETTLED and len(rows) == 1:
            refund_cap = max(
                0,
                reservation.prompt_tokens
                + reservation.max_gen_len
                - rows[0].input_tokens
                - rows[0].output_tokens,
            )
        for key, amount in reservation.rate_token_counters:
            kept = amount - min(amount, refund_cap) if reservation.status == "settled" else 0
            expected_counters[key] += kept

    reservation_ids = {r.message_id for r in reservations}
    for message_id in set(records) - reservation_ids:
        problems.append(f"ledger row for {message_id}, which has no reservation")
    charged = {r.message_id for r in reservations if r.status == ReservationStatus.SETTLED}
    for answer in Message.objects.filter(tenant_id__in=tenant_ids, role=MessageRole.ASSISTANT):
        delivered = answer.status == MessageStatus.COMPLETED or (
            answer.status == MessageStatus.CANCELLED and answer.content
        )
        if delivered and answer.pk not in charged:
            problems.append(f"{answer.status} answer {answer.pk} was delivered uncharged")

    strict = None if strict_budget_ids is None else set(strict_budget_ids)
    for budget in Budget.objects.filter(tenant_id__in=tenant_ids).select_related("tenant"):
        state = budget_state(budget, time_zone=budget.tenant.time_zone)
        if budget.per_end_user:
            continue  # summed from the ledger itself; its hard limit is checked per user below
        ledger = UsageRecord.objects.filter(
            budget_ledger_scope(budget), created_at__gte=state.period_start
        ).aggregate(total=Sum("cost"))["total"] or Decimal(0)
        if state.spent != ledger:
            problems.append(f"budget {budget.name!r}: spent {state.spent}, ledger {ledger}")
        checked = budget.is_hard and (strict is None or budget.pk in strict)
        if checked and ledger > budget.limit_amount:
            problems.append(f"hard budget {budget.name!r}: ledger {ledger} > {budget.limit_amount}")
    for budget in Budget.objects.filter(tenant_id__in=tenant_ids, per_end_user=True, is_hard=True):
        if strict is not None and budget.pk not in strict:
            continue
        for end_user_id in (
            UsageRecord.objects.filter(budget_ledger_scope(budget))
            .order_by()
            .values_list("end_user_id", flat=True)
            .distinct()
        ):
            state = budget_state(budget, end_user_id=end_user_id, time_zone=budget.tenant.time_zone)
            if state.spent > budget.limit_amount:
                problems.append(
                    f"per-end-user budget {budget.name!r}: {end_user_id} spent {state.spent}"
                )

    client = get_redis()
    quota_ids = Quota.objects.filter(tenant_id__in=tenant_ids).values_list("pk", flat=True)
    for quota_id in quota_ids:
        for raw_key in client.scan_iter(match=f"quota:{quota_id}:*:tp[md]:*"):
            key = raw_key.decode()
            expected_counters.setdefault(key, 0)
    for key, expected in expected_counters.items():
        actual = int(client.get(key) or 0)
        if actual != expected:
            problems.append(
                f"rate counter {key} holds {actual}, the settled answers kept {expected}"
            )
    return problems


def assert_books_balance_for(tenant_ids: Iterable[Any], **options: Any) -> None:
    problems = books_problems(tenant_ids, **options)
    assert not problems, "books do not balance:\n" + "\n".join(problems)
