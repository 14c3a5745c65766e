from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

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
