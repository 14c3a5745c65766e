"""The daily rollups stay equal to the ledgers they sum: written by the services in the
ledger's own transaction, rolled back with it, never counted twice, right under concurrent
settlements, and rebuilt from the ledgers on demand."""

from __future__ import annotations

import importlib
import threading
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import connection, transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate

from billing.models import (
    AttemptOutcome,
    Budget,
    DailyCharge,
    DailyEndUserCharge,
    DailyProviderCost,
    ProviderAttempt,
    UsageRecord,
)
from billing.rollups import daily_rollups_rebuild
from billing.services import provider_attempt_record, reservation_settle
from conversations.models import EndUser
from conversations.services.conversations import conversation_create, user_message_create
from tests.billing.ledger import LLAMA31_8B, LLAMA33_70B
from tests.factories import make_tenant

THREADS = 8


def answer(tenant: Any, model_id: str = LLAMA31_8B, end_user: str | None = None) -> Any:
    conversation = conversation_create(
        tenant=tenant, model_id=model_id, end_user_external_id=end_user
    )
    return user_message_create(conversation=conversation, content="Hello", max_gen_len=40).answer


def finish(answer: Any, *, attempts: list[tuple[str, int, int]], settle: tuple[int, int] | None):
    """What the worker's final transaction does: attempts into the provider ledger, then the
    settlement (conversations.services.generation._finish)."""
    with transaction.atomic():
        for number, (outcome, tokens_in, tokens_out) in enumerate(attempts, start=1):
            provider_attempt_record(
                message_id=answer.pk,
                attempt=number,
                outcome=outcome,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                error_code="throttled" if outcome == AttemptOutcome.FAILED else "",
            )
        if settle is not None:
            reservation_settle(
                message_id=answer.pk,
                conversation_id=answer.conversation_id,
                input_tokens=settle[0],
                output_tokens=settle[1],
                outcome="completed",
            )


def ledger_sums() -> tuple[dict, dict, dict]:
    """The ledgers summed as the rollups should hold them, keyed by (day, tenant, model)."""
    charges = {
        (row["day"], row["tenant_id"], row["model_id"]): (
            row["n"],
            row["i"],
            row["o"],
            row["c"],
        )
        for row in UsageRecord.objects.annotate(day=TruncDate("created_at"))
        .values("day", "tenant_id", "model_id")
        .annotate(n=Count("pk"), i=Sum("input_tokens"), o=Sum("output_tokens"), c=Sum("cost"))
        .order_by()
    }
    unpaid = Q(outcome__in=["failed", "lost"])
    provider = {
        (row["day"], row["tenant_id"], row["model_id"]): (
            row["n"],
            row["u"],
            row["i"],
            row["o"],
            row["c"],
            row["uc"] or Decimal(0),
        )
        for row in ProviderAttempt.objects.annotate(day=TruncDate("created_at"))
        .values("day", "tenant_id", "model_id")
        .annotate(
            n=Count("pk"),
            u=Count("pk", filter=unpaid),
            i=Sum("input_tokens"),
            o=Sum("output_tokens"),
            c=Sum("cost"),
            uc=Sum("cost", filter=unpaid),
        )
        .order_by()
    }
    end_users = {
        (row["day"], row["tenant_id"], row["end_user_id"]): (row["n"], row["c"])
        for row in UsageRecord.objects.filter(end_user__isnull=False)
        .annotate(day=TruncDate("created_at"))
        .values("day", "tenant_id", "end_user_id")
        .annotate(n=Count("pk"), c=Sum("cost"))
        .order_by()
    }
    return charges, provider, end_users


def rollups() -> tuple[dict, dict, dict]:
    charges = {
        (row.day, row.tenant_id, row.model_id): (
            row.records,
            row.input_tokens,
            row.output_tokens,
            row.cost,
        )
        for row in DailyCharge.objects.all()
    }
    provider = {
        (row.day, row.tenant_id, row.model_id): (
            row.attempts,
            row.unpaid_attempts,
            row.input_tokens,
            row.output_tokens,
            row.cost,
            row.unpaid_cost,
        )
        for row in DailyProviderCost.objects.all()
    }
    end_users = {
        (row.day, row.tenant_id, row.end_user_id): (row.records, row.cost)
        for row in DailyEndUserCharge.objects.all()
    }
    return charges, provider, end_users


