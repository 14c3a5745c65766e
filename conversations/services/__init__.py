"""Writes (services) of the conversations app, one module per entity family."""

from conversations.services.tenants import (
    CreatedApiKey,
    api_key_authenticate,
    api_key_create,
    api_key_revoke,
    api_key_revoke_by_prefix,
    tenant_create,
    tenant_get_by_slug,
)

__all__ = [
    "CreatedApiKey",
    "api_key_authenticate",
    "api_key_create",
    "api_key_revoke",
    "api_key_revoke_by_prefix",
    "tenant_create",
    "tenant_get_by_slug",
]
