"""A local, Bedrock-compatible HTTP server for development and tests. NEVER USE IN PRODUCTION.

    !!! This server answers every request without checking any signature or credential,
    !!! and its "model" writes deterministic filler text. It exists so that the real boto3
    !!! code path (``models_catalog.bedrock.client``) can run offline and in tests through
    !!! ``BEDROCK_ENDPOINT_URL``. It is a development tool: neither the installed package
    !!! nor the Docker image contains it (tests/test_production_package.py).

It speaks enough of the Bedrock Runtime wire protocol (shared/BEDROCK.md) for unmodified
boto3: ``POST /model/{modelId}/invoke`` (JSON) and ``/invoke-with-response-stream`` (AWS
event stream over chunked HTTP/1.1), Bedrock's validation and error responses, and errors
inside a stream. Latency, throttling and mid-stream failures are configurable, and tests
can script exact outcomes per request (``LocalBedrockServer.script``).

It must run without Django configured: nothing here imports Django.

    python -m devtools.local_bedrock --host 127.0.0.1 --port 8001 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import hashlib
import http.server
import json
import logging
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

from devtools import eventstream
from models_catalog.catalogue import BEDROCK_MAX_GEN_LEN

logger = logging.getLogger(__name__)

# The Meta text models of shared/BEDROCK.md and their context windows: Bedrock's side, written
# out rather than read from our catalogue, so that a wrong window in the catalogue is caught by
# a test that compares the two (tests/devtools/test_local_bedrock_server.py).
MODEL_CONTEXT_WINDOWS: Mapping[str, int] = {
    "meta.llama2-13b-chat-v1": 4096,
    "meta.llama2-70b-chat-v1": 4096,
    "meta.llama3-8b-instruct-v1:0": 8192,
    "meta.llama3-70b-instruct-v1:0": 8192,
    "meta.llama3-1-8b-instruct-v1:0": 128_000,
    "meta.llama3-1-70b-instruct-v1:0": 128_000,
    "meta.llama3-1-405b-instruct-v1:0": 128_000,
    "meta.llama3-2-1b-instruct-v1:0": 128_000,
    "meta.llama3-2-3b-instruct-v1:0": 128_000,
    "meta.llama3-2-11b-instruct-v1:0": 128_000,
    "meta.llama3-2-90b-instruct-v1:0": 128_000,
    "meta.llama3-3-70b-instruct-v1:0": 128_000,
}
INFERENCE_PROFILE_PREFIXES = ("us.", "eu.", "apac.", "us-gov.")
# Llama 2 prompts are counted with the Llama 2 tokenizer, every other model's with Llama 3's.
LLAMA2_MODEL_PREFIX = "meta.llama2-"
DEFAULT_MAX_GEN_LEN = 512
DEFAULT_TEMPERATURE = 0.5
DEFAULT_TOP_P = 0.9
ALLOWED_BODY_KEYS = frozenset({"prompt", "temperature", "top_p", "max_gen_len", "images"})

# HTTP statuses from botocore's service model (the error table in shared/BEDROCK.md).
ERROR_STATUS: Mapping[str, int] = {
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "ServiceUnavailableException": 503,
    "InternalServerException": 500,
    "ModelTimeoutException": 408,
    "ModelStreamErrorException": 424,
    "ModelErrorException": 424,
    "ValidationException": 400,
    "ServiceQuotaExceededException": 400,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
}
# Exceptions the stream's service model knows by name (lowerCamelCase members); any other
# mid-stream error has to travel as an unmodelled `error` message.
STREAM_EXCEPTION_MEMBERS = frozenset(
    {
        "internalServerException",
        "modelStreamErrorException",
        "validationException",
        "throttlingException",
        "modelTimeoutException",
        "serviceUnavailableException",
    }
)
ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
_PATH = re.compile(
    r"^/model/(?P<model_id>[^/]+)/(?P<operation>invoke|invoke-with-response-stream)$"
)
INVOKE = "invoke"
INVOKE_STREAM = "invoke-with-response-stream"

# ---------------------------------------------------------------------------------------
# Deterministic "model"
# ---------------------------------------------------------------------------------------

# Each word is exactly one Llama 3 token in all the forms we emit ("word", " word",
# " Word", "Word"), and "." and "," are one token each and split from words by the
# tokenizer's pattern. So the number of pieces we emit *is* the token count of the text,
# which a test checks with the real tokenizer.
VOCABULARY: tuple[str, ...] = (
    "the", "model", "answer", "request", "token", "stream", "local", "server",
    "data", "value", "result", "system", "user", "time", "context", "window",
    "budget", "price", "cost", "tenant", "message", "reply", "question", "simple",
    "clear", "small", "large", "fast", "slow", "first", "second", "last",
    "next", "every", "other", "some", "many", "more", "most", "good",
    "better", "best", "new", "old", "long", "short", "high", "low",
    "early", "late", "open", "close", "start", "end", "part", "whole",
    "point", "case", "fact", "plan", "test", "check", "count", "limit",
)  # fmt: skip
SENTENCE_END = "."
CLAUSE_END = ","
NATURAL_LENGTH_MIN = 12
NATURAL_LENGTH_MAX = 48


def _deterministic_numbers(seed: int, prompt: str) -> Iterator[int]:
    """An endless stream of 32-bit numbers from (seed, prompt), stable across Pythons.

    hashlib rather than ``hash()`` (randomised per process) or ``random`` (whose
    algorithms are not promised to stay the same), because other tests assert exact text.
    """
    key = hashlib.sha256(f"{seed}\x00".encode() + prompt.encode("utf-8", "surrogatepass"))
    counter = 0
    while True:
        block = hashlib.sha256(key.digest() + counter.to_bytes(8, "big")).digest()
        for offset in range(0, len(block), 4):
            yield int.from_bytes(block[offset : offset + 4], "big")
        counter += 1


def _answer_pieces(numbers: Iterator[int], length: int) -> list[str]:
    """``length`` one-token pieces forming sentences that end with a full stop."""
    pieces: list[str] = []
    words_in_sentence = 0
    for index in range(length):
        number = next(numbers)
        is_last = index == length - 1
        # Punctuation only after a word, and never as the second-to-last piece, so that a
        # natural answer ends "... word." rather than ". Word".
        after_word = bool(pieces) and pieces[-1] not in (SENTENCE_END, CLAUSE_END)
        room_for_more = index < length - 2
        ends_sentence = is_last or (room_for_more and words_in_sentence >= 4 and number % 7 == 0)
        if after_word and ends_sentence:
            pieces.append(SENTENCE_END)
            words_in_sentence = 0
        elif after_word and room_for_more and words_in_sentence >= 3 and number % 11 == 1:
            pieces.append(CLAUSE_END)
        else:
            word = VOCABULARY[(number >> 8) % len(VOCABULARY)]
            if not pieces:
                pieces.append(word.capitalize())
            elif pieces[-1] == SENTENCE_END:
                pieces.append(" " + word.capitalize())
            else:
                pieces.append(" " + word)
            words_in_sentence += 1
    return pieces


def natural_answer_length(prompt: str, seed: int, answer_tokens: int | None = None) -> int:
    """Tokens the model "wants" to write before stopping on its own."""
    if answer_tokens is not None:
        return answer_tokens
    # A separate derivation from the words' numbers, so that the length is not correlated
    # with the first word.
    digest = hashlib.sha256(
        f"length\x00{seed}\x00".encode() + prompt.encode("utf-8", "surrogatepass")
    ).digest()
    span = NATURAL_LENGTH_MAX - NATURAL_LENGTH_MIN + 1
    return NATURAL_LENGTH_MIN + int.from_bytes(digest[:4], "big") % span


@dataclass(frozen=True)
class Generation:
    pieces: tuple[str, ...]
    """One token each; streamed one per chunk."""
    stop_reason: str

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def generate(
    prompt: str, max_gen_len: int, seed: int, *, answer_tokens: int | None = None
) -> Generation:
    natural_length = natural_answer_length(prompt, seed, answer_tokens)
    # The natural answer is cut by max_gen_len, so a shorter limit yields a prefix of the
    # longer answer, as a real model at temperature 0 would.
    pieces = _answer_pieces(_deterministic_numbers(seed, prompt), natural_length)
    if max_gen_len < natural_length:
        return Generation(tuple(pieces[:max_gen_len]), "length")
    return Generation(tuple(pieces), "stop")


def expected_generation(
    prompt: str, max_gen_len: int, seed: int, *, answer_tokens: int | None = None
) -> str:
    """The exact text the server answers for this prompt; for assertions in other tests."""
    return generate(prompt, max_gen_len, seed, answer_tokens=answer_tokens).text


# ---------------------------------------------------------------------------------------
# Token counting
# ---------------------------------------------------------------------------------------

_FALLBACK_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>|\w+|[^\w\s]")


def _prompt_family(model_id: str) -> str:
    """``"llama2"`` for a Llama 2 model id (profile prefix stripped), else ``"llama3"``."""
    return "llama2" if model_id.startswith(LLAMA2_MODEL_PREFIX) else "llama3"


@functools.cache
def _prompt_counter(family: str) -> Callable[[str], int]:
    """Our exact tokenizer for the family when importable; otherwise a rough word splitter.

    Imported lazily so the server starts even where the tokenizer package is unavailable.
    """
    try:
        from models_catalog.tokenizer import (
            count_llama2_prompt_tokens,
            count_llama3_prompt_tokens,
        )
    except ImportError:
        logger.warning("models_catalog.tokenizer unavailable; counting prompt tokens roughly")
        return lambda prompt: len(_FALLBACK_TOKEN.findall(prompt))
    return count_llama2_prompt_tokens if family == "llama2" else count_llama3_prompt_tokens


def _count_prompt_tokens(prompt: str, model_id: str) -> int:
    """Tokens of a formatted prompt as Bedrock counts them for ``model_id``.

    Special-token strings count one token each; a Llama 2 prompt also gets the ``<s>``
    Bedrock adds in front (see models_catalog.tokenizer.llama2).
    """
    return _prompt_counter(_prompt_family(model_id))(prompt)


# ---------------------------------------------------------------------------------------
# Configuration and scripted outcomes
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    seed: int = 0
    time_to_first_token_seconds: float = 0.0
    seconds_per_token: float = 0.0
    throttle_rate: float = 0.0
    """Fraction of requests answered ThrottlingException (429) before anything else."""
    midstream_failure_rate: float = 0.0
    """Fraction of streams that fail with modelStreamErrorException after a few chunks."""
    answer_tokens: int | None = None
    """Fixed natural answer length; None means a deterministic length per prompt."""
    hang_seconds: float = 300.0
    """How long a "hang" outcome sleeps (ended early by stop())."""
    overreport_rate: float = 0.0
    """Fraction of answers whose reported token counts are inflated (a misbehaving
    provider), by OVERREPORT_FACTOR: what settlement must never pass on to a tenant."""

    def __post_init__(self) -> None:
        for name in ("throttle_rate", "midstream_failure_rate", "overreport_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        for name in ("time_to_first_token_seconds", "seconds_per_token", "hang_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.answer_tokens is not None and self.answer_tokens < 1:
            raise ValueError("answer_tokens must be at least 1")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ServerConfig:
        """Read LOCAL_BEDROCK_* variables (e.g. LOCAL_BEDROCK_SECONDS_PER_TOKEN)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(f"LOCAL_BEDROCK_{field.name.upper()}", "").strip()
            if raw:
                values[field.name] = _FIELD_PARSERS[field.name](raw)
        return cls(**values)


