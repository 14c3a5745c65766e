"""The cockpit in a real headless Chromium (as tests/admin/test_admin_browser.py runs it):
a read-only staff user opens the front page and a tenant's page, and the figures shown are
checked against the ledgers. Screenshots are kept in var/screenshots/ for people to look at.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db.models import Sum
from django.utils import timezone

from billing.models import (
    Alert,
    AlertKind,
    AttemptOutcome,
    Budget,
    ProviderAttempt,
    UsageRecord,
)
from conversations.models import EndUser, Message, MessageRole, MessageStatus, Tenant
from conversations.services.conversations import conversation_create
from tests.billing.ledger import attempt, charge, reservation
from tests.factories import make_tenant, staff_user
from tests.support.browser import logged_in_page

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
MODELS = [
    "meta.llama3-1-8b-instruct-v1:0",
    "meta.llama3-1-70b-instruct-v1:0",
    "meta.llama3-3-70b-instruct-v1:0",
    "meta.llama3-2-3b-instruct-v1:0",
]
# Each tenant's charges (relative size) and how much of its monthly budget it has used.
TENANTS = {
    "acme": (1.0, "0.93"),
    "globex": (0.6, "1"),
    "initech": (0.35, "0.64"),
    "umbrella": (0.2, "0.85"),
    "hooli": (0.1, "0.3"),
}


def seed_ledger(now: datetime) -> None:
    """A month of traffic: five tenants, four models, end users, retried and failed
    attempts, budgets near their limits, alerts, an overrun, and the last hour's answers."""
    rng = random.Random(14)
    for slug, (size, used) in TENANTS.items():
        tenant = make_tenant(slug)
        users = [
            EndUser.objects.create(tenant=tenant, external_id=f"{slug}-user-{n}") for n in range(4)
        ]
        for days_ago in range(29, -1, -1):
            growth = 0.6 + 0.4 * (29 - days_ago) / 29
            for model_index, model_id in enumerate(MODELS):
                if rng.random() < 0.25:
                    continue
                share = size * growth * rng.uniform(0.5, 2.0) / (model_index + 1)
                amount = Decimal(str(round(share, 4)))
                at = now - timedelta(days=days_ago, minutes=rng.randint(1, 600))
                end_user = rng.choice([*users, None])
                charge(tenant, str(amount), at=at, model_id=model_id, end_user=end_user)
                provider = amount * Decimal(str(round(rng.uniform(0.55, 0.8), 2)))
                attempt(tenant, str(provider), at=at, model_id=model_id)
                if rng.random() < 0.15:
                    attempt(
                        tenant,
                        str((amount / 5).quantize(Decimal("0.0001"))),
                        at=at,
                        model_id=model_id,
                        outcome=AttemptOutcome.FAILED,
                        error_code="ThrottlingException",
                    )
        month_start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        spent = UsageRecord.objects.filter(tenant=tenant, created_at__gte=month_start).aggregate(
            total=Sum("cost")
        )["total"] or Decimal(0)
        limit = max((spent / Decimal(used)).quantize(Decimal("0.01")), Decimal("0.01"))
        budget = Budget.objects.create(
            tenant=tenant, name=f"{slug} monthly", period="month", limit_amount=limit
        )
        for kind, reached in (
            (AlertKind.SOFT_THRESHOLD, Decimal("0.8")),
            (AlertKind.LIMIT_REACHED, 1),
        ):
            if spent >= limit * reached:
                Alert.objects.create(
                    tenant=tenant,
                    budget=budget,
                    kind=kind,
                    period_start=month_start,
                    spent_amount=spent,
                    limit_amount=limit,
                )
    acme = Tenant.objects.get(slug="acme")
    Alert.objects.create(
        tenant=acme,
        kind=AlertKind.OVERRUN,
        scope_key="overrun",
        period_start=now,
        spent_amount=Decimal("0.0000924"),
        limit_amount=Decimal("0.0000704"),
        details={
            "message_id": "4f1c0a52-7a5e-4ad5-9b0e-3f4f7c1d9e10",
            "reported_input_tokens": 120,
            "reported_output_tokens": 300,
            "reserved_input_tokens": 120,
            "reserved_output_tokens": 200,
            "reported_cost": "0.0000924",
            "charged": "0.0000704",
        },
    )
    conversation = conversation_create(tenant=acme, model_id=MODELS[0])
    for number, (status, code, reason, seconds) in enumerate(
        [("completed", "", "completed", s) for s in (0.8, 1.1, 1.4, 2.0, 2.6, 3.9, 9.5)]
        + [("failed", "ThrottlingException", "failed", 30), ("failed", "expired", "expired", 3600)]
        + [("cancelled", "", "cancelled", 4)],
        start=1,
    ):
        message = Message.objects.create(
            tenant=acme,
            conversation=conversation,
            sequence=number,
            role=MessageRole.ASSISTANT,
            status=status,
            error_code=code,
        )
        closed = now - timedelta(minutes=number * 4)
        reservation(
            acme,
            "0.001",
            message_id=message.pk,
            status="settled",
            close_reason=reason,
            closed_at=closed,
            created_at=closed - timedelta(seconds=seconds),
        )
    for code in ("ThrottlingException", "ThrottlingException", "ModelStreamErrorException"):
        attempt(
            acme,
            "0.0004",
            at=now - timedelta(minutes=12),
            model_id=MODELS[0],
            outcome=AttemptOutcome.FAILED,
            error_code=code,
        )
    queued = Message.objects.create(
        tenant=acme,
        conversation=conversation,
        sequence=99,
        role=MessageRole.ASSISTANT,
        status=MessageStatus.QUEUED,
    )
    Message.objects.filter(pk=queued.pk).update(created_at=now - timedelta(seconds=42))


