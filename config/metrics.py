"""Prometheus metrics at /metrics, for operators only.

Two kinds of numbers:

- per-process HTTP metrics (requests by method, URL name and status; latency by URL name),
  counted by `config.request_context`'s middleware;
- numbers read at scrape time from the places that hold the truth for every web and worker
  process at once, kept there as the work happens so a scrape reads no ledger: tokens and
  cost by model (the daily rollups that settlement adds to), open reservations and answers
  by status (the database's current state), Bedrock errors (counted in Redis as they
  happen) and the Celery queue (Redis). Workers run on other hosts than the web, so a
  counter in a process's memory could not be scraped here. A dependency that is down drops
  its numbers and reports `llama_dependency_up{dependency=…} 0`; the scrape itself still
  answers.

With several web processes, set PROMETHEUS_MULTIPROC_DIR (an empty directory, wiped when the
service starts) in all of them: prometheus_client then keeps the HTTP metrics in files there
and any process's /metrics sums them all.

Who may read it (credentials read by config.credentials, as everywhere): with METRICS_TOKEN
set, whoever sends `Authorization: Bearer <token>`; without one, only an unproxied request
from a loopback address without credentials. Everyone else, tenants' API keys included,
gets 404, as if there were nothing here.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Iterator

from django.conf import settings
from django.db import connection, transaction
from django.http import Http404, HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from config.credentials import presented_credentials
from config.redis_client import get_redis

logger = logging.getLogger(__name__)

BEDROCK_ERRORS_KEY = "metrics:bedrock_errors"
# kombu's Redis transport keeps priorities 3, 6 and 9 of a queue in lists beside it.
CELERY_PRIORITY_SEPARATOR = "\x06\x16"
CELERY_PRIORITY_STEPS = (3, 6, 9)
# On PostgreSQL, a scrape that would take longer than this gives up on the database numbers.
DATABASE_STATEMENT_TIMEOUT_MS = 5000

# Label values come from us, never straight from a client, so series stay bounded.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Up to a minute: `mode: sync` waits for whole answers.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# The `_created` timestamp series would double the series count for nothing we graph.
disable_created_metrics()
_registry = CollectorRegistry()
HTTP_REQUESTS = Counter(
    "http_requests",
    "HTTP requests answered, by method, URL name and status.",
    ["method", "route", "status"],
    registry=_registry,
)
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request (to the first byte when streamed), by method and URL name.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
    registry=_registry,
)


def http_request_observe(*, method: str, route: str, status: int, seconds: float) -> None:
    method = method if method in HTTP_METHODS else "other"
    HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
    HTTP_REQUEST_DURATION.labels(method=method, route=route).observe(seconds)


def record_bedrock_error(code: str) -> None:
    """Count one Bedrock error by its code, in Redis (shared by all workers). Never raises."""
    if not ERROR_CODE.fullmatch(code):
        code = "other"
    try:
        get_redis().hincrby(BEDROCK_ERRORS_KEY, code, 1)
    except Exception as error:
        # Losing a count must never fail a generation.
        logger.warning(
            "Could not count Bedrock error %s in Redis: %s: %s", code, type(error).__name__, error
        )


# What each app reads from the database at a scrape (answers by status, the ledger, open
# reservations), registered by its AppConfig.ready: config imports no app.
_database_readers: list[Callable[[], list[Metric]]] = []


def database_metrics_register(read: Callable[[], list[Metric]]) -> None:
    """Add an app's database numbers to every scrape (read in one transaction, in the order
    the apps are installed)."""
    if read not in _database_readers:
        _database_readers.append(read)


def _celery_queue_keys() -> tuple[str, list[str]]:
    queue = getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", None) or "celery"
    keys = [queue] + [f"{queue}{CELERY_PRIORITY_SEPARATOR}{step}" for step in CELERY_PRIORITY_STEPS]
    return queue, keys


class ScrapeTimeCollector(Collector):
    """Reads the database and Redis on every scrape: right however many processes there are."""

    def describe(self) -> list[Metric]:
        return []  # registering must not query anything

    def collect(self) -> Iterator[Metric]:
        dependency_up = GaugeMetricFamily(
            "llama_dependency_up",
            "1 when this scrape could read the dependency, 0 when its numbers are missing.",
            labels=["dependency"],
        )
        families: list[Metric] = []
        for dependency, read in (
            ("database", self._database_metrics),
            ("redis", self._redis_metrics),
        ):
            try:
                families += read()
            except Exception as error:
                # Skip its numbers rather than fail the scrape; Prometheus keeps the rest.
                logger.warning(
                    "Metrics scrape could not read the %s: %s: %s",
                    dependency,
                    type(error).__name__,
                    error,
                )
                dependency_up.add_metric([dependency], 0)
            else:
                dependency_up.add_metric([dependency], 1)
        yield dependency_up
        yield from families

    def _database_metrics(self) -> list[Metric]:
        # One transaction so a statement timeout can be set for these queries only.
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(f"SET LOCAL statement_timeout = {DATABASE_STATEMENT_TIMEOUT_MS}")
            return [family for read in _database_readers for family in read()]

    def _redis_metrics(self) -> list[Metric]:
        queue, queue_keys = _celery_queue_keys()
        pipeline = get_redis().pipeline(transaction=False)
        pipeline.hgetall(BEDROCK_ERRORS_KEY)
        for key in queue_keys:
            pipeline.llen(key)
        error_counts, *lengths = pipeline.execute()

        errors = CounterMetricFamily(
            "llama_bedrock_errors", "Bedrock errors met by generations, by code.", labels=["code"]
        )
        for code, count in sorted(error_counts.items()):
            errors.add_metric([code.decode("utf-8", "replace")], int(count))
        queue_length = GaugeMetricFamily(
            "llama_celery_queue_length",
            "Tasks waiting in the Celery queue (all priorities).",
            labels=["queue"],
        )
        queue_length.add_metric([queue], sum(lengths))
        return [errors, queue_length]


_registry.register(ScrapeTimeCollector())
ProcessCollector(registry=_registry)
PlatformCollector(registry=_registry)
GCCollector(registry=_registry)


def metrics_registry() -> CollectorRegistry:
    # prometheus_client itself reads this variable (at import) to keep values in files.
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return _registry
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    registry.register(ScrapeTimeCollector())
    return registry


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def _may_read_metrics(request: HttpRequest) -> bool:
    credentials = presented_credentials(request)
    token = settings.METRICS_TOKEN
    if token:
        return (
            credentials is not None
            and credentials.bearer is not None
            and hmac.compare_digest(credentials.bearer.encode(), token.encode())
        )
    if credentials is not None:
        return False  # a tenant's key proves nothing here
    # A reverse proxy on this host makes every client look local; its headers give it away.
    proxied = any(
        header in request.headers for header in ("Forwarded", "X-Forwarded-For", "X-Real-IP")
    )
    return not proxied and _is_loopback(request.META.get("REMOTE_ADDR", ""))


def metrics_view(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD") or not _may_read_metrics(request):
        raise Http404
    response = HttpResponse(generate_latest(metrics_registry()), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
