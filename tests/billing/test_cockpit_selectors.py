"""The cockpit's selectors against hand-made ledgers: every figure checked exactly."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from billing.cockpit import (
    ANSWER_STATUSES,
    budget_uses,
    end_users_by_spend,
    health,
    nearest_rank,
    overrun_summary,
    recent_alerts,
    spend_report,
    tenants_by_spend,
)
from billing.models import Alert, AlertKind, AttemptOutcome, Budget
from conversations.models import EndUser, Message, MessageRole, MessageStatus
from conversations.services.conversations import conversation_create
from tests.billing.ledger import LLAMA31_8B, LLAMA33_70B, attempt, charge, reservation
from tests.factories import make_tenant

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
TODAY = NOW.date()
D = Decimal


def days_ago(days: int, hours: float = 0) -> datetime:
    return NOW - timedelta(days=days, hours=hours)


# --- Spend -----------------------------------------------------------------------------


def test_spend_report_splits_charges_by_day_and_model_against_provider_cost() -> None:
    acme, other = make_tenant("acme"), make_tenant("other")
    charge(acme, "1.5000000001", at=days_ago(0))
    charge(acme, "0.25", at=days_ago(0, hours=1), model_id=LLAMA33_70B)
    charge(acme, "2", at=days_ago(3))
    charge(other, "0.0000440000", at=days_ago(3), model_id=LLAMA33_70B)
    charge(acme, "100", at=datetime.combine(TODAY - timedelta(days=30), datetime.max.time(), UTC))
    charge(acme, "100", at=NOW + timedelta(days=1))  # tomorrow: not in the window
    attempt(acme, "1.2", at=days_ago(0))
    attempt(acme, "0.3", at=days_ago(0), outcome=AttemptOutcome.FAILED, error_code="throttled")
    attempt(acme, "0.0500000002", at=days_ago(3), outcome=AttemptOutcome.LOST)
    attempt(other, "0.00005", at=days_ago(3), model_id=LLAMA33_70B)
    attempt(acme, "9", at=days_ago(30))  # the day before the window

    report = spend_report(today=TODAY)

    assert (report.first_day, report.last_day) == (date(2026, 2, 14), TODAY)
    assert [day.day for day in report.days] == [
        date(2026, 2, 14) + timedelta(days=n) for n in range(30)
    ]
    today, three_days_ago = report.days[-1], report.days[-4]
    assert today.charged_by_model == {LLAMA31_8B: D("1.5000000001"), LLAMA33_70B: D("0.25")}
    assert today.charged == D("1.7500000001")
    assert today.provider_cost == D("1.5")
    assert today.margin == D("0.2500000001")
    assert three_days_ago.charged_by_model == {LLAMA31_8B: D(2), LLAMA33_70B: D("0.000044")}
    assert three_days_ago.provider_cost == D("0.0500500002")
    assert all(day.charged == 0 and day.provider_cost == 0 for day in report.days[:-4])
    assert report.charged == D("3.7500440001")
    assert report.provider_cost == D("1.5500500002")
    assert report.margin == D("2.1999939999")
    assert report.margin_percent == D("58.7")
    assert (report.answers, report.provider_attempts) == (4, 4)
    assert (report.unpaid_attempts, report.unpaid_cost) == (2, D("0.3500000002"))
    assert report.model_ids == [LLAMA31_8B, LLAMA33_70B]
    llama31, llama33 = report.models
    assert (llama31.charged, llama31.provider_cost, llama31.answers) == (
        D("3.5000000001"),
        D("1.5500000002"),
        2,
    )
    assert llama31.unpaid_attempts == 2
    assert llama33.margin == D("0.25") + D("0.000044") - D("0.00005")


def test_spend_report_for_one_tenant_leaves_the_others_out() -> None:
    acme, other = make_tenant("acme"), make_tenant("other")
    charge(acme, "1", at=days_ago(1))
    charge(other, "5", at=days_ago(1))
    attempt(other, "4", at=days_ago(1))

    report = spend_report(today=TODAY, tenant_id=acme.pk)

    assert (report.charged, report.provider_cost, report.answers) == (D(1), D(0), 1)
    assert report.days[-2].charged_by_model == {LLAMA31_8B: D(1)}


def test_an_empty_ledger_gives_a_zero_filled_window() -> None:
    report = spend_report(today=TODAY, days=7)
    assert len(report.days) == 7
    assert report.charged == report.provider_cost == report.margin == 0
    assert report.margin_percent is None
    assert report.models == []


def test_tenants_by_spend_orders_by_charges_and_counts_provider_cost_without_charges() -> None:
    big, small, unpaid = make_tenant("big"), make_tenant("small"), make_tenant("unpaid")
    charge(big, "10", at=days_ago(2))
    charge(big, "0.5", at=days_ago(29))
    attempt(big, "7.25", at=days_ago(2))
    charge(small, "1", at=days_ago(0))
    attempt(unpaid, "0.75", at=days_ago(0), outcome=AttemptOutcome.FAILED)
    charge(small, "50", at=days_ago(45))  # before the window

    lines = tenants_by_spend(today=TODAY)

    assert [line.label for line in lines] == ["big", "small", "unpaid"]
    assert (lines[0].charged, lines[0].provider_cost, lines[0].margin) == (
        D("10.5"),
        D("7.25"),
        D("3.25"),
    )
    assert lines[0].answers == 2
    assert (lines[1].charged, lines[1].provider_cost) == (D(1), D(0))
    assert (lines[2].charged, lines[2].provider_cost, lines[2].unpaid_attempts) == (
        D(0),
        D("0.75"),
        1,
    )
    assert lines[2].margin == D("-0.75")
    assert [line.label for line in tenants_by_spend(today=TODAY, limit=1)] == ["big"]


def test_end_users_by_spend_for_one_tenant_and_its_window() -> None:
    acme, other = make_tenant("acme"), make_tenant("other")
    ann = EndUser.objects.create(tenant=acme, external_id="ann")
    bob = EndUser.objects.create(tenant=acme, external_id="bob")
    first_instant = datetime.combine(TODAY - timedelta(days=29), datetime.min.time(), UTC)
    charge(acme, "0.5", at=first_instant, end_user=ann)
    charge(acme, "0.25", at=days_ago(0), end_user=ann)
    charge(acme, "0.9", at=days_ago(1), end_user=bob)
    charge(acme, "0.1", at=days_ago(1))
    charge(acme, "3", at=first_instant - timedelta(microseconds=1), end_user=bob)
    charge(
        other, "8", at=days_ago(1), end_user=EndUser.objects.create(tenant=other, external_id="x")
    )

    lines = end_users_by_spend(tenant_id=acme.pk, today=TODAY)

    assert [(line.label, line.charged, line.answers) for line in lines] == [
        ("bob", D("0.9"), 1),
        ("ann", D("0.75"), 2),
        ("no end user", D("0.1"), 1),
    ]
    assert lines[0].key == str(bob.pk)
    assert (lines[0].provider_cost, lines[0].margin) == (None, None)


# --- Budgets -------------------------------------------------------------------------------


def budget(tenant, limit: str, **fields) -> Budget:
    return Budget.objects.create(
        tenant=tenant, limit_amount=D(limit), **{"period": "month", **fields}
    )


def test_budget_uses_read_the_counter_holds_and_ledger_nearest_first() -> None:
    acme = make_tenant("acme")
    month_start = datetime(2026, 3, 1, tzinfo=UTC)
    # Settlement keeps this counter; the ledger rows below are not what it reads.
    counted = budget(acme, "10", name="counted", period_start=month_start, spent_amount=D(7))
    reservation(acme, "1")
    reservation(acme, "5", status="settled")  # closed: holds nothing
    # Not touched this period: spend comes from the ledger since the 1st.
    fresh = budget(acme, "5", name="fresh", is_hard=False, soft_threshold_percent=40)
    charge(acme, "1.5", at=datetime(2026, 3, 2, tzinfo=UTC))
    charge(acme, "0.5", at=datetime(2026, 3, 14, tzinfo=UTC), model_id=LLAMA33_70B)
    charge(acme, "9", at=month_start - timedelta(seconds=1))
    # Only this model's spend and holds.
    scoped = budget(acme, "1", name="70b", model=_model(LLAMA33_70B), period="day")
    reservation(acme, "0.25", model_id=LLAMA33_70B)
    total = budget(acme, "1000", name="lifetime", period="total")

    uses = {use.name: use for use in budget_uses(now=NOW)}

    assert [use.name for use in budget_uses(now=NOW)] == ["counted", "fresh", "70b", "lifetime"]
    use = uses["counted"]
    assert (use.spent, use.reserved, use.used, use.percent_used) == (
        D(7),
        D("1.25"),
        D("8.25"),
        D("82.5"),
    )
    assert use.soft_threshold_crossed is False  # 7 of 10 spent: under 80 % without holds
    assert (use.state, use.is_hard, use.tenant) == ("ok", True, "acme")
    assert (use.period_start, use.period_end) == (month_start, datetime(2026, 4, 1, tzinfo=UTC))
    assert (uses["fresh"].spent, uses["fresh"].reserved) == (D(2), D("1.25"))
    assert uses["fresh"].percent_used == D("65.0")
    assert uses["fresh"].soft_threshold_crossed is True  # 2 of 5 is exactly 40 %
    assert fresh.pk == uses["fresh"].budget_id
    assert uses["fresh"].state == "soft"
    assert (uses["70b"].spent, uses["70b"].reserved) == (D(0), D("0.25"))
    assert uses["70b"].period_end == datetime(2026, 3, 16, tzinfo=UTC)
    assert uses["70b"].scope == f"tenant-wide · {LLAMA33_70B}"
    assert (uses["lifetime"].spent, uses["lifetime"].period_end) == (D(11), None)
    assert uses["lifetime"].percent_used == D("1.2")
    assert [counted.pk, scoped.pk, total.pk] == [
        uses[name].budget_id for name in ("counted", "70b", "lifetime")
    ]


def test_budget_uses_in_the_tenants_time_zone_and_per_end_user() -> None:
    tokyo = make_tenant("tokyo", time_zone="Asia/Tokyo")
    other = make_tenant("other")
    ann = EndUser.objects.create(tenant=tokyo, external_id="ann")
    bob = EndUser.objects.create(tenant=tokyo, external_id="bob")
    each = budget(tokyo, "2", name="each", period="day", per_end_user=True)
    budget(other, "1", name="untouched")
    local_midnight = datetime(2026, 3, 15, 15, 0, tzinfo=UTC)  # 00:00 on the 16th in Tokyo
    charge(tokyo, "0.5", at=NOW - timedelta(hours=1), end_user=ann)  # 20:00 on the 15th
    charge(tokyo, "1.5", at=NOW - timedelta(hours=2), end_user=bob)
    charge(tokyo, "5", at=NOW - timedelta(hours=22), end_user=ann)  # 23:00 on the 14th, Tokyo
    reservation(tokyo, "0.1", end_user=bob)
    reservation(tokyo, "0.7", end_user=ann)

    uses = budget_uses(now=NOW)

    assert [use.name for use in uses] == ["each", "untouched"]
    use = uses[0]
    assert use.period_end == local_midnight
    assert (use.end_user, use.spent, use.reserved, use.percent_used) == (
        "bob",
        D("1.5"),
        D("0.1"),
        D("80.0"),
    )
    assert use.scope == "each end user"
    assert each.pk == use.budget_id
    assert [use.name for use in budget_uses(now=NOW, tenant_id=other.pk)] == ["untouched"]
    assert uses[1].percent_used == D("0.0")


def test_a_budget_at_its_limit_and_one_of_zero() -> None:
    acme = make_tenant("acme")
    budget(acme, "1", name="full", period_start=datetime(2026, 3, 1, tzinfo=UTC), spent_amount=D(1))
    budget(acme, "0", name="zero")
    full, zero = budget_uses(now=NOW)
    assert (full.name, full.state, full.percent_used, full.soft_threshold_crossed) == (
        "full",
        "limit",
        D("100.0"),
        True,
    )
    assert (zero.percent_used, zero.soft_threshold_crossed, zero.state) == (None, False, "ok")


def _model(model_id: str):
    from models_catalog.models import FoundationModel

    return FoundationModel.objects.get(model_id=model_id)


# --- Alerts -------------------------------------------------------------------------------


def test_recent_budget_alerts_newest_first_without_overruns() -> None:
    acme, other = make_tenant("acme"), make_tenant("other")
    monthly = budget(acme, "10", name="monthly")
    for kind, spent, age in (
        (AlertKind.SOFT_THRESHOLD, "8", 3),
        (AlertKind.LIMIT_REACHED, "10", 1),
    ):
        alert = Alert.objects.create(
            tenant=acme,
            budget=monthly,
            kind=kind,
            period_start=NOW,
            spent_amount=D(spent),
            limit_amount=D(10),
        )
        Alert.objects.filter(pk=alert.pk).update(created_at=days_ago(age))
    _overrun(other, reported="0.0002", charged="0.0001", age_days=0)

    alerts = recent_alerts()

    assert [(a.kind, a.tenant, a.budget, a.spent, a.limit) for a in alerts] == [
        (AlertKind.LIMIT_REACHED, "acme", "monthly", D(10), D(10)),
        (AlertKind.SOFT_THRESHOLD, "acme", "monthly", D(8), D(10)),
    ]
    assert alerts[0].kind_label == "Limit reached"
    assert recent_alerts(tenant_id=other.pk) == []
    assert len(recent_alerts(limit=1)) == 1


def _overrun(tenant, *, reported: str, charged: str, age_days: float) -> Alert:
    alert = Alert.objects.create(
        tenant=tenant,
        budget=None,
        scope_key="m",
        kind=AlertKind.OVERRUN,
        period_start=NOW,
        spent_amount=D(reported),
        limit_amount=D(charged),
        details={
            "message_id": "00000000-0000-0000-0000-000000000001",
            "reported_input_tokens": 120,
            "reported_output_tokens": 300,
            "reserved_input_tokens": 120,
            "reserved_output_tokens": 200,
            "reported_cost": reported,
            "charged": charged,
        },
    )
    Alert.objects.filter(pk=alert.pk).update(created_at=days_ago(age_days))
    return alert


def test_overrun_summary_counts_and_prices_the_window() -> None:
    acme, other = make_tenant("acme"), make_tenant("other")
    _overrun(acme, reported="0.0000924", charged="0.0000704", age_days=1)
    _overrun(other, reported="0.5", charged="0.25", age_days=2)
    _overrun(acme, reported="9", charged="1", age_days=31)  # before the window

    summary = overrun_summary(now=NOW)

    assert (summary.count, summary.excess) == (2, D("0.2500220"))
    newest = summary.recent[0]
    assert newest.tenant == "acme"
    assert (newest.reported_output_tokens, newest.reserved_output_tokens) == (300, 200)
    assert (newest.reported_cost, newest.charged, newest.excess) == (
        D("0.0000924"),
        D("0.0000704"),
        D("0.000022"),
    )
    assert overrun_summary(now=NOW, tenant_id=other.pk).excess == D("0.25")


# --- Health -------------------------------------------------------------------------------


def _answer(conversation, status: str, *, error_code: str = "", created_at=None) -> Message:
    conversation.last_sequence += 1
    conversation.save(update_fields=["last_sequence"])
    message = Message.objects.create(
        tenant_id=conversation.tenant_id,
        conversation=conversation,
        sequence=conversation.last_sequence,
        role=MessageRole.ASSISTANT,
        status=status,
        error_code=error_code,
    )
    if created_at is not None:
        Message.objects.filter(pk=message.pk).update(created_at=created_at)
    return message


def test_health_of_the_last_hour() -> None:
    acme = make_tenant("acme")
    conversation = conversation_create(tenant=acme, model_id=LLAMA31_8B)
    minute = timedelta(minutes=1)
    # Completed answers that took 1..20 s from the turn to the stored answer.
    for seconds in range(1, 21):
        closed = NOW - minute * seconds
        reservation(
            acme,
            "0.01",
            status="settled",
            close_reason="completed",
            closed_at=closed,
            created_at=closed - timedelta(seconds=seconds),
        )
    reservation(acme, "0", status="settled", close_reason="cancelled", closed_at=NOW - minute)
    for code, count in (("throttled", 2), ("validation_error", 1)):
        for _ in range(count):
            failed = _answer(conversation, MessageStatus.FAILED, error_code=code)
            reservation(
                acme,
                "0",
                status="released",
                close_reason="failed",
                message_id=failed.pk,
                closed_at=NOW - 5 * minute,
            )
    expired = _answer(conversation, MessageStatus.FAILED, error_code="expired")
    reservation(
        acme,
        "0",
        status="released",
        close_reason="expired",
        message_id=expired.pk,
        closed_at=NOW - 2 * minute,
    )
    reservation(
        acme, "0", status="settled", close_reason="completed", closed_at=NOW - 61 * minute
    )  # over an hour ago
    reservation(acme, "1")  # open: not finished
    for code in ("throttled", "throttled", "ModelStreamErrorException"):
        attempt(acme, "0.001", at=NOW - 10 * minute, outcome=AttemptOutcome.FAILED, error_code=code)
    attempt(acme, "0.001", at=NOW - 10 * minute, outcome=AttemptOutcome.LOST)
    attempt(acme, "0.001", at=NOW - 10 * minute)
    attempt(acme, "0.001", at=NOW - 70 * minute, outcome=AttemptOutcome.FAILED, error_code="old")
    _answer(conversation, MessageStatus.QUEUED, created_at=NOW - 90 * minute)
    _answer(conversation, MessageStatus.QUEUED, created_at=NOW - 3 * minute)
    _answer(conversation, MessageStatus.RUNNING, created_at=NOW - 200 * minute)

    result = health(now=NOW)

    assert list(result.answers) == list(ANSWER_STATUSES)
    assert result.answers == {"completed": 20, "failed": 3, "cancelled": 1, "expired": 1}
    assert result.finished == 25
    assert result.failed_by_code == [("throttled", 2), ("validation_error", 1)]
    assert result.bedrock_errors == [("throttled", 2), ("ModelStreamErrorException", 1)]
    assert result.bedrock_error_count == 3
    assert (result.provider_attempts, result.lost_attempts) == (5, 1)
    assert (result.queued, result.running) == (2, 1)
    assert result.oldest_queued_at == NOW - 90 * minute
    assert result.oldest_queued_seconds == 5400
    assert (result.latency_p50_seconds, result.latency_p95_seconds) == (10.0, 19.0)
    assert result.since == NOW - timedelta(hours=1)


def test_health_with_nothing_to_report() -> None:
    result = health(now=NOW)
    assert result.finished == 0
    assert (result.latency_p50_seconds, result.latency_p95_seconds) == (None, None)
    assert (result.oldest_queued_at, result.oldest_queued_seconds) == (None, None)


def test_nearest_rank_is_percentile_disc() -> None:
    assert nearest_rank([1.0], 0.95) == 1.0
    assert nearest_rank([1.0, 2.0], 0.5) == 1.0
    assert nearest_rank([float(n) for n in range(1, 101)], 0.95) == 95.0
