from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from rest_framework import serializers


def validate_metadata(value: Any) -> dict[str, Any]:
    """A small JSON object that every database can store (no NUL, no lone surrogates)."""
    if not isinstance(value, dict):
        raise serializers.ValidationError("Must be a JSON object.")
    encoded = json.dumps(value, ensure_ascii=False)
    try:
        size = len(encoded.encode("utf-8"))
    except UnicodeEncodeError:
        raise serializers.ValidationError(
            "Must not contain unpaired surrogate characters."
        ) from None
    if "\x00" in encoded or "\\u0000" in encoded:
        raise serializers.ValidationError("Must not contain NUL characters.")
    if size > settings.METADATA_MAX_BYTES:
        raise serializers.ValidationError(
            f"Must be at most {settings.METADATA_MAX_BYTES} bytes as JSON; got {size}."
        )
    return value
