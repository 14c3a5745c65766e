"""Handing answers to workers, fairly, and taking back what the broker or a worker lost.

The database is the truth about work; Redis only carries it. Every answer that is queued or
running in the database reaches a final state on its own:

- each answer's task goes to its tenant's queue (`generation.<tenant id mod shards>`), and
  workers serve the queues round-robin (kombu's Redis transport rotates them), so a tenant
  with hundreds queued does not stand in front of another tenant's next answer;
- a tenant has at most GENERATION_TENANT_MAX_RUNNING answers running; the rest wait in the
  database, first come first served, and each of its answers that ends hands the tenant's
  longest-waiting answer to the broker (`generation_wake_next`);
- the sweeper (Celery beat, every GENERATION_SWEEP_SECONDS) hands a queued answer to the
  broker again when no worker claimed it within GENERATION_REQUEUE_AFTER_SECONDS (its task
  was lost with Redis, or never reached it), and takes back a running answer whose lease
  lapsed (its worker died): requeued for a new attempt, or failed and released once its
  attempts are used up. A duplicate task is harmless: claims are conditional.
"""

from __future__ import annotations

import logging
import random
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from config.errors import ApplicationError
from conversations.models import IN_PROGRESS, Message, MessageStatus

logger = logging.getLogger(__name__)

WORKER_LOST_CODE = "worker_lost"
# A task that found another attempt's live lease comes back this long after the lease
# would have lapsed (plus as much again in jitter).
DEFER_SECONDS = 2.0
# A wake-up whose oldest waiting answer another wake-up took tries the next, this often.
WAKE_ATTEMPTS = 3
# One sweep handles at most this many of each kind; the next sweep takes the rest.
SWEEP_BATCH_SIZE = 500


def generation_queue(tenant_id: int) -> str:
    return f"generation.{tenant_id % settings.GENERATION_QUEUE_SHARDS}"


def generation_enqueue(
    *,
    message_id: uuid.UUID | str,
    tenant_id: int,
    countdown: float | None = None,
    woken: bool = False,
) -> None:
    """Hand the answer's task to the broker (raises if the broker is away)."""
    from conversations.tasks import generate_answer

    generate_answer.apply_async(
        args=[str(message_id)],
        kwargs={"woken": True} if woken else None,
        queue=generation_queue(tenant_id),
        countdown=countdown,
    )


def generation_enqueue_on_commit(answer: Message) -> list[Exception]:
    """Inside the transaction that stores a queued answer (created with `enqueued_at`
    stamped, for the sweeper): hand its task to the broker once the transaction commits.
    Returns where a broker refusal is collected, for `generation_queued_or_fail` after the
    transaction."""
    if answer.enqueued_at is None:
        raise ValueError("A queued answer is stored with enqueued_at, for the sweeper.")
    refused: list[Exception] = []

    def enqueue() -> None:
        try:
            generation_enqueue(message_id=answer.pk, tenant_id=answer.tenant_id)
        except Exception as error:  # kombu's and redis's errors alike: the broker is away
            refused.append(error)

    transaction.on_commit(enqueue)
    return refused


class GenerationNotQueuedError(ApplicationError):
    code = "service_unavailable"
    http_status = 503


def generation_queued_or_fail(answer: Message, refused: list[Exception]) -> None:
    """After the commit: if the broker refused the task, never answer 202 for work that is
    not queued. The answer fails at once, its reservation is released (nothing charged),
    and the caller gets 503 with Retry-After."""
    if not refused:
        return
    from conversations.services.generation import generation_fail

    generation_fail(
        message_id=answer.pk,
        code="not_queued",
        message=f"The answer could not be queued ({type(refused[0]).__name__}); send it again.",
        release_reason="not_queued",
    )
    raise GenerationNotQueuedError(
        "The answer could not be queued: the task broker is briefly unavailable. Nothing was "
        "charged; send the message again shortly.",
        details={"message_id": str(answer.pk)},
        headers={"Retry-After": "5"},
    )


def answers_running(tenant_id: int, now: datetime) -> QuerySet[Message]:
    """The tenant's answers a live worker holds: its running slots taken."""
    return Message.objects.filter(
        tenant_id=tenant_id, status=MessageStatus.RUNNING, lease_expires_at__gte=now
    )


