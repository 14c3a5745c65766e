"""The Bedrock Runtime client: the only module that calls Bedrock.

``invoke`` and ``stream`` send the Meta Llama request body and turn every failure into a
``BedrockError`` (see ``errors``). botocore is configured never to retry: the Celery task
is the one place that retries, with its own backoff, so a throttled request costs exactly
one HTTP attempt here.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from django.conf import settings

from models_catalog.bedrock.errors import (
    INCOMPLETE_STREAM,
    TRANSPORT_EXCEPTIONS,
    FinalBedrockError,
    RetryableBedrockError,
    to_bedrock_error,
)

# Static credentials for a local endpoint only: the local server ignores signatures, but
# botocore refuses to sign without some credentials.
LOCAL_ENDPOINT_CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
# botocore's client-config "max_attempts" counts *retries* (it adds one for the first
# attempt), so {"max_attempts": 1} would mean two HTTP requests. "total_max_attempts"
# counts the first attempt too; 1 means a single request, whatever AWS_MAX_ATTEMPTS says.
NO_RETRIES: Mapping[str, Any] = {"total_max_attempts": 1, "mode": "standard"}
# Streams hold a pooled connection for their whole length; a threaded caller may run
# several at once, and urllib3 otherwise discards connections past the default of 10.
MAX_POOL_CONNECTIONS = 50


@dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_token_count: int
    generation_token_count: int
    stop_reason: str


@dataclass(frozen=True)
class Delta:
    text: str
    # Bedrock's counts so far, as the chunks report them (the prompt's arrives first, the
    # generation's is cumulative): what a cancelled or failed call is charged from.
    prompt_token_count: int | None = None
    generation_token_count: int | None = None


@dataclass(frozen=True)
class Final:
    prompt_token_count: int
    generation_token_count: int
    stop_reason: str


StreamEvent = Delta | Final


@functools.cache
def build_bedrock_client(
    *,
    region_name: str,
    endpoint_url: str | None,
    connect_timeout: float,
    read_timeout: float,
) -> BaseClient:
    """Create (once per distinct argument set) a bedrock-runtime client.

    boto3 clients are thread-safe, sessions are not, hence a session of its own.
    """
    session = boto3.session.Session()
    credentials: dict[str, str] = {}
    # Only a configured endpoint (the local server) may run without real credentials;
    # towards real Bedrock a missing credential must fail loudly, not sign as "local".
    if endpoint_url is not None and session.get_credentials() is None:
        credentials = dict(LOCAL_ENDPOINT_CREDENTIALS)
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        # A copy: botocore rewrites the retries dict it is given.
        retries=dict(NO_RETRIES),
        max_pool_connections=MAX_POOL_CONNECTIONS,
    )
    return session.client(
        "bedrock-runtime",
        region_name=region_name,
        endpoint_url=endpoint_url,
        config=config,
        **credentials,
    )


def get_bedrock_client() -> BaseClient:
    """The client for the current Django settings (cached per settings values)."""
    return build_bedrock_client(
        region_name=settings.AWS_REGION,
        endpoint_url=settings.BEDROCK_ENDPOINT_URL or None,
        connect_timeout=float(settings.BEDROCK_CONNECT_TIMEOUT_SECONDS),
        read_timeout=float(settings.BEDROCK_READ_TIMEOUT_SECONDS),
    )


def clear_bedrock_client_cache() -> None:
    build_bedrock_client.cache_clear()


def _request_body(*, prompt: str, temperature: float, top_p: float, max_gen_len: int) -> str:
    # Coerced because callers may hold Decimals (model defaults are DecimalFields), which
    # json cannot encode.
    return json.dumps(
        {
            "prompt": prompt,
            "temperature": float(temperature),
            "top_p": float(top_p),
            "max_gen_len": int(max_gen_len),
        }
    )


def _parse_generation(raw: bytes) -> GenerationResult:
    try:
        payload = json.loads(raw)
        return GenerationResult(
            text=str(payload["generation"]),
            prompt_token_count=int(payload["prompt_token_count"]),
            generation_token_count=int(payload["generation_token_count"]),
            stop_reason=str(payload["stop_reason"]),
        )
    except (ValueError, TypeError, KeyError) as exception:
        message = f"unexpected invoke body: {raw[:200]!r}"
        raise FinalBedrockError("InvalidResponse", message) from exception


def invoke(
    *,
    model_id: str,
    prompt: str,
    temperature: float,
    top_p: float,
    max_gen_len: int,
    client: BaseClient | None = None,
) -> GenerationResult:
    """One InvokeModel call. Raises ``RetryableBedrockError`` or ``FinalBedrockError``."""
    body = _request_body(
        prompt=prompt, temperature=temperature, top_p=top_p, max_gen_len=max_gen_len
    )
    try:
        response = (client or get_bedrock_client()).invoke_model(
            modelId=model_id, body=body, contentType="application/json", accept="application/json"
        )
        streaming_body = response["body"]
        try:
            raw = streaming_body.read()
        finally:
            streaming_body.close()
    except TRANSPORT_EXCEPTIONS as exception:
        raise to_bedrock_error(exception) from exception
    return _parse_generation(raw)


class _StreamTotals:
    """Accumulates the counts a Llama stream spreads over its chunks."""

    def __init__(self) -> None:
        self.prompt_token_count: int | None = None
        self.generation_token_count = 0
        self.stop_reason: str | None = None
        self.metrics: Mapping[str, Any] | None = None

    def add(self, chunk: Mapping[str, Any]) -> str:
        """Record one chunk and return its generated text."""
        # Only the first chunk carries the prompt count; later ones send null.
        if self.prompt_token_count is None and chunk.get("prompt_token_count") is not None:
            self.prompt_token_count = int(chunk["prompt_token_count"])
        if chunk.get("generation_token_count") is not None:
            # Cumulative, so the last one seen is the total.
            self.generation_token_count = int(chunk["generation_token_count"])
        if chunk.get("stop_reason") is not None:
            self.stop_reason = str(chunk["stop_reason"])
        if chunk.get("amazon-bedrock-invocationMetrics") is not None:
            self.metrics = chunk["amazon-bedrock-invocationMetrics"]
        return str(chunk.get("generation") or "")

    def final(self) -> Final:
        if self.stop_reason is None:
            raise RetryableBedrockError(INCOMPLETE_STREAM, "stream ended without a stop reason")
        # Bedrock's invocation metrics are what it bills; chunk counts are the fallback.
        metrics = self.metrics or {}
        prompt_tokens = metrics.get("inputTokenCount", self.prompt_token_count)
        generation_tokens = metrics.get("outputTokenCount", self.generation_token_count)
        return Final(
            prompt_token_count=int(prompt_tokens or 0),
            generation_token_count=int(generation_tokens or 0),
            stop_reason=self.stop_reason,
        )


def _decode_chunk(event: Mapping[str, Any]) -> Mapping[str, Any] | None:
    chunk = event.get("chunk")
    if chunk is None:
        return None
    try:
        decoded = json.loads(chunk["bytes"])
    except (ValueError, TypeError, KeyError) as exception:
        message = f"undecodable chunk: {chunk!r}"
        raise FinalBedrockError("InvalidResponse", message) from exception
    if not isinstance(decoded, dict):
        raise FinalBedrockError("InvalidResponse", f"chunk is not an object: {decoded!r}")
    return decoded


def stream(
    *,
    model_id: str,
    prompt: str,
    temperature: float,
    top_p: float,
    max_gen_len: int,
    client: BaseClient | None = None,
) -> Iterator[StreamEvent]:
    """InvokeModelWithResponseStream: ``Delta`` per non-empty chunk, then one ``Final``.

    A generator: nothing is sent before the first ``next()``. Errors (before or inside the
    stream) are raised while iterating, as ``BedrockError``. Closing the generator early
    (``close()``, ``break`` + garbage collection) closes the HTTP response, so Bedrock stops
    sending and the pooled connection is not reused half-read.
    """
    body = _request_body(
        prompt=prompt, temperature=temperature, top_p=top_p, max_gen_len=max_gen_len
    )
    event_stream: Any = None
    try:
        response = (client or get_bedrock_client()).invoke_model_with_response_stream(
            modelId=model_id, body=body, contentType="application/json", accept="application/json"
        )
        event_stream = response["body"]
        totals = _StreamTotals()
        for event in event_stream:
            chunk = _decode_chunk(event)
            if chunk is None:
                continue
            text = totals.add(chunk)
            if text:
                yield Delta(
                    text,
                    prompt_token_count=totals.prompt_token_count,
                    generation_token_count=totals.generation_token_count,
                )
        yield totals.final()
    except TRANSPORT_EXCEPTIONS as exception:
        raise to_bedrock_error(exception) from exception
    finally:
        close = getattr(event_stream, "close", None)
        if close is not None:
            close()
