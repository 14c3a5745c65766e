"""Budgets, quotas, usage and alerts for the calling tenant."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from billing.limits import (
    budget_create,
    budget_delete,
    budget_update,
    quota_create,
    quota_delete,
    quota_update,
)
from billing.models import Budget, ManagedBy, Quota
from billing.percentages import API_PLACES, percent_of
from billing.periods import period_bounds
from billing.selectors import (
    alert_list,
    budget_list,
    quota_list,
    usage_record_list,
    usage_totals,
)
from billing.serializers import (
    AlertOutputSerializer,
    BudgetInputSerializer,
    BudgetOutputSerializer,
    QuotaInputSerializer,
    QuotaOutputSerializer,
    UsageOutputSerializer,
    UsageQuerySerializer,
    UsageRecordOutputSerializer,
)
from billing.services import budget_state
from config.api_base import TenantScopedGenericAPIView
from config.openapi import error_response
from config.pagination import NewestFirstCursorPagination

OPERATOR_MANAGED = error_response("Set by the operator: read-only (`permission_denied`).")


def budget_view(budget: Budget, time_zone: str) -> dict[str, Any]:
    """A budget with its state this period. Per-end-user budgets have no single spend."""
    data: dict[str, Any] = {"spent": None, "reserved": None, "remaining": None}
    data["percent_used"] = None
    start, end = period_bounds(budget.period, timezone.now(), time_zone)
    data.update(period_start=start, period_end=end)
    if not budget.per_end_user:
        state = budget_state(budget, time_zone=time_zone)
        data.update(
            spent=state.spent,
            reserved=state.reserved,
            remaining=state.remaining,
            percent_used=percent_of(
                state.spent + state.reserved, budget.limit_amount, places=API_PLACES
            ),
        )
    for key, value in data.items():
        setattr(budget, key, value)
    return BudgetOutputSerializer(budget).data


class BudgetScopedView(TenantScopedGenericAPIView):
    lookup_url_kwarg = "budget_id"
    serializer_class = BudgetOutputSerializer

    def safely_get_queryset(self, tenant: Any) -> QuerySet[Budget]:
        return budget_list(tenant=tenant)


class BudgetListCreateApi(BudgetScopedView):
    pagination_class = NewestFirstCursorPagination

    @extend_schema(operation_id="budgets_list", summary="Budgets that apply to this tenant")
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        zone = request.tenant.time_zone
        return self.get_paginated_response([budget_view(budget, zone) for budget in page])

    @extend_schema(
        operation_id="budgets_create",
        request=BudgetInputSerializer,
        responses={201: BudgetOutputSerializer},
        summary="Add a budget for your end users or models (on top of the operator's)",
    )
    def post(self, request: Request) -> Response:
        serializer = BudgetInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        budget = budget_create(
            tenant=request.tenant, managed_by=ManagedBy.TENANT, **serializer.validated_data
        )
        return Response(
            budget_view(budget, request.tenant.time_zone), status=status.HTTP_201_CREATED
        )


class BudgetDetailApi(BudgetScopedView):
    @extend_schema(operation_id="budgets_retrieve", summary="One budget and its state")
    def get(self, request: Request, budget_id: str) -> Response:
        return Response(budget_view(self.get_object(), request.tenant.time_zone))

    @extend_schema(
        operation_id="budgets_update",
        request=BudgetInputSerializer,
        responses={200: BudgetOutputSerializer, 403: OPERATOR_MANAGED},
        summary="Change a budget you created",
    )
    def patch(self, request: Request, budget_id: str) -> Response:
        budget = self.get_object()
        serializer = BudgetInputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        budget = budget_update(
            budget=budget, managed_by=ManagedBy.TENANT, **serializer.validated_data
        )
        return Response(budget_view(budget, request.tenant.time_zone))

    @extend_schema(
        operation_id="budgets_destroy",
        responses={204: None, 403: OPERATOR_MANAGED},
        summary="Delete a budget you created",
    )
    def delete(self, request: Request, budget_id: str) -> Response:
        budget_delete(budget=self.get_object(), managed_by=ManagedBy.TENANT)
        return Response(status=status.HTTP_204_NO_CONTENT)


class QuotaScopedView(TenantScopedGenericAPIView):
    lookup_url_kwarg = "quota_id"
    serializer_class = QuotaOutputSerializer

    def safely_get_queryset(self, tenant: Any) -> QuerySet[Quota]:
        return quota_list(tenant=tenant)


class QuotaListCreateApi(QuotaScopedView):
    pagination_class = NewestFirstCursorPagination

    @extend_schema(operation_id="quotas_list", summary="Quotas that apply to this tenant")
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(QuotaOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="quotas_create",
        request=QuotaInputSerializer,
        responses={201: QuotaOutputSerializer},
        summary="Add a quota for your end users or models (on top of the operator's)",
    )
    def post(self, request: Request) -> Response:
        serializer = QuotaInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        quota = quota_create(
            tenant=request.tenant, managed_by=ManagedBy.TENANT, **serializer.validated_data
        )
        return Response(QuotaOutputSerializer(quota).data, status=status.HTTP_201_CREATED)


class QuotaDetailApi(QuotaScopedView):
    @extend_schema(operation_id="quotas_retrieve", summary="One quota")
    def get(self, request: Request, quota_id: str) -> Response:
        return Response(QuotaOutputSerializer(self.get_object()).data)

    @extend_schema(
        operation_id="quotas_update",
        request=QuotaInputSerializer,
        responses={200: QuotaOutputSerializer, 403: OPERATOR_MANAGED},
        summary="Change a quota you created",
    )
    def patch(self, request: Request, quota_id: str) -> Response:
        quota = self.get_object()
        serializer = QuotaInputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        quota = quota_update(quota=quota, managed_by=ManagedBy.TENANT, **serializer.validated_data)
        return Response(QuotaOutputSerializer(quota).data)

    @extend_schema(
        operation_id="quotas_destroy",
        responses={204: None, 403: OPERATOR_MANAGED},
        summary="Delete a quota you created",
    )
    def delete(self, request: Request, quota_id: str) -> Response:
        quota_delete(quota=self.get_object(), managed_by=ManagedBy.TENANT)
        return Response(status=status.HTTP_204_NO_CONTENT)


class UsageApi(TenantScopedGenericAPIView):
    serializer_class = UsageOutputSerializer

    def safely_get_queryset(self, tenant: Any) -> QuerySet:
        return usage_record_list(tenant=tenant)

    @extend_schema(
        operation_id="usage_totals",
        parameters=[UsageQuerySerializer],
        responses=UsageOutputSerializer,
        summary="Tokens and cost in a time range, optionally grouped",
    )
    def get(self, request: Request) -> Response:
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        now = timezone.now()
        start = query.validated_data.get("start") or period_bounds("month", now)[0]
        end = query.validated_data.get("end") or now
        totals = usage_totals(
            tenant=request.tenant,
            start=start,
            end=end,
            group_by=query.validated_data.get("group_by"),
        )
        return Response(UsageOutputSerializer(totals).data)


class UsageRecordListApi(TenantScopedGenericAPIView):
    serializer_class = UsageRecordOutputSerializer
    pagination_class = NewestFirstCursorPagination

    def safely_get_queryset(self, tenant: Any) -> QuerySet:
        return usage_record_list(tenant=tenant)

    @extend_schema(operation_id="usage_records_list", summary="The ledger, newest first")
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(UsageRecordOutputSerializer(page, many=True).data)


class AlertListApi(TenantScopedGenericAPIView):
    serializer_class = AlertOutputSerializer
    pagination_class = NewestFirstCursorPagination

    def safely_get_queryset(self, tenant: Any) -> QuerySet:
        return alert_list(tenant=tenant)

    @extend_schema(operation_id="alerts_list", summary="Budget alerts, newest first")
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(AlertOutputSerializer(page, many=True).data)
