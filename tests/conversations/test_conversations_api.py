"""Conversations and messages over HTTP: owner, second tenant, and no key."""

from __future__ import annotations

import uuid

import pytest

from billing.models import Reservation, ReservationStatus
from conversations.models import Conversation, EndUser, Message
from models_catalog.models import FoundationModel
from tests.factories import stored_message, tiny_model
from tests.support.api import assert_error

LLAMA3 = "meta.llama3-8b-instruct-v1:0"


@pytest.fixture
def conversation(owner_client) -> dict:
    response = owner_client.post(
        "/api/v1/conversations",
        {"model": LLAMA3, "title": "Trip", "system_prompt": "Be brief.", "end_user": "u-1"},
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()


def send(client, conversation_id: str, content: str, **extra: object):
    return client.post(
        f"/api/v1/conversations/{conversation_id}/messages",
        {"content": content, **extra},
        format="json",
    )


# --- happy paths ---------------------------------------------------------------------------


def test_create_conversation_with_every_field(owner_client, owner_tenant) -> None:
    response = owner_client.post(
        "/api/v1/conversations",
        {
            "model": "us.meta.llama3-1-70b-instruct-v1:0",
            "title": "Support",
            "system_prompt": "You are a support agent.",
            "end_user": "customer-42",
            "temperature": 0.2,
            "top_p": "0.95",
            "max_gen_len": 1024,
            "metadata": {"channel": "web", "tags": ["a", "b"]},
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["model"] == "meta.llama3-1-70b-instruct-v1:0"
    assert body["end_user"] == "customer-42"
    assert (body["temperature"], body["top_p"], body["max_gen_len"]) == (0.2, 0.95, 1024)
    assert body["metadata"] == {"channel": "web", "tags": ["a", "b"]}
    assert EndUser.objects.get(tenant=owner_tenant, external_id="customer-42")


def test_list_filters_by_end_user_and_archived_newest_first(owner_client) -> None:
    ids = []
    for end_user in ("u-1", "u-2", "u-1"):
        created = owner_client.post(
            "/api/v1/conversations", {"model": LLAMA3, "end_user": end_user}, format="json"
        )
        ids.append(created.json()["id"])
    owner_client.patch(f"/api/v1/conversations/{ids[2]}", {"is_archived": True}, format="json")

    listed = owner_client.get("/api/v1/conversations").json()["results"]
    assert [item["id"] for item in listed] == ids[::-1]
    by_user = owner_client.get("/api/v1/conversations?end_user=u-1").json()["results"]
    assert [item["id"] for item in by_user] == [ids[2], ids[0]]
    active = owner_client.get("/api/v1/conversations?archived=false").json()["results"]
    assert [item["id"] for item in active] == [ids[1], ids[0]]
    archived = owner_client.get("/api/v1/conversations?archived=true").json()["results"]
    assert [item["id"] for item in archived] == [ids[2]]


def test_list_pages_with_cursors(owner_client) -> None:
    for _ in range(5):
        owner_client.post("/api/v1/conversations", {"model": LLAMA3}, format="json")
    first = owner_client.get("/api/v1/conversations?page_size=2").json()
    second = owner_client.get(first["next"]).json()
    third = owner_client.get(second["next"]).json()
    seen = [item["id"] for page in (first, second, third) for item in page["results"]]
    assert len(seen) == len(set(seen)) == 5
    assert third["next"] is None


def test_update_then_delete_removes_the_messages_too(owner_client, conversation) -> None:
    url = f"/api/v1/conversations/{conversation['id']}"
    patched = owner_client.patch(
        url, {"title": "New", "system_prompt": "Be verbose.", "max_gen_len": None}, format="json"
    )
    assert patched.status_code == 200
    assert patched.json()["title"] == "New"
    assert Conversation.objects.get(pk=conversation["id"]).system_prompt_token_count == 3
    answer = send(owner_client, conversation["id"], "Hello").json()["assistant_message"]
    assert owner_client.post(f"/api/v1/messages/{answer['id']}/cancel").status_code == 200
    assert owner_client.delete(url).status_code == 204
    assert not Message.objects.filter(conversation_id=conversation["id"]).exists()
    assert_error(owner_client.get(url), 404, "not_found")


def test_delete_is_refused_while_an_answer_is_in_flight_and_money_outlives_it(
    owner_client, conversation
) -> None:
    url = f"/api/v1/conversations/{conversation['id']}"
    answer = send(owner_client, conversation["id"], "Hello").json()["assistant_message"]

    refused = owner_client.delete(url)
    error = assert_error(refused, 409, "generation_in_progress")
    assert error["details"] == {"message_id": answer["id"]}
    assert Message.objects.filter(pk=answer["id"], status="queued").exists()  # nothing changed

    assert owner_client.post(f"/api/v1/messages/{answer['id']}/cancel").status_code == 200
    assert owner_client.delete(url).status_code == 204
    reservation = Reservation.objects.get(message_id=answer["id"])  # not cascaded away
    assert reservation.status == ReservationStatus.RELEASED
    assert reservation.conversation_id == uuid.UUID(conversation["id"])


def test_post_message_stores_the_turn_and_queues_the_answer(owner_client, conversation) -> None:
    response = send(owner_client, conversation["id"], "Hello, how are you?")
    assert response.status_code == 202, response.content
    body = response.json()
    user, answer = body["user_message"], body["assistant_message"]
    assert (user["role"], user["status"], user["sequence"]) == ("user", "completed", 1)
    assert user["token_count"] == 6  # Meta's tokenizer: Hello , how are you ?
    assert (answer["role"], answer["status"], answer["sequence"]) == ("assistant", "queued", 2)
    assert body["stream_url"] == f"/api/v1/messages/{answer['id']}/stream"
    # frame 5 + system (5 + 3) + user (5 + 6)
    assert body["context"]["prompt_token_count"] == 24
    assert body["context"]["kept_message_ids"] == [user["id"]]
    assert body["context"]["room_for_generation"] == 8192 - 24
    assert owner_client.get(f"/api/v1/messages/{user['id']}").json()["content"] == (
        "Hello, how are you?"
    )
    stored_answer = Message.objects.get(pk=answer["id"])
    assert (stored_answer.max_gen_len, str(stored_answer.temperature)) == (512, "0.50")


def test_a_new_turn_while_an_answer_is_pending_is_409(owner_client, conversation) -> None:
    assert send(owner_client, conversation["id"], "First").status_code == 202
    assert_error(send(owner_client, conversation["id"], "Second"), 409, "generation_in_progress")
    assert Message.objects.count() == 2


def test_turn_parameters_override_conversation_and_model_defaults(
    owner_client, conversation
) -> None:
    owner_client.patch(
        f"/api/v1/conversations/{conversation['id']}", {"temperature": 0.1}, format="json"
    )
    body = send(owner_client, conversation["id"], "Hi", top_p=0.5, max_gen_len=64).json()
    answer = Message.objects.get(pk=body["assistant_message"]["id"])
    assert (str(answer.temperature), str(answer.top_p), answer.max_gen_len) == ("0.10", "0.50", 64)


def test_history_pages_oldest_first(owner_client, conversation) -> None:
    record = Conversation.objects.get(pk=conversation["id"])
    for number in range(5):
        stored_message(record, "user" if number % 2 == 0 else "assistant", f"m{number}")
    url = f"/api/v1/conversations/{conversation['id']}/messages?page_size=2"
    first = owner_client.get(url).json()
    second = owner_client.get(first["next"]).json()
    third = owner_client.get(second["next"]).json()
    contents = [item["content"] for page in (first, second, third) for item in page["results"]]
    assert contents == ["m0", "m1", "m2", "m3", "m4"]


def test_context_endpoint_shows_the_prompt_and_what_was_kept_and_dropped(
    owner_client, owner_tenant
) -> None:
    model = tiny_model(context_window=120, cap=100)
    created = owner_client.post(
        "/api/v1/conversations", {"model": model.model_id, "system_prompt": "Hi."}, format="json"
    ).json()
    record = Conversation.objects.get(pk=created["id"])
    messages = [
        stored_message(record, role, f"{role} says something number {number}")
        for number in range(6)
        for role in ("user", "assistant")
    ]
    last = stored_message(record, "user", "And now?")
    response = owner_client.get(f"/api/v1/conversations/{created['id']}/context?max_gen_len=60")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["max_gen_len"] == 60
    assert body["prompt_token_count"] <= 60
    assert body["room_for_generation"] == 120 - body["prompt_token_count"]
    kept, dropped = body["kept_message_ids"], body["dropped_message_ids"]
    assert kept[-1] == str(last.id)
    all_ids = [str(message.id) for message in [*messages, last]]
    assert dropped + kept == all_ids  # oldest dropped, newest kept, nothing lost
    assert dropped
    assert body["prompt"].startswith("<|begin_of_text|><|start_header_id|>system")


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "model"),
        ({"model": "meta.llama9-nope"}, "model"),
        ({"model": LLAMA3, "temperature": 1.5}, "temperature"),
        ({"model": LLAMA3, "temperature": -0.1}, "temperature"),
        ({"model": LLAMA3, "top_p": "lots"}, "top_p"),
        ({"model": LLAMA3, "max_gen_len": 0}, "max_gen_len"),
        ({"model": LLAMA3, "max_gen_len": 2049}, "max_gen_len"),
        ({"model": LLAMA3, "metadata": [1, 2]}, "metadata"),
        ({"model": LLAMA3, "metadata": {"k": "x" * 20_000}}, "metadata"),
        ({"model": LLAMA3, "metadata": {"k": "nul\u0000"}}, "metadata"),
        ({"model": LLAMA3, "title": "t" * 201}, "title"),
        ({"model": LLAMA3, "system_prompt": "nul\u0000byte"}, "system_prompt"),
    ],
)
def test_create_conversation_rejects_bad_input(owner_client, payload: dict, field: str) -> None:
    error = assert_error(
        owner_client.post("/api/v1/conversations", payload, format="json"),
        400,
        "validation_error",
    )
    assert field in error["details"]
    assert not Conversation.objects.exists()


