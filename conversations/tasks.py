"""Celery tasks: fetch by id, call a service, own the retry policy. Nothing else."""

from __future__ import annotations

import contextlib
import random
import uuid

from celery import Task, shared_task
from django.conf import settings
from django.db import DatabaseError

from config.metrics import record_bedrock_error
from conversations.services.dispatch import (
    generation_retry_after_lease,
    generation_wait_rechecked,
    generations_sweep,
)
from conversations.services.generation import (
    BedrockError,
    Outcome,
    generation_attempts,
    generation_fail,
    generation_retry_wait,
    generation_run,
    retry_delay_seconds,
)


@shared_task(
    bind=True,
    acks_late=True,  # a worker that dies mid-answer leaves the task to be delivered again
    reject_on_worker_lost=True,
    max_retries=None,  # counted against settings below, read at run time
    ignore_result=True,
)
def generate_answer(self: Task, message_id: str, woken: bool = False) -> str:
    try:
        outcome = generation_run(message_id=uuid.UUID(message_id), woken=woken)
        if outcome == Outcome.DEFERRED:
            # Its tenant has its fair share running: it waits for one of its tenant's
            # answers to end. (A woken task was such a wake-up: it waits for the next.)
            if not woken:
                generation_wait_rechecked(message_id=uuid.UUID(message_id))
        elif outcome == Outcome.HELD:
            # Another attempt's lease is live (a duplicate, or a dead worker's): once it
            # lapses this task may take the answer over; while it is renewed, it may not.
            generation_retry_after_lease(message_id=uuid.UUID(message_id))
        return outcome.value
    except BedrockError as error:
        record_bedrock_error(error.code)
        retryable, code, detail = error.retryable, error.code, error.message
    except Exception as error:
        # Our own failure (the database away during settlement, say): worth another try,
        # and never worth leaving the answer "running" for good.
        retryable, code, detail = True, "internal_error", f"{type(error).__name__}: {error}"
    # Attempts are counted in the database (each claim adds one), so a task offered again
    # by the sweeper or a deferral cannot start the retry budget over.
    # (Best effort: with the database away, the task's own count stands in, and the lease
    # or the sweeper hands the answer to the retry.)
    retries_so_far = self.request.retries
    with contextlib.suppress(DatabaseError):
        attempts = generation_attempts(message_id=uuid.UUID(message_id))
        retries_so_far = max(retries_so_far, attempts - 1)
    if retryable and retries_so_far < settings.GENERATION_MAX_RETRIES:
        delay = retry_delay_seconds(retries_so_far, random.random())  # noqa: S311
        with contextlib.suppress(DatabaseError):
            generation_retry_wait(message_id=uuid.UUID(message_id), seconds=delay)
        raise self.retry(countdown=delay)
    generation_fail(message_id=uuid.UUID(message_id), code=code, message=detail)
    return "failed"


@shared_task(ignore_result=True)
def expire_stale_generations() -> dict[str, int]:
    """Celery beat, every RESERVATION_EXPIRY_CHECK_SECONDS: close what crashes left open."""
    from conversations.expiry import stale_generations_expire

    return stale_generations_expire()


@shared_task(ignore_result=True)
def sweep_generations() -> dict[str, int]:
    """Celery beat, every GENERATION_SWEEP_SECONDS: take back what the broker or a worker
    lost (see conversations.services.dispatch)."""
    return generations_sweep()
