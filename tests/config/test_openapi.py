from __future__ import annotations

import re

import pytest
import yaml
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema

ERROR_REF = "#/components/schemas/ErrorResponse"


@pytest.fixture(scope="module")
def schema() -> dict:
    generated = SchemaGenerator().get_schema(request=None, public=True)
    validate_schema(generated)
    return generated


def operations(schema: dict):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def error_ref(operation: dict, status_code: str) -> str:
    return operation["responses"][status_code]["content"]["application/json"]["schema"]["$ref"]


def test_schema_covers_every_api_endpoint(schema: dict) -> None:
    assert {
        "/api/v1/models",
        "/api/v1/models/{model_id}",
        "/api/v1/tenant",
        "/api/v1/api-keys",
        "/api/v1/api-keys/{api_key_id}",
        "/api/v1/api-keys/{api_key_id}/revoke",
    } <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["ApiKeyBearer"]["scheme"] == "bearer"


def test_every_operation_documents_its_errors(schema: dict) -> None:
    for path, method, operation in operations(schema):
        expected = {"401", "500"}
        if method in ("post", "put", "patch"):
            expected |= {"400", "415"}
        if "{" in path:
            expected.add("404")
        for status_code in expected:
            assert error_ref(operation, status_code) == ERROR_REF, (path, method, status_code)


def test_error_component_is_the_error_format(schema: dict) -> None:
    error = schema["components"]["schemas"]["ErrorDetail"]
    assert set(error["properties"]) == {"code", "message", "details"}


@pytest.mark.django_db
def test_schema_and_docs_are_served_without_a_key(client) -> None:
    response = client.get("/api/v1/schema/")
    assert response.status_code == 200
    served = yaml.safe_load(response.content)
    assert served["info"]["title"]
    assert "/api/v1/models" in served["paths"]

    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    # The page's assets come from this server (no CDN is reachable offline).
    asset_paths = re.findall(r'src="(/static/[^"]+\.js)"', docs.content.decode())
    assert asset_paths
    for asset_path in asset_paths:
        asset = client.get(asset_path)
        assert asset.status_code == 200, asset_path
