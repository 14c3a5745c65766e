"""Rebuild ``models_catalog/tokenizer/data/llama2_tokenizer.model`` from a public package.

Meta's Llama 2 tokenizer is a SentencePiece BPE model (``tokenizer.model``, 32,000 pieces).
The PyPI source distribution of ``llama-cpp-python`` vendors llama.cpp, whose tokenizer
tests ship that vocabulary as ``vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf``
(converted from ``meta-llama/Llama-2-7b-hf``: every piece with its score and type). This
script reads the GGUF metadata with a small reader of its own, puts the pieces back into a
SentencePiece ``ModelProto`` with the trainer and normaliser settings of Meta's file, and
checks that the result is byte for byte Meta's ``tokenizer.model`` (its published sha256).

Usage (the sdist is about 50 MB; keep it outside the repository)::

    .venv/bin/pip download --no-deps --no-binary :all: llama-cpp-python==0.3.16 -d /tmp/l2
    pip install --target /tmp/pb "protobuf>=7.36"    # only for this script
    PYTHONPATH=/tmp/pb .venv/bin/python benchmarks/build_llama2_tokenizer.py \\
        /tmp/l2/llama_cpp_python-0.3.16.tar.gz

The argument may also be the ``.gguf`` file itself. ``--output`` defaults to the vendored
path. The run fails, writing nothing, unless the sha256 is Meta's.
"""

from __future__ import annotations

import argparse
import hashlib
import struct
import sys
import tarfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "models_catalog" / "tokenizer" / "data" / "llama2_tokenizer.model"
GGUF_MEMBER_SUFFIX = "vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf"

# Meta's Llama 2 tokenizer.model (also LLaMA 1's): 499,723 bytes.
META_TOKENIZER_SHA256 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"
VOCABULARY_SIZE = 32_000
NORMAL_PIECE = 1  # GGUF token types number SentencePiece's piece types the same way


# --- GGUF -------------------------------------------------------------------------------

_GGUF_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_GGUF_STRING = 8
_GGUF_ARRAY = 9


