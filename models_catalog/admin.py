"""The model catalogue in the operators' admin, with each model's price in force.

Prices are billing's (`billing.ModelPrice`, edited in its own admin, new rows only); this
app reads them through its selector and links to them by URL name, so it imports no billing
code.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.apps import apps
from django.contrib import admin
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import format_html

from models_catalog.models import FoundationModel


def _with_price_in_force(
    models: QuerySet[FoundationModel],
) -> QuerySet[FoundationModel]:
    price_model = apps.get_model("billing", "ModelPrice")
    in_force = price_model.objects.filter(
        model=OuterRef("pk"), effective_from__lte=timezone.now()
    ).order_by("-effective_from")
    return models.annotate(
        input_price_per_million=Subquery(in_force.values("input_price_per_million")[:1]),
        output_price_per_million=Subquery(in_force.values("output_price_per_million")[:1]),
    )


def _per_million(amount: Decimal | None) -> str:
    return "—" if amount is None else f"{amount.normalize():f}"


@admin.register(FoundationModel)
class FoundationModelAdmin(admin.ModelAdmin):
    list_display = [
        "model_id", "name", "family", "context_window", "max_gen_len_cap",
        "input_price_column", "output_price_column", "price_history", "is_active",
    ]  # fmt: skip
    list_filter = ["family", "is_active"]
    search_fields = ["model_id", "name"]
    list_editable = ["is_active"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[FoundationModel]:
        # Every model, active or not, with the price in force now (the API's selector
        # lists active models only).
        return _with_price_in_force(super().get_queryset(request))

    @admin.display(description="input USD / 1M tokens", ordering="input_price_per_million")
    def input_price_column(self, model: Any) -> str:
        return _per_million(model.input_price_per_million)

    @admin.display(description="output USD / 1M tokens", ordering="output_price_per_million")
    def output_price_column(self, model: Any) -> str:
        return _per_million(model.output_price_per_million)

    @admin.display(description="prices")
    def price_history(self, model: FoundationModel) -> str:
        try:
            url = reverse("admin:billing_modelprice_changelist")
        except NoReverseMatch:  # billing's admin is not installed
            return ""
        return format_html('<a href="{}?model__id__exact={}">history</a>', url, model.pk)
