"""Prices, budgets, quotas, reservations and the usage ledger.

Money is Decimal with settings.MONEY_DECIMAL_PLACES places, in USD. The ledger
(UsageRecord) is append-only and the record of truth; a budget's `spent_amount` is kept in
step with it inside the settling transaction, and open reservations are summed live.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


def money_field(**kwargs: object) -> models.DecimalField:
    return models.DecimalField(
        max_digits=settings.MONEY_MAX_DIGITS,
        decimal_places=settings.MONEY_DECIMAL_PLACES,
        **kwargs,
    )


class ManagedBy(models.TextChoices):
    OPERATOR = "operator", "Operator"
    TENANT = "tenant", "Tenant"


class ModelPrice(models.Model):
    """USD per 1,000,000 tokens from `effective_from` on; later rows supersede earlier ones."""

    model = models.ForeignKey(
        "models_catalog.FoundationModel", on_delete=models.PROTECT, related_name="prices"
    )
    input_price_per_million = money_field(validators=[MinValueValidator(0)])
    output_price_per_million = money_field(validators=[MinValueValidator(0)])
    currency = models.CharField(max_length=3, default=settings.MONEY_CURRENCY, editable=False)
    effective_from = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "effective_from"], name="one_price_per_model_and_instant"
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_id} from {self.effective_from:%Y-%m-%d %H:%M}"


class BudgetPeriod(models.TextChoices):
    DAY = "day", "Day"
    WEEK = "week", "Week (from Monday)"
    MONTH = "month", "Month"
    TOTAL = "total", "Total (never resets)"


class Budget(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(
        "conversations.Tenant", on_delete=models.CASCADE, related_name="budgets"
    )
    end_user = models.ForeignKey(
        "conversations.EndUser",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="budgets",
        help_text="Only this end user's calls (empty: every call of the tenant).",
    )
    model = models.ForeignKey(
        "models_catalog.FoundationModel",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="budgets",
        help_text="Only calls to this model (empty: every model).",
    )
    per_end_user = models.BooleanField(
        default=False,
        help_text="Each end user gets this budget separately (e.g. $0.50 a day per user).",
    )
    name = models.CharField(max_length=100, blank=True)
    period = models.CharField(max_length=8, choices=BudgetPeriod.choices)
    limit_amount = money_field(validators=[MinValueValidator(0)])
    soft_threshold_percent = models.PositiveSmallIntegerField(
        default=80, validators=[MinValueValidator(1), MaxValueValidator(100)]
    )
    is_hard = models.BooleanField(
        default=True, help_text="Hard: calls that could cross the limit are refused."
    )
    managed_by = models.CharField(
        max_length=8, choices=ManagedBy.choices, default=ManagedBy.OPERATOR
    )
    # Kept in step with the ledger by settlement, under this row's lock (not for per-end-user
    # budgets, whose spend is summed from that end user's ledger rows).
    period_start = models.DateTimeField(null=True, blank=True, editable=False)
    spent_amount = money_field(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant", "period", "created_at"]
        indexes = [models.Index(fields=["tenant"], name="budget_tenant")]

    def __str__(self) -> str:
        scope = self.name or self.get_period_display()
        return f"{self.tenant} · {scope} · {self.limit_amount} {settings.MONEY_CURRENCY}"


class Quota(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(
        "conversations.Tenant", on_delete=models.CASCADE, related_name="quotas"
    )
    end_user = models.ForeignKey(
        "conversations.EndUser",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="quotas",
        help_text="Applies to each call of this end user (empty: every call of the tenant).",
    )
    model = models.ForeignKey(
        "models_catalog.FoundationModel",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="quotas",
    )
    per_end_user = models.BooleanField(
        default=False, help_text="Each end user gets these limits separately."
    )
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_day = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent = models.PositiveIntegerField(
        null=True, blank=True, help_text="Answers queued or running at once."
    )
    managed_by = models.CharField(
        max_length=8, choices=ManagedBy.choices, default=ManagedBy.OPERATOR
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant", "created_at"]
        indexes = [models.Index(fields=["tenant"], name="quota_tenant")]

    def __str__(self) -> str:
        return f"{self.tenant} quota"


class ReservationStatus(models.TextChoices):
    OPEN = "open", "Open"
    SETTLED = "settled", "Settled"
    RELEASED = "released", "Released"


class Reservation(models.Model):
    """The worst-case cost of one answer, held against budgets until it settles."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(
        "conversations.Tenant", on_delete=models.PROTECT, related_name="reservations"
    )
    end_user = models.ForeignKey(
        "conversations.EndUser", null=True, blank=True, on_delete=models.SET_NULL
    )
    model = models.ForeignKey("models_catalog.FoundationModel", on_delete=models.PROTECT)
    # Money outlives messages: no cascade and no database constraint, so deleting a
    # conversation can never take an open reservation (and its charge) with it.
    message = models.OneToOneField(
        "conversations.Message",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="reservation",
    )
    conversation_id = models.UUIDField(null=True, blank=True)
    # The frozen call: exactly what the worker sends to Bedrock, on every attempt. Decided
    # and priced in the transaction that stores the turn; later edits never reach it. The
    # prompt is cleared when the reservation closes (the answer is then final).
    bedrock_model_id = models.CharField(max_length=120, blank=True)
    prompt = models.TextField(blank=True)
    temperature = models.DecimalField(max_digits=3, decimal_places=2, null=True, blank=True)
    top_p = models.DecimalField(max_digits=3, decimal_places=2, null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField()
    max_gen_len = models.PositiveIntegerField()
    input_price_per_million = money_field()
    output_price_per_million = money_field()
    amount = money_field()
    rate_token_counters = models.JSONField(
        default=list,
        blank=True,
        help_text="[key, tokens] of the token-quota windows counted, to refund unused tokens.",
    )
    status = models.CharField(
        max_length=8, choices=ReservationStatus.choices, default=ReservationStatus.OPEN
    )
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    close_reason = models.CharField(max_length=32, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["tenant", "created_at"],
                condition=models.Q(status="open"),
                name="reservation_open",
            ),
            # The cockpit's health of the last hour: a reservation closes in the transaction
            # that makes its answer final, so recent closings are the recent final answers.
            models.Index(fields=["closed_at"], name="reservation_closed_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.amount} {settings.MONEY_CURRENCY} for {self.message_id} ({self.status})"


class UsageRecord(models.Model):
    """One settled answer. Append-only; at most one per message (a database constraint)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(
        "conversations.Tenant", on_delete=models.PROTECT, related_name="usage_records"
    )
    end_user = models.ForeignKey(
        "conversations.EndUser", null=True, blank=True, on_delete=models.SET_NULL
    )
    conversation_id = models.UUIDField(help_text="Kept when the conversation is deleted.")
    message_id = models.UUIDField(unique=True)
    model = models.ForeignKey("models_catalog.FoundationModel", on_delete=models.PROTECT)
    input_tokens = models.PositiveIntegerField()
    output_tokens = models.PositiveIntegerField()
    input_price_per_million = money_field()
    output_price_per_million = money_field()
    cost = money_field()
    currency = models.CharField(max_length=3, default=settings.MONEY_CURRENCY)
    outcome = models.CharField(max_length=16, help_text="completed or cancelled")
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="usage_tenant_recent"),
            models.Index(fields=["end_user", "created_at"], name="usage_end_user_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.cost} {settings.MONEY_CURRENCY} · {self.message_id}"


class AlertKind(models.TextChoices):
    SOFT_THRESHOLD = "soft_threshold", "Soft threshold crossed"
    LIMIT_REACHED = "limit_reached", "Limit reached"
    # For operators: Bedrock reported more tokens than the reservation held. The tenant paid
    # the reservation; the provider ledger has what Bedrock billed.
    OVERRUN = "overrun", "Provider overrun"


OPERATOR_ALERT_KINDS = (AlertKind.OVERRUN,)


class Alert(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(
        "conversations.Tenant", on_delete=models.CASCADE, related_name="alerts"
    )
    budget = models.ForeignKey(
        Budget, null=True, blank=True, on_delete=models.CASCADE, related_name="alerts"
    )
    end_user = models.ForeignKey(
        "conversations.EndUser", null=True, blank=True, on_delete=models.SET_NULL
    )
    # "" for the whole budget, the end user's id for per-end-user budgets: a non-null key, so
    # the uniqueness below holds on every database (NULLs are distinct in unique indexes).
    scope_key = models.CharField(max_length=64, blank=True, default="")
    kind = models.CharField(max_length=16, choices=AlertKind.choices)
    period_start = models.DateTimeField()
    spent_amount = money_field()
    limit_amount = money_field()
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    webhook_delivered_at = models.DateTimeField(null=True, blank=True)
    webhook_attempts = models.PositiveIntegerField(default=0)
    webhook_last_error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The cockpit's recent alerts, of every kind and of one kind (overruns).
            models.Index(fields=["-created_at"], name="alert_recent"),
            models.Index(fields=["kind", "-created_at"], name="alert_kind_recent"),
        ]
        constraints = [
            # "Once per budget per period" is a constraint, not a hope.
            models.UniqueConstraint(
                fields=["budget", "scope_key", "kind", "period_start"],
                name="one_alert_per_budget_period",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} · {self.budget}"


class AttemptOutcome(models.TextChoices):
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"
    FAILED = "failed", "Failed (retried or final)"
    LOST = "lost", "Lost with its worker"


class ProviderAttempt(models.Model):
    """The provider ledger: one row per Bedrock call attempt, at what Bedrock bills us.

    Apart from tenant charges (UsageRecord): retries, failures, lost attempts and overruns
    cost us money the tenant is not charged, and operators see that difference here.
    Append-only; at most one row per attempt of an answer (a database constraint).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(
        "conversations.Tenant", on_delete=models.PROTECT, related_name="provider_attempts"
    )
    conversation_id = models.UUIDField(null=True, blank=True)
    message_id = models.UUIDField()
    attempt = models.PositiveIntegerField()
    model = models.ForeignKey("models_catalog.FoundationModel", on_delete=models.PROTECT)
    outcome = models.CharField(max_length=16, choices=AttemptOutcome.choices)
    error_code = models.CharField(max_length=64, blank=True)
    input_tokens = models.PositiveIntegerField()
    output_tokens = models.PositiveIntegerField()
    counts_reported = models.BooleanField(
        default=True,
        help_text="False when Bedrock's counts were never seen (a lost attempt): the counts "
        "are then the reservation's worst case, the most Bedrock can have billed.",
    )
    input_price_per_million = money_field()
    output_price_per_million = money_field()
    cost = money_field()
    currency = models.CharField(max_length=3, default=settings.MONEY_CURRENCY)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["message_id", "attempt"], name="one_provider_row_per_attempt"
            )
        ]
        indexes = [
            models.Index(fields=["tenant", "created_at"], name="provider_tenant_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.cost} {settings.MONEY_CURRENCY} · {self.message_id} attempt {self.attempt}"


# --- Daily rollups of the two ledgers (billing.rollups keeps them) -----------------------


class DailyCharge(models.Model):
    """The tenant-charge ledger (UsageRecord) summed by UTC day, tenant and model.

    Derived, never the truth: billing.rollups adds each ledger row in the transaction that
    writes it, and `manage.py rebuild_daily_rollups` recomputes every row from the ledger.
    The cockpit reads these, so its charts cost the same whatever the ledger's size.
    """

    day = models.DateField(help_text="UTC day of the ledger rows.")
    tenant = models.ForeignKey("conversations.Tenant", on_delete=models.PROTECT, related_name="+")
    model = models.ForeignKey(
        "models_catalog.FoundationModel", on_delete=models.PROTECT, related_name="+"
    )
    records = models.PositiveIntegerField(default=0, help_text="Answers charged.")
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost = money_field(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "tenant", "model"], name="one_daily_charge_per_tenant_model"
            )
        ]
        indexes = [models.Index(fields=["tenant", "day"], name="daily_charge_tenant")]

    def __str__(self) -> str:
        amount = f"{self.cost} {settings.MONEY_CURRENCY}"
        return f"{self.day} · {self.tenant_id} · {self.model_id}: {amount}"


