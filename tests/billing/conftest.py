"""Billing fixtures."""

from __future__ import annotations

import pytest

from conversations.models import Tenant
from tests.factories import make_tenant


@pytest.fixture
def tenant(db: None) -> Tenant:
    """The tenant the governance tests send their turns as."""
    return make_tenant("governed")
