"""Admin fixtures: a superuser's and a read-only operator's logged-in clients, and a
headless browser for the tests that drive the admin in one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.factories import PASSWORD, staff_user
from tests.support.browser import headless_chromium


@pytest.fixture
def superuser_client(db) -> Client:
    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    client = Client()
    client.login(username="root", password=PASSWORD)
    return client


@pytest.fixture
def viewer_client(db) -> Client:
    """Staff with only the "view" permissions: the read-only operator."""
    staff_user("viewer", actions=("view",))
    client = Client()
    client.login(username="viewer", password=PASSWORD)
    return client


@pytest.fixture
def browser(live_server: Any, transactional_db: None) -> Iterator[Any]:
    with headless_chromium() as chromium:
        yield chromium
