"""The event-stream encoder, checked with botocore's own parser (which verifies both CRCs)."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer, EventStreamMessage

from devtools import eventstream


def parse_all(data: bytes, *, piece_size: int | None = None) -> list[EventStreamMessage]:
    buffer = EventStreamBuffer()
    messages: list[EventStreamMessage] = []
    step = piece_size or len(data) or 1
    for start in range(0, len(data), step):
        buffer.add_data(data[start : start + step])
        messages.extend(buffer)
    return messages


def test_chunk_event_round_trips_through_botocore_parser() -> None:
    chunk = {
        "generation": " héllo",
        "prompt_token_count": 76,
        "generation_token_count": 1,
        "stop_reason": None,
    }

    (message,) = parse_all(eventstream.chunk_event(chunk))

    assert message.headers == {
        ":event-type": "chunk",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    payload = json.loads(message.payload)
    assert json.loads(base64.b64decode(payload["bytes"])) == chunk
    assert message.to_response_dict()["status_code"] == 200


def test_prelude_and_message_crcs_are_those_of_the_spec() -> None:
    encoded = eventstream.encode_message({":message-type": "event"}, b"payload")

    total_length, headers_length, prelude_crc = struct.unpack(">III", encoded[:12])
    assert total_length == len(encoded)
    assert headers_length == len(eventstream.encode_headers({":message-type": "event"}))
    assert prelude_crc == zlib.crc32(encoded[:8])
    assert struct.unpack(">I", encoded[-4:])[0] == zlib.crc32(encoded[:-4])


def test_string_header_layout_is_name_length_name_type_seven_value_length_value() -> None:
    assert eventstream.encode_headers({"ab": "xyz"}) == b"\x02ab\x07\x00\x03xyz"


def test_messages_split_across_network_reads_are_reassembled_in_order() -> None:
    data = b"".join(
        eventstream.chunk_event({"generation": f" w{index}", "generation_token_count": index})
        for index in range(1, 6)
    )

    messages = parse_all(data, piece_size=7)

    generations = [
        json.loads(base64.b64decode(json.loads(message.payload)["bytes"]))["generation"]
        for message in messages
    ]
    assert generations == [" w1", " w2", " w3", " w4", " w5"]


@pytest.mark.parametrize("position", [2, 9, 20, -2], ids=["length", "prelude-crc", "body", "crc"])
def test_botocore_rejects_a_corrupted_message(position: int) -> None:
    encoded = bytearray(eventstream.chunk_event({"generation": "x"}))
    encoded[position] ^= 0x01

    with pytest.raises(ChecksumMismatch):
        parse_all(bytes(encoded))


def test_exception_event_is_a_400_with_the_lower_camel_case_type() -> None:
    (message,) = parse_all(eventstream.exception_event("modelStreamErrorException", "boom"))

    assert message.headers[":message-type"] == "exception"
    assert message.headers[":exception-type"] == "modelStreamErrorException"
    assert json.loads(message.payload) == {"message": "boom"}
    assert message.to_response_dict()["status_code"] == 400


def test_error_event_carries_code_and_message_in_headers() -> None:
    (message,) = parse_all(eventstream.error_event("SomethingNew", "unmodelled"))

    assert message.headers == {
        ":error-code": "SomethingNew",
        ":error-message": "unmodelled",
        ":message-type": "error",
    }
    assert message.payload == b""
    assert message.to_response_dict()["status_code"] == 400


def test_oversized_header_value_is_refused() -> None:
    with pytest.raises(ValueError, match="too long"):
        eventstream.encode_headers({"name": "x" * 70_000})