_FIELD_PARSERS: Mapping[str, Callable[[str], Any]] = {
    "seed": int,
    "time_to_first_token_seconds": float,
    "seconds_per_token": float,
    "throttle_rate": float,
    "midstream_failure_rate": float,
    "answer_tokens": int,
    "hang_seconds": float,
    "overreport_rate": float,
}


@dataclass(frozen=True)
class Outcome:
    """What the server does with one request, before looking at the request itself."""

    kind: str  # "ok" | "error" | "midstream" | "hang" | "overreport"
    code: str = ""
    message: str = ""
    report_factor: int = 1
    """Reported token counts are multiplied by this (an "overreport" outcome)."""


OK = Outcome("ok")
OVERREPORT_FACTOR = 5
# Named outcomes for script(); any code of ERROR_STATUS is accepted as well, and
# "midstream:<Code>" fails a stream with that code after a few chunks.
NAMED_OUTCOMES: Mapping[str, Outcome] = {
    "ok": OK,
    "throttle": Outcome("error", "ThrottlingException", "Too many requests, please wait."),
    "validation_error": Outcome("error", "ValidationException", "Scripted validation error."),
    "internal_error": Outcome("error", "InternalServerException", "Scripted internal error."),
    "midstream_error": Outcome(
        "midstream", "ModelStreamErrorException", "Scripted model stream error."
    ),
    "hang": Outcome("hang"),
    "overreport": Outcome("overreport", report_factor=OVERREPORT_FACTOR),
}


