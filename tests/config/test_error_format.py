"""Every status the API can answer uses {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import pytest

from conversations.models import ApiKey
from tests.support.api import assert_error

pytestmark = pytest.mark.urls("tests.config.error_urls")


@pytest.fixture(params=[False, True], ids=["debug-off", "debug-on"])
def debug(request, settings) -> bool:
    # Django swaps in HTML technical pages when DEBUG is on; /api/ must stay JSON anyway.
    settings.DEBUG = request.param
    return request.param


def test_400_validation_error_lists_fields(owner_client, debug) -> None:
    error = assert_error(
        owner_client.post("/api/v1/api-keys", {"name": 12 * "long name "}, format="json"),
        400,
        "validation_error",
    )
    assert "name" in error["details"]


def test_400_malformed_json_changes_nothing(owner_client, debug) -> None:
    before = ApiKey.objects.count()
    response = owner_client.post(
        "/api/v1/api-keys", data='{"name": ', content_type="application/json"
    )
    assert_error(response, 400, "malformed_request")
    assert ApiKey.objects.count() == before


def test_401(anonymous_client, debug) -> None:
    assert_error(anonymous_client.get("/api/v1/tenant"), 401, "not_authenticated")


def test_403(owner_client, debug) -> None:
    assert_error(owner_client.get("/api/test/forbidden"), 403, "permission_denied")


def test_404_for_an_unknown_path(owner_client, debug) -> None:
    assert_error(owner_client.get("/api/v1/no-such-thing"), 404, "not_found")


def test_404_for_an_unknown_path_without_a_key(anonymous_client, debug) -> None:
    assert_error(anonymous_client.get("/api/v2/models"), 404, "not_found")


def test_404_for_a_malformed_id(owner_client, debug) -> None:
    assert_error(owner_client.get("/api/v1/api-keys/not-a-uuid"), 404, "not_found")


def test_405_names_the_allowed_methods(owner_client, debug) -> None:
    response = owner_client.delete("/api/v1/models")
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response["Allow"]


def test_415_for_a_body_that_is_not_json(owner_client, debug) -> None:
    before = ApiKey.objects.count()
    response = owner_client.post("/api/v1/api-keys", data="name=x", content_type="text/plain")
    assert_error(response, 415, "unsupported_media_type")
    assert ApiKey.objects.count() == before


def test_415_for_form_encoded_bodies(owner_client, debug) -> None:
    response = owner_client.post("/api/v1/api-keys", data={"name": "x"})  # multipart
    assert_error(response, 415, "unsupported_media_type")


def test_500_in_an_api_view_hides_the_detail(owner_client, debug) -> None:
    response = owner_client.get("/api/test/explode")
    error = assert_error(response, 500, "internal_error")
    assert "secret internal detail" not in response.content.decode()
    assert error["details"] is None


def test_500_outside_drf_is_json_too(owner_client, debug) -> None:
    response = owner_client.get("/api/test/explode-plain")
    assert_error(response, 500, "internal_error")
    assert "secret internal detail" not in response.content.decode()


def test_pages_outside_the_api_keep_html_errors(client, settings) -> None:
    settings.DEBUG = False
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")
