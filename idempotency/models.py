"""Idempotency records: one per (tenant, Idempotency-Key), claimed by an INSERT.

The unique constraint is the claim: on PostgreSQL a second INSERT of the same key waits on
the index until the first transaction ends, then fails (the key is taken) or succeeds (the
first rolled back); on SQLite the IMMEDIATE transactions serialise the same way. The claim
is inserted in the transaction that makes the request's writes, so a key is taken exactly
when those writes commit, never without them.
"""

from __future__ import annotations

import uuid

from django.db import models


class IdempotencyStatus(models.TextChoices):
    # The writes are committed; the final response is not known yet (an answer is pending).
    IN_PROGRESS = "in_progress", "In progress"
    COMPLETED = "completed", "Completed"


class IdempotencyRecord(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(
        "conversations.Tenant", on_delete=models.CASCADE, related_name="idempotency_records"
    )
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(
        max_length=64, help_text="SHA-256 of the method, path and body of the first request."
    )
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=300)
    status = models.CharField(max_length=16, choices=IdempotencyStatus.choices)
    resource_id = models.UUIDField(
        null=True, blank=True, help_text="What the request created (an answer, a conversation)."
    )
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    # JSON as text, not a JSONField: PostgreSQL's jsonb reorders keys, and a replay must be
    # byte for byte the response the first request got.
    response_body = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "key"], name="idempotency_key_per_tenant")
        ]
        indexes = [models.Index(fields=["expires_at"], name="idempotency_expiry")]

    def __str__(self) -> str:
        return f"{self.key} ({self.tenant_id})"
