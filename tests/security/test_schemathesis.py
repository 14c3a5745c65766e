"""Every operation in our own OpenAPI schema, fuzzed by schemathesis against the app in-process.

Each operation gets a bounded, derandomized set of requests, schema-valid and invalid ones
(schemathesis' positive and negative modes), sent with a valid API key through the WSGI app.
For every response:

- no 5xx;
- the status code is documented, and the body and headers match what is documented;
- every error is our format, {"error": {"code", "message", "details"}};
- an id that belongs to another tenant answers 404, whatever else the request holds.

Path ids are drawn from random UUIDs and from real objects of the calling tenant and of a
second tenant, so the views get past their lookups. Each request runs in a savepoint that is
rolled back, so every example starts from the same data (and, as in any `db` test, on_commit
never fires: no generation is enqueued).

Not checked here: "schema-valid input is accepted" (an unknown model id is a well-formed
string, yet refused) and "invalid input is refused" (DRF coerces a number sent for a string
field, by design). tests/security/test_hostile_input.py pins down what we refuse.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import checks

from billing.limits import budget_create, quota_create
from billing.models import ManagedBy
from config.wsgi import application
from conversations.models import MessageRole, MessageStatus
from conversations.services import api_key_create
from conversations.services.conversations import conversation_create, user_message_create
from tests.factories import make_tenant, stored_message

MODEL_ID = "meta.llama3-1-8b-instruct-v1:0"
ERROR_STATUS = 400

# The OpenAI-compatible surface (/v1/) answers OpenAI's error shape, and a completion waits
# for a worker that does not run here: tests/openai_api and tests/e2e cover it.
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", application).exclude(path_regex="^/v1/")

# Ids of real objects, by path parameter name, filled in by the `world` fixture for the test
# that is running; the hook below reads them while examples are generated.
KNOWN_IDS: dict[str, list[str]] = {}
OTHER_TENANT_IDS: set[str] = set()


# Hypothesis favours the first choices of sampled_from, and a random UUID only ever finds
# nothing: real objects come first.
@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> st.SearchStrategy:
    choices = [
        {**path_parameters, name: known}
        for name in path_parameters or {}
        for known in KNOWN_IDS.get(name, [])
    ]
    return st.sampled_from([*choices, path_parameters])


@schema.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy:
    # A random model id is refused before anything else is looked at.
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return st.sampled_from([{**body, "model": MODEL_ID}, body])
    return st.just(body)


@pytest.fixture
def keep_connection() -> Iterator[None]:
    # Django's WSGI handler closes the connection after each request, which would end the
    # test's transaction; the test client disconnects the same signal handlers for this.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def _objects_of(tenant: Any, *, suffix: str) -> dict[str, list[str]]:
    key = api_key_create(tenant=tenant, name=f"spare {suffix}").api_key
    conversation = conversation_create(tenant=tenant, model_id=MODEL_ID, title="talk")
    question = stored_message(conversation, MessageRole.USER, "What do llamas eat?")
    answer = stored_message(conversation, MessageRole.ASSISTANT, "Grass, mostly.")
    busy = conversation_create(tenant=tenant, model_id=MODEL_ID, end_user_external_id="user-1")
    queued = user_message_create(conversation=busy, content="Still there?").answer
    assert queued.status == MessageStatus.QUEUED
    budget = budget_create(tenant=tenant, period="month", limit=100, managed_by=ManagedBy.TENANT)
    operator_budget = budget_create(
        tenant=tenant, period="day", limit=1000, managed_by=ManagedBy.OPERATOR
    )
    quota = quota_create(tenant=tenant, managed_by=ManagedBy.TENANT, max_concurrent=1000)
    return {
        "api_key_id": [str(key.pk)],
        "conversation_id": [str(conversation.pk), str(busy.pk)],
        "message_id": [str(question.pk), str(answer.pk), str(queued.pk)],
        "budget_id": [str(budget.pk), str(operator_budget.pk)],
        "quota_id": [str(quota.pk)],
    }


@pytest.fixture
def world(db, keep_connection, settings) -> Iterator[str]:
    """Two tenants with some of everything; answers the first tenant's API key."""
    settings.GENERATION_SYNC_WAIT_SECONDS = 0.05  # no worker runs here; don't wait for one
    owner = make_tenant("fuzz-owner")
    caller = api_key_create(tenant=owner, name="caller")
    owned = _objects_of(owner, suffix="owner")
    others = _objects_of(make_tenant("fuzz-other"), suffix="other")
    KNOWN_IDS.clear()
    for name in owned.keys() | others.keys():
        KNOWN_IDS[name] = owned.get(name, []) + others.get(name, [])
    KNOWN_IDS["api_key_id"].append(str(caller.api_key.pk))
    KNOWN_IDS["model_id"] = [MODEL_ID, f"us.{MODEL_ID}"]
    OTHER_TENANT_IDS.clear()
    OTHER_TENANT_IDS.update(known for ids in others.values() for known in ids)
    yield caller.secret
    KNOWN_IDS.clear()
    OTHER_TENANT_IDS.clear()


def assert_error_format(response: Any) -> None:
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), (
        response.headers
    )
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    for text in (body["error"]["code"], body["error"]["message"]):
        assert isinstance(text, str), body
        assert text, body


@schema.parametrize()
@hypothesis_settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_every_operation_conforms_to_the_schema(case: Any, world: str) -> None:
    with transaction.atomic():
        response = case.call(headers={"Authorization": f"Bearer {world}"})
        transaction.set_rollback(True)
    case.validate_response(
        response,
        checks=[
            checks.not_a_server_error,
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_schema_conformance,
            checks.response_headers_conformance,
        ],
    )
    if response.status_code >= ERROR_STATUS:
        assert_error_format(response)
    if OTHER_TENANT_IDS & {str(value) for value in (case.path_parameters or {}).values()}:
        # Cases that test the security scheme itself go without our key: 401 comes first.
        authenticated = "Authorization" in response.request.headers
        assert response.status_code == (404 if authenticated else 401), response.text
