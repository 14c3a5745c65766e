"""Log lines: one JSON object each (or a human line), with context, and never a secret.

settings.LOGGING puts `RequestContextFilter` and `SecretRedactionFilter` on the one console
handler, so they apply to every record that reaches it, whichever logger it came from, and
`formatter_for` picks the JSON or plain formatter from LOG_FORMAT.

Importing this module connects the Celery signals that put the task id and name on every
line a task logs; config/celery.py imports it, so it is connected in every worker.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from celery.signals import task_postrun, task_prerun

from config import request_context

REDACTED = "[REDACTED]"
# One of our API keys (`lk_<hex prefix>.<secret>`): the prefix names the key for operators
# and stays; the secret goes.
API_KEY = re.compile(r"(lk_[A-Za-z0-9]{1,29})\.[^\s\"'&,;<>()\[\]{}\\]+")
# Any bearer token, except one already reduced to an API key prefix above.
BEARER_TOKEN = re.compile(
    r"\b(bearer)\s+(?!lk_[A-Za-z0-9]{1,29}\.\[REDACTED\])[^\s\"',;\\]+", re.IGNORECASE
)
LOG_FORMATS = ("json", "plain")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
    # uvicorn's copy of the message with terminal colours in it
    | {"color_message"}
)
_CONTEXT_FIELDS = ("request_id", "tenant", "tenant_id", "task_id", "task_name")


def redact(text: str) -> str:
    lowered = text.lower()
    if "lk_" not in lowered and "bearer" not in lowered:
        return text  # the common case, without running the expressions
    text = API_KEY.sub(rf"\1.{REDACTED}", text)
    return BEARER_TOKEN.sub(rf"\1 {REDACTED}", text)


class RequestContextFilter(logging.Filter):
    """Copies the request id, tenant and Celery task of the moment onto the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = request_context.log_fields()
        request = getattr(record, "request", None)
        if "request_id" not in fields and request is not None:
            # django.request logs 4xx/5xx after the middleware has returned, with the request.
            fields = request_context.request_log_fields(request) | fields
        for name, value in fields.items():
            if not hasattr(record, name):  # an explicit extra= wins
                setattr(record, name, value)
        return True


class SecretRedactionFilter(logging.Filter):
    """Rewrites the message (after %-formatting its args) and string extras without secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is for the handler to report
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        for name, value in list(record.__dict__.items()):
            if name not in _RECORD_ATTRIBUTES and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


def _json_default(value: object) -> object:
    # Django puts the request object itself on django.request records; its repr carries the
    # query string, so only the method and path are kept.
    method, path = getattr(value, "method", None), getattr(value, "path", None)
    if isinstance(method, str) and isinstance(path, str):
        return f"{method} {path}"
    return str(value)


class JsonFormatter(logging.Formatter):
    """timestamp (ISO 8601, UTC), level, logger, message, context, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and not name.startswith("_"):
                payload.setdefault(name, value)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            payload["exception"] = redact(record.exc_text)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        # ASCII only: no raw U+2028 or control characters a log shipper might split lines on.
        line = json.dumps(payload, default=_json_default)
        # Values that only became text in _json_default have not been through the filter.
        return redact(line)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return redact(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return redact(super().formatStack(stack_info))


class PlainFormatter(logging.Formatter):
    """`2025-01-31 12:00:00,000 INFO logger [request_id=… tenant=…] message` for people."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(_context_text)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        pairs = [
            f"{name}={getattr(record, name)}"
            for name in _CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        ]
        record._context_text = f" [{' '.join(pairs)}]" if pairs else ""
        return super().format(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return redact(super().formatException(ei))


def formatter_for(log_format: str = "json") -> logging.Formatter:
    """The formatter factory settings.LOGGING names; refuses an unknown LOG_FORMAT."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "plain":
        return PlainFormatter()
    raise ValueError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}; got {log_format!r}.")


@task_prerun.connect(weak=False, dispatch_uid="config.logging.bind_task")
def _bind_task(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id is not None:
        request_context.task_scope_begin(task_id, getattr(task, "name", None))


@task_postrun.connect(weak=False, dispatch_uid="config.logging.unbind_task")
def _unbind_task(task_id: str | None = None, **_: Any) -> None:
    if task_id is not None:
        request_context.task_scope_end(task_id)
