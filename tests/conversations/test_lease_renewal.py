"""The worker's lease renewal: one thread for the process renews every attempt it runs,
tells an attempt the sweeper took back that its lease is lost, and ends when idle."""

from __future__ import annotations

import time

import pytest

from conversations.models import Message, MessageStatus
from conversations.services.conversations import conversation_create, user_message_create
from conversations.services.generation import Outcome, _claim, _LeaseRenewer
from tests.factories import make_tenant
from tests.support.waiting import wait_for

LLAMA3 = "meta.llama3-8b-instruct-v1:0"
RENEW_SECONDS = 0.05

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _quick_renewals(settings) -> None:
    settings.GENERATION_LEASE_RENEW_SECONDS = RENEW_SECONDS


def claimed_answer(tenant_slug: str) -> Message:
    conversation = conversation_create(tenant=make_tenant(tenant_slug), model_id=LLAMA3)
    answer = user_message_create(conversation=conversation, content="Hello?").answer
    claim = _claim(answer.pk)
    assert not isinstance(claim, Outcome)
    return claim.message


def lease_of(message: Message):
    return Message.objects.values_list("lease_expires_at", flat=True).get(pk=message.pk)


def test_one_thread_renews_every_lease_held_and_stops_when_none_is(catalogue) -> None:
    renewer = _LeaseRenewer()
    first, second = claimed_answer("acme"), claimed_answer("globex")
    claimed_leases = lease_of(first), lease_of(second)

    with renewer.holding(first.pk, 1) as first_lease, renewer.holding(second.pk, 1):
        thread = renewer._thread
        wait_for(
            lambda: lease_of(first) > claimed_leases[0] and lease_of(second) > claimed_leases[1],
            timeout=5,
        )
        assert renewer._thread is thread  # the same thread for both
        assert not first_lease.lost

    wait_for(lambda: not thread.is_alive(), timeout=5)
    renewed = lease_of(first)
    time.sleep(RENEW_SECONDS * 4)
    assert lease_of(first) == renewed  # released: no longer renewed


def test_a_lease_taken_back_by_the_sweeper_is_lost_and_no_longer_renewed(catalogue) -> None:
    renewer = _LeaseRenewer()
    answer = claimed_answer("acme")

    with renewer.holding(answer.pk, 1) as lease:
        # The sweeper took the answer back and a second attempt claimed it.
        Message.objects.filter(pk=answer.pk).update(attempt_count=2)
        wait_for(lambda: lease.lost, timeout=5)
        taken_over = lease_of(answer)
        time.sleep(RENEW_SECONDS * 4)
        assert lease_of(answer) == taken_over
        assert Message.objects.get(pk=answer.pk).status == MessageStatus.RUNNING
