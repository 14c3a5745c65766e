"""What set_budget and set_quota share: the scope options and turning errors into text."""

from __future__ import annotations

from argparse import ArgumentParser
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from billing.admin_services import LimitScope, limit_scope_resolve
from config.errors import ApplicationError


def add_scope_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--tenant", required=True, metavar="SLUG", help="The tenant's slug.")
    parser.add_argument(
        "--model", metavar="MODEL_ID", help="Only calls to this model (default: every model)."
    )
    who = parser.add_mutually_exclusive_group()
    who.add_argument(
        "--end-user",
        metavar="EXTERNAL_ID",
        help="Only this end user's calls (the tenant's own id for them).",
    )
    who.add_argument(
        "--per-end-user", action="store_true", help="Every end user gets the limit separately."
    )


@contextmanager
def command_errors() -> Iterator[None]:
    """Service and validation errors become CommandErrors with their own messages."""
    try:
        yield
    except ApplicationError as error:
        raise CommandError(error.message) from error
    except ValidationError as error:
        if hasattr(error, "error_dict"):
            text = "; ".join(
                f"{field}: {' '.join(messages)}" for field, messages in error.message_dict.items()
            )
        else:
            text = " ".join(error.messages)
        raise CommandError(text) from error


def scope_from_options(options: dict) -> LimitScope:
    with command_errors():
        return limit_scope_resolve(
            tenant_slug=options["tenant"],
            end_user_external_id=options["end_user"],
            model_id=options["model"],
            per_end_user=options["per_end_user"],
        )
