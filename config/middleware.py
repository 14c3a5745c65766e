"""Keeps HTML out of /api/: errors raised outside DRF views get the JSON error format too."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse

from config.errors import json_error_response

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
ERROR_MESSAGES = {
    404: "No such endpoint.",
    405: "Method not allowed on this endpoint.",
    500: "An internal error occurred.",
}


# Django turns these into 4xx responses itself; __call__ then gives them the JSON format.
CLIENT_ERRORS = (Http404, PermissionDenied, BadRequest, SuspiciousOperation)


def _is_json(response: HttpResponse) -> bool:
    return response.get("Content-Type", "").startswith("application/json")


class ApiJsonErrorMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            request.path.startswith(API_PREFIX)
            and response.status_code >= 400
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
        if not request.path.startswith(API_PREFIX) or isinstance(exception, CLIENT_ERRORS):
            return None
        logger.exception("Unhandled error outside an API view", exc_info=exception)
        return json_error_response(500, ERROR_MESSAGES[500])
