"""Template tags and filters of the operators' cockpit: money, percentages and durations."""

from __future__ import annotations

from decimal import Decimal

from django import template
from django.conf import settings
from django.utils.html import format_html
from django.utils.safestring import SafeString

from billing.admin import money
from billing.admin_cockpit import usd

register = template.Library()


@register.filter
def usd_amount(amount: Decimal | None) -> SafeString:
    """The amount for reading, with the exact ledger figure as its tooltip."""
    if amount is None:
        return format_html('<span class="usd">—</span>')
    negative = " negative" if amount < 0 else ""
    return format_html(
        '<span class="usd{}" title="{} {}" data-exact="{}">{}</span>',
        negative,
        money(amount),
        settings.MONEY_CURRENCY,
        money(amount),
        usd(amount),
    )


@register.simple_tag
def currency() -> str:
    """The currency every amount is in (settings.MONEY_CURRENCY), for templates to name it."""
    return settings.MONEY_CURRENCY


@register.filter
def percent(value: Decimal | None) -> str:
    return "—" if value is None else f"{value}%"


@register.filter
def meter_width(value: Decimal | None) -> str:
    """A percentage clamped to 0-100, for a bar's CSS width."""
    if value is None:
        return "0"
    return str(max(Decimal(0), min(value, Decimal(100))))


@register.filter
def seconds(value: float | None) -> str:
    """A duration for reading: 850 ms, 4.2 s, 3 min 5 s, 2 h 10 min."""
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
