"""OpenAPI documentation of the OpenAI-compatible surface (validation is openai_api.parsing).

These serializers only describe; the surface follows OpenAI's Chat Completions reference.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

from config.openapi import ErrorDocumentingAutoSchema
from models_catalog.catalogue import BEDROCK_MAX_GEN_LEN


class OpenAIErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField(
        help_text="invalid_request_error, authentication_error, insufficient_quota, "
        "rate_limit_error, server_error."
    )
    param = serializers.CharField(allow_null=True, help_text="The parameter at fault, if any.")
    code = serializers.CharField(
        allow_null=True,
        help_text="Stable code: context_length_exceeded, model_not_found, budget_exceeded, "
        "quota_exceeded, unsupported_parameter, unknown_parameter, invalid_value, "
        "invalid_api_key, idempotency_key_reused, idempotency_in_progress, ...",
    )


class OpenAIErrorResponseSerializer(serializers.Serializer):
    error = OpenAIErrorDetailSerializer()


def openai_error_response(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=OpenAIErrorResponseSerializer, description=description)


class OpenAIAutoSchema(ErrorDocumentingAutoSchema):
    """Our error documentation, in OpenAI's error shape."""

    def _error_responses(self) -> dict[str, OpenApiResponse]:
        return {
            status_code: openai_error_response(response.description)
            for status_code, response in super()._error_responses().items()
        }


class ChatMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant"])
    content = serializers.JSONField(
        help_text="A string, or a list of {'type': 'text', 'text': ...} parts (text only)."
    )


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = serializers.BooleanField(
        required=False, help_text="Send a last chunk with `usage` before [DONE]."
    )


class ChatCompletionRequestSerializer(serializers.Serializer):
    model = serializers.CharField(help_text="A model id of GET /v1/models, or an inference "
                                  "profile id (us.meta....).")  # fmt: skip
    messages = ChatMessageSerializer(
        many=True,
        help_text="System (or developer) messages first, then user and assistant turns, the "
        "last one the user's. Without `conversation` the whole list is the prompt; with "
        "`conversation`, only the new user message.",
    )
    stream = serializers.BooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    max_tokens = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=BEDROCK_MAX_GEN_LEN,
        help_text="Bedrock's max_gen_len, up to the model's cap (default: the model's).",
    )  # fmt: skip
    max_completion_tokens = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=BEDROCK_MAX_GEN_LEN,
        help_text="The same as max_tokens.",
    )  # fmt: skip
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    stop = serializers.JSONField(
        required=False,
        help_text="Up to 4 sequences; the answer returned is cut at the first one "
        "(finish_reason 'stop'). Usage and charges follow what Bedrock generated.",
    )
    user = serializers.CharField(
        required=False, max_length=200, help_text="Your end user: their budgets and quotas apply."
    )
    n = serializers.IntegerField(required=False, min_value=1, max_value=1)
    conversation = serializers.UUIDField(
        required=False,
        help_text="Extension (the SDK's extra_body): the id of one of your conversations; the "
        "user message is appended to it and the answer stored there.",
    )


class ChatCompletionMessageSerializer(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField()
    refusal = serializers.CharField(allow_null=True)


class ChatCompletionChoiceSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    message = ChatCompletionMessageSerializer()
    logprobs = serializers.JSONField(allow_null=True)
    finish_reason = serializers.ChoiceField(choices=["stop", "length"])


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class ChatCompletionSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(help_text="chat.completion")
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = ChatCompletionChoiceSerializer(many=True)
    usage = UsageSerializer()
    system_fingerprint = serializers.CharField(allow_null=True)


class OpenAIModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(help_text="model")
    created = serializers.IntegerField()
    owned_by = serializers.CharField()


class OpenAIModelListSerializer(serializers.Serializer):
    object = serializers.CharField(help_text="list")
    data = OpenAIModelSerializer(many=True)
