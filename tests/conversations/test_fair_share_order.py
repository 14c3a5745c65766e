"""A tenant's answers beyond its share of running slots wait first come, first served, and
every slot that comes free goes to the longest-waiting one: no answer waits for a timer,
no fresh task overtakes an answer left waiting, and none is stranded.

The claims, deferrals and wake-ups are the real services against the real database and
broker (Redis: a task is an entry in its tenant's queue list, taken off it to deliver it);
only Bedrock's part is left out: an answer runs from its claim until a rule ends it, as
`generation_run` ends it (final status, then `generation_wake_next`).
"""

from __future__ import annotations

import base64
import itertools
import json
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from unittest import mock

import pytest
from django.db.models import QuerySet
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from config.redis_client import get_redis
from conversations.models import Message, MessageStatus, Tenant
from conversations.services import generation
from conversations.services.conversations import conversation_create, user_message_create
from conversations.services.dispatch import (
    generation_enqueue,
    generation_queue,
    generation_retry_after_lease,
    generation_wait_for_slot,
    generation_wait_rechecked,
    generation_wake_next,
    generations_sweep,
)
from conversations.services.generation import Outcome, generation_claim
from tests.factories import make_tenant

pytestmark = pytest.mark.django_db

LLAMA31_8B = "meta.llama3-1-8b-instruct-v1:0"
_tenants = itertools.count()


@dataclass(frozen=True)
class Task:
    raw: bytes
    message_id: uuid.UUID
    woken: bool


def new_answer(tenant: Tenant) -> Message:
    """A turn as the API stores it, and its task as the commit hands it to the broker."""
    conversation = conversation_create(tenant=tenant, model_id=LLAMA31_8B)
    answer = user_message_create(conversation=conversation, content="Hi", max_gen_len=20).answer
    generation_enqueue(message_id=answer.pk, tenant_id=tenant.pk)
    return answer


def tasks_in_queue(tenant: Tenant, answers: set[uuid.UUID]) -> list[Task]:
    """The tasks of these answers in the tenant's queue list, oldest first."""
    found = []
    for raw in reversed(get_redis().lrange(generation_queue(tenant.pk), 0, -1)):
        args, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
        message_id = uuid.UUID(args[0])
        if message_id in answers:
            found.append(Task(raw, message_id, bool(kwargs and kwargs.get("woken"))))
    return found


def deliver(tenant: Tenant, task: Task, *, paused: list[Task] | None = None) -> Outcome | None:
    """A worker takes the task off the queue and does what `generate_answer` does with it
    (None: claimed, now running). `paused`: a claim that finds the share taken stalls
    after its count, before its transaction commits (the mark it writes is not seen until
    then: PostgreSQL's window, where another answer can end meanwhile), to be resumed
    later (`resume`)."""
    get_redis().lrem(generation_queue(tenant.pk), 1, task.raw)
    if paused is None:
        claim = generation_claim(message_id=task.message_id, woken=task.woken)
    else:
        with mock.patch.object(generation, "generation_wait_for_slot", return_value=None):
            claim = generation_claim(message_id=task.message_id, woken=task.woken)
    if claim == Outcome.DEFERRED and paused is not None:
        paused.append(task)
    elif claim == Outcome.DEFERRED:
        resume_deferral(task)
    elif claim == Outcome.HELD:
        generation_retry_after_lease(message_id=task.message_id)
    return claim if isinstance(claim, Outcome) else None


def resume(task: Task) -> None:
    """The stalled claim commits its mark; its task then defers as `generate_answer` does."""
    generation_wait_for_slot(task.message_id)
    resume_deferral(task)


def resume_deferral(task: Task) -> None:
    """What `generate_answer` does with a deferred claim."""
    if not task.woken:
        generation_wait_rechecked(message_id=task.message_id)


def end(tenant: Tenant, message_id: uuid.UUID) -> None:
    """The answer is stored; its slot goes to the tenant's longest-waiting answer."""
    Message.objects.filter(pk=message_id).update(
        status=MessageStatus.COMPLETED, lease_expires_at=None, completed_at=timezone.now()
    )
    generation_wake_next(tenant_id=tenant.pk)


def running_now(tenant: Tenant) -> int:
    return Message.objects.filter(
        tenant=tenant, status=MessageStatus.RUNNING, lease_expires_at__gte=timezone.now()
    ).count()


@override_settings(GENERATION_TENANT_MAX_RUNNING=1)
def test_a_freed_slot_goes_to_the_oldest_waiting_answer_not_the_newest_task() -> None:
    tenant = make_tenant("first-come")
    running = new_answer(tenant)
    assert deliver(tenant, tasks_in_queue(tenant, {running.pk})[0]) is None
    older, newer = new_answer(tenant), new_answer(tenant)
    ids = {older.pk, newer.pk}
    for task in tasks_in_queue(tenant, ids):
        assert deliver(tenant, task) == Outcome.DEFERRED
    assert tasks_in_queue(tenant, ids) == []  # both wait in the database, no timer

    end(tenant, running.pk)
    later = new_answer(tenant)  # its task reaches a worker before the wake-up does
    assert deliver(tenant, tasks_in_queue(tenant, {later.pk})[0]) == Outcome.DEFERRED
    [wake] = tasks_in_queue(tenant, ids)
    assert (wake.message_id, wake.woken) == (older.pk, True)
    assert deliver(tenant, wake) is None
    assert Message.objects.get(pk=newer.pk).status == MessageStatus.QUEUED


