"""runtime.bedrock against the Bedrock emulator over real HTTP: streaming, retry policy and error mapping."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from aigw.emulators.bedrock import BedrockEmulator, count_input_tokens, default_answer, split_tokens
from runtime.bedrock import GuardrailSettings, ModelClient, StreamStop, StreamUsage, TextDelta
from runtime.errors import (
    GatewayError,
    InvalidModelRequestError,
    ModelError,
    ModelInvocationError,
    ModelThrottledError,
)

MODEL = "us.anthropic.claude-haiku-5-5"
QUESTION = "How should I cache model responses?"


def _messages(text: str = QUESTION) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"text": text}]}]


def _boto_client(endpoint_url: str) -> Any:
    config = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=1, read_timeout=5)
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=config,
    )


class _Sleeps(list[float]):
    """An injectable ``sleep`` that records instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def emu() -> Iterator[BedrockEmulator]:
    with BedrockEmulator() as emulator:
        yield emulator


@pytest.fixture
def sleeps() -> _Sleeps:
    return _Sleeps()


@pytest.fixture
def model(emu: BedrockEmulator, sleeps: _Sleeps) -> ModelClient:
    return ModelClient(_boto_client(emu.endpoint_url), sleep=sleeps)


def _split(events: list[Any]) -> tuple[str, list[str], list[StreamUsage]]:
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    stops = [e.stop_reason for e in events if isinstance(e, StreamStop)]
    usages = [e for e in events if isinstance(e, StreamUsage)]
    return text, stops, usages


# --------------------------------------------------------------------------------------------- happy path


def test_full_stream_text_stop_and_usage(emu: BedrockEmulator, model: ModelClient) -> None:
    events = list(model.stream(MODEL, _messages(), 1000))
    body = emu.requests[-1]["body"]
    answer = default_answer(body)
    text, stops, usages = _split(events)

    assert text == answer
    assert sum(isinstance(e, TextDelta) for e in events) == len(split_tokens(answer)) > 5
    assert stops == ["end_turn"]
    assert len(usages) == 1
    assert usages[0].input_tokens == count_input_tokens(body)
    assert usages[0].output_tokens == len(split_tokens(answer))
    assert isinstance(usages[0].latency_ms, int)
    # Order: all text, then the stop, then usage.
    assert isinstance(events[-2], StreamStop) and isinstance(events[-1], StreamUsage)
    assert model.attempts == 1
    assert emu.requests[-1]["model_id"] == MODEL
    assert body["messages"] == _messages()


def test_max_tokens_reaches_bedrock_and_caps_output(emu: BedrockEmulator, model: ModelClient) -> None:
    granted = 3
    events = list(model.stream(MODEL, _messages(), granted))
    body = emu.requests[-1]["body"]
    assert body["inferenceConfig"] == {"maxTokens": granted}
    text, stops, usages = _split(events)
    assert [e for e in events if isinstance(e, TextDelta)].__len__() == granted
    assert text == "".join(split_tokens(default_answer(body))[:granted])
    assert stops == ["max_tokens"]
    assert usages[0].output_tokens == granted


def test_system_temperature_and_guardrail_are_sent(emu: BedrockEmulator, model: ModelClient) -> None:
    guardrail = GuardrailSettings(identifier="gr123abc", version="2", trace=True)
    list(model.stream(MODEL, _messages(), 50, system="Be terse.", guardrail=guardrail, temperature=0.2))
    body = emu.requests[-1]["body"]
    assert body["guardrailConfig"] == {
        "guardrailIdentifier": "gr123abc",
        "guardrailVersion": "2",
        "trace": "enabled",
        "streamProcessingMode": "sync",
    }
    assert body["system"] == [{"text": "Be terse."}]
    assert body["inferenceConfig"] == {"maxTokens": 50, "temperature": 0.2}

    list(model.stream(MODEL, _messages(), 50, guardrail=GuardrailSettings("gr123abc", "DRAFT")))
    body = emu.requests[-1]["body"]
    assert body["guardrailConfig"]["trace"] == "disabled"
    assert body["guardrailConfig"]["guardrailVersion"] == "DRAFT"
    assert "system" not in body and "temperature" not in body["inferenceConfig"]


