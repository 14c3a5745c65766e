"""The REST API of a running web server, over real HTTP, as one tenant's key sees it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from tests.factories import LLAMA3
from tests.support.waiting import wait_for


@dataclass
class Api:
    base_url: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.base_url + path, headers=self.headers, timeout=30, **kwargs)

    def post(self, path: str, payload: dict | None = None, **kwargs: Any) -> requests.Response:
        return requests.post(
            self.base_url + path, json=payload or {}, headers=self.headers, timeout=90, **kwargs
        )

    def new_conversation(self, **fields: Any) -> str:
        response = self.post("/api/v1/conversations", {"model": LLAMA3, **fields})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def send(self, conversation_id: str, content: str, **fields: Any) -> requests.Response:
        return self.post(
            f"/api/v1/conversations/{conversation_id}/messages", {"content": content, **fields}
        )

    def message(self, message_id: str) -> dict[str, Any]:
        return self.get(f"/api/v1/messages/{message_id}").json()

    def wait_final(self, message_id: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(
            lambda: (
                (m := self.message(message_id))["status"] in ("completed", "failed", "cancelled")
                and m
            ),
            timeout=timeout,
        )
