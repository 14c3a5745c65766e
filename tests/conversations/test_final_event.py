"""Sync waiters wait for the answer's final event alone, not its deltas; Redis away, they
still return what the database holds."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis
from django.db import connection

from config.redis_client import get_redis
from conversations import answer_stream
from conversations.models import Message, MessageStatus
from conversations.services.conversations import conversation_create, user_message_create
from conversations.services.generation import answer_wait, database_connection_release
from openai_api.relay import completion_wait
from tests.factories import make_tenant

LLAMA3 = "meta.llama3-8b-instruct-v1:0"
CLOSED_PORT_URL = "redis://127.0.0.1:1/0"


@pytest.fixture
def answer(catalogue: None) -> Message:
    conversation = conversation_create(
        tenant=make_tenant("acme"), model_id=LLAMA3, system_prompt="Be brief."
    )
    return user_message_create(conversation=conversation, content="What is 2 + 2?").answer


def _finish_later(answer_id: uuid.UUID, seconds: float, *, publish: bool) -> threading.Thread:
    def finish() -> None:
        time.sleep(seconds)
        Message.objects.filter(pk=answer_id).update(status=MessageStatus.COMPLETED)
        if publish:
            answer_stream.publish(answer_id, answer_stream.DONE, status="completed")

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


def test_the_final_event_has_a_key_of_its_own_that_expires() -> None:
    message_id = uuid.uuid4()
    for text in ("Four", ".", " Yes"):
        answer_stream.publish(message_id, answer_stream.DELTA, text=text, attempt=1)
    assert not get_redis().exists(answer_stream.final_key(message_id))

    answer_stream.publish(message_id, answer_stream.DONE, status="completed", attempt=1)

    assert get_redis().xlen(answer_stream.final_key(message_id)) == 1
    assert 0 < get_redis().ttl(answer_stream.final_key(message_id)) <= 3600
    assert get_redis().xlen(answer_stream.stream_key(message_id)) == 4  # readers see it all


def test_deltas_do_not_end_a_final_wait_the_final_event_does() -> None:
    message_id = uuid.uuid4()
    answer_stream.publish(message_id, answer_stream.DELTA, text="Four", attempt=1)

    assert answer_stream.wait_final(message_id, timeout_seconds=0.2) is None

    answer_stream.publish(message_id, answer_stream.ERROR, status="failed", attempt=1)
    started = time.monotonic()
    final = answer_stream.wait_final(message_id, timeout_seconds=5)
    assert final is not None
    assert (final.type, final.data["status"]) == (answer_stream.ERROR, "failed")
    assert time.monotonic() - started < 1  # there, not awaited
    # Any number of waiters see it: reading it does not take it away.
    assert answer_stream.wait_final(message_id, timeout_seconds=0.2) == final


def test_a_final_wait_with_redis_away_raises_a_redis_error(settings) -> None:
    settings.REDIS_URL = CLOSED_PORT_URL
    with pytest.raises(redis.RedisError):
        answer_stream.wait_final(uuid.uuid4(), timeout_seconds=1)


def test_a_sync_wait_ends_at_the_final_event(answer: Message) -> None:
    thread = _finish_later(answer.pk, 0.3, publish=True)
    started = time.monotonic()
    waited = answer_wait(message=answer, timeout_seconds=10)
    thread.join()

    assert waited.status == MessageStatus.COMPLETED
    assert time.monotonic() - started < 3


def test_a_sync_wait_with_redis_away_returns_the_answer_as_the_database_holds_it(
    answer: Message, settings
) -> None:
    settings.REDIS_URL = CLOSED_PORT_URL
    Message.objects.filter(pk=answer.pk).update(status=MessageStatus.COMPLETED)

    assert answer_wait(message=answer, timeout_seconds=10).status == MessageStatus.COMPLETED


@pytest.mark.parametrize("redis_away", [False, True])
def test_a_completion_wait_ends_when_the_answer_does(
    answer: Message, settings, redis_away: bool
) -> None:
    if redis_away:  # no final event can come: the database says when
        settings.REDIS_URL = CLOSED_PORT_URL
    thread = _finish_later(answer.pk, 0.3, publish=not redis_away)
    started = time.monotonic()
    final = completion_wait(answer_id=answer.pk, stops=(), cancel_on_stop=True, timeout_seconds=20)
    thread.join()

    assert final.status == MessageStatus.COMPLETED
    assert time.monotonic() - started < 4


def test_a_waiter_gives_a_servers_connection_back_and_keeps_a_sqlite_files(
    transactional_db: None, monkeypatch
) -> None:
    Message.objects.exists()  # a connection is open
    database_connection_release()
    assert (connection.connection is not None) == (connection.vendor == "sqlite")

    Message.objects.exists()
    monkeypatch.setattr(connection, "vendor", "postgresql")
    database_connection_release()
    assert connection.connection is None
