"""The generation pipeline: run one answer from Bedrock into the database and the stream.

A Celery task calls `generation_run` (thin task, logic here). The message row is the
state machine; every transition is a conditional UPDATE whose row count says whether this
worker still owns the answer, so a task delivered twice never stores two answers.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import Q
from django.utils import timezone

from billing.models import AttemptOutcome
from billing.services import (
    frozen_call_get,
    provider_attempt_record,
    provider_lost_attempts_record,
    reservation_lock,
    reservation_release,
    reservation_settle,
)
from config.backoff import Jitter, backoff_delay_seconds
from config.errors import NotFoundError
from conversations import answer_stream
from conversations.context import message_token_count
from conversations.models import IN_PROGRESS, Message, MessageStatus, Tenant
from conversations.services.dispatch import (
    answers_waiting_for_slot,
    generation_wait_for_slot,
    generation_wake_next,
    tenant_share_taken,
)
from models_catalog.bedrock import client as bedrock
from models_catalog.bedrock.errors import BedrockError

logger = logging.getLogger(__name__)

# After a failed publish, how long the stream is left alone before the next try.
STREAM_RETRY_SECONDS = 1.0


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # already final, or another attempt holds it: a duplicate task
    DEFERRED = "deferred"  # its tenant has its fair share running: try again shortly
    HELD = "held"  # another attempt's lease is live: try again when it would have lapsed
    LOST = "lost"  # the lease lapsed and the sweeper gave the answer to another attempt


@dataclass(frozen=True)
class _Claim:
    message: Message
    attempt: int


def _lease_until() -> datetime:
    return timezone.now() + timedelta(seconds=settings.GENERATION_LEASE_SECONDS)


def _tenant_has_its_share_taken(message: Message) -> bool:
    """The tenant's running answers, and its answers that have waited for a slot since
    before this one came (first come, first served: a fresh task does not overtake them),
    fill its share. Answers whose task is still on its way are not counted: the broker's
    queue already serves them in order, and counting them would defer work that has a slot
    (each deferral costs a wake-up task)."""
    if settings.GENERATION_TENANT_MAX_RUNNING <= 0:
        return False
    waiting_before = answers_waiting_for_slot(message.tenant_id).filter(
        created_at__lt=message.created_at
    )
    return tenant_share_taken(message.tenant_id, besides=waiting_before, excluding=message.pk)


def _claim(message_id: uuid.UUID) -> _Claim | Outcome:
    """Take the answer for this attempt under a lease: a queued answer, or a running one
    whose lease lapsed (its worker died: a redelivered task may take it over)."""
    now = timezone.now()
    message = (
        Message.objects.select_related("conversation__model", "conversation__tenant")
        .filter(pk=message_id)
        .first()
    )
    if message is None or message.status not in IN_PROGRESS:
        return Outcome.SKIPPED
    lease = message.lease_expires_at
    if message.status == MessageStatus.RUNNING and lease is not None and lease >= now:
        # A duplicate delivery, or a redelivery whose dead worker's lease has not lapsed
        # yet: never take a live lease; come back when it would have lapsed.
        return Outcome.HELD
    claimable = (
        Q(status=MessageStatus.QUEUED)
        | Q(status=MessageStatus.RUNNING, lease_expires_at__lt=now)
        | Q(status=MessageStatus.RUNNING, lease_expires_at__isnull=True)
    )
    with transaction.atomic():
        # The lease runs from when the write lock is held (SQLite waits for it at BEGIN).
        claimed_fields = {
            "status": MessageStatus.RUNNING,
            "waiting_for_slot_since": None,
            "attempt_count": message.attempt_count + 1,
            "lease_expires_at": _lease_until(),
            "updated_at": now,
        }
        if settings.GENERATION_TENANT_MAX_RUNNING > 0 and connection.features.has_select_for_update:
            # The tenant's row lock makes "count, then claim" one step per tenant, so
            # concurrent claims cannot all pass the cap together. (SQLite has no row locks:
            # its IMMEDIATE transaction already holds the one write lock.)
            Tenant.objects.select_for_update().filter(pk=message.tenant_id).exists()
        if _tenant_has_its_share_taken(message):
            generation_wait_for_slot(message_id)
            return Outcome.DEFERRED
        # Conditional on the attempt count read above, so the copy in hand is the claimed
        # row (no second read): another claim in between makes this one a no-op.
        claimed = Message.objects.filter(
            claimable, pk=message_id, attempt_count=message.attempt_count
        ).update(**claimed_fields)
    if not claimed:
        return Outcome.SKIPPED
    for field, value in claimed_fields.items():
        setattr(message, field, value)
    return _Claim(message=message, attempt=message.attempt_count)


@dataclass(eq=False)  # held in a set by identity
class _Lease:
    message_id: uuid.UUID
    attempt: int
    lost: bool = False
    """Turns true when a renewal finds the answer no longer this attempt's (the sweeper
    took it back)."""


class _LeaseRenewer:
    """Renews the leases of every attempt this process runs, from one thread of its own, so
    a slow first token or a long answer never looks like a dead worker. One thread for the
    process rather than one per answer: starting and joining a thread per answer cost the
    worker about a millisecond of CPU each (benchmarks/peer_compare.py --profile)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: set[_Lease] = set()
        self._thread: threading.Thread | None = None

    @contextmanager
    def holding(self, message_id: uuid.UUID, attempt: int) -> Iterator[_Lease]:
        lease = _Lease(message_id, attempt)
        with self._lock:
            self._leases.add(lease)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)
                self._thread.start()
        try:
            yield lease
        finally:
            with self._lock:
                self._leases.discard(lease)

    def _run(self) -> None:
        while True:
            time.sleep(settings.GENERATION_LEASE_RENEW_SECONDS)
            with self._lock:
                leases = list(self._leases)
                if not leases:  # idle: the next lease held starts a thread again
                    self._thread = None
                    return
            try:
                for lease in leases:
                    self._renew(lease)
            except Exception as error:  # the database away: leases lapse, the sweeper decides
                logger.warning("Leases not renewed: %s", error)
            finally:
                connections.close_all()  # between rounds, hold no (pooled) connection

    def _renew(self, lease: _Lease) -> None:
        renewed = Message.objects.filter(
            pk=lease.message_id, status=MessageStatus.RUNNING, attempt_count=lease.attempt
        ).update(lease_expires_at=_lease_until())
        if not renewed:
            lease.lost = True
            with self._lock:
                self._leases.discard(lease)


