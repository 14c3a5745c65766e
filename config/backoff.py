"""Exponential backoff with jitter: the one formula behind every retry policy here.

Each policy (Bedrock generations, alert webhooks) keeps its own base, cap and jitter style
next to the task that retries; only the arithmetic is shared.
"""

from __future__ import annotations

import enum

# Past any sane cap already; keeps 2**n a small number for a retry count gone wild.
_MAX_DOUBLINGS = 64


class Jitter(enum.Enum):
    # Uniform in [0, ceiling]: spreads a crowd of retries widest (throttled Bedrock calls).
    FULL = "full"
    # Uniform in [ceiling / 2, ceiling]: never retries at once, for a receiver that needs
    # time to recover before an attempt is worth spending on it.
    EQUAL = "equal"


def backoff_delay_seconds(
    *,
    retries_so_far: int,
    base_seconds: float,
    max_seconds: float,
    jitter: Jitter,
    random_fraction: float,
) -> float:
    """The wait before the next try: min(max, base * 2**retries), jittered by
    `random_fraction` in [0, 1] (the caller's random.random(), fixed in tests)."""
    ceiling = min(max_seconds, base_seconds * (2 ** min(retries_so_far, _MAX_DOUBLINGS)))
    if jitter is Jitter.FULL:
        return ceiling * random_fraction
    return ceiling / 2 + ceiling / 2 * random_fraction