def answers_queued(tenant_id: int, now: datetime) -> QuerySet[Message]:
    """The tenant's queued answers a worker may take now (not those waiting out a retry's
    backoff)."""
    return Message.objects.filter(tenant_id=tenant_id, status=MessageStatus.QUEUED).filter(
        Q(enqueued_at__isnull=True) | Q(enqueued_at__lte=now)
    )


def answers_waiting_for_slot(tenant_id: int) -> QuerySet[Message]:
    """The tenant's answers waiting, with no task of their own, to be woken."""
    return Message.objects.filter(
        tenant_id=tenant_id, status=MessageStatus.QUEUED, waiting_for_slot_since__isnull=False
    )


def tenant_share_taken(tenant_id: int, *, besides: QuerySet[Message], excluding: object) -> bool:
    """The tenant's running answers and `besides` (not counting `excluding`) fill its share
    of GENERATION_TENANT_MAX_RUNNING slots."""
    cap = settings.GENERATION_TENANT_MAX_RUNNING
    taken = (answers_running(tenant_id, timezone.now()) | besides).exclude(pk=excluding)
    return taken[:cap].count() >= cap


def generation_wait_rechecked(*, message_id: uuid.UUID) -> None:
    """After a fresh task's claim found its tenant's share taken and marked the answer
    waiting (committed).

    The answer waits with no task of its own: each of the tenant's answers that ends hands
    its slot to the longest-waiting one (`generation_wake_next`), this one in its turn. A
    slot that came free between the claim's count and its commit woke nobody, so this looks
    once more for a slot neither running nor promised. (A woken task whose claim is deferred
    does not look: the slot it was handed went to another answer meanwhile, and it is woken
    again, first, when the next one ends.) Should a wake-up be lost with Redis, the sweeper
    offers the answer again after GENERATION_REQUEUE_AFTER_SECONDS.
    """
    tenant_id = (
        Message.objects.filter(pk=message_id, status=MessageStatus.QUEUED)
        .values_list("tenant_id", flat=True)
        .first()
    )
    if tenant_id is None:
        return
    on_their_way = answers_queued(tenant_id, timezone.now()).filter(
        waiting_for_slot_since__isnull=True
    )
    if not tenant_share_taken(tenant_id, besides=on_their_way, excluding=message_id):
        generation_wake_next(tenant_id=tenant_id)


def generation_retry_after_lease(*, message_id: uuid.UUID) -> None:
    """Another attempt holds the answer (a duplicate delivery, or a dead worker's lease):
    its task is offered again when that lease would have lapsed."""
    answer = (
        Message.objects.filter(pk=message_id, status__in=IN_PROGRESS)
        .values("tenant_id", "lease_expires_at")
        .first()
    )
    if answer is None:
        return
    delay = DEFER_SECONDS * (1 + random.random())  # noqa: S311 - jitter
    if answer["lease_expires_at"] is not None:
        delay += max(0.0, (answer["lease_expires_at"] - timezone.now()).total_seconds())
    try:
        generation_enqueue(message_id=message_id, tenant_id=answer["tenant_id"], countdown=delay)
    except Exception as error:
        logger.warning("Could not defer answer %s: %s", message_id, error)


def generation_wait_for_slot(message_id: uuid.UUID) -> None:
    """Inside the claim that found the tenant's share taken: mark the answer waiting (and
    stamped for the sweeper), in the same transaction as the count that decided it."""
    now = timezone.now()
    Message.objects.filter(pk=message_id, status=MessageStatus.QUEUED).update(
        waiting_for_slot_since=now, enqueued_at=now
    )


def generation_wake_next(*, tenant_id: int) -> None:
    """A running slot of the tenant came free: hand its longest-waiting answer to the broker
    now (best effort: the sweeper offers a forgotten answer again). Taking an answer's mark
    is conditional, so concurrent wake-ups hand out different answers."""
    try:
        waiting = answers_waiting_for_slot(tenant_id)
        for _ in range(WAKE_ATTEMPTS):
            oldest = waiting.order_by("created_at").values_list("pk", flat=True).first()
            if oldest is None:
                return
            if waiting.filter(pk=oldest).update(waiting_for_slot_since=None):
                generation_enqueue(message_id=oldest, tenant_id=tenant_id, woken=True)
                return
    except Exception as error:  # the database or the broker away: the sweeper takes over
        logger.warning("Could not wake a waiting answer of tenant %s: %s", tenant_id, error)


