"""Answers as OpenAI objects: `chat.completion`, `chat.completion.chunk`, stop sequences.

Stop sequences are ours to apply (Bedrock's Llama API has none): the text we return is cut
at the first one and its finish_reason is "stop". The stored answer (and so the history of
a stateful conversation) is what the worker received, and the charge and `usage` follow
Bedrock's counts for what it generated; a call without `conversation` is cancelled as soon
as a stop sequence shows, so Bedrock stops generating (and billing) there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from config.errors import ApplicationError
from conversations.models import Message, MessageStatus


@dataclass(frozen=True)
class CutText:
    text: str
    stopped: bool


def stop_cut(text: str, stops: Sequence[str]) -> CutText:
    """`text` up to the first stop sequence in it (OpenAI: the sequence is not returned)."""
    positions = [position for stop in stops if (position := text.find(stop)) >= 0]
    if not positions:
        return CutText(text, stopped=False)
    return CutText(text[: min(positions)], stopped=True)


def safe_prefix(text: str, stops: Sequence[str]) -> CutText:
    """What of a growing text may be sent now: cut at a stop sequence, and without a tail
    that could still become the start of one."""
    cut = stop_cut(text, stops)
    if cut.stopped:
        return cut
    hold = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:length]):
                hold = length
                break
    return CutText(text[: len(text) - hold], stopped=False)


def completion_id(message_id: Any) -> str:
    return f"chatcmpl-{message_id}"


def created_of(message: Message) -> int:
    return int(message.created_at.timestamp())


def usage_of(message: Message) -> dict[str, int]:
    """Bedrock's counts (what the tenant is charged, capped at the reservation)."""
    prompt_tokens = message.prompt_token_count or 0
    completion_tokens = message.generation_token_count or 0
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def finish_reason_of(message: Message, stopped: bool) -> str:
    if stopped:
        return "stop"
    return "length" if message.stop_reason == "length" else "stop"


class GenerationFailedError(ApplicationError):
    code = "generation_failed"
    http_status = 502


class GenerationTimeoutError(ApplicationError):
    code = "timeout"
    http_status = 504


def failure_of(message: Message) -> ApplicationError:
    reason = message.error_message or message.error_code or "unknown error"
    return GenerationFailedError(
        f"The answer could not be generated ({message.error_code or 'failed'}): {reason}",
        details={"param": None},
    )


def completion_body(message: Message, *, model: str, stops: Sequence[str]) -> dict[str, Any]:
    """The `chat.completion` of a final answer; raises for a failed one."""
    if message.status == MessageStatus.FAILED:
        raise failure_of(message)
    cut = stop_cut(message.content, stops)
    return {
        "id": completion_id(message.pk),
        "object": "chat.completion",
        "created": created_of(message),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": cut.text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason_of(message, cut.stopped),
            }
        ],
        "usage": usage_of(message),
        "system_fingerprint": None,
    }


@dataclass(frozen=True)
class ChunkFrame:
    """What every chunk of one answer repeats."""

    id: str
    created: int
    model: str
    include_usage: bool

    def chunk(
        self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self.include_usage:
            body["usage"] = None
        return body | extra

    def usage_chunk(self, message: Message) -> dict[str, Any]:
        return self.chunk({}) | {"choices": [], "usage": usage_of(message)}
