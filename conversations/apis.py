"""Thin views: validate input, call a service, serialize the result."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api_base import TenantScopedGenericAPIView
from config.pagination import NewestFirstCursorPagination
from conversations.models import ApiKey, Tenant
from conversations.serializers import (
    ApiKeyCreatedOutputSerializer,
    ApiKeyCreateInputSerializer,
    ApiKeyOutputSerializer,
    TenantOutputSerializer,
)
from conversations.services import api_key_create, api_key_revoke


class TenantMeApi(APIView):
    dangerously_unscoped = "Serialises request.tenant, the caller's own tenant; reads nothing else."

    @extend_schema(responses=TenantOutputSerializer, summary="The tenant this API key belongs to")
    def get(self, request: Request) -> Response:
        return Response(TenantOutputSerializer(request.tenant).data)


class ApiKeyListCreateApi(TenantScopedGenericAPIView):
    serializer_class = ApiKeyOutputSerializer
    pagination_class = NewestFirstCursorPagination

    def safely_get_queryset(self, tenant: Tenant) -> QuerySet[ApiKey]:
        return ApiKey.objects.filter(tenant=tenant)

    @extend_schema(
        operation_id="api_keys_list",
        summary="List this tenant's API keys (secrets are never shown again)",
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(ApiKeyOutputSerializer(page, many=True).data)

    @extend_schema(
        request=ApiKeyCreateInputSerializer,
        responses={201: ApiKeyCreatedOutputSerializer},
        operation_id="api_keys_create",
        summary="Create an API key for this tenant; the secret is in the answer, once",
    )
    def post(self, request: Request) -> Response:
        serializer = ApiKeyCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        created = api_key_create(tenant=request.tenant, name=serializer.validated_data["name"])
        data = ApiKeyCreatedOutputSerializer(created.api_key).data
        data["key"] = created.secret
        return Response(data, status=status.HTTP_201_CREATED)


class ApiKeyDetailApi(TenantScopedGenericAPIView):
    serializer_class = ApiKeyOutputSerializer
    lookup_url_kwarg = "api_key_id"

    def safely_get_queryset(self, tenant: Tenant) -> QuerySet[ApiKey]:
        return ApiKey.objects.filter(tenant=tenant)

    @extend_schema(operation_id="api_keys_retrieve", summary="One API key of this tenant")
    def get(self, request: Request, api_key_id: str) -> Response:
        return Response(ApiKeyOutputSerializer(self.get_object()).data)


class ApiKeyRevokeApi(TenantScopedGenericAPIView):
    serializer_class = ApiKeyOutputSerializer
    lookup_url_kwarg = "api_key_id"

    def safely_get_queryset(self, tenant: Tenant) -> QuerySet[ApiKey]:
        return ApiKey.objects.filter(tenant=tenant)

    @extend_schema(
        request=None, operation_id="api_keys_revoke", summary="Revoke an API key (idempotent)"
    )
    def post(self, request: Request, api_key_id: str) -> Response:
        api_key = api_key_revoke(api_key=self.get_object())
        return Response(ApiKeyOutputSerializer(api_key).data)
