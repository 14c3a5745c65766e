"""Prices in force and the cost of tokens: Decimal all the way, quantised once."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from rest_framework import status

from billing.models import ModelPrice
from config.errors import ApplicationError
from models_catalog.models import FoundationModel

TOKENS_PER_PRICE_UNIT = Decimal(1_000_000)


class ModelNotPricedError(ApplicationError):
    code = "model_not_priced"
    http_status = status.HTTP_503_SERVICE_UNAVAILABLE


def price_in_force(*, model: FoundationModel, at: datetime) -> ModelPrice:
    price = (
        ModelPrice.objects.filter(model=model, effective_from__lte=at)
        .order_by("-effective_from")
        .first()
    )
    if price is None:
        raise ModelNotPricedError(
            f"{model.model_id} has no price in force, so its cost cannot be governed; "
            "an operator must set one."
        )
    return price


def token_cost(
    *, input_tokens: int, output_tokens: int, input_price: Decimal, output_price: Decimal
) -> Decimal:
    raw = (input_tokens * input_price + output_tokens * output_price) / TOKENS_PER_PRICE_UNIT
    return raw.quantize(settings.MONEY_QUANTUM, rounding=ROUND_HALF_UP)
