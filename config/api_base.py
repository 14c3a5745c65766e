"""The one scoped base for tenant data behind the API, and the list of its escape hatches.

Views implement safely_get_queryset(tenant); get_queryset() and get_object() are not theirs
to override, so a new endpoint cannot forget the tenant filter. Another tenant's object is
simply not in the queryset, so it answers 404, never 403. It lives in config so every app's
API can use it; the tenant is whatever authentication put on request.tenant.

The rule holds by construction: a subclass that overrides an unsafe hook is refused when
its module is imported. A view that cannot build its data from safely_get_queryset says so
with `dangerously_unscoped = "why it is safe"` and is named in DANGEROUSLY_UNSCOPED_VIEWS,
the one list a reviewer reads. tests/security/test_tenancy_routes.py walks every route under
/api/ and /v1/ and refuses a view that is neither scoped nor listed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Model, QuerySet
from rest_framework import generics

# What a scoped view must not define: each one can hand out rows without the tenant filter.
UNSAFE_HOOKS = ("get_queryset", "get_object", "queryset")

# Views that build no tenant-scoped queryset (each carries `dangerously_unscoped`, the reason
# it is safe). Adding one here is a security review: say in the view why no other tenant's
# rows can reach its answer.
DANGEROUSLY_UNSCOPED_VIEWS = frozenset(
    {
        "conversations.apis.TenantMeApi",
        "conversations.sse.message_stream",
        "billing.model_apis.FoundationModelListApi",
        "billing.model_apis.FoundationModelDetailApi",
        "openai_api.apis.ChatCompletionsApi",
        "openai_api.apis.ModelListApi",
        "openai_api.apis.ModelDetailApi",
    }
)

# Views under /api/ that answer without an API key: what they show is the same for everyone.
DANGEROUSLY_PUBLIC_VIEWS = frozenset(
    {
        "drf_spectacular.views.SpectacularAPIView",
        "drf_spectacular.views.SpectacularSwaggerView",
    }
)

ViewFunction = TypeVar("ViewFunction", bound=Callable[..., Any])


def dotted_name(view: Any) -> str:
    return f"{view.__module__}.{view.__qualname__}"


def _check_listed(view: Any) -> None:
    reason = getattr(view, "dangerously_unscoped", None)
    if not isinstance(reason, str) or not reason.strip():
        raise ImproperlyConfigured(
            f"{dotted_name(view)}: dangerously_unscoped must say why the view is safe."
        )
    if dotted_name(view) not in DANGEROUSLY_UNSCOPED_VIEWS:
        raise ImproperlyConfigured(
            f"{dotted_name(view)} is dangerously unscoped but not in "
            "config.api_base.DANGEROUSLY_UNSCOPED_VIEWS: add it there, for review."
        )


def dangerously_unscoped(reason: str) -> Callable[[ViewFunction], ViewFunction]:
    """Mark a function view that filters by tenant by hand; it must be listed above."""

    def mark(view: ViewFunction) -> ViewFunction:
        view.dangerously_unscoped = reason  # type: ignore[attr-defined]
        _check_listed(view)
        return view

    return mark


def _defined_by(cls: type, name: str) -> type | None:
    return next((klass for klass in cls.__mro__ if name in klass.__dict__), None)


class TenantScopedMixin:
    request: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "dangerously_unscoped" in cls.__dict__:
            _check_listed(cls)
            return
        # Where each hook comes from, on the whole MRO: ours, or DRF's (which calls ours). A
        # mixin placed before the scoped base cannot slip a get_queryset in either.
        safe_owners = (None, TenantScopedMixin, generics.GenericAPIView)
        overridden = [hook for hook in UNSAFE_HOOKS if _defined_by(cls, hook) not in safe_owners]
        if overridden:
            raise ImproperlyConfigured(
                f"{dotted_name(cls)} overrides {', '.join(overridden)}: implement "
                "safely_get_queryset(tenant) instead, or name it in "
                "config.api_base.DANGEROUSLY_UNSCOPED_VIEWS with dangerously_unscoped."
            )

    @property
    def tenant(self) -> Model:
        return self.request.tenant

    def safely_get_queryset(self, tenant: Model) -> QuerySet:
        raise NotImplementedError(f"{type(self).__name__} must implement safely_get_queryset")

    def get_queryset(self) -> QuerySet:
        if getattr(self, "swagger_fake_view", False):
            # Schema generation has no request tenant; an empty queryset of the right model.
            tenant_model = apps.get_model(settings.TENANT_MODEL)
            return self.safely_get_queryset(tenant_model(pk=0)).none()
        return self.safely_get_queryset(self.tenant)


class TenantScopedGenericAPIView(TenantScopedMixin, generics.GenericAPIView):
    pass