def test_create_conversation_rejects_an_inactive_model(owner_client) -> None:
    FoundationModel.objects.filter(model_id=LLAMA3).update(is_active=False)
    error = assert_error(
        owner_client.post("/api/v1/conversations", {"model": LLAMA3}, format="json"),
        400,
        "validation_error",
    )
    assert "model" in error["details"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "content"),
        ({"content": ""}, "content"),
        ({"content": "   \n\t"}, "content"),
        ({"content": "x" * 200_001}, "content"),
        ({"content": "nul\u0000"}, "content"),
        ({"content": 12}, None),
        ({"content": "hi", "max_gen_len": 4000}, "max_gen_len"),
        ({"content": "hi", "temperature": 2}, "temperature"),
        ({"content": "hi", "top_p": -1}, "top_p"),
    ],
)
def test_post_message_rejects_bad_input_and_stores_nothing(
    owner_client, conversation, payload: dict, field: str | None
) -> None:
    response = owner_client.post(
        f"/api/v1/conversations/{conversation['id']}/messages", payload, format="json"
    )
    if field is None:  # 12 is coerced to "12" by DRF's CharField: accepted, like a string
        assert response.status_code == 202
        return
    error = assert_error(response, 400, "validation_error")
    assert field in error["details"]
    assert not Message.objects.exists()


