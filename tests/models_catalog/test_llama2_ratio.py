from __future__ import annotations

from decimal import Decimal

import pytest

from models_catalog.models import FoundationModel
from models_catalog.services import llama2_token_ratio_observe
from models_catalog.tokenizer import estimate_llama2_tokens

pytestmark = pytest.mark.django_db

PROMPT = "<s>[INST] " + "A plain English question about the weather today. " * 20 + "[/INST]"


def llama2_model() -> FoundationModel:
    return FoundationModel.objects.get(model_id="meta.llama2-70b-chat-v1")


def test_estimate_corrects_itself_from_reported_counts_and_never_drops_below_them() -> None:
    model = llama2_model()
    assert model.llama2_token_ratio == Decimal(1)
    # English runs near 0.25-0.3 tokens per byte: many reports pull the ratio down slowly.
    reported = len(PROMPT.encode()) * 3 // 10
    for _ in range(60):
        llama2_token_ratio_observe(model=model, prompt=PROMPT, reported_prompt_tokens=reported)
    learned = llama2_model().llama2_token_ratio
    assert learned < Decimal("0.7")
    assert estimate_llama2_tokens(PROMPT, learned) >= reported  # never under the truth seen

    # A denser prompt than expected lifts the ratio at once.
    dense_report = estimate_llama2_tokens(PROMPT, learned) + 50
    llama2_token_ratio_observe(model=model, prompt=PROMPT, reported_prompt_tokens=dense_report)
    lifted = llama2_model().llama2_token_ratio
    assert lifted > learned
    assert estimate_llama2_tokens(PROMPT, lifted) >= dense_report


def test_llama3_models_learn_nothing() -> None:
    model = FoundationModel.objects.get(model_id="meta.llama3-8b-instruct-v1:0")
    llama2_token_ratio_observe(model=model, prompt=PROMPT, reported_prompt_tokens=1)
    assert FoundationModel.objects.get(pk=model.pk).llama2_token_ratio == Decimal(1)
