"""Exact Llama 2 tokenizer: Meta's SentencePiece model through the ``sentencepiece`` package.

``data/llama2_tokenizer.model`` is byte for byte Meta's Llama 2 ``tokenizer.model``: BPE
over 32,000 pieces, byte fallback (a character outside the vocabulary becomes one
``<0xNN>`` piece per UTF-8 byte), an identity normaliser that writes spaces as ``▁`` and
puts one ``▁`` in front of the text (the "dummy prefix"). Ids 1 and 2 are the control
tokens ``<s>`` and ``</s>``. The processor is loaded once per process, under a lock;
encoding with it is thread-safe, so the worker's threads share it.

How a Llama 2 prompt is counted (``count_llama2_prompt_tokens``), which is how Meta's
reference chat code and Hugging Face's Llama 2 tokenizer turn our prompt into ids:

- the literal markers ``<s>`` and ``</s>`` that prompt_formats writes are one control token
  each (ids 1 and 2); no other text is special;
- the text between two markers (a "segment") is encoded on its own, with its own dummy
  prefix; an empty segment (between ``</s>`` and ``<s>``) is no token. This is exactly
  Meta's reference ``chat_completion``, which encodes each
  ``[INST] question [/INST] answer `` with ``bos=True, eos=True``;
- Bedrock puts one ``<s>`` in front of the prompt it is given, as tokenizers with
  ``add_bos`` do, even though ours already starts with ``<s>``; it is counted
  (``BEDROCK_ADDED_BOS``), so the count compares with Bedrock's ``prompt_token_count``. Were
  Bedrock not to add it, the count would be one over: the safe direction.

Why counts of parts add up (prompt_formats relies on it; checked against the vocabulary in
tests): no piece has a ``▁`` after another character, so no piece spans the point before a
``▁`` that follows a non-space; and no piece contains a newline (it is always the byte
piece ``<0x0A>``), so nothing spans a newline either. Text placed after ``"] "`` is
therefore tokenized exactly as on its own (``count_llama2_tokens(text)``, the ``▁`` being
its dummy prefix), and text placed after a newline exactly as on its own without the
prefix (``count_llama2_tokens(text, dummy_prefix=False)``).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import sentencepiece

TOKENIZER_MODEL_PATH: Final = Path(__file__).parent / "data" / "llama2_tokenizer.model"
# Meta's published sha256; checked on load so that a truncated copy or a Git LFS pointer
# fails loudly instead of counting wrong.
TOKENIZER_MODEL_SHA256: Final = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"
VOCABULARY_SIZE: Final = 32_000

BOS: Final = "<s>"
EOS: Final = "</s>"
BOS_ID: Final = 1
EOS_ID: Final = 2
MARKER_IDS: Final = {BOS: BOS_ID, EOS: EOS_ID}
# The <s> Bedrock puts in front of every prompt (see the module docstring).
BEDROCK_ADDED_BOS: Final = 1

_MARKER_RE: Final = re.compile("</?s>")
# count(text, dummy_prefix=False) is computed as the encoding of "\n" + text, whose first
# two pieces are always "▁" and "<0x0A>": no piece joins either to anything.
_NEWLINE: Final = "\n"
_NEWLINE_IDS: Final = (29871, 13)

_load_lock = threading.Lock()
_processor: sentencepiece.SentencePieceProcessor | None = None


def llama2_processor() -> sentencepiece.SentencePieceProcessor:
    """Return the process-wide Llama 2 processor, loading it on first use (about 10 ms)."""
    global _processor
    processor = _processor
    if processor is not None:
        return processor
    with _load_lock:
        if _processor is None:
            _processor = _load()
        return _processor


def _load() -> sentencepiece.SentencePieceProcessor:
    model = TOKENIZER_MODEL_PATH.read_bytes()
    digest = hashlib.sha256(model).hexdigest()
    if digest != TOKENIZER_MODEL_SHA256:
        raise ValueError(
            f"{TOKENIZER_MODEL_PATH} has sha256 {digest}, expected {TOKENIZER_MODEL_SHA256}"
        )
    processor = sentencepiece.SentencePieceProcessor(model_proto=model)
    if processor.get_piece_size() != VOCABULARY_SIZE:
        raise ValueError(f"{TOKENIZER_MODEL_PATH} has {processor.get_piece_size()} pieces")
    return processor


def _well_formed(text: str) -> str:
    """Replace lone surrogates (which JSON can carry) with U+FFFD, as tiktoken does."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _encode_segment(text: str, *, dummy_prefix: bool = True) -> list[int]:
    """Encode text without markers; an empty text is no token."""
    if not text:
        return []
    processor = llama2_processor()
    if dummy_prefix:
        return processor.encode(_well_formed(text))
    ids = processor.encode(_NEWLINE + _well_formed(text))
    if tuple(ids[: len(_NEWLINE_IDS)]) != _NEWLINE_IDS:  # cannot happen with Meta's model
        raise RuntimeError("a leading newline did not encode as '▁' '<0x0A>'")
    return ids[len(_NEWLINE_IDS) :]


def encode_llama2(text: str, *, allow_special: bool = False) -> list[int]:
    """Encode ``text`` to Llama 2 token ids, without adding ``<s>``.

    With ``allow_special=False`` (the default, for user text) ``"<s>"`` and ``"</s>"`` are
    plain characters. With ``allow_special=True`` (for prompts we formatted ourselves) they
    become ids 1 and 2 and split the text into segments encoded on their own.
    """
    if not allow_special:
        return _encode_segment(text)
    ids: list[int] = []
    position = 0
    for match in _MARKER_RE.finditer(text):
        ids.extend(_encode_segment(text[position : match.start()]))
        ids.append(MARKER_IDS[match.group()])
        position = match.end()
    ids.extend(_encode_segment(text[position:]))
    return ids


def decode_llama2(ids: Sequence[int]) -> str:
    """Decode token ids (control tokens are dropped; invalid UTF-8 becomes U+FFFD)."""
    return llama2_processor().decode(list(ids))


def count_llama2_tokens(text: str, *, dummy_prefix: bool = True) -> int:
    """Count the tokens of ordinary text (``<s>`` and ``</s>`` are plain characters).

    ``dummy_prefix=True`` counts ``text`` as SentencePiece encodes it alone, with a ``▁`` in
    front: how text after a space or at the start of a segment is tokenized. ``False``
    counts it without that ``▁``: how text right after a newline is tokenized.
    """
    return len(_encode_segment(text, dummy_prefix=dummy_prefix))


def count_llama2_prompt_tokens(prompt: str) -> int:
    """Count a formatted prompt as Bedrock does: markers are control tokens, plus its BOS.

    This is the number to compare with the ``prompt_token_count`` that Bedrock reports.
    """
    return BEDROCK_ADDED_BOS + len(encode_llama2(prompt, allow_special=True))
