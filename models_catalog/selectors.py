from __future__ import annotations

from django.db.models import QuerySet

from config.errors import NotFoundError
from models_catalog.catalogue import resolve_model_id
from models_catalog.models import FoundationModel


def foundation_model_list_active() -> QuerySet[FoundationModel]:
    return FoundationModel.objects.filter(is_active=True)


def foundation_model_get_active(
    *, raw_model_id: str, models: QuerySet[FoundationModel] | None = None
) -> FoundationModel:
    """The active model that raw_model_id names (in any accepted spelling), or not_found.
    `models`: the active models to look in, annotated as the caller needs (billing's prices)."""
    resolved = resolve_model_id(raw_model_id)
    models = foundation_model_list_active() if models is None else models
    try:
        return models.get(model_id=resolved.model_id)
    except FoundationModel.DoesNotExist:
        raise NotFoundError(
            f"No active model {raw_model_id!r}. GET /api/v1/models lists the available ones.",
            code="model_not_found",
        ) from None
