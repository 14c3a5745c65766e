"""The demo tenant the run command sets up, so a new user can call the API at once."""

from __future__ import annotations

import os
from pathlib import Path

from conversations.models import Tenant
from conversations.services import api_key_authenticate, api_key_create

DEMO_TENANT_SLUG = "demo"


def demo_api_key_ensure(*, key_file: Path) -> str:
    """Return a working API key of the demo tenant, creating tenant and key when needed.

    The database keeps only the key's hash, so the laptop keeps the secret in key_file
    (owner-only permissions, under the git-ignored var/) to print it again on the next run.
    """
    tenant, _ = Tenant.objects.get_or_create(
        slug=DEMO_TENANT_SLUG, defaults={"name": "Demo tenant"}
    )
    if not tenant.is_active:
        tenant.is_active = True
        tenant.save(update_fields=["is_active", "updated_at"])
    if key_file.exists():
        saved_key = key_file.read_text(encoding="utf-8").strip()
        api_key = api_key_authenticate(raw_key=saved_key)
        if api_key is not None and api_key.tenant_id == tenant.pk:
            return saved_key
    created = api_key_create(tenant=tenant, name="demo (run command)")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    file_descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(file_descriptor, "w", encoding="utf-8") as handle:
        handle.write(created.secret + "\n")
    return created.secret
