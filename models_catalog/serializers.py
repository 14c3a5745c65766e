from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from models_catalog.catalogue import (
    CATALOGUE,
    INFERENCE_PROFILE_PREFIXES,
    LLAMA3,
    accepted_model_id_pattern,
)
from models_catalog.models import FoundationModel


class PriceOutputSerializer(serializers.Serializer):
    input_per_million_tokens = serializers.DecimalField(
        max_digits=settings.MONEY_MAX_DIGITS, decimal_places=settings.MONEY_DECIMAL_PLACES
    )
    output_per_million_tokens = serializers.DecimalField(
        max_digits=settings.MONEY_MAX_DIGITS, decimal_places=settings.MONEY_DECIMAL_PLACES
    )
    currency = serializers.CharField()
    effective_from = serializers.DateTimeField()


class FoundationModelOutputSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="model_id")
    # Sampling parameters, not money: plain JSON numbers are what clients send back.
    default_temperature = serializers.FloatField()
    default_top_p = serializers.FloatField()
    price = serializers.SerializerMethodField()

    class Meta:
        model = FoundationModel
        fields = [
            "id",
            "name",
            "family",
            "context_window",
            "max_gen_len_cap",
            "default_max_gen_len",
            "default_temperature",
            "default_top_p",
            "accepts_images",
            "price",
        ]

    @extend_schema_field(PriceOutputSerializer(allow_null=True))
    def get_price(self, model: FoundationModel) -> dict | None:
        """The price in force now; null when the operator has set none (calls are refused)."""
        if getattr(model, "input_price_per_million", None) is None:
            return None
        return PriceOutputSerializer(
            {
                "input_per_million_tokens": model.input_price_per_million,
                "output_per_million_tokens": model.output_price_per_million,
                "currency": settings.MONEY_CURRENCY,
                "effective_from": model.price_effective_from,
            }
        ).data


CATALOGUE_MODEL_IDS = [entry.model_id for entry in CATALOGUE]


@extend_schema_field(
    {
        "type": "string",
        "maxLength": 100,
        "pattern": accepted_model_id_pattern(CATALOGUE_MODEL_IDS),
        "example": next(entry.model_id for entry in CATALOGUE if entry.family == LLAMA3),
    }
)
class ModelIdField(serializers.CharField):
    """A model id in a request. The schema states the catalogue's ids in every spelling
    resolve_model_id accepts; the service resolves it and refuses an inactive one."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 100)
        kwargs.setdefault(
            "help_text",
            "A model id from GET /models: "
            + ", ".join(f"`{model_id}`" for model_id in CATALOGUE_MODEL_IDS)
            + ". Each may carry a cross-region inference profile prefix ("
            + ", ".join(f"`{prefix}.`" for prefix in INFERENCE_PROFILE_PREFIXES)
            + "), and `…-v1:0` may be written `…-v10`.",
        )
        super().__init__(**kwargs)
