from __future__ import annotations

import json
import re

import pytest
import yaml
from django.conf import settings
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema

from models_catalog.catalogue import CATALOGUE, resolve_model_id

ERROR_REF = "#/components/schemas/ErrorResponse"
# The OpenAI-compatible surface answers OpenAI's error shape (openai_api.errors).
OPENAI_ERROR_REF = "#/components/schemas/OpenAIErrorResponse"


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
        reference = OPENAI_ERROR_REF if path.startswith("/v1/") else ERROR_REF
        for status_code in expected:
            assert error_ref(operation, status_code) == reference, (path, method, status_code)


def test_schema_covers_the_openai_compatible_surface(schema: dict) -> None:
    assert {"/v1/chat/completions", "/v1/models", "/v1/models/{model_id}"} <= set(schema["paths"])
    create = schema["paths"]["/v1/chat/completions"]["post"]
    assert {"200", "400", "401", "402", "404", "409", "422", "429"} <= set(create["responses"])
    assert "text/event-stream" in create["responses"]["200"]["content"]
    error = schema["components"]["schemas"]["OpenAIErrorDetail"]
    assert set(error["properties"]) == {"message", "type", "param", "code"}


def test_idempotency_key_is_documented_on_idempotent_writes(schema: dict) -> None:
    for path in (
        "/api/v1/conversations",
        "/api/v1/conversations/{conversation_id}/messages",
        "/v1/chat/completions",
    ):
        operation = schema["paths"][path]["post"]
        headers = [p["name"] for p in operation["parameters"] if p["in"] == "header"]
        assert headers == ["Idempotency-Key"], path
        assert {"409", "422"} <= set(operation["responses"]), path


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


# --- What the request fields accept ---------------------------------------------------------


@pytest.fixture(scope="module")
def served_schema(django_db_blocker) -> dict:
    """The schema as a client fetches it."""
    from django.test import Client

    with django_db_blocker.unblock():
        response = Client().get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return json.loads(response.content)


def request_field(schema: dict, component: str, field: str) -> dict:
    return schema["components"]["schemas"][component]["properties"][field]


GENERATION_INPUTS = [
    "ConversationCreateInput",
    "PatchedConversationUpdateInput",
    "MessageCreateInput",
]


def every_accepted_spelling(model_id: str) -> list[str]:
    spellings = [model_id]
    if model_id.endswith(":0"):
        spellings.append(model_id.replace("-v1:0", "-v10"))
    return [f"{prefix}{spelling}" for spelling in spellings for prefix in ("", "us.", "us-gov.")]


def test_the_schema_lists_the_accepted_model_ids(served_schema: dict) -> None:
    model = request_field(served_schema, "ConversationCreateInput", "model")
    pattern = re.compile(model["pattern"])
    for entry in CATALOGUE:
        assert f"`{entry.model_id}`" in model["description"]
        for spelling in every_accepted_spelling(entry.model_id):
            assert pattern.fullmatch(spelling), spelling
            assert resolve_model_id(spelling).model_id == entry.model_id
    for refused in [
        "meta.llama3-1-8b-instruct-v1:1",
        "meta.llama3-1-8b-instruct",
        "xx.meta.llama3-1-8b-instruct-v1:0",
        "meta.llama3-1-8b-instruct-v1:0 ",
        "anthropic.claude-v2",
        "",
    ]:
        assert not pattern.fullmatch(refused), refused
    assert model["example"] in {entry.model_id for entry in CATALOGUE}
    assert model["maxLength"] == 100


@pytest.mark.django_db
def test_what_the_model_pattern_accepts_the_api_accepts(owner_client) -> None:
    for entry in CATALOGUE[:3]:
        for spelling in every_accepted_spelling(entry.model_id):
            response = owner_client.post("/api/v1/conversations", {"model": spelling}, "json")
            assert response.status_code == 201, (spelling, response.content)
            assert response.json()["model"] == entry.model_id


def test_max_gen_len_states_the_largest_cap(served_schema: dict) -> None:
    largest_cap = max(entry.max_gen_len_cap for entry in CATALOGUE)
    for component in GENERATION_INPUTS:
        field = request_field(served_schema, component, "max_gen_len")
        assert (field["minimum"], field["maximum"]) == (1, largest_cap), component
    context = served_schema["paths"]["/api/v1/conversations/{conversation_id}/context"]["get"]
    (query,) = [p for p in context["parameters"] if p["name"] == "max_gen_len"]
    assert (query["schema"]["minimum"], query["schema"]["maximum"]) == (1, largest_cap)


def test_sampling_parameters_state_their_range(served_schema: dict) -> None:
    for component in GENERATION_INPUTS:
        for name in ("temperature", "top_p"):
            field = request_field(served_schema, component, name)
            assert (field["type"], field["minimum"], field["maximum"]) == ("number", 0, 1)
            assert "two decimal places" in field["description"]


def test_text_fields_state_their_lengths(served_schema: dict) -> None:
    longest = settings.MESSAGE_MAX_CHARACTERS
    content = request_field(served_schema, "MessageCreateInput", "content")
    assert (content["minLength"], content["maxLength"]) == (1, longest)
    for component in ("ConversationCreateInput", "PatchedConversationUpdateInput"):
        assert request_field(served_schema, component, "system_prompt")["maxLength"] == longest
        assert request_field(served_schema, component, "title")["maxLength"] == 200
        metadata = request_field(served_schema, component, "metadata")
        assert str(settings.METADATA_MAX_BYTES) in metadata["description"]
    end_user = request_field(served_schema, "ConversationCreateInput", "end_user")
    assert end_user["maxLength"] == 200


def test_page_size_states_its_range(served_schema: dict) -> None:
    lists = [
        "/api/v1/conversations",
        "/api/v1/conversations/{conversation_id}/messages",
        "/api/v1/api-keys",
        "/api/v1/budgets",
    ]
    for path in lists:
        parameters = {p["name"]: p for p in served_schema["paths"][path]["get"]["parameters"]}
        assert parameters["page_size"]["schema"] == {
            "type": "integer",
            "minimum": 1,
            "maximum": 200,
        }
        assert "400" in parameters["cursor"]["description"]
