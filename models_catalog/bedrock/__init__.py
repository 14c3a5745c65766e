"""Talking to AWS Bedrock Runtime: the client, its errors, and a local stand-in for tests.

``local_server`` is not imported here: it is a development tool, started on its own.
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