@pytest.mark.django_db
def test_the_services_keep_the_rollups_equal_to_the_ledgers() -> None:
    acme, other = make_tenant("acme"), make_tenant("other")
    plain = answer(acme, end_user="ann")
    finish(plain, attempts=[(AttemptOutcome.COMPLETED, 20, 10)], settle=(20, 10))
    retried = answer(acme, end_user="ann")
    finish(
        retried,
        attempts=[(AttemptOutcome.FAILED, 20, 3), (AttemptOutcome.COMPLETED, 20, 30)],
        settle=(20, 30),
    )
    overrun = answer(acme, end_user="bob")  # Bedrock reports 100 output tokens for max_gen_len 40
    finish(overrun, attempts=[(AttemptOutcome.COMPLETED, 20, 100)], settle=(20, 100))
    failed = answer(other, LLAMA33_70B)
    finish(failed, attempts=[(AttemptOutcome.FAILED, 20, 0)], settle=None)
    lost = answer(other, LLAMA33_70B)
    with transaction.atomic():
        provider_attempt_record(
            message_id=lost.pk,
            attempt=1,
            outcome=AttemptOutcome.LOST,
            input_tokens=20,
            output_tokens=40,
            counts_reported=False,
        )

    charges, provider, end_users = rollups()
    assert (charges, provider, end_users) == ledger_sums()
    assert sorted(records for records, _ in end_users.values()) == [1, 2]
    (acme_charges,) = [value for key, value in charges.items() if key[1] == acme.pk]
    assert acme_charges[0] == 3
    assert acme_charges[3] == UsageRecord.objects.filter(tenant=acme).aggregate(c=Sum("cost"))["c"]
    (other_provider,) = [value for key, value in provider.items() if key[1] == other.pk]
    assert other_provider[:2] == (2, 2)  # both attempts unpaid
    assert other_provider[4] == other_provider[5] > 0

    assert daily_rollups_rebuild() == (1, 2, 2)
    assert rollups() == (charges, provider, end_users)


@pytest.mark.django_db
def test_a_deleted_end_user_leaves_the_rollups_as_the_ledger_then_reads() -> None:
    """The ledger keeps the rows without the end user; their rollup rows go with it."""
    acme = make_tenant("acme")
    finish(answer(acme, end_user="ann"), attempts=[], settle=(20, 10))
    finish(answer(acme, end_user="bob"), attempts=[], settle=(20, 10))
    EndUser.objects.get(external_id="ann").delete()
    assert rollups() == ledger_sums()
    assert DailyEndUserCharge.objects.count() == 1


@pytest.mark.django_db
def test_an_attempt_recorded_twice_and_a_second_settlement_add_nothing() -> None:
    tenant = make_tenant("acme")
    turn = answer(tenant)
    finish(turn, attempts=[(AttemptOutcome.COMPLETED, 20, 10)], settle=(20, 10))
    finish(turn, attempts=[(AttemptOutcome.COMPLETED, 20, 10)], settle=(20, 10))
    assert DailyProviderCost.objects.get().attempts == 1
    assert DailyCharge.objects.get().records == 1
    assert rollups() == ledger_sums()


@pytest.mark.django_db
def test_a_rolled_back_settlement_leaves_no_rollup() -> None:
    tenant = make_tenant("acme")
    turn = answer(tenant)

    class AbortError(Exception):
        pass

    def settle_then_fail() -> None:
        with transaction.atomic():
            finish(turn, attempts=[(AttemptOutcome.COMPLETED, 20, 10)], settle=(20, 10))
            assert DailyCharge.objects.count() == DailyProviderCost.objects.count() == 1
            raise AbortError

    with pytest.raises(AbortError):
        settle_then_fail()
    assert DailyCharge.objects.count() == DailyProviderCost.objects.count() == 0
    assert UsageRecord.objects.count() == ProviderAttempt.objects.count() == 0


@pytest.mark.django_db
def test_the_migration_fill_and_the_rebuild_command_agree_with_the_ledgers() -> None:
    tenant = make_tenant("acme")
    for _ in range(2):
        finish(answer(tenant), attempts=[(AttemptOutcome.COMPLETED, 20, 10)], settle=(20, 10))
    expected = rollups()
    DailyCharge.objects.all().delete()
    DailyProviderCost.objects.all().delete()
    migration = importlib.import_module("billing.migrations.0004_daily_rollups")
    migration.fill_daily_rollups(apps, connection.schema_editor())
    assert rollups() == expected == ledger_sums()

    DailyCharge.objects.update(cost=Decimal(999))  # drifted, say, after a restore
    out = StringIO()
    call_command("rebuild_daily_rollups", stdout=out)
    assert "Rebuilt 1 daily charge rows, 0 daily end-user charge rows and 1 daily provider" in (
        out.getvalue()
    )
    assert rollups() == expected


@pytest.mark.django_db(transaction=True)
def test_concurrent_answers_of_one_tenant_and_model_add_up_without_deadlock(
    catalogue: None,
) -> None:
    """Every answer's transaction takes the provider rollup row, the tenant's budget row,
    then the charge rollup row: THREADS of them at once, on one day's rows, all commit and
    the rollups equal the ledgers."""
    tenant = make_tenant("busy")
    Budget.objects.create(tenant=tenant, period="month", limit_amount=Decimal(100))
    answers = [answer(tenant) for _ in range(THREADS)]
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def run(turn: Any) -> None:
        try:
            connection.ensure_connection()
            barrier.wait(timeout=30)
            finish(
                turn,
                attempts=[(AttemptOutcome.FAILED, 20, 2), (AttemptOutcome.COMPLETED, 20, 10)],
                settle=(20, 10),
            )
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(turn,)) for turn in answers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert UsageRecord.objects.count() == THREADS
    assert rollups() == ledger_sums()
    assert DailyCharge.objects.get().records == THREADS
    assert DailyProviderCost.objects.get().attempts == 2 * THREADS
    budget = Budget.objects.get(tenant=tenant)
    assert budget.spent_amount == DailyCharge.objects.get().cost
