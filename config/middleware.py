"""Keeps HTML out of /api/: errors raised outside DRF views get the JSON error format too.

It also refuses, before any view runs, what no /api/ endpoint should see: credentials in the
query string, NUL characters in it and bodies over DATA_UPLOAD_MAX_MEMORY_SIZE; and it answers
failed authentications over the limit with 429 instead of 401 (config.auth_throttle).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse

from config import auth_throttle
from config.body_limit import TOO_LARGE_CODE, too_large_message
from config.credentials import AuthenticationFailure, authentication_failure
from config.errors import error_body, json_error_response

logger = logging.getLogger(__name__)

# Our own API and the OpenAI-compatible surface (openai_api), whose errors
# openai_api.errors.OpenAIErrorShapeMiddleware then reshapes.
API_PREFIXES = ("/api/", "/v1/")
ERROR_MESSAGES = {
    404: "No such endpoint.",
    405: "Method not allowed on this endpoint.",
    500: "An internal error occurred.",
}


# Django turns these into 4xx responses itself; __call__ then gives them the JSON format.
CLIENT_ERRORS = (Http404, PermissionDenied, BadRequest, SuspiciousOperation)


# URLs end up in access logs, browser history and Referer headers, so a key sent in one is
# refused (and never tried), under these names or any name when it looks like one of ours.
CREDENTIAL_QUERY_NAMES = frozenset(
    {"api_key", "api-key", "apikey", "key", "access_token", "token", "authorization"}
)
API_KEY_LOOKALIKE = re.compile(r"lk_[0-9a-fA-F]{12}\.\S")


def _is_json(response: HttpResponse) -> bool:
    return response.get("Content-Type", "").startswith("application/json")


def _content_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _refusal(request: HttpRequest) -> HttpResponse | None:
    """The answer to a request no API view should see, or None to let it through."""
    for name, values in request.GET.lists():
        texts = [name, *values]
        if name.lower() in CREDENTIAL_QUERY_NAMES or any(
            API_KEY_LOOKALIKE.search(text) for text in texts
        ):
            return json_error_response(
                400,
                "Credentials must not be sent in the query string; use the "
                "'Authorization: Bearer <key>' header (and revoke a key that was sent in a URL).",
                code="credentials_in_query",
            )
        if any("\x00" in text for text in texts):
            return json_error_response(
                400, "The query string must not contain NUL characters.", "malformed_request"
            )
    if _content_length(request) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
        # Under ASGI, config.body_limit has refused such a body before it was read; this
        # check is for WSGI and the test client.
        return json_error_response(
            413, too_large_message(settings.DATA_UPLOAD_MAX_MEMORY_SIZE), code=TOO_LARGE_CODE
        )
    return None


def _guess_scopes(request: HttpRequest, failure: AuthenticationFailure) -> list[str]:
    """What a failed authentication counts against: the address, and the key's prefix when
    the credentials had the shape of one of our keys (conversations.authentication)."""
    scopes = [auth_throttle.address_scope(auth_throttle.client_address(request))]
    if failure.key_prefix:
        scopes.append(f"key:{failure.key_prefix}")
    return scopes


def _too_many_failed_authentications(retry_after: int) -> HttpResponse:
    response = JsonResponse(
        error_body(
            "too_many_failed_authentications",
            "Too many failed authentications from this address or with this key; try again later.",
            {"retry_after_seconds": retry_after},
        ),
        status=429,
    )
    response["Retry-After"] = str(retry_after)
    return response


class ApiJsonErrorMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(API_PREFIXES):
            return self.get_response(request)
        try:
            refusal = _refusal(request)
        except SuspiciousOperation:  # more query fields than DATA_UPLOAD_MAX_NUMBER_FIELDS
            refusal = json_error_response(400, "The query string is not valid.", "bad_request")
        if refusal is not None:
            return refusal
        response = self.get_response(request)
        # Only requests that present credentials can be guesses, and the key was checked
        # first: a valid one was served whatever the counts say, a failure is counted.
        failure = authentication_failure(request)
        if response.status_code == 401 and failure is not None and failure.presented:
            retry_after = auth_throttle.API_KEYS.record_failure(_guess_scopes(request, failure))
            if retry_after is not None:
                return _too_many_failed_authentications(retry_after)
        if (
            response.status_code >= 400
            and not _is_json(response)
            and not getattr(response, "streaming", False)
        ):
            message = ERROR_MESSAGES.get(response.status_code, response.reason_phrase)
            replacement = json_error_response(response.status_code, message)
            for header in ("Allow", "WWW-Authenticate", "Retry-After"):
                if header in response:
                    replacement[header] = response[header]
            return replacement
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        # Even with DEBUG on, an API client gets JSON, never the technical HTML page.
        if not request.path.startswith(API_PREFIXES) or isinstance(exception, CLIENT_ERRORS):
            return None
        logger.exception("Unhandled error outside an API view", exc_info=exception)
        return json_error_response(500, ERROR_MESSAGES[500])
