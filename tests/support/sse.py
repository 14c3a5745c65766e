"""Server-Sent Events read the way a browser's EventSource reads them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests

from tests.support.live_api import Api


@dataclass
class SseEvent:
    event: str
    data: Any
    id: str | None


def read_sse(
    response: requests.Response, *, stop_after: Callable[[SseEvent], bool] | None = None
) -> Iterator[SseEvent]:
    """Parse text/event-stream the way a browser's EventSource does."""
    event_type, data_lines, event_id = "message", [], None
    for raw_line in response.iter_lines(decode_unicode=True):
        line = raw_line if raw_line is not None else ""
        if line == "":
            if data_lines:
                event = SseEvent(event_type, json.loads("\n".join(data_lines)), event_id)
                yield event
                if stop_after is not None and stop_after(event):
                    return
            event_type, data_lines = "message", []
            continue
        if line.startswith(":"):
            continue  # comment (keep-alive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event_type = value
        elif name == "data":
            data_lines.append(value)
        elif name == "id":
            event_id = value


def stream_events(api: Api, message_id: str, **headers: str) -> list[SseEvent]:
    with requests.get(
        f"{api.base_url}/api/v1/messages/{message_id}/stream",
        headers={**api.headers, **headers},
        stream=True,
        timeout=60,
    ) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/event-stream")
        return list(read_sse(response, stop_after=lambda e: e.event in ("done", "error")))
