"""Bedrock failures as values with a code and a retry verdict.

Every exception that boto3, botocore or urllib3 can raise while we talk to Bedrock goes
through ``to_bedrock_error`` so that exactly one place (the Celery task) decides whether to
try again, from ``BedrockError.retryable`` alone. The verdicts follow the error table in
shared/BEDROCK.md.
"""

from __future__ import annotations

from typing import ClassVar

import urllib3.exceptions
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    HTTPClientError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotocoreConnectionError

# Transient on Bedrock's side: the same request may succeed later.
RETRYABLE_CODES: frozenset[str] = frozenset(
    {
        "ThrottlingException",
        "ModelNotReadyException",
        "ServiceUnavailableException",
        "InternalServerException",
        "ModelTimeoutException",
        "ModelStreamErrorException",
    }
)
# The request itself is wrong or not allowed: repeating it cannot help. Codes we do not
# know are treated the same way, because retrying an unknown failure risks spending money
# on a request that can never succeed.
FINAL_CODES: frozenset[str] = frozenset(
    {
        "ValidationException",
        "AccessDeniedException",
        "ResourceNotFoundException",
        "ModelErrorException",
        "ServiceQuotaExceededException",
    }
)

CONNECTION_ERROR = "ConnectionError"
CONNECT_TIMEOUT = "ConnectTimeout"
READ_TIMEOUT = "ReadTimeout"
INCOMPLETE_STREAM = "IncompleteStream"


class BedrockError(Exception):
    """A failed Bedrock call: ``code`` is Bedrock's error code or one of ours above."""

    retryable: ClassVar[bool] = False

    def __init__(self, code: str, message: str, *, http_status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status


class RetryableBedrockError(BedrockError):
    retryable: ClassVar[bool] = True


class FinalBedrockError(BedrockError):
    retryable: ClassVar[bool] = False


def normalise_error_code(code: str) -> str:
    """Errors inside an event stream are named in lowerCamelCase (``throttlingException``)."""
    return code[:1].upper() + code[1:]


def error_for_code(code: str, message: str, *, http_status: int | None = None) -> BedrockError:
    normalised = normalise_error_code(code) or "UnknownError"
    error_class = RetryableBedrockError if normalised in RETRYABLE_CODES else FinalBedrockError
    return error_class(normalised, message, http_status=http_status)


def to_bedrock_error(exception: BaseException) -> BedrockError:
    """Map anything raised while calling Bedrock (or reading its response) to our type."""
    if isinstance(exception, BedrockError):
        return exception
    if isinstance(exception, ClientError):
        # EventStreamError is a ClientError too; its code is the stream member's name.
        error = exception.response.get("Error", {})
        status = exception.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return error_for_code(
            str(error.get("Code", "")), str(error.get("Message", "")), http_status=status
        )
    # Order matters: botocore's timeout classes also inherit its connection error classes.
    if isinstance(exception, ConnectTimeoutError):
        return RetryableBedrockError(CONNECT_TIMEOUT, str(exception))
    if isinstance(exception, ReadTimeoutError | urllib3.exceptions.ReadTimeoutError):
        return RetryableBedrockError(READ_TIMEOUT, str(exception))
    if isinstance(exception, TimeoutError):
        return RetryableBedrockError(READ_TIMEOUT, str(exception) or "timed out")
    if isinstance(
        exception,
        BotocoreConnectionError
        | HTTPClientError
        | urllib3.exceptions.ProtocolError
        | urllib3.exceptions.HTTPError
        | ConnectionError,
    ):
        return RetryableBedrockError(CONNECTION_ERROR, str(exception))
    # Missing credentials, parameter validation (BotoCoreError) and anything else: a
    # configuration or programming problem that a retry cannot fix.
    return FinalBedrockError(type(exception).__name__, str(exception))


# What the client catches around every call and every read of a response.
TRANSPORT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    ClientError,
    BotoCoreError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)
