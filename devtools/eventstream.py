"""Encoder for AWS event-stream messages (``application/vnd.amazon.eventstream``).

Only the local Bedrock-compatible server writes these; boto3 parses them with botocore's
own ``EventStreamBuffer``, which checks both CRCs. The framing (see shared/BEDROCK.md):

    total length (uint32 BE) | headers length (uint32 BE) | CRC32 of those 8 bytes
    headers: name length (uint8) | name | value type (uint8) | value length (uint16 BE) | value
    payload
    CRC32 of everything before it (uint32 BE)
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Mapping
from typing import Any

CONTENT_TYPE = "application/vnd.amazon.eventstream"

_STRING_HEADER_TYPE = 7
_PRELUDE_LENGTH = 12  # two lengths and the prelude CRC
_MESSAGE_CRC_LENGTH = 4
# botocore rejects larger messages; the limits come from its EventStreamBuffer.
MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024


def _crc32(data: bytes, crc: int = 0) -> int:
    return zlib.crc32(data, crc) & 0xFFFFFFFF


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """Encode string-valued headers (the only type Bedrock's stream uses)."""
    encoded = bytearray()
    for name, value in headers.items():
        name_bytes = name.encode("utf-8")
        value_bytes = value.encode("utf-8")
        if len(name_bytes) > 0xFF:
            raise ValueError(f"header name too long: {name!r}")
        if len(value_bytes) > 0xFFFF:
            raise ValueError(f"header value too long for {name!r}")
        encoded += struct.pack(">B", len(name_bytes)) + name_bytes
        encoded += struct.pack(">BH", _STRING_HEADER_TYPE, len(value_bytes)) + value_bytes
    return bytes(encoded)


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    encoded_headers = encode_headers(headers)
    if len(encoded_headers) > MAX_HEADERS_LENGTH:
        raise ValueError("event-stream headers too long")
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise ValueError("event-stream payload too long")
    total_length = _PRELUDE_LENGTH + len(encoded_headers) + len(payload) + _MESSAGE_CRC_LENGTH
    lengths = struct.pack(">II", total_length, len(encoded_headers))
    prelude = lengths + struct.pack(">I", _crc32(lengths))
    body = prelude + encoded_headers + payload
    return body + struct.pack(">I", _crc32(body))


def chunk_event(chunk: Mapping[str, Any]) -> bytes:
    """A ``chunk`` event: boto3 hands the caller ``event["chunk"]["bytes"]`` = JSON of chunk."""
    chunk_json = json.dumps(chunk, separators=(",", ":")).encode("utf-8")
    payload = json.dumps({"bytes": base64.b64encode(chunk_json).decode("ascii")}).encode()
    return encode_message(
        {
            ":event-type": "chunk",
            ":content-type": "application/json",
            ":message-type": "event",
        },
        payload,
    )


def exception_event(exception_type: str, message: str) -> bytes:
    """A modelled error inside the stream; ``exception_type`` is the lowerCamelCase member."""
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps({"message": message}).encode("utf-8"),
    )


def error_event(error_code: str, message: str) -> bytes:
    """An unmodelled error inside the stream: code and message travel as headers."""
    return encode_message(
        {
            ":error-code": error_code,
            ":error-message": message,
            ":message-type": "error",
        },
        b"",
    )
