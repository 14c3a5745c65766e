"""Conversation and message endpoints: validate, call a service, serialize."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from billing.selectors import usage_by_message
from config.api_base import TenantScopedGenericAPIView
from config.openapi import error_response
from config.pagination import NewestFirstCursorPagination, SequenceCursorPagination
from conversations.chat_serializers import (
    ContextOutputSerializer,
    ContextQuerySerializer,
    ConversationCreateInputSerializer,
    ConversationListFilterSerializer,
    ConversationOutputSerializer,
    ConversationUpdateInputSerializer,
    MessageCreateInputSerializer,
    MessageOutputSerializer,
    TurnOutputSerializer,
)
from conversations.context import context_build, context_describe, dropped_message_ids
from conversations.models import IN_PROGRESS, Conversation, Message, MessageStatus, Tenant
from conversations.selectors import conversation_list, message_list
from conversations.services.conversations import (
    conversation_create,
    conversation_delete,
    conversation_update,
    generation_parameters_resolve,
    message_cancel,
    user_message_create,
)
from conversations.services.generation import answer_wait
from idempotency.http import (
    IDEMPOTENCY_KEY_PARAMETER,
    IDEMPOTENCY_RESPONSES,
    fingerprint_of,
    idempotency_key_of,
    json_value,
)
from idempotency.models import IdempotencyRecord, IdempotencyStatus
from idempotency.services import (
    Decision,
    idempotency_complete,
    idempotent_execute,
    replayed_body,
)

CONTEXT_OVERFLOW = error_response(
    "The system prompt and the newest message do not fit the model's window "
    "with max_gen_len (`context_overflow`; details hold the numbers)."
)


class ConversationScopedView(TenantScopedGenericAPIView):
    lookup_url_kwarg = "conversation_id"

    def safely_get_queryset(self, tenant: Tenant) -> QuerySet[Conversation]:
        return conversation_list(tenant=tenant)


class ConversationListCreateApi(ConversationScopedView):
    serializer_class = ConversationOutputSerializer
    pagination_class = NewestFirstCursorPagination

    @extend_schema(
        operation_id="conversations_list",
        parameters=[ConversationListFilterSerializer],
        summary="This tenant's conversations, newest first",
    )
    def get(self, request: Request) -> Response:
        filters = ConversationListFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        conversations = conversation_list(
            tenant=request.tenant,
            end_user_external_id=filters.validated_data.get("end_user"),
            archived=filters.validated_data["archived"],
        )
        page = self.paginate_queryset(conversations)
        return self.get_paginated_response(ConversationOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="conversations_create",
        request=ConversationCreateInputSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        responses={201: ConversationOutputSerializer, **IDEMPOTENCY_RESPONSES},
        summary="Start a conversation with a model",
    )
    def post(self, request: Request) -> Response:
        key = idempotency_key_of(request)
        fingerprint = fingerprint_of(request) if key else ""
        serializer = ConversationCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data

        def create() -> tuple[Conversation, Decision]:
            conversation = conversation_create(
                tenant=request.tenant,
                model_id=data["model"],
                end_user_external_id=data["end_user"],
                title=data["title"],
                system_prompt=data["system_prompt"],
                temperature=data.get("temperature"),
                top_p=data.get("top_p"),
                max_gen_len=data.get("max_gen_len"),
                metadata=data["metadata"],
            )
            body = json_value(ConversationOutputSerializer(conversation).data)
            return conversation, Decision(
                resource_id=conversation.pk, response_status=201, response_body=body
            )

        if key is None:
            _, decision = create()
        else:
            record = idempotent_execute(
                tenant=request.tenant,
                key=key,
                method=request.method,
                path=request.path,
                fingerprint=fingerprint,
                execute=create,
            ).record
            decision = Decision(
                response_status=record.response_status, response_body=replayed_body(record)
            )
        return Response(decision.response_body, status=decision.response_status)


class ConversationDetailApi(ConversationScopedView):
    serializer_class = ConversationOutputSerializer

    @extend_schema(operation_id="conversations_retrieve", summary="One conversation")
    def get(self, request: Request, conversation_id: str) -> Response:
        return Response(ConversationOutputSerializer(self.get_object()).data)

    @extend_schema(
        operation_id="conversations_update",
        request=ConversationUpdateInputSerializer,
        summary="Change title, system prompt, defaults, metadata or the archived flag",
    )
    def patch(self, request: Request, conversation_id: str) -> Response:
        conversation = self.get_object()
        serializer = ConversationUpdateInputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        conversation = conversation_update(conversation=conversation, **serializer.validated_data)
        return Response(ConversationOutputSerializer(conversation).data)

    @extend_schema(
        operation_id="conversations_destroy",
        summary="Delete a conversation and all its messages",
        description="Refused with 409 `generation_in_progress` while an answer is queued or "
        "running: cancel it first. Usage records are kept.",
        responses={
            204: None,
            409: error_response(
                "An answer is in flight (`generation_in_progress`); cancel it, then delete."
            ),
        },
    )
    def delete(self, request: Request, conversation_id: str) -> Response:
        conversation_delete(conversation=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class ConversationMessagesApi(ConversationScopedView):
    serializer_class = MessageOutputSerializer
    pagination_class = SequenceCursorPagination

    @extend_schema(
        operation_id="conversation_messages_list",
        responses=MessageOutputSerializer(many=True),
        summary="A conversation's messages, oldest first",
    )
    def get(self, request: Request, conversation_id: str) -> Response:
        conversation = self.get_object()
        page = self.paginate_queryset(conversation.messages.all())
        usage = usage_by_message(
            tenant=conversation.tenant_id, message_ids=[message.pk for message in page]
        )
        context = {"usage_by_message": usage}
        return self.get_paginated_response(
            MessageOutputSerializer(page, many=True, context=context).data
        )

    @extend_schema(
        operation_id="conversation_messages_create",
        request=MessageCreateInputSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        responses={
            **IDEMPOTENCY_RESPONSES,
            201: TurnOutputSerializer,
            202: TurnOutputSerializer,
            400: CONTEXT_OVERFLOW,
            402: error_response(
                "A hard budget could be crossed by this call's worst case "
                "(`budget_exceeded`; details: limit, spent, reserved, period end)."
            ),
            409: error_response(
                "The previous answer is still queued or running (`generation_in_progress`), "
                "or a request with the same Idempotency-Key is still being decided "
                "(`idempotency_in_progress`; see Retry-After)."
            ),
            429: error_response("A quota is used up (`quota_exceeded`; see Retry-After)."),
            503: error_response("The model has no price in force (`model_not_priced`)."),
        },
        summary="Add a user turn; the assistant's answer is generated by a worker",
    )
    def post(self, request: Request, conversation_id: str) -> Response:
        key = idempotency_key_of(request)
        fingerprint = fingerprint_of(request) if key else ""
        conversation = self.get_object()
        serializer = MessageCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        mode = serializer.validated_data.pop("mode")
        if key is None:
            turn = user_message_create(conversation=conversation, **serializer.validated_data)
            # A sync response shows the answer as the wait leaves it, never as queued.
            body = _turn_body(turn.message, turn.answer, turn.context, queued=mode != "sync")
            return _turn_response(body, turn.answer, mode)

        def send() -> tuple[Message, Decision]:
            turn = user_message_create(conversation=conversation, **serializer.validated_data)
            body = json_value(_turn_body(turn.message, turn.answer, turn.context))
            # A sync request's final response waits for the answer: stored once it is known.
            return turn.answer, Decision(
                resource_id=turn.answer.pk,
                response_status=status.HTTP_202_ACCEPTED,
                response_body=body,
                final=mode != "sync",
            )

        record = idempotent_execute(
            tenant=request.tenant,
            key=key,
            method=request.method,
            path=request.path,
            fingerprint=fingerprint,
            execute=send,
        ).record
        return _turn_replay(record, mode)


def _turn_body(
    message: Message, answer: Message, context: Any, *, queued: bool = True
) -> dict[str, Any]:
    """The turn as stored; the answer as queued, or (not `queued`) a place for it."""
    # Queued in this request: nothing can be settled for it yet (no ledger read).
    no_usage = {"usage_by_message": {}}
    return {
        "user_message": MessageOutputSerializer(message).data,
        "assistant_message": MessageOutputSerializer(answer, context=no_usage).data
        if queued
        else None,
        "context": context_describe(context, include_prompt=False),
        "stream_url": reverse("message-stream", kwargs={"message_id": answer.pk}),
    }


def _turn_response(body: dict[str, Any], answer: Message, mode: str) -> Response:
    if mode == "sync":
        answer = answer_wait(message=answer, timeout_seconds=settings.GENERATION_SYNC_WAIT_SECONDS)
        body = {**body, "assistant_message": MessageOutputSerializer(answer).data}
    done = answer.status not in IN_PROGRESS
    return Response(body, status=status.HTTP_201_CREATED if done else status.HTTP_202_ACCEPTED)


def _turn_replay(record: IdempotencyRecord, mode: str) -> Response:
    """The response of an idempotent turn: stored, or (sync, answer pending) waited for."""
    if record.status == IdempotencyStatus.COMPLETED:
        return Response(replayed_body(record), status=record.response_status)
    answer = Message.objects.filter(pk=record.resource_id).first()
    if answer is None:  # deleted with its conversation meanwhile
        return Response(replayed_body(record), status=record.response_status)
    response = _turn_response(replayed_body(record), answer, mode)
    if response.status_code == status.HTTP_201_CREATED:
        idempotency_complete(
            record=record, response_status=response.status_code, body=json_value(response.data)
        )
    return response


class ConversationContextApi(ConversationScopedView):
    serializer_class = ContextOutputSerializer

    @extend_schema(
        operation_id="conversation_context_retrieve",
        parameters=[ContextQuerySerializer],
        responses={
            200: ContextOutputSerializer,
            400: CONTEXT_OVERFLOW,
            409: error_response(
                "The newest message is not the user's: there is no turn to build a prompt "
                "for (`no_user_turn`)."
            ),
        },
        summary="The prompt the next turn would send, and which messages it keeps",
        description=(
            "Built from the stored history as it is now (the last message should be the "
            "user's). `max_gen_len` defaults to the conversation's or the model's."
        ),
    )
    def get(self, request: Request, conversation_id: str) -> Response:
        conversation = self.get_object()
        query = ContextQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        parameters = generation_parameters_resolve(
            conversation=conversation, max_gen_len=query.validated_data.get("max_gen_len")
        )
        context = context_build(conversation=conversation, max_gen_len=parameters.max_gen_len)
        dropped_ids = dropped_message_ids(conversation, context)
        return Response(context_describe(context, include_prompt=True, dropped_ids=dropped_ids))


class MessageScopedView(TenantScopedGenericAPIView):
    serializer_class = MessageOutputSerializer
    lookup_url_kwarg = "message_id"

    def safely_get_queryset(self, tenant: Tenant) -> QuerySet[Message]:
        return message_list(tenant=tenant)


class MessageCancelApi(MessageScopedView):
    @extend_schema(
        operation_id="messages_cancel",
        request=None,
        responses={
            200: MessageOutputSerializer,
            202: MessageOutputSerializer,
            409: error_response("The answer already finished (`not_cancellable`)."),
        },
        summary="Stop a queued or running answer (what was generated so far is kept)",
    )
    def post(self, request: Request, message_id: str) -> Response:
        message = message_cancel(message=self.get_object())
        finished = message.status == MessageStatus.CANCELLED
        return Response(
            MessageOutputSerializer(message).data,
            status=status.HTTP_200_OK if finished else status.HTTP_202_ACCEPTED,
        )


class MessageDetailApi(MessageScopedView):
    @extend_schema(
        operation_id="messages_retrieve",
        parameters=[OpenApiParameter("message_id", str, OpenApiParameter.PATH)],
        summary="One message",
    )
    def get(self, request: Request, message_id: str) -> Response:
        return Response(MessageOutputSerializer(self.get_object()).data)
