"""Input and output serializers for conversations and messages."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.selectors import usage_by_message
from conversations.models import Conversation, Message, MessageRole
from conversations.validators import validate_metadata
from models_catalog.catalogue import BEDROCK_MAX_GEN_LEN
from models_catalog.serializers import ModelIdField

# Deeper metadata is refused before anything recurses through it (json.dumps, the database
# adapter, the renderer), since Python's json gives up near its recursion limit with a 500.
METADATA_MAX_DEPTH = 32


def _nesting_depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        if depth > METADATA_MAX_DEPTH:
            break
        level = [
            child
            for container in level
            if isinstance(container, dict | list)
            for child in (container.values() if isinstance(container, dict) else container)
            if isinstance(child, dict | list)
        ]
    return depth


@extend_schema_field({"type": "object", "additionalProperties": True})
class MetadataField(serializers.JSONField):
    default_error_messages = {
        "too_deep": f"Must be nested at most {METADATA_MAX_DEPTH} levels deep.",
    }

    def to_internal_value(self, data: Any) -> Any:
        if _nesting_depth(data) > METADATA_MAX_DEPTH:
            self.fail("too_deep")
        return super().to_internal_value(data)


class SamplingParameterField(serializers.DecimalField):
    def to_internal_value(self, data: Any) -> Decimal:
        value = super().to_internal_value(data)
        # "-0" is a valid decimal; store and send Bedrock a plain 0.
        return value.copy_abs() if value.is_zero() else value


def _sampling_field(**kwargs: Any) -> serializers.DecimalField:
    return SamplingParameterField(
        max_digits=3,
        decimal_places=2,
        min_value=Decimal("0"),
        max_value=Decimal("1"),
        coerce_to_string=False,
        **kwargs,
    )


def _content_field(**kwargs: Any) -> serializers.CharField:
    # DRF's CharField already refuses NUL and lone surrogates, which databases cannot store.
    return serializers.CharField(
        max_length=settings.MESSAGE_MAX_CHARACTERS, trim_whitespace=False, **kwargs
    )


def _max_gen_len_field(**kwargs: Any) -> serializers.IntegerField:
    # No model's cap is above Bedrock's; the service checks the model's own cap.
    return serializers.IntegerField(
        min_value=1,
        max_value=BEDROCK_MAX_GEN_LEN,
        help_text=(
            "Tokens to generate at most: up to the model's cap (`max_gen_len_cap` in "
            f"GET /models), at most {BEDROCK_MAX_GEN_LEN} for every model."
        ),
        **kwargs,
    )


SAMPLING_HELP = "{name}: 0 to 1, at most two decimal places; null or absent: the {fallback}."
METADATA_HELP = (
    f"A JSON object of your own, at most {settings.METADATA_MAX_BYTES} bytes as JSON and "
    f"{METADATA_MAX_DEPTH} levels deep; no NUL characters."
)
CONTENT_HELP = (
    f"At most {settings.MESSAGE_MAX_CHARACTERS} characters, kept exactly as sent; no NUL "
    "characters or unpaired surrogates."
)


class GenerationParametersInputSerializer(serializers.Serializer):
    temperature = _sampling_field(
        required=False,
        allow_null=True,
        help_text=SAMPLING_HELP.format(
            name="Sampling temperature", fallback="conversation's or the model's default"
        ),
    )
    top_p = _sampling_field(
        required=False,
        allow_null=True,
        help_text=SAMPLING_HELP.format(
            name="Nucleus sampling", fallback="conversation's or the model's default"
        ),
    )
    max_gen_len = _max_gen_len_field(required=False, allow_null=True)


class ConversationCreateInputSerializer(GenerationParametersInputSerializer):
    model = ModelIdField()
    title = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    system_prompt = _content_field(
        required=False, allow_blank=True, default="", help_text=CONTENT_HELP
    )
    end_user = serializers.CharField(
        max_length=200, required=False, allow_null=True, default=None,
        help_text="Your own id for the person chatting; created on first use.",
    )  # fmt: skip
    metadata = MetadataField(
        required=False, default=dict, validators=[validate_metadata], help_text=METADATA_HELP
    )


class ConversationUpdateInputSerializer(GenerationParametersInputSerializer):
    title = serializers.CharField(max_length=200, required=False, allow_blank=True)
    system_prompt = _content_field(required=False, allow_blank=True, help_text=CONTENT_HELP)
    metadata = MetadataField(
        required=False, validators=[validate_metadata], help_text=METADATA_HELP
    )
    is_archived = serializers.BooleanField(required=False)


class ConversationListFilterSerializer(serializers.Serializer):
    end_user = serializers.CharField(max_length=200, required=False)
    archived = serializers.BooleanField(required=False, allow_null=True, default=None)


class ConversationOutputSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.model_id")
    end_user = serializers.CharField(source="end_user.external_id", allow_null=True, default=None)
    temperature = serializers.FloatField(allow_null=True)
    top_p = serializers.FloatField(allow_null=True)

    class Meta:
        model = Conversation
        fields = [
            "id",
            "model",
            "end_user",
            "title",
            "system_prompt",
            "temperature",
            "top_p",
            "max_gen_len",
            "metadata",
            "is_archived",
            "created_at",
            "updated_at",
        ]


class MessageCreateInputSerializer(GenerationParametersInputSerializer):
    content = _content_field(allow_blank=False, help_text=f"{CONTENT_HELP} Not only white space.")
    mode = serializers.ChoiceField(
        choices=["async", "sync"],
        default="async",
        help_text=(
            "async: answer 202 at once with both messages. sync: wait for the answer (up to "
            "GENERATION_SYNC_WAIT_SECONDS) and answer 201 with it, or 202 if not done in time."
        ),
    )

    def validate_content(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("Must contain more than white space.")
        return value


class MessageErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class MessageUsageSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(
        max_digits=settings.MONEY_MAX_DIGITS, decimal_places=settings.MONEY_DECIMAL_PLACES
    )
    currency = serializers.CharField()


class MessageOutputSerializer(serializers.ModelSerializer):
    """A message; pass context["usage_by_message"] to serialise a page without N queries."""

    conversation = serializers.UUIDField(source="conversation_id")
    error = serializers.SerializerMethodField()
    usage = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = [
            "id",
            "conversation",
            "sequence",
            "role",
            "content",
            "status",
            "token_count",
            "prompt_token_count",
            "generation_token_count",
            "stop_reason",
            "error",
            "usage",
            "created_at",
            "completed_at",
        ]

    @extend_schema_field(MessageUsageSerializer(allow_null=True))
    def get_usage(self, message: Message) -> dict[str, Any] | None:
        """What the answer was charged, once settled (null before, and for user turns)."""
        if message.role != MessageRole.ASSISTANT:
            return None
        usage_map = self.context.get("usage_by_message")
        if usage_map is None:
            usage_map = usage_by_message(tenant=message.tenant_id, message_ids=[message.pk])
        record = usage_map.get(message.pk)
        return MessageUsageSerializer(record).data if record is not None else None

    @extend_schema_field(MessageErrorSerializer(allow_null=True))
    def get_error(self, message: Message) -> dict[str, str] | None:
        if not message.error_code:
            return None
        return {"code": message.error_code, "message": message.error_message}


class ContextSummarySerializer(serializers.Serializer):
    model = serializers.CharField()
    prompt_token_count = serializers.IntegerField()
    context_window = serializers.IntegerField()
    max_gen_len = serializers.IntegerField()
    room_for_generation = serializers.IntegerField()
    token_count_is_estimate = serializers.BooleanField()
    kept_message_ids = serializers.ListField(child=serializers.UUIDField())


class TurnOutputSerializer(serializers.Serializer):
    user_message = MessageOutputSerializer()
    assistant_message = MessageOutputSerializer()
    context = ContextSummarySerializer()
    stream_url = serializers.CharField(help_text="Server-Sent Events of the answer.")


class ContextQuerySerializer(serializers.Serializer):
    max_gen_len = _max_gen_len_field(required=False)


class ContextOutputSerializer(serializers.Serializer):
    model = serializers.CharField()
    prompt = serializers.CharField()
    prompt_token_count = serializers.IntegerField()
    context_window = serializers.IntegerField()
    max_gen_len = serializers.IntegerField()
    room_for_generation = serializers.IntegerField(
        help_text="context_window - prompt_token_count: tokens left for the answer."
    )
    token_count_is_estimate = serializers.BooleanField()
    kept_message_ids = serializers.ListField(child=serializers.UUIDField())
    dropped_message_ids = serializers.ListField(child=serializers.UUIDField())
