r"""Llama prompt formats, the neutralising of text put into them, and their token costs.

Pure functions, no Django: the context builder renders history with ``build_prompt`` and
sizes it piece by piece with the ``*_tokens`` helpers.

Neutralising. Text from users, from the model's earlier answers and from the tenant's
system prompt must never become structure. Every structural marker inside such text gets
a ZERO WIDTH SPACE (U+200B) after its first character: ``<|eot_id|>`` becomes
``<`` U+200B ``|eot_id|>`` and ``[INST]`` becomes ``[`` U+200B ``INST]``. Why that character:

- it is invisible, so the text still reads and renders the same for people;
- it is not whitespace for ``str.strip`` nor for the tokenizer's ``\s``, so it is never
  stripped away and does not change how the text around it is split;
- no marker survives it (every Llama 3 special token starts with ``<|``, and none is left),
  and a second pass finds nothing to change, so neutralising is idempotent;
- it costs a few tokens per marker, and markers are rare in honest text.

Each family's markers are neutralised in its own prompts only: ``[INST]`` is plain text to
Llama 3 and ``<|eot_id|>`` to Llama 2, and altering them would only add invisible noise.

The system prompt is neutralised too: the tenant writes it, but tenants fill templates
with end-user data (names, retrieved documents), and a leaked tenant key should not be
able to forge turns either. Honest prompts contain no markers, so they are unchanged.

Like Meta's reference code and chat template, content is stripped of surrounding
whitespace. For Llama 3 that is also what makes token counts add up exactly: the ``\n\n``
after a header merges with content that starts with whitespace and a newline
(``"\n\n" + "\nHi"`` is 2 tokens, not 1 + 2); after stripping it cannot merge, and
special tokens always separate what is before and after them, so::

    count_prompt_tokens(build_prompt(...))
        == prompt_frame_tokens + system_prompt_tokens + sum(turn_tokens for each turn)

holds exactly for Llama 3. For Llama 2, whose counts are byte-based estimates, the sum is
>= the estimate of the whole prompt.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal, get_args

from models_catalog.tokenizer import (
    LLAMA2_PROVEN_RATIO,
    Family,
    count_llama3_prompt_tokens,
    count_tokens,
)
from models_catalog.tokenizer.llama2 import llama2_utf8_bytes
from models_catalog.tokenizer.llama3 import BEGIN_OF_TEXT, END_HEADER, END_OF_TURN, START_HEADER

Role = Literal["user", "assistant"]
# The system prompt is rendered as a turn of its own (Llama 3) or inside the first user
# turn (Llama 2); its costs are asked for with this role.
PieceRole = Literal["system", "user", "assistant"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)

ZERO_WIDTH_SPACE: Final = "\u200b"


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of the conversation history, as given to the prompt builders."""

    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"turn role must be one of {ROLES}, not {self.role!r}")


# --- neutralising ---------------------------------------------------------------------

_LLAMA3_SPECIAL_OPENER: Final = "<|"
_LLAMA2_MARKER_RE: Final = re.compile(r"\[/?INST\]|<</?SYS>>|</?s>", re.IGNORECASE)


def neutralise_llama3(text: str) -> str:
    """Make ``text`` free of Llama 3 special tokens (any ``<|...|>``), keeping it readable.

    Breaking every ``<|`` covers all 256 special tokens and any future ``<|name|>``, with
    no list to keep up to date.
    """
    return text.replace(_LLAMA3_SPECIAL_OPENER, "<" + ZERO_WIDTH_SPACE + "|")


def _break_marker(match: re.Match[str]) -> str:
    marker = match.group()
    return marker[0] + ZERO_WIDTH_SPACE + marker[1:]


def neutralise_llama2(text: str) -> str:
    """Make ``text`` free of Llama 2 markers (``[INST]``, ``<<SYS>>``, ``<s>`` ... any case).

    No two markers can overlap, and what follows an inserted U+200B (``/INST]``,
    ``<SYS>>``, ``s>`` ...) cannot begin a new one, so one pass leaves none.
    """
    return _LLAMA2_MARKER_RE.sub(_break_marker, text)