_lease_renewer = _LeaseRenewer()


def generation_retry_wait(*, message_id: uuid.UUID, seconds: float) -> None:
    """Between attempts the answer waits in the queue again: its retry (or the sweeper,
    should the retry be lost) claims it once the backoff is over, and a cancel meanwhile
    stops it at once."""
    now = timezone.now()
    Message.objects.filter(pk=message_id, status=MessageStatus.RUNNING).update(
        status=MessageStatus.QUEUED,
        lease_expires_at=None,
        enqueued_at=now + timedelta(seconds=seconds),
        updated_at=now,
    )


def generation_attempts(*, message_id: uuid.UUID) -> int:
    attempts = Message.objects.filter(pk=message_id).values_list("attempt_count", flat=True)
    return next(iter(attempts), 0)


@dataclass
class _SeenCounts:
    """Bedrock's own counts as its chunks report them: the prompt's on the first chunk, the
    generation's cumulative on each. What a cancelled or failed attempt is charged from."""

    prompt_tokens: int = 0
    generation_tokens: int = 0

    def see(self, event: bedrock.Delta) -> None:
        if event.prompt_token_count is not None:
            self.prompt_tokens = event.prompt_token_count
        if event.generation_token_count is not None:
            self.generation_tokens = event.generation_token_count


def _failed_attempt_record(claim: _Claim, seen: _SeenCounts, error_code: str) -> None:
    """An attempt that stored nothing still cost what Bedrock reported before it stopped."""
    with transaction.atomic():
        provider_attempt_record(
            message_id=claim.message.pk,
            attempt=claim.attempt,
            outcome=AttemptOutcome.FAILED,
            input_tokens=seen.prompt_tokens,
            output_tokens=seen.generation_tokens,
            error_code=error_code,
        )


