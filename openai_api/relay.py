"""Following an answer as the worker produces it, for OpenAI clients.

The answer stream may restart (a `reset`: an earlier attempt's text is void) and OpenAI's
protocol cannot take text back, so the relay only ever sends a prefix of the answer: after
a reset it stays quiet until the new attempt's text passes what was already sent, and if
the new text disagrees with what was sent it says so (`diverged`) and the caller ends the
stream with an error. Stop sequences are applied on the way (rendering.safe_prefix).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence

import redis

from config.errors import NotFoundError
from conversations import answer_stream
from conversations.models import Message, MessageStatus
from conversations.services.conversations import NotCancellableError, message_cancel
from conversations.services.generation import database_connection_release
from openai_api.rendering import GenerationTimeoutError, safe_prefix, stop_cut

FINAL_STATUSES = (MessageStatus.COMPLETED, MessageStatus.FAILED, MessageStatus.CANCELLED)
# How long one read of the answer stream waits before the database is asked whether the
# answer ended anyway (a worker that died between committing and publishing).
QUIET_CHECK_SECONDS = 5.0


def release_connection() -> None:
    """Give the database connection back before a long wait (see the rule's reasons in
    conversations.services.generation.database_connection_release)."""
    database_connection_release()


class Relay:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.generated = ""
        self.sent = ""
        self.stopped = False
        self.diverged = False

    def reset(self) -> None:
        self.generated = ""

    def _advance(self, text: str, stopped: bool) -> str:
        if self.stopped or self.diverged:
            return ""
        if text.startswith(self.sent):
            new, self.sent = text[len(self.sent) :], text
            self.stopped = stopped
            return new
        if self.sent.startswith(text) and not stopped:
            return ""  # a restarted attempt catching up with what was sent
        self.diverged = True
        return ""

    def feed(self, delta: str) -> str:
        """Text to send now for this delta (maybe none)."""
        self.generated += delta
        cut = safe_prefix(self.generated, self.stops)
        return self._advance(cut.text, cut.stopped)

    def finish(self, final_text: str) -> str:
        """The rest of the stored answer that was not sent yet."""
        if self.stopped:
            return ""
        cut = stop_cut(final_text, self.stops)
        return self._advance(cut.text, cut.stopped)


def cancel_after_stop(answer_id: uuid.UUID) -> None:
    """Stop Bedrock once a stop sequence showed (calls without `conversation` only: a stored
    conversation keeps its answer whole, as the worker received it)."""
    message = Message.objects.filter(pk=answer_id).first()
    if message is None:
        return
    with contextlib.suppress(NotCancellableError):  # already final
        message_cancel(message=message)


def _final_event_came(answer_id: uuid.UUID, seconds: float) -> bool:
    try:
        return answer_stream.wait_final(answer_id, timeout_seconds=seconds) is not None
    except redis.RedisError:
        # The stream is best effort; the database still tells when the answer ends.
        time.sleep(min(seconds, 1.0))
        return False


def completion_wait(
    *, answer_id: uuid.UUID, stops: Sequence[str], cancel_on_stop: bool, timeout_seconds: float
) -> Message:
    """Block until the answer is final; cancel it at a stop sequence when asked to."""
    relay = Relay(stops)
    deadline = time.monotonic() + timeout_seconds
    after = "0-0"
    cancelled = False
    signalled = False
    while True:
        message = Message.objects.filter(pk=answer_id).first()
        if message is None:
            raise NotFoundError("The answer was deleted with its conversation.")
        if message.status in FINAL_STATUSES:
            return message
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GenerationTimeoutError(
                f"The answer was not ready within {timeout_seconds:g} s; it goes on. Retry "
                "with the same Idempotency-Key to get it, or follow it with stream=true."
            )
        release_connection()
        if not (stops and cancel_on_stop):
            # Nothing to watch for on the way: wait for the final event alone.
            if signalled:  # a final event the row does not show: never spin on it
                time.sleep(min(remaining, 1.0))
            else:
                signalled = _final_event_came(answer_id, min(remaining, QUIET_CHECK_SECONDS))
            continue
        try:
            for entry in answer_stream.read_until_final(
                answer_id, timeout_seconds=min(remaining, QUIET_CHECK_SECONDS), after=after
            ):
                after = entry.entry_id
                if entry.type == answer_stream.RESET:
                    relay.reset()
                elif entry.type == answer_stream.DELTA and not cancelled:
                    relay.feed(entry.data.get("text", ""))
                    if relay.stopped and cancel_on_stop:
                        cancel_after_stop(answer_id)
                        cancelled = True
        except redis.RedisError:
            # The stream is best effort; the database still tells when the answer ends.
            time.sleep(min(max(remaining, 0), 1.0))
