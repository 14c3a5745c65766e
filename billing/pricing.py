"""Prices in force and the cost of tokens: Decimal all the way, quantised once."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db.models import OuterRef, QuerySet, Subquery
from django.utils import timezone
from rest_framework import status

from billing.models import ModelPrice
from config.errors import ApplicationError
from models_catalog.models import FoundationModel

TOKENS_PER_PRICE_UNIT = Decimal(1_000_000)


class ModelNotPricedError(ApplicationError):
    code = "model_not_priced"
    http_status = status.HTTP_503_SERVICE_UNAVAILABLE


def price_in_force(*, model: FoundationModel | int, at: datetime) -> ModelPrice:
    """The model's (or model pk's: no read of the model itself) price in force at `at`."""
    price = (
        ModelPrice.objects.filter(model=model, effective_from__lte=at)
        .order_by("-effective_from")
        .first()
    )
    if price is None:
        if not isinstance(model, FoundationModel):
            model = FoundationModel.objects.get(pk=model)
        raise ModelNotPricedError(
            f"{model.model_id} has no price in force, so its cost cannot be governed; "
            "an operator must set one."
        )
    return price


def price_in_force_annotate(
    models: QuerySet[FoundationModel], *, at: datetime | None = None
) -> QuerySet[FoundationModel]:
    """Each model with the price in force at `at` (now): input_price_per_million,
    output_price_per_million and price_effective_from, None where no price is set."""
    in_force = ModelPrice.objects.filter(
        model=OuterRef("pk"), effective_from__lte=at or timezone.now()
    ).order_by("-effective_from")
    return models.annotate(
        input_price_per_million=Subquery(in_force.values("input_price_per_million")[:1]),
        output_price_per_million=Subquery(in_force.values("output_price_per_million")[:1]),
        price_effective_from=Subquery(in_force.values("effective_from")[:1]),
    )


def token_cost(
    *, input_tokens: int, output_tokens: int, input_price: Decimal, output_price: Decimal
) -> Decimal:
    raw = (input_tokens * input_price + output_tokens * output_price) / TOKENS_PER_PRICE_UNIT
    return raw.quantize(settings.MONEY_QUANTUM, rounding=ROUND_HALF_UP)
