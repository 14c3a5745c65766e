from __future__ import annotations

from decimal import Decimal

import pytest

from models_catalog.catalogue import CATALOGUE, resolve_model_id
from models_catalog.models import FoundationModel
from models_catalog.services import catalogue_load
from tests.support.api import assert_error

# shared/BEDROCK.md, "Models": id, family, context window.
EXPECTED_MODELS = {
    "meta.llama2-13b-chat-v1": ("llama2", 4096),
    "meta.llama2-70b-chat-v1": ("llama2", 4096),
    "meta.llama3-8b-instruct-v1:0": ("llama3", 8192),
    "meta.llama3-70b-instruct-v1:0": ("llama3", 8192),
    "meta.llama3-1-8b-instruct-v1:0": ("llama3", 128_000),
    "meta.llama3-1-70b-instruct-v1:0": ("llama3", 128_000),
    "meta.llama3-1-405b-instruct-v1:0": ("llama3", 128_000),
    "meta.llama3-2-1b-instruct-v1:0": ("llama3", 128_000),
    "meta.llama3-2-3b-instruct-v1:0": ("llama3", 128_000),
    "meta.llama3-2-11b-instruct-v1:0": ("llama3", 128_000),
    "meta.llama3-2-90b-instruct-v1:0": ("llama3", 128_000),
    "meta.llama3-3-70b-instruct-v1:0": ("llama3", 128_000),
}


@pytest.mark.django_db
def test_migration_loaded_every_bedrock_meta_text_model_with_its_limits() -> None:
    loaded = {
        model.model_id: (model.family, model.context_window)
        for model in FoundationModel.objects.all()
    }
    assert loaded == EXPECTED_MODELS


@pytest.mark.django_db
def test_every_model_has_bedrock_parameter_defaults() -> None:
    for model in FoundationModel.objects.all():
        assert model.max_gen_len_cap == 2048
        assert model.default_max_gen_len == 512
        assert str(model.default_temperature) == "0.50"
        assert str(model.default_top_p) == "0.90"
        assert model.is_active
    vision = set(
        FoundationModel.objects.filter(accepts_images=True).values_list("model_id", flat=True)
    )
    assert vision == {"meta.llama3-2-11b-instruct-v1:0", "meta.llama3-2-90b-instruct-v1:0"}


@pytest.mark.django_db
def test_reloading_the_catalogue_is_idempotent_and_keeps_the_operators_active_flag() -> None:
    FoundationModel.objects.filter(model_id="meta.llama2-13b-chat-v1").update(
        is_active=False, context_window=3000
    )
    created, updated = catalogue_load()
    assert (created, updated) == (0, len(CATALOGUE))
    model = FoundationModel.objects.get(model_id="meta.llama2-13b-chat-v1")
    assert model.is_active is False
    assert model.context_window == 4096
    assert FoundationModel.objects.count() == len(EXPECTED_MODELS)


@pytest.mark.parametrize(
    ("raw", "model_id", "invocation_id"),
    [
        ("meta.llama3-1-70b-instruct-v1:0", "meta.llama3-1-70b-instruct-v1:0",
         "meta.llama3-1-70b-instruct-v1:0"),
        ("us.meta.llama3-1-70b-instruct-v1:0", "meta.llama3-1-70b-instruct-v1:0",
         "us.meta.llama3-1-70b-instruct-v1:0"),
        ("eu.meta.llama3-2-1b-instruct-v1:0", "meta.llama3-2-1b-instruct-v1:0",
         "eu.meta.llama3-2-1b-instruct-v1:0"),
        ("apac.meta.llama3-2-3b-instruct-v1:0", "meta.llama3-2-3b-instruct-v1:0",
         "apac.meta.llama3-2-3b-instruct-v1:0"),
        ("meta.llama3-1-70b-instruct-v10", "meta.llama3-1-70b-instruct-v1:0",
         "meta.llama3-1-70b-instruct-v1:0"),
        ("meta.llama2-70b-chat-v1", "meta.llama2-70b-chat-v1", "meta.llama2-70b-chat-v1"),
    ],
)  # fmt: skip
def test_model_id_spellings_resolve(raw: str, model_id: str, invocation_id: str) -> None:
    resolved = resolve_model_id(raw)
    assert (resolved.model_id, resolved.invocation_id) == (model_id, invocation_id)