_NEUTRALISERS: Final = {"llama3": neutralise_llama3, "llama2": neutralise_llama2}


def _well_formed(text: str) -> str:
    """Replace lone surrogates (which JSON can carry) with U+FFFD, as tiktoken does."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def prepare_content(text: str, family: Family) -> str:
    """Return ``text`` exactly as it will appear inside a ``family`` prompt."""
    neutralise = _NEUTRALISERS.get(family)
    if neutralise is None:
        raise ValueError(f"unknown model family {family!r}")
    return neutralise(_well_formed(text)).strip()


# --- Llama 3 ----------------------------------------------------------------------------

_LLAMA3_AFTER_HEADER: Final = "\n\n"


def _llama3_header(role: str) -> str:
    return f"{START_HEADER}{role}{END_HEADER}{_LLAMA3_AFTER_HEADER}"


def _require_user_last(turns: Sequence[Turn]) -> None:
    # The prompt asks the model to answer; an empty history or a trailing assistant turn
    # means the caller built the wrong history.
    if not turns:
        raise ValueError("a prompt needs at least one turn")
    if turns[-1].role != "user":
        raise ValueError("the last turn of a prompt must be the user's")


def build_llama3_prompt(*, system_prompt: str | None, turns: Sequence[Turn]) -> str:
    """Render Meta's Llama 3 chat format, ending with an open assistant header.

    The system turn comes first when the (prepared) system prompt is not empty, and is
    left out entirely otherwise.
    """
    _require_user_last(turns)
    parts = [BEGIN_OF_TEXT]
    system = prepare_content(system_prompt or "", "llama3")
    if system:
        parts.append(_llama3_header("system") + system + END_OF_TURN)
    for turn in turns:
        parts.append(_llama3_header(turn.role) + prepare_content(turn.content, "llama3"))
        parts.append(END_OF_TURN)
    parts.append(_llama3_header("assistant"))
    return "".join(parts)


# --- Llama 2 ----------------------------------------------------------------------------

_LLAMA2_USER_OPEN: Final = "<s>[INST] "
_LLAMA2_USER_CLOSE: Final = " [/INST]"
_LLAMA2_ASSISTANT_OPEN: Final = " "
_LLAMA2_ASSISTANT_CLOSE: Final = " </s>"
_LLAMA2_SYSTEM_OPEN: Final = "<<SYS>>\n"
_LLAMA2_SYSTEM_CLOSE: Final = "\n<</SYS>>\n\n"
# Joins consecutive turns of one role; shorter than any turn's markers, which keeps the
# per-piece estimate >= the estimate of the whole prompt.
_LLAMA2_SAME_ROLE_JOINER: Final = "\n\n"


def _llama2_merged_turns(turns: Sequence[Turn]) -> list[Turn]:
    """Prepare turns and merge runs of one role (Llama 2 was trained on strict alternation).

    Consecutive user turns happen when an answer failed and was left out of history.
    """
    merged: list[Turn] = []
    for turn in turns:
        content = prepare_content(turn.content, "llama2")
        if merged and merged[-1].role == turn.role:
            previous = merged.pop()
            content = previous.content + _LLAMA2_SAME_ROLE_JOINER + content
        merged.append(Turn(role=turn.role, content=content))
    return merged


def build_llama2_prompt(*, system_prompt: str | None, turns: Sequence[Turn]) -> str:
    """Render the Llama 2 Chat format: ``<s>[INST] ... [/INST] answer </s><s>[INST] ...``.

    The system prompt goes inside the first user turn, as Meta's reference does. The first
    and last turns must be the user's; consecutive turns of one role are merged.
    """
    _require_user_last(turns)
    merged = _llama2_merged_turns(turns)
    if merged[0].role != "user":
        raise ValueError("a Llama 2 prompt must start with a user turn")
    system = prepare_content(system_prompt or "", "llama2")
    parts: list[str] = []
    for index, turn in enumerate(merged):
        if turn.role == "assistant":
            parts.append(_LLAMA2_ASSISTANT_OPEN + turn.content + _LLAMA2_ASSISTANT_CLOSE)
            continue
        content = turn.content
        if index == 0 and system:
            content = _LLAMA2_SYSTEM_OPEN + system + _LLAMA2_SYSTEM_CLOSE + content
        parts.append(_LLAMA2_USER_OPEN + content + _LLAMA2_USER_CLOSE)
    return "".join(parts)


_BUILDERS: Final = {"llama3": build_llama3_prompt, "llama2": build_llama2_prompt}


def build_prompt(family: Family, *, system_prompt: str | None, turns: Sequence[Turn]) -> str:
    """Render the prompt for a model family (``"llama3"`` or ``"llama2"``)."""
    builder = _BUILDERS.get(family)
    if builder is None:
        raise ValueError(f"unknown model family {family!r}")
    return builder(system_prompt=system_prompt, turns=turns)


# --- token accounting -------------------------------------------------------------------

_LLAMA2_MARKER_BYTES: Final[dict[PieceRole, int]] = {
    "system": llama2_utf8_bytes(_LLAMA2_SYSTEM_OPEN + _LLAMA2_SYSTEM_CLOSE),
    "user": llama2_utf8_bytes(_LLAMA2_USER_OPEN + _LLAMA2_USER_CLOSE),
    "assistant": llama2_utf8_bytes(_LLAMA2_ASSISTANT_OPEN + _LLAMA2_ASSISTANT_CLOSE),
}


@functools.cache
def prompt_frame_tokens(family: Family) -> int:
    """Tokens a prompt has besides its turns.

    Llama 3: ``<|begin_of_text|>`` and the closing assistant header (5). Llama 2: 0, every
    marker belongs to a turn, and each content estimate carries the bound's slack.
    """
    if family == "llama3":
        return 1 + count_llama3_prompt_tokens(_llama3_header("assistant"))
    if family == "llama2":
        return 0
    raise ValueError(f"unknown model family {family!r}")


@functools.cache
def turn_overhead_tokens(family: Family, role: PieceRole) -> int:
    """Tokens of one turn's markers, without its content.

    Llama 3: the header, the blank line after it and ``<|eot_id|>`` (5 for every role).
    Llama 2: the markers' bytes (ratio 1 on purpose: they are few, and this keeps the sum
    of the pieces >= the estimate of the whole whatever ratio the content uses).
    """
    if family == "llama3":
        return count_llama3_prompt_tokens(_llama3_header(role) + END_OF_TURN)
    if family == "llama2":
        return _LLAMA2_MARKER_BYTES[role]
    raise ValueError(f"unknown model family {family!r}")


def content_tokens(
    family: Family, text: str, *, llama2_ratio: Decimal | float = LLAMA2_PROVEN_RATIO
) -> int:
    """Tokens of ``text`` once prepared for a ``family`` prompt (what to store per message)."""
    return count_tokens(prepare_content(text, family), family, llama2_ratio=llama2_ratio)


def system_prompt_tokens(
    family: Family,
    system_prompt: str | None,
    *,
    llama2_ratio: Decimal | float = LLAMA2_PROVEN_RATIO,
) -> int:
    """Tokens the system prompt adds to a prompt: 0 when it is left out (empty)."""
    if not prepare_content(system_prompt or "", family):
        return 0
    overhead = turn_overhead_tokens(family, "system")
    return overhead + content_tokens(family, system_prompt or "", llama2_ratio=llama2_ratio)


def turn_tokens(
    family: Family, turn: Turn, *, llama2_ratio: Decimal | float = LLAMA2_PROVEN_RATIO
) -> int:
    """Tokens one history turn adds to a prompt, markers included."""
    overhead = turn_overhead_tokens(family, turn.role)
    return overhead + content_tokens(family, turn.content, llama2_ratio=llama2_ratio)
