"""manage.py set_budget and set_quota: one operator limit per scope, clear errors."""

from __future__ import annotations

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from billing.models import Budget, ManagedBy, Quota
from billing.services import BudgetExceededError
from conversations.models import EndUser
from conversations.services.conversations import conversation_create, user_message_create
from tests.factories import make_tenant

LLAMA3 = "meta.llama3-1-8b-instruct-v1:0"


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_set_budget_creates_an_operator_budget_with_defaults(owner_tenant) -> None:
    output = run("set_budget", "--tenant", "alice", "--period", "month", "--limit", "100.00")
    budget = Budget.objects.get(tenant=owner_tenant)
    assert (budget.period, budget.limit_amount) == ("month", Decimal("100"))
    assert budget.managed_by == ManagedBy.OPERATOR
    assert budget.is_hard is True
    assert budget.soft_threshold_percent == 80
    assert (budget.end_user, budget.model, budget.per_end_user) == (None, None, False)
    assert output.startswith(f"Created budget {budget.pk} for tenant alice: 100 USD per month")
    assert "tenant-wide" in output


def test_set_budget_again_updates_the_same_budget_and_keeps_what_is_not_given(
    owner_tenant,
) -> None:
    run("set_budget", "--tenant", "alice", "--period", "month", "--limit", "100",
        "--soft", "--threshold", "50", "--name", "Monthly cap")  # fmt: skip
    Budget.objects.update(spent_amount=Decimal("12.5"))

    output = run("set_budget", "--tenant", "alice", "--period", "month", "--limit", "250.50")

    budget = Budget.objects.get()
    assert output.startswith(f"Updated budget {budget.pk}")
    assert budget.limit_amount == Decimal("250.50")
    assert (budget.is_hard, budget.soft_threshold_percent, budget.name) == (
        False,
        50,
        "Monthly cap",
    )
    assert budget.spent_amount == Decimal("12.5"), "changing a limit keeps the spend counter"
    run("set_budget", "--tenant", "alice", "--period", "month", "--limit", "1", "--hard")
    assert Budget.objects.get().is_hard is True


def test_set_budget_keeps_one_budget_per_period_and_scope(owner_tenant, other_tenant) -> None:
    run("set_budget", "--tenant", "alice", "--period", "month", "--limit", "100")
    run("set_budget", "--tenant", "alice", "--period", "day", "--limit", "10")
    run("set_budget", "--tenant", "alice", "--period", "day", "--limit", "1", "--model", LLAMA3)
    run("set_budget", "--tenant", "alice", "--period", "day", "--limit", "2", "--end-user", "kid")
    run("set_budget", "--tenant", "alice", "--period", "day", "--limit", "3", "--per-end-user")
    run("set_budget", "--tenant", "bob", "--period", "month", "--limit", "7")
    # Running each again changes the matching budget only.
    run("set_budget", "--tenant", "alice", "--period", "day", "--limit", "20")
    run("set_budget", "--tenant", "alice", "--period", "day", "--limit", "4", "--end-user", "kid")

    alice = {
        (b.period, b.model.model_id if b.model else None,
         b.end_user.external_id if b.end_user else None, b.per_end_user): b.limit_amount
        for b in Budget.objects.filter(tenant=owner_tenant).select_related("model", "end_user")
    }  # fmt: skip
    assert alice == {
        ("month", None, None, False): Decimal(100),
        ("day", None, None, False): Decimal(20),
        ("day", LLAMA3, None, False): Decimal(1),
        ("day", None, "kid", False): Decimal(4),
        ("day", None, None, True): Decimal(3),
    }
    assert Budget.objects.get(tenant=other_tenant).limit_amount == Decimal(7)
    assert EndUser.objects.get(external_id="kid").tenant == owner_tenant


def test_set_budget_leaves_a_tenant_managed_budget_of_the_same_scope_alone(
    owner_tenant,
) -> None:
    tenants_own = Budget.objects.create(
        tenant=owner_tenant, period="month", limit_amount=5, managed_by=ManagedBy.TENANT
    )
    run("set_budget", "--tenant", "alice", "--period", "month", "--limit", "100")
    tenants_own.refresh_from_db()
    assert tenants_own.limit_amount == Decimal(5)
    assert Budget.objects.filter(managed_by=ManagedBy.OPERATOR).count() == 1


