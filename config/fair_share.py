"""Fair share of a web process between tenants: at most WEB_TENANT_ACTIVE_REQUESTS of one
tenant's requests are worked on at once; the rest wait their turn, parked, costing nothing.

A web process serves requests in the order they arrive, so without this a tenant with sixty
requests in the air (even ones its quota refuses, which are cheap but not free) stands
sixty deep in front of every other tenant's next request. Here a request is worked on only
once its tenant has a free slot, so another tenant's request waits behind a few of the
flooder's at most, whatever the flood.

It wraps the Django application at the ASGI level, before any middleware, so waiting costs
no thread, no database connection and no parsing. The tenant is known from the key's clear
prefix (`conversations.api_keys`): once a key has authenticated, its prefix is remembered
as its tenant's (`remember_key_tenant`), so a tenant's keys share one allowance; a prefix
not yet seen (or not a key at all) is its own group, which the failed-authentication limit
already bounds. Requests without a bearer key (the admin, health checks, /metrics) are not
gated.

A slot is given back when the response starts: a stream's headers go out once its
authentication and checks are done, and what follows is waiting for the answer, not work.
A sync wait gives its slot back when it starts waiting (`release_request_slot`), so a
tenant's waits never hold up its own other requests.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings

from config.body_limit import AsgiApplication, Message, Receive, Scope, Send

# Keys read `<prefix>.<secret>` (conversations.api_keys); only the clear prefix is used here.
KEY_SEPARATOR = b"."
BEARER = b"bearer "
MAX_REMEMBERED_KEYS = 100_000

_release_current: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "fair_share_release", default=None
)
_tenant_of_key_prefix: dict[str, str] = {}


def remember_key_tenant(key_prefix: str, tenant_id: object) -> None:
    """Group this key's requests with its tenant's other keys from now on."""
    if key_prefix not in _tenant_of_key_prefix:
        if len(_tenant_of_key_prefix) >= MAX_REMEMBERED_KEYS:
            _tenant_of_key_prefix.clear()  # a bound, not a cache policy: rare and harmless
        _tenant_of_key_prefix[key_prefix] = f"tenant:{tenant_id}"


def release_request_slot() -> None:
    """Give the current request's slot back now (it is about to wait, not work).

    Safe from the thread a sync view runs in, and a no-op outside a gated request or when
    called twice.
    """
    release = _release_current.get()
    if release is not None:
        release()


def _key_prefix(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            if value[:7].lower() != BEARER:
                return None
            prefix = value[7:].strip().split(KEY_SEPARATOR, 1)[0]
            return prefix.decode("latin-1") if prefix else None
    return None


@dataclass
class _Group:
    """One tenant's slots in this process."""

    free: int
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class TenantFairShare:
    def __init__(self, application: AsgiApplication, slots: int | None = None) -> None:
        self.application = application
        self.slots = settings.WEB_TENANT_ACTIVE_REQUESTS if slots is None else slots
        self.groups: dict[str, _Group] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        prefix = _key_prefix(scope) if scope["type"] == "http" and self.slots > 0 else None
        if prefix is None:
            await self.application(scope, receive, send)
            return
        group_name = _tenant_of_key_prefix.get(prefix, f"key:{prefix}")
        await self._acquire(group_name)
        loop = asyncio.get_running_loop()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._release(group_name)

        def release_from_any_thread() -> None:
            loop.call_soon_threadsafe(release)

        async def send_releasing(message: Message) -> None:
            if message["type"] == "http.response.start":
                release()
            await send(message)

        token = _release_current.set(release_from_any_thread)
        try:
            await self.application(scope, receive, send_releasing)
        finally:
            _release_current.reset(token)
            release()

    async def _acquire(self, group_name: str) -> None:
        group = self.groups.get(group_name)
        if group is None:
            group = self.groups[group_name] = _Group(free=self.slots)
        if group.free > 0 and not group.waiters:
            group.free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        group.waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter in group.waiters:
                group.waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self._release(group_name)  # handed a slot just as the client left
            raise

    def _release(self, group_name: str) -> None:
        group = self.groups[group_name]
        while group.waiters:
            waiter = group.waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next in line
                return
        group.free += 1
        if group.free >= self.slots:
            del self.groups[group_name]
