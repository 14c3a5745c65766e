"""The worker's writes per answer: the claim and the final store keep the copy in hand in
step with the row without reading it again, and the answer stream's expiry is set once per
attempt (again after Redis was away, and with the final event), not with every delta."""

from __future__ import annotations

import io
import uuid
from unittest import mock

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import Reservation, ReservationStatus, UsageRecord
from billing.services import reservation_lock
from config.redis_client import get_redis
from conversations import answer_stream
from conversations.models import Message, MessageStatus
from conversations.services import generation
from conversations.services.conversations import conversation_create, user_message_create
from conversations.services.generation import Outcome, _claim, _Wire, generation_run
from tests.factories import make_tenant

LLAMA3 = "meta.llama3-8b-instruct-v1:0"

pytestmark = pytest.mark.django_db


@pytest.fixture
def answer() -> Message:
    conversation = conversation_create(
        tenant=make_tenant("acme"), model_id=LLAMA3, system_prompt="Be brief."
    )
    return user_message_create(conversation=conversation, content="What is 2 + 2?").answer


def test_a_claim_hands_back_the_claimed_row(answer: Message) -> None:
    claim = _claim(answer.pk)

    assert not isinstance(claim, Outcome)
    stored = Message.objects.get(pk=answer.pk)
    assert (claim.attempt, claim.message.attempt_count, stored.attempt_count) == (1, 1, 1)
    assert claim.message.status == stored.status == MessageStatus.RUNNING
    assert claim.message.lease_expires_at == stored.lease_expires_at
    assert claim.message.conversation.model.pk == stored.conversation.model_id


def test_a_claim_that_another_claim_overtook_takes_nothing(answer: Message) -> None:
    def overtaken(message: Message) -> bool:
        # Another worker claimed, died and was swept back between this one's read and write.
        Message.objects.filter(pk=message.pk).update(attempt_count=1)
        return False

    with mock.patch.object(generation, "_tenant_has_its_share_taken", overtaken):
        assert _claim(answer.pk) == Outcome.SKIPPED

    stored = Message.objects.get(pk=answer.pk)
    assert (stored.status, stored.attempt_count) == (MessageStatus.QUEUED, 1)


def test_a_generated_answer_is_stored_settled_and_announced_as_the_row_holds_it(
    answer: Message, settings
) -> None:
    settings.ANSWER_STREAM_COALESCE_SECONDS = 60  # the first delta at once, the rest at the end
    round_trips: list[list[str]] = []
    real_publish_events = answer_stream.publish_events

    def recording(message_id, events, **options):
        round_trips.append([event_type for event_type, _ in events])
        return real_publish_events(message_id, events, **options)

    with (
        mock.patch.object(answer_stream, "publish_events", recording),
        CaptureQueriesContext(connection) as queries,
    ):
        assert generation_run(message_id=answer.pk) == Outcome.COMPLETED

    stored = Message.objects.get(pk=answer.pk)
    assert stored.status == MessageStatus.COMPLETED
    assert stored.content
    assert stored.token_count > 0
    assert Reservation.objects.get(message_id=answer.pk).status == ReservationStatus.SETTLED
    assert UsageRecord.objects.filter(message_id=answer.pk).count() == 1
    # The frozen call's read, then one locked read for the provider ledger and settlement;
    # the claim and the store read the answer's row once in all (the other read of messages
    # looks for the tenant's next waiting answer, to hand it the freed slot).
    reservation_reads = [q for q in queries if q["sql"].startswith('SELECT "billing_reservation"')]
    assert len(reservation_reads) == 2, [q["sql"] for q in reservation_reads]
    message_reads = [
        q
        for q in queries
        if q["sql"].startswith('SELECT "conversations_message"."id"')
        and 'ORDER BY "conversations_message"."created_at"' not in q["sql"]
    ]
    assert len(message_reads) == 1, [q["sql"] for q in message_reads]
    # Two round trips to Redis: the first delta, then the last one with the final event.
    assert round_trips == [["delta"], ["delta", "done"]]
    entries = [
        answer_stream.decode_entry(entry_id, fields)
        for entry_id, fields in get_redis().xrange(answer_stream.stream_key(answer.pk))
    ]
    assert [entry.type for entry in entries] == ["delta", "delta", "done"]
    assert "".join(entry.data.get("text", "") for entry in entries) == stored.content
    assert (entries[-1].data["status"], entries[-1].data["attempt"]) == ("completed", 1)