def window_start(now: datetime) -> datetime:
    first_day = now.astimezone(UTC).date() - timedelta(days=29)
    return datetime.combine(first_day, time.min, tzinfo=UTC)


def shown_exact(page: Any, selector: str) -> Decimal:
    return Decimal(page.locator(f"{selector} .usd").first.get_attribute("data-exact"))


def test_staff_see_the_cockpit_and_a_tenants_page_with_the_ledgers_figures(
    browser: Any, live_server: Any, catalogue: None
) -> None:
    now = timezone.now()
    seed_ledger(now)
    staff_user("operator", actions=("view",))
    start = window_start(now)
    charged = UsageRecord.objects.filter(created_at__gte=start).aggregate(t=Sum("cost"))["t"]
    provider = ProviderAttempt.objects.filter(created_at__gte=start).aggregate(t=Sum("cost"))["t"]
    page = logged_in_page(browser, live_server.url, "operator")

    page.goto(f"{live_server.url}/admin/")
    page.wait_for_selector("#spend-by-day svg")

    assert shown_exact(page, "#total-charged") == charged
    assert shown_exact(page, "#total-provider-cost") == provider
    assert shown_exact(page, "#total-margin") == charged - provider
    bars = page.locator("#spend-by-day rect[data-series]")
    values = bars.evaluate_all("bars => bars.map(bar => bar.dataset.value)")
    assert sum(Decimal(value) for value in values) == charged
    for slug in TENANTS:
        tenant_charged = UsageRecord.objects.filter(
            tenant__slug=slug, created_at__gte=start
        ).aggregate(t=Sum("cost"))["t"]
        row = page.locator(f"#tenants-by-spend tr[data-key='{slug}']")
        assert Decimal(row.locator(".charged .usd").get_attribute("data-exact")) == tenant_charged
    assert page.locator("#nearest-budgets tbody tr").count() == len(TENANTS)
    assert page.locator("#answers-by-status tr[data-status='completed'] td.num").inner_text() == "7"
    assert page.locator("#answers-by-status tr[data-status='expired'] td.num").inner_text() == "1"
    assert page.locator("#queue-depth").inner_text() == "1 queued"
    assert page.locator("#latency").inner_text() == "2.0 s / 9.5 s"
    assert page.locator("#overrun-count").inner_text() == "1"
    assert page.locator("#content-main .app-conversations").count() == 1  # app list below
    assert page.locator("#cockpit input, #cockpit form").count() == 0
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "cockpit.png"), full_page=True)
    page.emulate_media(color_scheme="dark")  # the admin's dark theme follows the system's
    page.screenshot(path=str(SCREENSHOTS / "cockpit-dark.png"), full_page=True)
    page.emulate_media(color_scheme="light")

    page.click("#tenants-by-spend tr[data-key='acme'] a")
    page.wait_for_selector("#cockpit #spend-by-day svg")
    acme_charged = UsageRecord.objects.filter(tenant__slug="acme", created_at__gte=start).aggregate(
        t=Sum("cost")
    )["t"]
    assert shown_exact(page, "#cockpit #total-charged") == acme_charged
    users = UsageRecord.objects.filter(tenant__slug="acme", created_at__gte=start)
    top = users.values("end_user__external_id").annotate(t=Sum("cost")).order_by("-t").first()
    first_row = page.locator("#end-users-by-spend tbody tr").first
    assert first_row.get_attribute("data-key") == (top["end_user__external_id"] or "no end user")
    assert Decimal(first_row.locator(".usd").get_attribute("data-exact")) == top["t"]
    assert page.locator("#models-by-spend tbody tr").count() == len(MODELS)
    assert "acme monthly" in page.inner_text("#tenant-budgets")
    page.screenshot(path=str(SCREENSHOTS / "tenant.png"), full_page=True)
    assert (SCREENSHOTS / "cockpit.png").stat().st_size > 50_000


def test_staff_without_billing_permissions_see_only_the_health_panel(
    browser: Any, live_server: Any, catalogue: None
) -> None:
    seed_ledger(timezone.now())
    staff_user("support", actions=())
    page = logged_in_page(browser, live_server.url, "support")

    page.goto(f"{live_server.url}/admin/")

    assert page.locator("#health-cards").is_visible()
    assert page.locator("#no-money").is_visible()
    assert page.locator("#cockpit .usd, #cockpit svg").count() == 0
    assert "USD" not in page.inner_text("#cockpit")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "cockpit-without-billing.png"), full_page=True)
