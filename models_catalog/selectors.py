from __future__ import annotations

from django.apps import apps
from django.db.models import OuterRef, QuerySet, Subquery
from django.utils import timezone

from config.errors import NotFoundError
from models_catalog.catalogue import resolve_model_id
from models_catalog.models import FoundationModel


def foundation_model_list_active() -> QuerySet[FoundationModel]:
    return FoundationModel.objects.filter(is_active=True)


def foundation_model_list_with_prices() -> QuerySet[FoundationModel]:
    """Active models with the price in force now (billing's table, named by app label so
    this app does not import billing)."""
    price_model = apps.get_model("billing", "ModelPrice")
    in_force = price_model.objects.filter(
        model=OuterRef("pk"), effective_from__lte=timezone.now()
    ).order_by("-effective_from")
    return foundation_model_list_active().annotate(
        input_price_per_million=Subquery(in_force.values("input_price_per_million")[:1]),
        output_price_per_million=Subquery(in_force.values("output_price_per_million")[:1]),
        price_effective_from=Subquery(in_force.values("effective_from")[:1]),
    )


def foundation_model_get_active(*, raw_model_id: str) -> FoundationModel:
    """The active model that raw_model_id names (in any accepted spelling), or not_found."""
    resolved = resolve_model_id(raw_model_id)
    try:
        return foundation_model_list_with_prices().get(model_id=resolved.model_id)
    except FoundationModel.DoesNotExist:
        raise NotFoundError(
            f"No active model {raw_model_id!r}. GET /api/v1/models lists the available ones.",
            code="model_not_found",
        ) from None