class _GGUFReader:
    """Reads the key-value metadata at the head of a little-endian GGUF (v2 or v3) file."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def _take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.position)
        self.position += struct.calcsize("<" + fmt)
        return value

    def _string(self) -> str:
        length = self._take("Q")
        raw = self.data[self.position : self.position + length]
        self.position += length
        return raw.decode("utf-8")

    def _value(self, value_type: int) -> Any:
        if value_type in _GGUF_SCALARS:
            return self._take(_GGUF_SCALARS[value_type])
        if value_type == _GGUF_STRING:
            return self._string()
        if value_type == _GGUF_ARRAY:
            item_type = self._take("I")
            return [self._value(item_type) for _ in range(self._take("Q"))]
        raise ValueError(f"unknown GGUF value type {value_type}")

    def metadata(self) -> dict[str, Any]:
        if self.data[:4] != b"GGUF":
            raise ValueError("not a GGUF file")
        self.position = 4
        version = self._take("I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported")
        self._take("Q")  # tensor count
        entries = self._take("Q")
        return {self._string(): self._value(self._take("I")) for _ in range(entries)}


def read_gguf(source: Path) -> bytes:
    """The GGUF bytes, from the file itself or from inside the llama-cpp-python sdist."""
    if source.suffix == ".gguf":
        return source.read_bytes()
    with tarfile.open(source) as archive:
        for member in archive.getmembers():
            if member.name.endswith(GGUF_MEMBER_SUFFIX):
                extracted = archive.extractfile(member)
                if extracted is None:
                    break
                return extracted.read()
    raise SystemExit(f"{source} has no member ending in {GGUF_MEMBER_SUFFIX}")


# --- SentencePiece model ----------------------------------------------------------------


def build_model_proto(metadata: dict[str, Any]) -> bytes:
    """Meta's tokenizer.model, rebuilt from the GGUF vocabulary."""
    from sentencepiece import sentencepiece_model_pb2 as model_pb2  # needs protobuf

    if metadata.get("tokenizer.ggml.model") != "llama":
        raise SystemExit("the GGUF does not hold a SentencePiece (llama) vocabulary")
    pieces = metadata["tokenizer.ggml.tokens"]
    scores = metadata["tokenizer.ggml.scores"]
    types = metadata["tokenizer.ggml.token_type"]
    if not len(pieces) == len(scores) == len(types) == VOCABULARY_SIZE:
        raise SystemExit(f"expected {VOCABULARY_SIZE} pieces, scores and types")

    model = model_pb2.ModelProto()
    for piece, score, piece_type in zip(pieces, scores, types, strict=True):
        entry = model.pieces.add()
        entry.piece = piece
        entry.score = score
        # Meta's file leaves the type out for normal pieces (its default); setting it would
        # add two bytes per piece and change the sha256, not the behaviour.
        if piece_type != NORMAL_PIECE:
            entry.type = piece_type

    # Meta's trainer and normaliser settings, as its file carries them (field for field: a
    # set field is serialised even when it holds the default). Encoding reads only
    # model_type, byte_fallback, the special ids/pieces and the normaliser; the rest is
    # kept so the file is byte-identical.
    trainer = model.trainer_spec
    trainer.input.append("/large_experiments/theorem/datasets/MERGED/all.test1.merged")
    trainer.model_prefix = "spm_model_32k_200M_charcov099995_allowWSO__v2"
    trainer.model_type = model_pb2.TrainerSpec.BPE
    trainer.vocab_size = VOCABULARY_SIZE
    trainer.self_test_sample_size = 0
    trainer.input_format = "text"
    trainer.character_coverage = 0.99995
    trainer.input_sentence_size = 200_000_000
    trainer.seed_sentencepiece_size = 1_000_000
    trainer.shrinking_factor = 0.75
    trainer.num_threads = 80
    trainer.num_sub_iterations = 2
    trainer.max_sentence_length = 4192
    trainer.shuffle_input_sentence = True
    trainer.max_sentencepiece_length = 16
    trainer.split_by_unicode_script = True
    trainer.split_by_whitespace = True
    trainer.split_by_number = True
    trainer.treat_whitespace_as_suffix = False
    trainer.split_digits = True
    trainer.allow_whitespace_only_pieces = True
    trainer.vocabulary_output_piece_score = True
    trainer.hard_vocab_limit = True
    trainer.use_all_vocab = False
    trainer.byte_fallback = True
    trainer.required_chars = ""
    trainer.unk_id = 0
    trainer.bos_id = 1
    trainer.eos_id = 2
    trainer.pad_id = -1
    trainer.unk_surface = " \u2047 "
    trainer.unk_piece = "<unk>"
    trainer.bos_piece = "<s>"
    trainer.eos_piece = "</s>"
    trainer.pad_piece = "<pad>"
    trainer.train_extremely_large_corpus = False
    trainer.enable_differential_privacy = False
    trainer.differential_privacy_noise_level = 0.0
    trainer.differential_privacy_clipping_threshold = 0

    normalizer = model.normalizer_spec
    normalizer.name = "identity"
    normalizer.precompiled_charsmap = b""
    normalizer.add_dummy_prefix = True
    normalizer.remove_extra_whitespaces = False
    normalizer.normalization_rule_tsv = ""
    return model.SerializeToString()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="llama-cpp-python sdist (.tar.gz) or .gguf")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()

    model = build_model_proto(_GGUFReader(read_gguf(args.source)).metadata())
    digest = hashlib.sha256(model).hexdigest()
    print(f"built {len(model):,} bytes, sha256 {digest}")
    if digest != META_TOKENIZER_SHA256:
        print(f"not Meta's tokenizer.model ({META_TOKENIZER_SHA256}); nothing written")
        return 1
    args.output.write_bytes(model)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
