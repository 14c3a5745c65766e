"""The clients of benchmarks/peer_compare.py: one request to one system, timed and checked.

Every request asks a new question (so no cache can answer it) and checks the answer: the
status, and that it is the stand-in's full length (``answer_tokens``); anything else is a
failure with a short reason, never an exception.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import requests

from benchmarks._peer_processes import MODEL_ID
from benchmarks.generation import server_sent_events
from models_catalog.prompt_formats import Turn, build_prompt

HTTP_TIMEOUT_SECONDS = 60.0
SYSTEMS = ("native", "v1", "litellm")
FLOOR = "boto3"


@dataclass(frozen=True)
class Outcome:
    seconds: float
    """Send -> the whole answer received."""
    first_token: float | None = None
    """Send -> the first text received (streaming)."""
    failure: str | None = None
    text: str = ""


def question() -> str:
    return f"Question {uuid.uuid4().hex[:12]}: what do llamas eat?"


@dataclass
class Targets:
    ours_url: str
    ours_key: str
    litellm_url: str
    litellm_key: str
    bedrock: Any
    """A boto3 bedrock-runtime client for the stand-in (thread-safe)."""
    answer_tokens: int
    max_tokens: int


class Caller:
    """One client: its own HTTP sessions (requests sessions are not thread-safe)."""

    def __init__(self, targets: Targets) -> None:
        self.targets = targets
        self.ours = requests.Session()
        self.ours.headers["Authorization"] = f"Bearer {targets.ours_key}"
        self.litellm = requests.Session()
        self.litellm.headers["Authorization"] = f"Bearer {targets.litellm_key}"
        self.conversations: list[str] = []
        """Fresh conversations created ahead, one per native request."""
        self.inline_creations = 0
        self.creation_seconds: list[float] = []

    def close(self) -> None:
        self.ours.close()
        self.litellm.close()

    # -- ours, native ---------------------------------------------------------------------

    def create_conversation(self) -> str:
        started = time.perf_counter()
        response = self.ours.post(
            f"{self.targets.ours_url}/api/v1/conversations",
            json={"model": MODEL_ID},
            timeout=HTTP_TIMEOUT_SECONDS,
        )
        self.creation_seconds.append(time.perf_counter() - started)
        if response.status_code != 201:
            raise RuntimeError(f"POST /conversations: {response.status_code} {response.text}")
        return response.json()["id"]

    def fresh_conversation(self) -> str:
        if self.conversations:
            return self.conversations.pop()
        self.inline_creations += 1
        return self.create_conversation()

    def native_sync(self, conversation_id: str, content: str) -> Outcome:
        started = time.perf_counter()
        try:
            response = self.ours.post(
                f"{self.targets.ours_url}/api/v1/conversations/{conversation_id}/messages",
                json={"content": content, "mode": "sync", "max_gen_len": self.targets.max_tokens},
                timeout=HTTP_TIMEOUT_SECONDS,
            )
            body = response.json()
        except (requests.RequestException, ValueError) as error:
            return Outcome(time.perf_counter() - started, failure=type(error).__name__)
        seconds = time.perf_counter() - started
        if response.status_code != 201:
            return Outcome(seconds, failure=_http_failure(response.status_code, body))
        answer = body["assistant_message"]
        if answer["status"] != "completed":
            return Outcome(seconds, failure=f"answer {answer['status']}")
        return Outcome(
            seconds,
            failure=self._length_problem(answer.get("generation_token_count")),
            text=answer["content"],
        )

    def native_stream(self, conversation_id: str, content: str) -> Outcome:
        started = time.perf_counter()
        first: float | None = None
        try:
            response = self.ours.post(
                f"{self.targets.ours_url}/api/v1/conversations/{conversation_id}/messages",
                json={"content": content, "max_gen_len": self.targets.max_tokens},
                timeout=HTTP_TIMEOUT_SECONDS,
            )
            if response.status_code != 202:
                return Outcome(
                    time.perf_counter() - started,
                    failure=_http_failure(response.status_code, response.json()),
                )
            with self.ours.get(
                self.targets.ours_url + response.json()["stream_url"],
                stream=True,
                timeout=HTTP_TIMEOUT_SECONDS,
            ) as stream:
                for event in server_sent_events(stream):
                    if event.type == "delta" and first is None:
                        first = time.perf_counter() - started
                    elif event.type in ("done", "error"):
                        message = json.loads(event.data)["message"]
                        failure = None
                        if message["status"] != "completed":
                            failure = f"answer {message['status']}"
                        else:
                            failure = self._length_problem(message.get("generation_token_count"))
                        return Outcome(time.perf_counter() - started, first, failure)
        except (requests.RequestException, ValueError) as error:
            return Outcome(time.perf_counter() - started, first, type(error).__name__)
        return Outcome(time.perf_counter() - started, first, "stream ended before done")

    # -- OpenAI's Chat Completions (ours /v1/, LiteLLM) -----------------------------------

    def _openai(self, system: str) -> tuple[requests.Session, str]:
        if system == "v1":
            return self.ours, f"{self.targets.ours_url}/v1/chat/completions"
        return self.litellm, f"{self.targets.litellm_url}/v1/chat/completions"

    def openai_sync(
        self, system: str, messages: list[dict[str, str]], conversation: str | None = None
    ) -> Outcome:
        session, url = self._openai(system)
        body: dict[str, Any] = {
            "model": MODEL_ID,
            "messages": messages,
            "max_tokens": self.targets.max_tokens,
        }
        if conversation is not None:
            body["conversation"] = conversation
        started = time.perf_counter()
        try:
            response = session.post(url, json=body, timeout=HTTP_TIMEOUT_SECONDS)
            payload = response.json()
        except (requests.RequestException, ValueError) as error:
            return Outcome(time.perf_counter() - started, failure=type(error).__name__)
        seconds = time.perf_counter() - started
        if response.status_code != 200:
            return Outcome(seconds, failure=_http_failure(response.status_code, payload))
        text = payload["choices"][0]["message"]["content"] or ""
        tokens = (payload.get("usage") or {}).get("completion_tokens")
        return Outcome(seconds, failure=self._length_problem(tokens), text=text)

    def openai_stream(self, system: str, content: str) -> Outcome:
        session, url = self._openai(system)
        body = {
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.targets.max_tokens,
            "stream": True,
        }
        started = time.perf_counter()
        first: float | None = None
        try:
            with session.post(
                url, json=body, stream=True, timeout=HTTP_TIMEOUT_SECONDS
            ) as response:
                if response.status_code != 200:
                    return Outcome(
                        time.perf_counter() - started,
                        failure=_http_failure(response.status_code, response.json()),
                    )
                for event in server_sent_events(response):
                    if event.data == "[DONE]":
                        if first is None:
                            return Outcome(time.perf_counter() - started, None, "no text")
                        return Outcome(time.perf_counter() - started, first)
                    chunk = json.loads(event.data)
                    if "error" in chunk:
                        return Outcome(time.perf_counter() - started, first, "error event")
                    choices = chunk.get("choices") or [{}]
                    if first is None and (choices[0].get("delta") or {}).get("content"):
                        first = time.perf_counter() - started
        except (requests.RequestException, ValueError) as error:
            return Outcome(time.perf_counter() - started, first, type(error).__name__)
        return Outcome(time.perf_counter() - started, first, "stream ended before [DONE]")

    # -- boto3, straight to the stand-in ----------------------------------------------------

    def _bedrock_body(self, content: str) -> str:
        # The prompt our backend sends for a one-message conversation.
        prompt = build_prompt(
            "llama3", system_prompt="", turns=[Turn(role="user", content=content)]
        )
        return json.dumps(
            {
                "prompt": prompt,
                "temperature": 0.5,
                "top_p": 0.9,
                "max_gen_len": self.targets.max_tokens,
            }
        )

    def boto3_sync(self, content: str) -> Outcome:
        body = self._bedrock_body(content)
        started = time.perf_counter()
        try:
            response = self.targets.bedrock.invoke_model(modelId=MODEL_ID, body=body)
            payload = json.loads(response["body"].read())
        except Exception as error:
            return Outcome(time.perf_counter() - started, failure=type(error).__name__)
        seconds = time.perf_counter() - started
        return Outcome(
            seconds,
            failure=self._length_problem(payload.get("generation_token_count")),
            text=payload.get("generation", ""),
        )

    def boto3_stream(self, content: str) -> Outcome:
        body = self._bedrock_body(content)
        started = time.perf_counter()
        first: float | None = None
        tokens = None
        try:
            response = self.targets.bedrock.invoke_model_with_response_stream(
                modelId=MODEL_ID, body=body
            )
            for event in response["body"]:
                chunk = json.loads(event["chunk"]["bytes"])
                if first is None and chunk.get("generation"):
                    first = time.perf_counter() - started
                tokens = chunk.get("generation_token_count", tokens)
        except Exception as error:
            return Outcome(time.perf_counter() - started, first, type(error).__name__)
        return Outcome(time.perf_counter() - started, first, self._length_problem(tokens))

    def _length_problem(self, tokens: object) -> str | None:
        if tokens != self.targets.answer_tokens:
            return f"answer of {tokens} tokens, not {self.targets.answer_tokens}"
        return None

    # -- one request of a system --------------------------------------------------------------

    def sync(self, system: str) -> Outcome:
        content = question()
        if system == FLOOR:
            return self.boto3_sync(content)
        if system == "native":
            return self.native_sync(self.fresh_conversation(), content)
        return self.openai_sync(system, [{"role": "user", "content": content}])

    def stream(self, system: str) -> Outcome:
        content = question()
        if system == FLOOR:
            return self.boto3_stream(content)
        if system == "native":
            return self.native_stream(self.fresh_conversation(), content)
        return self.openai_stream(system, content)


def _http_failure(status: int, body: Any) -> str:
    try:
        code = body["error"].get("code") or body["error"].get("type")
    except (KeyError, TypeError, AttributeError):
        code = ""
    return f"HTTP {status} {code}".strip()


def bedrock_client(url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "bedrock-runtime",
        region_name="us-west-2",
        endpoint_url=url,
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - the stand-in checks no signature
        config=Config(
            connect_timeout=5,
            read_timeout=HTTP_TIMEOUT_SECONDS,
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=64,
        ),
    )
