"""manage.py set_budget: create or update the operator's budget for a tenant, scope and period."""

from __future__ import annotations

from argparse import ArgumentParser
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from billing.admin_services import operator_budget_set
from billing.management.commands._limits import (
    add_scope_arguments,
    command_errors,
    scope_from_options,
)
from billing.models import BudgetPeriod


def parse_limit(text: str) -> Decimal:
    """An amount of money that fits the money columns, or a CommandError that says why not."""
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise CommandError(f"--limit {text!r} is not a number; write it like 100.00.") from None
    if not amount.is_finite():
        raise CommandError(
            f"--limit {text!r} must be a finite amount in {settings.MONEY_CURRENCY}."
        )
    if amount < 0:
        raise CommandError(f"--limit {text!r} must not be negative.")
    places = max(0, -amount.as_tuple().exponent)
    if places > settings.MONEY_DECIMAL_PLACES:
        raise CommandError(
            f"--limit {text!r} has {places} decimal places; at most "
            f"{settings.MONEY_DECIMAL_PLACES} are kept."
        )
    whole_digits = settings.MONEY_MAX_DIGITS - settings.MONEY_DECIMAL_PLACES
    if amount >= Decimal(10) ** whole_digits:
        raise CommandError(
            f"--limit {text!r} is too large (under 10^{whole_digits} {settings.MONEY_CURRENCY})."
        )
    return amount


def parse_threshold(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise CommandError(f"--threshold {text!r} must be a whole percentage.") from None
    if not 1 <= value <= 100:
        raise CommandError(f"--threshold {text!r} must be between 1 and 100 (percent).")
    return value


class Command(BaseCommand):
    help = (
        "Create or update the operator-managed budget of a tenant for one period and scope "
        "(tenant-wide, one end user, each end user; optionally one model). There is one per "
        "tenant, period and scope: running it again changes that budget. Tenants cannot "
        "change operator budgets."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        add_scope_arguments(parser)
        parser.add_argument(
            "--period", required=True, choices=list(BudgetPeriod.values), help="Budget period."
        )
        parser.add_argument(
            "--limit",
            required=True,
            metavar=settings.MONEY_CURRENCY,
            help=f"The limit in {settings.MONEY_CURRENCY}, e.g. 100.00.",
        )
        hardness = parser.add_mutually_exclusive_group()
        hardness.add_argument(
            "--soft",
            dest="is_hard",
            action="store_const",
            const=False,
            help="Only alert when crossed; calls are not refused.",
        )
        hardness.add_argument(
            "--hard",
            dest="is_hard",
            action="store_const",
            const=True,
            help="Refuse calls that could cross it (the default for a new budget).",
        )
        parser.add_argument(
            "--threshold",
            metavar="PERCENT",
            help="Alert when this percentage is spent (1-100; 80 for a new budget).",
        )
        parser.add_argument("--name", help="A label, e.g. 'Monthly cap'.")

    def handle(self, *args: object, **options: Any) -> None:
        limit = parse_limit(options["limit"])
        threshold = options["threshold"]
        threshold = parse_threshold(threshold) if threshold is not None else None
        scope = scope_from_options(options)
        with command_errors():
            result = operator_budget_set(
                scope=scope,
                period=options["period"],
                limit=limit,
                is_hard=options["is_hard"],
                soft_threshold_percent=threshold,
                name=options["name"],
            )
        budget = result.limit
        self.stdout.write(
            f"{'Created' if result.created else 'Updated'} budget {budget.pk} for tenant "
            f"{scope.tenant.slug}: {budget.limit_amount.normalize():f} "
            f"{settings.MONEY_CURRENCY} per "
            f"{budget.period}, {'hard' if budget.is_hard else 'soft'}, alert at "
            f"{budget.soft_threshold_percent}%, {scope.describe()}."
        )
