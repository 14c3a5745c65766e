"""Token counting for the Llama families we serve.

Both are exact: Llama 3.x with Meta's BPE ranks through tiktoken (``llama3``), Llama 2 with
Meta's SentencePiece model through sentencepiece (``llama2``). Bedrock's reported counts
stay the truth for billing; these are for trimming context and reserving budget.
"""

from __future__ import annotations

from typing import Literal, get_args

from models_catalog.tokenizer.llama2 import (
    count_llama2_prompt_tokens,
    count_llama2_tokens,
    decode_llama2,
    encode_llama2,
    llama2_processor,
)
from models_catalog.tokenizer.llama3 import (
    SPECIAL_TOKEN_IDS,
    SPECIAL_TOKENS,
    count_llama3_prompt_tokens,
    count_llama3_tokens,
    decode_llama3,
    encode_llama3,
    llama3_encoding,
    special_token_id,
)

Family = Literal["llama2", "llama3"]
FAMILIES: tuple[Family, ...] = get_args(Family)

__all__ = [
    "FAMILIES",
    "SPECIAL_TOKENS",
    "SPECIAL_TOKEN_IDS",
    "Family",
    "count_llama2_prompt_tokens",
    "count_llama2_tokens",
    "count_llama3_prompt_tokens",
    "count_llama3_tokens",
    "count_prompt_tokens",
    "count_tokens",
    "decode_llama2",
    "decode_llama3",
    "encode_llama2",
    "encode_llama3",
    "llama2_processor",
    "llama3_encoding",
    "special_token_id",
]


def count_tokens(text: str, family: Family) -> int:
    """Count ordinary text (special-token strings are plain text) for a model family.

    For Llama 2 the text is counted as SentencePiece encodes it on its own (with its "▁"
    dummy prefix).
    """
    if family == "llama3":
        return count_llama3_tokens(text)
    if family == "llama2":
        return count_llama2_tokens(text)
    raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")


def count_prompt_tokens(prompt: str, family: Family) -> int:
    """Count a fully formatted prompt as Bedrock does, its structural markers included.

    Llama 3: special-token strings are one token each; the prompt carries its own
    ``<|begin_of_text|>``. Llama 2: ``<s>``/``</s>`` are one token each, the text between
    them is encoded segment by segment, and the ``<s>`` Bedrock adds in front is counted
    (see ``llama2``).
    """
    if family == "llama3":
        return count_llama3_prompt_tokens(prompt)
    if family == "llama2":
        return count_llama2_prompt_tokens(prompt)
    raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