def test_post_message_rejects_a_lone_surrogate_escape(owner_client, conversation) -> None:
    # Valid JSON, but no database can store the string it decodes to.
    response = owner_client.post(
        f"/api/v1/conversations/{conversation['id']}/messages",
        data='{"content": "lone \\ud800 surrogate"}',
        content_type="application/json",
    )
    error = assert_error(response, 400, "validation_error")
    assert "content" in error["details"]
    assert not Message.objects.exists()


def test_post_message_over_the_window_is_context_overflow(owner_client) -> None:
    model = tiny_model(context_window=200, cap=50)
    created = owner_client.post(
        "/api/v1/conversations", {"model": model.model_id}, format="json"
    ).json()
    response = send(owner_client, created["id"], "word " * 500, max_gen_len=50)
    error = assert_error(response, 400, "context_overflow")
    assert error["details"]["context_window"] == 200
    assert error["details"]["available_for_prompt"] == 150
    assert not Message.objects.exists()


def test_post_message_to_a_conversation_whose_model_was_retired(owner_client, conversation) -> None:
    FoundationModel.objects.filter(model_id=LLAMA3).update(is_active=False)
    assert_error(send(owner_client, conversation["id"], "Hi"), 400, "model_inactive")
    assert not Message.objects.exists()


def test_malformed_json_and_wrong_content_type(owner_client, conversation) -> None:
    url = f"/api/v1/conversations/{conversation['id']}/messages"
    assert_error(
        owner_client.post(url, data="{nope", content_type="application/json"),
        400,
        "malformed_request",
    )
    assert_error(
        owner_client.post(url, data="content=hi", content_type="application/x-www-form-urlencoded"),
        415,
        "unsupported_media_type",
    )
    assert not Message.objects.exists()