def parse_outcome(name: str) -> Outcome:
    if name in NAMED_OUTCOMES:
        return NAMED_OUTCOMES[name]
    if name in ERROR_STATUS:
        return Outcome("error", name, f"Scripted {name}.")
    if name.startswith("overreport:") and name.removeprefix("overreport:").isdigit():
        return Outcome("overreport", report_factor=int(name.removeprefix("overreport:")))
    if name.startswith("midstream:") and name.removeprefix("midstream:"):
        code = name.removeprefix("midstream:")
        return Outcome("midstream", code[:1].upper() + code[1:], f"Scripted {code}.")
    raise ValueError(
        f"unknown outcome {name!r}; use one of {sorted(NAMED_OUTCOMES)}, an error code "
        f"({', '.join(sorted(ERROR_STATUS))}), 'midstream:<Code>' or 'overreport:<factor>'"
    )


# How many stream starts the server remembers, and how much of each prompt: bounded, so a
# long-running server (or one fed 128K-token prompts) does not grow without limit.
STREAM_STARTS_KEPT = 10_000
STREAM_START_PROMPT_CHARS = 1_000


@dataclass(frozen=True)
class StreamStart:
    """When one stream's request arrived and its first chunk was sent, as ``time.time()``.

    Wall-clock rather than monotonic so that another process on the same machine (a
    benchmark client) can compare them with its own timestamps.
    """

    prompt_tail: str
    """The prompt's last characters: the newest turn is there, so a caller can find its
    request by a marker it put into that turn."""
    received_at: float
    first_chunk_at: float


