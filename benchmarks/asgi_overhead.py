"""What Django's ASGI handler costs per API request, before our view does anything.

The same application served in-process by two handlers, interleaved in rounds: Django's
stock `ASGIHandler` (every `MiddlewareMixin` hook of an ASGI request hops to a thread and
back) and ours, `config.asgi_handler.OneHopASGIHandler` (a sync view's request runs the
sync middleware chain and the view in one hop). Requests: `GET /api/v1/models` and
`GET /api/v1/conversations` (authenticated sync DRF views), sent one at a time through the
ASGI interface, so no network and no server process is counted. Prints CPU (all threads of
this process) and wall time per request.

    .venv/bin/python benchmarks/asgi_overhead.py [--requests 400] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._django import DEFAULT_POSTGRES_URL, setup_django, throwaway_database

PATHS = ("/api/v1/models", "/api/v1/conversations")


async def _request(application: Any, path: str, authorization: bytes) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"authorization", authorization)],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    status = 0
    body_sent = asyncio.Event()

    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # no disconnect: the handler cancels this wait
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            body_sent.set()

    await application(scope, receive, send)
    await body_sent.wait()
    return status


async def _timed(application: Any, count: int, authorization: bytes) -> tuple[float, float]:
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    for index in range(count):
        status = await _request(application, PATHS[index % len(PATHS)], authorization)
        if status != 200:
            raise RuntimeError(f"unexpected status {status}")
    cpu = time.process_time() - cpu_started
    wall = time.perf_counter() - wall_started
    return cpu * 1000 / count, wall * 1000 / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="per handler per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres-admin-url", default=DEFAULT_POSTGRES_URL)
    arguments = parser.parse_args()

    with throwaway_database(arguments.backend, arguments.postgres_admin_url) as database_url:
        setup_django(database_url)
        from django.core.handlers.asgi import ASGIHandler
        from django.core.management import call_command

        from config.asgi_handler import OneHopASGIHandler
        from conversations.services.tenants import api_key_create, tenant_create

        logging.disable(logging.INFO)  # the access log line of every request
        call_command("load_model_catalogue", verbosity=0)
        created = api_key_create(tenant=tenant_create(slug="bench"))
        authorization = f"Bearer {created.secret}".encode()
        handlers = {"Django's ASGIHandler": ASGIHandler(), "OneHopASGIHandler": OneHopASGIHandler()}
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in handlers}

        async def run() -> None:
            for handler in handlers.values():  # warm up: imports, caches, first connection
                await _timed(handler, 20, authorization)
            for _ in range(arguments.rounds):
                for name, handler in handlers.items():
                    results[name].append(await _timed(handler, arguments.requests, authorization))

        asyncio.run(run())

    print(
        f"\n{arguments.rounds} rounds x {arguments.requests} requests per handler, "
        f"{arguments.backend}, GET {' and '.join(PATHS)} (authenticated)\n"
    )
    print("| handler | CPU ms per request, median of rounds | wall ms per request |")
    print("|---|---|---|")
    for name, rows in results.items():
        cpu = statistics.median(row[0] for row in rows)
        wall = statistics.median(row[1] for row in rows)
        print(f"| {name} | {cpu:.2f} | {wall:.2f} |")


if __name__ == "__main__":
    main()
