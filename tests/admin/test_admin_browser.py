"""The admin in a real headless Chromium (Debian's package, driven by Playwright), against
pytest-django's live server; what the operator sets there is checked through the REST API.

Chromium must be installed (`apt-get install -y chromium`); without it these tests fail with
that instruction rather than skip, so a CI machine that lacks it cannot pass unnoticed.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from django.contrib.auth.models import User

from billing.models import Budget, ManagedBy
from conversations.models import Tenant
from conversations.services import api_key_create
from tests.factories import LLAMA3, PASSWORD, ledger_entry, make_tenant, staff_user
from tests.support.browser import logged_in_page

pytestmark = pytest.mark.e2e

SCREENSHOT = Path("/tmp/admin-tenants.png")  # noqa: S108 - a file for people to look at


def save_tenant_budget_limit(page: Any, base_url: str, tenant: Tenant, limit: str) -> None:
    """On the tenant page: the operator's budget row (added when there is none) gets `limit`
    as a tenant-wide monthly hard limit; then Save."""
    page.goto(f"{base_url}/admin/conversations/tenant/{tenant.pk}/change/")
    if page.locator("#id_budgets-0-limit_amount").count() == 0:
        page.click("#budgets-group .add-row a")
        page.select_option("#id_budgets-0-period", "month")
        assert page.is_checked("#id_budgets-0-is_hard")
    page.fill("#id_budgets-0-limit_amount", limit)
    page.click("input[name=_save]")
    page.wait_for_selector("ul.messagelist")
    assert "was changed successfully" in page.inner_text("ul.messagelist")


class Api:
    def __init__(self, base_url: str, secret: str) -> None:
        self.base_url, self.headers = base_url, {"Authorization": f"Bearer {secret}"}

    def post(self, path: str, payload: dict) -> requests.Response:
        return requests.post(
            f"{self.base_url}/api/v1{path}", json=payload, headers=self.headers, timeout=30
        )


def test_a_budget_set_in_the_admin_is_enforced_by_the_api(
    browser: Any, live_server: Any, catalogue: None
) -> None:
    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    tenant = make_tenant("acme")
    api = Api(live_server.url, api_key_create(tenant=tenant, name="browser test").secret)
    page = logged_in_page(browser, live_server.url, "root")

    save_tenant_budget_limit(page, live_server.url, tenant, "0.000001")

    budget = Budget.objects.get(tenant=tenant)
    assert (budget.managed_by, budget.period, budget.is_hard) == (
        ManagedBy.OPERATOR,
        "month",
        True,
    )
    assert (budget.model, budget.end_user, budget.per_end_user) == (None, None, False)
    assert budget.limit_amount == Decimal("0.000001")
    conversation = api.post("/conversations", {"model": LLAMA3})
    assert conversation.status_code == 201, conversation.text
    messages_path = f"/conversations/{conversation.json()['id']}/messages"
    refused = api.post(messages_path, {"content": "hi"})
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert refused.json()["error"]["details"]["budget_id"] == str(budget.pk)

    save_tenant_budget_limit(page, live_server.url, tenant, "100")

    accepted = api.post(messages_path, {"content": "hi"})
    assert accepted.status_code == 202, accepted.text
    assert Budget.objects.get(pk=budget.pk).limit_amount == Decimal(100)
    assert Budget.objects.count() == 1


def test_tenant_list_shows_spend_against_budget_and_sorts_by_it(
    browser: Any, live_server: Any, catalogue: None
) -> None:
    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    spend = {"steady": ("100", "25"), "nearly": ("10", "8.5"), "over": ("2", "2.4")}
    for slug, (limit, spent) in spend.items():
        tenant = make_tenant(slug)
        Budget.objects.create(tenant=tenant, period="month", limit_amount=Decimal(limit))
        ledger_entry(tenant, spent)
    make_tenant("quiet")
    page = logged_in_page(browser, live_server.url, "root")

    page.goto(f"{live_server.url}/admin/conversations/tenant/")
    percents = page.locator("#result_list .spend-percent").all_inner_texts()
    assert sorted(percents) == ["120.0%", "25.0%", "85.0%"]
    assert page.locator("#result_list tr:has-text('quiet')").inner_text().count("no budget")

    page.click("#result_list thead th:has-text('Spent this month') a")
    page.wait_for_url("**/?o=*")
    page.click("#result_list thead th.sorted:has-text('Spent this month') a.toggle")
    page.wait_for_url("**/?o=-*")
    slugs = page.locator("#result_list tbody th a").all_inner_texts()
    assert slugs == ["steady", "nearly", "over", "quiet"]
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000


def test_view_only_staff_see_a_budget_without_save_and_cannot_post_changes(
    browser: Any, live_server: Any, catalogue: None
) -> None:
    staff_user("viewer", actions=("view",))
    tenant = make_tenant("acme")
    budget = Budget.objects.create(tenant=tenant, period="month", limit_amount=Decimal(10))
    page = logged_in_page(browser, live_server.url, "viewer")
    change_url = f"{live_server.url}/admin/billing/budget/{budget.pk}/change/"

    page.goto(change_url)
    assert page.locator("input[name=_save]").count() == 0
    assert page.locator("input[name=limit_amount]").count() == 0
    assert "10.0000000000" in page.inner_text("#content")
    page.goto(f"{live_server.url}/admin/conversations/tenant/{tenant.pk}/change/")
    assert page.locator("input[name=_save]").count() == 0
    assert not page.locator("#budgets-group .add-row a").is_visible()
    assert page.locator("#id_budgets-0-limit_amount").count() == 0

    page.goto(change_url)
    token = page.locator("input[name=csrfmiddlewaretoken]").first.get_attribute("value")
    response = page.request.post(
        change_url,
        form={"csrfmiddlewaretoken": token, "period": "month", "limit_amount": "1000",
              "soft_threshold_percent": "80", "is_hard": "on", "_save": "Save"},
    )  # fmt: skip
    assert response.status == 403
    assert "CSRF" not in response.text(), "refused for the permission, not the token"
    assert Budget.objects.get(pk=budget.pk).limit_amount == Decimal(10)
