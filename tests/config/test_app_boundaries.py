"""App boundaries. Imports are checked by import-linter (the contract in pyproject.toml, run
by `make lint`); a model fetched by app label (`apps.get_model`) is a dependency the linter
cannot see, so each one is listed here with its reason, and a new one fails until it is."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = ("config", "conversations", "billing", "models_catalog", "idempotency", "openai_api")
GET_MODEL = re.compile(r"""apps\.get_model\(\s*["'](\w+)["']\s*,\s*["'](\w+)["']""")

# (the app that reaches, the model it names): why it may.
BY_APP_LABEL = {
    ("billing", "conversations.Tenant"): "DESIGN.md: billing refers to the tenant by app label",
    ("billing", "conversations.EndUser"): (
        "a limit for an end user who has not called yet creates them (get-or-create)"
    ),
    ("billing", "conversations.Message"): (
        "the cockpit counts answers in progress (to move: a conversations selector the "
        "cockpit's page is given)"
    ),
}


def reaches() -> set[tuple[str, str]]:
    found = set()
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            for label, model in GET_MODEL.findall(path.read_text(encoding="utf-8")):
                if label != app:
                    found.add((app, f"{label}.{model}"))
    return found


def test_every_model_reached_by_app_label_across_apps_is_listed_with_its_reason() -> None:
    assert reaches() == set(BY_APP_LABEL)
