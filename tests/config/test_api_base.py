"""The scoped base refuses, at class creation, a view that could skip the tenant filter."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db.models import QuerySet
from rest_framework import generics

from config import api_base
from config.api_base import TenantScopedGenericAPIView, dangerously_unscoped
from conversations.chat_apis import ConversationScopedView
from conversations.models import Conversation


def test_a_scoped_view_that_implements_safely_get_queryset_is_accepted() -> None:
    class Scoped(TenantScopedGenericAPIView):
        def safely_get_queryset(self, tenant: object) -> QuerySet:
            return Conversation.objects.filter(tenant=tenant)

    assert Scoped.get_queryset is TenantScopedGenericAPIView.get_queryset


@pytest.mark.parametrize("hook", ["get_queryset", "get_object"])
def test_a_scoped_view_that_overrides_an_unsafe_hook_is_refused(hook: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=hook):
        type("Leaky", (TenantScopedGenericAPIView,), {hook: lambda self: None})


def test_a_queryset_attribute_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="queryset"):

        class Leaky(TenantScopedGenericAPIView):
            queryset = Conversation.objects.all()


def test_a_subclass_of_a_scoped_view_is_held_to_the_same_rule() -> None:
    with pytest.raises(ImproperlyConfigured, match="get_queryset"):

        class Leaky(ConversationScopedView):
            def get_queryset(self) -> QuerySet:
                return Conversation.objects.all()


def test_a_mixin_placed_before_the_scoped_base_cannot_bring_its_own_get_queryset() -> None:
    class EverythingMixin:
        def get_queryset(self) -> QuerySet:
            return Conversation.objects.all()

    with pytest.raises(ImproperlyConfigured, match="get_queryset"):

        class Leaky(EverythingMixin, ConversationScopedView):
            pass

    # DRF's own generic views put no get_queryset before ours: they stay scoped.
    class Listing(generics.ListAPIView, ConversationScopedView):
        pass

    assert Listing.get_queryset is ConversationScopedView.get_queryset


def test_dangerously_unscoped_without_being_listed_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="DANGEROUSLY_UNSCOPED_VIEWS"):

        class Unlisted(TenantScopedGenericAPIView):
            dangerously_unscoped = "trust me"

            def get_queryset(self) -> QuerySet:
                return Conversation.objects.all()


def test_a_listed_view_may_override_when_it_says_why(monkeypatch) -> None:
    name = f"{__name__}.test_a_listed_view_may_override_when_it_says_why.<locals>.Listed"
    monkeypatch.setattr(
        api_base, "DANGEROUSLY_UNSCOPED_VIEWS", api_base.DANGEROUSLY_UNSCOPED_VIEWS | {name}
    )

    class Listed(TenantScopedGenericAPIView):
        dangerously_unscoped = "reads only the caller's own tenant row"

        def get_queryset(self) -> QuerySet:
            return Conversation.objects.none()

    with pytest.raises(ImproperlyConfigured, match="must say why"):

        class Silent(TenantScopedGenericAPIView):
            dangerously_unscoped = " "


def test_a_function_view_marked_unscoped_must_be_listed() -> None:
    with pytest.raises(ImproperlyConfigured, match="DANGEROUSLY_UNSCOPED_VIEWS"):

        @dangerously_unscoped("filters by hand")
        def view(request: object) -> None:
            return None
