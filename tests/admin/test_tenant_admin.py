"""The tenant pages: spend against budget, API keys shown once, budgets and quotas inline."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.contrib.admin.models import LogEntry
from django.contrib.sessions.models import Session
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing.admin_services import tenant_list_with_month_spend
from billing.models import Budget, ManagedBy, Quota
from billing.periods import period_bounds
from billing.services import budget_state
from conversations.models import ApiKey, EndUser, Tenant
from conversations.services import api_key_authenticate, api_key_create
from models_catalog.models import FoundationModel
from tests.factories import LLAMA3, ledger_entry, make_tenant
from tests.support.admin_forms import add_inline_row, changeform_data

TENANT_LIST = reverse("admin:conversations_tenant_changelist")
# Column positions as the changelist's `o` parameter counts them (0 is the action checkbox).
SPEND_COLUMN, LIMIT_COLUMN, USED_COLUMN = 4, 5, 6


def tenant_page(tenant: Tenant) -> str:
    return reverse("admin:conversations_tenant_change", args=[tenant.pk])


def monthly_budget(tenant: Tenant, limit: str, **fields: object) -> Budget:
    return Budget.objects.create(
        tenant=tenant, period="month", limit_amount=Decimal(limit), **fields
    )


def listed_slugs(client, query: str = "") -> list[str]:
    response = client.get(f"{TENANT_LIST}{query}")
    assert response.status_code == 200
    return [tenant.slug for tenant in response.context["cl"].result_list]


# --- Spend this month ----------------------------------------------------------------


def test_tenant_list_shows_this_months_spend_against_the_monthly_hard_budget(
    superuser_client, owner_tenant, other_tenant
) -> None:
    monthly_budget(owner_tenant, "1.00")
    ledger_entry(owner_tenant, "0.20")
    ledger_entry(owner_tenant, "0.05")
    month_start, _ = period_bounds("month", timezone.now())
    ledger_entry(owner_tenant, "5.00", at=month_start - timedelta(seconds=1))  # last month
    ledger_entry(other_tenant, "3.00")  # another tenant's spend

    response = superuser_client.get(TENANT_LIST)

    html = response.content.decode()
    assert "0.25 USD" in html
    assert "1.00 USD" in html
    assert '<span class="spend-percent">25.0%</span>' in html
    assert "width:25.0%" in html
    assert "Spent this month (UTC)" in html
    [alice] = [t for t in response.context["cl"].result_list if t.slug == "alice"]
    assert (alice.month_spend, alice.month_limit) == (Decimal("0.25"), Decimal(1))


def test_only_a_tenant_wide_monthly_hard_budget_counts_and_the_smallest_binds(
    owner_tenant,
) -> None:
    kid = EndUser.objects.create(tenant=owner_tenant, external_id="kid")
    llama = FoundationModel.objects.get(model_id=LLAMA3)
    monthly_budget(owner_tenant, "0.10", is_hard=False)
    monthly_budget(owner_tenant, "0.20", end_user=kid)
    monthly_budget(owner_tenant, "0.30", model=llama)
    monthly_budget(owner_tenant, "0.40", per_end_user=True)
    Budget.objects.create(tenant=owner_tenant, period="day", limit_amount=Decimal("0.5"))
    assert tenant_list_with_month_spend().get(pk=owner_tenant.pk).month_limit is None

    monthly_budget(owner_tenant, "8", managed_by=ManagedBy.TENANT, soft_threshold_percent=50)
    monthly_budget(owner_tenant, "20")
    ledger_entry(owner_tenant, "2")
    alice = tenant_list_with_month_spend().get(pk=owner_tenant.pk)
    assert (alice.month_limit, alice.month_soft_threshold) == (Decimal(8), 50)
    assert alice.month_percent == Decimal(25)


def test_tenant_list_without_budget_or_spend(superuser_client, owner_tenant) -> None:
    html = superuser_client.get(TENANT_LIST).content.decode()
    assert "no budget" in html
    assert "0.00 USD" in html
    monthly_budget(owner_tenant, "0")
    assert "no budget" in superuser_client.get(TENANT_LIST).content.decode()


def test_tenant_list_sorts_by_spend_limit_and_percentage(superuser_client, db) -> None:
    heavy, tight, idle = make_tenant("heavy"), make_tenant("tight"), make_tenant("idle")
    monthly_budget(heavy, "10")
    ledger_entry(heavy, "3")  # 30 %
    monthly_budget(tight, "2")
    ledger_entry(tight, "1")  # 50 %

    assert listed_slugs(superuser_client, f"?o={SPEND_COLUMN}") == ["idle", "tight", "heavy"]
    assert listed_slugs(superuser_client, f"?o=-{SPEND_COLUMN}") == ["heavy", "tight", "idle"]
    assert listed_slugs(superuser_client, f"?o={LIMIT_COLUMN}") == ["tight", "heavy", "idle"]
    assert listed_slugs(superuser_client, f"?o={USED_COLUMN}") == ["idle", "heavy", "tight"]
    assert listed_slugs(superuser_client, f"?o=-{USED_COLUMN}") == ["tight", "heavy", "idle"]
    assert idle.slug in listed_slugs(superuser_client, "?q=idl")


def test_tenant_list_queries_do_not_grow_with_the_number_of_tenants(superuser_client, db) -> None:
    def queries_for_list() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert superuser_client.get(TENANT_LIST).status_code == 200
        return len(captured)

    make_tenant("first")
    few = queries_for_list()
    for number in range(10):
        tenant = make_tenant(f"more-{number}")
        monthly_budget(tenant, "1")
        ledger_entry(tenant, "0.5")
    assert queries_for_list() == few


# --- API keys ----------------------------------------------------------------------------


def test_creating_an_api_key_shows_the_secret_once_and_stores_only_its_hash(
    superuser_client, owner_tenant
) -> None:
    add_url = reverse("admin:conversations_apikey_add")
    form = superuser_client.get(f"{add_url}?tenant={owner_tenant.pk}")
    assert form.context["adminform"].form.initial["tenant"] == str(owner_tenant.pk)

    response = superuser_client.post(add_url, {"tenant": owner_tenant.pk, "name": "backend"})

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    secret = response.context["secret"]
    assert f'value="{secret}"' in response.content.decode()
    api_key = api_key_authenticate(raw_key=secret)
    assert api_key is not None
    assert (api_key.tenant, api_key.name) == (owner_tenant, "backend")
    secret_part = secret.split(".", 1)[1]
    stored = ApiKey.objects.values_list("prefix", "salt", "secret_hash", "name").get()
    assert all(secret_part not in value for value in stored)
    # Not in a flash message (cookie or session), nor in the admin's history.
    assert "messages" not in response.cookies
    assert all(secret_part not in repr(s.get_decoded()) for s in Session.objects.all())
    assert LogEntry.objects.get().object_repr == str(api_key)
    # Shown once: the key's own page and the tenant page never show it again.
    key_page = superuser_client.get(reverse("admin:conversations_apikey_change", args=[api_key.pk]))
    assert secret_part not in key_page.content.decode()
    assert secret_part not in superuser_client.get(tenant_page(owner_tenant)).content.decode()


def test_api_keys_are_not_created_for_inactive_tenants(superuser_client, db) -> None:
    sleepy = make_tenant("sleepy", is_active=False)
    response = superuser_client.post(
        reverse("admin:conversations_apikey_add"), {"tenant": sleepy.pk, "name": "x"}
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["tenant"]
    assert not ApiKey.objects.exists()


def test_revoke_action_revokes_the_selected_keys(superuser_client, owner_tenant) -> None:
    kept, revoked = api_key_create(tenant=owner_tenant), api_key_create(tenant=owner_tenant)
    response = superuser_client.post(
        reverse("admin:conversations_apikey_changelist"),
        {"action": "revoke_keys", "_selected_action": [revoked.api_key.pk]},
        follow=True,
    )
    assert "Revoked 1 API key" in response.content.decode()
    assert api_key_authenticate(raw_key=revoked.secret) is None
    assert api_key_authenticate(raw_key=kept.secret) is not None


def test_tenant_page_lists_keys_read_only_with_links_to_create_and_revoke(
    superuser_client, owner_tenant
) -> None:
    created = api_key_create(tenant=owner_tenant, name="backend")
    html = superuser_client.get(tenant_page(owner_tenant)).content.decode()
    assert created.api_key.prefix in html
    assert f"{reverse('admin:conversations_apikey_add')}?tenant={owner_tenant.pk}" in html
    assert 'name="api_keys-0-name"' not in html
    key_page = superuser_client.get(
        reverse("admin:conversations_apikey_change", args=[created.api_key.pk])
    ).content.decode()
    assert 'name="revoked_at' not in key_page, "a revocation is never undone in a form"


# --- Budgets and quotas on the tenant page -----------------------------------------------


def test_budgets_and_quotas_added_on_the_tenant_page_are_the_operators(
    superuser_client, owner_tenant
) -> None:
    page = superuser_client.get(tenant_page(owner_tenant))
    data = changeform_data(page)
    add_inline_row(data, "budgets", period="month", limit_amount="50", is_hard=True,
                   soft_threshold_percent=80, name="Monthly cap")  # fmt: skip
    add_inline_row(data, "quotas", requests_per_minute=60, max_concurrent=2)

    response = superuser_client.post(tenant_page(owner_tenant), data)

    assert response.status_code == 302, response.context and response.context["errors"]
    budget = Budget.objects.get(tenant=owner_tenant)
    assert (budget.managed_by, budget.limit_amount, budget.name) == (
        ManagedBy.OPERATOR,
        Decimal(50),
        "Monthly cap",
    )
    quota = Quota.objects.get(tenant=owner_tenant)
    assert (quota.managed_by, quota.requests_per_minute, quota.max_concurrent) == (
        ManagedBy.OPERATOR,
        60,
        2,
    )


def test_tenant_managed_limits_are_shown_but_read_only_on_the_tenant_page(
    superuser_client, owner_tenant
) -> None:
    tenants_budget = monthly_budget(owner_tenant, "7", managed_by=ManagedBy.TENANT)
    tenants_quota = Quota.objects.create(
        tenant=owner_tenant, requests_per_minute=9, managed_by=ManagedBy.TENANT
    )
    page = superuser_client.get(tenant_page(owner_tenant))
    html = page.content.decode()
    assert "Budgets set by the tenant through its API (read-only here)" in html
    assert "Quotas set by the tenant through its API (read-only here)" in html
    assert "7.0000000000" in html
    assert 'name="budgets-2-0-limit_amount"' not in html
    assert 'name="budgets-0-limit_amount"' not in html  # not among the operator's

    data = changeform_data(page)
    data["budgets-2-0-limit_amount"] = "1000"  # a tampered form
    data["budgets-2-0-DELETE"] = "on"
    data["quotas-2-0-requests_per_minute"] = "1000"
    response = superuser_client.post(tenant_page(owner_tenant), data)

    assert response.status_code == 302
    tenants_budget.refresh_from_db()
    tenants_quota.refresh_from_db()
    assert (tenants_budget.limit_amount, tenants_quota.requests_per_minute) == (Decimal(7), 9)


def test_changing_a_limit_in_the_admin_keeps_spend_settled_meanwhile(
    superuser_client, owner_tenant
) -> None:
    budget = monthly_budget(owner_tenant, "10")
    page = superuser_client.get(tenant_page(owner_tenant))
    # An answer settles while the operator has the form open.
    ledger_entry(owner_tenant, "0.75")
    state = budget_state(budget, locked=True)
    assert Budget.objects.get(pk=budget.pk).spent_amount == state.spent == Decimal("0.75")

    data = changeform_data(page)
    data["budgets-0-limit_amount"] = "20"
    assert superuser_client.post(tenant_page(owner_tenant), data).status_code == 302

    budget.refresh_from_db()
    assert budget.limit_amount == Decimal(20)
    assert budget.spent_amount == Decimal("0.75"), "the form's stale counter was written back"


def test_changing_a_budgets_scope_recounts_its_spend_from_the_ledger(
    superuser_client, owner_tenant
) -> None:
    budget = monthly_budget(owner_tenant, "10")
    ledger_entry(owner_tenant, "0.75")
    budget_state(budget, locked=True)
    other_model = FoundationModel.objects.exclude(model_id=LLAMA3).first()

    data = changeform_data(superuser_client.get(tenant_page(owner_tenant)))
    data["budgets-0-model"] = str(other_model.pk)
    assert superuser_client.post(tenant_page(owner_tenant), data).status_code == 302

    budget.refresh_from_db()
    assert (budget.model, budget.period_start) == (other_model, None)
    assert budget_state(budget).spent == 0, "spend on other models no longer counts"


def test_end_users_offered_are_the_tenants_own(
    superuser_client, owner_tenant, other_tenant
) -> None:
    own = EndUser.objects.create(tenant=owner_tenant, external_id="own")
    foreign = EndUser.objects.create(tenant=other_tenant, external_id="foreign")
    page = superuser_client.get(tenant_page(owner_tenant))
    choices = page.context["inline_admin_formsets"][1].formset.empty_form.fields["end_user"]
    assert list(choices.queryset) == [own]

    def post_with_budget(**row: object):
        data = changeform_data(page)
        add_inline_row(data, "budgets", period="day", limit_amount="1",
                       soft_threshold_percent=80, **row)  # fmt: skip
        return superuser_client.post(tenant_page(owner_tenant), data)

    response = post_with_budget(end_user=foreign.pk)
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    response = post_with_budget(end_user=own.pk, per_end_user=True)
    assert response.status_code == 200
    assert "not both" in response.content.decode()
    assert not Budget.objects.exists()
    assert post_with_budget(end_user=own.pk).status_code == 302
    assert Budget.objects.get().end_user == own


def test_a_tenant_added_in_the_admin_gets_a_valid_slug(superuser_client, db) -> None:
    add_url = reverse("admin:conversations_tenant_add")
    base = {"name": "Acme Corp", "time_zone": "UTC", "is_active": "on"}
    for prefix in ("api_keys", "budgets", "budgets-2", "quotas", "quotas-2"):
        base.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"})
    refused = superuser_client.post(add_url, {**base, "slug": "Acme"})
    assert refused.status_code == 200
    assert "“acme”" in refused.content.decode()
    assert superuser_client.post(add_url, {**base, "slug": "acme"}).status_code == 302
    assert Tenant.objects.get().slug == "acme"
