"""Hostile input: what the API refuses, how, and that refusing it changes nothing.

Unknown fields in a JSON body are ignored, everywhere, as DRF does (a newer client may send
fields an older server does not know); they never reach a model, so they cannot set what
the API does not let a client set (the tenant, an id, who manages a budget). Numbers sent
for string fields are taken as their text, and numeric strings for number fields as numbers
(DRF's coercion); everything else of the wrong type is a 400 `validation_error` naming the
field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings as django_settings
from rest_framework.test import APIClient

from billing.models import Budget, ManagedBy, Quota
from conversations.models import ApiKey, Conversation, Message, MessageRole
from conversations.services.conversations import conversation_create
from tests.factories import stored_message
from tests.support.api import assert_error

MODEL_ID = "meta.llama3-1-8b-instruct-v1:0"  # 128K window: the longest message fits
CONVERSATIONS = "/api/v1/conversations"


def post_json(client: APIClient, url: str, body: str | bytes, **extra: Any):
    return client.generic("POST", url, body, content_type="application/json", **extra)


@pytest.fixture
def conversation(owner_tenant) -> Conversation:
    return conversation_create(tenant=owner_tenant, model_id=MODEL_ID, end_user_external_id="amy")


@pytest.fixture
def messages_url(conversation) -> str:
    return f"{CONVERSATIONS}/{conversation.pk}/messages"


# --- Size -------------------------------------------------------------------------------------


def test_content_over_the_limit_is_a_validation_error(owner_client, messages_url) -> None:
    content = "a" * (django_settings.MESSAGE_MAX_CHARACTERS + 1)
    response = owner_client.post(messages_url, {"content": content}, format="json")
    assert "content" in assert_error(response, 400, "validation_error")["details"]
    assert not Message.objects.exists()


def test_content_exactly_at_the_limit_is_accepted(owner_client, messages_url) -> None:
    content = ("llama " * (django_settings.MESSAGE_MAX_CHARACTERS // 6 + 1))[
        : django_settings.MESSAGE_MAX_CHARACTERS
    ]
    assert len(content) == django_settings.MESSAGE_MAX_CHARACTERS
    response = owner_client.post(messages_url, {"content": content}, format="json")
    # The 128K model takes this text with room to spare; a smaller window would answer
    # context_overflow, never a validation error.
    assert response.status_code == 202, response.content
    assert Message.objects.get(role=MessageRole.USER).content == content


def test_system_prompt_over_the_limit_is_a_validation_error(owner_client) -> None:
    body = {"model": MODEL_ID, "system_prompt": "x" * (django_settings.MESSAGE_MAX_CHARACTERS + 1)}
    response = owner_client.post(CONVERSATIONS, body, format="json")
    assert "system_prompt" in assert_error(response, 400, "validation_error")["details"]


def test_a_body_over_the_size_limit_is_413_before_it_is_read(owner_client) -> None:
    body = json.dumps(
        {"model": MODEL_ID, "title": "x" * django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE}
    )
    response = post_json(owner_client, CONVERSATIONS, body)
    assert_error(response, 413, "request_too_large")
    assert not Conversation.objects.exists()


def test_the_size_limit_is_a_setting(owner_client, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"model": MODEL_ID, "metadata": {"note": "x" * 1000}})
    assert_error(post_json(owner_client, CONVERSATIONS, body), 413, "request_too_large")
    small = json.dumps({"model": MODEL_ID})
    assert post_json(owner_client, CONVERSATIONS, small).status_code == 201


def test_the_longest_message_fits_under_the_size_limit_even_fully_escaped() -> None:
    # Every character written as a \\uXXXX surrogate pair: the worst a JSON encoder does.
    body = json.dumps({"content": "\U0001f999" * django_settings.MESSAGE_MAX_CHARACTERS})
    assert len(body.encode()) < django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE


# --- Structure ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opening", "closing"), [("[", "]"), ('{"a":', "}")], ids=["arrays", "objects"]
)
def test_deeply_nested_metadata_is_a_400_not_a_500(owner_client, opening, closing) -> None:
    for depth in (100, 950, 10_000):  # under, at and far past Python's recursion limit
        body = (
            f'{{"model": "{MODEL_ID}", "metadata": {{"a": {opening * depth}1{closing * depth}}}}}'
        )
        response = post_json(owner_client, CONVERSATIONS, body)
        assert response.status_code == 400, (depth, response.content)
        assert response.json()["error"]["code"] in ("validation_error", "malformed_request")
    assert not Conversation.objects.exists()


def test_deeply_nested_body_is_malformed(owner_client, messages_url) -> None:
    body = "[" * 10_000 + "]" * 10_000
    assert_error(post_json(owner_client, messages_url, body), 400, "malformed_request")


def test_metadata_nested_a_little_is_fine(owner_client) -> None:
    metadata: dict[str, Any] = {"leaf": True}
    for _ in range(10):
        metadata = {"next": metadata}
    response = owner_client.post(CONVERSATIONS, {"model": MODEL_ID, "metadata": metadata}, "json")
    assert response.status_code == 201, response.content
    assert response.json()["metadata"] == metadata


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "\xff\xfe"}',
        b'{"\xc3\x28": 1, "model": "meta.llama3-1-8b-instruct-v1:0"}',
        b'{"model": "meta.llama3-1-8b-instruct-v1:0", "title": "\xed\xa0\x80"}',
    ],
    ids=["value", "key", "encoded-surrogate"],
)
def test_invalid_utf8_is_malformed(owner_client, body) -> None:
    assert_error(post_json(owner_client, CONVERSATIONS, body), 400, "malformed_request")
    assert not Conversation.objects.exists()


@pytest.mark.parametrize("body", ["[]", '"text"', "1", "null", "true"])
def test_a_body_that_is_not_an_object_is_refused(owner_client, body) -> None:
    response = post_json(owner_client, CONVERSATIONS, body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] in ("validation_error", "malformed_request")


# --- NUL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"title": "a\x00b"},
        {"system_prompt": "\x00"},
        {"end_user": "amy\x00"},
        {"metadata": {"ke\x00y": "value"}},
        {"metadata": {"key": "val\x00ue"}},
        {"metadata": {"key": ["\x00"]}},
    ],
    ids=["title", "system_prompt", "end_user", "metadata-key", "metadata-value", "nested"],
)
def test_nul_in_a_conversation_is_refused(owner_client, fields) -> None:
    response = owner_client.post(CONVERSATIONS, {"model": MODEL_ID, **fields}, format="json")
    assert set(fields) <= set(assert_error(response, 400, "validation_error")["details"])
    assert not Conversation.objects.exists()


def test_nul_in_a_message_is_refused(owner_client, messages_url) -> None:
    response = owner_client.post(messages_url, {"content": "hi\x00there"}, format="json")
    assert "content" in assert_error(response, 400, "validation_error")["details"]
    assert not Message.objects.exists()


def test_nul_in_an_update_is_refused(owner_client, conversation) -> None:
    url = f"{CONVERSATIONS}/{conversation.pk}"
    response = owner_client.patch(url, {"title": "\x00"}, format="json")
    assert_error(response, 400, "validation_error")
    conversation.refresh_from_db()
    assert conversation.title == ""


@pytest.mark.parametrize(
    "query",
    ["end_user=amy%00", "archived=%00", "cursor=%00", "x%00=1", "page_size=1%00"],
)
def test_nul_in_a_query_string_is_refused(owner_client, query) -> None:
    assert_error(owner_client.get(f"{CONVERSATIONS}?{query}"), 400, "malformed_request")


def test_too_many_query_fields_are_refused_as_json(owner_client) -> None:
    query = "&".join(["a=1"] * (django_settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1))
    assert_error(owner_client.get(f"{CONVERSATIONS}?{query}"), 400, "bad_request")


# --- Unknown fields ------------------------------------------------------------------------------


def test_unknown_fields_are_ignored_and_cannot_set_what_the_api_does_not(
    owner_client, owner_tenant, other_tenant
) -> None:
    body = {
        "model": MODEL_ID,
        "id": "00000000-0000-0000-0000-000000000001",
        "tenant": other_tenant.slug,
        "tenant_id": other_tenant.pk,
        "is_archived": True,
        "created_at": "2000-01-01T00:00:00Z",
        "x-unknown": {"deep": [1, 2]},
    }
    response = owner_client.post(CONVERSATIONS, body, format="json")
    assert response.status_code == 201, response.content
    conversation = Conversation.objects.get()
    assert conversation.tenant == owner_tenant
    assert str(conversation.pk) != body["id"]
    assert not conversation.is_archived
    assert conversation.created_at.year > 2000


def test_a_tenant_cannot_make_its_budget_or_quota_the_operators(owner_client, owner_tenant) -> None:
    budget = owner_client.post(
        "/api/v1/budgets",
        {"period": "day", "limit": "5", "managed_by": "operator", "tenant": "bob"},
        format="json",
    )
    quota = owner_client.post(
        "/api/v1/quotas", {"max_concurrent": 2, "managed_by": "operator"}, format="json"
    )
    assert (budget.status_code, quota.status_code) == (201, 201)
    assert Budget.objects.get().managed_by == ManagedBy.TENANT
    assert Quota.objects.get().managed_by == ManagedBy.TENANT
    patched = owner_client.patch(
        f"/api/v1/budgets/{budget.json()['id']}", {"managed_by": "operator"}, format="json"
    )
    assert patched.status_code == 200
    assert Budget.objects.get().managed_by == ManagedBy.TENANT
    assert Budget.objects.get().tenant == owner_tenant


def test_unknown_fields_are_ignored_when_creating_keys(owner_client, owner_tenant) -> None:
    response = owner_client.post(
        "/api/v1/api-keys", {"name": "ci", "tenant": "bob", "prefix": "lk_000000000000"}, "json"
    )
    assert response.status_code == 201
    created = ApiKey.objects.get(pk=response.json()["id"])
    assert created.tenant == owner_tenant
    assert created.prefix != "lk_000000000000"


# --- Wrong types ---------------------------------------------------------------------------------

WRONG_TYPES: list[tuple[str, str, dict[str, Any], str, list[Any]]] = [
    # (name, method, base body, field, values that are not of the field's type)
    ("conversation", "post", {"model": MODEL_ID}, "model", [[], {}, True, None]),
    ("conversation", "post", {"model": MODEL_ID}, "title", [[], {}, True]),
    ("conversation", "post", {"model": MODEL_ID}, "system_prompt", [["a"], {"a": 1}, False]),
    ("conversation", "post", {"model": MODEL_ID}, "end_user", [[], {}, True]),
    ("conversation", "post", {"model": MODEL_ID}, "temperature", ["abc", [], {}, True, "1e3"]),
    ("conversation", "post", {"model": MODEL_ID}, "top_p", ["abc", [0.5], {}, False]),
    ("conversation", "post", {"model": MODEL_ID}, "max_gen_len", ["abc", 1.5, [], True, "1e3"]),
    ("conversation", "post", {"model": MODEL_ID}, "metadata", [[], "text", 1, True]),
    ("update", "patch", {}, "is_archived", ["maybe", [], {}, 2]),
    ("update", "patch", {}, "metadata", [["a"], "text"]),
    ("message", "post", {"content": "hi"}, "content", [[], {}, True, None]),
    ("message", "post", {"content": "hi"}, "mode", ["fast", 1, [], None]),
    ("message", "post", {"content": "hi"}, "max_gen_len", ["many", 2.5, {}]),
    ("api-key", "post", {}, "name", [[], {}, True]),
    ("budget", "post", {"period": "day", "limit": "1"}, "period", ["year", 1, []]),
    ("budget", "post", {"period": "day", "limit": "1"}, "limit", ["abc", [], True, "-1"]),
    ("budget", "post", {"period": "day", "limit": "1"}, "soft_threshold_percent", ["x", 101, 0]),
    ("budget", "post", {"period": "day", "limit": "1"}, "is_hard", ["maybe", []]),
    ("quota", "post", {}, "requests_per_minute", ["abc", 0, -1, 1.5, [], True]),
    ("quota", "post", {}, "per_end_user", ["maybe", {}]),
]


@pytest.fixture
def url_for(conversation) -> Callable[[str], str]:
    urls = {
        "conversation": CONVERSATIONS,
        "update": f"{CONVERSATIONS}/{conversation.pk}",
        "message": f"{CONVERSATIONS}/{conversation.pk}/messages",
        "api-key": "/api/v1/api-keys",
        "budget": "/api/v1/budgets",
        "quota": "/api/v1/quotas",
    }
    return urls.__getitem__


@pytest.mark.parametrize(
    ("name", "method", "body", "field", "values"),
    WRONG_TYPES,
    ids=[f"{name}-{field}" for name, _, _, field, _ in WRONG_TYPES],
)
def test_wrong_types_are_validation_errors_naming_the_field(
    owner_client, url_for, name, method, body, field, values
) -> None:
    for value in values:
        response = getattr(owner_client, method)(url_for(name), {**body, field: value}, "json")
        error = assert_error(response, 400, "validation_error")
        assert field in error["details"], (value, error)
    assert not Message.objects.exists()
    assert not Budget.objects.exists()
    assert not Quota.objects.exists()


@pytest.mark.parametrize(
    ("url", "query"),
    [
        (CONVERSATIONS, "archived=maybe"),
        ("/api/v1/usage", "start=yesterday"),
        ("/api/v1/usage", "group_by=tenant"),
        ("/api/v1/usage", "start=2024-02-01T00:00:00Z&end=2024-01-01T00:00:00Z"),
    ],
)
def test_wrong_query_parameters_are_validation_errors(owner_client, url, query) -> None:
    assert_error(owner_client.get(f"{url}?{query}"), 400, "validation_error")


@pytest.mark.parametrize("value", ["many", "1e3", "0", "-5", "99999999999999999999999"])
def test_wrong_max_gen_len_in_a_query_is_refused(owner_client, conversation, value) -> None:
    stored_message(conversation, MessageRole.USER, "hello")
    response = owner_client.get(f"{CONVERSATIONS}/{conversation.pk}/context?max_gen_len={value}")
    assert "max_gen_len" in assert_error(response, 400, "validation_error")["details"]


# --- Numbers at the edges -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("1e309", "validation_error"),  # json reads it as float("inf")
        ("-1e309", "validation_error"),
        ("NaN", "malformed_request"),  # not JSON at all
        ("Infinity", "malformed_request"),
        ("-Infinity", "malformed_request"),
        ('"NaN"', "validation_error"),
        ('"Infinity"', "validation_error"),
        ("1.5", "validation_error"),
        ("0.001", "validation_error"),
        ("-0.01", "validation_error"),
        ('"1e3"', "validation_error"),
    ],
)
def test_temperature_out_of_range_or_not_finite_is_refused(owner_client, raw, code) -> None:
    body = f'{{"model": "{MODEL_ID}", "temperature": {raw}}}'
    assert_error(post_json(owner_client, CONVERSATIONS, body), 400, code)
    assert not Conversation.objects.exists()


@pytest.mark.parametrize("raw", ["-0", '"-0"', "-0.0", "0e5", "1e-400"])
def test_negative_zero_and_underflow_are_a_plain_zero(owner_client, raw) -> None:
    body = f'{{"model": "{MODEL_ID}", "temperature": {raw}, "top_p": {raw}}}'
    response = post_json(owner_client, CONVERSATIONS, body)
    assert response.status_code == 201, response.content
    assert b'"temperature":0.0' in response.content  # not -0.0
    conversation = Conversation.objects.get()
    assert not conversation.temperature.is_signed()
    assert not conversation.top_p.is_signed()


@pytest.mark.parametrize("value", [10**30, 2**63, 2**31, 2049])
def test_huge_max_gen_len_is_refused_everywhere(owner_client, conversation, value) -> None:
    create = owner_client.post(CONVERSATIONS, {"model": MODEL_ID, "max_gen_len": value}, "json")
    assert "max_gen_len" in assert_error(create, 400, "validation_error")["details"]
    update = owner_client.patch(
        f"{CONVERSATIONS}/{conversation.pk}", {"max_gen_len": value}, "json"
    )
    assert "max_gen_len" in assert_error(update, 400, "validation_error")["details"]
    turn = owner_client.post(
        f"{CONVERSATIONS}/{conversation.pk}/messages",
        {"content": "hi", "max_gen_len": value},
        "json",
    )
    assert "max_gen_len" in assert_error(turn, 400, "validation_error")["details"]
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    "field", ["requests_per_minute", "tokens_per_minute", "tokens_per_day", "max_concurrent"]
)
def test_quota_limits_beyond_the_column_are_refused_not_a_500(owner_client, field) -> None:
    for value in (10**30, 2**63, 2**31):
        response = owner_client.post("/api/v1/quotas", {field: value}, format="json")
        assert field in assert_error(response, 400, "validation_error")["details"]
    largest = owner_client.post("/api/v1/quotas", {field: 2**31 - 1}, format="json")
    assert largest.status_code == 201, largest.content
    assert largest.json()[field] == 2**31 - 1


@pytest.mark.parametrize("limit", ["1e309", '"1e400"', '"99999999999"', "1e308"])
def test_huge_budget_limits_are_refused(owner_client, limit) -> None:
    body = f'{{"period": "day", "limit": {limit}}}'
    response = post_json(owner_client, "/api/v1/budgets", body)
    assert "limit" in assert_error(response, 400, "validation_error")["details"]
    assert not Budget.objects.exists()


def test_numbers_as_strings_are_taken_as_numbers(owner_client) -> None:
    body = {"model": MODEL_ID, "max_gen_len": "12", "temperature": "0.5"}
    response = owner_client.post(CONVERSATIONS, body, format="json")
    assert response.status_code == 201, response.content
    assert (response.json()["max_gen_len"], response.json()["temperature"]) == (12, 0.5)
