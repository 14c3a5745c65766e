"""The body of POST /v1/chat/completions, checked against what we can honour.

Whatever we cannot honour is refused with a 400 that names the parameter, never ignored:
a parameter is either supported, accepted only at the value that changes nothing (`n: 1`,
`logprobs: false`, `tools: []`, ...), or unknown (refused as OpenAI refuses one).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Final

from django.conf import settings

from openai_api.errors import InvalidRequestError

MAX_STOP_SEQUENCES: Final = 4
MAX_STOP_LENGTH: Final = 200
MAX_USER_LENGTH: Final = 200
MAX_MODEL_LENGTH: Final = 200
SAMPLING_QUANTUM: Final = Decimal("0.01")
SYSTEM_ROLES: Final = ("system", "developer")
TURN_ROLES: Final = ("user", "assistant")

SUPPORTED: Final = frozenset(
    {
        "model", "messages", "stream", "stream_options", "max_tokens",
        "max_completion_tokens", "temperature", "top_p", "stop", "user",
        "safety_identifier", "n", "conversation",
    }
)  # fmt: skip


def _is_none_or(*neutral: Any) -> Callable[[Any], bool]:
    return lambda value: (
        value is None or any(value == choice and type(value) is type(choice) for choice in neutral)
    )


# Parameters accepted only at the value that changes nothing; any other value is refused.
NEUTRAL_ONLY: Final[dict[str, tuple[Callable[[Any], bool], str]]] = {
    "logprobs": (_is_none_or(False), "log probabilities are not available from Bedrock"),
    "top_logprobs": (_is_none_or(0), "log probabilities are not available from Bedrock"),
    "presence_penalty": (_is_none_or(0, 0.0), "Llama on Bedrock has no presence penalty"),
    "frequency_penalty": (_is_none_or(0, 0.0), "Llama on Bedrock has no frequency penalty"),
    "logit_bias": (_is_none_or({}), "Llama on Bedrock has no logit bias"),
    "response_format": (
        _is_none_or({"type": "text"}),
        "only text answers are supported ({'type': 'text'})",
    ),
    "tools": (_is_none_or([]), "tool calling is not supported"),
    "tool_choice": (_is_none_or("none"), "tool calling is not supported"),
    "functions": (_is_none_or([]), "function calling is not supported"),
    "function_call": (_is_none_or("none"), "function calling is not supported"),
    # Without tools there is nothing to call in parallel, whatever the flag says.
    "parallel_tool_calls": (_is_none_or(True, False), "tool calling is not supported"),
    "seed": (_is_none_or(), "Llama on Bedrock cannot be seeded"),
    "store": (_is_none_or(False), "stored completions are not supported"),
    "metadata": (_is_none_or({}), "stored completions are not supported"),
    "service_tier": (_is_none_or("auto", "default"), "only the default service tier exists"),
    "modalities": (_is_none_or(["text"]), "only text output is supported"),
    "audio": (_is_none_or(), "audio output is not supported"),
    "prediction": (_is_none_or(), "predicted outputs are not supported"),
    "reasoning_effort": (_is_none_or(), "these models do not reason in a separate budget"),
    "verbosity": (_is_none_or(), "verbosity is not supported"),
    "web_search_options": (_is_none_or(), "web search is not supported"),
    # A caching hint: no value changes an answer.
    "prompt_cache_key": (lambda value: value is None or isinstance(value, str), "must be text"),
}


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system", "user" or "assistant"
    content: str


@dataclass(frozen=True)
class ChatCompletionRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"
    temperature: Decimal | None = None
    top_p: Decimal | None = None
    stop: tuple[str, ...] = ()
    user: str | None = None
    conversation_id: uuid.UUID | None = None


def _invalid(param: str, message: str, code: str = "invalid_value") -> InvalidRequestError:
    return InvalidRequestError(param, message, code=code)


def _unsupported(param: str, reason: str) -> InvalidRequestError:
    return _invalid(param, f"'{param}' is not supported here: {reason}.", "unsupported_parameter")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(param: str, value: Any) -> str:
    if "\x00" in value:
        raise _invalid(param, f"'{param}' must not contain NUL characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(param, f"'{param}' must not contain unpaired surrogates.") from None
    if len(value) > settings.MESSAGE_MAX_CHARACTERS:
        raise _invalid(
            param, f"'{param}' must be at most {settings.MESSAGE_MAX_CHARACTERS} characters."
        )
    return value


def _content(param: str, content: Any, role: str) -> str:
    if isinstance(content, str):
        return _text(param, content)
    if not isinstance(content, list):
        raise _invalid(param, f"'{param}' must be a string or a list of text parts.")
    texts = []
    for index, part in enumerate(content):
        part_param = f"{param}[{index}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _invalid(part_param, f"'{part_param}' must be an object with a 'type'.")
        if part["type"] != "text":
            what = "image" if part["type"] == "image_url" else f"'{part['type']}'"
            raise _unsupported(
                part_param, f"{what} parts cannot be sent; this service is text only"
            )
        if set(part) != {"type", "text"} or not isinstance(part["text"], str):
            raise _invalid(part_param, f"'{part_param}' must be {{'type': 'text', 'text': str}}.")
        texts.append(part["text"])
    if not texts and role == "user":
        raise _invalid(param, f"'{param}' must hold at least one text part.")
    return _text(param, "\n".join(texts))


def _message(index: int, raw: Any) -> ChatMessage:
    param = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise _invalid(param, f"'{param}' must be an object with 'role' and 'content'.")
    role = raw.get("role")
    if role in ("tool", "function"):
        raise _unsupported(f"{param}.role", "tool calling is not supported")
    if role not in (*SYSTEM_ROLES, *TURN_ROLES):
        raise _invalid(
            f"{param}.role",
            f"'{param}.role' must be one of 'system', 'developer', 'user', 'assistant'; "
            f"got {role!r}.",
        )
    for name, value in raw.items():
        if name in ("role", "content"):
            continue
        if name in ("tool_calls", "function_call", "audio", "refusal") and value is None:
            continue
        if name in ("tool_calls", "function_call"):
            raise _unsupported(f"{param}.{name}", "tool calling is not supported")
        raise _unsupported(f"{param}.{name}", "messages carry only 'role' and 'content'")
    if "content" not in raw or raw["content"] is None:
        raise _invalid(f"{param}.content", f"'{param}.content' is required.", "missing_required")
    normalized_role = "system" if role in SYSTEM_ROLES else role
    return ChatMessage(
        role=normalized_role, content=_content(f"{param}.content", raw["content"], role)
    )


def _messages(raw: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(raw, list) or not raw:
        raise _invalid("messages", "'messages' must be a non-empty list of messages.")
    messages = tuple(_message(index, message) for index, message in enumerate(raw))
    seen_turn = False
    for index, message in enumerate(messages):
        if message.role != "system":
            seen_turn = True
        elif seen_turn:
            raise _unsupported(
                f"messages[{index}]", "system messages must come before the conversation's turns"
            )
    if messages[-1].role != "user":
        raise _invalid("messages", "The last message must be the user's (role 'user').")
    return messages


def _sampling(param: str, value: Any) -> Decimal | None:
    if value is None:
        return None
    if not _is_number(value):
        raise _invalid(param, f"'{param}' must be a number.")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise _invalid(param, f"'{param}' must be a number.") from None
    if not number.is_finite() or number < 0 or number > 1:
        raise _invalid(
            param, f"'{param}' must be between 0 and 1 for Llama on Bedrock; got {value}."
        )
    # Bedrock takes two decimal places' worth of precision from us, as our own API does.
    return abs(number.quantize(SAMPLING_QUANTUM, rounding=ROUND_HALF_EVEN))


def _max_tokens(body: dict[str, Any]) -> tuple[int | None, str]:
    given = {
        name: body[name]
        for name in ("max_completion_tokens", "max_tokens")
        if body.get(name) is not None
    }
    for name, value in given.items():
        if not _is_integer(value) or value < 1:
            raise _invalid(name, f"'{name}' must be an integer of at least 1.")
    if len(set(given.values())) > 1:
        raise _invalid(
            "max_tokens", "'max_tokens' and 'max_completion_tokens' disagree; send one of them."
        )
    for name, value in given.items():
        return value, name
    return None, "max_tokens"


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
        raise _invalid("stop", "'stop' must be a string or a list of strings.")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise _invalid("stop", f"'stop' holds at most {MAX_STOP_SEQUENCES} sequences.")
    for stop in stops:
        if not stop or len(stop) > MAX_STOP_LENGTH:
            raise _invalid("stop", f"Each stop sequence must be 1 to {MAX_STOP_LENGTH} characters.")
        _text("stop", stop)
    return tuple(dict.fromkeys(stops))


def _end_user(body: dict[str, Any]) -> str | None:
    given = {}
    for name in ("user", "safety_identifier"):
        value = body.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or len(value) > MAX_USER_LENGTH:
            raise _invalid(
                name, f"'{name}' must be a string of at most {MAX_USER_LENGTH} characters."
            )
        given[name] = _text(name, value)
    if len(set(given.values())) > 1:
        raise _invalid("user", "'user' and 'safety_identifier' name different end users.")
    return next(iter(given.values()), None)


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("stream", "'stream' must be a boolean.")
    options = body.get("stream_options")
    if options is None:
        return bool(stream), False
    if not stream:
        raise _invalid("stream_options", "'stream_options' is only allowed when 'stream' is true.")
    if not isinstance(options, dict):
        raise _invalid("stream_options", "'stream_options' must be an object.")
    for name, value in options.items():
        if name == "include_usage" and isinstance(value, bool | None):
            continue
        if name == "include_obfuscation" and value in (None, False):
            continue
        raise _unsupported(f"stream_options.{name}", "only 'include_usage' is supported")
    return True, bool(options.get("include_usage"))


def _conversation(value: Any) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        raise _invalid(
            "conversation", "'conversation' must be the id of one of your conversations."
        ) from None


def chat_completion_parse(body: Any) -> ChatCompletionRequest:
    """Check a chat completion body; 400 naming the parameter for anything we cannot honour."""
    if not isinstance(body, dict):
        raise _invalid("body", "The body must be a JSON object.")
    for name in body:
        if name in SUPPORTED:
            continue
        if name not in NEUTRAL_ONLY:
            raise _invalid(
                name, f"Unrecognized request argument supplied: {name}", "unknown_parameter"
            )
        is_neutral, reason = NEUTRAL_ONLY[name]
        if not is_neutral(body[name]):
            raise _unsupported(name, reason)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_LENGTH:
        raise _invalid("model", "'model' is required: one of GET /v1/models.", "missing_required")
    n = body.get("n")
    if n is not None and (not _is_integer(n) or n != 1):
        raise _unsupported("n", "one choice per request (n=1)")
    stream, include_usage = _stream(body)
    max_tokens, max_tokens_param = _max_tokens(body)
    conversation_raw = body.get("conversation")
    if conversation_raw is not None and not isinstance(conversation_raw, str):
        raise _invalid(
            "conversation", "'conversation' must be the id of one of your conversations."
        )
    return ChatCompletionRequest(
        model=model.strip(),
        messages=_messages(body.get("messages")),
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        max_tokens_param=max_tokens_param,
        temperature=_sampling("temperature", body.get("temperature")),
        top_p=_sampling("top_p", body.get("top_p")),
        stop=_stop(body.get("stop")),
        user=_end_user(body),
        conversation_id=_conversation(conversation_raw),
    )
