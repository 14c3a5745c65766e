"""Admin test helpers: ledger rows, staff users, and a change form's own POST data."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.forms import CheckboxInput
from django.test import Client
from django.utils import timezone

from billing.models import UsageRecord
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


def changeform_data(response: Any) -> dict[str, Any]:
    """What a browser would POST back, unchanged, from an admin change page (main form and
    every inline formset), so a test can change one field and submit."""
    data: dict[str, Any] = {}
    _add_form(data, response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        _add_form(data, inline.formset.management_form)
        for form in inline.formset.forms:
            _add_form(data, form)
    return data


def _add_form(data: dict[str, Any], form: Any) -> None:
    for name, field in form.fields.items():
        bound = form[name]
        value = bound.value()
        if isinstance(field.widget, CheckboxInput):
            if field.widget.check_test(value):
                data[bound.html_name] = "on"
        elif value is not None:
            data[bound.html_name] = str(value)


def add_inline_row(data: dict[str, Any], prefix: str, **fields: Any) -> None:
    """Fill one more row of an inline formset, as "Add another" does."""
    index = int(data[f"{prefix}-TOTAL_FORMS"])
    data[f"{prefix}-TOTAL_FORMS"] = str(index + 1)
    for name, value in fields.items():
        if value is True:
            data[f"{prefix}-{index}-{name}"] = "on"
        elif value not in (False, None):
            data[f"{prefix}-{index}-{name}"] = str(value)