class _ServerState:
    """Everything the request handler threads share, behind one lock."""

    def __init__(self, config: ServerConfig) -> None:
        self.lock = threading.Lock()
        self.config = config
        # Simulated failures, not security: a seeded generator makes runs reproducible.
        self.random = random.Random(config.seed)  # noqa: S311
        self.scripted: collections.deque[Outcome] = collections.deque()
        self.requests_by_path: collections.Counter[str] = collections.Counter()
        # "completed", "failed" (mid-stream error sent), "aborted" (caller gone, or stop()).
        self.stream_endings: collections.Counter[str] = collections.Counter()
        self.stopping = threading.Event()
        self.open_connections: set[socket.socket] = set()
        self.stream_starts: collections.deque[StreamStart] = collections.deque(
            maxlen=STREAM_STARTS_KEPT
        )

    def record_request(self, path: str) -> None:
        with self.lock:
            self.requests_by_path[path] += 1

    def count_stream(self, ending: str) -> None:
        with self.lock:
            self.stream_endings[ending] += 1

    def record_stream_start(self, start: StreamStart) -> None:
        with self.lock:
            self.stream_starts.append(start)

    def next_outcome(self, *, streaming: bool) -> Outcome:
        with self.lock:
            if self.scripted:
                return self.scripted.popleft()
            # Draw both numbers for every request so the sequence of outcomes depends only
            # on the order of requests, not on which rates are zero.
            throttle_draw = self.random.random()
            midstream_draw = self.random.random()
            config = self.config
            # Drawn only when asked for, so seeded runs without it keep their sequences.
            overreport_draw = self.random.random() if config.overreport_rate else 1.0
        if throttle_draw < config.throttle_rate:
            return NAMED_OUTCOMES["throttle"]
        if streaming and midstream_draw < config.midstream_failure_rate:
            return NAMED_OUTCOMES["midstream_error"]
        if overreport_draw < config.overreport_rate:
            return NAMED_OUTCOMES["overreport"]
        return OK


