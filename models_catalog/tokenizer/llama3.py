"""Exact Llama 3 tokenizer (shared by Llama 3, 3.1, 3.2 and 3.3).

Built the way Meta's reference ``llama3/tokenizer.py`` builds it: the 128,000 BPE ranks
from ``tokenizer.model`` read with ``tiktoken.load.load_tiktoken_bpe``, Meta's split
pattern, and 256 special tokens numbered from 128000. The encoding is loaded once per
process; loading parses a 2 MB file (about a quarter of a second), encoding is fast.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Final

import tiktoken
from tiktoken.load import load_tiktoken_bpe

TOKENIZER_MODEL_PATH: Final = Path(__file__).parent / "data" / "tokenizer.model"
# Checked on load so that a truncated copy or a Git LFS pointer fails loudly instead of
# counting wrong.
TOKENIZER_MODEL_SHA256: Final = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"

NUM_BASE_TOKENS: Final = 128_000
NUM_SPECIAL_TOKENS: Final = 256

SPLIT_PATTERN: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

BEGIN_OF_TEXT: Final = "<|begin_of_text|>"
END_OF_TEXT: Final = "<|end_of_text|>"
START_HEADER: Final = "<|start_header_id|>"
END_HEADER: Final = "<|end_header_id|>"
END_OF_MESSAGE: Final = "<|eom_id|>"
END_OF_TURN: Final = "<|eot_id|>"

_NAMED_SPECIAL_TOKENS: Final = (
    BEGIN_OF_TEXT,
    END_OF_TEXT,
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    START_HEADER,
    END_HEADER,
    END_OF_MESSAGE,
    END_OF_TURN,
    "<|python_tag|>",
)
# Names as in Llama 3.1+ (Llama 3.0 called some of these reserved; the ids are the same).
SPECIAL_TOKENS: Final[tuple[str, ...]] = _NAMED_SPECIAL_TOKENS + tuple(
    f"<|reserved_special_token_{number}|>"
    for number in range(2, 2 + NUM_SPECIAL_TOKENS - len(_NAMED_SPECIAL_TOKENS))
)

# Meta's reference cuts runs of whitespace (or of non-whitespace) longer than this before
# encoding: tiktoken's regex engine runs out of backtracking stack on a few hundred
# thousand spaces. Meta also cuts the input every 400,000 characters; we do not, because a
# cut at a fixed offset can fall inside a word (or a special token) and would make the
# count of a string depend on where it sits in the prompt. Cuts inside over-long runs
# depend only on the run itself, so counts stay additive (see prompt_formats).
MAX_RUN_CHARS: Final = 25_000

SPECIAL_TOKEN_IDS: Final[Mapping[str, int]] = MappingProxyType(
    {token: NUM_BASE_TOKENS + index for index, token in enumerate(SPECIAL_TOKENS)}
)

_SPECIAL_TOKEN_RE: Final = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS))
# The lookbehinds make each attempt start at the beginning of a run, so the scan is linear.
# Python's \s is str.isspace(), the test Meta's splitter uses.
_LONG_RUN_RE: Final = re.compile(
    rf"(?<!\S)\S{{{MAX_RUN_CHARS + 1},}}|(?<!\s)\s{{{MAX_RUN_CHARS + 1},}}"
)


@functools.cache
def llama3_encoding() -> tiktoken.Encoding:
    """Return the process-wide Llama 3 encoding, loading it on first use."""
    mergeable_ranks = load_tiktoken_bpe(
        str(TOKENIZER_MODEL_PATH), expected_hash=TOKENIZER_MODEL_SHA256
    )
    if len(mergeable_ranks) != NUM_BASE_TOKENS:
        raise ValueError(
            f"{TOKENIZER_MODEL_PATH} has {len(mergeable_ranks)} ranks, expected {NUM_BASE_TOKENS}"
        )
    return tiktoken.Encoding(
        name="llama3",
        pat_str=SPLIT_PATTERN,
        mergeable_ranks=mergeable_ranks,
        special_tokens=dict(SPECIAL_TOKEN_IDS),
    )


def special_token_id(token: str) -> int:
    """Return the id of a special token such as ``"<|eot_id|>"`` (KeyError if unknown)."""
    return SPECIAL_TOKEN_IDS[token]


def _split_long_runs(text: str) -> Iterator[str]:
    """Yield slices of ``text`` with no run of (non-)whitespace longer than MAX_RUN_CHARS.

    Same cuts as Meta's ``_split_whitespaces_or_nonwhitespaces``: every MAX_RUN_CHARS
    characters into an over-long run, counted from the start of that run.
    """
    start = 0
    for run in _LONG_RUN_RE.finditer(text):
        for cut in range(run.start() + MAX_RUN_CHARS, run.end(), MAX_RUN_CHARS):
            yield text[start:cut]
            start = cut
    yield text[start:]


def _encode_ordinary(text: str) -> list[int]:
    """Encode text in which special-token strings are plain text."""
    encoding = llama3_encoding()
    if len(text) <= MAX_RUN_CHARS:  # no run can be over-long: skip the scan
        return encoding.encode_ordinary(text)
    ids: list[int] = []
    for piece in _split_long_runs(text):
        ids.extend(encoding.encode_ordinary(piece))
    return ids


def _encode_with_special(text: str) -> list[int]:
    """Encode text in which special-token strings become their special ids.

    Special tokens are split out first (as tiktoken does) so that the over-long-run cuts
    never fall inside one.
    """
    ids: list[int] = []
    position = 0
    for match in _SPECIAL_TOKEN_RE.finditer(text):
        ids.extend(_encode_ordinary(text[position : match.start()]))
        ids.append(SPECIAL_TOKEN_IDS[match.group()])
        position = match.end()
    ids.extend(_encode_ordinary(text[position:]))
    return ids


def encode_llama3(text: str, *, allow_special: bool = False) -> list[int]:
    """Encode ``text`` to Llama 3 token ids, without adding ``<|begin_of_text|>``.

    With ``allow_special=False`` (the default, for user text) a string like
    ``"<|eot_id|>"`` is encoded as the ordinary characters it is made of and never raises.
    With ``allow_special=True`` (for prompts we formatted ourselves) it becomes the
    special token.
    """
    return _encode_with_special(text) if allow_special else _encode_ordinary(text)


def decode_llama3(ids: Sequence[int]) -> str:
    """Decode token ids; invalid UTF-8 (a sequence cut mid-character) becomes U+FFFD."""
    return llama3_encoding().decode(list(ids))


def count_llama3_tokens(text: str) -> int:
    """Count the tokens of ordinary text; special-token strings count as plain text."""
    return len(_encode_ordinary(text))


def count_llama3_prompt_tokens(prompt: str) -> int:
    """Count a fully formatted prompt, special-token strings counting as one token each.

    A prompt we build carries its own ``<|begin_of_text|>``, so nothing is added here; this
    is the number to compare with the ``prompt_token_count`` that Bedrock reports.
    """
    return len(_encode_with_special(prompt))
