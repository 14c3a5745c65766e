"""A budget or quota deleted between a PATCH's lookup and its write is a 404, not a 500 (a money
schedule met it: one client deleting the budget while another edited it)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.limits import budget_create, budget_update, quota_create, quota_update
from billing.models import Budget, ManagedBy, Quota
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
