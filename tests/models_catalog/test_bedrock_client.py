"""The Bedrock client: real boto3 over HTTP against the local Bedrock-compatible server.

No mocks, no Stubber: botocore's Stubber cannot produce an event stream and moto does not
stream, and what we most need to prove (one HTTP attempt, incremental streams, error
codes as botocore parses them) only shows on the wire.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    EventStreamError,
    ReadTimeoutError,
)

from devtools.local_bedrock import (
    ERROR_STATUS,
    STREAM_EXCEPTION_MEMBERS,
    LocalBedrockServer,
    expected_generation,
)
from models_catalog.bedrock import client as bedrock
from models_catalog.bedrock.client import (
    Delta,
    Final,
    GenerationResult,
    clear_bedrock_client_cache,
    get_bedrock_client,
)
from models_catalog.bedrock.errors import (
    FINAL_CODES,
    RETRYABLE_CODES,
    BedrockError,
    FinalBedrockError,
    RetryableBedrockError,
    to_bedrock_error,
)
from models_catalog.tokenizer import count_llama3_prompt_tokens, count_llama3_tokens

SEED = 11
MODEL = "meta.llama3-1-70b-instruct-v1:0"
PROMPT = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
    "Explain budgets.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
)
PARAMETERS: dict[str, Any] = {"temperature": 0.5, "top_p": 0.9, "max_gen_len": 512}
AWS_CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


@pytest.fixture(scope="module")
def server() -> Iterator[LocalBedrockServer]:
    with LocalBedrockServer(seed=SEED, hang_seconds=5) as running:
        yield running


@pytest.fixture(autouse=True)
def _point_settings_at_the_local_server(settings: Any, server: LocalBedrockServer) -> None:
    settings.AWS_REGION = "us-west-2"
    settings.BEDROCK_ENDPOINT_URL = server.url
    settings.BEDROCK_CONNECT_TIMEOUT_SECONDS = 1.0
    settings.BEDROCK_READ_TIMEOUT_SECONDS = 5.0
    server.clear_script()
    server.reset_counters()


@pytest.fixture
def without_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in AWS_CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # Clients cached under another environment would hide what this one resolves.
    clear_bedrock_client_cache()
    yield
    clear_bedrock_client_cache()


@pytest.fixture
def separate_server() -> Iterator[Any]:
    """Start extra servers with their own configuration; stop them after the test."""
    started: list[LocalBedrockServer] = []

    def start(**config: Any) -> LocalBedrockServer:
        local = LocalBedrockServer(**config).start()
        started.append(local)
        return local

    yield start
    for local in started:
        local.stop()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def collect(events: Iterator[bedrock.StreamEvent]) -> tuple[list[str], list[Final]]:
    deltas: list[str] = []
    finals: list[Final] = []
    for event in events:
        if isinstance(event, Delta):
            deltas.append(event.text)
        else:
            finals.append(event)
    return deltas, finals


# -- the factory -----------------------------------------------------------------------------


def test_client_is_cached_per_settings_values(settings: Any) -> None:
    first = get_bedrock_client()

    assert get_bedrock_client() is first
    settings.BEDROCK_READ_TIMEOUT_SECONDS = 6.0
    assert get_bedrock_client() is not first
    settings.BEDROCK_READ_TIMEOUT_SECONDS = 5.0
    assert get_bedrock_client() is first
    clear_bedrock_client_cache()
    assert get_bedrock_client() is not first


def test_client_is_configured_for_exactly_one_attempt_and_our_timeouts() -> None:
    config = get_bedrock_client().meta.config

    assert config.retries == {"total_max_attempts": 1, "mode": "standard"}
    assert config.connect_timeout == 1.0
    assert config.read_timeout == 5.0


def test_local_endpoint_without_credentials_signs_with_dummy_ones(
    without_aws_credentials: None, server: LocalBedrockServer
) -> None:
    client = get_bedrock_client()

    assert client._get_credentials().access_key == "local"
    assert bedrock.invoke(model_id=MODEL, prompt="x", **PARAMETERS).text


def test_real_bedrock_without_credentials_fails_instead_of_signing_as_local(
    without_aws_credentials: None, settings: Any
) -> None:
    settings.BEDROCK_ENDPOINT_URL = None

    assert get_bedrock_client()._get_credentials() is None
    # botocore refuses before sending anything, so no request reaches AWS.
    with pytest.raises(FinalBedrockError) as raised:
        bedrock.invoke(model_id=MODEL, prompt="x", **PARAMETERS)
    assert raised.value.code == "NoCredentialsError"


def test_local_endpoint_uses_real_credentials_when_there_are_some(
    without_aws_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")

    assert get_bedrock_client()._get_credentials().access_key == "AKIDEXAMPLE"


# -- invoke ------------------------------------------------------------------------------------


def test_invoke_returns_the_generation_and_bedrock_counts(server: LocalBedrockServer) -> None:
    result = bedrock.invoke(model_id=MODEL, prompt=PROMPT, **PARAMETERS)

    text = expected_generation(PROMPT, 512, SEED)
    assert result == GenerationResult(
        text=text,
        prompt_token_count=count_llama3_prompt_tokens(PROMPT),
        generation_token_count=count_llama3_tokens(text),
        stop_reason="stop",
    )


def test_invoke_cut_by_max_gen_len_stops_for_length(server: LocalBedrockServer) -> None:
    result = bedrock.invoke(
        model_id=MODEL, prompt=PROMPT, temperature=0.0, top_p=1.0, max_gen_len=4
    )

    assert result.stop_reason == "length"
    assert result.generation_token_count == 4
    assert result.text == expected_generation(PROMPT, 4, SEED)


def test_invoke_accepts_decimal_parameters_from_the_catalogue(server: LocalBedrockServer) -> None:
    result = bedrock.invoke(
        model_id=MODEL,
        prompt="x",
        temperature=Decimal("0.50"),
        top_p=Decimal("0.90"),
        max_gen_len=7,
    )

    assert result.text == expected_generation("x", 7, SEED)


def test_model_id_colon_is_percent_encoded_on_the_wire(server: LocalBedrockServer) -> None:
    bedrock.invoke(model_id="meta.llama3-8b-instruct-v1:0", prompt="x", **PARAMETERS)

    assert server.requests_by_path == {"/model/meta.llama3-8b-instruct-v1%3A0/invoke": 1}


@pytest.mark.parametrize("prefix", ["us.", "eu.", "apac."])
def test_inference_profile_ids_are_sent_as_model_id(
    server: LocalBedrockServer, prefix: str
) -> None:
    result = bedrock.invoke(model_id=f"{prefix}{MODEL}", prompt=PROMPT, **PARAMETERS)

    assert result.text == expected_generation(PROMPT, 512, SEED)
    assert server.requests_by_path == {
        f"/model/{prefix}meta.llama3-1-70b-instruct-v1%3A0/invoke": 1
    }


def test_unknown_model_is_final(server: LocalBedrockServer) -> None:
    with pytest.raises(FinalBedrockError) as raised:
        bedrock.invoke(model_id="meta.llama7-1t-v1:0", prompt="x", **PARAMETERS)

    assert raised.value.code == "ResourceNotFoundException"
    assert raised.value.http_status == 404


def test_context_window_overflow_is_a_final_validation_error(server: LocalBedrockServer) -> None:
    prompt = "<|begin_of_text|>" + " word" * 8000

    with pytest.raises(FinalBedrockError) as raised:
        bedrock.invoke(model_id="meta.llama3-8b-instruct-v1:0", prompt=prompt, **PARAMETERS)

    assert raised.value.code == "ValidationException"
    assert "8192" in raised.value.message
    assert not raised.value.retryable


@pytest.mark.parametrize("code", sorted(ERROR_STATUS))
def test_every_bedrock_error_code_maps_to_its_retry_verdict(
    server: LocalBedrockServer, code: str
) -> None:
    server.script([code])

    with pytest.raises(BedrockError) as raised:
        bedrock.invoke(model_id=MODEL, prompt="x", **PARAMETERS)

    error = raised.value
    assert error.code == code
    assert error.http_status == ERROR_STATUS[code]
    assert error.retryable is (code in RETRYABLE_CODES)
    assert isinstance(
        error, RetryableBedrockError if code in RETRYABLE_CODES else FinalBedrockError
    )


def test_the_table_is_fully_classified() -> None:
    assert set(ERROR_STATUS) == RETRYABLE_CODES | FINAL_CODES
    assert not RETRYABLE_CODES & FINAL_CODES


# -- botocore does not retry -----------------------------------------------------------------


@pytest.mark.parametrize(
    "outcome",
    ["throttle", "ModelNotReadyException", "internal_error", "ServiceUnavailableException"],
)
def test_botocore_sends_exactly_one_request_for_an_error_it_would_retry(
    separate_server: Any, settings: Any, outcome: str
) -> None:
    local = separate_server(seed=1)
    local.script([outcome, outcome])
    settings.BEDROCK_ENDPOINT_URL = local.url

    with pytest.raises(RetryableBedrockError):
        bedrock.invoke(model_id=MODEL, prompt="x", **PARAMETERS)
    with pytest.raises(RetryableBedrockError):
        collect(bedrock.stream(model_id=MODEL, prompt="x", **PARAMETERS))

    assert local.request_count == 2  # one invoke, one stream: no retry of either


def test_aws_max_attempts_in_the_environment_does_not_bring_retries_back(
    separate_server: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("AWS_RETRY_MODE", "legacy")
    clear_bedrock_client_cache()
    local = separate_server(seed=1, throttle_rate=1.0)
    settings.BEDROCK_ENDPOINT_URL = local.url

    with pytest.raises(RetryableBedrockError) as raised:
        bedrock.invoke(model_id=MODEL, prompt="x", **PARAMETERS)

    assert raised.value.code == "ThrottlingException"
    assert local.request_count == 1
    clear_bedrock_client_cache()


def test_why_not_max_attempts_one_it_counts_retries_so_sends_two_requests(
    separate_server: Any,
) -> None:
    local = separate_server(seed=1, throttle_rate=1.0)
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-west-2",
        endpoint_url=local.url,
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )

    with pytest.raises(ClientError):
        client.invoke_model(modelId=MODEL, body=b'{"prompt": "x"}')

    assert local.request_count == 2


# -- transport failures ------------------------------------------------------------------------


def test_read_timeout_is_retryable_and_not_retried(
    server: LocalBedrockServer, settings: Any
) -> None:
    settings.BEDROCK_READ_TIMEOUT_SECONDS = 0.2
    server.script(["hang", "hang"])

    with pytest.raises(RetryableBedrockError) as invoked:
        bedrock.invoke(model_id=MODEL, prompt="x", **PARAMETERS)
    with pytest.raises(RetryableBedrockError) as streamed:
        collect(bedrock.stream(model_id=MODEL, prompt="x", **PARAMETERS))

    assert invoked.value.code == streamed.value.code == "ReadTimeout"
    assert server.request_count == 2


def test_connection_refused_is_retryable(settings: Any) -> None:
    settings.BEDROCK_ENDPOINT_URL = f"http://127.0.0.1:{closed_port()}"

    with pytest.raises(RetryableBedrockError) as invoked:
        bedrock.invoke(model_id=MODEL, prompt="x", **PARAMETERS)
    with pytest.raises(RetryableBedrockError) as streamed:
        collect(bedrock.stream(model_id=MODEL, prompt="x", **PARAMETERS))

    assert invoked.value.code == streamed.value.code == "ConnectionError"


# -- stream ------------------------------------------------------------------------------------


def test_stream_deltas_add_up_to_the_invoke_text(server: LocalBedrockServer) -> None:
    invoked = bedrock.invoke(model_id=MODEL, prompt=PROMPT, **PARAMETERS)

    deltas, finals = collect(bedrock.stream(model_id=MODEL, prompt=PROMPT, **PARAMETERS))

    assert "".join(deltas) == invoked.text
    assert all(deltas)
    assert finals == [
        Final(
            prompt_token_count=invoked.prompt_token_count,
            generation_token_count=invoked.generation_token_count,
            stop_reason="stop",
        )
    ]
    assert server.streams_completed == 1


def test_stream_cut_by_max_gen_len_ends_for_length(server: LocalBedrockServer) -> None:
    deltas, finals = collect(
        bedrock.stream(model_id=MODEL, prompt=PROMPT, temperature=0, top_p=1, max_gen_len=3)
    )

    assert "".join(deltas) == expected_generation(PROMPT, 3, SEED)
    assert finals[0].stop_reason == "length"
    assert finals[0].generation_token_count == 3


def test_first_delta_arrives_while_the_server_is_still_generating(
    separate_server: Any, settings: Any
) -> None:
    local = separate_server(seed=2, seconds_per_token=0.01, answer_tokens=25)
    settings.BEDROCK_ENDPOINT_URL = local.url
    get_bedrock_client()  # build it outside the timed part
    # A first call warms the server (its tokenizer loads on first use) and the connection.
    list(bedrock.stream(model_id=MODEL, prompt="warm", **PARAMETERS))
    started = time.monotonic()
    first_delta_at: float | None = None
    completed_when_first_delta_arrived: int | None = None

    for event in bedrock.stream(model_id=MODEL, prompt="x", **PARAMETERS):
        if isinstance(event, Delta) and first_delta_at is None:
            first_delta_at = time.monotonic() - started
            completed_when_first_delta_arrived = local.streams_completed
    total = time.monotonic() - started

    assert completed_when_first_delta_arrived == 1  # the warm-up's only
    assert local.streams_completed == 2
    assert first_delta_at is not None
    assert total >= 24 * 0.01
    assert first_delta_at < total / 3


def test_midstream_error_is_raised_after_the_deltas_already_sent(
    server: LocalBedrockServer,
) -> None:
    server.script(["midstream_error"])
    deltas: list[str] = []

    def consume() -> None:
        for event in bedrock.stream(model_id=MODEL, prompt=PROMPT, **PARAMETERS):
            assert isinstance(event, Delta)
            deltas.append(event.text)

    with pytest.raises(RetryableBedrockError) as raised:
        consume()

    assert raised.value.code == "ModelStreamErrorException"
    assert "".join(deltas) == expected_generation(PROMPT, 3, SEED)


@pytest.mark.parametrize("member", sorted(STREAM_EXCEPTION_MEMBERS))
def test_every_in_stream_exception_is_mapped_with_its_code_capitalised(
    server: LocalBedrockServer, member: str
) -> None:
    server.script([f"midstream:{member}"])
    code = member[0].upper() + member[1:]

    with pytest.raises(BedrockError) as raised:
        collect(bedrock.stream(model_id=MODEL, prompt="x", **PARAMETERS))

    assert raised.value.code == code
    assert raised.value.retryable is (code in RETRYABLE_CODES)


def test_unmodelled_in_stream_error_is_final(server: LocalBedrockServer) -> None:
    server.script(["midstream:SomethingNewException"])

    with pytest.raises(FinalBedrockError) as raised:
        collect(bedrock.stream(model_id=MODEL, prompt="x", **PARAMETERS))

    assert raised.value.code == "SomethingNewException"


@pytest.mark.parametrize("code", sorted(ERROR_STATUS))
def test_errors_before_the_stream_starts_are_raised_while_iterating(
    server: LocalBedrockServer, code: str
) -> None:
    server.script([code])
    events = bedrock.stream(model_id=MODEL, prompt="x", **PARAMETERS)

    assert server.request_count == 0  # nothing is sent before the first next()
    with pytest.raises(BedrockError) as raised:
        next(events)
    assert raised.value.code == code
    assert raised.value.retryable is (code in RETRYABLE_CODES)


def test_closing_the_stream_early_stops_the_server_sending(
    separate_server: Any, settings: Any
) -> None:
    local = separate_server(seed=3, seconds_per_token=0.005, answer_tokens=400)
    settings.BEDROCK_ENDPOINT_URL = local.url
    events = bedrock.stream(model_id=MODEL, prompt="x", **PARAMETERS)

    assert isinstance(next(events), Delta)
    assert isinstance(next(events), Delta)
    events.close()  # what a cancelled consumer does

    # 400 tokens would take 2 s; the server notices the closed socket within a few tokens.
    deadline = time.monotonic() + 1.5
    while local.streams_aborted == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert local.streams_aborted == 1
    assert local.streams_completed == 0


def test_concurrent_streams_share_one_client(server: LocalBedrockServer) -> None:
    results: dict[int, str] = {}

    def consume(index: int) -> None:
        deltas, _ = collect(bedrock.stream(model_id=MODEL, prompt=f"q{index}", **PARAMETERS))
        results[index] = "".join(deltas)

    client = get_bedrock_client()  # created once, before the threads race for it
    threads = [threading.Thread(target=consume, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert get_bedrock_client() is client
    assert results == {index: expected_generation(f"q{index}", 512, SEED) for index in range(8)}


# -- the stream's bookkeeping and the error mapping, without the network ------------------------


def test_final_counts_come_from_invocation_metrics_when_present() -> None:
    totals = bedrock._StreamTotals()
    totals.add({"generation": "a", "prompt_token_count": 10, "generation_token_count": 1})
    totals.add(
        {
            "generation": "",
            "prompt_token_count": None,
            "generation_token_count": 1,
            "stop_reason": "stop",
            "amazon-bedrock-invocationMetrics": {"inputTokenCount": 12, "outputTokenCount": 2},
        }
    )

    assert totals.final() == Final(
        prompt_token_count=12, generation_token_count=2, stop_reason="stop"
    )


def test_final_counts_fall_back_to_the_chunk_counts() -> None:
    totals = bedrock._StreamTotals()
    totals.add({"generation": "a", "prompt_token_count": 10, "generation_token_count": 1})
    totals.add({"generation": "b", "prompt_token_count": None, "generation_token_count": 2})
    totals.add({"generation": "", "generation_token_count": 2, "stop_reason": "length"})

    assert totals.final() == Final(
        prompt_token_count=10, generation_token_count=2, stop_reason="length"
    )


def test_a_stream_that_ends_without_a_stop_reason_is_retryable() -> None:
    totals = bedrock._StreamTotals()
    totals.add({"generation": "a", "prompt_token_count": 10, "generation_token_count": 1})

    with pytest.raises(RetryableBedrockError) as raised:
        totals.final()
    assert raised.value.code == "IncompleteStream"


@pytest.mark.parametrize(
    ("exception", "code", "retryable"),
    [
        (
            EventStreamError({"Error": {"Code": "throttlingException"}}, "Op"),
            "ThrottlingException",
            True,
        ),
        (
            ClientError({"Error": {"Code": "ModelErrorException"}}, "Op"),
            "ModelErrorException",
            False,
        ),
        (ClientError({"Error": {"Code": "BrandNew"}}, "Op"), "BrandNew", False),
        (EndpointConnectionError(endpoint_url="http://x"), "ConnectionError", True),
        (ConnectTimeoutError(endpoint_url="http://x"), "ConnectTimeout", True),
        (ReadTimeoutError(endpoint_url="http://x"), "ReadTimeout", True),
        (urllib3.exceptions.ProtocolError("Connection broken"), "ConnectionError", True),
        (urllib3.exceptions.ReadTimeoutError(None, "/", "timed out"), "ReadTimeout", True),
    ],
)
def test_exceptions_map_to_codes_and_verdicts(
    exception: BaseException, code: str, retryable: bool
) -> None:
    error = to_bedrock_error(exception)

    assert (error.code, error.retryable) == (code, retryable)
