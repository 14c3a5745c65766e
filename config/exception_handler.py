"""DRF's EXCEPTION_HANDLER: every exception an API view raises becomes the one error format."""

from __future__ import annotations

import logging
import traceback
from typing import Any

import kombu.exceptions
import redis
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework import parsers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_default_exception_handler

from config.errors import CODE_FOR_DRF_EXCEPTION, ApplicationError, code_for_status, error_body

logger = logging.getLogger(__name__)

DEPENDENCY_ERRORS = (redis.RedisError, kombu.exceptions.OperationalError)
DEPENDENCY_RETRY_AFTER_SECONDS = 5


def _drf_exception_message(exception: drf_exceptions.APIException) -> str:
    if isinstance(exception, drf_exceptions.ValidationError):
        return "The request is not valid; see details for each field."
    detail = exception.detail
    if isinstance(detail, list | dict):
        return str(exception.default_detail)
    return str(detail)


def _drf_exception_code(exception: drf_exceptions.APIException) -> str:
    for exception_class, code in CODE_FOR_DRF_EXCEPTION.items():
        if isinstance(exception, exception_class):
            return code
    return code_for_status(exception.status_code)


def _is_body_nested_too_deeply(exception: Exception) -> bool:
    # json gives up on deeply nested input with RecursionError, not the ValueError DRF's
    # parser turns into a ParseError; only a RecursionError from parsing is the client's fault.
    return isinstance(exception, RecursionError) and any(
        frame.f_code.co_filename == parsers.__file__
        for frame, _ in traceback.walk_tb(exception.__traceback__)
    )


def api_exception_handler(exception: Exception, context: dict[str, Any]) -> Response:
    """DRF EXCEPTION_HANDLER: every exception a view raises becomes our error format."""
    if isinstance(exception, ApplicationError):
        return Response(
            error_body(exception.code, exception.message, exception.details),
            status=exception.http_status,
            headers=exception.headers,
        )
    if isinstance(exception, DEPENDENCY_ERRORS):
        # Redis (the broker, counters and streams) away: the request can be retried as it
        # is, and nothing was stored (its transaction did not commit).
        logger.warning("Dependency unavailable in API view: %r", exception)
        return Response(
            error_body(
                "service_unavailable",
                "A service this request needs is briefly unavailable; retry shortly.",
            ),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(DEPENDENCY_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exception, RequestDataTooBig):
        return Response(
            error_body("request_too_large", "The request body is too large."),
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if _is_body_nested_too_deeply(exception):
        exception = drf_exceptions.ParseError("JSON parse error - nested too deeply.")
    elif isinstance(exception, DjangoValidationError):
        exception = drf_exceptions.ValidationError(detail=exception.messages)
    elif isinstance(exception, Http404):
        exception = drf_exceptions.NotFound()
    elif isinstance(exception, DjangoPermissionDenied):
        exception = drf_exceptions.PermissionDenied()

    # DRF's handler adds the headers that matter (WWW-Authenticate, Allow, Retry-After).
    response = drf_default_exception_handler(exception, context)
    if response is None:
        logger.exception("Unhandled error in API view", exc_info=exception)
        return Response(
            error_body("internal_error", "An internal error occurred."),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    assert isinstance(exception, drf_exceptions.APIException)
    details = exception.detail if isinstance(exception, drf_exceptions.ValidationError) else None
    if isinstance(exception, drf_exceptions.Throttled) and exception.wait is not None:
        details = {"retry_after_seconds": exception.wait}
    response.data = error_body(
        _drf_exception_code(exception), _drf_exception_message(exception), details
    )
    return response
