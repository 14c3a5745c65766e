"""How long building the next prompt takes as history grows, against a naive builder.

For conversations of 100, 1,000 and 10,000 messages (50 to 500 tokens each) on a
128K-window model, it times `context_build` (stored per-message counts, reads only the
turns it keeps) and a naive builder that loads and re-tokenises the whole history each
time, on SQLite and on PostgreSQL, and prints milliseconds per build.

    .venv/bin/python benchmarks/context_build.py [--backends sqlite postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._django import DEFAULT_POSTGRES_URL, setup_django, throwaway_database

SIZES = (100, 1_000, 10_000)
MODEL_ID = "meta.llama3-1-8b-instruct-v1:0"
MAX_GEN_LEN = 512
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "it",
    "an",
    "be",
    "this",
    "are",
    "which",
    "or",
    "prompt",
    "token",
    "window",
    "budget",
    "model",
    "answer",
    "question",
    "conversation",
    "history",
    "tenant",
    "cost",
    "latency",
    "stream",
    "worker",
    "queue",
    "redis",
    "postgres",
    "bedrock",
    "llama",
    "context",
    "trim",
    "keep",
    "drop",
]


def random_text(rng: random.Random, tokens: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(tokens))


def populate(size: int, seed: int):
    from django.utils import timezone

    from conversations.context import message_token_count
    from conversations.models import Message, MessageStatus
    from conversations.services import tenant_create
    from conversations.services.conversations import conversation_create

    rng = random.Random(seed)
    tenant = tenant_create(slug=f"bench-{size}")
    conversation = conversation_create(
        tenant=tenant, model_id=MODEL_ID, system_prompt="You are a helpful assistant."
    )
    model = conversation.model
    now = timezone.now()
    messages = []
    for sequence in range(1, size + 1):
        content = random_text(rng, rng.randint(50, 500))
        role = "user" if sequence % 2 == 1 else "assistant"
        if sequence == size:
            role = "user"  # the turn being answered
        messages.append(
            Message(
                tenant=tenant,
                conversation=conversation,
                sequence=sequence,
                role=role,
                content=content,
                status=MessageStatus.COMPLETED,
                token_count=message_token_count(model, content),
                completed_at=now,
            )
        )
    Message.objects.bulk_create(messages, batch_size=1000)
    conversation.last_sequence = size
    conversation.save(update_fields=["last_sequence"])
    from django.db import connection

    if connection.vendor == "postgresql":
        # Fresh bulk-loaded tables have no statistics yet; production tables do.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    return conversation


def naive_build(conversation) -> int:
    """Load every message and re-tokenise it, newest first, keeping what fits."""
    from conversations.models import MessageStatus
    from models_catalog.prompt_formats import (
        Turn,
        build_prompt,
        prompt_frame_tokens,
        system_prompt_tokens,
        turn_tokens,
    )

    model = conversation.model
    history = list(
        conversation.messages.filter(status=MessageStatus.COMPLETED)
        .order_by("sequence")
        .values_list("role", "content")
    )
    turns = [Turn(role=role, content=content) for role, content in history]
    costs = [turn_tokens(model.family, turn) for turn in turns]
    budget = model.context_window - MAX_GEN_LEN
    total = prompt_frame_tokens(model.family) + system_prompt_tokens(
        model.family, conversation.system_prompt
    )
    kept = 0
    for cost in reversed(costs):
        if total + cost > budget:
            break
        total += cost
        kept += 1
    build_prompt(
        model.family, system_prompt=conversation.system_prompt, turns=turns[len(turns) - kept :]
    )
    return total


def time_builds(function, repeats: int) -> float:
    durations = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        durations.append((time.perf_counter() - started) * 1000)
    return statistics.median(durations)


def measure(database_url: str) -> list[dict]:
    setup_django(database_url)
    from conversations.context import context_build
    from models_catalog.tokenizer import count_llama3_prompt_tokens

    count_llama3_prompt_tokens("warm up the tokenizer")
    rows = []
    for size in SIZES:
        conversation = populate(size, seed=size)
        built = context_build(conversation=conversation, max_gen_len=MAX_GEN_LEN)
        assert built.prompt_token_count == count_llama3_prompt_tokens(built.prompt)
        assert built.prompt_token_count == naive_build(conversation)
        repeats = 20 if size < 10_000 else 8
        rows.append(
            {
                "messages": size,
                "kept": len(built.kept_message_ids),
                "prompt_tokens": built.prompt_token_count,
                "build_ms": time_builds(
                    lambda c=conversation: context_build(conversation=c, max_gen_len=MAX_GEN_LEN),
                    repeats,
                ),
                "naive_ms": time_builds(lambda c=conversation: naive_build(c), repeats),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--postgres-admin-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    arguments = parser.parse_args()

    if arguments.child:  # one backend per process: Django is set up once per process
        print(json.dumps(measure(arguments.child)))
        return

    print(f"Context build for {MODEL_ID} (128,000-token window, max_gen_len {MAX_GEN_LEN}),")
    print("median milliseconds per build; naive = load and re-tokenise the whole history.\n")
    header = f"{'backend':<10} {'messages':>8} {'kept':>6} {'prompt tok':>10} "
    header += f"{'build ms':>9} {'naive ms':>9} {'speed-up':>8}"
    print(header)
    print("-" * len(header))
    for backend in arguments.backends:
        try:
            with throwaway_database(backend, arguments.postgres_admin_url) as database_url:
                output = subprocess.run(
                    [sys.executable, __file__, "--child", database_url],
                    capture_output=True,
                    text=True,
                    check=True,
                    env={**os.environ, "DATABASE_URL": database_url},
                ).stdout
        except Exception as error:
            print(f"{backend:<10} unavailable: {error}")
            continue
        for row in json.loads(output.strip().splitlines()[-1]):
            print(
                f"{backend:<10} {row['messages']:>8,} {row['kept']:>6,} "
                f"{row['prompt_tokens']:>10,} {row['build_ms']:>9.1f} {row['naive_ms']:>9.1f} "
                f"{row['naive_ms'] / row['build_ms']:>7.1f}x"
            )


if __name__ == "__main__":
    main()
