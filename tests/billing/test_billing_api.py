"""Budgets, quotas, usage and alerts over HTTP: owner, second tenant, no key."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.db import transaction

from billing.models import Alert, Budget, ManagedBy, Quota, UsageRecord
from billing.services import reservation_settle
from conversations.services.conversations import conversation_create, user_message_create
from tests.support.api import assert_error

LLAMA3 = "meta.llama3-1-8b-instruct-v1:0"  # 0.22 / 0.22 USD per 1M tokens


def answered_turn(tenant, *, end_user: str | None = None, output_tokens: int = 100):
    """A turn whose answer settled as a worker would settle it."""
    conversation = conversation_create(
        tenant=tenant, model_id=LLAMA3, end_user_external_id=end_user
    )
    turn = user_message_create(conversation=conversation, content="Hello there")
    with transaction.atomic():
        settlement = reservation_settle(
            message_id=turn.answer.pk,
            conversation_id=conversation.pk,
            input_tokens=turn.context.prompt_token_count,
            output_tokens=output_tokens,
            outcome="completed",
        )
    return conversation, turn, settlement


def test_budget_lifecycle_for_the_tenants_own_budget(owner_client, owner_tenant) -> None:
    created = owner_client.post(
        "/api/v1/budgets",
        {"period": "day", "limit": "0.50", "per_end_user": True, "name": "each user"},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["managed_by"] == "tenant"
    assert body["limit"] == "0.5000000000"
    assert body["per_end_user"] is True
    budget_id = body["id"]

    patched = owner_client.patch(f"/api/v1/budgets/{budget_id}", {"limit": "1"}, format="json")
    assert patched.status_code == 200
    assert Budget.objects.get(pk=budget_id).limit_amount == Decimal(1)

    assert owner_client.delete(f"/api/v1/budgets/{budget_id}").status_code == 204
    assert not Budget.objects.filter(pk=budget_id).exists()


def test_budget_list_shows_spend_reserved_remaining_and_period(owner_client, owner_tenant) -> None:
    budget = Budget.objects.create(tenant=owner_tenant, period="month", limit_amount=Decimal("1"))
    _, _, settlement = answered_turn(owner_tenant)
    pending = conversation_create(tenant=owner_tenant, model_id=LLAMA3)
    open_turn = user_message_create(conversation=pending, content="Still thinking")
    listed = owner_client.get("/api/v1/budgets").json()["results"]
    [item] = [entry for entry in listed if entry["id"] == str(budget.pk)]
    spent, reserved = Decimal(item["spent"]), Decimal(item["reserved"])
    assert spent == settlement.record.cost
    assert reserved == open_turn.answer.reservation.amount
    assert Decimal(item["remaining"]) == Decimal(1) - spent - reserved
    assert Decimal(item["percent_used"]) == ((spent + reserved) * 100).quantize(Decimal("0.01"))
    assert item["managed_by"] == "operator"
    assert item["period_start"].endswith("T00:00:00Z")
    assert item["period_end"] > item["period_start"]


def test_operator_budgets_and_quotas_are_read_only_to_the_tenant(
    owner_client, owner_tenant
) -> None:
    budget = Budget.objects.create(tenant=owner_tenant, period="month", limit_amount=Decimal(5))
    quota = Quota.objects.create(tenant=owner_tenant, requests_per_minute=10)
    assert owner_client.get(f"/api/v1/budgets/{budget.pk}").status_code == 200
    assert_error(
        owner_client.patch(f"/api/v1/budgets/{budget.pk}", {"limit": "1000"}, format="json"),
        403,
        "permission_denied",
    )
    assert_error(owner_client.delete(f"/api/v1/budgets/{budget.pk}"), 403, "permission_denied")
    assert_error(
        owner_client.patch(f"/api/v1/quotas/{quota.pk}", {"requests_per_minute": 1}, format="json"),
        403,
        "permission_denied",
    )
    assert_error(owner_client.delete(f"/api/v1/quotas/{quota.pk}"), 403, "permission_denied")
    budget.refresh_from_db()
    quota.refresh_from_db()
    assert (budget.limit_amount, quota.requests_per_minute) == (Decimal(5), 10)


def test_quota_lifecycle(owner_client, owner_tenant) -> None:
    created = owner_client.post(
        "/api/v1/quotas",
        {"end_user": "kid-1", "requests_per_minute": 5, "max_concurrent": 1, "model": LLAMA3},
        format="json",
    )
    assert created.status_code == 201, created.content
    quota = Quota.objects.get(pk=created.json()["id"])
    assert quota.managed_by == ManagedBy.TENANT
    assert quota.end_user.external_id == "kid-1"
    assert created.json()["model"] == LLAMA3
    patched = owner_client.patch(
        f"/api/v1/quotas/{quota.pk}", {"max_concurrent": None}, format="json"
    )
    assert patched.json()["max_concurrent"] is None
    assert owner_client.delete(f"/api/v1/quotas/{quota.pk}").status_code == 204


@pytest.mark.parametrize(
    ("url", "payload", "field"),
    [
        ("/api/v1/budgets", {"period": "year", "limit": "1"}, "period"),
        ("/api/v1/budgets", {"period": "day", "limit": "-1"}, "limit"),
        ("/api/v1/budgets", {"period": "day", "limit": "abc"}, "limit"),
        ("/api/v1/budgets", {"period": "day", "limit": "0.00000000001"}, "limit"),
        ("/api/v1/budgets", {"period": "day", "limit": "1", "soft_threshold_percent": 0},
         "soft_threshold_percent"),
        ("/api/v1/budgets", {"period": "day", "limit": "1", "model": "meta.nope"}, "model"),
        ("/api/v1/budgets", {"period": "day", "limit": "1", "end_user": "a",
                             "per_end_user": True}, "per_end_user"),
        ("/api/v1/quotas", {"requests_per_minute": 0}, "requests_per_minute"),
        ("/api/v1/quotas", {"max_concurrent": "many"}, "max_concurrent"),
    ],
)  # fmt: skip
def test_bad_limits_are_refused_and_nothing_is_created(
    owner_client, url: str, payload: dict, field: str
) -> None:
    error = assert_error(owner_client.post(url, payload, format="json"), 400, "validation_error")
    assert field in error["details"]
    assert not Budget.objects.exists()
    assert not Quota.objects.exists()


def test_usage_totals_and_groups_are_exact_decimals(owner_client, owner_tenant) -> None:
    answered_turn(owner_tenant, end_user="ann", output_tokens=100)
    answered_turn(owner_tenant, end_user="ann", output_tokens=300)
    answered_turn(owner_tenant, end_user="bob", output_tokens=50)
    records = list(UsageRecord.objects.filter(tenant=owner_tenant))
    expected_cost = sum((record.cost for record in records), Decimal(0))

    body = owner_client.get("/api/v1/usage").json()
    assert body["totals"]["requests"] == 3
    assert body["totals"]["output_tokens"] == 450
    assert Decimal(body["totals"]["cost"]) == expected_cost
    assert body["currency"] == "USD"

    by_user = owner_client.get("/api/v1/usage?group_by=end_user").json()["groups"]
    assert [(group["key"], group["requests"]) for group in by_user] == [("ann", 2), ("bob", 1)]
    by_day = owner_client.get("/api/v1/usage?group_by=day").json()["groups"]
    assert len(by_day) == 1
    assert Decimal(by_day[0]["cost"]) == expected_cost
    by_model = owner_client.get("/api/v1/usage?group_by=model").json()["groups"]
    assert by_model[0]["key"] == LLAMA3
    by_conversation = owner_client.get("/api/v1/usage?group_by=conversation").json()["groups"]
    assert len(by_conversation) == 3


def test_usage_time_range_and_bad_queries(owner_client, owner_tenant) -> None:
    answered_turn(owner_tenant)
    empty = owner_client.get("/api/v1/usage?start=2020-01-01T00:00:00Z&end=2020-02-01T00:00:00Z")
    totals = empty.json()["totals"]
    assert (totals["requests"], totals["input_tokens"], totals["output_tokens"]) == (0, 0, 0)
    assert Decimal(totals["cost"]) == 0
    assert_error(owner_client.get("/api/v1/usage?group_by=planet"), 400, "validation_error")
    assert_error(owner_client.get("/api/v1/usage?start=yesterday"), 400, "validation_error")
    assert_error(
        owner_client.get("/api/v1/usage?start=2024-02-01T00:00:00Z&end=2024-01-01T00:00:00Z"),
        400,
        "validation_error",
    )


def test_ledger_records_and_message_usage(owner_client, owner_tenant) -> None:
    conversation, turn, settlement = answered_turn(owner_tenant, output_tokens=456)
    records = owner_client.get("/api/v1/usage/records").json()["results"]
    assert len(records) == 1
    record = records[0]
    assert record["message"] == str(turn.answer.pk)
    assert record["output_tokens"] == 456
    assert record["input_price_per_million"] == "0.2200000000"
    assert Decimal(record["cost"]) == settlement.record.cost
    # 0.22 USD per 1M tokens, exactly: (input + 456) * 0.22 / 1,000,000
    expected = (Decimal(turn.context.prompt_token_count + 456) * Decimal("0.22")) / 1_000_000
    assert Decimal(record["cost"]) == expected.quantize(Decimal("1E-10"))
    answer = owner_client.get(f"/api/v1/messages/{turn.answer.pk}").json()
    assert answer["usage"]["output_tokens"] == 456
    assert Decimal(answer["usage"]["cost"]) == settlement.record.cost
    history = owner_client.get(f"/api/v1/conversations/{conversation.pk}/messages").json()
    assert history["results"][0]["usage"] is None  # the user's turn costs nothing itself
    assert history["results"][1]["usage"]["cost"] == answer["usage"]["cost"]


def test_alerts_are_listed(owner_client, owner_tenant) -> None:
    Budget.objects.create(
        tenant=owner_tenant,
        period="month",
        limit_amount=Decimal("0.00001"),
        is_hard=False,
        soft_threshold_percent=50,
    )
    answered_turn(owner_tenant)
    alerts = owner_client.get("/api/v1/alerts").json()["results"]
    assert {alert["kind"] for alert in alerts} == {"soft_threshold", "limit_reached"}
    assert Alert.objects.count() == 2


def test_other_tenants_see_404_and_nothing_of_it(owner_client, other_client, owner_tenant) -> None:
    budget = Budget.objects.create(
        tenant=owner_tenant, period="month", limit_amount=1, managed_by="tenant"
    )
    quota = Quota.objects.create(tenant=owner_tenant, requests_per_minute=3, managed_by="tenant")
    answered_turn(owner_tenant)
    for method, url in [
        ("get", f"/api/v1/budgets/{budget.pk}"),
        ("patch", f"/api/v1/budgets/{budget.pk}"),
        ("delete", f"/api/v1/budgets/{budget.pk}"),
        ("get", f"/api/v1/quotas/{quota.pk}"),
        ("patch", f"/api/v1/quotas/{quota.pk}"),
        ("delete", f"/api/v1/quotas/{quota.pk}"),
        ("get", f"/api/v1/budgets/{uuid.uuid4()}"),
    ]:
        assert_error(getattr(other_client, method)(url, {}, format="json"), 404, "not_found")
    for url in ["/api/v1/budgets", "/api/v1/quotas", "/api/v1/usage/records", "/api/v1/alerts"]:
        assert other_client.get(url).json()["results"] == []
    assert other_client.get("/api/v1/usage").json()["totals"]["requests"] == 0
    assert Budget.objects.filter(pk=budget.pk).exists()


def test_no_key_gets_401(anonymous_client) -> None:
    for method, url in [
        ("get", "/api/v1/budgets"),
        ("post", "/api/v1/budgets"),
        ("get", "/api/v1/quotas"),
        ("post", "/api/v1/quotas"),
        ("get", "/api/v1/usage"),
        ("get", "/api/v1/usage/records"),
        ("get", "/api/v1/alerts"),
        ("get", f"/api/v1/budgets/{uuid.uuid4()}"),
    ]:
        assert_error(getattr(anonymous_client, method)(url), 401, "not_authenticated")


def test_over_budget_turn_is_402_and_stores_nothing(owner_client, owner_tenant) -> None:
    from conversations.models import Message

    Budget.objects.create(tenant=owner_tenant, period="month", limit_amount=Decimal("0.0001"))
    conversation = owner_client.post("/api/v1/conversations", {"model": LLAMA3}, format="json")
    response = owner_client.post(
        f"/api/v1/conversations/{conversation.json()['id']}/messages",
        {"content": "Hi"},
        format="json",
    )
    error = assert_error(response, 402, "budget_exceeded")
    assert error["details"]["limit"] == "0.0001000000"
    assert "period_end" in error["details"]
    assert not Message.objects.exists()


def test_over_quota_turn_is_429_with_retry_after(owner_client, owner_tenant) -> None:
    # Both requests fall in one fixed minute window: the `clock` fixture stands still.
    Quota.objects.create(tenant=owner_tenant, requests_per_minute=1)
    first = owner_client.post("/api/v1/conversations", {"model": LLAMA3}, format="json").json()
    second = owner_client.post("/api/v1/conversations", {"model": LLAMA3}, format="json").json()
    url = "/api/v1/conversations/{}/messages"
    accepted = owner_client.post(url.format(first["id"]), {"content": "a"}, format="json")
    assert accepted.status_code == 202
    response = owner_client.post(url.format(second["id"]), {"content": "b"}, format="json")
    assert_error(response, 429, "quota_exceeded")
    assert 1 <= int(response["Retry-After"]) <= 60
