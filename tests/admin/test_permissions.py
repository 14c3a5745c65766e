"""Staff with only Django's "view" permissions are read-only operators; no permission, no page.

This is how an operator team gives someone read access: a staff user (not a superuser)
with the `view_*` permissions of these models, e.g. through a "Read-only operators" group.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from billing.models import Budget, ModelPrice, Quota
from conversations.services import api_key_authenticate, api_key_create
from tests.factories import OPERATOR_MODELS, PASSWORD, ledger_entry, staff_user


@pytest.fixture
def limits(owner_tenant):
    budget = Budget.objects.create(tenant=owner_tenant, period="month", limit_amount=10)
    quota = Quota.objects.create(tenant=owner_tenant, requests_per_minute=5)
    ledger_entry(owner_tenant, "1")
    return budget, quota


@pytest.mark.parametrize(("app", "model"), OPERATOR_MODELS)
def test_view_only_staff_can_open_every_list_but_add_nothing(
    viewer_client, limits, app: str, model: str
) -> None:
    assert viewer_client.get(reverse(f"admin:{app}_{model}_changelist")).status_code == 200
    assert viewer_client.get(reverse(f"admin:{app}_{model}_add")).status_code == 403


def test_view_only_staff_see_a_budget_without_a_save_button_and_cannot_post(
    viewer_client, limits
) -> None:
    budget, _ = limits
    change_url = reverse("admin:billing_budget_change", args=[budget.pk])
    page = viewer_client.get(change_url)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="_save"' not in html
    assert 'name="limit_amount"' not in html
    assert "10.0000000000" in html
    response = viewer_client.post(
        change_url, {"period": "month", "limit_amount": "1000", "soft_threshold_percent": "80"}
    )
    assert response.status_code == 403
    delete_url = reverse("admin:billing_budget_delete", args=[budget.pk])
    assert viewer_client.post(delete_url, {"post": "yes"}).status_code == 403
    budget.refresh_from_db()
    assert budget.limit_amount == Decimal(10)


def test_view_only_staff_see_the_tenant_page_and_its_spend_read_only(
    viewer_client, limits, owner_tenant
) -> None:
    html = viewer_client.get(reverse("admin:conversations_tenant_changelist")).content.decode()
    assert '<span class="spend-percent">10.0%</span>' in html
    change_url = reverse("admin:conversations_tenant_change", args=[owner_tenant.pk])
    page = viewer_client.get(change_url)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="_save"' not in html
    assert 'name="budgets-0-limit_amount"' not in html
    assert "Budgets set by the operator" in html
    assert viewer_client.post(change_url, {"name": "Renamed"}).status_code == 403
    owner_tenant.refresh_from_db()
    assert owner_tenant.name != "Renamed"


def test_view_only_staff_cannot_revoke_keys_or_change_prices(viewer_client, owner_tenant) -> None:
    created = api_key_create(tenant=owner_tenant)
    viewer_client.post(
        reverse("admin:conversations_apikey_changelist"),
        {"action": "revoke_keys", "_selected_action": [created.api_key.pk]},
    )
    assert api_key_authenticate(raw_key=created.secret) is not None
    price = ModelPrice.objects.first()
    change_url = reverse("admin:billing_modelprice_change", args=[price.pk])
    assert viewer_client.get(change_url).status_code == 200
    assert viewer_client.post(change_url, {}).status_code == 403


def test_staff_without_permissions_see_no_operator_pages(db, limits) -> None:
    staff_user("nobody", actions=())
    client = Client()
    client.login(username="nobody", password=PASSWORD)
    for app, model in OPERATOR_MODELS:
        assert client.get(reverse(f"admin:{app}_{model}_changelist")).status_code == 403


def test_staff_with_change_permissions_can_edit_operator_budgets(db, limits) -> None:
    budget, _ = limits
    staff_user("editor", actions=("view", "change"))
    client = Client()
    client.login(username="editor", password=PASSWORD)
    change_url = reverse("admin:billing_budget_change", args=[budget.pk])
    assert 'name="_save"' in client.get(change_url).content.decode()
    response = client.post(
        change_url,
        {"period": "month", "limit_amount": "20", "is_hard": "on", "soft_threshold_percent": "80"},
    )
    assert response.status_code == 302
    budget.refresh_from_db()
    assert budget.limit_amount == Decimal(20)
