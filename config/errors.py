"""One error format for the whole API: {"error": {"code", "message", "details"}}.

Services raise ApplicationError subclasses; config.exception_handler maps them, DRF's own
exceptions and anything unexpected to this shape, so a client only ever parses one.
"""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework import status

# Stable, machine-readable codes for statuses that have no more specific code.
CODE_FOR_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "not_authenticated",
    402: "payment_required",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "throttled",
    500: "internal_error",
    503: "service_unavailable",
}

# DRF's exception classes carry codes of their own; these are the ones we promise to clients.
CODE_FOR_DRF_EXCEPTION: dict[type[drf_exceptions.APIException], str] = {
    drf_exceptions.ParseError: "malformed_request",
    drf_exceptions.AuthenticationFailed: "authentication_failed",
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.PermissionDenied: "permission_denied",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.NotAcceptable: "not_acceptable",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.Throttled: "throttled",
    drf_exceptions.ValidationError: "validation_error",
}


class ApplicationError(Exception):
    """A failure the client can act on. Subclasses fix the code and the HTTP status."""

    code = "application_error"
    http_status = status.HTTP_400_BAD_REQUEST

    def __init__(
        self,
        message: str,
        *,
        details: Any = None,
        code: str | None = None,
        http_status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status


class NotFoundError(ApplicationError):
    code = "not_found"
    http_status = status.HTTP_404_NOT_FOUND


class ConflictError(ApplicationError):
    code = "conflict"
    http_status = status.HTTP_409_CONFLICT


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def code_for_status(http_status: int) -> str:
    if http_status in CODE_FOR_STATUS:
        return CODE_FOR_STATUS[http_status]
    return "server_error" if http_status >= 500 else "client_error"


def json_error_response(http_status: int, message: str, code: str | None = None) -> JsonResponse:
    return JsonResponse(
        error_body(code or code_for_status(http_status), message), status=http_status
    )
