"""Prices (new rows only), the read-only ledger, reservations and alerts, budgets and quotas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.models import Alert, Budget, ManagedBy, ModelPrice, Quota, Reservation
from conversations.models import EndUser
from conversations.services.conversations import conversation_create, user_message_create
from models_catalog.models import FoundationModel
from tests.factories import LLAMA3, ledger_entry


def admin_url(model: str, view: str, *args: object) -> str:
    app = "models_catalog" if model == "foundationmodel" else "billing"
    return reverse(f"admin:{app}_{model}_{view}", args=args)


@pytest.fixture
def llama() -> FoundationModel:
    return FoundationModel.objects.get(model_id=LLAMA3)


# --- Prices --------------------------------------------------------------------------------


def test_prices_are_listed_newest_first_and_filter_by_model(superuser_client, llama) -> None:
    newer = ModelPrice.objects.create(
        model=llama,
        input_price_per_million=Decimal("0.30"),
        output_price_per_million=Decimal("0.40"),
        effective_from=datetime(2025, 6, 1, tzinfo=UTC),
    )
    response = superuser_client.get(
        f"{admin_url('modelprice', 'changelist')}?model__id__exact={llama.pk}"
    )
    prices = list(response.context["cl"].result_list)
    assert [price.model_id for price in prices] == [llama.pk, llama.pk]
    assert prices[0] == newer
    assert prices[0].effective_from > prices[1].effective_from
    everything = superuser_client.get(admin_url("modelprice", "changelist"))
    dates = [price.effective_from for price in everything.context["cl"].result_list]
    assert dates == sorted(dates, reverse=True)


def test_a_new_price_is_a_new_row_and_old_rows_cannot_change(superuser_client, llama) -> None:
    original = ModelPrice.objects.get(model=llama)
    add_page = superuser_client.get(admin_url("modelprice", "add"))
    assert add_page.context["adminform"].form.initial["effective_from"] <= timezone.now()

    response = superuser_client.post(
        admin_url("modelprice", "add"),
        {
            "model": llama.pk,
            "input_price_per_million": "0.25",
            "output_price_per_million": "0.35",
            "effective_from_0": "2030-01-01",
            "effective_from_1": "00:00:00",
        },
    )
    assert response.status_code == 302
    assert ModelPrice.objects.filter(model=llama).count() == 2

    change_url = admin_url("modelprice", "change", original.pk)
    page = superuser_client.get(change_url)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="_save"' not in html
    assert 'name="input_price_per_million"' not in html
    tampered = {
        "model": llama.pk,
        "input_price_per_million": "99",
        "output_price_per_million": "99",
        "effective_from_0": "2024-01-01",
        "effective_from_1": "00:00:00",
    }
    assert superuser_client.post(change_url, tampered).status_code == 403
    original.refresh_from_db()
    assert original.input_price_per_million == Decimal("0.22")


def test_only_a_price_not_yet_in_force_can_be_deleted(superuser_client, llama) -> None:
    in_force = ModelPrice.objects.get(model=llama)
    future = ModelPrice.objects.create(
        model=llama,
        input_price_per_million=1,
        output_price_per_million=1,
        effective_from=timezone.now() + timedelta(days=30),
    )
    assert (
        superuser_client.post(
            admin_url("modelprice", "delete", in_force.pk), {"post": "yes"}
        ).status_code
        == 403
    )
    assert (
        superuser_client.post(
            admin_url("modelprice", "delete", future.pk), {"post": "yes"}
        ).status_code
        == 302
    )
    assert list(ModelPrice.objects.filter(model=llama)) == [in_force]
    changelist = superuser_client.get(admin_url("modelprice", "changelist"))
    assert "delete_selected" not in changelist.content.decode()


def test_a_duplicate_price_instant_is_a_form_error(superuser_client, llama) -> None:
    response = superuser_client.post(
        admin_url("modelprice", "add"),
        {
            "model": llama.pk,
            "input_price_per_million": "1",
            "output_price_per_million": "1",
            "effective_from_0": "2024-01-01",
            "effective_from_1": "00:00:00",
        },
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    assert ModelPrice.objects.filter(model=llama).count() == 1


def test_catalogue_shows_the_price_in_force_and_links_to_its_history(
    superuser_client, llama
) -> None:
    response = superuser_client.get(admin_url("foundationmodel", "changelist"))
    html = response.content.decode()
    assert f"{admin_url('modelprice', 'changelist')}?model__id__exact={llama.pk}" in html
    [listed] = [model for model in response.context["cl"].result_list if model.pk == llama.pk]
    assert listed.input_price_per_million == Decimal("0.22")


# --- Read-only records ----------------------------------------------------------------------


def open_turn(tenant):
    conversation = conversation_create(tenant=tenant, model_id=LLAMA3)
    return user_message_create(conversation=conversation, content="Hello")


def test_ledger_is_listed_with_filters_and_nobody_can_add_change_or_delete_it(
    superuser_client, owner_tenant, other_tenant, llama
) -> None:
    mine = ledger_entry(owner_tenant, "0.5")
    ledger_entry(other_tenant, "0.7", at=datetime(2024, 3, 5, tzinfo=UTC))
    changelist = admin_url("usagerecord", "changelist")

    def listed(query: str) -> list:
        response = superuser_client.get(f"{changelist}{query}")
        assert response.status_code == 200
        return [record.tenant.slug for record in response.context["cl"].result_list]

    assert sorted(listed("")) == ["alice", "bob"]
    assert listed(f"?tenant__id__exact={owner_tenant.pk}") == ["alice"]
    assert sorted(listed(f"?model__id__exact={llama.pk}")) == ["alice", "bob"]
    assert listed("?created_at__year=2024&created_at__month=3") == ["bob"]
    drill_down = superuser_client.get(changelist).content.decode()
    assert '<nav class="toplinks">' in drill_down
    assert "?created_at__year=2024" in drill_down

    assert superuser_client.get(admin_url("usagerecord", "add")).status_code == 403
    change_url = admin_url("usagerecord", "change", mine.pk)
    page = superuser_client.get(change_url)
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert superuser_client.post(change_url, {"cost": "0"}).status_code == 403
    delete_url = admin_url("usagerecord", "delete", mine.pk)
    assert superuser_client.post(delete_url, {"post": "yes"}).status_code == 403
    mine.refresh_from_db()
    assert mine.cost == Decimal("0.5")


def test_reservations_are_read_only_and_filter_by_status(superuser_client, owner_tenant) -> None:
    turn = open_turn(owner_tenant)
    reservation = Reservation.objects.get(message=turn.answer)
    changelist = admin_url("reservation", "changelist")
    open_list = superuser_client.get(f"{changelist}?status__exact=open")
    assert list(open_list.context["cl"].result_list) == [reservation]
    settled_list = superuser_client.get(f"{changelist}?status__exact=settled")
    assert list(settled_list.context["cl"].result_list) == []
    assert superuser_client.get(admin_url("reservation", "add")).status_code == 403
    change_url = admin_url("reservation", "change", reservation.pk)
    assert superuser_client.post(change_url, {"status": "released"}).status_code == 403
    reservation.refresh_from_db()
    assert reservation.status == "open"


def test_alerts_are_listed_read_only(superuser_client, owner_tenant) -> None:
    budget = Budget.objects.create(tenant=owner_tenant, period="month", limit_amount=1)
    alert = Alert.objects.create(
        tenant=owner_tenant, budget=budget, kind="limit_reached", period_start=timezone.now(),
        spent_amount=1, limit_amount=1,
    )  # fmt: skip
    response = superuser_client.get(admin_url("alert", "changelist"))
    assert list(response.context["cl"].result_list) == [alert]
    assert admin_url("budget", "change", budget.pk) in response.content.decode()
    assert superuser_client.get(admin_url("alert", "add")).status_code == 403
    change_url = admin_url("alert", "change", alert.pk)
    assert 'name="_save"' not in superuser_client.get(change_url).content.decode()
    assert superuser_client.post(change_url, {}).status_code == 403


# --- Budgets and quotas on their own pages ------------------------------------------------


def test_budget_added_on_its_own_page_is_the_operators(superuser_client, owner_tenant) -> None:
    response = superuser_client.post(
        admin_url("budget", "add"),
        {"tenant": owner_tenant.pk, "period": "week", "limit_amount": "3.5", "is_hard": "on",
         "soft_threshold_percent": "75"},
    )  # fmt: skip
    assert response.status_code == 302
    budget = Budget.objects.get()
    assert (budget.managed_by, budget.period, budget.limit_amount) == (
        ManagedBy.OPERATOR,
        "week",
        Decimal("3.5"),
    )


def test_budget_for_another_tenants_end_user_is_refused(
    superuser_client, owner_tenant, other_tenant
) -> None:
    foreign = EndUser.objects.create(tenant=other_tenant, external_id="foreign")
    response = superuser_client.post(
        admin_url("budget", "add"),
        {"tenant": owner_tenant.pk, "period": "day", "limit_amount": "1",
         "soft_threshold_percent": "80", "end_user": foreign.pk},
    )  # fmt: skip
    assert response.status_code == 200
    assert "belongs to another tenant" in response.content.decode()
    assert not Budget.objects.exists()


def test_tenant_managed_budgets_and_quotas_cannot_be_changed_or_deleted(
    superuser_client, owner_tenant
) -> None:
    budget = Budget.objects.create(
        tenant=owner_tenant, period="day", limit_amount=2, managed_by=ManagedBy.TENANT
    )
    quota = Quota.objects.create(
        tenant=owner_tenant, requests_per_minute=3, managed_by=ManagedBy.TENANT
    )
    for model, limit in (("budget", budget), ("quota", quota)):
        change_url = admin_url(model, "change", limit.pk)
        page = superuser_client.get(change_url)
        assert page.status_code == 200
        html = page.content.decode()
        assert (
            "tenant (read-only here)"
            in superuser_client.get(admin_url(model, "changelist")).content.decode()
        )
        assert 'name="_save"' not in html
        tampered = {"limit_amount": "99", "period": "day", "requests_per_minute": "99"}
        assert superuser_client.post(change_url, tampered).status_code == 403
        delete_url = admin_url(model, "delete", limit.pk)
        assert superuser_client.post(delete_url, {"post": "yes"}).status_code == 403
    budget.refresh_from_db()
    quota.refresh_from_db()
    assert (budget.limit_amount, quota.requests_per_minute) == (2, 3)


def test_operator_budget_change_on_its_own_page_writes_only_changed_fields(
    superuser_client, owner_tenant
) -> None:
    budget = Budget.objects.create(tenant=owner_tenant, period="month", limit_amount=10)
    change_url = admin_url("budget", "change", budget.pk)
    assert 'name="_save"' in superuser_client.get(change_url).content.decode()
    Budget.objects.filter(pk=budget.pk).update(spent_amount=Decimal("4"))
    response = superuser_client.post(
        change_url,
        {"period": "month", "limit_amount": "12", "is_hard": "on",
         "soft_threshold_percent": "80"},
    )  # fmt: skip
    assert response.status_code == 302
    budget.refresh_from_db()
    assert (budget.limit_amount, budget.spent_amount) == (Decimal(12), Decimal(4))
