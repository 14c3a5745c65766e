"""Context building: stored history -> the Llama prompt for the next answer, trimmed to fit.

Rules: the system prompt is always kept; then the newest turns that fit in
`context_window - max_gen_len`, whole messages only, oldest dropped first; Llama 2 keeps a
user turn with the answers that follow it. The newest user turn must fit, or the request
fails with `context_overflow`.

Every message stores its token count when written, so a build reads the (id, role, count)
of the turns it keeps, newest first and in growing batches, then the text of just those:
its cost follows the turns kept, not the length of the history.

Counts are exact. For Llama 3 the stored counts add up to the prompt's count exactly. For
Llama 2 they add up to a proven upper bound (a message stores the most its content costs
wherever the format may put it; see models_catalog.prompt_formats), which is what trimming
and the overflow check use; the Llama 2 prompt that was built is then counted whole (its
window is 4,096 tokens), so `prompt_token_count` is exact for both families.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rest_framework import status

from config.errors import ApplicationError
from conversations.models import Conversation, Message, MessageRole, MessageStatus
from models_catalog.models import FoundationModel, PromptFamily
from models_catalog.prompt_formats import (
    Turn,
    build_prompt,
    content_tokens,
    prepare_content,
    prompt_frame_tokens,
    turn_overhead_tokens,
)
from models_catalog.tokenizer import count_prompt_tokens

FIRST_BATCH_SIZE = 64
MAX_BATCH_SIZE = 4096


class ContextOverflowError(ApplicationError):
    code = "context_overflow"
    http_status = status.HTTP_400_BAD_REQUEST


class NoUserTurnError(ApplicationError):
    code = "no_user_turn"
    http_status = status.HTTP_409_CONFLICT


@dataclass(frozen=True)
class BuiltContext:
    model_id: str
    prompt: str
    prompt_token_count: int
    context_window: int
    max_gen_len: int
    # Always False now that both families count exactly; kept for API compatibility.
    token_count_is_estimate: bool
    kept_message_ids: list[uuid.UUID]
    oldest_kept_sequence: int | None

    @property
    def room_for_generation(self) -> int:
        return self.context_window - self.prompt_token_count


def message_token_count(model: FoundationModel, content: str) -> int:
    """What a message stores: its content's tokens as it will appear in prompts.

    Exact for Llama 3; for Llama 2 the most the content costs wherever a prompt puts it
    (see prompt_formats.content_tokens).
    """
    return content_tokens(model.family, content)


def _turn_cost(model: FoundationModel, role: str, stored_count: int) -> int:
    return turn_overhead_tokens(model.family, role) + stored_count


def _system_cost(conversation: Conversation) -> int:
    model = conversation.model
    if not prepare_content(conversation.system_prompt, model.family):
        return 0
    return _turn_cost(model, "system", conversation.system_prompt_token_count)


def _history_newest_first(
    conversation: Conversation, through_sequence: int | None
) -> Iterator[tuple[uuid.UUID, int, str, int]]:
    """Completed turns as (id, sequence, role, stored count), newest first, in growing batches.

    Batches keep a build that stops early from reading the rest of a long history.
    """
    history = Message.objects.filter(conversation=conversation, status=MessageStatus.COMPLETED)
    if through_sequence is not None:
        history = history.filter(sequence__lte=through_sequence)
    batch_size = FIRST_BATCH_SIZE
    before: int | None = None
    while True:
        batch = history.order_by("-sequence")
        if before is not None:
            batch = batch.filter(sequence__lt=before)
        rows = list(batch.values_list("id", "sequence", "role", "token_count")[:batch_size])
        yield from rows
        if len(rows) < batch_size:
            return
        before = rows[-1][1]
        batch_size = min(batch_size * 4, MAX_BATCH_SIZE)


def _overflow(
    conversation: Conversation, *, fixed: int, newest: int, max_gen_len: int
) -> ContextOverflowError:
    window = conversation.model.context_window
    return ContextOverflowError(
        f"The system prompt and the newest message need {fixed + newest} tokens, but "
        f"{conversation.model.model_id} has a {window}-token window and max_gen_len "
        f"{max_gen_len} leaves {window - max_gen_len} for the prompt. Shorten the message or "
        "the system prompt, or lower max_gen_len.",
        details={
            "prompt_tokens": fixed + newest,
            "system_prompt_tokens": _system_cost(conversation),
            "newest_message_tokens": newest,
            "max_gen_len": max_gen_len,
            "context_window": window,
            "available_for_prompt": window - max_gen_len,
            "token_count_is_estimate": False,
        },
    )


def context_build(
    *,
    conversation: Conversation,
    max_gen_len: int,
    pending_user_content: str | None = None,
    pending_user_token_count: int | None = None,
    through_sequence: int | None = None,
) -> BuiltContext:
    """The prompt for answering the newest user turn.

    The newest user turn is `pending_user_content` (not stored yet) when given, else the
    newest completed message up to `through_sequence`, which must be the user's.
    """
    model = conversation.model
    budget = model.context_window - max_gen_len
    fixed = prompt_frame_tokens(model.family) + _system_cost(conversation)
    history = _history_newest_first(conversation, through_sequence)

    if pending_user_content is not None:
        if pending_user_token_count is None:
            pending_user_token_count = message_token_count(model, pending_user_content)
        newest_cost = _turn_cost(model, MessageRole.USER, pending_user_token_count)
        kept: list[tuple[uuid.UUID | None, int, str]] = [(None, -1, MessageRole.USER)]
    else:
        newest = next(history, None)
        if newest is None or newest[2] != MessageRole.USER:
            raise NoUserTurnError(
                "The conversation's newest message is not a user message: the next prompt "
                "is built when a user message is added."
            )
        newest_cost = _turn_cost(model, MessageRole.USER, newest[3])
        kept = [(newest[0], newest[1], newest[2])]
    if fixed + newest_cost > budget:
        raise _overflow(conversation, fixed=fixed, newest=newest_cost, max_gen_len=max_gen_len)

    total = fixed + newest_cost
    # Llama 2 must open with a user turn: a user turn and the answers after it go together.
    keep_whole_exchanges = model.family == PromptFamily.LLAMA2
    group: list[tuple[uuid.UUID, int, str]] = []
    group_cost = 0
    for message_id, sequence, role, stored_count in history:
        group.append((message_id, sequence, role))
        group_cost += _turn_cost(model, role, stored_count)
        if keep_whole_exchanges and role != MessageRole.USER:
            continue
        if total + group_cost > budget:
            break
        total += group_cost
        kept.extend(group)
        group, group_cost = [], 0

    kept.reverse()
    stored_ids = [message_id for message_id, _, _ in kept if message_id is not None]
    oldest_kept_sequence = min(
        (sequence for message_id, sequence, _ in kept if message_id is not None), default=None
    )
    turns = _kept_turns(conversation, oldest_kept_sequence, through_sequence)
    if pending_user_content is not None:
        turns.append(Turn(role=MessageRole.USER, content=pending_user_content))
    prompt = build_prompt(model.family, system_prompt=conversation.system_prompt, turns=turns)
    if model.family == PromptFamily.LLAMA2:
        # `total` is an upper bound for Llama 2 (see the module docstring); the exact count
        # of what was kept is at most that, so the prompt still fits.
        total = count_prompt_tokens(prompt, model.family)
    return BuiltContext(
        model_id=model.model_id,
        prompt=prompt,
        prompt_token_count=total,
        context_window=model.context_window,
        max_gen_len=max_gen_len,
        token_count_is_estimate=False,
        kept_message_ids=stored_ids,
        oldest_kept_sequence=oldest_kept_sequence,
    )


def _kept_turns(
    conversation: Conversation, oldest_kept_sequence: int | None, through_sequence: int | None
) -> list[Turn]:
    if oldest_kept_sequence is None:
        return []
    messages = Message.objects.filter(
        conversation=conversation,
        status=MessageStatus.COMPLETED,
        sequence__gte=oldest_kept_sequence,
    )
    if through_sequence is not None:
        messages = messages.filter(sequence__lte=through_sequence)
    return [
        Turn(role=role, content=content)
        for role, content in messages.order_by("sequence").values_list("role", "content")
    ]


def dropped_message_ids(conversation: Conversation, context: BuiltContext) -> list[uuid.UUID]:
    """Completed turns older than the oldest kept one (the whole history if none was kept)."""
    dropped = Message.objects.filter(conversation=conversation, status=MessageStatus.COMPLETED)
    if context.oldest_kept_sequence is not None:
        dropped = dropped.filter(sequence__lt=context.oldest_kept_sequence)
    return list(dropped.order_by("sequence").values_list("id", flat=True))


def context_describe(
    context: BuiltContext, *, include_prompt: bool, dropped_ids: list[uuid.UUID] | None = None
) -> dict[str, Any]:
    description: dict[str, Any] = {
        "model": context.model_id,
        "prompt_token_count": context.prompt_token_count,
        "context_window": context.context_window,
        "max_gen_len": context.max_gen_len,
        "room_for_generation": context.room_for_generation,
        "token_count_is_estimate": context.token_count_is_estimate,
        "kept_message_ids": context.kept_message_ids,
    }
    if include_prompt:
        description["prompt"] = context.prompt
    if dropped_ids is not None:
        description["dropped_message_ids"] = dropped_ids
    return description
