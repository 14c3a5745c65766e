"""Writes for end users, conversations and user turns."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from billing import rate_limits
from billing.end_users import end_user_get_or_create
from billing.services import (
    CallScope,
    FrozenCall,
    quota_precheck,
    reservation_create,
    reservation_release,
)
from config.errors import ApplicationError, NotFoundError
from conversations.context import BuiltContext, context_build, message_token_count
from conversations.models import (
    IN_PROGRESS,
    Conversation,
    Message,
    MessageRole,
    MessageStatus,
    Tenant,
)
from conversations.services.dispatch import (
    generation_enqueue_on_commit,
    generation_queued_or_fail,
    lease_lapsed,
)
from models_catalog.catalogue import resolve_model_id
from models_catalog.models import FoundationModel
from models_catalog.selectors import foundation_model_get_active

UNSET: Any = object()


class InvalidInputError(ApplicationError):
    code = "validation_error"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(
            "The request is not valid; see details for each field.", details={field: [message]}
        )


@dataclass(frozen=True)
class GenerationParameters:
    temperature: Decimal
    top_p: Decimal
    max_gen_len: int


def _model_for_new_conversation(raw_model_id: str) -> FoundationModel:
    try:
        return foundation_model_get_active(raw_model_id=raw_model_id)
    except NotFoundError as error:
        raise InvalidInputError("model", error.message) from None


def _check_max_gen_len(model: FoundationModel, max_gen_len: int | None) -> None:
    if max_gen_len is not None and max_gen_len > model.max_gen_len_cap:
        raise InvalidInputError(
            "max_gen_len",
            f"Must be at most {model.max_gen_len_cap} for {model.model_id}; got {max_gen_len}.",
        )


def generation_parameters_resolve(
    *,
    conversation: Conversation,
    temperature: Decimal | None = None,
    top_p: Decimal | None = None,
    max_gen_len: int | None = None,
) -> GenerationParameters:
    """Per-turn value, else the conversation's, else the model's default."""
    model = conversation.model
    _check_max_gen_len(model, max_gen_len)

    def first_set(*values: Any) -> Any:
        return next(value for value in values if value is not None)

    return GenerationParameters(
        temperature=first_set(temperature, conversation.temperature, model.default_temperature),
        top_p=first_set(top_p, conversation.top_p, model.default_top_p),
        max_gen_len=first_set(max_gen_len, conversation.max_gen_len, model.default_max_gen_len),
    )


class EndUserRequiredError(ApplicationError):
    code = "end_user_required"

    def __init__(self, message: str) -> None:
        super().__init__(message, details={"end_user": [message]})


def _require_end_user(tenant: Tenant, end_user_present: bool) -> None:
    if tenant.require_end_user and not end_user_present:
        raise EndUserRequiredError(
            "This tenant requires an end user on every conversation (its budgets and quotas "
            "are per end user); send `end_user`."
        )


def conversation_create(
    *,
    tenant: Tenant,
    model_id: str,
    end_user_external_id: str | None = None,
    title: str = "",
    system_prompt: str = "",
    temperature: Decimal | None = None,
    top_p: Decimal | None = None,
    max_gen_len: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> Conversation:
    _require_end_user(tenant, bool(end_user_external_id))
    model = _model_for_new_conversation(model_id)
    _check_max_gen_len(model, max_gen_len)
    bedrock_model_id = resolve_model_id(model_id).invocation_id
    with transaction.atomic():
        end_user = (
            end_user_get_or_create(tenant=tenant, external_id=end_user_external_id)
            if end_user_external_id
            else None
        )
        return Conversation.objects.create(
            tenant=tenant,
            model=model,
            bedrock_model_id=bedrock_model_id,
            end_user=end_user,
            title=title,
            system_prompt=system_prompt,
            system_prompt_token_count=message_token_count(model, system_prompt),
            temperature=temperature,
            top_p=top_p,
            max_gen_len=max_gen_len,
            metadata=metadata or {},
        )


def conversation_update(
    *,
    conversation: Conversation,
    title: str = UNSET,
    system_prompt: str = UNSET,
    temperature: Decimal | None = UNSET,
    top_p: Decimal | None = UNSET,
    max_gen_len: int | None = UNSET,
    metadata: dict[str, Any] = UNSET,
    is_archived: bool = UNSET,
) -> Conversation:
    """Change only what was given; UNSET means "leave as is", None means "model default"."""
    changes = {
        name: value
        for name, value in {
            "title": title,
            "system_prompt": system_prompt,
            "temperature": temperature,
            "top_p": top_p,
            "max_gen_len": max_gen_len,
            "metadata": metadata,
            "is_archived": is_archived,
        }.items()
        if value is not UNSET
    }
    if "max_gen_len" in changes:
        _check_max_gen_len(conversation.model, changes["max_gen_len"])
    if "system_prompt" in changes:
        changes["system_prompt_token_count"] = message_token_count(
            conversation.model, changes["system_prompt"]
        )
    for name, value in changes.items():
        setattr(conversation, name, value)
    with transaction.atomic():
        _conversation_lock(conversation)  # deleted meanwhile: 404, not a failed save
        conversation.save(update_fields=[*changes, "updated_at"])
    return conversation


def _conversation_lock(conversation: Conversation) -> Conversation:
    """Lock the conversation's row (inside a transaction); 404 when a concurrent DELETE got
    there first, since the caller looked it up."""
    locked = (
        Conversation.objects.select_for_update(of=("self",))
        .select_related("tenant", "model")
        .filter(pk=conversation.pk)
        .first()
    )
    if locked is None:
        raise NotFoundError("Not found.")
    return locked


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete a conversation and its messages; refused (409) while an answer is in flight.

    Refusing rather than cancelling keeps DELETE instant and side-effect free when it
    fails: the client cancels the answer (charged for what streamed), waits for it to end,
    and deletes. Ledger rows and reservations are never deleted with it.
    """
    with transaction.atomic():
        # The same row lock a new turn takes: no answer can start between check and delete.
        locked = _conversation_lock(conversation)
        in_flight = (
            Message.objects.filter(conversation=locked, status__in=IN_PROGRESS)
            .values_list("pk", flat=True)
            .first()
        )
        if in_flight is not None:
            raise GenerationInProgressError(
                "An answer is still being generated in this conversation; cancel it "
                f"(POST /api/v1/messages/{in_flight}/cancel) and delete once it has stopped.",
                details={"message_id": str(in_flight)},
            )
        locked.delete()