def test_bad_query_parameters(owner_client, conversation) -> None:
    assert_error(owner_client.get("/api/v1/conversations?archived=maybe"), 400, "validation_error")
    assert_error(
        owner_client.get(f"/api/v1/conversations/{conversation['id']}/context?max_gen_len=x"),
        400,
        "validation_error",
    )
    assert_error(
        owner_client.get(f"/api/v1/conversations/{conversation['id']}/context?max_gen_len=9999"),
        400,
        "validation_error",
    )


# --- tenancy: a second tenant gets 404 everywhere, no key gets 401 ------------------------


def tenant_urls(conversation_id: str, message_id: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("get", f"/api/v1/conversations/{conversation_id}", None),
        ("patch", f"/api/v1/conversations/{conversation_id}", {"title": "stolen"}),
        ("delete", f"/api/v1/conversations/{conversation_id}", None),
        ("get", f"/api/v1/conversations/{conversation_id}/messages", None),
        ("post", f"/api/v1/conversations/{conversation_id}/messages", {"content": "hi"}),
        ("get", f"/api/v1/conversations/{conversation_id}/context", None),
        ("get", f"/api/v1/messages/{message_id}", None),
        ("post", f"/api/v1/messages/{message_id}/cancel", None),
    ]


def test_second_tenant_gets_404_for_every_object_and_changes_nothing(
    owner_client, other_client, conversation
) -> None:
    message = send(owner_client, conversation["id"], "private").json()["assistant_message"]
    for method, url, payload in tenant_urls(conversation["id"], message["id"]):
        response = getattr(other_client, method)(url, payload, format="json")
        assert_error(response, 404, "not_found")
    assert Conversation.objects.get(pk=conversation["id"]).title == "Trip"
    assert Message.objects.count() == 2
    assert other_client.get("/api/v1/conversations").json()["results"] == []


def test_unknown_ids_are_404(owner_client) -> None:
    for method, url, payload in tenant_urls(str(uuid.uuid4()), str(uuid.uuid4())):
        assert_error(getattr(owner_client, method)(url, payload, format="json"), 404, "not_found")


def test_no_key_gets_401_everywhere(anonymous_client, owner_client, conversation) -> None:
    message = send(owner_client, conversation["id"], "private").json()["assistant_message"]
    urls = [
        *tenant_urls(conversation["id"], message["id"]),
        ("get", "/api/v1/conversations", None),
        ("post", "/api/v1/conversations", {"model": LLAMA3}),
    ]
    for method, url, payload in urls:
        response = getattr(anonymous_client, method)(url, payload, format="json")
        assert_error(response, 401, "not_authenticated")
    assert Conversation.objects.count() == 1
    assert Message.objects.count() == 2


def test_end_users_are_separate_per_tenant(owner_client, other_client) -> None:
    owner_client.post("/api/v1/conversations", {"model": LLAMA3, "end_user": "same"}, format="json")
    other_client.post("/api/v1/conversations", {"model": LLAMA3, "end_user": "same"}, format="json")
    assert EndUser.objects.filter(external_id="same").count() == 2
    assert len(other_client.get("/api/v1/conversations?end_user=same").json()["results"]) == 1
