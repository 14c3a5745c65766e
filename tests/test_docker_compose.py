"""docker-compose.yml, the production shape: what restarts on its own and what does not."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


def test_long_running_services_restart_and_the_one_off_migrate_does_not() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    restart = {name: str(service.get("restart", "no")) for name, service in services.items()}
    assert restart == {
        "postgres": "unless-stopped",
        "redis": "unless-stopped",
        "migrate": "no",
        "web": "unless-stopped",
        "worker": "unless-stopped",
        "beat": "unless-stopped",
    }


def test_beat_runs_once_as_its_own_service() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    commands = {name: " ".join(service.get("command", [])) for name, service in services.items()}
    assert [name for name, command in commands.items() if " beat " in f" {command} "] == ["beat"]
    assert "--beat" not in commands["worker"]
    assert " -B" not in commands["worker"]