def _finish(
    claim: _Claim,
    *,
    status: MessageStatus,
    content: str,
    prompt_token_count: int | None = None,
    generation_token_count: int | None = None,
    stop_reason: str = "",
    error_code: str = "",
    error_message: str = "",
    charge: tuple[int, int] | None = None,
) -> bool:
    """Store the final state, if this attempt still owns the answer. True when stored.

    In the same transaction the attempt enters the provider ledger at `charge` (Bedrock's
    input and output tokens), and the reservation settles at them, capped at what was
    reserved, or is released when there is nothing to charge: an answer and its money
    never disagree.
    """
    message = claim.message
    conversation = message.conversation
    token_count = message_token_count(conversation.model, content)
    with transaction.atomic():
        # Stamped once the write lock is held (SQLite waits for it at BEGIN): completed_at
        # is when the answer was stored.
        now = timezone.now()
        final_fields = {
            "status": status,
            "content": content,
            "token_count": token_count,
            "prompt_token_count": prompt_token_count,
            "generation_token_count": generation_token_count,
            "stop_reason": stop_reason,
            "error_code": error_code,
            "error_message": error_message,
            "completed_at": now,
            "updated_at": now,
        }
        stored = Message.objects.filter(
            pk=message.pk, status=MessageStatus.RUNNING, attempt_count=claim.attempt
        ).update(**final_fields)
        # One locked read of the reservation serves the provider ledger and the settlement
        # (locked after the answer's row, as generation_fail and the sweeper lock them).
        reservation = (
            reservation_lock(message_id=message.pk) if stored and charge is not None else None
        )
        if charge is not None:
            # Bedrock billed this attempt whether or not it still owns the answer.
            provider_attempt_record(
                message_id=message.pk,
                attempt=claim.attempt,
                outcome=AttemptOutcome(str(status)),
                input_tokens=charge[0],
                output_tokens=charge[1],
                reservation=reservation,
            )
        if stored and charge is not None:
            reservation_settle(
                message_id=message.pk,
                conversation_id=conversation.pk,
                input_tokens=charge[0],
                output_tokens=charge[1],
                outcome=status,
                time_zone=conversation.tenant.time_zone,
                locked=reservation,
            )
        elif stored:
            reservation_release(message_id=message.pk, reason=status)
    if stored:
        # The row is what this attempt wrote (nobody changes a final answer), so the copy
        # in hand takes the same values instead of a read: the conversation may already be
        # deleted by then, too.
        for field, value in final_fields.items():
            setattr(message, field, value)
    return bool(stored)


class _Wire:
    """The answer's stream, best effort: the stored message is the record, the stream only
    the wire. Redis away (a restart, say) must cost neither the answer nor a second Bedrock
    call: deltas are dropped while it is away, and once it answers again this attempt is
    sent again whole (`reset`, then the text so far), so readers never see a gap. Readers
    that miss the final event learn the end from the database (see conversations.sse).

    Deltas are coalesced: the first goes out at once (time to first token), later ones
    that arrive within ANSWER_STREAM_COALESCE_SECONDS of the last publish go out together,
    so a 100-token answer costs a handful of Redis writes and SSE events, not a hundred.
    The stream's expiry is set with the first event that reaches Redis (and again after a
    break: Redis may have come back empty), not with every one.
    """

    def __init__(self, message_id: uuid.UUID, attempt: int) -> None:
        self.message_id = message_id
        self.attempt = attempt
        self.broken_until: float | None = None
        self.pending: list[str] = []
        self.next_flush = 0.0
        self.expiry_set = False

    def publish(self, event_type: str, **data: object) -> bool:
        expire = not self.expiry_set
        if not answer_stream.publish(self.message_id, event_type, expire=expire, **data):
            self.broken_until = time.monotonic() + STREAM_RETRY_SECONDS
            self.expiry_set = False
            return False
        self.expiry_set = True
        return True

    def delta(self, text: str, parts: list[str]) -> None:
        if self.broken_until is None:
            self.pending.append(text)
            now = time.monotonic()
            if now >= self.next_flush:
                self.flush(now)
        elif time.monotonic() >= self.broken_until:
            self.broken_until = None
            self.pending.clear()
            if self.publish(answer_stream.RESET, attempt=self.attempt):
                self.publish(answer_stream.DELTA, text="".join(parts), attempt=self.attempt)

    def flush(self, now: float | None = None) -> None:
        """Send what is waiting (always before the final event)."""
        if (event := self.take_pending()) is not None:
            self.publish(event[0], **event[1])
        self.next_flush = (now or time.monotonic()) + settings.ANSWER_STREAM_COALESCE_SECONDS

    def take_pending(self) -> tuple[str, dict[str, object]] | None:
        """What is waiting as one delta event, for the caller to send (None: nothing, or
        Redis away: the text goes out again whole once it is back)."""
        if not self.pending or self.broken_until is not None:
            return None
        text = "".join(self.pending)
        self.pending.clear()
        return answer_stream.DELTA, {"text": text, "attempt": self.attempt}


