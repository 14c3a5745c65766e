"""Hostile input: an API key in a query string is refused and never tried, whatever the
header says."""

from __future__ import annotations

import pytest

from conversations.services import CreatedApiKey
from tests.support.api import assert_error

CONVERSATIONS = "/api/v1/conversations"


@pytest.mark.parametrize("name", ["api_key", "key", "access_token", "token", "API_KEY", "Token"])
def test_a_key_in_the_query_string_is_refused_and_not_tried(
    anonymous_client, owner_key: CreatedApiKey, name
) -> None:
    response = anonymous_client.get(f"/api/v1/tenant?{name}={owner_key.secret}")
    assert_error(response, 400, "credentials_in_query")
    owner_key.api_key.refresh_from_db()
    assert owner_key.api_key.last_used_at is None


@pytest.mark.parametrize("name", ["api_key", "token"])
def test_a_key_in_the_query_string_is_refused_with_a_good_header_too(owner_client, name) -> None:
    assert_error(owner_client.get(f"/api/v1/models?{name}=whatever"), 400, "credentials_in_query")


@pytest.mark.parametrize(
    "query",
    [
        "q={key}",
        "end_user={key}",
        "{key}",
        "cursor=x&note=prefix-{key}-suffix",
    ],
)
def test_anything_that_looks_like_our_key_in_a_query_is_refused(
    owner_client, owner_key: CreatedApiKey, query
) -> None:
    url = f"{CONVERSATIONS}?{query.format(key=owner_key.secret)}"
    assert_error(owner_client.get(url), 400, "credentials_in_query")


def test_a_key_in_the_query_string_of_the_stream_is_refused(owner_client, owner_key) -> None:
    url = f"/api/v1/messages/00000000-0000-0000-0000-000000000000/stream?token={owner_key.secret}"
    assert_error(owner_client.get(url), 400, "credentials_in_query")


def test_ordinary_query_strings_are_fine(owner_client) -> None:
    response = owner_client.get(f"{CONVERSATIONS}?end_user=lk_not_a_key&archived=false")
    assert response.status_code == 200