class GenerationInProgressError(ApplicationError):
    code = "generation_in_progress"
    http_status = 409


@dataclass(frozen=True)
class UserTurn:
    message: Message
    answer: Message
    context: BuiltContext
    parameters: GenerationParameters


def user_message_create(
    *,
    conversation: Conversation,
    content: str,
    temperature: Decimal | None = None,
    top_p: Decimal | None = None,
    max_gen_len: int | None = None,
) -> UserTurn:
    """Store a user turn and its queued answer, if the prompt fits the model's window.

    The answer's generation is enqueued once the transaction has committed.
    """
    parameters = generation_parameters_resolve(
        conversation=conversation, temperature=temperature, top_p=top_p, max_gen_len=max_gen_len
    )
    _require_end_user(conversation.tenant, conversation.end_user_id is not None)
    model = conversation.model
    if not model.is_active:
        raise ApplicationError(
            f"{model.model_id} is no longer offered; start a new conversation with an active "
            "model (GET /api/v1/models).",
            code="model_inactive",
        )
    scope = CallScope(
        tenant_id=conversation.tenant_id,
        end_user_id=conversation.end_user_id,
        model_id=model.pk,
        time_zone=conversation.tenant.time_zone,
    )
    # Before any work: a known-full rate window is refused at once, and Redis away (it
    # carries the work) is a 503 before anything is stored.
    quota_precheck(scope=scope)
    token_count = message_token_count(model, content)
    with rate_limits.given_back_unless_committed() as counted, transaction.atomic():
        # The row lock serialises turns of one conversation: sequence numbers stay gapless
        # and the context is built from the history this turn really follows.
        locked = _conversation_lock(conversation)
        if Message.objects.filter(conversation=locked, status__in=IN_PROGRESS).exists():
            raise GenerationInProgressError(
                "An answer is still being generated in this conversation; wait for it or "
                "cancel it before sending the next message."
            )
        context = context_build(
            conversation=locked,
            max_gen_len=parameters.max_gen_len,
            pending_user_content=content,
            pending_user_token_count=token_count,
        )
        locked.last_sequence += 2
        locked.save(update_fields=["last_sequence", "updated_at"])
        message = Message.objects.create(
            tenant_id=locked.tenant_id,
            conversation=locked,
            sequence=locked.last_sequence - 1,
            role=MessageRole.USER,
            content=content,
            status=MessageStatus.COMPLETED,
            token_count=token_count,
            completed_at=timezone.now(),
        )
        answer = Message.objects.create(
            tenant_id=locked.tenant_id,
            conversation=locked,
            sequence=locked.last_sequence,
            role=MessageRole.ASSISTANT,
            status=MessageStatus.QUEUED,
            enqueued_at=timezone.now(),
            max_gen_len=parameters.max_gen_len,
            temperature=parameters.temperature,
            top_p=parameters.top_p,
        )
        reservation_create(
            scope=scope,
            message_id=answer.pk,
            conversation_id=locked.pk,
            model=model,
            call=FrozenCall(
                bedrock_model_id=locked.bedrock_model_id,
                prompt=context.prompt,
                prompt_tokens=context.prompt_token_count,
                max_gen_len=parameters.max_gen_len,
                temperature=parameters.temperature,
                top_p=parameters.top_p,
            ),
            counted=counted,
        )
        refused = generation_enqueue_on_commit(answer)
    generation_queued_or_fail(answer, refused)
    context = replace(
        context,
        kept_message_ids=[*context.kept_message_ids, message.id],
        oldest_kept_sequence=context.oldest_kept_sequence or message.sequence,
    )
    return UserTurn(message=message, answer=answer, context=context, parameters=parameters)


