"""Budgets with the real services: several budgets at once, soft alerts, budgets per end
user, and budget changes that keep the spend.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.limits import budget_create, budget_update
from billing.models import Alert, AlertKind, Budget, ManagedBy
from billing.pricing import token_cost
from billing.services import BudgetExceededError, budget_state, reservation_release
from conversations.models import EndUser, Tenant
from models_catalog.models import FoundationModel
from tests.billing.governance import (
    BIG,
    LLAMA3_8B,
    LLAMA31_8B,
    MAX_GEN_LEN,
    PRICE_031,
    QUANTUM,
    current_month_start,
    date_into_last_month,
    ledger_total,
    send_turn,
    settle,
    worst_case_of_a_turn,
)

pytestmark = pytest.mark.django_db


# -- several budgets --------------------------------------------------------------------------


def test_every_applicable_budget_must_allow_the_call_and_the_tightest_refuses(
    tenant: Tenant,
) -> None:
    worst_case = worst_case_of_a_turn(tenant, end_user="ann")
    ann = EndUser.objects.get(tenant=tenant, external_id="ann")
    model = FoundationModel.objects.get(model_id=LLAMA31_8B)
    budgets = {
        "tenant monthly": Budget.objects.create(tenant=tenant, period="month", limit_amount=BIG),
        "end user daily": Budget.objects.create(
            tenant=tenant, end_user=ann, period="day", limit_amount=BIG
        ),
        "model total": Budget.objects.create(
            tenant=tenant, model=model, period="total", limit_amount=BIG
        ),
    }
    for name, tightest in budgets.items():
        Budget.objects.filter(tenant=tenant).update(limit_amount=BIG)
        Budget.objects.filter(pk=tightest.pk).update(limit_amount=worst_case - QUANTUM)
        with pytest.raises(BudgetExceededError) as refused:
            send_turn(tenant, end_user="ann")
        assert refused.value.details["budget_id"] == str(tightest.pk), name
        assert refused.value.http_status == 402

        # Exactly the worst case fits.
        Budget.objects.filter(pk=tightest.pk).update(limit_amount=worst_case)
        turn = send_turn(tenant, end_user="ann")
        assert reservation_release(message_id=turn.answer.pk, reason="failed")

    # All three at exactly one worst case: one call fits, the next is refused.
    Budget.objects.filter(tenant=tenant).update(limit_amount=worst_case)
    send_turn(tenant, end_user="ann")
    with pytest.raises(BudgetExceededError):
        send_turn(tenant, end_user="ann")


def test_budgets_of_other_end_users_and_models_do_not_apply(tenant: Tenant) -> None:
    send_turn(tenant, end_user="ben")  # creates ben
    ben = EndUser.objects.get(tenant=tenant, external_id="ben")
    other_model = FoundationModel.objects.get(model_id=LLAMA3_8B)
    bens = Budget.objects.create(tenant=tenant, end_user=ben, period="day", limit_amount=0)
    other_models = Budget.objects.create(
        tenant=tenant, model=other_model, period="day", limit_amount=0
    )
    each_end_user = Budget.objects.create(
        tenant=tenant, per_end_user=True, period="day", limit_amount=0
    )

    send_turn(tenant)  # no end user, the other model: none of them applies

    with pytest.raises(BudgetExceededError) as refused:
        send_turn(tenant, end_user="ben")
    assert refused.value.details["budget_id"] in {str(bens.pk), str(each_end_user.pk)}
    with pytest.raises(BudgetExceededError) as refused:
        send_turn(tenant, model_id=LLAMA3_8B)
    assert refused.value.details["budget_id"] == str(other_models.pk)


# -- soft alerts ------------------------------------------------------------------------------


def test_soft_budget_alerts_once_per_period_and_never_refuses(tenant: Tenant) -> None:
    turns = [send_turn(tenant) for _ in range(6)]
    prompt = turns[0].context.prompt_token_count
    unit = token_cost(
        input_tokens=prompt, output_tokens=100, input_price=PRICE_031, output_price=PRICE_031
    )
    budget = Budget.objects.create(
        tenant=tenant,
        period="month",
        limit_amount=5 * unit,
        is_hard=False,
        soft_threshold_percent=50,
    )

    created = [[alert.kind for alert in settle(turn, output_tokens=100).alerts] for turn in turns]

    # 20%, 40%, 60% (crosses 50%), 80% (still past it), 100% (limit), 120% (still past both).
    assert created == [[], [], [AlertKind.SOFT_THRESHOLD], [], [AlertKind.LIMIT_REACHED], []]
    soft = Alert.objects.get(budget=budget, kind=AlertKind.SOFT_THRESHOLD)
    assert soft.period_start == current_month_start()
    assert soft.spent_amount == 3 * unit
    assert soft.limit_amount == 5 * unit
    assert soft.scope_key == ""
    # Past the limit, a soft budget still lets calls through.
    send_turn(tenant)

    date_into_last_month(tenant)
    next_month = [settle(send_turn(tenant), output_tokens=100).alerts for _ in range(3)]

    assert [len(alerts) for alerts in next_month] == [0, 0, 1]
    assert next_month[2][0].kind == AlertKind.SOFT_THRESHOLD
    assert next_month[2][0].period_start == current_month_start()
    assert Alert.objects.filter(budget=budget, kind=AlertKind.SOFT_THRESHOLD).count() == 2
    assert Alert.objects.filter(budget=budget, kind=AlertKind.LIMIT_REACHED).count() == 1


# -- budgets per end user ---------------------------------------------------------------------


def test_per_end_user_budget_gives_each_end_user_the_limit_separately(tenant: Tenant) -> None:
    worst_case = worst_case_of_a_turn(tenant)
    budget = Budget.objects.create(
        tenant=tenant, per_end_user=True, period="day", limit_amount=worst_case
    )
    anns_first = send_turn(tenant, end_user="ann")
    with pytest.raises(BudgetExceededError) as refused:
        send_turn(tenant, end_user="ann")
    assert refused.value.details["budget_id"] == str(budget.pk)
    bens_first = send_turn(tenant, end_user="ben")
    send_turn(tenant)  # no end user: no bucket of this budget applies
    ann = EndUser.objects.get(tenant=tenant, external_id="ann")
    ben = EndUser.objects.get(tenant=tenant, external_id="ben")

    anns_alerts = settle(anns_first, output_tokens=MAX_GEN_LEN).alerts  # the whole worst case

    assert {alert.kind for alert in anns_alerts} == {
        AlertKind.SOFT_THRESHOLD,
        AlertKind.LIMIT_REACHED,
    }
    assert {(alert.scope_key, alert.end_user_id) for alert in anns_alerts} == {
        (str(ann.pk), ann.pk)
    }
    anns, bens = budget_state(budget, end_user_id=ann.pk), budget_state(budget, end_user_id=ben.pk)
    assert (anns.spent, anns.reserved) == (worst_case, 0)
    assert (bens.spent, bens.reserved) == (0, worst_case)
    budget.refresh_from_db()
    assert budget.spent_amount == 0  # per-end-user spend is summed from the ledger
    with pytest.raises(BudgetExceededError):
        send_turn(tenant, end_user="ann")

    bens_alerts = settle(bens_first, output_tokens=MAX_GEN_LEN).alerts
    assert {alert.scope_key for alert in bens_alerts} == {str(ben.pk)}
    assert Alert.objects.filter(budget=budget).count() == 4


# -- regressions ------------------------------------------------------------------------------


# Bugs these tests found, fixed since: budget_update writing back a stale spend
# counter, and keeping the old scope's counter after a scope change.


def test_changing_a_budget_keeps_the_spend_settled_meanwhile(tenant: Tenant) -> None:
    budget = budget_create(
        tenant=tenant, period="month", limit=Decimal(1), managed_by=ManagedBy.TENANT
    )
    turn = send_turn(tenant)
    loaded_by_the_patch_view = Budget.objects.get(pk=budget.pk)
    settle(turn, output_tokens=100)  # a worker settles meanwhile

    budget_update(budget=loaded_by_the_patch_view, managed_by=ManagedBy.TENANT, limit=Decimal(2))

    budget.refresh_from_db()
    assert budget_state(budget).spent == ledger_total(tenant) > 0


def test_changing_a_budgets_scope_counts_the_spend_of_the_new_scope(tenant: Tenant) -> None:
    budget = budget_create(
        tenant=tenant,
        period="month",
        limit=Decimal(1),
        managed_by=ManagedBy.TENANT,
        model=LLAMA3_8B,
    )
    # A call on its model starts its period counter (nothing spent on that model).
    assert reservation_release(
        message_id=send_turn(tenant, model_id=LLAMA3_8B).answer.pk, reason="failed"
    )
    settle(send_turn(tenant), output_tokens=100)  # spend on another model

    loaded_by_the_patch_view = Budget.objects.get(pk=budget.pk)
    budget_update(budget=loaded_by_the_patch_view, managed_by=ManagedBy.TENANT, model=None)

    budget.refresh_from_db()
    assert budget_state(budget).spent == ledger_total(tenant) > 0
