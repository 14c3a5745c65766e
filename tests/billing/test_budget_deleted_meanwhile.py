"""A budget or quota deleted between a PATCH's lookup and its write is a 404, not a 500 (a money
schedule met it: one client deleting the budget while another edited it)."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.utils import timezone

from billing.limits import (
    budget_create,
    budget_delete,
    budget_update,
    quota_create,
    quota_update,
)
from billing.models import Alert, AlertKind, Budget, ManagedBy, Quota
from config.errors import NotFoundError

pytestmark = pytest.mark.django_db


def test_an_edit_of_a_budget_deleted_meanwhile_is_not_found(owner_tenant) -> None:
    budget = budget_create(
        tenant=owner_tenant, period="month", limit=Decimal("5"), managed_by=ManagedBy.TENANT
    )
    Budget.objects.filter(pk=budget.pk).delete()  # the other client's DELETE won

    with pytest.raises(NotFoundError):
        budget_update(budget=budget, managed_by=ManagedBy.TENANT, limit=Decimal("7"))
    assert not Budget.objects.filter(pk=budget.pk).exists()


def test_an_edit_of_a_budget_still_there_is_written(owner_tenant) -> None:
    budget = budget_create(
        tenant=owner_tenant, period="month", limit=Decimal("5"), managed_by=ManagedBy.TENANT
    )
    budget_update(budget=budget, managed_by=ManagedBy.TENANT, limit=Decimal("7"))
    assert Budget.objects.get(pk=budget.pk).limit_amount == Decimal("7")


def test_an_edit_of_a_quota_deleted_meanwhile_is_not_found(owner_tenant) -> None:
    quota = quota_create(tenant=owner_tenant, managed_by=ManagedBy.TENANT, requests_per_minute=5)
    Quota.objects.filter(pk=quota.pk).delete()

    with pytest.raises(NotFoundError):
        quota_update(quota=quota, managed_by=ManagedBy.TENANT, requests_per_minute=9)
    assert not Quota.objects.filter(pk=quota.pk).exists()


def test_deleting_a_budget_already_gone_is_a_no_op(owner_tenant) -> None:
    budget = budget_create(
        tenant=owner_tenant, period="month", limit=Decimal("5"), managed_by=ManagedBy.TENANT
    )
    Budget.objects.filter(pk=budget.pk).delete()
    budget_delete(budget=budget, managed_by=ManagedBy.TENANT)
    assert not Budget.objects.filter(pk=budget.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_delete_waits_for_a_settlement_writing_an_alert_and_takes_the_alert_with_it(
    owner_tenant,
) -> None:
    """A settlement holds the budget's row lock while it writes the budget's alert; a DELETE
    arriving meanwhile must wait for it, not collect the alerts first and then break the
    alert's foreign key at commit (a money schedule met that as a 500)."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises whole transactions: there is no row lock to race")
    budget = budget_create(
        tenant=owner_tenant, period="month", limit=Decimal("5"), managed_by=ManagedBy.TENANT
    )
    locked = threading.Event()
    errors: list[BaseException] = []

    def settlement() -> None:
        try:
            with transaction.atomic():
                Budget.objects.select_for_update().filter(pk=budget.pk).exists()
                locked.set()
                time.sleep(0.3)  # the DELETE arrives while the lock is held
                Alert.objects.create(
                    tenant=owner_tenant,
                    budget=budget,
                    kind=AlertKind.SOFT_THRESHOLD,
                    period_start=timezone.now(),
                    spent_amount=Decimal("4"),
                    limit_amount=Decimal("5"),
                )
        except BaseException as error:  # reported by the test below
            errors.append(error)
        finally:
            connection.close()

    worker = threading.Thread(target=settlement)
    worker.start()
    assert locked.wait(timeout=5)
    budget_delete(budget=budget, managed_by=ManagedBy.TENANT)
    worker.join(timeout=10)

    assert errors == []
    assert not Budget.objects.filter(pk=budget.pk).exists()
    assert not Alert.objects.filter(budget_id=budget.pk).exists()