class DailyEndUserCharge(models.Model):
    """Tenant charges summed by UTC day and end user, for a tenant's end users by spend.

    Kept with DailyCharge. Calls without an end user are not here: they are the tenant's
    DailyCharge less these. Deleting an end user deletes its rows, as its ledger rows then
    count as "no end user" (the ledger keeps them, without the end user).
    """

    day = models.DateField(help_text="UTC day of the ledger rows.")
    tenant = models.ForeignKey("conversations.Tenant", on_delete=models.PROTECT, related_name="+")
    end_user = models.ForeignKey(
        "conversations.EndUser", on_delete=models.CASCADE, related_name="+"
    )
    records = models.PositiveIntegerField(default=0, help_text="Answers charged.")
    cost = money_field(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["day", "end_user"], name="one_daily_end_user_charge")
        ]
        indexes = [models.Index(fields=["tenant", "day"], name="daily_end_user_charge_tenant")]

    def __str__(self) -> str:
        return f"{self.day} · {self.end_user_id}: {self.cost} {settings.MONEY_CURRENCY}"


class DailyProviderCost(models.Model):
    """The provider ledger (ProviderAttempt) summed by UTC day, tenant and model; kept like
    DailyCharge, in its own table so the two are never locked in one row (see
    billing.rollups for the lock order)."""

    day = models.DateField(help_text="UTC day of the attempts.")
    tenant = models.ForeignKey("conversations.Tenant", on_delete=models.PROTECT, related_name="+")
    model = models.ForeignKey(
        "models_catalog.FoundationModel", on_delete=models.PROTECT, related_name="+"
    )
    attempts = models.PositiveIntegerField(default=0)
    unpaid_attempts = models.PositiveIntegerField(
        default=0, help_text="Failed or lost attempts: no tenant pays for them."
    )
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost = money_field(default=0)
    unpaid_cost = money_field(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "tenant", "model"], name="one_daily_provider_cost_per_tenant_model"
            )
        ]
        indexes = [models.Index(fields=["tenant", "day"], name="daily_provider_tenant")]

    def __str__(self) -> str:
        amount = f"{self.cost} {settings.MONEY_CURRENCY}"
        return f"{self.day} · {self.tenant_id} · {self.model_id}: {amount}"
