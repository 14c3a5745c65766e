from __future__ import annotations

from dataclasses import asdict
from decimal import Decimal

from django.db import transaction

from models_catalog.catalogue import CATALOGUE, CatalogueEntry
from models_catalog.models import FoundationModel, PromptFamily
from models_catalog.tokenizer import estimate_llama2_tokens, llama2_ratio_update


def catalogue_load(
    *, entries: tuple[CatalogueEntry, ...] = CATALOGUE, model_class: type = FoundationModel
) -> tuple[int, int]:
    """Insert missing models and refresh the limits of known ones. Returns (created, updated).

    The active flag is the operator's and is never overwritten. model_class lets the data
    migration pass its historical model.
    """
    created = updated = 0
    with transaction.atomic():
        for sort_order, entry in enumerate(entries):
            values = asdict(entry)
            model_id = values.pop("model_id")
            _, was_created = model_class.objects.update_or_create(
                model_id=model_id, defaults={**values, "sort_order": sort_order}
            )
            created += was_created
            updated += not was_created
    return created, updated


def llama2_token_ratio_observe(
    *, model: FoundationModel, prompt: str, reported_prompt_tokens: int
) -> Decimal:
    """Learn a Llama 2 model's tokens-per-byte ratio from the count Bedrock reported.

    The row lock makes concurrent observations apply one after another instead of the last
    writer silently discarding the others. Llama 3 counts are exact: nothing to learn.
    """
    if model.family != PromptFamily.LLAMA2:
        return model.llama2_token_ratio
    with transaction.atomic():
        locked = FoundationModel.objects.select_for_update().get(pk=model.pk)
        predicted = estimate_llama2_tokens(prompt, locked.llama2_token_ratio)
        locked.llama2_token_ratio = llama2_ratio_update(
            current_ratio=locked.llama2_token_ratio,
            predicted_tokens=predicted,
            actual_tokens=reported_prompt_tokens,
        )
        locked.save(update_fields=["llama2_token_ratio", "updated_at"])
    model.llama2_token_ratio = locked.llama2_token_ratio
    return locked.llama2_token_ratio
