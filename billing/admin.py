"""The operators' admin for billing: prices, budgets, quotas, and the read-only records.

Permissions. Superusers can do everything these classes allow. Other staff get exactly the
Django model permissions they are given; a staff user given only the "view" permissions
(`billing.view_budget`, `billing.view_usagerecord`, `conversations.view_tenant`, ...) is a
read-only operator: every page opens, nothing has a Save button, and a change POST answers
403. tests/admin/test_permissions.py holds that promise.

What the admin never does, whoever is logged in:
- change or delete a price once it is in force (a price change is a new row, so no past
  charge is rewritten); a price not yet in force can still be deleted;
- add, change or delete ledger rows, reservations or alerts (they are the money's record);
- change a budget or quota that a tenant set through its API (shown, labelled, read-only).

Business rules live in billing.admin_services; these classes only wire forms to it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.widgets import RelatedFieldWidgetWrapper
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import F, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from billing.admin_services import (
    operator_budget_save,
    operator_limit_delete,
    operator_quota_save,
    tenant_list_with_month_spend,
)
from billing.models import (
    Alert,
    Budget,
    ManagedBy,
    ModelPrice,
    ProviderAttempt,
    Quota,
    Reservation,
    UsageRecord,
)
from billing.percentages import percent_of
from billing.pricing import price_in_force_annotate
from billing.reconciliation import provider_reconciliation
from billing.services import budget_state
from models_catalog.models import FoundationModel

BUDGET_FIELDS = [
    "name", "period", "limit_amount", "is_hard", "soft_threshold_percent",
    "model", "end_user", "per_end_user",
]  # fmt: skip
QUOTA_FIELDS = [
    "requests_per_minute", "tokens_per_minute", "tokens_per_day", "max_concurrent",
    "model", "end_user", "per_end_user",
]  # fmt: skip


def money(amount: Decimal | None) -> str:
    """An amount without the ten storage decimals: 12.5 -> "12.50", 0.0000042 kept."""
    if amount is None:
        return "—"
    normalized = amount.normalize()
    if -normalized.as_tuple().exponent <= 2:
        return f"{amount:.2f}"
    return f"{normalized:f}"


# --- Shared pieces -------------------------------------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records nobody edits in the admin: the ledger, reservations, alerts."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class LimitScopeForm(forms.ModelForm):
    """Budget and quota forms: one end user or each end user, and only the tenant's own."""

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        end_user, tenant = data.get("end_user"), data.get("tenant") or self.instance_tenant()
        if end_user is not None and data.get("per_end_user"):
            self.add_error("per_end_user", "Choose one end user or “each end user”, not both.")
        if end_user is not None and tenant is not None and end_user.tenant_id != tenant.pk:
            self.add_error("end_user", "This end user belongs to another tenant.")
        return data

    def instance_tenant(self) -> Any:
        return self.instance.tenant if self.instance.tenant_id else None


def _parent_tenant_id(request: HttpRequest) -> str | None:
    """The tenant whose change page is open (inlines are not told their parent)."""
    match = request.resolver_match
    return match.kwargs.get("object_id") if match else None