@override_settings(GENERATION_TENANT_MAX_RUNNING=1)
def test_a_slot_freed_between_a_claims_count_and_its_deferral_is_not_lost() -> None:
    tenant = make_tenant("race")
    running, waiting = new_answer(tenant), new_answer(tenant)
    assert deliver(tenant, tasks_in_queue(tenant, {running.pk})[0]) is None
    paused: list[Task] = []
    assert deliver(tenant, tasks_in_queue(tenant, {waiting.pk})[0], paused=paused) == (
        Outcome.DEFERRED
    )
    end(tenant, running.pk)  # its wake-up finds no answer marked waiting yet
    assert tasks_in_queue(tenant, {waiting.pk}) == []

    resume(paused[0])
    [wake] = tasks_in_queue(tenant, {waiting.pk})
    assert wake.woken
    assert deliver(tenant, wake) is None


@override_settings(GENERATION_TENANT_MAX_RUNNING=2)
def test_two_slots_coming_free_at_once_wake_two_answers() -> None:
    tenant = make_tenant("two-slots")
    first, second = new_answer(tenant), new_answer(tenant)
    for task in tasks_in_queue(tenant, {first.pk, second.pk}):
        assert deliver(tenant, task) is None
    waiting = [new_answer(tenant) for _ in range(3)]
    ids = {answer.pk for answer in waiting}
    for task in tasks_in_queue(tenant, ids):
        assert deliver(tenant, task) == Outcome.DEFERRED

    # Both running answers end before either wake-up is delivered.
    end(tenant, first.pk)
    end(tenant, second.pk)
    wakes = tasks_in_queue(tenant, ids)
    assert [(task.message_id, task.woken) for task in wakes] == [
        (waiting[0].pk, True),
        (waiting[1].pk, True),
    ]
    for task in wakes:
        assert deliver(tenant, task) is None
    assert running_now(tenant) == 2


@override_settings(GENERATION_TENANT_MAX_RUNNING=1)
def test_a_wake_up_whose_answer_another_task_took_hands_the_slot_on() -> None:
    tenant = make_tenant("passed-on")
    running = new_answer(tenant)
    assert deliver(tenant, tasks_in_queue(tenant, {running.pk})[0]) is None
    waiting = [new_answer(tenant) for _ in range(2)]
    ids = {answer.pk for answer in waiting}
    for task in tasks_in_queue(tenant, ids):
        assert deliver(tenant, task) == Outcome.DEFERRED
    # The sweeper offered the first again (it had waited long), as the slot came free.
    generation_enqueue(message_id=waiting[0].pk, tenant_id=tenant.pk)
    end(tenant, running.pk)
    swept, wake = tasks_in_queue(tenant, ids)
    assert (swept.woken, wake.woken) == (False, True)

    assert deliver(tenant, swept) is None
    end(tenant, waiting[0].pk)  # its slot goes to the second answer
    [second_wake] = [task for task in tasks_in_queue(tenant, ids) if task != wake]
    assert second_wake.message_id == waiting[1].pk
    assert deliver(tenant, wake) == Outcome.SKIPPED  # the first is done: nothing to pass on
    assert deliver(tenant, second_wake) is None


@override_settings(GENERATION_TENANT_MAX_RUNNING=1)
def test_an_answer_waiting_out_a_retry_backoff_neither_blocks_nor_is_woken_early() -> None:
    tenant = make_tenant("backoff")
    backing_off, fresh = new_answer(tenant), new_answer(tenant)
    Message.objects.filter(pk=backing_off.pk).update(
        enqueued_at=timezone.now() + timedelta(seconds=30)
    )
    get_redis().lrem(
        generation_queue(tenant.pk), 0, tasks_in_queue(tenant, {backing_off.pk})[0].raw
    )
    assert deliver(tenant, tasks_in_queue(tenant, {fresh.pk})[0]) is None

    end(tenant, fresh.pk)
    assert tasks_in_queue(tenant, {backing_off.pk}) == []  # its retry's countdown stands


@dataclass
class Ledger:
    """What the test saw happen, to check the services against."""

    created: list[uuid.UUID] = field(default_factory=list)
    claimed: list[uuid.UUID] = field(default_factory=list)
    deferred: set[uuid.UUID] = field(default_factory=set)
    """Answers left waiting for a slot (their deferral committed) at some point."""
    running: list[uuid.UUID] = field(default_factory=list)


