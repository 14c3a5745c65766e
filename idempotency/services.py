"""Idempotent writes: a retry with the same key and body gets the first request's result.

`idempotent_execute` inserts the claim and runs the request's writes in one transaction, so
a key is taken exactly when those writes commit: a request that is refused (a budget, a
quota, bad input) or fails stores nothing, keeps nothing of the key, and a retry runs again.
A duplicate that arrives while the first is being decided waits on the claim (the unique
index on PostgreSQL, the write lock on SQLite) and then replays what the first decided; if
the wait passes IDEMPOTENCY_WAIT_SECONDS it answers 409 `idempotency_in_progress`.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.db import IntegrityError, OperationalError, connection, transaction
from django.utils import timezone
from rest_framework import status

from config.errors import ApplicationError
from idempotency.models import IdempotencyRecord, IdempotencyStatus

T = TypeVar("T")

HEADER = "Idempotency-Key"
# Printable ASCII without spaces: what a UUID, a ULID or a client's own scheme needs, and
# nothing that could break a log line.
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")
# A key expires while its claim is being replaced: a few attempts, then give up.
MAX_CLAIM_ATTEMPTS = 3
POSTGRES_LOCK_NOT_AVAILABLE = "55P03"
PURGE_BATCH_SIZE = 1000


class IdempotencyKeyInvalidError(ApplicationError):
    code = "validation_error"

    def __init__(self, message: str) -> None:
        super().__init__(
            "The request is not valid; see details for each field.", details={HEADER: [message]}
        )


class IdempotencyKeyReusedError(ApplicationError):
    code = "idempotency_key_reused"
    http_status = status.HTTP_422_UNPROCESSABLE_ENTITY


class IdempotencyInProgressError(ApplicationError):
    code = "idempotency_in_progress"
    http_status = status.HTTP_409_CONFLICT


def idempotency_key_validate(raw_key: str | None) -> str | None:
    """The key of an Idempotency-Key header; None when there is none."""
    if raw_key is None:
        return None
    if not KEY_PATTERN.fullmatch(raw_key):
        raise IdempotencyKeyInvalidError(
            "Must be 1 to 255 printable ASCII characters without spaces (a UUID, say)."
        )
    return raw_key


def request_fingerprint(*, method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), body):
        # Length-prefixed, so no two different requests hash the same concatenation.
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True)
class Decision:
    """What a request's writes decided: the object they created and, when it is already
    known, the response to replay. `final=False` when the response still depends on
    something pending (an answer being generated): replays then follow that object."""

    resource_id: uuid.UUID | None = None
    response_status: int | None = None
    response_body: Any = None
    final: bool = True


@dataclass(frozen=True)
class Execution(Generic[T]):
    record: IdempotencyRecord
    value: T | None = None
    """What `execute` returned, when this request ran it (None for a replay)."""
    replayed: bool = False


@contextmanager
def _lock_wait_limit() -> Iterator[None]:
    """On PostgreSQL, wait at most IDEMPOTENCY_WAIT_SECONDS for a duplicate's claim."""
    if connection.vendor != "postgresql":
        yield
        return
    limit = f"{int(settings.IDEMPOTENCY_WAIT_SECONDS * 1000)}ms"
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('lock_timeout')")
        (previous,) = cursor.fetchone()
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [limit])
    yield
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [previous])


def _is_lock_timeout(error: OperationalError) -> bool:
    cause = error.__cause__
    return getattr(cause, "sqlstate", None) == POSTGRES_LOCK_NOT_AVAILABLE or (
        connection.vendor == "sqlite" and "locked" in str(error)
    )


def _in_progress() -> IdempotencyInProgressError:
    return IdempotencyInProgressError(
        "A request with this Idempotency-Key is still being processed; retry shortly.",
        headers={"Retry-After": "1"},
    )


def _claim(
    *, tenant: Any, key: str, method: str, path: str, fingerprint: str, now: datetime
) -> IdempotencyRecord | None:
    """Insert the claim (inside the caller's transaction); None when the key is taken."""
    try:
        # A savepoint: a taken key leaves the caller's transaction usable.
        with transaction.atomic(), _lock_wait_limit():
            return IdempotencyRecord.objects.create(
                tenant=tenant,
                key=key,
                fingerprint=fingerprint,
                method=method.upper(),
                path=path[:300],
                status=IdempotencyStatus.IN_PROGRESS,
                expires_at=now + timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_SECONDS),
            )
    except IntegrityError:
        return None
    except OperationalError as error:
        if _is_lock_timeout(error):
            raise _in_progress() from None
        raise


def _as_text(body: Any) -> str:
    return "" if body is None else json.dumps(body, separators=(",", ":"))


def replayed_body(record: IdempotencyRecord) -> Any:
    """The stored response body, with its keys in the order the first response had."""
    return json.loads(record.response_body) if record.response_body else None


def _record_decision(record: IdempotencyRecord, decision: Decision) -> None:
    record.resource_id = decision.resource_id
    record.response_status = decision.response_status
    record.response_body = _as_text(decision.response_body)
    if decision.final:
        record.status = IdempotencyStatus.COMPLETED
        record.completed_at = timezone.now()
    record.save(
        update_fields=["resource_id", "response_status", "response_body", "status", "completed_at"]
    )


def idempotent_execute(
    *,
    tenant: Any,
    key: str,
    method: str,
    path: str,
    fingerprint: str,
    execute: Callable[[], tuple[T, Decision]],
) -> Execution[T]:
    """Run `execute` once per (tenant, key): claim the key and run it in one transaction,
    or return the record of the request that did (the same body), or refuse (422)."""
    for _ in range(MAX_CLAIM_ATTEMPTS):
        now = timezone.now()
        with transaction.atomic():
            record = _claim(
                tenant=tenant, key=key, method=method, path=path, fingerprint=fingerprint, now=now
            )
            if record is not None:
                value, decision = execute()
                _record_decision(record, decision)
                return Execution(record=record, value=value)
        existing = IdempotencyRecord.objects.filter(tenant=tenant, key=key).first()
        if existing is None:
            continue  # the holder rolled back after our insert failed: claim it again
        if existing.expires_at <= now:
            IdempotencyRecord.objects.filter(pk=existing.pk, expires_at__lte=now).delete()
            continue
        if existing.fingerprint != fingerprint:
            raise IdempotencyKeyReusedError(
                "This Idempotency-Key was used for a different request (another body, method "
                "or path) in the last "
                f"{settings.IDEMPOTENCY_KEY_TTL_SECONDS // 3600} hours; use a new key.",
                details={"first_used_at": existing.created_at.isoformat()},
            )
        return Execution(record=existing, replayed=True)
    raise _in_progress()


def idempotency_complete(*, record: IdempotencyRecord, response_status: int, body: Any) -> bool:
    """Store the final response of a request whose decision left it pending."""
    now = timezone.now()
    updated = IdempotencyRecord.objects.filter(
        pk=record.pk, status=IdempotencyStatus.IN_PROGRESS
    ).update(
        status=IdempotencyStatus.COMPLETED,
        response_status=response_status,
        response_body=_as_text(body),
        completed_at=now,
    )
    return bool(updated)


def idempotency_records_purge(*, now: datetime | None = None) -> int:
    """Delete expired records (a claim on an expired key replaces it anyway)."""
    now = now or timezone.now()
    expired = IdempotencyRecord.objects.filter(expires_at__lte=now).values_list("pk", flat=True)
    deleted = 0
    while batch := list(expired[:PURGE_BATCH_SIZE]):
        deleted += IdempotencyRecord.objects.filter(pk__in=batch).delete()[0]
    return deleted
