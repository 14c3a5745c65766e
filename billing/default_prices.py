"""Default prices per 1,000,000 tokens (USD), from shared/BEDROCK.md. Prices are data:
operators change them in the admin, effective-dated, and never rewrite past charges."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

DEFAULT_PRICES_EFFECTIVE_FROM = datetime(2024, 1, 1, tzinfo=UTC)

DEFAULT_PRICES: dict[str, tuple[Decimal, Decimal]] = {
    "meta.llama2-13b-chat-v1": (Decimal("0.75"), Decimal("1.00")),
    "meta.llama2-70b-chat-v1": (Decimal("0.75"), Decimal("1.00")),
    "meta.llama3-8b-instruct-v1:0": (Decimal("0.30"), Decimal("0.60")),
    "meta.llama3-70b-instruct-v1:0": (Decimal("2.65"), Decimal("3.50")),
    "meta.llama3-1-8b-instruct-v1:0": (Decimal("0.22"), Decimal("0.22")),
    "meta.llama3-1-70b-instruct-v1:0": (Decimal("0.99"), Decimal("2.99")),
    "meta.llama3-1-405b-instruct-v1:0": (Decimal("5.32"), Decimal("16.00")),
    "meta.llama3-2-1b-instruct-v1:0": (Decimal("0.10"), Decimal("0.10")),
    "meta.llama3-2-3b-instruct-v1:0": (Decimal("0.15"), Decimal("0.15")),
    "meta.llama3-2-11b-instruct-v1:0": (Decimal("0.16"), Decimal("0.16")),
    "meta.llama3-2-90b-instruct-v1:0": (Decimal("0.72"), Decimal("0.72")),
    "meta.llama3-3-70b-instruct-v1:0": (Decimal("0.72"), Decimal("0.72")),
}


def default_prices_load(*, model_class: type, price_class: type) -> int:
    """Add the default price of each catalogue model that has none yet. Returns how many."""
    created = 0
    for model in model_class.objects.filter(model_id__in=DEFAULT_PRICES):
        if price_class.objects.filter(model=model).exists():
            continue
        input_price, output_price = DEFAULT_PRICES[model.model_id]
        price_class.objects.create(
            model=model,
            input_price_per_million=input_price,
            output_price_per_million=output_price,
            effective_from=DEFAULT_PRICES_EFFECTIVE_FROM,
        )
        created += 1
    return created
