"""Hostile input: another tenant's ids, in paths, bodies and queries, are 404 (or a new
object of mine) and change nothing."""

from __future__ import annotations

from typing import Any

import pytest

from billing.limits import budget_create, quota_create
from billing.models import Budget, ManagedBy
from conversations.models import Conversation, EndUser, Message, MessageRole
from conversations.services import api_key_create
from conversations.services.conversations import conversation_create, user_message_create
from tests.factories import stored_message
from tests.support.api import assert_error

MODEL_ID = "meta.llama3-1-8b-instruct-v1:0"
CONVERSATIONS = "/api/v1/conversations"


@pytest.fixture
def others(other_tenant) -> dict[str, Any]:
    """Bob's objects, one of each kind."""
    conversation = conversation_create(
        tenant=other_tenant, model_id=MODEL_ID, end_user_external_id="bob-user", title="bob's"
    )
    question = stored_message(conversation, MessageRole.USER, "Bob's secret question")
    answer = stored_message(conversation, MessageRole.ASSISTANT, "Bob's secret answer")
    busy = conversation_create(tenant=other_tenant, model_id=MODEL_ID)
    queued = user_message_create(conversation=busy, content="Bob waits").answer
    return {
        "conversation": conversation,
        "question": question,
        "answer": answer,
        "queued": queued,
        "key": api_key_create(tenant=other_tenant, name="bob's key").api_key,
        "budget": budget_create(
            tenant=other_tenant, period="day", limit=1, managed_by=ManagedBy.TENANT
        ),
        "quota": quota_create(tenant=other_tenant, managed_by=ManagedBy.TENANT, max_concurrent=3),
    }


def other_tenant_requests(others: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    conversation = f"{CONVERSATIONS}/{others['conversation'].pk}"
    return [
        ("get", conversation, {}),
        ("patch", conversation, {"title": "mine now"}),
        ("delete", conversation, {}),
        ("get", f"{conversation}/messages", {}),
        ("post", f"{conversation}/messages", {"content": "hello"}),
        ("get", f"{conversation}/context", {}),
        ("get", f"/api/v1/messages/{others['answer'].pk}", {}),
        ("get", f"/api/v1/messages/{others['question'].pk}", {}),
        ("post", f"/api/v1/messages/{others['queued'].pk}/cancel", {}),
        ("get", f"/api/v1/messages/{others['answer'].pk}/stream", {}),
        ("get", f"/api/v1/api-keys/{others['key'].pk}", {}),
        ("post", f"/api/v1/api-keys/{others['key'].pk}/revoke", {}),
        ("get", f"/api/v1/budgets/{others['budget'].pk}", {}),
        ("patch", f"/api/v1/budgets/{others['budget'].pk}", {"limit": "1000"}),
        ("delete", f"/api/v1/budgets/{others['budget'].pk}", {}),
        ("get", f"/api/v1/quotas/{others['quota'].pk}", {}),
        ("patch", f"/api/v1/quotas/{others['quota'].pk}", {"max_concurrent": 1000}),
        ("delete", f"/api/v1/quotas/{others['quota'].pk}", {}),
    ]


def snapshot(others: dict[str, Any]) -> list[Any]:
    for item in others.values():
        item.refresh_from_db()
    return [
        others["conversation"].title,
        Message.objects.filter(conversation=others["conversation"]).count(),
        others["queued"].status,
        others["key"].revoked_at,
        others["budget"].limit_amount,
        others["quota"].max_concurrent,
    ]


def test_another_tenants_ids_are_404_everywhere_and_change_nothing(owner_client, others) -> None:
    before = snapshot(others)
    for method, url, body in other_tenant_requests(others):
        response = getattr(owner_client, method)(url, body, format="json")
        assert_error(response, 404, "not_found")
        assert b"bob" not in response.content.lower(), url
    assert snapshot(others) == before


def test_another_tenants_end_user_id_in_a_body_is_a_new_end_user_of_mine(
    owner_client, owner_tenant, others
) -> None:
    bobs_end_user = others["conversation"].end_user
    response = owner_client.post(
        CONVERSATIONS, {"model": MODEL_ID, "end_user": bobs_end_user.external_id}, format="json"
    )
    assert response.status_code == 201
    mine = Conversation.objects.get(pk=response.json()["id"])
    assert mine.end_user != bobs_end_user
    assert mine.end_user.tenant == owner_tenant
    budget = owner_client.post(
        "/api/v1/budgets",
        {"period": "day", "limit": "1", "end_user": bobs_end_user.external_id},
        format="json",
    )
    assert budget.status_code == 201
    assert Budget.objects.get(pk=budget.json()["id"]).end_user.tenant == owner_tenant
    assert EndUser.objects.filter(external_id=bobs_end_user.external_id).count() == 2


def test_another_tenants_end_user_in_a_query_finds_nothing(owner_client, others) -> None:
    external_id = others["conversation"].end_user.external_id
    response = owner_client.get(f"{CONVERSATIONS}?end_user={external_id}")
    assert response.status_code == 200
    assert response.json()["results"] == []
    usage = owner_client.get("/api/v1/usage?group_by=end_user")
    assert usage.status_code == 200
    assert external_id not in usage.content.decode()


@pytest.mark.parametrize(
    "url",
    [
        CONVERSATIONS,
        "/api/v1/api-keys",
        "/api/v1/budgets",
        "/api/v1/quotas",
        "/api/v1/usage/records",
        "/api/v1/alerts",
    ],
)
def test_lists_hold_only_my_objects(owner_client, others, url) -> None:
    response = owner_client.get(url)
    assert response.status_code == 200
    listed = {item["id"] for item in response.json()["results"]}
    theirs = {str(item.pk) for item in others.values()}
    assert not listed & theirs