def test_no_metadata_means_no_usage(emu: BedrockEmulator, model: ModelClient) -> None:
    emu.inject_fault("no_metadata")
    text, stops, usages = _split(list(model.stream(MODEL, _messages(), 1000)))
    assert text == default_answer(emu.requests[-1]["body"])
    assert stops == ["end_turn"]
    assert usages == []


def test_guardrail_intervention_is_just_a_stop_reason() -> None:
    class FakeClient:
        def converse_stream(self, **request: Any) -> dict[str, Any]:
            events = [
                {"messageStart": {"role": "assistant"}},
                {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"text": "Sorry."}}},
                {"messageStop": {"stopReason": "guardrail_intervened"}},
                {"metadata": {"usage": {"inputTokens": 4, "outputTokens": 2}, "metrics": {}}},
            ]
            return {"stream": _ClosableList(events)}

    events = list(ModelClient(FakeClient()).stream(MODEL, _messages(), 10))
    assert events == [TextDelta("Sorry."), StreamStop("guardrail_intervened"), StreamUsage(4, 2, None)]


class _ClosableList(list[Any]):
    closed = False

    def close(self) -> None:
        self.closed = True


# --------------------------------------------------------------------------------------------- throttling


def test_throttles_then_success_retries_with_jittered_backoff(
    emu: BedrockEmulator, model: ModelClient, sleeps: _Sleeps
) -> None:
    emu.inject_fault("throttle")
    emu.inject_fault("throttle")
    text, stops, _ = _split(list(model.stream(MODEL, _messages(), 1000)))
    assert text == default_answer(emu.requests[-1]["body"])
    assert stops == ["end_turn"]
    assert model.attempts == 3
    assert len(emu.requests) == 3
    assert len(sleeps) == 2
    for retry, delay in enumerate(sleeps):
        assert 0.0 <= delay <= min(model.backoff_cap_s, model.backoff_base_s * 2**retry)


def test_throttle_beyond_budget_raises_model_throttled(
    emu: BedrockEmulator, model: ModelClient, sleeps: _Sleeps
) -> None:
    for _ in range(model.max_throttle_retries + 1):
        emu.inject_fault("throttle", message="Too many requests: secret-upstream-detail")
    seen: list[Any] = []
    with pytest.raises(ModelThrottledError) as info:
        seen.extend(model.stream(MODEL, _messages(), 1000))
    assert seen == []
    assert model.attempts == model.max_throttle_retries + 1 == len(emu.requests)
    assert len(sleeps) == model.max_throttle_retries
    err = info.value
    assert err.code == "model_throttled"
    assert isinstance(err, ModelError) and isinstance(err, GatewayError)
    assert "secret-upstream-detail" not in err.public_message and "secret-upstream-detail" not in str(err)
    assert err.upstream_code == "ThrottlingException"
    assert err.__cause__ is not None
    # The next call is fresh: attempts reset, the emulator answers normally.
    assert _split(list(model.stream(MODEL, _messages(), 1000)))[1] == ["end_turn"]
    assert model.attempts == 1


def test_throttle_event_before_first_delta_is_retried(emu: BedrockEmulator, model: ModelClient) -> None:
    emu.inject_fault("mid_stream", after_deltas=0, exception_type="throttlingException")
    text, stops, _ = _split(list(model.stream(MODEL, _messages(), 1000)))
    assert text == default_answer(emu.requests[-1]["body"])
    assert stops == ["end_turn"]
    assert model.attempts == 2


def test_throttle_event_after_text_is_not_retried(emu: BedrockEmulator, model: ModelClient) -> None:
    emu.inject_fault("mid_stream", after_deltas=2, exception_type="throttlingException")
    seen: list[Any] = []
    with pytest.raises(ModelInvocationError):
        seen.extend(model.stream(MODEL, _messages(), 1000))
    assert len(seen) == 2 and all(isinstance(e, TextDelta) for e in seen)
    assert model.attempts == 1 == len(emu.requests)


