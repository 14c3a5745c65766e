from __future__ import annotations

import uuid

from django.db import models


class Tenant(models.Model):
    """A customer company. Everything the API serves belongs to exactly one tenant."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    is_active = models.BooleanField(default=True)
    time_zone = models.CharField(
        max_length=64, default="UTC", help_text="Where budget days, weeks and months begin."
    )
    require_end_user = models.BooleanField(
        default=False,
        help_text="Every conversation must name an end user, so per-end-user budgets and "
        "quotas cannot be sidestepped by leaving it out.",
    )
    webhook_url = models.URLField(blank=True, help_text="Budget alerts are POSTed here.")
    webhook_secret = models.CharField(
        max_length=128, blank=True, help_text="Signs webhook bodies (HMAC-SHA256)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class ApiKey(models.Model):
    """A tenant's credential. Only a salted hash of the secret is kept; the secret is shown once."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=32, unique=True, help_text="Visible part of the key.")
    salt = models.CharField(max_length=64)
    secret_hash = models.CharField(max_length=128)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.tenant.slug})"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class EndUser(models.Model):
    """A person inside a tenant's product, named by the tenant's own id for them."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="end_users")
    external_id = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "external_id"], name="end_user_external_id_unique_per_tenant"
            )
        ]

    def __str__(self) -> str:
        return f"{self.external_id} ({self.tenant_id})"


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="conversations")
    model = models.ForeignKey(
        "models_catalog.FoundationModel", on_delete=models.PROTECT, related_name="conversations"
    )
    bedrock_model_id = models.CharField(
        max_length=120,
        help_text="What is sent to Bedrock as modelId: the model id or an inference profile id.",
    )
    end_user = models.ForeignKey(
        EndUser, null=True, blank=True, on_delete=models.SET_NULL, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    system_prompt = models.TextField(blank=True)
    system_prompt_token_count = models.PositiveIntegerField(default=0)
    # Null means "the model's default", so a catalogue change reaches old conversations.
    temperature = models.DecimalField(max_digits=3, decimal_places=2, null=True, blank=True)
    top_p = models.DecimalField(max_digits=3, decimal_places=2, null=True, blank=True)
    max_gen_len = models.PositiveIntegerField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    is_archived = models.BooleanField(default=False)
    ephemeral = models.BooleanField(
        default=False,
        help_text="Holds one call of the OpenAI-compatible surface made without `conversation`: "
        "never listed or served to the tenant, purged once its answer is final and old.",
    )
    # Sequence numbers of messages are handed out from here under a row lock.
    last_sequence = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="conversation_tenant_recent"),
            models.Index(
                fields=["tenant", "end_user", "-created_at"], name="conversation_tenant_end_user"
            ),
        ]

    def __str__(self) -> str:
        return str(self.id)


class MessageRole(models.TextChoices):
    USER = "user", "User"
    ASSISTANT = "assistant", "Assistant"


class MessageStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


IN_PROGRESS = (MessageStatus.QUEUED, MessageStatus.RUNNING)
"""An answer not final yet: a worker will still store it (or fail it)."""


class Message(models.Model):
    """One turn. History is append-only: content is written once, when it is final."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Denormalised from the conversation so tenant-scoped lookups need no join.
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="messages")
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    sequence = models.PositiveIntegerField()
    role = models.CharField(max_length=16, choices=MessageRole.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=MessageStatus.choices)
    token_count = models.PositiveIntegerField(
        null=True, blank=True, help_text="Tokens of the content as it is sent in prompts."
    )
    prompt_token_count = models.PositiveIntegerField(null=True, blank=True)
    generation_token_count = models.PositiveIntegerField(null=True, blank=True)
    stop_reason = models.CharField(max_length=32, blank=True)
    max_gen_len = models.PositiveIntegerField(null=True, blank=True)
    temperature = models.DecimalField(max_digits=3, decimal_places=2, null=True, blank=True)
    top_p = models.DecimalField(max_digits=3, decimal_places=2, null=True, blank=True)
    attempt_count = models.PositiveIntegerField(
        default=0, help_text="Generation attempts started (retries and redeliveries add one)."
    )
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # The database is the truth about work. A running answer's worker renews this lease
    # while it works; once it lapses the sweeper takes the answer back (requeue or fail).
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # When its task was last handed to the broker: a queued answer not claimed long after
    # was lost with the broker (or never enqueued) and is handed over again.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # Set while a queued answer waits, with no task of its own, for a running slot of its
    # tenant's share; the wake-up that hands it a slot clears it, so that two slots coming
    # free wake two answers, and answers whose task is still on its way are not woken.
    waiting_for_slot_since = models.DateTimeField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "sequence"], name="message_sequence_unique"
            )
        ]
        # The unique constraint's index on (conversation, sequence) serves history pages and
        # the newest-first context walk alike (B-tree indexes are read in both directions).
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="message_tenant_recent"),
            # "Is an answer in progress?" is asked on every new turn.
            models.Index(
                fields=["conversation"],
                condition=models.Q(status__in=["queued", "running"]),
                name="message_in_progress",
            ),
            # The sweeper's scan and the per-tenant cap on answers running at once.
            models.Index(
                fields=["tenant", "status"],
                condition=models.Q(status__in=["queued", "running"]),
                name="message_unfinished_by_tenant",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.conversation_id}#{self.sequence} {self.role}"
