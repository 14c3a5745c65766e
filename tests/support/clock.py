"""A wall clock that stands still until a test moves it."""

from __future__ import annotations


class Clock:
    """Seconds since the epoch, as `time.time()` gives them; callable, so it can stand in
    for the production seams that read the wall clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
