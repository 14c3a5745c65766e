"""The Bedrock Meta text models we serve, as data (see shared/BEDROCK.md for the sources).

Prices are not here: they are effective-dated data in billing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

LLAMA2 = "llama2"
LLAMA3 = "llama3"

# Cross-region inference profiles put a geography before the model id.
INFERENCE_PROFILE_PREFIXES = ("us", "eu", "apac", "us-gov")
_SEED_VERSION_SPELLING = re.compile(r"-v(\d)(\d)$")


@dataclass(frozen=True)
class CatalogueEntry:
    model_id: str
    name: str
    family: str
    context_window: int
    accepts_images: bool = False
    max_gen_len_cap: int = 2048
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
