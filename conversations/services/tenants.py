"""Writes for tenants and API keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify

from config.errors import ApplicationError, ConflictError, NotFoundError
from config.fair_share import remember_key_tenant
from conversations.api_keys import generate_key, secret_matches, split_key
from conversations.models import ApiKey, Tenant

# Hashing a made-up secret for unknown prefixes keeps the time of a miss like that of a hit.
_UNKNOWN_KEY_SALT = "0" * 32
_UNKNOWN_KEY_HASH = "0" * 64


@dataclass(frozen=True)
class CreatedApiKey:
    api_key: ApiKey
    secret: str
    """The whole key to give the client: shown once, never stored."""


def tenant_create(*, slug: str, name: str = "") -> Tenant:
    if slugify(slug) != slug or not slug:
        raise ApplicationError(
            f"Tenant slug {slug!r} must be lowercase letters, digits, hyphens or underscores.",
            code="invalid_slug",
        )
    with transaction.atomic():
        if Tenant.objects.filter(slug=slug).exists():
            raise ConflictError(
                f"A tenant with slug {slug!r} already exists.", code="tenant_exists"
            )
        return Tenant.objects.create(slug=slug, name=name or slug)


def tenant_get_by_slug(*, slug: str) -> Tenant:
    try:
        return Tenant.objects.get(slug=slug)
    except Tenant.DoesNotExist:
        raise NotFoundError(f"No tenant with slug {slug!r}.") from None


def api_key_create(*, tenant: Tenant, name: str = "") -> CreatedApiKey:
    generated = generate_key()
    api_key = ApiKey.objects.create(
        tenant=tenant,
        name=name,
        prefix=generated.prefix,
        salt=generated.salt,
        secret_hash=generated.secret_hash,
    )
    return CreatedApiKey(api_key=api_key, secret=generated.full_key)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    # Conditional update: revoking twice keeps the first revocation time.
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


def api_key_revoke_by_prefix(*, prefix: str) -> ApiKey:
    try:
        api_key = ApiKey.objects.get(prefix=prefix)
    except ApiKey.DoesNotExist:
        raise NotFoundError(f"No API key with prefix {prefix!r}.") from None
    return api_key_revoke(api_key=api_key)


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The active key (with its active tenant) that raw_key proves, or None."""
    parts = split_key(raw_key)
    if parts is None:
        return None
    prefix, secret = parts
    api_key = ApiKey.objects.select_related("tenant").filter(prefix=prefix).first()
    if api_key is None:
        secret_matches(secret, salt=_UNKNOWN_KEY_SALT, secret_hash=_UNKNOWN_KEY_HASH)
        return None
    if not secret_matches(secret, salt=api_key.salt, secret_hash=api_key.secret_hash):
        return None
    if api_key.is_revoked or not api_key.tenant.is_active:
        return None
    _api_key_touch(api_key=api_key)
    remember_key_tenant(prefix, api_key.tenant_id)
    return api_key


def _api_key_touch(*, api_key: ApiKey) -> None:
    """Record use, at most once a minute per key, so busy keys don't write on every request."""
    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.API_KEY_LAST_USED_RESOLUTION_SECONDS)
    if api_key.last_used_at is not None and api_key.last_used_at >= stale_before:
        return  # the row just read says so: no statement at all (on SQLite, none takes the lock)
    ApiKey.objects.filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale_before), pk=api_key.pk
    ).update(last_used_at=now)