def max_attempts() -> int:
    return settings.GENERATION_MAX_RETRIES + 1


def _requeue(message_id: uuid.UUID, tenant_id: int) -> bool:
    try:
        generation_enqueue(message_id=message_id, tenant_id=tenant_id)
    except Exception as error:  # the broker is still away: the next sweep tries again
        logger.warning("Could not requeue answer %s: %s", message_id, error)
        return False
    return True


def _lost_running_take_back(message_id: uuid.UUID, now: object) -> str:
    """A running answer whose lease lapsed: its worker is gone. Requeue or fail it."""
    from conversations.services.generation import generation_fail

    with transaction.atomic():
        answer = (
            Message.objects.select_for_update()
            .filter(pk=message_id, status=MessageStatus.RUNNING, lease_expires_at__lt=now)
            .values("tenant_id", "attempt_count", "cancel_requested_at")
            .first()
        )
        if answer is None:  # renewed or finished meanwhile
            return "skipped"
        if answer["cancel_requested_at"] is not None or answer["attempt_count"] >= max_attempts():
            why = "cancelled" if answer["cancel_requested_at"] is not None else "attempts used up"
            generation_fail(
                message_id=message_id,
                code=WORKER_LOST_CODE,
                message=f"The worker generating this answer stopped ({why}); send it again.",
                release_reason=WORKER_LOST_CODE,
            )
            return "failed"
        Message.objects.filter(pk=message_id).update(
            status=MessageStatus.QUEUED, lease_expires_at=None, enqueued_at=now, updated_at=now
        )
    _requeue(message_id, answer["tenant_id"])
    return "requeued"


def generations_sweep() -> dict[str, int]:
    """Take back answers the broker or a worker lost. Returns counts by what was done."""
    now = timezone.now()
    counts = {"requeued_queued": 0, "requeued_running": 0, "failed_running": 0}
    lapsed = Message.objects.filter(lease_lapsed(now), status=MessageStatus.RUNNING)
    for message_id in lapsed.values_list("pk", flat=True)[:SWEEP_BATCH_SIZE]:
        Message.objects.filter(pk=message_id, lease_expires_at__isnull=True).update(
            lease_expires_at=now - timedelta(microseconds=1)
        )
        outcome = _lost_running_take_back(message_id, now)
        if outcome == "requeued":
            counts["requeued_running"] += 1
        elif outcome == "failed":
            counts["failed_running"] += 1

    cutoff = now - timedelta(seconds=settings.GENERATION_REQUEUE_AFTER_SECONDS)
    forgotten = Message.objects.filter(status=MessageStatus.QUEUED).filter(
        Q(enqueued_at__lt=cutoff) | Q(enqueued_at__isnull=True, created_at__lt=cutoff)
    )
    for message_id, tenant_id in forgotten.values_list("pk", "tenant_id")[:SWEEP_BATCH_SIZE]:
        # Stamped first, conditionally: overlapping sweeps requeue an answer once.
        stamped = (
            Message.objects.filter(pk=message_id, status=MessageStatus.QUEUED)
            .filter(Q(enqueued_at__lt=cutoff) | Q(enqueued_at__isnull=True))
            .update(enqueued_at=now)
        )
        if stamped and _requeue(message_id, tenant_id):
            counts["requeued_queued"] += 1
    if any(counts.values()):
        logger.info("Generation sweep: %s", counts)
    return counts


def lease_lapsed(now: datetime) -> Q:
    """Running answers whose worker is gone: the lease lapsed (or, for rows claimed before
    leases existed, nothing touched them for a lease's length)."""
    lease = timedelta(seconds=settings.GENERATION_LEASE_SECONDS)
    return Q(lease_expires_at__lt=now) | Q(
        lease_expires_at__isnull=True, updated_at__lt=now - lease
    )