def _publish_final(message: Message, wire: _Wire | None = None) -> None:
    """The final event; with the wire's last delta before it, in the same round trip."""
    event = answer_stream.ERROR if message.status == MessageStatus.FAILED else answer_stream.DONE
    events = [(event, {"status": message.status, "attempt": message.attempt_count})]
    if wire is not None and (last_delta := wire.take_pending()) is not None:
        events.insert(0, last_delta)
    answer_stream.publish_events(message.pk, events)


def _cancel_requested(message_id: uuid.UUID) -> bool:
    return Message.objects.filter(pk=message_id, cancel_requested_at__isnull=False).exists()


def generation_claim(*, message_id: uuid.UUID, woken: bool = False) -> _Claim | Outcome:
    """Take the answer for this attempt, or say why not. A woken task whose answer another
    task took meanwhile hands the free slot to the tenant's next waiting answer."""
    claim = _claim(message_id)
    if woken and claim in (Outcome.SKIPPED, Outcome.HELD):
        tenant_id = Message.objects.filter(pk=message_id).values_list("tenant_id", flat=True)
        if (tenant_id := tenant_id.first()) is not None:
            generation_wake_next(tenant_id=tenant_id)
        return Outcome.SKIPPED  # the answer is another task's: nothing to defer
    return claim


def generation_run(*, message_id: uuid.UUID, woken: bool = False) -> Outcome:
    """Generate one answer by sending the call its reservation froze.

    `woken`: this task was handed a free running slot of the tenant (`generation_wake_next`).
    If another task took the answer meanwhile (two slots came free before either task ran),
    the slot goes to the tenant's next waiting answer.

    Raises BedrockError for the task to retry or fail; the failed attempt is in the
    provider ledger by then, at the counts Bedrock reported before it failed.
    """
    claim = generation_claim(message_id=message_id, woken=woken)
    if isinstance(claim, Outcome):
        return claim
    try:
        with _lease_renewer.holding(claim.message.pk, claim.attempt) as lease:
            return _generate(claim, lease)
    finally:
        if settings.GENERATION_TENANT_MAX_RUNNING > 0:
            # Its running slot is free (or about to be, on a retry): the tenant's
            # longest-waiting answer takes it.
            generation_wake_next(tenant_id=claim.message.tenant_id)


def _generate(claim: _Claim, lease: _Lease) -> Outcome:
    message = claim.message
    call = frozen_call_get(message_id=message.pk)
    if call is None:  # its reservation was closed (expired): nothing may be sent
        generation_fail(
            message_id=message.pk,
            code="reservation_closed",
            message="The answer's reservation was closed before it could be generated",
        )
        return Outcome.SKIPPED
    if claim.attempt > 1:
        with transaction.atomic():
            provider_lost_attempts_record(message_id=message.pk, before_attempt=claim.attempt)
    if message.cancel_requested_at is not None:
        if _finish(claim, status=MessageStatus.CANCELLED, content=""):
            _publish_final(claim.message)
        return Outcome.CANCELLED

    wire = _Wire(message.pk, claim.attempt)
    if claim.attempt > 1:
        # Text sent by an earlier attempt is void: clients start the answer again.
        wire.publish(answer_stream.RESET, attempt=claim.attempt)
    parts: list[str] = []
    seen = _SeenCounts()
    final: bedrock.Final | None = None
    events = bedrock.stream(
        model_id=call.bedrock_model_id,
        prompt=call.prompt,
        temperature=float(call.temperature),
        top_p=float(call.top_p),
        max_gen_len=call.max_gen_len,
    )
    next_cancel_check = time.monotonic() + settings.GENERATION_CANCEL_CHECK_SECONDS
    try:
        for event in events:
            if isinstance(event, bedrock.Final):
                final = event
                continue
            seen.see(event)
            parts.append(event.text)
            wire.delta(event.text, parts)
            if time.monotonic() >= next_cancel_check:
                next_cancel_check = time.monotonic() + settings.GENERATION_CANCEL_CHECK_SECONDS
                if lease.lost or _cancel_requested(message.pk):
                    break
    except BedrockError as error:
        _failed_attempt_record(claim, seen, error.code)
        raise
    finally:
        events.close()  # stop reading from Bedrock at once on cancel or error
        if final is None:
            wire.flush()  # a cancel or an error: what arrived goes out now

    if final is None and lease.lost:
        # Another attempt owns the answer now; this one only enters the provider ledger.
        _failed_attempt_record(claim, seen, "lease_lost")
        return Outcome.LOST
    if final is None:  # cancelled mid-answer: keep what was streamed, charge Bedrock's counts
        # A final event only for a final row: a sync waiter trusts it to end its wait.
        if _finish(
            claim,
            status=MessageStatus.CANCELLED,
            content="".join(parts),
            prompt_token_count=seen.prompt_tokens,
            generation_token_count=seen.generation_tokens,
            charge=(seen.prompt_tokens, seen.generation_tokens),
        ):
            _publish_final(claim.message)
        return Outcome.CANCELLED
    if not _finish(
        claim,
        status=MessageStatus.COMPLETED,
        content="".join(parts),
        prompt_token_count=final.prompt_token_count,
        generation_token_count=final.generation_token_count,
        stop_reason=final.stop_reason,
        charge=(final.prompt_token_count, final.generation_token_count),
    ):
        return Outcome.SKIPPED
    # The last delta goes out with the final event: one round trip, and readers still see
    # the text whole before the end.
    _publish_final(claim.message, wire)
    return Outcome.COMPLETED