def test_the_wire_sets_the_streams_expiry_once_not_per_delta(settings) -> None:
    settings.ANSWER_STREAM_COALESCE_SECONDS = 0  # every delta its own event
    message_id = uuid.uuid4()
    key = answer_stream.stream_key(message_id)
    wire = _Wire(message_id, attempt=1)
    parts = ["Four"]
    wire.delta("Four", parts)
    assert get_redis().ttl(key) > 0

    get_redis().persist(key)  # so an EXPIRE sent with the next delta would show
    parts.append(".")
    wire.delta(".", parts)
    assert get_redis().xlen(key) == 2
    assert get_redis().ttl(key) == -1

    answer_stream.publish(message_id, answer_stream.DONE, expire=False, status="completed")
    assert get_redis().ttl(key) > 0  # a final event always sets it


def test_the_wire_sets_the_expiry_again_after_redis_was_away(settings) -> None:
    settings.ANSWER_STREAM_COALESCE_SECONDS = 0
    message_id = uuid.uuid4()
    key = answer_stream.stream_key(message_id)
    wire = _Wire(message_id, attempt=1)
    parts = ["Four"]
    wire.delta("Four", parts)
    get_redis().delete(key)  # Redis restarted without its data

    redis_url = settings.REDIS_URL
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # Redis away
    parts.append(".")
    wire.delta(".", parts)
    settings.REDIS_URL = redis_url
    assert wire.broken_until is not None
    wire.broken_until = 0.0  # the retry pause is over
    parts.append(" Yes")
    wire.delta(" Yes", parts)

    assert [entry[1][b"type"] for entry in get_redis().xrange(key)] == [b"reset", b"delta"]
    assert get_redis().ttl(key) > 0


def test_the_reservation_lock_joins_no_other_table(answer: Message) -> None:
    # On PostgreSQL, FOR UPDATE locks every joined row: a join to the shared model row
    # deadlocked concurrent reservations (peer_compare --postgres).
    with CaptureQueriesContext(connection) as queries:
        assert reservation_lock(message_id=answer.pk) is not None
    [query] = queries
    assert "JOIN" not in query["sql"].upper(), query["sql"]


def test_a_turn_and_its_answer_read_and_write_each_row_they_need_once(
    owner_client, owner_tenant
) -> None:
    """The hot path's statements (benchmarks/peer_compare.py --profile: query building is
    the largest share of our CPU): under a budget and a quota, the POST reads the open
    reservations once for both, writes the answer once and reads no ledger; the worker
    reads no model row and no provider row before recording the attempt."""
    call_command("set_budget", "--tenant", owner_tenant.slug, "--period", "month",
                 "--limit", "1000", "--hard", stdout=io.StringIO())  # fmt: skip
    call_command("set_quota", "--tenant", owner_tenant.slug, "--rpm", "1000",
                 "--concurrency", "100", stdout=io.StringIO())  # fmt: skip
    conversation = owner_client.post(
        "/api/v1/conversations", {"model": LLAMA3}, format="json"
    ).json()
    with CaptureQueriesContext(connection) as web:
        response = owner_client.post(
            f"/api/v1/conversations/{conversation['id']}/messages",
            {"content": "What is 2 + 2?"},
            format="json",
        )
    assert response.status_code == 202, response.content
    statements = [query["sql"] for query in web]
    open_reads = [sql for sql in statements if 'FROM "billing_reservation"' in sql]
    assert len(open_reads) == 1, open_reads
    assert not [sql for sql in statements if sql.startswith('UPDATE "conversations_message"')]
    assert not [sql for sql in statements if sql.startswith('SELECT "billing_usagerecord"."id"')]
    assert not [sql for sql in statements if 'FROM "conversations_tenant"' in sql]
    answer_id = response.json()["assistant_message"]["id"]
    assert Message.objects.get(pk=answer_id).enqueued_at is not None  # for the sweeper

    with CaptureQueriesContext(connection) as worker:
        assert generation_run(message_id=uuid.UUID(answer_id)) == Outcome.COMPLETED

    statements = [query["sql"] for query in worker]
    assert not [sql for sql in statements if 'FROM "models_catalog_foundationmodel"' in sql]
    assert not [sql for sql in statements if 'FROM "billing_providerattempt"' in sql]
    assert [sql for sql in statements if sql.startswith('INSERT INTO "billing_providerattempt"')]
    # The settlement reads the budget's spend, not the open reservations.
    assert len([sql for sql in statements if 'FROM "billing_reservation"' in sql]) == 2
