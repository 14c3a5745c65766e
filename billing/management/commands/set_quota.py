"""manage.py set_quota: create or update the operator's quota for a tenant and scope."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from billing.admin_services import operator_quota_set
from billing.management.commands._limits import (
    add_scope_arguments,
    command_errors,
    scope_from_options,
)

# option -> (Quota field, what it limits)
LIMIT_OPTIONS = {
    "rpm": ("requests_per_minute", "requests per minute"),
    "tpm": ("tokens_per_minute", "tokens per minute"),
    "tpd": ("tokens_per_day", "tokens per day (UTC)"),
    "concurrency": ("max_concurrent", "answers queued or running at once"),
}
LIFT = "none"


def parse_count(option: str, text: str) -> int | None:
    if text.strip().lower() == LIFT:
        return None
    try:
        value = int(text)
    except ValueError:
        raise CommandError(
            f"--{option} {text!r} must be a whole number (or {LIFT!r} to lift the limit)."
        ) from None
    if value < 1:
        raise CommandError(
            f"--{option} {text!r} must be at least 1; use {LIFT!r} to lift the limit."
        )
    return value


class Command(BaseCommand):
    help = (
        "Create or update the operator-managed quota of a tenant for one scope (tenant-wide, "
        "one end user, each end user; optionally one model). Limits not given are left as "
        f"they are; '{LIFT}' lifts one. Tenants cannot change operator quotas."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        add_scope_arguments(parser)
        for option, (_, description) in LIMIT_OPTIONS.items():
            parser.add_argument(f"--{option}", metavar="N", help=f"Limit of {description}.")

    def handle(self, *args: object, **options: Any) -> None:
        limits = {
            field: parse_count(option, options[option])
            for option, (field, _) in LIMIT_OPTIONS.items()
            if options[option] is not None
        }
        if not limits:
            options_text = ", ".join(f"--{option}" for option in LIMIT_OPTIONS)
            raise CommandError(f"Give at least one limit: {options_text}.")
        scope = scope_from_options(options)
        with command_errors():
            result = operator_quota_set(scope=scope, **limits)
        quota = result.limit
        described = ", ".join(
            f"{getattr(quota, field)} {description}"
            for field, description in LIMIT_OPTIONS.values()
            if getattr(quota, field) is not None
        )
        self.stdout.write(
            f"{'Created' if result.created else 'Updated'} quota {quota.pk} for tenant "
            f"{scope.tenant.slug} ({scope.describe()}): {described or 'no limits'}."
        )