def _abandoned_answer_cancel(message: Message, now: datetime) -> None:
    """A running answer whose lease lapsed has no worker to notice the cancel: end it here,
    so a cancel always unblocks the conversation. Bedrock's counts for the lost attempt
    were never seen: the tenant is not charged, the provider ledger records the attempt."""
    from billing.services import provider_lost_attempts_record

    with transaction.atomic():
        ended = Message.objects.filter(
            lease_lapsed(now), pk=message.pk, status=MessageStatus.RUNNING
        ).update(status=MessageStatus.CANCELLED, completed_at=now, updated_at=now)
        if ended:
            reservation_release(message_id=message.pk, reason=MessageStatus.CANCELLED)
            attempts = Message.objects.filter(pk=message.pk).values_list(
                "attempt_count", flat=True
            )[0]
            provider_lost_attempts_record(message_id=message.pk, before_attempt=attempts + 1)
    if ended:
        from conversations import answer_stream

        answer_stream.publish(message.pk, answer_stream.DONE, status=MessageStatus.CANCELLED)


class NotCancellableError(ApplicationError):
    code = "not_cancellable"
    http_status = 409


def message_cancel(*, message: Message) -> Message:
    """Stop an answer: a queued one at once, a running one as soon as its worker notices.

    Cancelling an answer that is already cancelled changes nothing (idempotent).
    """
    if message.role != MessageRole.ASSISTANT:
        raise NotCancellableError("Only an assistant's answer can be cancelled.")
    now = timezone.now()
    with transaction.atomic():
        cancelled_in_queue = Message.objects.filter(
            pk=message.pk, status=MessageStatus.QUEUED
        ).update(
            status=MessageStatus.CANCELLED,
            cancel_requested_at=now,
            completed_at=now,
            updated_at=now,
        )
        if cancelled_in_queue:
            # Nothing was generated: nothing to charge.
            reservation_release(message_id=message.pk, reason=MessageStatus.CANCELLED)
    if cancelled_in_queue:
        from conversations import answer_stream

        answer_stream.publish(message.pk, answer_stream.DONE, status=MessageStatus.CANCELLED)
    else:
        # The worker checks this flag while it streams and stores what it has, cancelled.
        Message.objects.filter(
            pk=message.pk, status=MessageStatus.RUNNING, cancel_requested_at__isnull=True
        ).update(cancel_requested_at=now, updated_at=now)
        _abandoned_answer_cancel(message, now)
    try:
        message.refresh_from_db()
    except Message.DoesNotExist:  # deleted with its conversation meanwhile
        raise NotFoundError("Not found.") from None
    if message.status in (MessageStatus.COMPLETED, MessageStatus.FAILED):
        raise NotCancellableError(f"The answer is already {message.status}.")
    return message
