"""The operators' cockpit: the admin's front page, and the spend part of a tenant's page.

Thin: the numbers come from billing.cockpit, the charts from config.svg_charts; this
module decides what the logged-in staff user may see and puts it in a template context.

Who sees what (any staff user reaches the admin's front page; non-staff are sent to log in):

- charges (spend by day, model, tenant and end user; answers charged): `billing.view_usagerecord`;
- provider cost and margin: that and `billing.view_providerattempt`;
- budgets nearest their limits and soft thresholds crossed: `billing.view_budget`;
- budget alerts: `billing.view_alert`; overruns (provider cost beyond charges): that and
  the provider-cost permission;
- health of the last hour (answers by status, error codes, queue, latency): every staff
  user; it holds counts and codes, no money and no tenant's name.

A staff user with none of the billing permissions sees the health panel and the app list
and not one money figure. Nothing here changes anything, so a read-only ("view") operator
sees the same cockpit as a superuser.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone

from billing import cockpit
from billing.cockpit import ZERO
from config.svg_charts import Series, bar_chart
from models_catalog.models import FoundationModel

# One colour per model, by catalogue order, so a model keeps its colour on every chart.
PALETTE = (
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
    "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#8c564b",
)  # fmt: skip
PROVIDER_COLOUR = "currentColor"  # the text's colour: readable on both admin themes
GAIN, LOSS = "#2e8540", "#ba2121"
NEAREST_BUDGETS = 10


@dataclass(frozen=True)
class CockpitAccess:
    charges: bool
    provider_cost: bool
    budgets: bool
    alerts: bool

    @classmethod
    def for_user(cls, user: Any) -> CockpitAccess:
        charges = user.has_perm("billing.view_usagerecord")
        return cls(
            charges=charges,
            provider_cost=charges and user.has_perm("billing.view_providerattempt"),
            budgets=user.has_perm("billing.view_budget"),
            alerts=user.has_perm("billing.view_alert"),
        )

    @property
    def overruns(self) -> bool:
        return self.alerts and self.provider_cost

    @property
    def any_money(self) -> bool:
        return self.charges or self.budgets or self.alerts


def usd(amount: Decimal | None) -> str:
    """For reading: cents with thousands separators from 1 USD up, every significant
    decimal below (a thousandth of a cent is real money at these prices)."""
    if amount is None:
        return "—"
    if abs(amount) >= 1:
        return f"{amount:,.2f}"
    if amount == 0:
        return "0.00"
    exact = f"{amount.normalize():f}"
    return exact if len(exact.split(".")[1]) > 2 else f"{amount:.2f}"


def model_colours() -> dict[str, str]:
    ordered = FoundationModel.objects.order_by("sort_order", "model_id").values_list(
        "model_id", flat=True
    )
    return {model_id: PALETTE[index % len(PALETTE)] for index, model_id in enumerate(ordered)}


def _chart_value(amount: Decimal) -> str:
    return f"{usd(amount)} {settings.MONEY_CURRENCY}"


def spend_charts(report: cockpit.SpendReport, access: CockpitAccess) -> dict[str, Any]:
    """The spend chart (charges by model per day, provider cost over it) and the margin
    chart, as SVG."""
    colours = model_colours()
    categories = [day.day.strftime("%m-%d") for day in report.days]
    charged_models = [line.key for line in report.models if line.charged]
    bars = [
        Series(
            model,
            [day.charged_by_model.get(model, ZERO) for day in report.days],
            colours.get(model, PALETTE[index % len(PALETTE)]),
        )
        for index, model in enumerate(charged_models)
    ]
    lines = []
    if access.provider_cost:
        lines.append(
            Series("provider cost", [day.provider_cost for day in report.days], PROVIDER_COLOUR)
        )
    charts: dict[str, Any] = {
        "spend_chart": bar_chart(
            title="Tenant charges by day and model"
            + (", with provider cost" if access.provider_cost else ""),
            categories=categories,
            bars=bars,
            lines=lines,
            format_value=_chart_value,
        )
    }
    if access.provider_cost:
        charts["margin_chart"] = bar_chart(
            title="Margin by day (charges minus provider cost)",
            categories=categories,
            bars=[
                Series("margin", [max(day.margin, ZERO) for day in report.days], GAIN),
                Series("loss", [min(day.margin, ZERO) for day in report.days], LOSS),
            ],
            format_value=_chart_value,
            height=160,
        )
    return charts


def cockpit_context(request: HttpRequest) -> dict[str, Any]:
    """The front page's cockpit, for the logged-in staff user."""
    access = CockpitAccess.for_user(request.user)
    now = timezone.now()
    today = cockpit.utc_today(now)
    context: dict[str, Any] = {
        "access": access,
        "window_days": cockpit.WINDOW_DAYS,
        "health": cockpit.health(now=now),
    }
    if access.charges:
        report = cockpit.spend_report(today=today)
        context.update(
            spend=report,
            tenants=cockpit.tenants_by_spend(today=today),
            **spend_charts(report, access),
        )
    if access.budgets:
        uses = cockpit.budget_uses(now=now)
        context["nearest_budgets"] = [use for use in uses if use.is_hard][:NEAREST_BUDGETS]
        context["soft_crossed"] = [use for use in uses if use.soft_threshold_crossed]
    if access.alerts:
        context["alerts"] = cockpit.recent_alerts()
    if access.overruns:
        context["overruns"] = cockpit.overrun_summary(now=now)
    return {"cockpit": context}


def tenant_cockpit_context(request: HttpRequest, tenant_id: Any) -> dict[str, Any]:
    """One tenant's spend, models and end users by spend, budgets and alerts."""
    access = CockpitAccess.for_user(request.user)
    now = timezone.now()
    today = cockpit.utc_today(now)
    context: dict[str, Any] = {"access": access, "window_days": cockpit.WINDOW_DAYS}
    if access.charges:
        report = cockpit.spend_report(today=today, tenant_id=tenant_id)
        context.update(
            spend=report,
            end_users=cockpit.end_users_by_spend(tenant_id=tenant_id, today=today),
            **spend_charts(report, access),
        )
    if access.budgets:
        context["budgets"] = cockpit.budget_uses(now=now, tenant_id=tenant_id)
    if access.alerts:
        context["alerts"] = cockpit.recent_alerts(tenant_id=tenant_id)
    if access.overruns:
        context["overruns"] = cockpit.overrun_summary(now=now, tenant_id=tenant_id)
    return {"cockpit": context}
