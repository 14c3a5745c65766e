from __future__ import annotations

import stat
from pathlib import Path

import pytest

from conversations.models import ApiKey
from conversations.services import api_key_authenticate, api_key_revoke


@pytest.mark.django_db
def test_demo_key_is_created_once_and_reused(tmp_path: Path) -> None:
    from conversations.demo import demo_api_key_ensure

    key_file = tmp_path / "demo_api_key"
    first = demo_api_key_ensure(key_file=key_file)
    assert api_key_authenticate(raw_key=first).tenant.slug == "demo"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert demo_api_key_ensure(key_file=key_file) == first
    assert ApiKey.objects.count() == 1


@pytest.mark.django_db
def test_demo_key_is_replaced_when_revoked(tmp_path: Path) -> None:
    from conversations.demo import demo_api_key_ensure

    key_file = tmp_path / "demo_api_key"
    first = demo_api_key_ensure(key_file=key_file)
    api_key_revoke(api_key=api_key_authenticate(raw_key=first))
    second = demo_api_key_ensure(key_file=key_file)
    assert second != first
    assert api_key_authenticate(raw_key=second) is not None
    assert key_file.read_text().strip() == second


@pytest.mark.django_db
def test_the_run_command_gets_the_demo_key_by_the_management_command(tmp_path: Path) -> None:
    from io import StringIO

    from django.core.management import call_command

    key_file = tmp_path / "demo_api_key"
    printed = StringIO()
    key = call_command("ensure_demo_api_key", key_file=str(key_file), stdout=printed)
    assert api_key_authenticate(raw_key=key).tenant.slug == "demo"
    assert key_file.read_text().strip() == key
    assert call_command("ensure_demo_api_key", key_file=str(key_file), stdout=StringIO()) == key
