"""The local Bedrock-compatible server the end-to-end workers talk to."""

from __future__ import annotations

# Its seed: what it answers to a prompt is then known in advance
# (devtools.local_bedrock.expected_generation).
BEDROCK_SEED = 11
