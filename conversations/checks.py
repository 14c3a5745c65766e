"""System checks: settings whose timeouts contradict each other are refused.

Registered by conversations.apps.ConversationsConfig.ready, so `manage.py check` (with or without
`--deploy`), `migrate` and the run command refuse them before anything is served.

- config.E010: the broker's visibility timeout must outlast the longest time a worker can
  hold one delivery of an answer's task: the countdown it holds the task through (a retry's
  backoff, up to GENERATION_RETRY_BACKOFF_MAX_SECONDS, or a deferral until another
  attempt's lease lapses, up to GENERATION_LEASE_SECONDS + 2 s), then one attempt:
  connecting (BEDROCK_CONNECT_TIMEOUT_SECONDS), Bedrock's silence before the first token
  (BEDROCK_READ_TIMEOUT_SECONDS) and the longest answer streaming (BEDROCK_MAX_GEN_LEN tokens
  at SLOWEST_STREAM_TOKENS_PER_SECOND). Shorter, and Redis delivers the task again while a
  worker still has it; the lease keeps the copy from calling Bedrock, but it goes round the
  queue deferring until the answer ends. The whole life of an answer (every retry) is not
  the bound: a retry is a new message, delivered afresh.
- config.E011: reservation expiry must outlast the visibility timeout plus kombu's restore
  cadence: that is how long after its last claim a running answer whose worker died can
  wait for its task to come back, and expiring it first fails an answer that would have
  been made (and releases its money while a worker may be about to call Bedrock).
- config.E012: a request that waits in silence (`mode: sync`, a duplicate waiting on its
  Idempotency-Key, a non-streaming OpenAI-style completion) must answer before the proxy in
  front gives up on an idle connection (PROXY_IDLE_TIMEOUT_SECONDS; 0, the default: no proxy
  is declared and nothing is compared). uvicorn itself has no request timeout:
  `--timeout-keep-alive` only closes idle connections *between* requests.
- config.E013: SSE heartbeats must come more often than the idle timeout of the declared
  proxy, or of a typical one (TYPICAL_PROXY_IDLE_TIMEOUT_SECONDS: AWS ALB, nginx
  `proxy_read_timeout`) when none is declared: streams cross proxies we do not run.
- config.E014: a running answer's lease must be renewed at least twice per lease
  (GENERATION_LEASE_RENEW_SECONDS <= GENERATION_LEASE_SECONDS / 2), so one late renewal (a
  busy database) does not make a live worker look dead: the sweeper would hand its answer
  to a second attempt, and Bedrock would be called twice for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core import checks

from models_catalog.catalogue import BEDROCK_MAX_GEN_LEN

TYPICAL_PROXY_IDLE_TIMEOUT_SECONDS = 60.0
# Bedrock streams Meta's models at roughly 20 to 80 tokens a second; a slow day's allowance.
SLOWEST_STREAM_TOKENS_PER_SECOND = 10.0
# kombu's Redis defaults, when CELERY_BROKER_TRANSPORT_OPTIONS leaves them out.
KOMBU_UNACKED_RESTORE_INTERVAL = 10
KOMBU_UNACKED_RESTORE_THROTTLE = 10
# conversations.services.dispatch.generation_retry_after_lease: a task waits out the other
# attempt's lease plus up to twice its DEFER_SECONDS of jitter.
DEFERRAL_JITTER_SECONDS = 2.0


def longest_task_countdown_seconds() -> float:
    """The longest countdown a worker holds a task through before running it."""
    lease = getattr(settings, "GENERATION_LEASE_SECONDS", 0.0)
    return max(settings.GENERATION_RETRY_BACKOFF_MAX_SECONDS, lease + DEFERRAL_JITTER_SECONDS)


def longest_task_delivery_seconds() -> float:
    """The longest a worker can hold one delivery of an answer's task (see config.E010)."""
    return (
        longest_task_countdown_seconds()
        + settings.BEDROCK_CONNECT_TIMEOUT_SECONDS
        + settings.BEDROCK_READ_TIMEOUT_SECONDS
        + BEDROCK_MAX_GEN_LEN / SLOWEST_STREAM_TOKENS_PER_SECOND
    )


def redelivery_delay_seconds() -> float:
    """After a worker dies, how long until its task is given to another (see config.E011)."""
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    cadence = options.get("unacked_restore_interval", KOMBU_UNACKED_RESTORE_INTERVAL) * (
        options.get("unacked_restore_throttle", KOMBU_UNACKED_RESTORE_THROTTLE)
    )
    return settings.CELERY_VISIBILITY_TIMEOUT_SECONDS + cadence


