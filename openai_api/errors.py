"""Errors on the OpenAI-compatible surface: OpenAI's shape, our codes and statuses.

Views, authentication and the /api/ middleware all answer our one error format; the
middleware here rewrites every JSON error under /v1/ into OpenAI's
`{"error": {"message", "type", "param", "code"}}` at the edge, so nothing on this surface
can answer the other shape. Statuses stay ours, chosen so the openai SDK does the sensible
thing: 400 BadRequestError, 401 AuthenticationError, 402 (not retried) for a budget, 404
NotFoundError, 409 and 429 (retried, after Retry-After) for what passes with time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from rest_framework import status

from config.errors import ApplicationError

PREFIX = "/v1/"

TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
# Where OpenAI has a well-known code for the same refusal, clients may test for it.
OPENAI_CODE_FOR_OURS = {
    "context_overflow": "context_length_exceeded",
    "authentication_failed": "invalid_api_key",
}
# Our error details name fields by the native API's names; these are OpenAI's.
OPENAI_PARAM_FOR_OURS = {"end_user": "user", "max_gen_len": "max_tokens", "content": "messages"}
VALIDATION_MESSAGE = "The request is not valid; see details for each field."


class InvalidRequestError(ApplicationError):
    """Bad input on this surface, naming the parameter (OpenAI's `param`)."""

    code = "invalid_value"
    http_status = status.HTTP_400_BAD_REQUEST

    def __init__(self, param: str | None, message: str, *, code: str | None = None) -> None:
        super().__init__(message, details={"param": param}, code=code)


def _param_and_reason(details: Any) -> tuple[str | None, str | None]:
    """The parameter an error is about, and the first complaint about it, from details."""
    if not isinstance(details, dict):
        return None, None
    if "param" in details and (details["param"] is None or isinstance(details["param"], str)):
        return details["param"], None
    for name, complaints in details.items():
        if isinstance(complaints, list) and complaints and isinstance(complaints[0], str):
            return OPENAI_PARAM_FOR_OURS.get(name, name), complaints[0]
        if isinstance(complaints, dict):  # nested serializer errors: name the inner field
            inner, reason = _param_and_reason(complaints)
            if inner is not None:
                return f"{name}.{inner}", reason
    if "prompt_tokens" in details and "context_window" in details:
        return "messages", None
    return None, None


def openai_error(http_status: int, body: dict[str, Any]) -> dict[str, Any]:
    """Our error body -> OpenAI's."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {}
    code = error.get("code") or "error"
    message = error.get("message") or "Error."
    param, reason = _param_and_reason(error.get("details"))
    if message == VALIDATION_MESSAGE and reason:
        message = f"Invalid value for '{param}': {reason}" if param else reason
    error_type = TYPE_FOR_STATUS.get(
        http_status, "server_error" if http_status >= 500 else "invalid_request_error"
    )
    return {
        "error": {
            "message": message,
            "type": error_type,
            "param": param,
            "code": OPENAI_CODE_FOR_OURS.get(code, code),
        }
    }


class OpenAIErrorShapeMiddleware:
    """Rewrites JSON error bodies under /v1/ into OpenAI's shape (see the module docstring)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            not request.path.startswith(PREFIX)
            or response.status_code < 400
            or getattr(response, "streaming", False)
            or not response.get("Content-Type", "").startswith("application/json")
        ):
            return response
        try:
            body = json.loads(response.content)
        except ValueError:
            return response
        if isinstance(body, dict) and set(body.get("error") or {}) >= {"type", "param"}:
            return response  # already OpenAI's
        response.content = json.dumps(openai_error(response.status_code, body)).encode()
        if response.has_header("Content-Length"):
            response["Content-Length"] = str(len(response.content))
        return response
