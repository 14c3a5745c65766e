"""The admin's front page is the operators' cockpit; a tenant's page ends with its own.

Staff only; what a staff user sees follows their billing "view" permissions
(billing/admin_cockpit.py): no permission, no money figure.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.db.models import Sum
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing.admin import money
from billing.models import Alert, AlertKind, AttemptOutcome, Budget, UsageRecord
from billing.periods import period_bounds
from conversations.models import EndUser
from tests.billing.ledger import LLAMA31_8B, LLAMA33_70B, attempt, charge, reservation
from tests.factories import PASSWORD, make_tenant, staff_user

pytestmark = pytest.mark.django_db

INDEX = reverse("admin:index")


def tenant_page(tenant) -> str:
    return reverse("admin:conversations_tenant_change", args=[tenant.pk])


def exact(html: str, element_id: str) -> Decimal:
    """The exact amount behind a figure shown with this id."""
    match = re.search(
        rf'id="{element_id}"><span class="usd[^"]*" title="[^"]*" '
        r'data-exact="([^"]+)"',
        html,
    )
    assert match, f"no figure #{element_id}"
    return Decimal(match.group(1))


def cockpit_section(html: str) -> str:
    start = html.index('<section class="cockpit" id="cockpit">')
    return html[start : html.index("</section>", start)]


@pytest.fixture
def ledger():
    """Two tenants' last days: charges by two models, retried and failed attempts, end users,
    a budget near its limit, a budget alert and an overrun."""
    now = timezone.now()
    acme, globex = make_tenant("acme"), make_tenant("globex")
    ann = EndUser.objects.create(tenant=acme, external_id="ann")
    charge(acme, "1.25", at=now - timedelta(minutes=5), end_user=ann)
    charge(acme, "0.5", at=now - timedelta(days=2), model_id=LLAMA33_70B)
    charge(globex, "3", at=now - timedelta(days=1))
    charge(globex, "40", at=now - timedelta(days=40))  # before the window
    attempt(acme, "1.0", at=now - timedelta(minutes=5))
    attempt(
        acme,
        "0.2",
        at=now - timedelta(minutes=6),
        outcome=AttemptOutcome.FAILED,
        error_code="ThrottlingException",
    )
    attempt(globex, "2.5", at=now - timedelta(days=1))
    budget = Budget.objects.create(
        tenant=acme, name="acme monthly", period="month", limit_amount=Decimal(2)
    )
    reservation(acme, "0.05")
    Alert.objects.create(
        tenant=acme,
        budget=budget,
        kind=AlertKind.SOFT_THRESHOLD,
        period_start=now,
        spent_amount=Decimal("1.75"),
        limit_amount=Decimal(2),
    )
    Alert.objects.create(
        tenant=globex,
        kind=AlertKind.OVERRUN,
        scope_key="m",
        period_start=now,
        spent_amount=Decimal("0.0009"),
        limit_amount=Decimal("0.0006"),
        details={
            "message_id": "m",
            "reported_input_tokens": 10,
            "reported_output_tokens": 90,
            "reserved_input_tokens": 10,
            "reserved_output_tokens": 60,
            "reported_cost": "0.0009",
            "charged": "0.0006",
        },
    )
    return acme, globex


def test_the_front_page_is_the_cockpit_with_the_app_list_below(superuser_client, ledger) -> None:
    response = superuser_client.get(INDEX)

    assert response.status_code == 200
    assert "admin/cockpit/index.html" in [t.name for t in response.templates]
    html = response.content.decode()
    assert exact(html, "total-charged") == Decimal("4.75")
    assert exact(html, "total-provider-cost") == Decimal("3.7")
    assert exact(html, "total-margin") == Decimal("1.05")
    assert exact(html, "total-unpaid") == Decimal("0.2")
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg" class="chart"') == 2
    assert f'data-series="{LLAMA33_70B}"' in html
    section = cockpit_section(html)
    acme, _ = ledger
    month_start, _ = period_bounds("month", timezone.now())
    spent = UsageRecord.objects.filter(tenant=acme, created_at__gte=month_start).aggregate(
        total=Sum("cost")
    )["total"]
    used = ((spent + Decimal("0.05")) * 100 / 2).quantize(Decimal("0.1"))
    assert re.search(
        rf'acme monthly</a>.*?data-exact="{money(spent)}".*?data-exact="0.05".*?'
        rf'class="percent-used">{used}%<',
        section,
        re.S,
    )
    assert 'data-code="ThrottlingException"' in section
    assert 'id="overrun-count">1<' in section
    assert exact(section, "overrun-excess") == Decimal("0.0003")
    assert 'id="soft-crossed"' in section
    assert re.search(r'id="recent-alerts">.*?Soft threshold crossed', section, re.S)
    assert "<form" not in section
    assert "<input" not in section
    below = html[html.index("</section>") :]
    assert reverse("admin:conversations_tenant_changelist") in below
    assert reverse("admin:billing_usagerecord_changelist") in below
    assert 'id="recent-actions-module"' in below


def test_non_staff_are_sent_to_log_in(client, db) -> None:
    assert client.get(INDEX)["Location"] == f"{reverse('admin:login')}?next={INDEX}"
    User.objects.create_user("customer", password=PASSWORD)
    client.login(username="customer", password=PASSWORD)
    response = client.get(INDEX)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_view_only_staff_see_the_whole_cockpit_read_only(viewer_client, ledger) -> None:
    response = viewer_client.get(INDEX)
    assert response.status_code == 200
    html = response.content.decode()
    assert exact(html, "total-charged") == Decimal("4.75")
    assert exact(html, "total-margin") == Decimal("1.05")
    section = cockpit_section(html)
    assert 'id="nearest-budgets"' in section
    assert 'id="overruns"' in section
    assert "<form" not in section
    assert "<input" not in section


def test_staff_without_billing_permissions_see_health_and_no_money(db, ledger) -> None:
    staff_user("nobody", actions=())
    client = Client()
    client.login(username="nobody", password=PASSWORD)

    html = client.get(INDEX).content.decode()

    section = cockpit_section(html)
    assert 'id="health-cards"' in section
    assert 'id="no-money"' in section
    assert "ThrottlingException" in section  # counts and codes are not money
    for hidden in ("USD", "usd", "<svg", "acme", "globex", "4.75", "1.25", "1.05", "spend-by-day"):
        assert hidden not in section, hidden


def test_charges_alone_show_no_provider_cost_or_margin(db, ledger) -> None:
    user = staff_user("accountant", actions=())
    user.user_permissions.set(Permission.objects.filter(codename="view_usagerecord"))
    client = Client()
    client.login(username="accountant", password=PASSWORD)

    html = client.get(INDEX).content.decode()

    assert exact(html, "total-charged") == Decimal("4.75")
    assert html.count('class="chart"') == 1
    assert 'data-series="provider cost"' not in html
    for hidden in (
        "total-provider-cost",
        "total-margin",
        "margin-by-day",
        "nearest-budgets",
        "recent-alerts",
        "overruns",
    ):
        assert f'id="{hidden}"' not in html, hidden


def test_a_tenant_page_shows_its_own_spend_end_users_models_and_budgets(
    superuser_client, ledger
) -> None:
    acme, _ = ledger

    response = superuser_client.get(tenant_page(acme))

    assert response.status_code == 200
    html = response.content.decode()
    section = cockpit_section(html)
    assert exact(section, "total-charged") == Decimal("1.75")
    assert exact(section, "total-provider-cost") == Decimal("1.2")
    assert exact(section, "total-margin") == Decimal("0.55")
    assert 'id="tenant-spend-summary"' in html  # at the top of the form
    assert re.search(r'data-key="ann">.*?data-exact="1.25"', section, re.S)
    assert re.search(r'data-key="no end user">.*?data-exact="0.50"', section, re.S)
    assert re.search(rf'data-key="{re.escape(LLAMA31_8B)}">.*?data-exact="1.25"', section, re.S)
    assert "acme monthly" in section
    assert "globex" not in section
    assert 'name="_save"' in html  # the form is still there, above


def test_view_only_staff_see_a_tenants_spend_and_no_money_without_billing_rights(
    viewer_client, ledger
) -> None:
    acme, _ = ledger
    html = viewer_client.get(tenant_page(acme)).content.decode()
    assert exact(cockpit_section(html), "total-charged") == Decimal("1.75")
    staff_user("tenants-only", actions=())
    User.objects.get(username="tenants-only").user_permissions.set(
        Permission.objects.filter(codename="view_tenant")
    )
    client = Client()
    client.login(username="tenants-only", password=PASSWORD)
    response = client.get(tenant_page(acme))
    assert response.status_code == 200
    section = cockpit_section(response.content.decode())
    assert 'id="no-money"' in section
    for hidden in ("USD", "1.75", "<svg", "acme monthly"):
        assert hidden not in section, hidden


def test_the_front_page_costs_the_same_queries_for_more_tenants_and_budgets(
    superuser_client, db
) -> None:
    def tenants(first: int, count: int) -> None:
        month_start = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        for number in range(first, first + count):
            tenant = make_tenant(f"tenant-{number}")
            charge(tenant, "1", at=timezone.now(), model_id=LLAMA31_8B)
            attempt(tenant, "0.5", at=timezone.now())
            Budget.objects.create(
                tenant=tenant,
                period="month",
                limit_amount=Decimal(10),
                period_start=month_start,
                spent_amount=Decimal(1),
            )

    tenants(0, 2)
    superuser_client.get(INDEX)  # warm caches (content types, sessions)
    with CaptureQueriesContext(connection) as few:
        assert superuser_client.get(INDEX).status_code == 200
    tenants(2, 8)
    with CaptureQueriesContext(connection) as many:
        html = superuser_client.get(INDEX).content.decode()
    assert len(many) == len(few), [q["sql"] for q in many.captured_queries]
    assert exact(html, "total-charged") == Decimal(10)
