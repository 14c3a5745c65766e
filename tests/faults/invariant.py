"""The one invariant every fault scenario ends with: nothing lost, nothing charged twice."""

from __future__ import annotations

from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

from django.db.models import Sum

from billing.models import Budget, Reservation, ReservationStatus, UsageRecord
from billing.pricing import token_cost
from billing.services import budget_state
from conversations.models import Message, MessageRole, MessageStatus
from tests.e2e.books import FINAL_STATUSES, budget_ledger_scope


def assert_books_balance() -> dict[str, int]:
    """Nothing lost, nothing charged twice, across everything in the test database:

    - every user message is followed (sequence + 1) by exactly one assistant message, in a
      final state, and every assistant message answers a user message;
    - a completed answer, and a cancelled one that was charged, has exactly one usage
      record, at Bedrock's counts and the reservation's prices; failed and uncharged
      answers have none, and no usage record belongs to anything else;
    - no reservation is open; settled ones have their record, released ones none;
    - for every budget that is not per end user, the spend `budget_state` reports equals
      the sum of the ledger in its scope for the current period, and nothing is held.

    Returns counts (answers by status, records, budgets checked) for the caller to assert on.
    """
    problems: list[str] = []
    messages = list(Message.objects.order_by("conversation_id", "sequence"))
    by_position: dict[tuple[Any, int], list[Message]] = defaultdict(list)
    for message in messages:
        by_position[(message.conversation_id, message.sequence)].append(message)
    answers = [m for m in messages if m.role == MessageRole.ASSISTANT]
    for message in messages:
        if message.role == MessageRole.USER:
            following = by_position[(message.conversation_id, message.sequence + 1)]
            if [m.role for m in following] != [MessageRole.ASSISTANT]:
                problems.append(f"user message {message.pk} is followed by {following}")
            elif following[0].status not in FINAL_STATUSES:
                problems.append(f"answer {following[0].pk} is still {following[0].status}")
        elif message.role == MessageRole.ASSISTANT:
            before = by_position[(message.conversation_id, message.sequence - 1)]
            if [m.role for m in before] != [MessageRole.USER]:
                problems.append(f"answer {message.pk} does not follow one user message")

    records_per_message = Counter(UsageRecord.objects.values_list("message_id", flat=True))
    records = {r.message_id: r for r in UsageRecord.objects.all()}
    reservations = {r.message_id: r for r in Reservation.objects.all()}
    for answer in answers:
        count = records_per_message[answer.pk]
        reservation = reservations.get(answer.pk)
        reservation_status = reservation.status if reservation else None
        charged = answer.status == MessageStatus.COMPLETED or (
            answer.status == MessageStatus.CANCELLED
            and reservation_status == ReservationStatus.SETTLED
        )
        if charged:
            if count != 1:
                problems.append(f"{answer.status} answer {answer.pk} has {count} usage records")
            if reservation_status != ReservationStatus.SETTLED:
                problems.append(f"charged answer {answer.pk}: reservation {reservation_status}")
        else:
            if count:
                problems.append(f"{answer.status} answer {answer.pk} has {count} usage records")
            if reservation is not None and reservation_status != ReservationStatus.RELEASED:
                problems.append(f"uncharged answer {answer.pk}: reservation {reservation_status}")
        record = records.get(answer.pk)
        if record is not None and reservation is not None:
            cost = token_cost(
                input_tokens=record.input_tokens,
                output_tokens=record.output_tokens,
                input_price=reservation.input_price_per_million,
                output_price=reservation.output_price_per_million,
            )
            if record.cost != cost:
                problems.append(f"answer {answer.pk}: charged {record.cost}, tokens cost {cost}")
        if record is not None and reservation is not None and answer.prompt_token_count is not None:
            # Bedrock's counts, capped at the reservation: the most a tenant can be charged.
            counts = (
                min(answer.prompt_token_count, reservation.prompt_tokens),
                min(answer.generation_token_count or 0, reservation.max_gen_len),
            )
            if (record.input_tokens, record.output_tokens) != counts:
                problems.append(f"answer {answer.pk}: ledger tokens differ from Bedrock's")
    answer_ids = {answer.pk for answer in answers}
    for message_id in set(records_per_message) - answer_ids:
        problems.append(f"usage record for {message_id}, which is no answer")
    for reservation in Reservation.objects.filter(status=ReservationStatus.OPEN):
        problems.append(f"reservation of {reservation.message_id} is still open")

    budgets = list(Budget.objects.filter(per_end_user=False).select_related("tenant"))
    for budget in budgets:
        state = budget_state(budget, time_zone=budget.tenant.time_zone)
        ledger = UsageRecord.objects.filter(
            budget_ledger_scope(budget), created_at__gte=state.period_start
        ).aggregate(total=Sum("cost"))["total"] or Decimal(0)
        if state.spent != ledger:
            problems.append(f"budget {budget.name!r}: spent {state.spent}, ledger {ledger}")
        if state.reserved:
            problems.append(f"budget {budget.name!r}: {state.reserved} still reserved")

    assert not problems, "books do not balance:\n" + "\n".join(problems)
    summary = Counter(str(answer.status) for answer in answers)
    return {
        **summary,
        "usage_records": len(records),
        "budgets": len(budgets),
        "tenant_wide_budgets": sum(
            1 for b in budgets if b.end_user_id is None and b.model_id is None
        ),
    }
