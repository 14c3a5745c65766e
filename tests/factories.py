"""Rows as the services write them, for tests to start from: tenants, catalogue entries,
stored messages, ledger rows and staff users."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import Permission, User
from django.db.models import F
from django.utils import timezone

from billing.models import ModelPrice, UsageRecord
from conversations.context import message_token_count
from conversations.models import Conversation, Message, MessageStatus, Tenant
from conversations.services import tenant_create
from models_catalog.models import FoundationModel

LLAMA3 = "meta.llama3-1-8b-instruct-v1:0"
PASSWORD = "correct horse battery staple"
# Every model an operator looks at in the admin.
OPERATOR_MODELS = [
    ("conversations", "tenant"),
    ("conversations", "apikey"),
    ("billing", "budget"),
    ("billing", "quota"),
    ("billing", "modelprice"),
    ("billing", "usagerecord"),
    ("billing", "reservation"),
    ("billing", "alert"),
    ("billing", "providerattempt"),
    ("models_catalog", "foundationmodel"),
]


def make_tenant(slug: str, **fields: object) -> Tenant:
    tenant = tenant_create(slug=slug, name=f"{slug.title()} Inc.")
    if fields:
        Tenant.objects.filter(pk=tenant.pk).update(**fields)
        tenant.refresh_from_db()
    return tenant


def tiny_model(
    family: str = "llama3", *, context_window: int = 200, cap: int = 50
) -> FoundationModel:
    """A catalogue entry with a small window, so trimming boundaries are easy to reach."""
    model = FoundationModel.objects.create(
        model_id=f"test.{family}-tiny-v1:0",
        name=f"Tiny {family}",
        family=family,
        context_window=context_window,
        max_gen_len_cap=cap,
        default_max_gen_len=min(cap, 16),
    )
    ModelPrice.objects.create(
        model=model,
        input_price_per_million=Decimal("1.00"),
        output_price_per_million=Decimal("2.00"),
        effective_from=datetime(2024, 1, 1, tzinfo=UTC),
    )
    return model


def stored_message(conversation: Conversation, role: str, content: str) -> Message:
    """A completed message written as the services write them (count at write time)."""
    Conversation.objects.filter(pk=conversation.pk).update(last_sequence=F("last_sequence") + 1)
    conversation.refresh_from_db(fields=["last_sequence"])
    return Message.objects.create(
        tenant_id=conversation.tenant_id,
        conversation=conversation,
        sequence=conversation.last_sequence,
        role=role,
        content=content,
        status=MessageStatus.COMPLETED,
        token_count=message_token_count(conversation.model, content),
        completed_at=timezone.now(),
    )


def ledger_entry(tenant: Any, cost: str, *, at: datetime | None = None) -> UsageRecord:
    """A settled answer as the ledger holds it (what settlement writes, minus the answer)."""
    return UsageRecord.objects.create(
        tenant=tenant,
        conversation_id=uuid.uuid4(),
        message_id=uuid.uuid4(),
        model=FoundationModel.objects.get(model_id=LLAMA3),
        input_tokens=100,
        output_tokens=100,
        input_price_per_million=Decimal("0.22"),
        output_price_per_million=Decimal("0.22"),
        cost=Decimal(cost),
        outcome="completed",
        created_at=at or timezone.now(),
    )


def staff_user(username: str, *, actions: tuple[str, ...]) -> User:
    """A staff user (not a superuser) with these permissions on every operator model."""
    user = User.objects.create_user(username, password=PASSWORD, is_staff=True)
    codenames = [f"{action}_{model}" for action in actions for _, model in OPERATOR_MODELS]
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user
