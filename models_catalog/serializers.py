from rest_framework import serializers

from models_catalog.models import FoundationModel


class FoundationModelOutputSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="model_id")
    # Sampling parameters, not money: plain JSON numbers are what clients send back.
    default_temperature = serializers.FloatField()
    default_top_p = serializers.FloatField()

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
        ]
