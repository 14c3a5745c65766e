"""Every route under /api/ and /v1/, with three actors: the owner tenant, another tenant,
and no key (healthchecks' alice, bob and charlie).

The routes come from the URLconf, not from a list: a new endpoint is walked the day it is
added, and one whose path parameter this file does not know how to fill fails here rather
than being skipped. Each route is called with every method; each call runs in a savepoint
rolled back afterwards, so every actor meets the same world.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from django.apps import apps
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RoutePattern
from django.utils import timezone
from rest_framework.test import APIClient

from billing.limits import budget_create, quota_create
from billing.models import Alert, AlertKind, ManagedBy, UsageRecord
from billing.rollups import daily_charge_add
from config.api_base import (
    DANGEROUSLY_PUBLIC_VIEWS,
    DANGEROUSLY_UNSCOPED_VIEWS,
    TenantScopedMixin,
    dotted_name,
)
from conversations.models import MessageRole, Tenant
from conversations.services import CreatedApiKey
from conversations.services.conversations import conversation_create
from tests.factories import stored_message
from tests.support.api import client_with_key

MODEL_ID = "meta.llama3-1-8b-instruct-v1:0"
API_PREFIXES = ("api/", "v1/")
METHODS = ("get", "put", "patch", "post", "delete")
PATH_PARAMETER = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>[^>]+)>")
# Distinctive numbers in the owner's ledger, so totals that leak them are caught.
OWNER_INPUT_TOKENS = 7919
OWNER_OUTPUT_TOKENS = 104729


@dataclass
class OwnerWorld:
    """One of each of the owner tenant's objects, and what would betray that one leaked."""

    objects: dict[str, Any]
    markers: list[str]


@dataclass(frozen=True)
class PathParameter:
    value: Callable[[OwnerWorld], Any]
    owned: bool  # the owner's object: another tenant must get 404


# How to fill each path parameter. A route with a parameter not named here fails the walk:
# add how to fill it (an object of the owner tenant, or a shared one) when adding the route.
PATH_PARAMETERS = {
    "conversation_id": PathParameter(lambda world: world.objects["conversation"].pk, owned=True),
    "message_id": PathParameter(lambda world: world.objects["answer"].pk, owned=True),
    "api_key_id": PathParameter(lambda world: world.objects["api_key"].pk, owned=True),
    "budget_id": PathParameter(lambda world: world.objects["budget"].pk, owned=True),
    "quota_id": PathParameter(lambda world: world.objects["quota"].pk, owned=True),
    "model_id": PathParameter(lambda world: MODEL_ID, owned=False),  # the shared catalogue
}


