"""The one scoped base for tenant data behind the API.

Views implement safely_get_queryset(tenant); get_queryset() is not theirs to override, so a
new endpoint cannot forget the tenant filter. Another tenant's object is simply not in the
queryset, so it answers 404, never 403. It lives in config so every app's API can use it;
the tenant is whatever authentication put on request.tenant.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.db.models import Model, QuerySet
from rest_framework import generics


class TenantScopedMixin:
    request: Any

    @property
    def tenant(self) -> Model:
        return self.request.tenant

    def safely_get_queryset(self, tenant: Model) -> QuerySet:
        raise NotImplementedError(f"{type(self).__name__} must implement safely_get_queryset")

    def get_queryset(self) -> QuerySet:
        if getattr(self, "swagger_fake_view", False):
            # Schema generation has no request tenant; an empty queryset of the right model.
            tenant_model = apps.get_model("conversations", "Tenant")
            return self.safely_get_queryset(tenant_model(pk=0)).none()
        return self.safely_get_queryset(self.tenant)


class TenantScopedGenericAPIView(TenantScopedMixin, generics.GenericAPIView):
    pass
