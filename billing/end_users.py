"""An end user by the tenant's id for them, created on first sight: the one get-or-create.

EndUser is conversations' model, but the function lives here, in the lower layer: billing
needs it too (a budget or quota may name an end user who has not called yet), and billing may
not import conversations (the layers contract in pyproject.toml). Conversations, the OpenAI
API and billing's limits all call this one.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps


def end_user_get_or_create(*, tenant: Any, external_id: str) -> Any:
    """The tenant's EndUser named `external_id`, created when it is new."""
    end_user_model = apps.get_model("conversations", "EndUser")
    end_user, _ = end_user_model.objects.get_or_create(tenant=tenant, external_id=external_id)
    return end_user