class FairShareSchedules(RuleBasedStateMachine):
    """Answers arrive, tasks are delivered in any order (a claim that finds the share taken
    may stall before it commits), running answers end in any order, stray wake-ups
    come (another answer of the tenant ending elsewhere), Redis loses tasks (a wake-up
    among them): the share holds, no fresh task overtakes an answer left waiting, and once
    the deliveries run out every answer has been run, with no timer, and with no sweeper
    unless Redis lost a task."""

    def __init__(self) -> None:
        super().__init__()
        self.cap = 2
        self.tenant = make_tenant(f"schedules-{next(_tenants)}")
        self.seen = Ledger()
        self.paused: list[Task] = []
        self.tasks_lost = 0

    def _tasks(self) -> list[Task]:
        return tasks_in_queue(self.tenant, set(self.seen.created))

    def _deliver(self, task: Task, *, pause: bool = False) -> None:
        woken_on_their_way = {queued.message_id for queued in self._tasks() if queued.woken}
        waiting_older = [
            pk
            for pk in self.seen.created[: self.seen.created.index(task.message_id)]
            if pk in self.seen.deferred
            and pk not in self.seen.claimed
            and pk not in woken_on_their_way
        ]
        running_before = len(self.seen.running)
        outcome = deliver(self.tenant, task, paused=self.paused if pause else None)
        if outcome is None:
            assert task.message_id not in self.seen.claimed, "an answer claimed twice"
            # First come, first served: a task takes a slot only if the running answers and
            # the answers left waiting before it came leave one.
            assert running_before + len(waiting_older) < self.cap, (task, waiting_older)
            self.seen.claimed.append(task.message_id)
            self.seen.running.append(task.message_id)
        elif outcome == Outcome.DEFERRED and not pause:
            self.seen.deferred.add(task.message_id)

    @rule()
    def an_answer_arrives(self) -> None:
        if len(self.seen.created) < 12:
            self.seen.created.append(new_answer(self.tenant).pk)

    @rule(pick=st.integers(min_value=0, max_value=50), pause=st.booleans())
    def a_worker_takes_a_task(self, pick: int, pause: bool) -> None:
        tasks = self._tasks()
        if tasks:
            self._deliver(tasks[pick % len(tasks)], pause=pause)

    @rule(pick=st.integers(min_value=0, max_value=50))
    def a_paused_worker_defers(self, pick: int) -> None:
        if self.paused:
            task = self.paused.pop(pick % len(self.paused))
            resume(task)
            self.seen.deferred.add(task.message_id)

    @rule(pick=st.integers(min_value=0, max_value=50))
    def a_running_answer_ends(self, pick: int) -> None:
        if self.seen.running:
            end(self.tenant, self.seen.running.pop(pick % len(self.seen.running)))

    @rule()
    def a_stray_wake_up(self) -> None:
        generation_wake_next(tenant_id=self.tenant.pk)

    @rule(pick=st.integers(min_value=0, max_value=50))
    def redis_loses_a_task(self, pick: int) -> None:
        if tasks := self._tasks():
            task = tasks[pick % len(tasks)]
            get_redis().lrem(generation_queue(self.tenant.pk), 1, task.raw)
            self.tasks_lost += 1
            if task.woken:  # its wake-up took its mark: it no longer waits in the database
                self.seen.deferred.discard(task.message_id)

    @invariant()
    def the_share_holds(self) -> None:
        assert running_now(self.tenant) <= self.cap

    def _drain(self) -> None:
        """End what runs, deliver what is queued, until nothing is left to do. (Running
        answers end first: a duplicate task of a running answer comes back until it ends,
        as its lease-lapse countdown would.)"""
        for _ in range(200):
            if self.seen.running:
                end(self.tenant, self.seen.running.pop(0))
            elif tasks := self._tasks():
                self._deliver(tasks[0])
            else:
                return

    def _unfinished(self) -> QuerySet[Message]:
        return Message.objects.filter(pk__in=self.seen.created).exclude(
            status=MessageStatus.COMPLETED
        )

    def teardown(self) -> None:
        while self.paused:
            resume(self.paused.pop())
        self._drain()
        if self.tasks_lost:
            # What Redis lost, the database hands over again: the sweeper (its wait cut
            # short), as often as it takes.
            for _ in range(10):
                if not self._unfinished().exists():
                    break
                with override_settings(GENERATION_REQUEUE_AFTER_SECONDS=0):
                    generations_sweep()
                self._drain()
        # With no task lost, nothing may need the sweeper at all.
        stranded = self._unfinished()
        assert not stranded.exists(), list(stranded.values_list("pk", "status"))


@override_settings(GENERATION_TENANT_MAX_RUNNING=2)
def test_random_schedules_keep_the_share_the_order_and_every_answer() -> None:
    run_state_machine_as_test(
        FairShareSchedules,
        settings=settings(
            max_examples=25,
            report_multiple_bugs=False,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
