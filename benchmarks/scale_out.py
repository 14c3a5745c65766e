"""How throughput grows with more web processes and more Celery workers, on one machine.

The run command (`python -m devtools.stack`) with WEB_PROCESSES web processes (uvicorn
--workers) and WORKER_PROCESSES Celery workers (threads pool, 16 threads each), on
PostgreSQL + Redis (the scale-out setting: SQLite has one writer), governance on (a hard
budget and a quota on every tenant), in front of the local Bedrock stand-in (zero latency,
100-token answers). `--clients` clients spread over `--tenants` tenants (so that no
tenant's fair share, GENERATION_TENANT_MAX_RUNNING or WEB_TENANT_ACTIVE_REQUESTS, is what
limits) each loop non-streaming `POST /v1/chat/completions` for `--duration` seconds.
Prints answers/s and latency per configuration, and the speed-up over one of each.

    .venv/bin/python benchmarks/scale_out.py [--configurations 1x1 2x1 1x2 2x2]

WxK: W web processes, K workers. The clients run in this process (threads), on the same
two cores as the system they measure.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _peer_processes as processes
from benchmarks.generation import manage

DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/bench_scale_out"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
HTTP_TIMEOUT_SECONDS = 60


def _tenant_keys(environment: dict[str, str], count: int) -> list[str]:
    keys = []
    for number in range(1, count + 1):
        slug = f"scale-{number}"
        manage(environment, "create_tenant", slug)
        manage(environment, "set_budget", "--tenant", slug, "--period", "month",
               "--limit", "1000000", "--hard")  # fmt: skip
        manage(environment, "set_quota", "--tenant", slug, "--rpm", "1000000",
               "--tpm", "1000000000", "--tpd", "1000000000", "--concurrency", "10000")  # fmt: skip
        keys.append(manage(environment, "create_api_key", slug).strip().splitlines()[-1])
    return keys


def _load(
    base_url: str, keys: list[str], clients: int, seconds: float
) -> tuple[int, list[float], int]:
    """(answers, their latencies in ms, failures) of `clients` looping for `seconds`."""
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        nonlocal failures
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {keys[index % len(keys)]}"
        body = {
            "model": processes.MODEL_ID,
            "messages": [{"role": "user", "content": f"Client {index}: tell me about llamas."}],
            "max_tokens": 128,
        }
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                ok = (
                    session.post(
                        f"{base_url}/v1/chat/completions", json=body, timeout=HTTP_TIMEOUT_SECONDS
                    ).status_code
                    == 200
                )
            except requests.RequestException:
                ok = False
            with lock:
                if ok:
                    latencies.append((time.perf_counter() - started) * 1000)
                else:
                    failures += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies), latencies, failures


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configurations", nargs="+", default=["1x1", "2x1", "1x2", "2x2"])
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--tenants", type=int, default=5)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per configuration")
    parser.add_argument("--warm-up", type=float, default=3.0, help="seconds, not counted")
    arguments = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="scale-out-") as directory_name:
        directory = Path(directory_name)
        with contextlib.ExitStack() as stand_in:
            bedrock_url = processes.start_stand_in(stand_in, 100, directory)
            for configuration in arguments.configurations:
                web, workers = (int(part) for part in configuration.split("x"))
                print(f"{web} web x {workers} workers ...", flush=True)
                scratch = directory / configuration
                scratch.mkdir()
                with contextlib.ExitStack() as stack:
                    ours, _ = processes.start_our_stack(
                        stack,
                        bedrock_url=bedrock_url,
                        directory=scratch,
                        scratch=scratch,
                        postgres_url=arguments.postgres,
                        redis_url=arguments.redis_url,
                        django_debug=False,
                        extra_environment={
                            "WEB_PROCESSES": str(web),
                            "WORKER_PROCESSES": str(workers),
                        },
                    )
                    keys = _tenant_keys(ours.environment, arguments.tenants)
                    _load(ours.base_url, keys, arguments.clients, arguments.warm_up)
                    answers, latencies, failures = _load(
                        ours.base_url, keys, arguments.clients, arguments.duration
                    )
                rows.append((web, workers, answers / arguments.duration, latencies, failures))

    print(
        f"\n{arguments.clients} clients over {arguments.tenants} tenants, "
        f"{arguments.duration:g} s per configuration, PostgreSQL + Redis, governance on, "
        "non-streaming POST /v1/chat/completions, 100-token answers, zero-latency stand-in\n"
    )
    print("| web processes | workers | answers/s | vs 1 x 1 | p50 / p95 ms | failed |")
    print("|---|---|---|---|---|---|")
    base = next((rate for web, workers, rate, *_ in rows if (web, workers) == (1, 1)), None)
    for web, workers, rate, latencies, failures in rows:
        ratio = f"{rate / base:.2f}" if base else "-"
        p50 = statistics.median(latencies) if latencies else 0.0
        p95 = _percentile(latencies, 0.95)
        print(f"| {web} | {workers} | {rate:.1f} | {ratio} | {p50:.0f} / {p95:.0f} | {failures} |")


if __name__ == "__main__":
    main()
