"""The Idempotency-Key header for DRF views: read it, fingerprint the request, document it."""

from __future__ import annotations

import json
from typing import Any

from drf_spectacular.utils import OpenApiParameter
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from config.openapi import error_response
from idempotency.services import HEADER, idempotency_key_validate, request_fingerprint

IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    HEADER,
    str,
    OpenApiParameter.HEADER,
    required=False,
    description=(
        "Makes the request safe to retry: a retry with the same key and the same body within "
        "24 hours returns the original result (no second message, reservation or Bedrock "
        "call). The same key with another body answers 422 `idempotency_key_reused`; a "
        "duplicate that arrives while the first is being decided waits for it, or answers "
        "409 `idempotency_in_progress`. Keys are per tenant: 1 to 255 printable ASCII "
        "characters without spaces."
    ),
)
IDEMPOTENCY_RESPONSES = {
    409: error_response(
        "A request with the same Idempotency-Key is still being decided "
        "(`idempotency_in_progress`; see Retry-After)."
    ),
    422: error_response(
        "The Idempotency-Key was used for a different request (`idempotency_key_reused`)."
    ),
}


def idempotency_key_of(request: Request) -> str | None:
    """The request's Idempotency-Key, validated; None without one."""
    return idempotency_key_validate(request.headers.get(HEADER))


def fingerprint_of(request: Request) -> str:
    """Hash of method, path and body. Call before `request.data` is read."""
    return request_fingerprint(method=request.method, path=request.path, body=request.body)


def json_value(data: Any) -> Any:
    """Serializer output as plain JSON values (UUIDs, dates and decimals as the API renders
    them), ready to be stored and replayed byte for byte."""
    return json.loads(JSONRenderer().render(data))
