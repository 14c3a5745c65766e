"""Celery tasks of the idempotency app: thin, logic in services."""

from __future__ import annotations

from celery import shared_task


@shared_task(ignore_result=True)
def purge_expired_idempotency_records() -> int:
    """Celery beat: expired keys are replaced on use anyway; this keeps the table small."""
    from idempotency.services import idempotency_records_purge

    return idempotency_records_purge()
