"""What the chat completion parser accepts, and each thing it refuses, by name."""

from __future__ import annotations

from decimal import Decimal

import pytest

from openai_api.errors import InvalidRequestError
from openai_api.parsing import ChatMessage, chat_completion_parse

MODEL = "meta.llama3-1-8b-instruct-v1:0"
USER = {"role": "user", "content": "Hi"}


def parse(**fields):
    return chat_completion_parse({"model": MODEL, "messages": [USER], **fields})


def refused(body_or_fields, *, param: str, code: str | None = None) -> InvalidRequestError:
    body = {"model": MODEL, "messages": [USER], **body_or_fields}
    with pytest.raises(InvalidRequestError) as caught:
        chat_completion_parse(body)
    assert caught.value.details == {"param": param}, caught.value.message
    if code is not None:
        assert caught.value.code == code
    return caught.value


def test_a_minimal_request_takes_the_defaults() -> None:
    chat = parse()
    assert chat.messages == (ChatMessage("user", "Hi"),)
    assert (chat.stream, chat.include_usage, chat.max_tokens, chat.stop) == (False, False, None, ())
    assert (chat.temperature, chat.top_p, chat.user, chat.conversation_id) == (None,) * 4


def test_supported_parameters_are_read() -> None:
    chat = parse(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "system", "content": [{"type": "text", "text": "Be kind."}]},
            USER,
            {"role": "assistant", "content": "Hello!", "tool_calls": None},
            {"role": "user", "content": [{"type": "text", "text": t} for t in ("a", "b")]},
        ],
        stream=True,
        stream_options={"include_usage": True},
        max_completion_tokens=64,
        temperature=0.7,
        top_p=1,
        stop="END",
        user="alice",
        n=1,
        logprobs=False,
        presence_penalty=0,
        tools=[],
        response_format={"type": "text"},
        conversation="7f0c1f4e-7d60-4b5e-9c9a-2f4a1b0c9d11",
    )
    assert [m.role for m in chat.messages] == ["system", "system", "user", "assistant", "user"]
    assert chat.messages[-1].content == "a\nb"
    assert (chat.stream, chat.include_usage) == (True, True)
    assert (chat.max_tokens, chat.max_tokens_param) == (64, "max_completion_tokens")
    assert (chat.temperature, chat.top_p) == (Decimal("0.70"), Decimal("1.00"))
    assert chat.stop == ("END",)
    assert chat.user == "alice"
    assert str(chat.conversation_id) == "7f0c1f4e-7d60-4b5e-9c9a-2f4a1b0c9d11"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"seed": 7}, "seed"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 1}, "frequency_penalty"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"stream": True, "stream_options": {"include_obfuscation": True}},
         "stream_options.include_obfuscation"),
    ],
)  # fmt: skip
def test_what_we_cannot_honour_is_refused_by_name(fields: dict, param: str) -> None:
    error = refused(fields, param=param, code="unsupported_parameter")
    assert param.split(".")[0] in error.message


def test_unknown_parameters_are_refused_as_openai_does() -> None:
    error = refused({"frobnicate": 1}, param="frobnicate", code="unknown_parameter")
    assert error.message == "Unrecognized request argument supplied: frobnicate"


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ("Hi", "messages"),
        ([{"role": "tool", "content": "42", "tool_call_id": "x"}], "messages[0].role"),
        ([{"role": "function", "content": "42", "name": "f"}], "messages[0].role"),
        ([{"role": "robot", "content": "Hi"}], "messages[0].role"),
        ([{"role": "user", "content": "Hi", "name": "bob"}], "messages[0].name"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
         "messages[0].content[0]"),
        ([{"role": "user", "content": [{"type": "input_audio"}]}], "messages[0].content[0]"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
        ([{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}],
         "messages[0].tool_calls"),
        ([USER, {"role": "assistant", "content": "Hello"}], "messages"),
        ([USER, {"role": "system", "content": "late"}, USER], "messages[1]"),
    ],
)  # fmt: skip
def test_bad_messages_are_refused_by_name(messages, param: str) -> None:
    refused({"messages": messages}, param=param)


def test_nul_characters_are_refused() -> None:
    refused({"messages": [{"role": "user", "content": "a\x00b"}]}, param="messages[0].content")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 1.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 10, "max_completion_tokens": 20}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"user": "x" * 201}, "user"),
        ({"user": "a", "safety_identifier": "b"}, "user"),
        ({"conversation": "not-a-uuid"}, "conversation"),
        ({"conversation": 12}, "conversation"),
        ({"model": ""}, "model"),
        ({"model": 5}, "model"),
    ],
)
def test_bad_values_are_refused_by_name(fields: dict, param: str) -> None:
    refused(fields, param=param)


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidRequestError):
        chat_completion_parse(["model"])
