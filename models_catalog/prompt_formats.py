r"""Llama prompt formats, the neutralising of text put into them, and their token costs.

Pure functions, no Django: the context builder renders history with ``build_prompt`` and
sizes it piece by piece with the ``*_tokens`` helpers.

Neutralising. Text from users, from the model's earlier answers and from the tenant's
system prompt must never become structure. Every structural marker (and every special-token
string, such as Llama 2's ``<unk>``) inside such text gets a ZERO WIDTH SPACE (U+200B) after
its first character: ``<|eot_id|>`` becomes ``<`` U+200B ``|eot_id|>`` and ``[INST]``
becomes ``[`` U+200B ``INST]``. Why that character:

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

holds exactly for Llama 3.

Llama 2 (how its prompts are tokenized: ``models_catalog.tokenizer.llama2``). The frame is
the ``<s>`` Bedrock adds; each turn's markers cost the same wherever the turn sits
(``<s>``, ``▁[INST]`` and ``▁[/INST]`` for a user turn; the lone ``▁`` and ``</s>`` after an
answer; ``▁<<SYS>>``, two newlines, ``<</SYS>>`` and a blank line around the system prompt).
The content is where one stored number per message cannot be exact everywhere: after
``[INST]`` or ``[/INST]`` and a space, content is tokenized with a leading ``▁``, but
Meta's format puts the system prompt, and the user turn that carries it, right after a
newline, where it is tokenized without one, and the two counts can differ by a token or
two either way (they are equal for about 93% of the messages we tried). So a message's
content costs the larger of the two (``content_tokens``), which gives::

    count_prompt_tokens(build_prompt(...))
        <= prompt_frame_tokens + system_prompt_tokens + sum(turn_tokens for each turn)

with equality whenever every content costs what it does where it sits. A run of turns of
one role merged into one (see ``_llama2_merged_turns``) is also over-counted: the joined
turn pays the blank line instead of its own markers. The sum is what trimming adds up, so
a kept history always fits; the context builder then counts the Llama 2 prompt it built to
report the exact number.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, get_args

from models_catalog.tokenizer import (
    Family,
    count_llama2_tokens,
    count_llama3_prompt_tokens,
    count_llama3_tokens,
)
from models_catalog.tokenizer.llama2 import BEDROCK_ADDED_BOS
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
_LLAMA2_MARKER_RE: Final = re.compile(r"\[/?INST\]|<</?SYS>>|</?s>|<unk>", re.IGNORECASE)


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
    """Make ``text`` free of Llama 2 markers (``[INST]``, ``<<SYS>>``, ``<s>``, ``<unk>`` ...).

    Any case: ``<S>`` is not a control token, but it would read as one to a person or a
    tokenizer that folds case, and breaking it costs nothing.

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
# Joins consecutive turns of one role. Its two newline tokens cost no more than the markers
# of the turn it replaces (2 for an answer, 8 for a user turn), and the joined content,
# coming after a newline, costs no more than its stored bound: the sum of the pieces stays
# >= the count of the whole prompt.
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


@functools.cache
def prompt_frame_tokens(family: Family) -> int:
    """Tokens a prompt has besides its turns.

    Llama 3: ``<|begin_of_text|>`` and the closing assistant header (5). Llama 2: the ``<s>``
    Bedrock puts in front of the prompt (1); every marker we write belongs to a turn.
    """
    if family == "llama3":
        return 1 + count_llama3_prompt_tokens(_llama3_header("assistant"))
    if family == "llama2":
        return BEDROCK_ADDED_BOS
    raise ValueError(f"unknown model family {family!r}")


def _llama2_marker_tokens(role: PieceRole) -> int:
    """Tokens of a Llama 2 turn's markers, as they are tokenized inside a prompt.

    A space before content goes with the content (it is the ``▁`` content is counted with);
    the randomized test in tests/models_catalog/test_prompt_formats.py pins these to
    ``build_llama2_prompt``.
    """
    if role == "user":
        # "<s>" (a control token); "[INST]" opens its segment and " [/INST]" follows
        # content, so both are tokenized with a leading "▁".
        return 1 + count_llama2_tokens("[INST]") + count_llama2_tokens("[/INST]")
    if role == "assistant":
        # " </s>": a lone "▁" (no piece joins it to the answer's last character), "</s>".
        return 1 + 1
    # " <<SYS>>\n" + system + "\n<</SYS>>\n\n": newlines are one byte token each and
    # "<</SYS>>" comes right after one, so it has no leading "▁".
    return (
        count_llama2_tokens(_LLAMA2_SYSTEM_OPEN.rstrip("\n"))
        + _LLAMA2_SYSTEM_OPEN.count("\n")
        + count_llama2_tokens(_LLAMA2_SYSTEM_CLOSE.strip("\n"), dummy_prefix=False)
        + _LLAMA2_SYSTEM_CLOSE.count("\n")
    )


@functools.cache
def turn_overhead_tokens(family: Family, role: PieceRole) -> int:
    """Tokens of one turn's markers, without its content.

    Llama 3: the header, the blank line after it and ``<|eot_id|>`` (5 for every role).
    Llama 2: 8 for a user turn, 2 for an answer, 13 for the system prompt's markers.
    """
    if family == "llama3":
        return count_llama3_prompt_tokens(_llama3_header(role) + END_OF_TURN)
    if family == "llama2":
        return _llama2_marker_tokens(role)
    raise ValueError(f"unknown model family {family!r}")


def _llama2_content_tokens(content: str) -> int:
    """The most tokens prepared ``content`` takes wherever a Llama 2 prompt puts it.

    After ``"] "`` it is tokenized with a leading ``▁`` (``count_llama2_tokens(content)``);
    after a newline (the system prompt, the user turn that carries it, a merged turn)
    without. Empty content is 1: in ``"[INST]  [/INST]"`` the two spaces leave a lone ``▁``
    more than the markers alone; elsewhere it costs nothing.
    """
    if not content:
        return 1
    return max(count_llama2_tokens(content), count_llama2_tokens(content, dummy_prefix=False))


def content_tokens(family: Family, text: str) -> int:
    """Tokens of ``text`` once prepared for a ``family`` prompt (what to store per message).

    Exact for Llama 3; for Llama 2 exact where the content sits after a space, and never
    below what it costs anywhere in a prompt (see the module docstring).
    """
    content = prepare_content(text, family)
    if family == "llama2":
        return _llama2_content_tokens(content)
    return count_llama3_tokens(content)


def system_prompt_tokens(family: Family, system_prompt: str | None) -> int:
    """Tokens the system prompt adds to a prompt: 0 when it is left out (empty)."""
    if not prepare_content(system_prompt or "", family):
        return 0
    return turn_overhead_tokens(family, "system") + content_tokens(family, system_prompt or "")


def turn_tokens(family: Family, turn: Turn) -> int:
    """Tokens one history turn adds to a prompt, markers included."""
    return turn_overhead_tokens(family, turn.role) + content_tokens(family, turn.content)
