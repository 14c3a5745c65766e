from __future__ import annotations

from dataclasses import asdict

from django.db import transaction

from models_catalog.catalogue import CATALOGUE, CatalogueEntry
from models_catalog.models import FoundationModel


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
