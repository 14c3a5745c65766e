"""An answer that became final may be deleted with its conversation at once (DELETE is
allowed then) while a sync request still waits to read it, or while its worker re-reads
it: the waiter gets a 404 in our error format, the worker keeps the copy it holds."""

from __future__ import annotations

import pytest

from config.errors import NotFoundError
from conversations.models import Conversation, Message, MessageRole, MessageStatus
from conversations.services.generation import answer_wait

pytestmark = pytest.mark.django_db

LLAMA3 = "meta.llama3-1-8b-instruct-v1:0"


def _queued_answer(owner_client) -> Message:
    conversation = owner_client.post("/api/v1/conversations", {"model": LLAMA3}, format="json")
    assert conversation.status_code == 201, conversation.content
    record = Conversation.objects.get(pk=conversation.json()["id"])
    record.last_sequence += 1
    record.save(update_fields=["last_sequence"])
    return Message.objects.create(
        tenant_id=record.tenant_id,
        conversation=record,
        sequence=record.last_sequence,
        role=MessageRole.ASSISTANT,
        status=MessageStatus.QUEUED,
    )


def test_a_sync_wait_whose_answer_was_deleted_meanwhile_is_a_404(owner_client) -> None:
    answer = _queued_answer(owner_client)
    # Finished and deleted with its conversation while the waiter held its queued copy.
    Message.objects.filter(pk=answer.pk).update(status=MessageStatus.COMPLETED)
    Conversation.objects.filter(pk=answer.conversation_id).delete()

    with pytest.raises(NotFoundError, match="deleted with its conversation"):
        answer_wait(message=answer, timeout_seconds=0.05)


def test_a_sync_wait_reads_the_final_answer_when_it_is_still_there(owner_client) -> None:
    answer = _queued_answer(owner_client)
    Message.objects.filter(pk=answer.pk).update(status=MessageStatus.FAILED)

    assert answer_wait(message=answer, timeout_seconds=0.05).status == MessageStatus.FAILED