class OperatorLimitInlineMixin:
    """Inline budget and quota rows: only the tenant's own end users are offered (none on the
    add page, before there is a tenant), and no add/change links beside each select, which
    would not fit a table row."""

    formfield_overrides = {
        models.CharField: {"widget": forms.TextInput(attrs={"style": "width: 10em"})},
        models.ForeignKey: {"widget": forms.Select(attrs={"style": "max-width: 16em"})},
        models.DecimalField: {"widget": forms.NumberInput(attrs={"style": "width: 9em"})},
        models.IntegerField: {"widget": forms.NumberInput(attrs={"style": "width: 7em"})},
    }

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any):
        formfield = super().formfield_for_dbfield(db_field, request, **kwargs)
        if formfield is not None and isinstance(formfield.widget, RelatedFieldWidgetWrapper):
            widget = formfield.widget
            widget.can_add_related = widget.can_change_related = False
            widget.can_view_related = widget.can_delete_related = False
        return formfield

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any):
        if db_field.name == "end_user":
            tenant_id = _parent_tenant_id(request)
            end_users = db_field.related_model.objects.order_by("external_id")
            kwargs["queryset"] = (
                end_users.filter(tenant_id=tenant_id) if tenant_id else end_users.none()
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class OperatorLimitFormSet(BaseInlineFormSet):
    """Inline budgets and quotas are saved through the operator services."""

    def save_new(self, form: forms.ModelForm, commit: bool = True) -> Any:
        instance = super().save_new(form, commit=False)
        return _operator_save(instance) if commit else instance

    def save_existing(self, form: forms.ModelForm, obj: Any, commit: bool = True) -> Any:
        instance = form.save(commit=False)
        return _operator_save(instance, form.changed_data) if commit else instance

    def delete_existing(self, obj: Any, commit: bool = True) -> None:
        if commit:
            operator_limit_delete(limit=obj)


def _operator_save(instance: Budget | Quota, changed_fields: list[str] | None = None) -> Any:
    if isinstance(instance, Budget):
        return operator_budget_save(budget=instance, changed_fields=changed_fields)
    return operator_quota_save(quota=instance, changed_fields=changed_fields)


def budget_spent_this_period(budget: Budget) -> str:
    if budget.pk is None or budget._state.adding:
        return "—"
    if budget.per_end_user:
        return "per end user"
    state = budget_state(budget, time_zone=budget.tenant.time_zone)
    text = f"{money(state.spent)} {settings.MONEY_CURRENCY}"
    if state.reserved:
        text += f" + {money(state.reserved)} held"
    return text


# --- Inlines on the tenant page ------------------------------------------------------------


class OperatorBudgetInline(OperatorLimitInlineMixin, admin.TabularInline):
    model = Budget
    form = LimitScopeForm
    formset = OperatorLimitFormSet
    verbose_name = "budget set by the operator"
    verbose_name_plural = "Budgets set by the operator (enforced; the tenant cannot change them)"
    fields = [*BUDGET_FIELDS, "spent_this_period"]
    readonly_fields = ["spent_this_period"]
    extra = 0

    def get_queryset(self, request: HttpRequest) -> QuerySet[Budget]:
        queryset = super().get_queryset(request).select_related("tenant", "model", "end_user")
        return queryset.filter(managed_by=ManagedBy.OPERATOR)

    @admin.display(description="spent this period")
    def spent_this_period(self, budget: Budget) -> str:
        return budget_spent_this_period(budget)


class TenantBudgetInline(admin.TabularInline):
    model = Budget
    verbose_name = "budget set by the tenant"
    verbose_name_plural = "Budgets set by the tenant through its API (read-only here)"
    fields = [*BUDGET_FIELDS, "spent_this_period", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Budget]:
        queryset = super().get_queryset(request).select_related("tenant", "model", "end_user")
        return queryset.filter(managed_by=ManagedBy.TENANT)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="spent this period")
    def spent_this_period(self, budget: Budget) -> str:
        return budget_spent_this_period(budget)


class OperatorQuotaInline(OperatorLimitInlineMixin, admin.TabularInline):
    model = Quota
    form = LimitScopeForm
    formset = OperatorLimitFormSet
    verbose_name = "quota set by the operator"
    verbose_name_plural = "Quotas set by the operator (enforced; the tenant cannot change them)"
    fields = QUOTA_FIELDS
    extra = 0

    def get_queryset(self, request: HttpRequest) -> QuerySet[Quota]:
        queryset = super().get_queryset(request).select_related("model", "end_user")
        return queryset.filter(managed_by=ManagedBy.OPERATOR)


