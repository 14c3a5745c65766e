"""Close reservations that a crash left open, so they stop holding budget and quota.

An open reservation older than settings.RESERVATION_EXPIRY_SECONDS belongs to an answer
whose task was lost (still queued) or that ended without settling (a final status); both
are closed here. Running answers are left alone: with late acks their task comes back
after the broker's visibility timeout, which is shorter than the expiry age.
Every step is conditional, so overlapping runs and repeated runs change nothing twice.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from billing.models import Reservation, ReservationStatus
from billing.services import reservation_release
from conversations.models import Message, MessageStatus
from conversations.services.generation import generation_fail

EXPIRED_CODE = "expired"
# One beat run does at most this many; the next run, a minute later, takes the rest.
BATCH_SIZE = 500


def _unfinished_answer_expire(still_stale: Q, message_id: uuid.UUID, why: str) -> bool:
    with transaction.atomic():
        # Lock the answer first (the lock order of billing.services). A worker claiming it
        # meanwhile waits, then finds it failed and skips; without the lock, a claim landing
        # between our read and generation_fail's update would fail an answer that is being
        # generated, and its Bedrock call would never be charged.
        locked = (
            Message.objects.select_for_update()
            .filter(still_stale, pk=message_id)
            .values_list("pk", flat=True)
            .first()
        )
        if locked is None:
            return False
        return generation_fail(
            message_id=message_id,
            code=EXPIRED_CODE,
            release_reason=EXPIRED_CODE,
            message=f"{why}; send the message again.",
        )


def _queued_answer_expire(message_id: uuid.UUID, age_seconds: int) -> bool:
    return _unfinished_answer_expire(
        Q(status=MessageStatus.QUEUED),
        message_id,
        f"The answer waited more than {age_seconds} s for a worker and was given up",
    )


def _running_answer_expire(message_id: uuid.UUID, age_seconds: int, cutoff: datetime) -> bool:
    # updated_at moves with every claim: a redelivered task that claimed it meanwhile wins.
    return _unfinished_answer_expire(
        Q(status=MessageStatus.RUNNING, updated_at__lt=cutoff),
        message_id,
        f"The answer's generation stopped more than {age_seconds} s ago and its task was lost",
    )


def _final_answer_release(message_id: uuid.UUID) -> bool:
    # A final status never changes again, so the message needs no lock; the release is a
    # conditional update on the reservation and its quota refund runs on commit.
    with transaction.atomic():
        return reservation_release(message_id=message_id, reason=EXPIRED_CODE)


def stale_generations_expire(
    *, older_than_seconds: int | None = None, now: datetime | None = None
) -> dict[str, int]:
    """Expire answers with a reservation open longer than the age. Returns counts:

    `queued_failed` answers marked failed with code "expired" (their reservation released),
    `final_released` reservations of already-final answers released,
    `running_skipped` stale reservations left alone because their answer is running.
    """
    age = settings.RESERVATION_EXPIRY_SECONDS if older_than_seconds is None else older_than_seconds
    cutoff = (now or timezone.now()) - timedelta(seconds=age)
    stale = Reservation.objects.filter(status=ReservationStatus.OPEN, created_at__lt=cutoff)
    # A running answer whose last claim is older than the age lost its task for good (the
    # broker lost it, or the task died unable to store its failure): no redelivery comes.
    running_recently = Q(message__status=MessageStatus.RUNNING, message__updated_at__gte=cutoff)
    candidates = list(
        stale.exclude(running_recently)
        .order_by("created_at")
        .values_list("message_id", "message__status")[:BATCH_SIZE]
    )
    counts = {
        "queued_failed": 0,
        "running_failed": 0,
        "final_released": 0,
        "running_skipped": stale.filter(running_recently).count(),
    }
    for message_id, status in candidates:
        if status == MessageStatus.QUEUED:
            counts["queued_failed"] += _queued_answer_expire(message_id, age)
        elif status == MessageStatus.RUNNING:
            counts["running_failed"] += _running_answer_expire(message_id, age, cutoff)
        else:
            counts["final_released"] += _final_answer_release(message_id)
    return counts
