from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from rest_framework import serializers

from billing.models import Alert, Budget, BudgetPeriod, Quota, UsageRecord


def money(**kwargs: object) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=settings.MONEY_MAX_DIGITS,
        decimal_places=settings.MONEY_DECIMAL_PLACES,
        **kwargs,
    )


class ScopeInputSerializer(serializers.Serializer):
    end_user = serializers.CharField(
        max_length=200, required=False, allow_null=True,
        help_text="Your id of one end user: the limit applies to that person only.",
    )  # fmt: skip
    model = serializers.CharField(
        max_length=100, required=False, allow_null=True, help_text="Only calls to this model."
    )
    per_end_user = serializers.BooleanField(
        required=False, help_text="Every end user gets the limit separately."
    )

    def validate(self, data: dict) -> dict:
        if data.get("per_end_user") and data.get("end_user"):
            raise serializers.ValidationError(
                {"per_end_user": "Use either end_user (one person) or per_end_user (each)."}
            )
        return data


class BudgetInputSerializer(ScopeInputSerializer):
    name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    period = serializers.ChoiceField(choices=BudgetPeriod.choices)
    # A cap far above any real budget, inside what every database stores exactly enough.
    limit = money(min_value=Decimal(0), max_value=Decimal(1_000_000_000))
    soft_threshold_percent = serializers.IntegerField(min_value=1, max_value=100, required=False)
    is_hard = serializers.BooleanField(required=False)


class BudgetOutputSerializer(serializers.ModelSerializer):
    end_user = serializers.CharField(source="end_user.external_id", allow_null=True, default=None)
    model = serializers.CharField(source="model.model_id", allow_null=True, default=None)
    limit = money(source="limit_amount")
    spent = money(allow_null=True)
    reserved = money(allow_null=True)
    remaining = money(allow_null=True)
    percent_used = serializers.DecimalField(max_digits=12, decimal_places=2, allow_null=True)
    period_start = serializers.DateTimeField(allow_null=True)
    period_end = serializers.DateTimeField(allow_null=True)

    class Meta:
        model = Budget
        fields = [
            "id", "name", "managed_by", "period", "limit", "soft_threshold_percent", "is_hard",
            "end_user", "model", "per_end_user", "spent", "reserved", "remaining",
            "percent_used", "period_start", "period_end", "created_at", "updated_at",
        ]  # fmt: skip


# The range of the PositiveIntegerFields that store quota limits (PostgreSQL's integer):
# a larger number would be a database error, a 500, rather than a validation error.
QUOTA_LIMIT_MAX = 2_147_483_647


def quota_limit(**kwargs: object) -> serializers.IntegerField:
    return serializers.IntegerField(
        min_value=1, max_value=QUOTA_LIMIT_MAX, required=False, allow_null=True, **kwargs
    )


class QuotaInputSerializer(ScopeInputSerializer):
    requests_per_minute = quota_limit()
    tokens_per_minute = quota_limit()
    tokens_per_day = quota_limit()
    max_concurrent = quota_limit()


class QuotaOutputSerializer(serializers.ModelSerializer):
    end_user = serializers.CharField(source="end_user.external_id", allow_null=True, default=None)
    model = serializers.CharField(source="model.model_id", allow_null=True, default=None)

    class Meta:
        model = Quota
        fields = [
            "id", "managed_by", "end_user", "model", "per_end_user", "requests_per_minute",
            "tokens_per_minute", "tokens_per_day", "max_concurrent", "created_at", "updated_at",
        ]  # fmt: skip


class UsageQuerySerializer(serializers.Serializer):
    start = serializers.DateTimeField(required=False, help_text="Default: this month's start.")
    end = serializers.DateTimeField(required=False, help_text="Exclusive. Default: now.")
    group_by = serializers.ChoiceField(
        choices=["day", "model", "end_user", "conversation"], required=False
    )

    def validate(self, data: dict) -> dict:
        if data.get("start") and data.get("end") and data["start"] >= data["end"]:
            raise serializers.ValidationError({"end": "Must be after start."})
        return data


class UsageAmountsSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost = money()


class UsageGroupSerializer(UsageAmountsSerializer):
    key = serializers.CharField(allow_null=True)


class UsageOutputSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    currency = serializers.CharField(default=settings.MONEY_CURRENCY)
    totals = UsageAmountsSerializer()
    group_by = serializers.CharField(required=False)
    groups = UsageGroupSerializer(many=True, required=False)


class UsageRecordOutputSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.model_id")
    end_user = serializers.CharField(source="end_user.external_id", allow_null=True, default=None)
    message = serializers.UUIDField(source="message_id")
    conversation = serializers.UUIDField(source="conversation_id")
    input_price_per_million = money()
    output_price_per_million = money()
    cost = money()

    class Meta:
        model = UsageRecord
        fields = [
            "id", "created_at", "model", "end_user", "conversation", "message", "outcome",
            "input_tokens", "output_tokens", "input_price_per_million",
            "output_price_per_million", "cost", "currency",
        ]  # fmt: skip


class AlertOutputSerializer(serializers.ModelSerializer):
    budget = serializers.UUIDField(source="budget_id")
    end_user = serializers.CharField(source="end_user.external_id", allow_null=True, default=None)
    spent_amount = money()
    limit_amount = money()

    class Meta:
        model = Alert
        fields = [
            "id", "kind", "budget", "end_user", "period_start", "spent_amount", "limit_amount",
            "created_at", "webhook_delivered_at",
        ]  # fmt: skip