class TenantQuotaInline(admin.TabularInline):
    model = Quota
    verbose_name = "quota set by the tenant"
    verbose_name_plural = "Quotas set by the tenant through its API (read-only here)"
    fields = [*QUOTA_FIELDS, "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Quota]:
        queryset = super().get_queryset(request).select_related("model", "end_user")
        return queryset.filter(managed_by=ManagedBy.TENANT)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


TENANT_LIMIT_INLINES = [
    OperatorBudgetInline,
    TenantBudgetInline,
    OperatorQuotaInline,
    TenantQuotaInline,
]


# --- Spend columns of the tenant list --------------------------------------------------


def spend_bar(*, spend: Decimal, limit: Decimal | None, soft_threshold: int | None) -> str:
    """A small bar with the percentage of the monthly budget spent (red once reached)."""
    percent = percent_of(spend, limit)
    if percent is None:
        return format_html(
            '<span title="{}">no budget</span>', "No tenant-wide monthly hard budget"
        )
    if percent >= 100:
        colour = "#ba2121"
    elif percent >= (soft_threshold or 80):
        colour = "#e39b0b"
    else:
        colour = "#2e8540"
    return format_html(
        '<span class="spend-meter" title="{} of {} {} this month (UTC)" '
        'style="display:inline-flex;align-items:center;gap:6px;white-space:nowrap">'
        '<span style="display:inline-block;width:64px;height:10px;border-radius:3px;'
        'background:#ddd;overflow:hidden">'
        '<span style="display:block;height:100%;width:{}%;background:{}"></span></span>'
        '<span class="spend-percent">{}%</span></span>',
        money(spend),
        money(limit),
        settings.MONEY_CURRENCY,
        min(percent, Decimal(100)),
        colour,
        percent,
    )


class TenantSpendColumnsMixin:
    """Tenant list columns: this month's ledger spend (UTC month) against the tenant-wide
    monthly hard budget, each sortable (the queryset carries them as annotations)."""

    spend_columns = ["month_spend_column", "month_limit_column", "month_used_column"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return tenant_list_with_month_spend(queryset=super().get_queryset(request))

    @admin.display(description="spent this month (UTC)", ordering="month_spend")
    def month_spend_column(self, tenant: Any) -> str:
        return f"{money(tenant.month_spend)} {settings.MONEY_CURRENCY}"

    # No budget sorts as the largest limit and as the lowest use, on every database.
    @admin.display(
        description="monthly hard budget", ordering=F("month_limit").asc(nulls_last=True)
    )
    def month_limit_column(self, tenant: Any) -> str:
        return (
            "—"
            if tenant.month_limit is None
            else f"{money(tenant.month_limit)} {settings.MONEY_CURRENCY}"
        )

    @admin.display(description="budget used", ordering=F("month_percent").asc(nulls_first=True))
    def month_used_column(self, tenant: Any) -> str:
        return spend_bar(
            spend=tenant.month_spend,
            limit=tenant.month_limit,
            soft_threshold=tenant.month_soft_threshold,
        )


# --- Registered admins ---------------------------------------------------------------------


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Price history: new rows only. A row in force is never changed, so no charge that used
    it can be rewritten; a row not yet in force may be deleted (a typo before it applies)."""

    list_display = [
        "model", "input_price_per_million", "output_price_per_million", "currency",
        "effective_from", "in_force_now", "created_at",
    ]  # fmt: skip
    list_filter = ["model"]
    ordering = ["-effective_from", "model"]
    date_hierarchy = "effective_from"
    list_select_related = ["model"]
    fields = ["model", "input_price_per_million", "output_price_per_million", "effective_from"]

    def get_readonly_fields(self, request: HttpRequest, obj: ModelPrice | None = None) -> Any:
        return [*self.fields, "currency", "created_at"] if obj is not None else []

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {"effective_from": timezone.now(), **super().get_changeform_initial_data(request)}

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.effective_from <= timezone.now():
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        # Bulk delete would not ask row by row whether a price is already in force.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    @admin.display(boolean=True, description="in force")
    def in_force_now(self, price: ModelPrice) -> bool:
        return price.effective_from <= timezone.now()


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    form = LimitScopeForm
    list_display = [
        "tenant", "name", "period", "limit_column", "is_hard", "soft_threshold_percent",
        "scope_column", "managed_by_column", "updated_at",
    ]  # fmt: skip
    list_filter = ["managed_by", "period", "is_hard", "tenant"]
    search_fields = ["tenant__slug", "name"]
    list_select_related = ["tenant", "model", "end_user"]
    autocomplete_fields = ["tenant"]
    fields = ["tenant", *BUDGET_FIELDS]

    def get_readonly_fields(self, request: HttpRequest, obj: Budget | None = None) -> Any:
        extra = ["managed_by", "spent_this_period", "created_at", "updated_at"]
        return ["tenant", *extra] if obj is not None else []

    def get_fields(self, request: HttpRequest, obj: Budget | None = None) -> Any:
        if obj is None:
            return self.fields
        return [*self.fields, "managed_by", "spent_this_period", "created_at", "updated_at"]

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any):
        if db_field.name == "end_user":
            # Checked against the tenant in LimitScopeForm; listed by tenant for operators.
            kwargs["queryset"] = db_field.related_model.objects.select_related("tenant").order_by(
                "tenant__slug", "external_id"
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.managed_by != ManagedBy.OPERATOR:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.managed_by != ManagedBy.OPERATOR:
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        # Bulk delete would skip the check that spares the tenants' own budgets.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def save_model(self, request: HttpRequest, obj: Budget, form: Any, change: bool) -> None:
        operator_budget_save(budget=obj, changed_fields=form.changed_data if change else None)

    def delete_model(self, request: HttpRequest, obj: Budget) -> None:
        operator_limit_delete(limit=obj)

    @admin.display(description="limit", ordering="limit_amount")
    def limit_column(self, budget: Budget) -> str:
        return f"{money(budget.limit_amount)} {settings.MONEY_CURRENCY}"

    @admin.display(description="scope")
    def scope_column(self, limit: Budget | Quota) -> str:
        return limit_scope_text(limit)

    @admin.display(description="managed by", ordering="managed_by")
    def managed_by_column(self, limit: Budget | Quota) -> str:
        return managed_by_text(limit)

    @admin.display(description="spent this period")
    def spent_this_period(self, budget: Budget) -> str:
        return budget_spent_this_period(budget)


def limit_scope_text(limit: Budget | Quota) -> str:
    if limit.end_user_id is not None:
        who = f"end user {limit.end_user.external_id}"
    elif limit.per_end_user:
        who = "each end user"
    else:
        who = "tenant-wide"
    return f"{who} · {limit.model.model_id}" if limit.model_id is not None else who


def managed_by_text(limit: Budget | Quota) -> str:
    if limit.managed_by == ManagedBy.TENANT:
        return "tenant (read-only here)"
    return "operator"


@admin.register(Quota)
class QuotaAdmin(BudgetAdmin):
    list_display = [
        "tenant", "requests_per_minute", "tokens_per_minute", "tokens_per_day",
        "max_concurrent", "scope_column", "managed_by_column", "updated_at",
    ]  # fmt: skip
    list_filter = ["managed_by", "tenant"]
    search_fields = ["tenant__slug"]
    fields = ["tenant", *QUOTA_FIELDS]

    def get_readonly_fields(self, request: HttpRequest, obj: Quota | None = None) -> Any:
        return ["tenant", "managed_by", "created_at", "updated_at"] if obj is not None else []

    def get_fields(self, request: HttpRequest, obj: Quota | None = None) -> Any:
        if obj is None:
            return self.fields
        return [*self.fields, "managed_by", "created_at", "updated_at"]

    def save_model(self, request: HttpRequest, obj: Quota, form: Any, change: bool) -> None:
        operator_quota_save(quota=obj, changed_fields=form.changed_data if change else None)


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    """The ledger: append-only, written only by settlement."""

    list_display = [
        "created_at", "tenant", "model", "end_user", "input_tokens", "output_tokens",
        "cost_column", "outcome", "message_id",
    ]  # fmt: skip
    list_filter = ["tenant", "model", "outcome", "created_at"]
    date_hierarchy = "created_at"
    search_fields = ["=message_id", "=conversation_id", "end_user__external_id"]
    list_select_related = ["tenant", "model", "end_user"]
    # The ledger grows without bound; counting all of it on every page is not worth it.
    show_full_result_count = False

    @admin.display(description=f"cost ({settings.MONEY_CURRENCY})", ordering="cost")
    def cost_column(self, record: UsageRecord) -> str:
        return money(record.cost)


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at", "tenant", "model", "end_user", "status", "amount_column",
        "prompt_tokens", "max_gen_len", "closed_at", "close_reason",
    ]  # fmt: skip
    list_filter = ["status", "tenant", "model"]
    date_hierarchy = "created_at"
    search_fields = ["=message_id", "=conversation_id"]
    list_select_related = ["tenant", "model", "end_user"]
    show_full_result_count = False

    @admin.display(description=f"held ({settings.MONEY_CURRENCY})", ordering="amount")
    def amount_column(self, reservation: Reservation) -> str:
        return money(reservation.amount)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Reservation]:
        return super().get_queryset(request).order_by("-created_at")


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at", "tenant", "kind", "budget_link", "spent_amount", "limit_amount",
        "period_start", "webhook_delivered_at", "webhook_attempts",
    ]  # fmt: skip
    list_filter = ["kind", "tenant"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant", "budget__tenant"]

    @admin.display(description="budget")
    def budget_link(self, alert: Alert) -> str:
        if alert.budget_id is None:  # an operator alert (overrun): no budget behind it
            return "—"
        url = reverse("admin:billing_budget_change", args=[alert.budget_id])
        return format_html('<a href="{}">{}</a>', url, alert.budget)


@admin.register(ProviderAttempt)
class ProviderAttemptAdmin(ReadOnlyAdmin):
    """The provider ledger, and its reconciliation with tenant charges."""

    list_display = [
        "created_at", "tenant", "model", "attempt", "outcome", "error_code", "input_tokens",
        "output_tokens", "counts_reported", "cost_column", "message_id",
    ]  # fmt: skip
    list_filter = ["outcome", "tenant", "model", "counts_reported"]
    date_hierarchy = "created_at"
    search_fields = ["=message_id", "=conversation_id"]
    list_select_related = ["tenant", "model"]
    show_full_result_count = False

    @admin.display(description=f"cost ({settings.MONEY_CURRENCY})", ordering="cost")
    def cost_column(self, attempt: ProviderAttempt) -> str:
        return money(attempt.cost)

    def get_urls(self) -> list[Any]:
        reconciliation = self.admin_site.admin_view(self.reconciliation_view)
        return [
            path("reconciliation/", reconciliation, name="billing_provider_reconciliation"),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        link = reverse("admin:billing_provider_reconciliation")
        extra_context = {
            **(extra_context or {}),
            "subtitle": format_html('<a href="{}">Provider cost against tenant charges</a>', link),
        }
        return super().changelist_view(request, extra_context)

    def reconciliation_view(self, request: HttpRequest) -> Any:
        if not self.has_view_permission(request):
            raise PermissionDenied
        today = timezone.now().astimezone(UTC).date()
        error = ""
        try:
            start = date.fromisoformat(request.GET.get("start") or today.replace(day=1).isoformat())
            end = date.fromisoformat(request.GET.get("end") or today.isoformat())
        except ValueError:
            error = "Dates must look like 2026-12-01; showing this month."
            start, end = today.replace(day=1), today
        report = provider_reconciliation(
            start=datetime.combine(start, time.min, tzinfo=UTC),
            end=datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC),
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Provider cost against tenant charges",
            "report": report,
            "totals": report.totals,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "error": error,
        }
        return TemplateResponse(
            request, "admin/billing/providerattempt/reconciliation.html", context
        )


# --- The model catalogue, with each model's price in force -----------------------------------
# Registered here, not in models_catalog: prices are billing's, and the catalogue imports no
# billing code (the import contract in pyproject.toml). Its admin pages stay where they were.


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
        return price_in_force_annotate(super().get_queryset(request))

    @admin.display(
        description=f"input {settings.MONEY_CURRENCY} / 1M tokens",
        ordering="input_price_per_million",
    )
    def input_price_column(self, model: Any) -> str:
        return _per_million(model.input_price_per_million)

    @admin.display(
        description=f"output {settings.MONEY_CURRENCY} / 1M tokens",
        ordering="output_price_per_million",
    )
    def output_price_column(self, model: Any) -> str:
        return _per_million(model.output_price_per_million)

    @admin.display(description="prices")
    def price_history(self, model: FoundationModel) -> str:
        url = reverse("admin:billing_modelprice_changelist")
        return format_html('<a href="{}?model__id__exact={}">history</a>', url, model.pk)
