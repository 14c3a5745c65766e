"""The Bedrock Meta text models we serve, as data (see shared/BEDROCK.md for the sources).

Prices are not here: they are effective-dated data in billing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

LLAMA2 = "llama2"
LLAMA3 = "llama3"

# Bedrock's largest max_gen_len for every Meta text model: no model's cap may exceed it.
BEDROCK_MAX_GEN_LEN = 2048
# Cross-region inference profiles put a geography before the model id.
INFERENCE_PROFILE_PREFIXES = ("us", "eu", "apac", "us-gov")
_SEED_VERSION_SPELLING = re.compile(r"-v(\d)(\d)$")
_BEDROCK_VERSION_SPELLING = re.compile(r"-v(\d):(\d)$")
_MODEL_ID_CHARACTERS = re.compile(r"[a-z0-9.:-]+")


@dataclass(frozen=True)
class CatalogueEntry:
    model_id: str
    name: str
    family: str
    context_window: int
    accepts_images: bool = False
    max_gen_len_cap: int = BEDROCK_MAX_GEN_LEN
    default_max_gen_len: int = 512
    default_temperature: Decimal = Decimal("0.50")
    default_top_p: Decimal = Decimal("0.90")


CATALOGUE: tuple[CatalogueEntry, ...] = (
    CatalogueEntry("meta.llama2-13b-chat-v1", "Llama 2 Chat 13B", LLAMA2, 4096),
    # One seed page says ~8,000 for 70B Chat; the model card says 4,096. Too large a window
    # makes Bedrock reject prompts, so the smaller figure wins.
    CatalogueEntry("meta.llama2-70b-chat-v1", "Llama 2 Chat 70B", LLAMA2, 4096),
    CatalogueEntry("meta.llama3-8b-instruct-v1:0", "Llama 3 8B Instruct", LLAMA3, 8192),
    CatalogueEntry("meta.llama3-70b-instruct-v1:0", "Llama 3 70B Instruct", LLAMA3, 8192),
    CatalogueEntry("meta.llama3-1-8b-instruct-v1:0", "Llama 3.1 8B Instruct", LLAMA3, 128_000),
    CatalogueEntry("meta.llama3-1-70b-instruct-v1:0", "Llama 3.1 70B Instruct", LLAMA3, 128_000),
    CatalogueEntry("meta.llama3-1-405b-instruct-v1:0", "Llama 3.1 405B Instruct", LLAMA3, 128_000),
    CatalogueEntry("meta.llama3-2-1b-instruct-v1:0", "Llama 3.2 1B Instruct", LLAMA3, 128_000),
    CatalogueEntry("meta.llama3-2-3b-instruct-v1:0", "Llama 3.2 3B Instruct", LLAMA3, 128_000),
    CatalogueEntry(
        "meta.llama3-2-11b-instruct-v1:0",
        "Llama 3.2 11B Vision Instruct",
        LLAMA3,
        128_000,
        accepts_images=True,
    ),
    CatalogueEntry(
        "meta.llama3-2-90b-instruct-v1:0",
        "Llama 3.2 90B Vision Instruct",
        LLAMA3,
        128_000,
        accepts_images=True,
    ),
    CatalogueEntry("meta.llama3-3-70b-instruct-v1:0", "Llama 3.3 70B Instruct", LLAMA3, 128_000),
)


@dataclass(frozen=True)
class ResolvedModelId:
    model_id: str
    """The catalogue's id: what pricing and limits are keyed by."""
    invocation_id: str
    """What to send to Bedrock as modelId (the inference profile id when one was given)."""


def resolve_model_id(raw_id: str) -> ResolvedModelId:
    """Accept Bedrock's spelling, an inference profile id, or the seed pages' `-v10` spelling."""
    text = raw_id.strip()
    profile_prefix = ""
    for geography in INFERENCE_PROFILE_PREFIXES:
        if text.startswith(f"{geography}.meta."):
            profile_prefix = f"{geography}."
            text = text.removeprefix(profile_prefix)
            break
    # Seed documents write `...-instruct-v10` for Bedrock's `...-instruct-v1:0`.
    text = _SEED_VERSION_SPELLING.sub(r"-v\1:\2", text)
    return ResolvedModelId(model_id=text, invocation_id=f"{profile_prefix}{text}")


def accepted_model_id_pattern(model_ids: Iterable[str]) -> str:
    """A regular expression matching exactly the spellings of these ids that
    resolve_model_id accepts (less surrounding white space), for the OpenAPI schema.

    Only `.` needs escaping in our ids, and escaping nothing else keeps the pattern valid in
    the ECMAScript dialect OpenAPI tools use.
    """
    alternatives = []
    for model_id in model_ids:
        if not _MODEL_ID_CHARACTERS.fullmatch(model_id):
            raise ValueError(f"unexpected characters in model id {model_id!r}")
        escaped = model_id.replace(".", r"\.")
        # The seed documents' `-v10` for Bedrock's `-v1:0`.
        alternatives.append(_BEDROCK_VERSION_SPELLING.sub(r"-v\1(?::\2|\2)", escaped))
    profiles = "|".join(prefix for prefix in INFERENCE_PROFILE_PREFIXES)
    return rf"^(?:(?:{profiles})\.)?(?:{'|'.join(alternatives)})$"