def test_models_endpoint_lists_active_models_with_limits(owner_client) -> None:
    FoundationModel.objects.filter(model_id="meta.llama2-13b-chat-v1").update(is_active=False)
    response = owner_client.get("/api/v1/models")
    assert response.status_code == 200
    listed = {item["id"]: item for item in response.json()}
    assert set(listed) == set(EXPECTED_MODELS) - {"meta.llama2-13b-chat-v1"}
    assert listed["meta.llama3-1-405b-instruct-v1:0"] == {
        "id": "meta.llama3-1-405b-instruct-v1:0",
        "name": "Llama 3.1 405B Instruct",
        "family": "llama3",
        "context_window": 128000,
        "max_gen_len_cap": 2048,
        "default_max_gen_len": 512,
        "default_temperature": 0.5,
        "default_top_p": 0.9,
        "accepts_images": False,
        "price": {  # shared/BEDROCK.md, per 1M tokens
            "input_per_million_tokens": "5.3200000000",
            "output_per_million_tokens": "16.0000000000",
            "currency": "USD",
            "effective_from": "2024-01-01T00:00:00Z",
        },
    }


def test_every_catalogue_model_has_its_default_price(owner_client) -> None:
    from billing.default_prices import DEFAULT_PRICES

    listed = {item["id"]: item["price"] for item in owner_client.get("/api/v1/models").json()}
    assert set(listed) == set(DEFAULT_PRICES)
    for model_id, (input_price, output_price) in DEFAULT_PRICES.items():
        assert Decimal(listed[model_id]["input_per_million_tokens"]) == input_price
        assert Decimal(listed[model_id]["output_per_million_tokens"]) == output_price


def test_models_endpoint_shows_the_price_in_force_not_a_future_one(owner_client) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from billing.models import ModelPrice

    model = FoundationModel.objects.get(model_id="meta.llama3-8b-instruct-v1:0")
    ModelPrice.objects.create(
        model=model,
        input_price_per_million=Decimal("0.25"),
        output_price_per_million=Decimal("0.50"),
        effective_from=timezone.now() - timedelta(hours=1),
    )
    ModelPrice.objects.create(
        model=model,
        input_price_per_million=Decimal("9"),
        output_price_per_million=Decimal("9"),
        effective_from=timezone.now() + timedelta(days=1),
    )
    price = owner_client.get("/api/v1/models/meta.llama3-8b-instruct-v1:0").json()["price"]
    assert price["input_per_million_tokens"] == "0.2500000000"
    assert price["output_per_million_tokens"] == "0.5000000000"


@pytest.mark.parametrize(
    "spelling",
    ["meta.llama3-1-70b-instruct-v1:0", "us.meta.llama3-1-70b-instruct-v1:0",
     "meta.llama3-1-70b-instruct-v1%3A0"],
)  # fmt: skip
def test_model_detail_accepts_every_spelling(owner_client, spelling: str) -> None:
    response = owner_client.get(f"/api/v1/models/{spelling}")
    assert response.status_code == 200, response.content
    assert response.json()["id"] == "meta.llama3-1-70b-instruct-v1:0"


def test_unknown_or_inactive_model_is_404(owner_client) -> None:
    assert_error(owner_client.get("/api/v1/models/meta.llama9-x"), 404, "model_not_found")
    FoundationModel.objects.filter(model_id="meta.llama2-13b-chat-v1").update(is_active=False)
    assert_error(owner_client.get("/api/v1/models/meta.llama2-13b-chat-v1"), 404, "model_not_found")
