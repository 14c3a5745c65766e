"""Conservative Llama 2 token estimates.

Llama 2 uses a 32,000-piece SentencePiece BPE vocabulary that we do not have offline, so
its counts are estimated, and the estimate must never be below the real count: it sizes
prompts against a 4,096-token window and reserves money before Bedrock is called.

The bound. Llama 2's SentencePiece model has byte fallback and an identity normaliser.
Encoding starts from one symbol per character; a character in the vocabulary is one
piece, any other becomes one ``<0xNN>`` piece per UTF-8 byte. BPE merges only ever join
pieces. So a string of ``b`` UTF-8 bytes is at most ``b`` pieces, plus one for the "▁"
SentencePiece prefixes to the input (a space is one byte and one piece, ▁ being in the
vocabulary). One more covers a ``<s>`` the server might add in front of ours. Hence::

    llama2 tokens(text) <= utf8_bytes(text) + LLAMA2_BOUND_SLACK        (slack = 2)

If the server instead reads ``<s>``/``</s>`` in our prompt as control tokens, each saves
two tokens and the text after it may get its own ▁ prefix: never more than before.

The ratio. The bound over-counts English about 3-4 times (Llama 2 averages roughly
0.25-0.3 tokens per byte there). ``estimate_llama2_tokens`` takes a ratio of Llama 2
tokens per UTF-8 byte: 1 (the default) is the proven bound; a smaller, learned ratio gives
a tighter estimate that is no longer a proof, only as good as what it was learned from.
``llama2_ratio_update`` learns it from the counts Bedrock reports, rising at once when a
count came close to the estimate and falling only slowly, and the ratio is always clamped
to [LLAMA2_RATIO_FLOOR, 1], so an estimate is never above the bound nor below
LLAMA2_RATIO_FLOOR tokens per byte (denser than English prose with headroom).
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal
from typing import Final

# "▁" prefixed by SentencePiece, plus a <s> the server may add in front of ours.
LLAMA2_BOUND_SLACK: Final = 2

LLAMA2_PROVEN_RATIO: Final = Decimal(1)
LLAMA2_RATIO_FLOOR: Final = Decimal("0.35")
# A learned ratio keeps this much room above the densest text seen...
LLAMA2_RATIO_HEADROOM: Final = Decimal("1.25")
# ...and moves this fraction of the way down per over-estimate, so one short, sparse
# prompt cannot undo what many dense ones taught.
LLAMA2_RATIO_DECAY: Final = Decimal("0.05")

_RATIO_PLACES: Final = Decimal("0.000001")


def llama2_utf8_bytes(text: str) -> int:
    """Return the UTF-8 length of ``text``; a lone surrogate counts as its 3 bytes."""
    return len(text.encode("utf-8", "surrogatepass"))


def llama2_token_upper_bound(text: str) -> int:
    """Return a proven upper bound on Llama 2 tokens for ``text`` (see the module docstring)."""
    return llama2_utf8_bytes(text) + LLAMA2_BOUND_SLACK


def clamp_llama2_ratio(ratio: Decimal | float) -> Decimal:
    """Return ``ratio`` as a Decimal within [LLAMA2_RATIO_FLOOR, LLAMA2_PROVEN_RATIO]."""
    # str() keeps a float's shortest repr (0.3, not 0.29999999999999998889...).
    value = ratio if isinstance(ratio, Decimal) else Decimal(str(ratio))
    if not value.is_finite():
        return LLAMA2_PROVEN_RATIO
    return min(max(value, LLAMA2_RATIO_FLOOR), LLAMA2_PROVEN_RATIO)


def estimate_llama2_tokens(text: str, ratio: Decimal | float = LLAMA2_PROVEN_RATIO) -> int:
    """Estimate Llama 2 tokens for ``text``: ``ceil(utf8_bytes * ratio) + 2``.

    With the default ratio of 1 this is ``llama2_token_upper_bound`` and never under-counts.
    A learned ratio (clamped to [LLAMA2_RATIO_FLOOR, 1]) tightens it; the result is never
    above the bound.
    """
    scaled = Decimal(llama2_utf8_bytes(text)) * clamp_llama2_ratio(ratio)
    return int(scaled.to_integral_value(rounding=ROUND_CEILING)) + LLAMA2_BOUND_SLACK


def llama2_ratio_update(
    *, current_ratio: Decimal | float, predicted_tokens: int, actual_tokens: int
) -> Decimal:
    """Return the tokens-per-byte ratio to use after Bedrock reported ``actual_tokens``.

    ``predicted_tokens`` must be ``estimate_llama2_tokens(prompt, current_ratio)`` for the
    whole prompt string as sent (not a sum of per-turn estimates), so that the prompt's
    size can be recovered from it without storing the prompt.

    Observed ratio: ``predicted - slack`` is ``ceil(bytes * ratio)``, so
    ``bytes * ratio > predicted - slack - 1``; dividing by that lower end over-states the
    observed ratio a little, which is the safe direction. With the result, the same prompt
    is estimated at no less than ``actual_tokens``.

    A ratio that must rise (the estimate, with headroom, was too low) jumps there at once;
    one that may fall moves only LLAMA2_RATIO_DECAY of the way. Prompts too short to
    measure leave the ratio as it was.
    """
    current = clamp_llama2_ratio(current_ratio)
    scaled_bytes_low = predicted_tokens - LLAMA2_BOUND_SLACK - 1
    if scaled_bytes_low <= 0:
        return current
    observed = current * Decimal(max(actual_tokens - LLAMA2_BOUND_SLACK, 0)) / scaled_bytes_low
    target = observed * LLAMA2_RATIO_HEADROOM
    updated = target if target >= current else current - (current - target) * LLAMA2_RATIO_DECAY
    # Rounding up keeps "never below what was observed" after quantising for storage.
    return clamp_llama2_ratio(updated.quantize(_RATIO_PLACES, rounding=ROUND_CEILING))
