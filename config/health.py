"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

import logging

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from config.redis_client import get_redis

logger = logging.getLogger(__name__)


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and serving; says nothing about its dependencies."""
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def _check_redis() -> str | None:
    try:
        get_redis().ping()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready when the database and Redis answer; 503 names whatever is down."""
    failures = {
        name: problem
        for name, problem in (("database", _check_database()), ("redis", _check_redis()))
        if problem is not None
    }
    checks = {name: ("down" if name in failures else "ok") for name in ("database", "redis")}
    if failures:
        logger.warning("Not ready: %s", failures)
        return JsonResponse(
            {
                "status": "unavailable",
                "checks": checks,
                "message": "Not ready: " + ", ".join(sorted(failures)) + " down.",
            },
            status=503,
        )
    return JsonResponse({"status": "ok", "checks": checks})
