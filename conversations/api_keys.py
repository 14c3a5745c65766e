"""API key secrets: generation, parsing and constant-time verification.

A key reads `<prefix>.<secret>`. The prefix is stored in clear to find the row (and to show
operators which key is which); the secret is random, 256 bits, and only its salted HMAC is
stored, so a database leak does not leak usable keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX_MARKER = "lk_"
PREFIX_RANDOM_BYTES = 6
SECRET_RANDOM_BYTES = 32
SEPARATOR = "."


@dataclass(frozen=True)
class GeneratedKey:
    prefix: str
    secret: str
    salt: str
    secret_hash: str

    @property
    def full_key(self) -> str:
        return f"{self.prefix}{SEPARATOR}{self.secret}"


def hash_secret(secret: str, salt: str) -> str:
    return hmac.new(salt.encode(), secret.encode(), hashlib.sha256).hexdigest()


def generate_key() -> GeneratedKey:
    prefix = KEY_PREFIX_MARKER + secrets.token_hex(PREFIX_RANDOM_BYTES)
    secret = secrets.token_urlsafe(SECRET_RANDOM_BYTES)
    salt = secrets.token_hex(16)
    return GeneratedKey(
        prefix=prefix, secret=secret, salt=salt, secret_hash=hash_secret(secret, salt)
    )


def split_key(raw_key: str) -> tuple[str, str] | None:
    """Return (prefix, secret), or None when the text cannot be one of our keys."""
    prefix, separator, secret = raw_key.partition(SEPARATOR)
    if not separator or not prefix.startswith(KEY_PREFIX_MARKER) or not secret:
        return None
    if len(prefix) > 32 or len(secret) > 128:
        return None
    return prefix, secret


def secret_matches(secret: str, *, salt: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret, salt), secret_hash)