# ---------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------


class _RequestError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _ClientGoneError(Exception):
    """The caller closed the connection (or the server is stopping) mid-response."""


def _model_id(raw_segment: str) -> str:
    """The model id of a request path, its inference-profile prefix stripped."""
    model_id = unquote(raw_segment)
    for prefix in INFERENCE_PROFILE_PREFIXES:
        if model_id.startswith(prefix + "meta."):
            return model_id.removeprefix(prefix)
    return model_id


def _context_window(raw_segment: str) -> int:
    """The model's context window (inference-profile prefix stripped), or ResourceNotFound."""
    window = MODEL_CONTEXT_WINDOWS.get(_model_id(raw_segment))
    if window is None:
        raise _RequestError(
            "ResourceNotFoundException", f"Model {unquote(raw_segment)!r} does not exist."
        )
    return window


@dataclass(frozen=True)
class _LlamaRequest:
    prompt: str
    temperature: float
    top_p: float
    max_gen_len: int


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_body(raw: bytes) -> _LlamaRequest:
    """Validate the body the way Bedrock does for Meta models."""
    try:
        body = json.loads(raw)
    except ValueError as exception:
        raise _RequestError(
            "ValidationException", f"Malformed input request: {exception}"
        ) from exception
    if not isinstance(body, dict):
        raise _RequestError("ValidationException", "Malformed input request: expected object")
    extraneous = sorted(set(body) - ALLOWED_BODY_KEYS)
    if extraneous:
        raise _RequestError(
            "ValidationException",
            f"Malformed input request: extraneous key [{extraneous[0]}] is not permitted",
        )
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise _RequestError(
            "ValidationException",
            "Malformed input request: #/prompt: required key [prompt] must be a string",
        )
    temperature = body.get("temperature", DEFAULT_TEMPERATURE)
    top_p = body.get("top_p", DEFAULT_TOP_P)
    max_gen_len = body.get("max_gen_len", DEFAULT_MAX_GEN_LEN)
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if not _is_number(value) or not 0 <= value <= 1:
            raise _RequestError(
                "ValidationException",
                f"Malformed input request: #/{name}: {value!r} is not a number within 0..1",
            )
    if (
        not isinstance(max_gen_len, int)
        or isinstance(max_gen_len, bool)
        or not 1 <= max_gen_len <= BEDROCK_MAX_GEN_LEN
    ):
        raise _RequestError(
            "ValidationException",
            f"Malformed input request: #/max_gen_len: {max_gen_len!r} is not an integer "
            f"within 1..{BEDROCK_MAX_GEN_LEN}",
        )
    return _LlamaRequest(prompt, float(temperature), float(top_p), max_gen_len)


def _milliseconds(seconds: float) -> int:
    return round(seconds * 1000)


