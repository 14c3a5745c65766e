"""Token counting for the Llama families we serve.

Llama 3.x counts are exact (Meta's BPE through tiktoken); Llama 2 counts are conservative
estimates that never under-count (see ``llama2``). Bedrock's reported counts stay the truth
for billing; these are for trimming context and reserving budget.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal, get_args

from models_catalog.tokenizer.llama2 import (
    LLAMA2_BOUND_SLACK,
    LLAMA2_PROVEN_RATIO,
    LLAMA2_RATIO_FLOOR,
    clamp_llama2_ratio,
    estimate_llama2_tokens,
    llama2_ratio_update,
    llama2_token_upper_bound,
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
    "LLAMA2_BOUND_SLACK",
    "LLAMA2_PROVEN_RATIO",
    "LLAMA2_RATIO_FLOOR",
    "SPECIAL_TOKENS",
    "SPECIAL_TOKEN_IDS",
    "Family",
    "clamp_llama2_ratio",
    "count_llama3_prompt_tokens",
    "count_llama3_tokens",
    "count_prompt_tokens",
    "count_tokens",
    "decode_llama3",
    "encode_llama3",
    "estimate_llama2_tokens",
    "llama2_ratio_update",
    "llama2_token_upper_bound",
    "llama3_encoding",
    "special_token_id",
]


def count_tokens(
    text: str, family: Family, *, llama2_ratio: Decimal | float = LLAMA2_PROVEN_RATIO
) -> int:
    """Count ordinary text (special-token strings are plain text) for a model family.

    Exact for ``"llama3"``; for ``"llama2"`` an estimate that is >= the real count at the
    default ratio (see ``estimate_llama2_tokens``).
    """
    if family == "llama3":
        return count_llama3_tokens(text)
    if family == "llama2":
        return estimate_llama2_tokens(text, llama2_ratio)
    raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")


def count_prompt_tokens(
    prompt: str, family: Family, *, llama2_ratio: Decimal | float = LLAMA2_PROVEN_RATIO
) -> int:
    """Count a fully formatted prompt, its structural markers included.

    For Llama 3 special-token strings are real special tokens (one each); for Llama 2 the
    estimate is over the prompt's bytes, so its markers are already inside the bound.
    """
    if family == "llama3":
        return count_llama3_prompt_tokens(prompt)
    if family == "llama2":
        return estimate_llama2_tokens(prompt, llama2_ratio)
    raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
