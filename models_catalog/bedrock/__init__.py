"""Talking to AWS Bedrock Runtime: the client and its errors.

The local Bedrock-compatible stand-in used offline and in tests is a development tool,
``devtools.local_bedrock``: it is not part of this package.
"""

from models_catalog.bedrock.client import (
    Delta,
    Final,
    GenerationResult,
    StreamEvent,
    build_bedrock_client,
    clear_bedrock_client_cache,
    get_bedrock_client,
    invoke,
    stream,
)
from models_catalog.bedrock.errors import (
    FINAL_CODES,
    RETRYABLE_CODES,
    BedrockError,
    FinalBedrockError,
    RetryableBedrockError,
    to_bedrock_error,
)

__all__ = [
    "FINAL_CODES",
    "RETRYABLE_CODES",
    "BedrockError",
    "Delta",
    "Final",
    "FinalBedrockError",
    "GenerationResult",
    "RetryableBedrockError",
    "StreamEvent",
    "build_bedrock_client",
    "clear_bedrock_client_cache",
    "get_bedrock_client",
    "invoke",
    "stream",
    "to_bedrock_error",
]