def _walk(patterns: list[Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern) and route.startswith(API_PREFIXES):
            if not isinstance(pattern.pattern, RoutePattern):
                raise AssertionError(f"{route}: a regex route; the walk fills path() routes only")
            yield route, pattern.callback


def api_routes() -> list[tuple[str, Any]]:
    return list(_walk(get_resolver().url_patterns, ""))


def view_of(callback: Any) -> Any:
    return getattr(callback, "view_class", None) or getattr(callback, "cls", None) or callback


def route_kind(view: Any) -> str:
    name = dotted_name(view)
    if name in DANGEROUSLY_PUBLIC_VIEWS:
        return "public"
    if getattr(view, "dangerously_unscoped", None):
        assert name in DANGEROUSLY_UNSCOPED_VIEWS, f"{name}: unscoped but not listed"
        return "unscoped"
    if isinstance(view, type) and issubclass(view, TenantScopedMixin):
        return "scoped"
    raise AssertionError(
        f"{name} is neither a TenantScopedGenericAPIView nor listed in "
        "config.api_base.DANGEROUSLY_UNSCOPED_VIEWS / DANGEROUSLY_PUBLIC_VIEWS"
    )


def owner_world(tenant: Tenant, api_key: CreatedApiKey) -> OwnerWorld:
    conversation = conversation_create(
        tenant=tenant,
        model_id=MODEL_ID,
        end_user_external_id="alice-end-user-3f9c",
        title="alice-title-8d1e",
    )
    question = stored_message(conversation, MessageRole.USER, "alice-question-51aa")
    answer = stored_message(conversation, MessageRole.ASSISTANT, "alice-answer-c07b")
    usage = UsageRecord.objects.create(
        tenant=tenant,
        end_user=conversation.end_user,
        conversation_id=conversation.pk,
        message_id=answer.pk,
        model=conversation.model,
        input_tokens=OWNER_INPUT_TOKENS,
        output_tokens=OWNER_OUTPUT_TOKENS,
        input_price_per_million=Decimal("0.22"),
        output_price_per_million=Decimal("0.22"),
        cost=Decimal("0.0247824"),
        outcome="completed",
        created_at=timezone.now(),
    )
    daily_charge_add(record=usage)
    budget = budget_create(
        tenant=tenant, period="day", limit=Decimal(1000), managed_by=ManagedBy.TENANT
    )
    quota = quota_create(tenant=tenant, managed_by=ManagedBy.TENANT, tokens_per_day=10**9)
    alert = Alert.objects.create(
        tenant=tenant,
        budget=budget,
        kind=AlertKind.SOFT_THRESHOLD,
        period_start=timezone.now(),
        spent_amount=Decimal(800),
        limit_amount=Decimal(1000),
    )
    objects = {
        "conversation": conversation,
        "question": question,
        "answer": answer,
        "usage": usage,
        "api_key": api_key.api_key,
        "budget": budget,
        "quota": quota,
        "alert": alert,
        "end_user": conversation.end_user,
    }
    markers = [str(item.pk) for item in objects.values()]
    markers += [tenant.slug, tenant.name, api_key.api_key.prefix]
    markers += ["alice-end-user-3f9c", "alice-title-8d1e", "alice-question-51aa"]
    markers += ["alice-answer-c07b", str(OWNER_INPUT_TOKENS), str(OWNER_OUTPUT_TOKENS)]
    return OwnerWorld(objects=objects, markers=markers)


def owner_rows(tenant: Tenant) -> list[Any]:
    """Every row that belongs to the tenant, in every app: what another tenant must not
    change."""
    rows: list[Any] = [list(Tenant.objects.filter(pk=tenant.pk).values())]
    for model in apps.get_models():
        if any(field.name == "tenant" for field in model._meta.concrete_fields):
            rows.append(list(model.objects.filter(tenant=tenant).order_by("pk").values()))
    return rows


@dataclass
class Answer:
    status: int
    content: bytes
    changed_owner_rows: bool


def call(client: APIClient, method: str, url: str, tenant: Tenant) -> Answer:
    """One request in a savepoint that is rolled back: the next actor meets the same world."""
    with transaction.atomic():
        before = owner_rows(tenant)
        response = getattr(client, method)(url, {}, format="json")
        # A stream is only opened, never read: its status is decided before any event.
        content = b"" if response.streaming else response.content
        answer = Answer(response.status_code, content, owner_rows(tenant) != before)
        transaction.set_rollback(True)
    return answer


def leaked(answer: Answer, world: OwnerWorld) -> list[str]:
    text = answer.content.decode(errors="replace").lower()
    return [marker for marker in world.markers if marker.lower() in text]


def fill(route: str, world: OwnerWorld) -> tuple[str, bool]:
    """The route's URL with the owner's objects in it; True when any of them is owned."""
    owned = False

    def value(match: re.Match[str]) -> str:
        nonlocal owned
        parameter = PATH_PARAMETERS.get(match["name"])
        if parameter is None:
            raise AssertionError(
                f"/{route}: unknown path parameter {match['name']!r}; say how to fill it in "
                "PATH_PARAMETERS (tests/security/test_tenancy_routes.py)"
            )
        owned = owned or parameter.owned
        return str(parameter.value(world))

    return "/" + PATH_PARAMETER.sub(value, route), owned


@pytest.mark.parametrize(("route", "callback"), api_routes(), ids=[r for r, _ in api_routes()])
def test_every_api_route_keeps_each_tenant_to_its_own(
    route: str,
    callback: Any,
    owner_tenant: Tenant,
    owner_key: CreatedApiKey,
    other_key: CreatedApiKey,
) -> None:
    kind = route_kind(view_of(callback))
    world = owner_world(owner_tenant, owner_key)
    url, owned = fill(route, world)
    actors = {
        "nobody": client_with_key(None),
        "other": client_with_key(other_key.secret),
        "owner": client_with_key(owner_key.secret),
    }
    offered = []
    for method in METHODS:
        if kind == "public":
            nobody = call(actors["nobody"], method, url, owner_tenant)
            assert nobody.status < 500, (method, url, nobody.status)
            assert not leaked(nobody, world), (method, url)
            offered += [method] if nobody.status != 405 else []
            continue
        answers = {name: call(client, method, url, owner_tenant) for name, client in actors.items()}
        nobody, other, owner = answers["nobody"], answers["other"], answers["owner"]
        for name, answer in answers.items():
            assert answer.status < 500, (name, method, url, answer.status, answer.content)
        # Another tenant (or nobody) never sees the owner's data nor changes a row of it: a
        # list answers with its own objects only, a search for the owner's ids with nothing.
        for name in ("nobody", "other"):
            seen = leaked(answers[name], world)
            assert not seen, (name, method, url, seen)
            assert not answers[name].changed_owner_rows, (name, method, url)
        if owner.status == 405:  # the method is not offered: nobody gets further than that
            assert nobody.status in (401, 405), (method, url, nobody.status)
            assert other.status in (404, 405), (method, url, other.status)
            continue
        offered.append(method)
        assert nobody.status == 401, (method, url, nobody.status, nobody.content)
        if owned:
            assert other.status == 404, (method, url, other.status, other.content)
        assert owner.status not in (401, 404), (method, url, owner.status, owner.content)
    assert offered, f"/{route}: no method answered anything but 405"


def test_every_listed_escape_hatch_is_a_routed_view_that_says_why() -> None:
    views = {dotted_name(view_of(callback)): view_of(callback) for _, callback in api_routes()}
    for name in DANGEROUSLY_UNSCOPED_VIEWS:
        assert name in views, f"{name} is listed as unscoped but no route serves it"
        assert views[name].dangerously_unscoped.strip(), name
    assert set(views) >= DANGEROUSLY_PUBLIC_VIEWS
