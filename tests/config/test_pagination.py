"""Cursors are the client's to hand back, and so to tamper with: a bad one is a 400 naming
`cursor`, on every paginated list, never a 404 or a 500 (config/pagination.py)."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

import pytest

from conversations.models import MessageRole
from conversations.services.conversations import conversation_create
from tests.factories import stored_message
from tests.support.api import assert_error

MODEL_ID = "meta.llama3-1-8b-instruct-v1:0"


def encoded(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


BAD_CURSORS = [
    "garbage",
    "%C3%A9",  # not ASCII
    encoded("p=abc"),
    encoded("p=2024-13-45"),
    encoded("p=1e999"),
    encoded("p=99999999999999999999999"),
    encoded("p=-5"),
    encoded("p=%00"),
    encoded("p="),
    encoded("p=0001-01-01T00:00:00%2B10:00"),
    encoded("p=9999-12-31T23:59:59-10:00"),
    encoded("o=x"),
    encoded("r=maybe"),
]


@pytest.fixture
def conversation(owner_tenant):
    conversation = conversation_create(tenant=owner_tenant, model_id=MODEL_ID)
    for number in range(3):
        stored_message(conversation, MessageRole.USER, f"question {number}")
    return conversation


def paginated_urls(conversation) -> list[str]:
    return [
        f"/api/v1/conversations/{conversation.pk}/messages",
        "/api/v1/conversations",
        "/api/v1/api-keys",
        "/api/v1/budgets",
        "/api/v1/quotas",
        "/api/v1/usage/records",
        "/api/v1/alerts",
    ]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_a_bad_cursor_is_a_validation_error_naming_the_parameter(
    owner_client, conversation, cursor
) -> None:
    for url in paginated_urls(conversation):
        response = owner_client.get(f"{url}?cursor={cursor}")
        error = assert_error(response, 400, "validation_error")
        assert set(error["details"]) == {"cursor"}, (url, error)


def test_a_bad_cursor_on_another_tenants_conversation_is_still_404(
    other_client, conversation
) -> None:
    url = f"/api/v1/conversations/{conversation.pk}/messages?cursor=garbage"
    assert_error(other_client.get(url), 404, "not_found")


def test_a_bad_cursor_without_a_key_is_401(anonymous_client, conversation) -> None:
    url = f"/api/v1/conversations/{conversation.pk}/messages?cursor=garbage"
    assert_error(anonymous_client.get(url), 401, "not_authenticated")


def cursor_of(link: str) -> str:
    return parse_qs(urlsplit(link).query)["cursor"][0]


def test_the_cursors_the_api_hands_out_still_work(owner_client, conversation) -> None:
    url = f"/api/v1/conversations/{conversation.pk}/messages"
    first = owner_client.get(f"{url}?page_size=2").json()
    second = owner_client.get(f"{url}?page_size=2&cursor={cursor_of(first['next'])}").json()
    assert [m["sequence"] for m in first["results"] + second["results"]] == [1, 2, 3]
    back = owner_client.get(f"{url}?page_size=2&cursor={cursor_of(second['previous'])}").json()
    assert back["results"] == first["results"]

    for slug in ("b", "c"):
        conversation_create(tenant=conversation.tenant, model_id=MODEL_ID, title=slug)
    newest = owner_client.get("/api/v1/conversations?page_size=2").json()
    older = owner_client.get(
        f"/api/v1/conversations?page_size=2&cursor={cursor_of(newest['next'])}"
    ).json()
    assert [c["title"] for c in newest["results"] + older["results"]] == ["c", "b", ""]


@pytest.mark.parametrize(
    "position",
    ["2024-01-01T00:00:00+00:00", "2024-01-01 00:00:00+00:00", "2024-01-01T02:00:00+02:00"],
)
def test_a_hand_made_date_position_in_any_iso_spelling_is_taken(
    owner_client, conversation, position
) -> None:
    cursor = encoded(f"p={position.replace('+', '%2B')}")
    response = owner_client.get(f"/api/v1/conversations?cursor={cursor}")
    assert response.status_code == 200, response.content
    assert response.json()["results"] == []  # created long after
