"""The Llama 3 tokenizer is exact (Llama 2's: test_llama2_tokenizer.py).

Reference ids come from Hugging Face ``tokenizers`` on Meta's Llama 3 tokenizer.json
(``benchmarks/tokenizer_check.py``, which also found identical ids on a few thousand more
samples).
"""

from __future__ import annotations

import hashlib
import random

import pytest

from models_catalog.tokenizer import (
    SPECIAL_TOKENS,
    count_llama3_prompt_tokens,
    count_llama3_tokens,
    count_prompt_tokens,
    count_tokens,
    decode_llama3,
    encode_llama3,
    llama3_encoding,
    special_token_id,
)
from models_catalog.tokenizer.llama3 import (
    MAX_RUN_CHARS,
    TOKENIZER_MODEL_PATH,
    TOKENIZER_MODEL_SHA256,
    _split_long_runs,
)

HELLO = "Hello, how are you?"
HELLO_IDS = [9906, 11, 1268, 527, 499, 30]  # Hello , ␣how ␣are ␣you ?

PARAGRAPHS = (
    "Chat products call this backend instead of calling AWS Bedrock directly.\n\n"
    "Each customer company is a tenant with its own API keys, end users, "
    "conversations, budgets and quotas. No tenant ever sees another's data.\n\n"
    "Every call is priced per model (input and output tokens), charged to the "
    "tenant, and checked against budgets -- before Bedrock is called!"
)
PARAGRAPHS_TOKENS = 70
PARAGRAPHS_FIRST_IDS = [16047, 3956, 1650, 420, 19713, 4619, 315, 8260, 24124, 13394, 21161]

VARIED_TEXTS = [
    "",
    " ",
    "\n\n\n",
    HELLO,
    PARAGRAPHS,
    "naïve café, déjà vu",
    "日本語のテキストと中文",
    "😀👩‍👩‍👧🇫🇷",
    "e\u0301\u0301\u0301",  # combining marks
    "1234567890 3.14159 -42",
    "def f(x):\n\treturn x  # comment\r\n",
    "\x00\x01\x1f\x7f",
    "<|eot_id|><|start_header_id|>system<|end_header_id|>",
    "[INST] <<SYS>> </s><s>",
    "مرحبا بالعالم Привет мир",
    "\u200b\u00a0\u2028\u3000",
    "a" * 3000,
]


def test_tokenizer_model_is_metas_128000_rank_file() -> None:
    data = TOKENIZER_MODEL_PATH.read_bytes()

    assert hashlib.sha256(data).hexdigest() == TOKENIZER_MODEL_SHA256
    assert len(data.splitlines()) == 128_000
    assert llama3_encoding().n_vocab == 128_000 + 256


def test_encoding_is_loaded_once_per_process() -> None:
    assert llama3_encoding() is llama3_encoding()


def test_special_tokens_are_the_256_named_in_bedrock_md_from_id_128000() -> None:
    assert len(SPECIAL_TOKENS) == len(set(SPECIAL_TOKENS)) == 256
    assert special_token_id("<|begin_of_text|>") == 128000
    assert special_token_id("<|end_of_text|>") == 128001
    assert special_token_id("<|finetune_right_pad_id|>") == 128004
    assert special_token_id("<|start_header_id|>") == 128006
    assert special_token_id("<|end_header_id|>") == 128007
    assert special_token_id("<|eom_id|>") == 128008
    assert special_token_id("<|eot_id|>") == 128009
    assert special_token_id("<|python_tag|>") == 128010
    assert special_token_id("<|reserved_special_token_2|>") == 128011
    assert special_token_id("<|reserved_special_token_246|>") == 128255


def test_hello_how_are_you_matches_metas_reference_ids() -> None:
    assert encode_llama3(HELLO) == HELLO_IDS
    assert count_llama3_tokens(HELLO) == 6


def test_multi_paragraph_text_matches_reference_count() -> None:
    ids = encode_llama3(PARAGRAPHS)

    assert len(ids) == count_llama3_tokens(PARAGRAPHS) == PARAGRAPHS_TOKENS
    assert ids[: len(PARAGRAPHS_FIRST_IDS)] == PARAGRAPHS_FIRST_IDS


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_decode_inverts_encode(text: str) -> None:
    assert decode_llama3(encode_llama3(text)) == text
    assert decode_llama3(encode_llama3(text, allow_special=True)) == text


def test_special_token_strings_in_ordinary_text_are_plain_text() -> None:
    text = "<|eot_id|><|start_header_id|>system<|end_header_id|>"

    ids = encode_llama3(text)

    assert all(token_id < 128_000 for token_id in ids)
    assert count_llama3_tokens(text) == len(ids) > 3


def test_special_token_strings_in_a_formatted_prompt_are_special() -> None:
    prompt = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"

    assert encode_llama3(prompt, allow_special=True) == [
        128000,
        128006,
        882,
        128007,
        271,
        13347,
        128009,
    ]
    assert count_llama3_prompt_tokens(prompt) == 7
    assert count_prompt_tokens(prompt, "llama3") == 7


def _meta_split_whitespaces_or_nonwhitespaces(text: str, limit: int) -> list[str]:
    """Meta's reference splitter, transcribed, to compare ours against."""
    slices = []
    current_length = 0
    current_is_space = text[0].isspace() if text else False
    start = 0
    for index in range(len(text)):
        is_space = text[index].isspace()
        if current_is_space ^ is_space:
            current_length = 1
            current_is_space = is_space
        else:
            current_length += 1
            if current_length > limit:
                slices.append(text[start:index])
                start = index
                current_length = 1
    slices.append(text[start:])
    return slices


def test_long_runs_are_cut_where_metas_reference_cuts_them() -> None:
    rng = random.Random(7)
    for _ in range(20):
        pieces = [
            rng.choice(["a", " ", "\n", "é", "\u3000"]) * rng.choice([1, 5, MAX_RUN_CHARS, 60_000])
            for _ in range(rng.randint(1, 6))
        ]
        text = "".join(pieces)
        expected = _meta_split_whitespaces_or_nonwhitespaces(text, MAX_RUN_CHARS)

        assert list(_split_long_runs(text)) == expected


def test_huge_whitespace_runs_are_counted_without_a_regex_stack_overflow() -> None:
    # Unsplit, tiktoken raises "Max stack size exceeded for backtracking" on this.
    text = "word" + " " * 1_000_000 + "word"

    assert count_llama3_tokens(text) > 2
    assert decode_llama3(encode_llama3(text)) == text


def test_count_tokens_dispatches_on_family() -> None:
    assert count_tokens(HELLO, "llama3") == 6
    assert count_tokens(HELLO, "llama2") == 6  # ▁Hello , ▁how ▁are ▁you ?
    with pytest.raises(ValueError, match="unknown model family"):
        count_tokens(HELLO, "llama4")  # type: ignore[arg-type]
