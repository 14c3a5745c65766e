"""The provider ledger against tenant charges: the selector, `manage.py provider_report`
and the admin page agree, and explain the difference (unpaid attempts, overruns)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import Client
from django.utils import timezone

from billing.models import AttemptOutcome, Reservation
from billing.reconciliation import provider_reconciliation
from billing.services import provider_attempt_record, reservation_settle
from conversations.services.conversations import conversation_create, user_message_create
from tests.factories import make_tenant

pytestmark = pytest.mark.django_db

LLAMA31_8B = "meta.llama3-1-8b-instruct-v1:0"  # 0.22 / 0.22 USD per 1M tokens


def answered(tenant, *, attempts: list[tuple[str, int, int]], settle_at: tuple[int, int]):
    """A turn whose attempts hit the provider ledger, the last one settling the answer."""
    conversation = conversation_create(tenant=tenant, model_id=LLAMA31_8B)
    turn = user_message_create(conversation=conversation, content="Hello", max_gen_len=40)
    with transaction.atomic():
        for number, (outcome, tokens_in, tokens_out) in enumerate(attempts, start=1):
            provider_attempt_record(
                message_id=turn.answer.pk, attempt=number, outcome=outcome,
                input_tokens=tokens_in, output_tokens=tokens_out,
            )  # fmt: skip
        reservation_settle(
            message_id=turn.answer.pk,
            conversation_id=conversation.pk,
            input_tokens=settle_at[0],
            output_tokens=settle_at[1],
            outcome="completed",
        )
    return Reservation.objects.get(message_id=turn.answer.pk)


def this_month() -> tuple[datetime, datetime]:
    today = timezone.now().astimezone(UTC).date()
    start = datetime.combine(today.replace(day=1), time.min, tzinfo=UTC)
    return start, datetime.combine(today + timedelta(days=1), time.min, tzinfo=UTC)


def test_the_difference_between_provider_cost_and_charges_is_explained() -> None:
    tenant = make_tenant("reconciled")
    plain = answered(tenant, attempts=[], settle_at=(0, 0))
    prompt = plain.prompt_tokens
    # Retried once (failed mid-stream after 3 tokens), then completed within the reservation.
    retried = answered(
        tenant,
        attempts=[(AttemptOutcome.FAILED, prompt, 3), (AttemptOutcome.COMPLETED, prompt, 20)],
        settle_at=(prompt, 20),
    )
    # Bedrock reported 100 output tokens for max_gen_len 40.
    overrun = answered(
        tenant, attempts=[(AttemptOutcome.COMPLETED, prompt, 100)], settle_at=(prompt, 100)
    )

    report = provider_reconciliation(start=this_month()[0], end=this_month()[1])
    (row,) = report.rows
    quantum = Decimal("0.22") / 1_000_000
    assert row.tenant == "reconciled"
    assert row.model == LLAMA31_8B
    assert row.charged == quantum * (prompt + 20) + overrun.amount
    assert row.provider_cost == quantum * (3 * prompt + 3 + 20 + 100)
    assert row.unpaid_attempts == 1
    assert row.unpaid_attempts_cost == quantum * (prompt + 3)
    assert row.overruns == 1
    assert row.overrun_cost == quantum * 60
    assert row.other == 0  # no price changed: retries and overruns explain it all
    assert row.margin == row.charged - row.provider_cost < 0
    assert retried.status == "settled"

    out = StringIO()
    call_command("provider_report", "--tenant", "reconciled", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("Provider cost against tenant charges")
    assert any(LLAMA31_8B in line and f"{row.charged:.8f}" in line for line in lines)
    assert lines[-1].startswith("total")
    assert f"{row.provider_cost:.8f}" in lines[-1]


def test_the_report_refuses_bad_options() -> None:
    with pytest.raises(CommandError, match="--start must be a date"):
        call_command("provider_report", "--start", "yesterday", stdout=StringIO())
    with pytest.raises(CommandError, match="No tenant"):
        call_command("provider_report", "--tenant", "nobody", stdout=StringIO())
    with pytest.raises(CommandError, match="before --start"):
        call_command(
            "provider_report", "--start", "2026-02-01", "--end", "2026-01-01", stdout=StringIO()
        )


def test_the_admin_shows_the_reconciliation_to_staff_only(client) -> None:
    superuser_client = Client()
    superuser_client.force_login(User.objects.create_superuser("root", "root@example.com", "x"))
    tenant = make_tenant("shown")
    answered(tenant, attempts=[(AttemptOutcome.COMPLETED, 5, 5)], settle_at=(5, 5))
    page = superuser_client.get("/admin/billing/providerattempt/reconciliation/")
    assert page.status_code == 200
    body = page.content.decode()
    assert 'id="reconciliation"' in body
    assert "shown" in body
    assert LLAMA31_8B in body
    listing = superuser_client.get("/admin/billing/providerattempt/")
    assert listing.status_code == 200
    assert "/admin/billing/providerattempt/reconciliation/" in listing.content.decode()
    bad = superuser_client.get("/admin/billing/providerattempt/reconciliation/?start=nope")
    assert bad.status_code == 200
    assert "Dates must look like" in bad.content.decode()
    anonymous = client.get("/admin/billing/providerattempt/reconciliation/")
    assert anonymous.status_code == 302
    assert "/admin/login/" in anonymous["Location"]
