"""The Llama 2 tokenizer is Meta's, and counts prompts the way Meta's reference code does.

Reference ids (``data/llama2_tokenizer_vectors.json``): llama.cpp's test vectors for the
Llama 2 vocabulary (made with Hugging Face ``tokenizers`` on ``meta-llama/Llama-2-7b-hf``,
shipped in the llama-cpp-python 0.3.16 sdist) and the encode cases of the npm package
llama-tokenizer-js 1.2.2. Both are independent of the ``sentencepiece`` package we use.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

import models_catalog.tokenizer.llama2 as llama2_module
from models_catalog.prompt_formats import Turn, build_llama2_prompt
from models_catalog.tokenizer import (
    count_llama2_prompt_tokens,
    count_llama2_tokens,
    count_prompt_tokens,
    count_tokens,
    decode_llama2,
    encode_llama2,
    llama2_processor,
)
from models_catalog.tokenizer.llama2 import (
    BOS_ID,
    EOS_ID,
    TOKENIZER_MODEL_PATH,
    TOKENIZER_MODEL_SHA256,
)

VECTORS = json.loads(
    (Path(__file__).parent / "data" / "llama2_tokenizer_vectors.json").read_text("utf-8")
)


def _cases(source: str) -> list[tuple[str, list[int]]]:
    return [(text, ids) for text, ids in VECTORS[source]["cases"]]


# --- the model file ---------------------------------------------------------------------


def test_vendored_model_is_metas_tokenizer_model() -> None:
    data = TOKENIZER_MODEL_PATH.read_bytes()

    assert len(data) == 499_723
    assert hashlib.sha256(data).hexdigest() == TOKENIZER_MODEL_SHA256
    assert TOKENIZER_MODEL_SHA256 == (
        "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"
    )


def test_processor_has_metas_special_pieces() -> None:
    processor = llama2_processor()

    assert processor.get_piece_size() == 32_000
    assert [processor.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert (processor.bos_id(), processor.eos_id()) == (BOS_ID, EOS_ID)
    assert processor.is_control(BOS_ID)
    assert processor.is_control(EOS_ID)
    assert all(processor.is_byte(3 + byte) for byte in range(256))


def test_a_corrupt_model_file_is_refused(tmp_path, monkeypatch) -> None:
    truncated = tmp_path / "llama2_tokenizer.model"
    truncated.write_bytes(TOKENIZER_MODEL_PATH.read_bytes()[:1000])
    monkeypatch.setattr(llama2_module, "TOKENIZER_MODEL_PATH", truncated)

    with pytest.raises(ValueError, match="sha256"):
        llama2_module._load()


def test_processor_is_loaded_once_even_when_threads_race(monkeypatch) -> None:
    monkeypatch.setattr(llama2_module, "_processor", None)
    loads = []
    real_load = llama2_module._load

    def counting_load():
        loads.append(1)
        return real_load()

    monkeypatch.setattr(llama2_module, "_load", counting_load)
    start = threading.Barrier(8)
    seen = []

    def worker() -> None:
        start.wait()
        seen.append(llama2_processor())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(loads) == 1
    assert all(processor is seen[0] for processor in seen)


# --- published test vectors -------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected_ids"), _cases("llama.cpp"))
def test_llama_cpp_vectors(text: str, expected_ids: list[int]) -> None:
    assert encode_llama2(text) == expected_ids
    assert count_llama2_tokens(text) == len(expected_ids)


@pytest.mark.parametrize(("text", "expected_ids"), _cases("llama-tokenizer-js"))
def test_llama_tokenizer_js_vectors(text: str, expected_ids: list[int]) -> None:
    # llama-tokenizer-js adds <s> in front.
    assert [BOS_ID, *encode_llama2(text)] == expected_ids
    assert decode_llama2(expected_ids) == text


def test_well_known_ids() -> None:
    assert encode_llama2("Hello world") == [15043, 3186]  # ▁Hello ▁world
    assert encode_llama2("grabbed") == [2646, 1327, 287]  # ▁gr ab bed
    assert encode_llama2("镇") == [29871, 30411]  # ▁ 镇
    assert encode_llama2("🦙") == [29871, 243, 162, 169, 156]  # ▁ and four byte pieces


# --- what additive counting relies on ---------------------------------------------------


def test_vocabulary_has_no_piece_that_spans_a_space_or_a_newline() -> None:
    """prompt_formats adds counts of parts; these two facts make that exact (see llama2)."""
    processor = llama2_processor()
    normal = [
        processor.id_to_piece(i)
        for i in range(processor.get_piece_size())
        if not (processor.is_control(i) or processor.is_unknown(i) or processor.is_byte(i))
    ]

    assert len(normal) == 32_000 - 3 - 256
    # "▁" only ever leads a piece (whitespace-only pieces are all "▁").
    assert not [piece for piece in normal if "▁" in piece.lstrip("▁")]
    assert not [piece for piece in normal if "\n" in piece]


def test_text_after_a_newline_is_counted_without_the_dummy_prefix() -> None:
    assert count_llama2_tokens("Hello") == count_llama2_tokens("Hello", dummy_prefix=False) == 1
    assert count_llama2_tokens("Bonjour") == 3  # ▁Bon j our
    assert count_llama2_tokens("Bonjour", dummy_prefix=False) == 4  # B on j our
    assert count_llama2_tokens("你好") == 3  # ▁ 你 好
    assert count_llama2_tokens("你好", dummy_prefix=False) == 2  # 你 好
    assert count_llama2_tokens("", dummy_prefix=False) == 0
    for text in ("Hello world", "a\nb", "  x", "🦙 y"):
        with_newline = encode_llama2("\n" + text)
        assert count_llama2_tokens(text, dummy_prefix=False) == len(with_newline) - 2


def test_lone_surrogates_are_counted_as_the_replacement_character() -> None:
    assert encode_llama2("a\ud800b") == encode_llama2("a\ufffdb")
    assert count_llama2_tokens("\udfff", dummy_prefix=False) == count_llama2_tokens(
        "\ufffd", dummy_prefix=False
    )


def test_markers_are_text_unless_special_is_allowed() -> None:
    assert BOS_ID not in encode_llama2("<s>hi</s>")
    assert encode_llama2("<s>hi</s>", allow_special=True) == [BOS_ID, *encode_llama2("hi"), EOS_ID]
    # Each segment gets its own "▁"; an empty one is no token.
    assert encode_llama2("a</s><s>b", allow_special=True) == [
        *encode_llama2("a"),
        EOS_ID,
        BOS_ID,
        *encode_llama2("b"),
    ]


def test_count_tokens_dispatches_to_the_exact_llama2_tokenizer() -> None:
    assert count_tokens("Hello world", "llama2") == 2
    assert count_prompt_tokens("<s>[INST] Hi [/INST]", "llama2") == count_llama2_prompt_tokens(
        "<s>[INST] Hi [/INST]"
    )


# --- prompts ------------------------------------------------------------------------------

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def _meta_reference_ids(system: str | None, dialog: list[tuple[str, str]], last: str) -> list[int]:
    """Meta's llama/generation.py ``chat_completion``: each exchange encoded on its own with
    ``bos=True, eos=True``, the last question with ``bos=True``; the system prompt goes
    into the first question."""
    questions = [question for question, _ in dialog] + [last]
    if system:
        questions[0] = B_SYS + system + E_SYS + questions[0]
    ids: list[int] = []
    for question, (_, answer) in zip(questions, dialog, strict=False):
        ids += [BOS_ID, *encode_llama2(f"{B_INST} {question.strip()} {E_INST} {answer.strip()} ")]
        ids.append(EOS_ID)
    ids += [BOS_ID, *encode_llama2(f"{B_INST} {questions[-1].strip()} {E_INST}")]
    return ids


@pytest.mark.parametrize("system", [None, "You are terse.", "Réponds en français. 🦙"])
def test_our_prompt_tokenizes_as_metas_reference_chat_code(system: str | None) -> None:
    dialog = [("Hello there", "Hi! How can I help?"), ("What is 2+2?", "4.\n\nAnything else?")]
    last = "Explain BPE  in one line"
    turns = []
    for question, answer in dialog:
        turns += [Turn("user", question), Turn("assistant", answer)]
    turns.append(Turn("user", last))

    prompt = build_llama2_prompt(system_prompt=system, turns=turns)

    reference = _meta_reference_ids(system, dialog, last)
    assert encode_llama2(prompt, allow_special=True) == reference
    # Bedrock adds one <s> in front of what it is given.
    assert count_llama2_prompt_tokens(prompt) == len(reference) + 1
