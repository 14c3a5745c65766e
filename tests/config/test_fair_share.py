"""A tenant's flood waits behind its own slots, never in front of another tenant's request.

Driven at the ASGI level with an application that records how many requests of each key it
is working on at once, and with the real Django application for the tenant grouping.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from config import fair_share
from config.fair_share import TenantFairShare, release_request_slot, remember_key_tenant

SLOTS = 2


def _scope(authorization: bytes | None) -> dict[str, Any]:
    headers = [(b"host", b"testserver")]
    if authorization is not None:
        headers.append((b"authorization", authorization))
    return {"type": "http", "method": "GET", "path": "/api/v1/tenant", "headers": headers}


class RecordingApp:
    """Works `work_seconds` on each request; counts requests at work by their key."""

    def __init__(self, work_seconds: float = 0.02, *, start_response_first: bool = False):
        self.work_seconds = work_seconds
        self.start_response_first = start_response_first
        self.active: Counter[bytes] = Counter()
        self.most_active: Counter[bytes] = Counter()
        self.finished: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        key = dict(scope["headers"]).get(b"authorization", b"-")
        self.active[key] += 1
        self.most_active[key] = max(self.most_active[key], self.active[key])
        try:
            if self.start_response_first:
                await send({"type": "http.response.start", "status": 200, "headers": []})
                self.active[key] -= 1  # what follows is a stream's waiting, not work
            await asyncio.sleep(self.work_seconds)
            if not self.start_response_first:
                await send({"type": "http.response.start", "status": 200, "headers": []})
                self.active[key] -= 1
            await send({"type": "http.response.body", "body": b"{}"})
        finally:
            self.finished.append(key)


async def _request(gate: TenantFairShare, authorization: bytes | None) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    await gate(_scope(authorization), receive, send)


def test_a_flooding_key_is_worked_on_at_most_its_slots_at_once() -> None:
    app = RecordingApp()
    gate = TenantFairShare(app, slots=SLOTS)

    async def flood() -> None:
        await asyncio.gather(*(_request(gate, b"Bearer lk_aaa.secret") for _ in range(12)))

    asyncio.run(flood())
    assert app.most_active[b"Bearer lk_aaa.secret"] == SLOTS
    assert len(app.finished) == 12
    assert gate.groups == {}  # nothing left behind once all are done


def test_another_tenants_request_goes_ahead_of_the_flood() -> None:
    app = RecordingApp(work_seconds=0.05)
    gate = TenantFairShare(app, slots=SLOTS)

    async def scenario() -> None:
        flood = [asyncio.create_task(_request(gate, b"Bearer lk_aaa.secret")) for _ in range(20)]
        await asyncio.sleep(0.01)  # the flood is in, twenty deep
        await _request(gate, b"Bearer lk_bbb.secret")
        # B finished while most of A's flood still waited its turn.
        assert app.finished.count(b"Bearer lk_aaa.secret") <= 2 * SLOTS
        await asyncio.gather(*flood)

    asyncio.run(scenario())
    assert app.finished[-1] == b"Bearer lk_aaa.secret"


def test_requests_without_a_bearer_key_are_not_gated() -> None:
    app = RecordingApp()
    gate = TenantFairShare(app, slots=1)

    async def many() -> None:
        await asyncio.gather(*(_request(gate, None) for _ in range(5)))
        await asyncio.gather(*(_request(gate, b"Basic dXNlcjpwdw==") for _ in range(5)))

    asyncio.run(many())
    assert app.most_active[b"-"] == 5
    assert app.most_active[b"Basic dXNlcjpwdw=="] == 5


def test_a_stream_gives_its_slot_back_once_its_response_starts() -> None:
    app = RecordingApp(work_seconds=0.3, start_response_first=True)
    gate = TenantFairShare(app, slots=1)

    async def streams() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(*(_request(gate, b"Bearer lk_aaa.s") for _ in range(4)))
        return loop.time() - started

    # Four 0.3 s streams on one slot, side by side rather than one after another.
    assert asyncio.run(streams()) < 4 * 0.3


def test_a_sync_wait_gives_its_slot_back_from_its_thread() -> None:
    waiting = threading.Event()
    done_waiting = threading.Event()
    order: list[str] = []

    def sync_view() -> None:
        release_request_slot()
        release_request_slot()  # twice is harmless
        waiting.set()
        done_waiting.wait(timeout=5)
        order.append("wait ended")

    async def app(scope, receive, send) -> None:
        if scope["path"] == "/wait":
            await sync_to_async(sync_view, thread_sensitive=False)()
        else:
            order.append("other request")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gate = TenantFairShare(app, slots=1)

    async def call(path: str) -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            pass

        scope = {**_scope(b"Bearer lk_aaa.s"), "path": path}
        await gate(scope, receive, send)

    async def scenario() -> None:
        wait = asyncio.create_task(call("/wait"))
        await asyncio.get_running_loop().run_in_executor(None, waiting.wait, 5)
        await asyncio.wait_for(call("/other"), timeout=2)  # not stuck behind the wait
        done_waiting.set()
        await wait

    asyncio.run(scenario())
    assert order == ["other request", "wait ended"]


def test_a_client_that_leaves_while_waiting_leaves_no_slot_taken() -> None:
    app = RecordingApp(work_seconds=0.1)
    gate = TenantFairShare(app, slots=1)

    async def scenario() -> None:
        first = asyncio.create_task(_request(gate, b"Bearer lk_aaa.s"))
        await asyncio.sleep(0.01)
        leaver = asyncio.create_task(_request(gate, b"Bearer lk_aaa.s"))
        await asyncio.sleep(0.01)
        leaver.cancel()
        await first
        await asyncio.wait_for(_request(gate, b"Bearer lk_aaa.s"), timeout=1)

    asyncio.run(scenario())
    assert gate.groups == {}


def test_a_disabled_gate_passes_everything(settings) -> None:
    settings.WEB_TENANT_ACTIVE_REQUESTS = 0
    app = RecordingApp()
    gate = TenantFairShare(app)

    async def flood() -> None:
        await asyncio.gather(*(_request(gate, b"Bearer lk_aaa.s") for _ in range(6)))

    asyncio.run(flood())
    assert app.most_active[b"Bearer lk_aaa.s"] == 6


@pytest.fixture
def _forget_key_tenants():
    yield
    fair_share._tenant_of_key_prefix.clear()


@pytest.mark.usefixtures("_forget_key_tenants")
def test_a_tenants_keys_share_one_allowance_once_they_have_authenticated() -> None:
    remember_key_tenant("lk_one", 7)
    remember_key_tenant("lk_two", 7)
    app = RecordingApp()
    gate = TenantFairShare(app, slots=SLOTS)
    keys = [b"Bearer lk_one.s", b"Bearer lk_two.s"]
    concurrently: list[int] = []

    async def watch() -> None:
        for _ in range(40):
            concurrently.append(sum(app.active.values()))
            await asyncio.sleep(0.002)

    async def flood() -> None:
        await asyncio.gather(watch(), *(_request(gate, keys[number % 2]) for number in range(12)))

    asyncio.run(flood())
    assert max(concurrently) == SLOTS


@pytest.mark.django_db
@pytest.mark.usefixtures("_forget_key_tenants")
def test_authenticating_a_key_groups_it_with_its_tenant(owner_client, owner_key) -> None:
    assert owner_client.get("/api/v1/tenant").status_code == 200
    prefix = owner_key.secret.split(".", 1)[0]
    assert fair_share._tenant_of_key_prefix[prefix] == f"tenant:{owner_key.api_key.tenant_id}"
