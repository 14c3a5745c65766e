"""Tenants and API keys in the operators' admin.

An API key's secret exists only in the response that creates it: the add page calls
`api_key_create` and answers with a page that shows the secret once (not a redirect with a
flash message, which would carry it through the session or a cookie). The database keeps
only its salted hash. Revoking is an action that calls `api_key_revoke`.

Staff given only "view" permissions see these pages read-only (see billing/admin.py). A
tenant's page ends with its spend by day and model, end users and models by spend, budgets
and alerts (billing/admin_cockpit.py).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.text import slugify

from billing.admin import TENANT_LIMIT_INLINES, TenantSpendColumnsMixin
from billing.admin_cockpit import tenant_cockpit_context
from conversations.models import ApiKey, Tenant
from conversations.services import api_key_create, api_key_revoke


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    fields = ["name", "prefix", "status", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A key is added on its own page, which shows the secret; see ApiKeyAdmin.
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="status")
    def status(self, api_key: ApiKey) -> str:
        return "revoked" if api_key.is_revoked else "active"


class TenantForm(forms.ModelForm):
    def clean_slug(self) -> str:
        # The rule tenant_create applies: API keys and URLs name tenants by this slug.
        slug = self.cleaned_data["slug"]
        if slugify(slug) != slug:
            raise forms.ValidationError(
                "Use lowercase letters, digits, hyphens or underscores, e.g. "
                f"“{slugify(slug) or 'acme'}”."
            )
        return slug


@admin.register(Tenant)
class TenantAdmin(TenantSpendColumnsMixin, admin.ModelAdmin):
    form = TenantForm
    list_display = ["slug", "name", "is_active", *TenantSpendColumnsMixin.spend_columns]
    list_display_links = ["slug", "name"]
    list_filter = ["is_active"]
    search_fields = ["slug", "name"]
    fields = [
        "name", "slug", "is_active", "time_zone", "require_end_user", "webhook_url",
        "webhook_secret", "api_keys",
    ]  # fmt: skip
    readonly_fields = ["api_keys"]
    inlines = [ApiKeyInline, *TENANT_LIMIT_INLINES]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        # The tenant's spend, end users and models by spend, budgets and alerts, below the
        # form (billing.admin_cockpit decides what this staff user may see).
        extra_context = extra_context or {}
        if self.get_object(request, object_id) is not None:
            extra_context.update(tenant_cockpit_context(request, object_id))
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="API keys")
    def api_keys(self, tenant: Tenant) -> str:
        if tenant.pk is None:
            return "Save the tenant first; then create its keys here."
        listing = reverse("admin:conversations_apikey_changelist")
        create = reverse("admin:conversations_apikey_add")
        return format_html(
            '<a href="{}?tenant={}" class="addlink">Create an API key</a> &nbsp; '
            '<a href="{}?tenant__id__exact={}">Revoke or rename keys</a>',
            create,
            tenant.pk,
            listing,
            tenant.pk,
        )


class ApiKeyCreateForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ["tenant", "name"]

    def clean_tenant(self) -> Tenant:
        tenant = self.cleaned_data["tenant"]
        if not tenant.is_active:
            raise forms.ValidationError("This tenant is inactive; its keys would not work.")
        return tenant


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix", "tenant", "name", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["tenant", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "tenant__slug"]
    list_select_related = ["tenant"]
    actions = ["revoke_keys"]
    add_form = ApiKeyCreateForm
    created_template = "admin/conversations/apikey/created.html"

    def get_form(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return ["tenant", "name"]
        return ["tenant", "name", "prefix", "created_at", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return []
        # revoked_at too: un-revoking by clearing a date is not a thing; revoke is an action.
        return ["tenant", "prefix", "created_at", "last_used_at", "revoked_at"]

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any):
        if db_field.name == "tenant":
            kwargs["queryset"] = Tenant.objects.filter(is_active=True)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        created = api_key_create(tenant=form.cleaned_data["tenant"], name=obj.name)
        # The admin goes on with `obj` (history entry, response): make it the stored key.
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(created.api_key, field.attname))
        obj._state.adding, obj._state.db = False, created.api_key._state.db
        obj.created_secret = created.secret  # type: ignore[attr-defined]

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        # The secret is rendered straight into this response and kept nowhere else.
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "API key created",
            "api_key": obj,
            "secret": obj.created_secret,  # type: ignore[attr-defined]
            "tenant_url": reverse("admin:conversations_tenant_change", args=[obj.tenant_id]),
            "api_key_url": reverse("admin:conversations_apikey_change", args=[obj.pk]),
        }
        return TemplateResponse(request, self.created_template, context)

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for api_key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(api_key=api_key)
            revoked += 1
        self.message_user(
            request,
            f"Revoked {revoked} API key{'s' if revoked != 1 else ''}; they stop working now.",
            messages.SUCCESS,
        )