def generation_fail(
    *, message_id: uuid.UUID, code: str, message: str, release_reason: str | None = None
) -> bool:
    """Mark an unfinished answer failed (final error, retries used up, or expired)."""
    with transaction.atomic():
        stored = Message.objects.filter(pk=message_id, status__in=IN_PROGRESS).update(
            status=MessageStatus.FAILED,
            error_code=code,
            error_message=message[:2000],
            completed_at=timezone.now(),
            updated_at=timezone.now(),
        )
        if stored:
            reservation_release(
                message_id=message_id, reason=release_reason or MessageStatus.FAILED
            )
            # Attempts that left no provider row (their worker died, or our own code failed
            # mid-call) still cost us; record them before the answer is final for good.
            attempts = Message.objects.filter(pk=message_id).values_list("attempt_count", flat=True)
            provider_lost_attempts_record(message_id=message_id, before_attempt=attempts[0] + 1)
            # Tell stream readers only once the failure is committed (the caller's
            # transaction may be the outer one).
            transaction.on_commit(lambda: _publish_final(Message.objects.get(pk=message_id)))
    if stored:
        logger.warning("Generation %s failed: %s %s", message_id, code, message)
    return bool(stored)


def database_connection_release() -> None:
    """Give the database connection back before a long wait (outside a transaction): a
    server's connections are bounded (a pool per process, max_connections on the server),
    and hundreds of waiting clients must not hold them; it is opened again (or taken from
    the pool) to read the result. A SQLite file has no connections to run out of, and a new
    one costs more than the read it serves (its PRAGMAs): it is kept."""
    if connection.vendor != "sqlite" and not connection.in_atomic_block:
        connection.close()


def answer_wait(*, message: Message, timeout_seconds: float) -> Message:
    """Block until the answer is final or the time is up; return it as it then is.

    Once final, the answer may be deleted with its conversation before it is read: 404.
    Waiting holds no database server's connection (see `database_connection_release`).
    """
    if message.status in IN_PROGRESS:
        database_connection_release()
        try:
            answer_stream.wait_final(message.pk, timeout_seconds=timeout_seconds)
        except redis.RedisError as error:  # the stream is the signal, the row the answer
            logger.warning("Final event of %s unreadable: %s", message.pk, error)
    try:
        message.refresh_from_db()
    except Message.DoesNotExist:
        raise NotFoundError(
            "The answer was deleted with its conversation before it could be returned."
        ) from None
    return message


def retry_delay_seconds(retries_so_far: int, random_fraction: float) -> float:
    """Full jitter: throttled calls from many workers spread out instead of retrying together."""
    return backoff_delay_seconds(
        retries_so_far=retries_so_far,
        base_seconds=settings.GENERATION_RETRY_BACKOFF_SECONDS,
        max_seconds=settings.GENERATION_RETRY_BACKOFF_MAX_SECONDS,
        jitter=Jitter.FULL,
        random_fraction=random_fraction,
    )


__all__ = [
    "BedrockError",
    "Outcome",
    "generation_fail",
    "generation_run",
    "retry_delay_seconds",
]
