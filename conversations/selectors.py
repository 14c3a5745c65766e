"""Reads that are more than one filter()."""

from __future__ import annotations

from django.db.models import QuerySet

from conversations.models import Conversation, Message, Tenant


def conversation_list(
    *, tenant: Tenant, end_user_external_id: str | None = None, archived: bool | None = None
) -> QuerySet[Conversation]:
    # Ephemeral conversations hold OpenAI-surface calls without `conversation`: the tenant
    # stored nothing there, so they never show (their ledger entries do).
    conversations = Conversation.objects.filter(tenant=tenant, ephemeral=False).select_related(
        "model", "end_user", "tenant"
    )
    if end_user_external_id is not None:
        conversations = conversations.filter(end_user__external_id=end_user_external_id)
    if archived is not None:
        conversations = conversations.filter(is_archived=archived)
    return conversations


def message_list(*, tenant: Tenant) -> QuerySet[Message]:
    return Message.objects.filter(tenant=tenant, conversation__ephemeral=False)
