"""Fifty clients at once, each in its own thread with its own database connection, all
released together by a barrier, against limits that fit exactly ten."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connection

CLIENTS = 50
ALLOWED = 10
MODEL_ID = "meta.llama3-1-8b-instruct-v1:0"
MAX_GEN_LEN = 300
THREAD_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class Outcome:
    value: Any = None
    error: BaseException | None = None


def run_clients(calls: list[Callable[[], Any]], *, connect: bool = True) -> list[Outcome]:
    """Run each call in its own thread and connection, all released at once by a barrier.

    HTTP clients pass connect=False: the server's threads hold the database connections
    (50 more here would crowd PostgreSQL's default limit of 100).
    """
    barrier = threading.Barrier(len(calls))
    outcomes: list[Outcome | None] = [None] * len(calls)

    def client(index: int) -> None:
        try:
            if connect:
                # Connect before the barrier: the race is between requests, not connects.
                connection.ensure_connection()
            barrier.wait(timeout=THREAD_TIMEOUT_SECONDS)
            outcomes[index] = Outcome(value=calls[index]())
        except BaseException as error:  # reported to the test thread, never swallowed
            outcomes[index] = Outcome(error=error)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=THREAD_TIMEOUT_SECONDS)
    assert not any(thread.is_alive() for thread in threads), "a client never finished"
    assert all(outcome is not None for outcome in outcomes)
    return [outcome for outcome in outcomes if outcome is not None]


def split_outcomes(outcomes: list[Outcome]) -> tuple[list[Any], list[BaseException]]:
    passed = [outcome.value for outcome in outcomes if outcome.error is None]
    refused = [outcome.error for outcome in outcomes if outcome.error is not None]
    return passed, refused
