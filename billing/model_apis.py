"""GET /api/v1/models[/{id}]: the catalogue as tenants buy it, each model with its price in
force. Here, not in models_catalog: prices are billing's, and the catalogue imports no
billing code (the import contract in pyproject.toml)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.selectors import (
    foundation_model_get_active_with_price,
    foundation_model_list_with_prices,
)
from models_catalog.serializers import FoundationModelOutputSerializer


class FoundationModelListApi(APIView):
    dangerously_unscoped = "The catalogue is shared by every tenant: no tenant's data in it."

    @extend_schema(
        responses=FoundationModelOutputSerializer(many=True),
        operation_id="models_list",
        summary="Active models with their limits",
    )
    def get(self, request: Request) -> Response:
        models = foundation_model_list_with_prices()
        return Response(FoundationModelOutputSerializer(models, many=True).data)


class FoundationModelDetailApi(APIView):
    dangerously_unscoped = "The catalogue is shared by every tenant: no tenant's data in it."

    @extend_schema(
        responses=FoundationModelOutputSerializer,
        operation_id="models_retrieve",
        summary="One active model; accepts inference profile ids such as us.meta....",
    )
    def get(self, request: Request, model_id: str) -> Response:
        model = foundation_model_get_active_with_price(raw_model_id=model_id)
        return Response(FoundationModelOutputSerializer(model).data)