def test_lazy_client_has_botocore_retries_off(emu: BedrockEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """No client given: one is built on first use from AWS_ENDPOINT_URL_BEDROCK_RUNTIME, with one attempt."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", emu.endpoint_url)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    model = ModelClient(max_throttle_retries=0, sleep=_Sleeps())
    assert model._client is None  # nothing created until used
    emu.inject_fault("throttle")
    with pytest.raises(ModelThrottledError):
        list(model.stream(MODEL, _messages(), 100))
    assert len(emu.requests) == 1  # botocore did not retry behind our back
    assert _split(list(model.stream(MODEL, _messages(), 100)))[1] == ["end_turn"]


# --------------------------------------------------------------------------------------------- other failures


def test_validation_error_is_generic_model_error(emu: BedrockEmulator, model: ModelClient) -> None:
    upstream = "Malformed input: the prompt mentions internal-system-xyz"
    emu.inject_fault("validation", message=upstream)
    with pytest.raises(ModelInvocationError) as info:
        list(model.stream(MODEL, _messages(), 1000))
    err = info.value
    assert err.code == "model_error"
    assert isinstance(err, ModelError)
    assert upstream not in err.public_message and "internal-system-xyz" not in err.public_message
    assert "internal-system-xyz" not in str(err)
    assert err.upstream_code == "ValidationException"
    assert upstream in str(err.__cause__)  # kept for logs
    assert model.attempts == 1


@pytest.mark.parametrize(
    "exception_type", ["modelStreamErrorException", "internalServerException", "validationException"]
)
def test_mid_stream_fault_yields_text_then_fails_without_retry(
    emu: BedrockEmulator, model: ModelClient, sleeps: _Sleeps, exception_type: str
) -> None:
    n = 3
    emu.inject_fault("mid_stream", after_deltas=n, exception_type=exception_type, message="stream-broke-detail")
    seen: list[Any] = []
    with pytest.raises(ModelInvocationError) as info:
        seen.extend(model.stream(MODEL, _messages(), 1000))
    assert len(seen) == n and all(isinstance(e, TextDelta) for e in seen)
    assert "".join(e.text for e in seen) == "".join(split_tokens(default_answer(emu.requests[-1]["body"]))[:n])
    assert model.attempts == 1 == len(emu.requests)
    assert sleeps == []
    assert "stream-broke-detail" not in info.value.public_message


def test_connection_refused_is_model_invocation_error(sleeps: _Sleeps) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = ModelClient(_boto_client(f"http://127.0.0.1:{port}"), sleep=sleeps)
    with pytest.raises(ModelInvocationError) as info:
        list(model.stream(MODEL, _messages(), 100))
    assert info.value.upstream_code == "EndpointConnectionError"
    assert "127.0.0.1" not in info.value.public_message
    assert model.attempts == 1 and sleeps == []


def test_closing_early_closes_the_http_stream() -> None:
    stream = _ClosableList([{"contentBlockDelta": {"delta": {"text": f"w{i} "}}} for i in range(5)])

    class FakeClient:
        def converse_stream(self, **request: Any) -> dict[str, Any]:
            return {"stream": stream}

    iterator = ModelClient(FakeClient()).stream(MODEL, _messages(), 10)
    assert next(iterator) == TextDelta("w0 ")
    iterator.close()  # type: ignore[attr-defined]
    assert stream.closed


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("max_tokens", [0, -1, 1.5, "10", None, True])
def test_invalid_max_tokens_raises_before_any_call(emu: BedrockEmulator, model: ModelClient, max_tokens: Any) -> None:
    with pytest.raises(ValueError) as info:
        model.stream(MODEL, _messages(), max_tokens)  # raises at call time, not on first next()
    assert isinstance(info.value, InvalidModelRequestError)
    assert emu.requests == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model_id": ""},
        {"messages": []},
        {"messages": [{"role": "system", "content": []}]},
        {"messages": "hi"},
        {"temperature": 1.5},
        {"temperature": "0.3"},
        {"system": ["not", "a", "string"]},
        {"guardrail": {"guardrailIdentifier": "x"}},
    ],
)
def test_other_invalid_arguments_raise_before_any_call(
    emu: BedrockEmulator, model: ModelClient, kwargs: dict[str, Any]
) -> None:
    args: dict[str, Any] = {"model_id": MODEL, "messages": _messages(), "max_tokens": 10} | kwargs
    with pytest.raises(InvalidModelRequestError):
        model.stream(**args)
    assert emu.requests == []


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(InvalidModelRequestError):
        GuardrailSettings(identifier="", version="1")
    with pytest.raises(InvalidModelRequestError):
        ModelClient(max_throttle_retries=-1)
    with pytest.raises(InvalidModelRequestError):
        ModelClient(backoff_base_s=float("nan"))
