"""Rate quotas in Redis: fixed windows (a calendar minute, a UTC day), checked and counted
for every applicable quota in one Lua script, so it is all-or-nothing and atomic even with
many web processes.

Fixed windows are simple and exact about what they promise ("at most N in this clock
minute"); the price is that a burst can straddle a boundary (up to 2N in 60 s). Documented.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis

from config.redis_client import get_redis

logger = logging.getLogger(__name__)

MINUTE = 60
DAY = 86_400

# KEYS: counters. ARGV: triples of (amount, limit, ttl) per key.
# Returns 0 when everything fits (and counts it), else the 1-based index of the first misfit.
_CHECK_AND_COUNT = """
for i = 1, #KEYS do
    local amount = tonumber(ARGV[3 * i - 2])
    local limit = tonumber(ARGV[3 * i - 1])
    local current = tonumber(redis.call('GET', KEYS[i]) or '0')
    if current + amount > limit then
        return i
    end
end
for i = 1, #KEYS do
    redis.call('INCRBY', KEYS[i], ARGV[3 * i - 2])
    redis.call('EXPIRE', KEYS[i], ARGV[3 * i])
end
return 0
"""

# Give back what was counted but not used (tokens reserved for the worst case); never below 0.
_REFUND = """
for i = 1, #KEYS do
    local current = tonumber(redis.call('GET', KEYS[i]) or '0')
    if current > 0 then
        local amount = math.min(current, tonumber(ARGV[i]))
        redis.call('DECRBY', KEYS[i], amount)
    end
end
return 0
"""


@dataclass(frozen=True)
class RateCharge:
    """One counter to add to: which quota, which limit, in which window."""

    key: str
    amount: int
    limit: int
    window_seconds: int
    description: str
    refundable: bool = False
    """Token counts are reserved for the worst case and the unused part given back."""

    def retry_after_seconds(self, now: float) -> int:
        # Rounded up: a client that waits exactly this long must land in the next window.
        return max(1, math.ceil(self.window_seconds - (now % self.window_seconds)))


def window_key(quota_id: str, scope: str, kind: str, at: float, window_seconds: int) -> str:
    return f"quota:{quota_id}:{scope}:{kind}:{int(at // window_seconds)}"


@dataclass
class CountedCharges:
    """What one transaction has counted in Redis, to give back if it does not commit."""

    charges: list[RateCharge] = field(default_factory=list)


@contextlib.contextmanager
def given_back_unless_committed() -> Iterator[CountedCharges]:
    """Wrap the transaction that counts: if it raises (a refusal after counting, a failed
    commit), everything counted inside is given back, because Redis is not part of the
    database's rollback. Wrap the outermost transaction, outside `transaction.atomic()`,
    so a failed commit is covered too."""
    counted = CountedCharges()
    try:
        yield counted
    except BaseException:
        if counted.charges:
            try:
                refund([(charge.key, charge.amount) for charge in counted.charges])
            except redis.RedisError as error:
                # The original failure matters more; the counters expire with their window.
                logger.warning("Could not give back rate counters: %s", error)
        raise


def check_and_count(
    charges: list[RateCharge],
    now: float | None = None,
    *,
    counted: CountedCharges | None = None,
) -> RateCharge | None:
    """Count all charges if all fit; otherwise count none and return the first that does not.

    With `counted`, what was counted is noted there (see `given_back_unless_committed`).
    """
    if not charges:
        return None
    arguments: list[int] = []
    for charge in charges:
        arguments += [charge.amount, charge.limit, charge.window_seconds * 2]
    client = get_redis()
    result = client.eval(_CHECK_AND_COUNT, len(charges), *[c.key for c in charges], *arguments)
    if int(result) != 0:
        return charges[int(result) - 1]
    if counted is not None:
        counted.charges.extend(charges)
    return None


def refund(keys_and_amounts: list[tuple[str, int]]) -> None:
    if not keys_and_amounts:
        return
    get_redis().eval(
        _REFUND,
        len(keys_and_amounts),
        *[key for key, _ in keys_and_amounts],
        *[amount for _, amount in keys_and_amounts],
    )


def now_seconds() -> float:
    return time.time()


def first_full(charges: list[RateCharge]) -> RateCharge | None:
    """The first charge whose window has no room left for it, without counting anything
    (a plain read; with no charges, a PING, so Redis away still raises)."""
    client = get_redis()
    if not charges:
        client.ping()
        return None
    values = client.mget([charge.key for charge in charges])
    for charge, value in zip(charges, values, strict=True):
        if int(value or 0) + charge.amount > charge.limit:
            return charge
    return None