def test_a_budget_set_by_command_is_enforced(owner_tenant) -> None:
    run("set_budget", "--tenant", "alice", "--period", "month", "--limit", "0.000001")
    conversation = conversation_create(tenant=owner_tenant, model_id=LLAMA3)
    with pytest.raises(BudgetExceededError):
        user_message_create(conversation=conversation, content="hi")

    run("set_budget", "--tenant", "alice", "--period", "month", "--limit", "100")
    turn = user_message_create(conversation=conversation, content="hi")
    assert turn.answer.reservation.amount > 0


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ("abc", "is not a number"),
        ("", "is not a number"),
        ("-1", "must not be negative"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
        ("0.00000000001", "at most 10"),
        ("1e10", "too large"),
        ("12345678901", "too large"),
    ],
)
def test_set_budget_rejects_a_bad_limit(owner_tenant, limit: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run("set_budget", "--tenant", "alice", "--period", "month", "--limit", limit)
    assert not Budget.objects.exists()


def test_set_budget_accepts_ten_whole_digits_and_ten_decimal_places(owner_tenant) -> None:
    # (SQLite keeps about 15 significant digits of a decimal, so not both at once here.)
    run("set_budget", "--tenant", "alice", "--period", "month", "--limit", "9999999999")
    run("set_budget", "--tenant", "alice", "--period", "day", "--limit", "0.0000000001")
    limits = sorted(Budget.objects.values_list("limit_amount", flat=True))
    assert limits == [Decimal("0.0000000001"), Decimal("9999999999")]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--tenant", "nobody"], "No tenant with slug 'nobody'"),
        (["--tenant", "alice", "--model", "meta.nope-v1:0"], "No active model"),
        (["--tenant", "alice", "--end-user", "kid", "--per-end-user"], "not allowed with"),
        (["--tenant", "alice", "--threshold", "0"], "between 1 and 100"),
        (["--tenant", "alice", "--threshold", "101"], "between 1 and 100"),
        (["--tenant", "alice", "--threshold", "half"], "whole percentage"),
        (["--tenant", "alice", "--soft", "--hard"], "not allowed with"),
    ],
)
def test_set_budget_explains_bad_options(owner_tenant, arguments: list, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run("set_budget", "--period", "month", "--limit", "1", *arguments)
    assert not Budget.objects.exists()


def test_set_budget_requires_tenant_period_and_limit(owner_tenant) -> None:
    with pytest.raises(CommandError, match="--period"):
        run("set_budget", "--tenant", "alice", "--limit", "1")
    with pytest.raises(CommandError, match="invalid choice: 'year'"):
        run("set_budget", "--tenant", "alice", "--period", "year", "--limit", "1")
    with pytest.raises(CommandError, match="--tenant"):
        run("set_budget", "--period", "day", "--limit", "1")


def test_set_budget_refuses_when_several_operator_budgets_match(owner_tenant) -> None:
    for limit in (1, 2):
        Budget.objects.create(tenant=owner_tenant, period="day", limit_amount=limit)
    with pytest.raises(CommandError, match="2 operator budgets already cover this scope"):
        run("set_budget", "--tenant", "alice", "--period", "day", "--limit", "5")
    assert sorted(Budget.objects.values_list("limit_amount", flat=True)) == [1, 2]


def test_set_quota_creates_then_updates_only_the_limits_given(owner_tenant) -> None:
    output = run("set_quota", "--tenant", "alice", "--rpm", "60", "--tpm", "10000")
    quota = Quota.objects.get()
    assert output.startswith(f"Created quota {quota.pk} for tenant alice (tenant-wide)")
    assert (quota.requests_per_minute, quota.tokens_per_minute) == (60, 10000)
    assert (quota.tokens_per_day, quota.max_concurrent) == (None, None)
    assert quota.managed_by == ManagedBy.OPERATOR

    output = run("set_quota", "--tenant", "alice", "--tpd", "500000", "--concurrency", "2",
                 "--rpm", "none")  # fmt: skip
    quota.refresh_from_db()
    assert output.startswith(f"Updated quota {quota.pk}")
    assert (quota.requests_per_minute, quota.tokens_per_minute) == (None, 10000)
    assert (quota.tokens_per_day, quota.max_concurrent) == (500000, 2)
    assert Quota.objects.count() == 1


def test_set_quota_keeps_one_quota_per_scope(owner_tenant) -> None:
    run("set_quota", "--tenant", "alice", "--rpm", "60")
    run("set_quota", "--tenant", "alice", "--rpm", "5", "--per-end-user")
    run("set_quota", "--tenant", "alice", "--rpm", "2", "--end-user", "kid", "--model", LLAMA3)
    run("set_quota", "--tenant", "alice", "--rpm", "3", "--end-user", "kid", "--model", LLAMA3)
    assert sorted(Quota.objects.values_list("requests_per_minute", flat=True)) == [3, 5, 60]
    scoped = Quota.objects.get(end_user__external_id="kid")
    assert scoped.model.model_id == LLAMA3


def test_a_quota_set_by_command_is_enforced(owner_tenant) -> None:
    from billing.services import QuotaExceededError

    run("set_quota", "--tenant", "alice", "--concurrency", "1")
    first = conversation_create(tenant=owner_tenant, model_id=LLAMA3)
    user_message_create(conversation=first, content="hi")
    second = conversation_create(tenant=owner_tenant, model_id=LLAMA3)
    with pytest.raises(QuotaExceededError):
        user_message_create(conversation=second, content="hi")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "Give at least one limit"),
        (["--rpm", "0"], "at least 1"),
        (["--rpm", "-5"], "at least 1"),
        (["--tpm", "lots"], "whole number"),
        (["--rpm", "none"], "A new quota needs at least one limit"),
        (["--rpm", "1", "--end-user", "kid", "--per-end-user"], "not allowed with"),
        (["--rpm", "1", "--model", "gpt-4"], "No active model"),
    ],
)
def test_set_quota_explains_bad_options(owner_tenant, arguments: list, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run("set_quota", "--tenant", "alice", *arguments)
    assert not Quota.objects.exists()


def test_set_quota_for_unknown_tenant(db) -> None:
    make_tenant("carol")
    with pytest.raises(CommandError, match="No tenant with slug 'nobody'"):
        run("set_quota", "--tenant", "nobody", "--rpm", "1")
