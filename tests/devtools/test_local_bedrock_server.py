"""The local Bedrock-compatible server: its "model", its wire format, its knobs, its CLI.

Raw HTTP (requests) where the exact bytes matter; boto3 where what matters is that the
real SDK accepts them. The client module's own behaviour is in
tests/models_catalog/test_bedrock_client.py.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.eventstream import EventStreamBuffer, EventStreamMessage
from botocore.exceptions import ClientError, EventStreamError

from devtools.local_bedrock import (
    ERROR_STATUS,
    MODEL_CONTEXT_WINDOWS,
    STREAM_START_PROMPT_CHARS,
    VOCABULARY,
    LocalBedrockServer,
    ServerConfig,
    expected_generation,
    generate,
    natural_answer_length,
)
from models_catalog.catalogue import CATALOGUE
from models_catalog.tokenizer import (
    count_llama2_prompt_tokens,
    count_llama3_prompt_tokens,
    count_llama3_tokens,
    encode_llama3,
)

SEED = 7
MODEL = "meta.llama3-1-8b-instruct-v1:0"
MODEL_PATH = "meta.llama3-1-8b-instruct-v1%3A0"
PROMPT = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    "What is a token?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
)
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> Iterator[LocalBedrockServer]:
    with LocalBedrockServer(seed=SEED) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_script(server: LocalBedrockServer) -> None:
    server.clear_script()
    server.reset_counters()


def boto_client(url: str) -> Any:
    return boto3.client(
        "bedrock-runtime",
        region_name="us-west-2",
        endpoint_url=url,
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=5, connect_timeout=1),
    )


def post_url(url: str, body: object, *, timeout: float = 5) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url, data=data, timeout=timeout)


def post(
    server: LocalBedrockServer, operation: str, body: object, *, timeout: float = 5
) -> requests.Response:
    return post_url(f"{server.url}/model/{MODEL_PATH}/{operation}", body, timeout=timeout)


def messages_of(raw: bytes) -> list[EventStreamMessage]:
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return list(buffer)


def chunk_of(message: EventStreamMessage) -> dict[str, Any]:
    return json.loads(base64.b64decode(json.loads(message.payload)["bytes"]))


# -- the deterministic model -------------------------------------------------------------


def test_expected_generation_is_deterministic_per_seed_and_prompt() -> None:
    first = expected_generation("hello", 2048, seed=1)

    assert first == expected_generation("hello", 2048, seed=1)
    assert first != expected_generation("hello", 2048, seed=2)
    assert first != expected_generation("hello!", 2048, seed=1)


def test_natural_answer_stops_on_its_own_with_a_full_stop() -> None:
    generation = generate("hello", 2048, seed=1)

    assert generation.stop_reason == "stop"
    assert len(generation.pieces) == natural_answer_length("hello", seed=1)
    assert generation.text.endswith(".")
    assert generation.text[0].isupper()


def test_max_gen_len_cuts_the_natural_answer_to_a_prefix() -> None:
    natural = generate("hello", 2048, seed=1)

    cut = generate("hello", 5, seed=1)

    assert cut.stop_reason == "length"
    assert cut.pieces == natural.pieces[:5]


def test_answer_tokens_fixes_the_natural_length() -> None:
    generation = generate("hello", 2048, seed=1, answer_tokens=9)

    assert len(generation.pieces) == 9
    assert generation.stop_reason == "stop"


def test_every_vocabulary_word_is_one_llama3_token_in_every_form_we_emit() -> None:
    forms = [form for word in VOCABULARY for form in (word, f" {word}", word.capitalize())]
    forms += [f" {word.capitalize()}" for word in VOCABULARY]

    assert [form for form in forms if count_llama3_tokens(form) != 1] == []


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
@pytest.mark.parametrize("prompt", ["", "hello", PROMPT, "x" * 1000])
def test_generated_token_count_equals_our_tokenizer_count(seed: int, prompt: str) -> None:
    generation = generate(prompt, 2048, seed, answer_tokens=None)

    assert count_llama3_tokens(generation.text) == len(generation.pieces)
    assert encode_llama3(generation.text) == [
        encode_llama3(piece)[0] for piece in generation.pieces
    ]


def test_built_in_model_windows_match_the_catalogue() -> None:
    assert dict(MODEL_CONTEXT_WINDOWS) == {
        entry.model_id: entry.context_window for entry in CATALOGUE
    }


# -- InvokeModel over raw HTTP -------------------------------------------------------------


def test_invoke_answers_json_with_bedrock_headers(server: LocalBedrockServer) -> None:
    response = post(server, "invoke", {"prompt": PROMPT, "max_gen_len": 300})

    assert response.status_code == 200
    body = response.json()
    text = expected_generation(PROMPT, 300, SEED)
    assert body == {
        "generation": text,
        "prompt_token_count": count_llama3_prompt_tokens(PROMPT),
        "generation_token_count": count_llama3_tokens(text),
        "stop_reason": "stop",
    }
    assert response.headers["X-Amzn-Bedrock-Input-Token-Count"] == str(body["prompt_token_count"])
    assert response.headers["X-Amzn-Bedrock-Output-Token-Count"] == str(
        body["generation_token_count"]
    )
    assert int(response.headers["X-Amzn-Bedrock-Invocation-Latency"]) >= 0
    assert server.requests_by_path == {f"/model/{MODEL_PATH}/invoke": 1}


def test_prompt_special_tokens_count_one_token_each(server: LocalBedrockServer) -> None:
    response = post(server, "invoke", {"prompt": "<|begin_of_text|><|eot_id|>"})

    assert response.json()["prompt_token_count"] == 2


LLAMA2_PROMPT = (
    "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is a token? [/INST] A piece of text. "
    "</s><s>[INST] 你好 [/INST]"
)


@pytest.mark.parametrize("model_path", ["meta.llama2-13b-chat-v1", "us.meta.llama2-70b-chat-v1"])
def test_llama2_prompts_are_counted_as_we_count_them(
    server: LocalBedrockServer, model_path: str
) -> None:
    response = post_url(
        f"{server.url}/model/{model_path}/invoke", {"prompt": LLAMA2_PROMPT, "max_gen_len": 8}
    )

    assert response.status_code == 200
    # <s> and </s> are one token each, plus the <s> Bedrock adds in front.
    assert response.json()["prompt_token_count"] == count_llama2_prompt_tokens(LLAMA2_PROMPT)
    assert count_llama2_prompt_tokens(LLAMA2_PROMPT) != count_llama3_prompt_tokens(LLAMA2_PROMPT)


def test_llama2_window_is_checked_in_llama2_tokens(server: LocalBedrockServer) -> None:
    prompt = "<s>[INST] " + "안녕하세요 " * 600 + "[/INST]"  # ~4,800 Llama 2 tokens, ~1,200 Llama 3
    assert count_llama3_prompt_tokens(prompt) < 4096 - 8 < count_llama2_prompt_tokens(prompt)

    response = post_url(
        f"{server.url}/model/meta.llama2-13b-chat-v1/invoke", {"prompt": prompt, "max_gen_len": 8}
    )

    assert response.status_code == 400
    assert f"({count_llama2_prompt_tokens(prompt)} tokens)" in response.json()["message"]


def test_unknown_model_is_resource_not_found(server: LocalBedrockServer) -> None:
    response = post_url(f"{server.url}/model/meta.llama9-1t-v1%3A0/invoke", {"prompt": "x"})

    assert response.status_code == 404
    assert response.headers["X-Amzn-ErrorType"] == (
        "ResourceNotFoundException:http://internal.amazon.com/coral/com.amazon.bedrock/"
    )
    assert "meta.llama9-1t-v1:0" in response.json()["message"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"prompt": 5},
        {"prompt": "x", "max_gen_len": 0},
        {"prompt": "x", "max_gen_len": 2049},
        {"prompt": "x", "max_gen_len": "5"},
        {"prompt": "x", "max_gen_len": 5.0},
        {"prompt": "x", "temperature": 1.5},
        {"prompt": "x", "temperature": True},
        {"prompt": "x", "top_p": -0.1},
        {"prompt": "x", "stop": ["."]},
        b"not json",
        [],
    ],
)
def test_invalid_bodies_are_validation_exceptions(server: LocalBedrockServer, body: object) -> None:
    response = post(server, "invoke", body)

    assert response.status_code == 400
    assert response.headers["X-Amzn-ErrorType"].startswith("ValidationException:")
    assert response.json()["message"]


def test_boundary_parameters_are_accepted(server: LocalBedrockServer) -> None:
    for body in (
        {"prompt": "x", "max_gen_len": 1, "temperature": 0, "top_p": 0},
        {"prompt": "x", "max_gen_len": 2048, "temperature": 1, "top_p": 1.0},
    ):
        assert post(server, "invoke", body).status_code == 200


def test_prompt_plus_max_gen_len_over_the_window_names_the_numbers(
    server: LocalBedrockServer,
) -> None:
    prompt = "<|begin_of_text|>" + " word" * 8000
    tokens = count_llama3_prompt_tokens(prompt)
    response = post_url(
        f"{server.url}/model/meta.llama3-8b-instruct-v1%3A0/invoke",
        {"prompt": prompt, "max_gen_len": 512},
    )

    assert response.status_code == 400
    message = response.json()["message"]
    assert f"{tokens} tokens" in message
    assert "8192" in message
    assert "512" in message


@pytest.mark.parametrize(("words", "status"), [(6143, 200), (6144, 400)])
def test_the_window_is_inclusive_prompt_plus_max_gen_len_may_equal_it(
    server: LocalBedrockServer, words: int, status: int
) -> None:
    prompt = "<|begin_of_text|>" + " word" * words
    assert count_llama3_prompt_tokens(prompt) == words + 1

    response = post_url(
        f"{server.url}/model/meta.llama3-8b-instruct-v1%3A0/invoke",
        {"prompt": prompt, "max_gen_len": 2048},
    )

    # 6,144 prompt tokens + 2,048 = 8,192: exactly the window of Llama 3 8B.
    assert response.status_code == status


def test_inference_profile_prefixes_are_accepted(server: LocalBedrockServer) -> None:
    for prefix in ("us.", "eu.", "apac."):
        response = post_url(f"{server.url}/model/{prefix}{MODEL_PATH}/invoke", {"prompt": "x"})
        assert response.status_code == 200, prefix


# -- the event stream -----------------------------------------------------------------------


def test_stream_is_chunked_event_stream_shaped_like_a_real_llama_stream(
    server: LocalBedrockServer,
) -> None:
    response = post(server, "invoke-with-response-stream", {"prompt": PROMPT, "max_gen_len": 6})

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/vnd.amazon.eventstream"
    assert response.headers["Transfer-Encoding"] == "chunked"
    messages = messages_of(response.content)
    assert all(message.headers[":message-type"] == "event" for message in messages)
    assert all(message.headers[":event-type"] == "chunk" for message in messages)
    chunks = [chunk_of(message) for message in messages]
    prompt_tokens = count_llama3_prompt_tokens(PROMPT)
    assert chunks[0]["prompt_token_count"] == prompt_tokens
    assert chunks[0]["generation_token_count"] == 1
    assert [chunk["prompt_token_count"] for chunk in chunks[1:]] == [None] * 6
    assert [chunk["generation_token_count"] for chunk in chunks] == [1, 2, 3, 4, 5, 6, 6]
    assert [chunk["stop_reason"] for chunk in chunks] == [None] * 6 + ["length"]
    assert "".join(chunk["generation"] for chunk in chunks) == expected_generation(PROMPT, 6, SEED)
    final = chunks[-1]
    assert final["generation"] == ""
    metrics = final["amazon-bedrock-invocationMetrics"]
    assert metrics["inputTokenCount"] == prompt_tokens
    assert metrics["outputTokenCount"] == 6
    assert set(metrics) == {
        "inputTokenCount",
        "outputTokenCount",
        "invocationLatency",
        "firstByteLatency",
    }
    assert server.streams_completed == 1


def test_midstream_error_is_an_exception_message_after_some_chunks(
    server: LocalBedrockServer,
) -> None:
    server.script(["midstream_error"])

    response = post(server, "invoke-with-response-stream", {"prompt": "x", "max_gen_len": 50})

    messages = messages_of(response.content)
    assert [message.headers[":message-type"] for message in messages] == ["event"] * 3 + [
        "exception"
    ]
    assert messages[-1].headers[":exception-type"] == "modelStreamErrorException"
    assert json.loads(messages[-1].payload)["message"]
    assert server.streams_failed == 1


def test_boto3_raises_event_stream_error_for_a_midstream_exception(
    server: LocalBedrockServer,
) -> None:
    server.script(["midstream_error"])
    response = boto_client(server.url).invoke_model_with_response_stream(
        modelId=MODEL, body=json.dumps({"prompt": "x"})
    )
    received: list[bytes] = []

    def consume() -> None:
        for event in response["body"]:
            received.append(event["chunk"]["bytes"])

    with pytest.raises(EventStreamError) as raised:
        consume()

    assert raised.value.response["Error"]["Code"] == "modelStreamErrorException"
    assert len(received) == 3


def test_unmodelled_midstream_error_uses_an_error_message(server: LocalBedrockServer) -> None:
    server.script(["midstream:BrandNewException"])
    response = boto_client(server.url).invoke_model_with_response_stream(
        modelId=MODEL, body=json.dumps({"prompt": "x"})
    )

    with pytest.raises(EventStreamError) as raised:
        list(response["body"])

    assert raised.value.response["Error"]["Code"] == "BrandNewException"


# -- scripted outcomes, rates, counters -----------------------------------------------------


def test_scripted_outcomes_are_consumed_in_order_then_rates_apply(
    server: LocalBedrockServer,
) -> None:
    server.script(["throttle", "ModelNotReadyException", "internal_error", "ok"])

    statuses = [post(server, "invoke", {"prompt": "x"}).status_code for _ in range(5)]

    assert statuses == [429, 429, 500, 200, 200]
    assert server.request_count == 5


def test_every_error_code_gets_its_http_status(server: LocalBedrockServer) -> None:
    server.script(list(ERROR_STATUS))

    for code, status in ERROR_STATUS.items():
        response = post(server, "invoke", {"prompt": "x"})
        assert response.status_code == status, code
        assert response.headers["X-Amzn-ErrorType"].split(":")[0] == code


def test_stream_starts_record_the_prompt_tail_and_when_the_first_chunk_was_sent(
    server: LocalBedrockServer,
) -> None:
    long_prompt = "<|begin_of_text|>" + " word" * 2000 + " marker-2"
    before = time.time()
    post(server, "invoke-with-response-stream", {"prompt": "marker-1", "max_gen_len": 3})
    post(server, "invoke-with-response-stream", {"prompt": long_prompt, "max_gen_len": 3})
    post(server, "invoke", {"prompt": "not a stream"})
    after = time.time()

    starts = server.stream_starts

    assert [start.prompt_tail for start in starts] == [
        "marker-1",
        long_prompt[-STREAM_START_PROMPT_CHARS:],
    ]
    for start in starts:
        assert before <= start.received_at <= start.first_chunk_at <= after
    server.reset_counters()
    assert server.stream_starts == []


def test_unknown_scripted_outcome_is_refused(server: LocalBedrockServer) -> None:
    with pytest.raises(ValueError, match="unknown outcome"):
        server.script(["explode"])


def test_throttle_rate_is_reproducible_for_a_seed() -> None:
    def statuses(seed: int) -> list[int]:
        with LocalBedrockServer(seed=seed, throttle_rate=0.5) as local:
            return [post(local, "invoke", {"prompt": "x"}).status_code for _ in range(12)]

    first = statuses(3)

    assert first == statuses(3)
    assert set(first) == {200, 429}


def test_midstream_failure_rate_fails_streams_but_not_invokes() -> None:
    with LocalBedrockServer(seed=1, midstream_failure_rate=1.0) as local:
        assert post(local, "invoke", {"prompt": "x"}).status_code == 200
        streamed = post(local, "invoke-with-response-stream", {"prompt": "x"})
        assert messages_of(streamed.content)[-1].headers[":message-type"] == "exception"


def test_configure_changes_a_running_server(server: LocalBedrockServer) -> None:
    server.configure(throttle_rate=1.0)
    try:
        assert post(server, "invoke", {"prompt": "x"}).status_code == 429
    finally:
        server.configure(throttle_rate=0.0)


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="throttle_rate"):
        ServerConfig(throttle_rate=1.5)
    with pytest.raises(ValueError, match="answer_tokens"):
        ServerConfig(answer_tokens=0)


def test_configuration_from_environment_variables() -> None:
    config = ServerConfig.from_environment(
        {
            "LOCAL_BEDROCK_SEED": "4",
            "LOCAL_BEDROCK_SECONDS_PER_TOKEN": "0.25",
            "LOCAL_BEDROCK_THROTTLE_RATE": "0.1",
            "LOCAL_BEDROCK_ANSWER_TOKENS": "12",
        }
    )

    assert config == ServerConfig(
        seed=4, seconds_per_token=0.25, throttle_rate=0.1, answer_tokens=12
    )


def test_many_concurrent_streams_are_served_at_once() -> None:
    count = 24
    results: dict[int, str] = {}
    with LocalBedrockServer(seed=2, seconds_per_token=0.01, answer_tokens=20) as local:
        client = boto3.client(
            "bedrock-runtime",
            region_name="us-west-2",
            endpoint_url=local.url,
            aws_access_key_id="local",
            aws_secret_access_key="local",
            config=Config(max_pool_connections=count, retries={"total_max_attempts": 1}),
        )

        def consume(index: int) -> None:
            response = client.invoke_model_with_response_stream(
                modelId=MODEL, body=json.dumps({"prompt": f"p{index}"})
            )
            results[index] = "".join(
                json.loads(event["chunk"]["bytes"])["generation"] for event in response["body"]
            )

        started = time.monotonic()
        threads = [threading.Thread(target=consume, args=(index,)) for index in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        elapsed = time.monotonic() - started

    assert results == {
        index: expected_generation(f"p{index}", 512, 2, answer_tokens=20) for index in range(count)
    }
    # Sequential serving would take count * 20 * 10 ms = 4.8 s.
    assert elapsed < 2.0


def test_stop_wakes_a_hanging_request_quickly() -> None:
    local = LocalBedrockServer(seed=1, hang_seconds=60).start()
    local.script(["hang"])
    failures: list[BaseException] = []

    def call() -> None:
        try:
            post(local, "invoke", {"prompt": "x"}, timeout=10)
        except requests.RequestException as exception:
            failures.append(exception)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 2
    while local.request_count == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    local.stop()
    caller.join(timeout=5)

    assert time.monotonic() - started < 2
    assert not caller.is_alive()
    assert len(failures) == 1


def test_boto3_invoke_model_reads_the_response(server: LocalBedrockServer) -> None:
    response = boto_client(server.url).invoke_model(
        modelId=f"us.{MODEL}", body=json.dumps({"prompt": "hi", "max_gen_len": 4})
    )

    assert json.loads(response["body"].read())["generation"] == expected_generation("hi", 4, SEED)
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-output-token-count"] == "4"


def test_boto3_sees_error_code_from_the_error_type_header(server: LocalBedrockServer) -> None:
    server.script(["ServiceQuotaExceededException"])

    with pytest.raises(ClientError) as raised:
        boto_client(server.url).invoke_model(modelId=MODEL, body=json.dumps({"prompt": "x"}))

    assert raised.value.response["Error"]["Code"] == "ServiceQuotaExceededException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


# -- command line ----------------------------------------------------------------------------


def test_command_line_prints_its_address_serves_and_exits_cleanly_on_sigterm() -> None:
    environment = {
        key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"
    }
    environment["LOCAL_BEDROCK_ANSWER_TOKENS"] = "7"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devtools.local_bedrock",
            *("--port", "0", "--seed", "5", "--seconds-per-token", "0"),
        ],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"Local Bedrock server on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match, line
        url = match[1]

        response = post_url(f"{url}/model/{MODEL_PATH}/invoke", {"prompt": "cli"})

        assert response.json()["generation"] == expected_generation("cli", 512, 5, answer_tokens=7)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        if process.stderr is not None:
            process.stderr.close()