def _visibility_timeout_outlasts_a_delivery() -> list[checks.CheckMessage]:
    visibility = settings.CELERY_VISIBILITY_TIMEOUT_SECONDS
    longest = longest_task_delivery_seconds()
    if visibility > longest:
        return []
    stream = BEDROCK_MAX_GEN_LEN / SLOWEST_STREAM_TOKENS_PER_SECOND
    return [
        checks.Error(
            f"CELERY_VISIBILITY_TIMEOUT_SECONDS ({visibility:g} s) must be longer than a "
            f"worker can hold one delivery of an answer's task: {longest:g} s (a countdown "
            f"of up to {longest_task_countdown_seconds():g} s, the longer of "
            "GENERATION_RETRY_BACKOFF_MAX_SECONDS and GENERATION_LEASE_SECONDS + "
            f"{DEFERRAL_JITTER_SECONDS:g} s; BEDROCK_CONNECT_TIMEOUT_SECONDS "
            f"{settings.BEDROCK_CONNECT_TIMEOUT_SECONDS:g} s; BEDROCK_READ_TIMEOUT_SECONDS "
            f"{settings.BEDROCK_READ_TIMEOUT_SECONDS:g} s; {stream:g} s streaming "
            f"{BEDROCK_MAX_GEN_LEN} tokens).",
            hint=(
                "Otherwise Redis delivers a slow answer's task again while a worker still "
                "has it, and the copy goes round the queue until the answer ends. Raise "
                "CELERY_VISIBILITY_TIMEOUT_SECONDS or lower the Bedrock timeouts."
            ),
            id="config.E010",
        )
    ]


def _reservation_expiry_outlasts_redelivery() -> list[checks.CheckMessage]:
    expiry = settings.RESERVATION_EXPIRY_SECONDS
    redelivery = redelivery_delay_seconds()
    if expiry > redelivery:
        return []
    return [
        checks.Error(
            f"RESERVATION_EXPIRY_SECONDS ({expiry:g} s) must be longer than a dead worker's "
            f"task takes to come back: {redelivery:g} s (CELERY_VISIBILITY_TIMEOUT_SECONDS "
            f"{settings.CELERY_VISIBILITY_TIMEOUT_SECONDS:g} s + kombu's restore cadence "
            f"{redelivery - settings.CELERY_VISIBILITY_TIMEOUT_SECONDS:g} s).",
            hint=(
                "Otherwise the periodic expiry fails answers (and releases their money) "
                "whose task is on its way back to a worker. Raise RESERVATION_EXPIRY_SECONDS "
                "or lower CELERY_VISIBILITY_TIMEOUT_SECONDS."
            ),
            id="config.E011",
        )
    ]


def _silent_waits() -> list[tuple[str, float]]:
    """Settings for how long a request may wait before it sends its first byte."""
    names = (
        "GENERATION_SYNC_WAIT_SECONDS",
        "IDEMPOTENCY_WAIT_SECONDS",
        "OPENAI_COMPLETION_TIMEOUT_SECONDS",
    )
    return [(name, getattr(settings, name)) for name in names if hasattr(settings, name)]


def _silent_waits_end_before_the_proxy_gives_up() -> list[checks.CheckMessage]:
    proxy_idle = getattr(settings, "PROXY_IDLE_TIMEOUT_SECONDS", 0) or 0
    if proxy_idle <= 0:
        return []
    return [
        checks.Error(
            f"{name} ({seconds:g} s) must be shorter than PROXY_IDLE_TIMEOUT_SECONDS "
            f"({proxy_idle:g} s): such a request sends nothing while it waits.",
            hint=(
                "Otherwise the proxy cuts the request and the client gets the proxy's 504 "
                f"instead of our answer (or our 202). Lower {name}, or raise the proxy's idle "
                "timeout and PROXY_IDLE_TIMEOUT_SECONDS with it."
            ),
            id="config.E012",
        )
        for name, seconds in _silent_waits()
        if seconds >= proxy_idle
    ]


def _sse_heartbeat_beats_idle_timeouts() -> list[checks.CheckMessage]:
    heartbeat = settings.SSE_HEARTBEAT_SECONDS
    declared = getattr(settings, "PROXY_IDLE_TIMEOUT_SECONDS", 0) or 0
    proxy_idle = declared if declared > 0 else TYPICAL_PROXY_IDLE_TIMEOUT_SECONDS
    if 0 < heartbeat < proxy_idle:
        return []
    which = (
        f"PROXY_IDLE_TIMEOUT_SECONDS ({proxy_idle:g} s)"
        if declared > 0
        else f"a typical proxy's idle timeout ({proxy_idle:g} s)"
    )
    return [
        checks.Error(
            f"SSE_HEARTBEAT_SECONDS ({heartbeat:g} s) must be above 0 and shorter than {which}.",
            hint=(
                "Answer streams go quiet while Bedrock thinks; without a heartbeat inside the "
                "idle timeout, proxies close them mid-answer."
            ),
            id="config.E013",
        )
    ]


def _leases_are_renewed_in_time() -> list[checks.CheckMessage]:
    lease = getattr(settings, "GENERATION_LEASE_SECONDS", None)
    renew = getattr(settings, "GENERATION_LEASE_RENEW_SECONDS", None)
    if lease is None or renew is None or 0 < renew <= lease / 2:
        return []
    return [
        checks.Error(
            f"GENERATION_LEASE_RENEW_SECONDS ({renew:g} s) must be above 0 and at most half "
            f"of GENERATION_LEASE_SECONDS ({lease:g} s).",
            hint=(
                "Otherwise one late renewal (a busy database) lets a live worker's lease "
                "lapse: the sweeper hands its answer to a second attempt and Bedrock is "
                "called twice for one answer."
            ),
            id="config.E014",
        )
    ]


@checks.register("timeouts")
def timeouts_agree(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[Any]:
    return [
        *_visibility_timeout_outlasts_a_delivery(),
        *_reservation_expiry_outlasts_redelivery(),
        *_silent_waits_end_before_the_proxy_gives_up(),
        *_sse_heartbeat_beats_idle_timeouts(),
        *_leases_are_renewed_in_time(),
    ]
