"""Turns sent through a live stack, and what the local Bedrock server answers them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest

from conversations.context import context_build
from conversations.models import Message, MessageStatus
from devtools.local_bedrock import expected_generation
from tests.e2e.books import FINAL_STATUSES
from tests.support.live_api import Api
from tests.support.local_bedrock import BEDROCK_SEED


@dataclass(frozen=True)
class Turn:
    conversation_id: str
    user_id: str
    answer_id: str


def send_turns(api: Api, count: int, *, label: str, **fields: Any) -> list[Turn]:
    turns = []
    for index in range(count):
        conversation_id = api.new_conversation()
        response = api.send(conversation_id, f"{label} question number {index}", **fields)
        assert response.status_code == 202, response.text
        body = response.json()
        turns.append(
            Turn(conversation_id, body["user_message"]["id"], body["assistant_message"]["id"])
        )
    return turns


def expected_text(answer_id: str, *, answer_tokens: int | None = None) -> str:
    """What the local server answers for this answer's prompt (the prompt as the worker
    builds it: the history through the user turn)."""
    answer = Message.objects.select_related("conversation__model").get(pk=answer_id)
    context = context_build(
        conversation=answer.conversation,
        max_gen_len=answer.max_gen_len,
        through_sequence=answer.sequence - 1,
    )
    return expected_generation(
        context.prompt, answer.max_gen_len, BEDROCK_SEED, answer_tokens=answer_tokens
    )


def wait_all_final(answer_ids: list[str], *, timeout: float) -> list[Message]:
    def final() -> list[Message] | None:
        answers = list(Message.objects.filter(pk__in=answer_ids))
        return answers if all(a.status in FINAL_STATUSES for a in answers) else None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers = final()
        if answers is not None:
            return answers
        time.sleep(0.1)
    states = dict(Message.objects.filter(pk__in=answer_ids).values_list("pk", "status"))
    pytest.fail(f"answers not final after {timeout} s: {states}")


def assert_completed_exactly(answer_ids: list[str], *, answer_tokens: int | None) -> None:
    for answer in Message.objects.filter(pk__in=answer_ids):
        assert answer.status == MessageStatus.COMPLETED, (answer.pk, answer.error_code)
        assert answer.content == expected_text(str(answer.pk), answer_tokens=answer_tokens)
