"""Concurrent duplicates: 50 real HTTP clients POST the same turn with one Idempotency-Key
at once (a threaded live server, each request on its own connection). One message, one
reservation, one enqueued answer, and 50 identical responses, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from billing.models import Reservation
from conversations.models import Conversation, Message, Tenant
from conversations.services import api_key_create
from conversations.services.conversations import conversation_create
from idempotency.models import IdempotencyRecord
from tests.factories import make_tenant
from tests.support.concurrency import CLIENTS, MODEL_ID, run_clients

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tenant(catalogue: None) -> Tenant:
    return make_tenant("idempotent")


def fifty_posts(live_server: Any, secret: str, path: str, body: dict) -> list[requests.Response]:
    sessions = []
    for _ in range(CLIENTS):
        session = requests.Session()
        session.headers.update(
            {"Authorization": f"Bearer {secret}", "Idempotency-Key": "one-key-for-all"}
        )
        # Connect one at a time (the test server's listen backlog is small).
        session.get(f"{live_server.url}/healthz", timeout=30).raise_for_status()
        sessions.append(session)
    try:
        outcomes = run_clients(
            [
                (lambda s=session: s.post(f"{live_server.url}{path}", json=body, timeout=60))
                for session in sessions
            ],
            connect=False,
        )
    finally:
        for session in sessions:
            session.close()
    assert [outcome.error for outcome in outcomes] == [None] * CLIENTS
    return [outcome.value for outcome in outcomes]


def test_fifty_identical_turns_with_one_key_make_one_turn(
    live_server: Any, tenant: Tenant, enqueued: list[Any]
) -> None:
    conversation = conversation_create(tenant=tenant, model_id=MODEL_ID)
    secret = api_key_create(tenant=tenant).secret
    responses = fifty_posts(
        live_server,
        secret,
        f"/api/v1/conversations/{conversation.pk}/messages",
        {"content": "Fifty at once?", "max_gen_len": 100},
    )
    assert {response.status_code for response in responses} == {202}
    assert len({response.content for response in responses}) == 1
    assert Message.objects.count() == 2
    assert Reservation.objects.count() == 1
    assert len(enqueued) == 1
    assert IdempotencyRecord.objects.count() == 1


def test_fifty_identical_creates_with_one_key_make_one_conversation(
    live_server: Any, tenant: Tenant
) -> None:
    secret = api_key_create(tenant=tenant).secret
    responses = fifty_posts(live_server, secret, "/api/v1/conversations", {"model": MODEL_ID})
    assert {response.status_code for response in responses} == {201}
    assert len({response.content for response in responses}) == 1
    assert Conversation.objects.count() == 1
