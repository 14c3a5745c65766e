"""The ASGI web server's command line, built in one place.

The run command (devtools/stack.py), the Dockerfile, docker-compose.yml and the benchmarks
start uvicorn through `uvicorn_command` (or `python -m config.web_server`, which execs it),
so they agree on who may name the client's address; tests/security/test_web_server.py checks
that command. (The e2e tests start uvicorn with its defaults, from loopback only.)

uvicorn believes X-Forwarded-For and X-Forwarded-Proto from 127.0.0.1 unless told otherwise,
so anything that reaches it over loopback (a sidecar, a local tunnel, the tests) could pick
its own address and sidestep per-address limits. The headers are trusted only when
TRUSTED_PROXY_COUNT says proxies are in front, and then only from FORWARDED_ALLOW_IPS
(uvicorn's own variable: the proxies' addresses, default 127.0.0.1). Our middleware reads
X-Forwarded-For by TRUSTED_PROXY_COUNT either way (config.auth_throttle.client_address).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

ASGI_APPLICATION = "config.asgi:application"
DEFAULT_FORWARDED_ALLOW_IPS = "127.0.0.1"


def proxy_header_arguments(environment: Mapping[str, str]) -> list[str]:
    """uvicorn's forwarding-header flags for the TRUSTED_PROXY_COUNT in this environment."""
    proxy_count = int(environment.get("TRUSTED_PROXY_COUNT") or 0)
    if proxy_count <= 0:
        return ["--no-proxy-headers"]
    allowed = environment.get("FORWARDED_ALLOW_IPS") or DEFAULT_FORWARDED_ALLOW_IPS
    return ["--proxy-headers", "--forwarded-allow-ips", allowed]


def uvicorn_command(environment: Mapping[str, str], arguments: Sequence[str] = ()) -> list[str]:
    """argv that serves the application, for a process that gets this environment.

    `arguments` go to uvicorn as they are (--host, --port, --no-access-log, ...).
    """
    return [
        sys.executable,
        "-m",
        "uvicorn",
        ASGI_APPLICATION,
        *proxy_header_arguments(environment),
        *arguments,
    ]


def main(arguments: Sequence[str]) -> None:
    command = uvicorn_command(os.environ, arguments)
    os.execv(command[0], command)  # noqa: S606 - our own argv, no shell


if __name__ == "__main__":
    main(sys.argv[1:])