class _BedrockHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # Many streams may connect at once; the default backlog of 5 would refuse some.
    request_queue_size = 128
    state: _ServerState
    verbose: bool = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A caller that resets its connection (a timed-out or cancelled client, a pool
        # dropping an idle keep-alive socket) is normal here, not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            logger.debug("connection from %s reset", client_address)
            return
        logger.exception("local Bedrock server: error on a connection from %s", client_address)


class _BedrockRequestHandler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.1 so that streams can use chunked transfer-encoding (read incrementally by
    # urllib3) and JSON responses can keep the connection alive for boto3's pool.
    protocol_version = "HTTP/1.1"
    server: _BedrockHTTPServer

    @property
    def state(self) -> _ServerState:
        return self.server.state

    def setup(self) -> None:
        super().setup()
        # Tokens are tiny writes; without TCP_NODELAY Nagle's algorithm holds each one back
        # until the previous is acknowledged, batching a fast stream into ~40 ms lumps.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.state.lock:
            self.state.open_connections.add(self.connection)

    def finish(self) -> None:
        with self.state.lock:
            self.state.open_connections.discard(self.connection)
        with contextlib.suppress(OSError):  # the client may already have gone away
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/ping":
            self._send_json(200, {"status": "ok"})
        else:
            self._send_error("UnknownOperationException", "Unknown operation.", status=404)

    def do_POST(self) -> None:
        self._received_at = time.time()
        # Always consume the body, so the connection stays usable for the next request.
        raw_body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = urlsplit(self.path).path
        self.state.record_request(path)
        match = _PATH.match(path)
        if match is None:
            self._send_error("UnknownOperationException", "Unknown operation.", status=404)
            return
        streaming = match["operation"] == INVOKE_STREAM
        self._response_started = False
        try:
            self._handle(match["model_id"], raw_body, streaming=streaming)
        except _RequestError as error:
            self._send_error(error.code, error.message)
        except _ClientGoneError:
            self.close_connection = True
        except Exception:
            logger.exception("local Bedrock server failed on %s", path)
            if self._response_started:
                # Too late for an error response: the caller sees a truncated stream.
                self.close_connection = True
            else:
                self._send_error("InternalServerException", "Internal server error.")

    def _handle(self, model_segment: str, raw_body: bytes, *, streaming: bool) -> None:
        outcome = self.state.next_outcome(streaming=streaming)
        if outcome.kind == "error":
            raise _RequestError(outcome.code, outcome.message)
        if outcome.kind == "hang":
            self.state.stopping.wait(self.state.config.hang_seconds)
            raise _ClientGoneError
        window = _context_window(model_segment)
        request = _parse_body(raw_body)
        prompt_tokens = _count_prompt_tokens(request.prompt, _model_id(model_segment))
        if prompt_tokens + request.max_gen_len > window:
            raise _RequestError(
                "ValidationException",
                f"This model's maximum context length is {window} tokens. Please reduce the "
                f"length of the prompt ({prompt_tokens} tokens) or max_gen_len "
                f"({request.max_gen_len}): together they are "
                f"{prompt_tokens + request.max_gen_len}.",
            )
        config = self.state.config
        generation = generate(
            request.prompt, request.max_gen_len, config.seed, answer_tokens=config.answer_tokens
        )
        if streaming:
            self._stream(request.prompt, generation, prompt_tokens, outcome, config)
        elif outcome.kind == "midstream":
            # InvokeModel has no stream to fail inside; fail the whole call with that code.
            raise _RequestError(outcome.code, outcome.message)
        else:
            self._invoke(generation, prompt_tokens, config, outcome.report_factor)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self.state.stopping.wait(seconds):
            raise _ClientGoneError

    def _invoke(
        self, generation: Generation, prompt_tokens: int, config: ServerConfig, factor: int = 1
    ) -> None:
        started = time.monotonic()
        tokens = len(generation.pieces) * factor
        prompt_tokens *= factor
        self._sleep(config.time_to_first_token_seconds + config.seconds_per_token * (tokens - 1))
        body = {
            "generation": generation.text,
            "prompt_token_count": prompt_tokens,
            "generation_token_count": tokens,
            "stop_reason": generation.stop_reason,
        }
        self._send_json(
            200,
            body,
            {
                "X-Amzn-Bedrock-Input-Token-Count": str(prompt_tokens),
                "X-Amzn-Bedrock-Output-Token-Count": str(tokens),
                "X-Amzn-Bedrock-Invocation-Latency": str(_milliseconds(time.monotonic() - started)),
            },
        )

    def _stream(
        self,
        prompt: str,
        generation: Generation,
        prompt_tokens: int,
        outcome: Outcome,
        config: ServerConfig,
    ) -> None:
        started = time.monotonic()
        self._response_started = True
        self.send_response(200)
        self.send_header("Content-Type", eventstream.CONTENT_TYPE)
        self.send_header("X-Amzn-Bedrock-Content-Type", "application/json")
        self.send_header("X-Amzn-RequestId", str(uuid.uuid4()))
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        # A mid-stream failure comes "after a few chunks", so the caller has seen deltas.
        fails = outcome.kind == "midstream"
        factor = outcome.report_factor
        prompt_tokens *= factor
        pieces = generation.pieces[:3] if fails else generation.pieces
        first_byte_latency = 0.0
        ending: str | None = None
        try:
            for index, piece in enumerate(pieces):
                self._sleep(
                    config.time_to_first_token_seconds if index == 0 else config.seconds_per_token
                )
                if index == 0:
                    first_byte_latency = time.monotonic() - started
                self._write_chunk(
                    eventstream.chunk_event(
                        {
                            "generation": piece,
                            "prompt_token_count": prompt_tokens if index == 0 else None,
                            "generation_token_count": (index + 1) * factor,
                            "stop_reason": None,
                        }
                    )
                )
                if index == 0:
                    # Stamped after the write, so it is the moment the chunk left for the
                    # caller: what a time-to-first-token measurement subtracts.
                    self.state.record_stream_start(
                        StreamStart(
                            prompt_tail=prompt[-STREAM_START_PROMPT_CHARS:],
                            received_at=self._received_at,
                            first_chunk_at=time.time(),
                        )
                    )
            if fails:
                ending, last_message = "failed", self._stream_failure(outcome)
            else:
                ending = "completed"
                last_message = self._final_chunk(
                    generation, prompt_tokens, started, first_byte_latency, factor
                )
            self._write_chunk(last_message)
            # Counted before the terminating chunk, so a caller that has read the whole
            # body always finds the counter already updated.
            self.state.count_stream(ending)
            self._end_chunks()
        except (_ClientGoneError, OSError):
            if ending is None:
                self.state.count_stream("aborted")
            raise _ClientGoneError from None

    @staticmethod
    def _final_chunk(
        generation: Generation,
        prompt_tokens: int,
        started: float,
        first_byte: float,
        factor: int = 1,
    ) -> bytes:
        tokens = len(generation.pieces) * factor
        return eventstream.chunk_event(
            {
                "generation": "",
                "prompt_token_count": None,
                "generation_token_count": tokens,
                "stop_reason": generation.stop_reason,
                "amazon-bedrock-invocationMetrics": {
                    "inputTokenCount": prompt_tokens,
                    "outputTokenCount": tokens,
                    "invocationLatency": _milliseconds(time.monotonic() - started),
                    "firstByteLatency": _milliseconds(first_byte),
                },
            }
        )

    @staticmethod
    def _stream_failure(outcome: Outcome) -> bytes:
        member = outcome.code[:1].lower() + outcome.code[1:]
        if member in STREAM_EXCEPTION_MEMBERS:
            return eventstream.exception_event(member, outcome.message)
        return eventstream.error_event(outcome.code, outcome.message)

    def _write_chunk(self, data: bytes) -> None:
        # One HTTP chunk per event-stream message: urllib3 hands each chunk to botocore
        # as soon as it arrives, so the caller sees every token when it is generated.
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _send_json(
        self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        encoded = json.dumps(body).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(encoded)))
            self.send_header("X-Amzn-RequestId", str(uuid.uuid4()))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(encoded)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _send_error(self, code: str, message: str, *, status: int | None = None) -> None:
        self._send_json(
            status or ERROR_STATUS.get(code, 500),
            {"message": message},
            {"X-Amzn-ErrorType": code + ERROR_TYPE_SUFFIX},
        )


class LocalBedrockServer:
    """The local server in a background thread. NEVER USE IN PRODUCTION (see module doc).

    >>> with LocalBedrockServer(seed=1) as server:
    ...     boto3.client("bedrock-runtime", endpoint_url=server.url, ...)
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False, **config: Any
    ) -> None:
        self._state = _ServerState(ServerConfig(**config))
        self._host = host
        self._requested_port = port
        self._verbose = verbose
        self._httpd: _BedrockHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_environment(cls, host: str = "127.0.0.1", port: int = 0) -> LocalBedrockServer:
        config = ServerConfig.from_environment()
        return cls(host, port, **dataclasses.asdict(config))

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        if self._httpd is not None:
            raise RuntimeError("already started")
        # Load the tokenizers now rather than inside the first request's latency.
        for family in ("llama3", "llama2"):
            _prompt_counter(family)("warm up")
        httpd = _BedrockHTTPServer((self._host, self._requested_port), _BedrockRequestHandler)
        httpd.state = self._state
        httpd.verbose = self._verbose
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"local-bedrock-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        # Wake sleeping handlers (latency, "hang") so they give up at once.
        self._state.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._state.lock:
            connections = list(self._state.open_connections)
        # Idle keep-alive connections would otherwise keep their threads waiting for a
        # next request that never comes.
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # -- behaviour -----------------------------------------------------------------------

    @property
    def config(self) -> ServerConfig:
        return self._state.config

    def configure(self, **changes: Any) -> None:
        """Change settings of a running server (e.g. raise the throttle rate mid-test)."""
        with self._state.lock:
            previous = self._state.config
            self._state.config = dataclasses.replace(previous, **changes)
            if self._state.config.seed != previous.seed:
                self._state.random.seed(self._state.config.seed)

    def script(self, outcomes: Iterable[str]) -> None:
        """Queue exact outcomes, one per coming request, before the rates apply.

        Names: "ok", "throttle", "validation_error", "internal_error", "midstream_error",
        "hang", any Bedrock error code (e.g. "ModelNotReadyException"), or
        "midstream:<Code>". A mid-stream outcome fails an InvokeModel call outright.
        """
        parsed = [parse_outcome(name) for name in outcomes]
        with self._state.lock:
            self._state.scripted.extend(parsed)

    def clear_script(self) -> None:
        with self._state.lock:
            self._state.scripted.clear()

    # -- counters ------------------------------------------------------------------------

    @property
    def request_count(self) -> int:
        with self._state.lock:
            return sum(self._state.requests_by_path.values())

    @property
    def requests_by_path(self) -> dict[str, int]:
        """Requests received per raw path (model ids as sent, e.g. ``...v1%3A0``)."""
        with self._state.lock:
            return dict(self._state.requests_by_path)

    @property
    def streams_completed(self) -> int:
        with self._state.lock:
            return self._state.stream_endings["completed"]

    @property
    def streams_failed(self) -> int:
        """Streams that ended with a scripted or random mid-stream error."""
        with self._state.lock:
            return self._state.stream_endings["failed"]

    @property
    def streams_aborted(self) -> int:
        """Streams whose caller went away (or that stop() cut) before the last chunk."""
        with self._state.lock:
            return self._state.stream_endings["aborted"]

    @property
    def stream_starts(self) -> list[StreamStart]:
        """The latest streams (up to STREAM_STARTS_KEPT) that sent a chunk, oldest first."""
        with self._state.lock:
            return list(self._state.stream_starts)

    def reset_counters(self) -> None:
        with self._state.lock:
            self._state.requests_by_path.clear()
            self._state.stream_endings.clear()
            self._state.stream_starts.clear()


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def _argument_parser(defaults: ServerConfig) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.local_bedrock",
        description="Local Bedrock-compatible server for development and tests. "
        "NEVER USE IN PRODUCTION. Defaults come from LOCAL_BEDROCK_* variables.",
    )
    parser.add_argument("--host", default=os.environ.get("LOCAL_BEDROCK_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("LOCAL_BEDROCK_PORT", "8001"))
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--time-to-first-token-seconds", type=float, default=defaults.time_to_first_token_seconds
    )
    parser.add_argument("--seconds-per-token", type=float, default=defaults.seconds_per_token)
    parser.add_argument("--throttle-rate", type=float, default=defaults.throttle_rate)
    parser.add_argument(
        "--midstream-failure-rate", type=float, default=defaults.midstream_failure_rate
    )
    parser.add_argument("--answer-tokens", type=int, default=defaults.answer_tokens)
    parser.add_argument("--hang-seconds", type=float, default=defaults.hang_seconds)
    parser.add_argument("--overreport-rate", type=float, default=defaults.overreport_rate)
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; print the address once ready."""
    arguments = _argument_parser(ServerConfig.from_environment()).parse_args(argv)
    config = {
        field.name: getattr(arguments, field.name) for field in dataclasses.fields(ServerConfig)
    }
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server = LocalBedrockServer(arguments.host, arguments.port, verbose=arguments.verbose, **config)
    server.start()
    # Callers (the run command, tests) wait for exactly this line.
    print(f"Local Bedrock server on {server.url}", flush=True)
    try:
        while not stop_requested.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
