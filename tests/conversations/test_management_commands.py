from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from conversations.models import ApiKey, Tenant
from conversations.services import api_key_authenticate


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_create_tenant_then_key_prints_the_secret_alone_on_the_last_line() -> None:
    run("create_tenant", "acme", "--name", "Acme Corp")
    assert Tenant.objects.get(slug="acme").name == "Acme Corp"

    output = run("create_api_key", "acme", "--name", "backend")
    secret = output.strip().splitlines()[-1]
    api_key = api_key_authenticate(raw_key=secret)
    assert api_key is not None
    assert api_key.tenant.slug == "acme"
    assert api_key.name == "backend"


@pytest.mark.django_db
def test_create_tenant_refuses_a_duplicate_slug() -> None:
    run("create_tenant", "acme")
    with pytest.raises(CommandError, match="already exists"):
        run("create_tenant", "acme")
    assert Tenant.objects.filter(slug="acme").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("slug", ["Acme", "has space", "ümlaut", ""])
def test_create_tenant_refuses_a_bad_slug(slug: str) -> None:
    with pytest.raises(CommandError, match="slug"):
        run("create_tenant", slug)
    assert not Tenant.objects.exists()


@pytest.mark.django_db
def test_create_api_key_for_unknown_or_inactive_tenant_fails() -> None:
    with pytest.raises(CommandError, match="No tenant"):
        run("create_api_key", "nobody")
    run("create_tenant", "sleepy")
    Tenant.objects.filter(slug="sleepy").update(is_active=False)
    with pytest.raises(CommandError, match="inactive"):
        run("create_api_key", "sleepy")
    assert not ApiKey.objects.exists()


@pytest.mark.django_db
def test_revoke_api_key_by_prefix() -> None:
    run("create_tenant", "acme")
    secret = run("create_api_key", "acme").strip().splitlines()[-1]
    prefix = secret.split(".")[0]
    output = run("revoke_api_key", prefix)
    assert "Revoked" in output
    assert api_key_authenticate(raw_key=secret) is None
    with pytest.raises(CommandError, match="No API key"):
        run("revoke_api_key", "lk_doesnotexist")
