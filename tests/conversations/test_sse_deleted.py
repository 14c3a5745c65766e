"""An answer deleted (with its conversation) while a client streams it ends the stream with
a final event: it never changes again, so keep-alives forever would be a hang."""

from __future__ import annotations

import json
import uuid

import pytest
from asgiref.sync import async_to_sync

from conversations import sse

pytestmark = pytest.mark.django_db


def test_a_deleted_answer_counts_as_final_and_ends_with_an_error_event() -> None:
    missing = uuid.uuid4()
    assert async_to_sync(sse._is_final)(missing)
    event = async_to_sync(sse._final_event)(missing, "5-0")
    lines = event.strip().splitlines()
    assert lines[:2] == ["id: 5-0", "event: error"]
    payload = json.loads(lines[2].removeprefix("data: "))
    assert payload["error"]["code"] == "not_found"
