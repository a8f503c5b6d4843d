"""The Bedrock emulator is a real protocol peer: the unmodified boto3 client talks to it over HTTP."""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError
from hypothesis import given
from hypothesis import strategies as st

from aigw.emulators.bedrock import BedrockEmulator, count_input_tokens, encode_event_message

PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-haiku-5-5"
MODEL = "us.anthropic.claude-haiku-5-5"


def _messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"text": text}]}]


def _client(endpoint_url: str | None, **retries: Any) -> Any:
    """A bedrock-runtime client; no retries by default so one injected fault surfaces as one error."""
    config = Config(retries=retries or {"total_max_attempts": 1}, connect_timeout=2, read_timeout=5)
    kwargs: dict[str, Any] = {"region_name": "us-east-1", "config": config}
    if endpoint_url is not None:
        kwargs |= {"endpoint_url": endpoint_url, "aws_access_key_id": "x", "aws_secret_access_key": "x"}
    return boto3.client("bedrock-runtime", **kwargs)


@pytest.fixture
def emu() -> Iterator[BedrockEmulator]:
    with BedrockEmulator() as emulator:
        yield emulator


@pytest.fixture
def client(emu: BedrockEmulator) -> Any:
    return _client(emu.endpoint_url)


def _collect(stream: Any) -> dict[str, Any]:
    """Fold a ConverseStream event iterator into its parts, keeping the event order."""
    out: dict[str, Any] = {"types": [], "deltas": [], "stop": None, "metadata": None}
    for event in stream:
        (etype,) = event.keys()
        out["types"].append(etype)
        if etype == "contentBlockDelta":
            out["deltas"].append(event[etype]["delta"]["text"])
        elif etype == "messageStop":
            out["stop"] = event[etype]["stopReason"]
        elif etype == "metadata":
            out["metadata"] = event[etype]
    return out


# --------------------------------------------------------------------------------------------- happy path


def test_boto3_parses_a_full_stream(emu: BedrockEmulator, client: Any) -> None:
    system = [{"text": "You are terse."}]
    messages = _messages("How should I cache model responses?")
    resp = client.converse_stream(modelId=PROFILE_ARN, system=system, messages=messages)
    assert resp["ResponseMetadata"]["HTTPHeaders"]["content-type"] == "application/vnd.amazon.eventstream"
    got = _collect(resp["stream"])

    n = len(got["deltas"])
    assert n > 5
    assert got["types"] == ["messageStart", *["contentBlockDelta"] * n, "contentBlockStop", "messageStop", "metadata"]
    assert got["stop"] == "end_turn"
    text = "".join(got["deltas"])
    assert text and not text.startswith(" ")
    assert all(d.startswith(" ") for d in got["deltas"][1:])  # words carry their leading space

    expected_in = math.ceil((len("You are terse.") + len("How should I cache model responses?")) / 4)
    usage = got["metadata"]["usage"]
    assert usage == {"inputTokens": expected_in, "outputTokens": n, "totalTokens": expected_in + n}
    assert isinstance(got["metadata"]["metrics"]["latencyMs"], int)

    # The ARN arrives URL-encoded in the path; the emulator records it decoded, with the parsed body.
    (req,) = emu.requests
    assert req["model_id"] == PROFILE_ARN
    assert req["body"] == {"system": system, "messages": messages}

    # Deterministic: the same prompt yields the same text, and Converse (non-streaming) agrees.
    again = _collect(client.converse_stream(modelId=MODEL, system=system, messages=messages)["stream"])
    assert "".join(again["deltas"]) == text
    conv = client.converse(modelId=MODEL, system=system, messages=messages)
    assert conv["output"]["message"] == {"role": "assistant", "content": [{"text": text}]}
    assert conv["stopReason"] == "end_turn"
    assert conv["usage"] == usage
    assert conv["metrics"]["latencyMs"] >= 0


def test_answer_depends_on_the_last_user_message(client: Any) -> None:
    texts = {
        "".join(_collect(client.converse_stream(modelId=MODEL, messages=_messages(p))["stream"])["deltas"])
        for p in ("alpha", "beta", "gamma", "delta", "epsilon")
    }
    assert len(texts) > 1


def test_max_tokens_caps_output(emu: BedrockEmulator, client: Any) -> None:
    resp = client.converse_stream(modelId=MODEL, messages=_messages("hi"), inferenceConfig={"maxTokens": 5})
    got = _collect(resp["stream"])
    assert len(got["deltas"]) == 5
    assert got["stop"] == "max_tokens"
    assert got["metadata"]["usage"]["outputTokens"] == 5
    assert emu.requests[0]["body"]["inferenceConfig"]["maxTokens"] == 5


def test_default_cap_is_512_and_exact_fit_is_end_turn() -> None:
    with BedrockEmulator(answer=lambda body: " ".join(["word"] * 600)) as emu:
        client = _client(emu.endpoint_url)
        got = _collect(client.converse_stream(modelId=MODEL, messages=_messages("long"))["stream"])
        assert (len(got["deltas"]), got["stop"]) == (512, "max_tokens")
        assert got["metadata"]["usage"]["outputTokens"] == 512

        exact = client.converse_stream(modelId=MODEL, messages=_messages("x"), inferenceConfig={"maxTokens": 600})
        got = _collect(exact["stream"])
        assert (len(got["deltas"]), got["stop"]) == (600, "end_turn")


def test_answer_override_receives_the_parsed_body() -> None:
    seen: list[dict[str, Any]] = []

    def answer(body: dict[str, Any]) -> str:
        seen.append(body)
        return "Hello from the override."

    with BedrockEmulator(answer=answer) as emu:
        got = _collect(_client(emu.endpoint_url).converse_stream(modelId=MODEL, messages=_messages("q"))["stream"])
    assert got["deltas"] == ["Hello", " from", " the", " override."]
    assert seen == [{"messages": _messages("q")}]


def test_env_var_endpoint_route(emu: BedrockEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", emu.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    client = _client(None)
    got = _collect(client.converse_stream(modelId=MODEL, messages=_messages("via env"))["stream"])
    assert got["stop"] == "end_turn"
    assert [r["model_id"] for r in emu.requests] == [MODEL]


def test_concurrent_requests_are_all_recorded(emu: BedrockEmulator, client: Any) -> None:
    def call(i: int) -> str:
        got = _collect(client.converse_stream(modelId=f"m{i}", messages=_messages(f"p{i}"))["stream"])
        return got["stop"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(call, range(16))) == ["end_turn"] * 16
    assert sorted(r["model_id"] for r in emu.requests) == sorted(f"m{i}" for i in range(16))


# --------------------------------------------------------------------------------------------- faults


def test_throttle_fault_is_a_throttling_client_error(emu: BedrockEmulator, client: Any) -> None:
    emu.inject_fault("throttle")
    with pytest.raises(ClientError) as info:
        client.converse_stream(modelId=MODEL, messages=_messages("hi"))
    err = info.value.response
    assert err["Error"] == {"Code": "ThrottlingException", "Message": "Too many requests"}
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert isinstance(info.value, client.exceptions.ThrottlingException)
    # The fault was consumed: the next call succeeds.
    assert _collect(client.converse_stream(modelId=MODEL, messages=_messages("hi"))["stream"])["stop"] == "end_turn"


def test_validation_fault_on_both_operations(emu: BedrockEmulator, client: Any) -> None:
    emu.inject_fault("validation", message="bad input")
    emu.inject_fault("validation")
    with pytest.raises(client.exceptions.ValidationException) as info:
        client.converse_stream(modelId=MODEL, messages=_messages("hi"))
    assert info.value.response["Error"]["Message"] == "bad input"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(client.exceptions.ValidationException):
        client.converse(modelId=MODEL, messages=_messages("hi"))


def test_faults_are_consumed_fifo_and_recorded(emu: BedrockEmulator, client: Any) -> None:
    emu.inject_fault("validation")
    emu.inject_fault("throttle")
    codes = []
    for _ in range(3):
        try:
            _collect(client.converse_stream(modelId=MODEL, messages=_messages("hi"))["stream"])
            codes.append("ok")
        except ClientError as e:
            codes.append(e.response["Error"]["Code"])
    assert codes == ["ValidationException", "ThrottlingException", "ok"]
    assert len(emu.requests) == 3  # faulted requests are recorded too


def test_boto3_retries_an_injected_throttle(emu: BedrockEmulator) -> None:
    """With boto3's own retries on, one throttle is absorbed — and the emulator saw both attempts."""
    client = _client(emu.endpoint_url, mode="standard", total_max_attempts=2)
    emu.inject_fault("throttle")
    resp = client.converse_stream(modelId=MODEL, messages=_messages("hi"))
    assert resp["ResponseMetadata"]["RetryAttempts"] == 1
    assert _collect(resp["stream"])["stop"] == "end_turn"
    assert len(emu.requests) == 2


@pytest.mark.parametrize("exception_type", ["modelStreamErrorException", "internalServerException"])
def test_mid_stream_fault_raises_while_iterating(emu: BedrockEmulator, client: Any, exception_type: str) -> None:
    emu.inject_fault("mid_stream", after_deltas=3, exception_type=exception_type, message="boom")
    resp = client.converse_stream(modelId=MODEL, messages=_messages("hi"))
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200  # the failure comes inside the stream
    seen: list[str] = []
    with pytest.raises(EventStreamError) as info:
        for event in resp["stream"]:
            seen.extend(event)
    assert seen == ["messageStart", "contentBlockDelta", "contentBlockDelta", "contentBlockDelta"]
    assert info.value.response["Error"] == {"Code": exception_type, "Message": "boom"}


def test_mid_stream_fault_on_converse_is_the_modelled_http_error(emu: BedrockEmulator, client: Any) -> None:
    emu.inject_fault("mid_stream")
    with pytest.raises(ClientError) as info:
        client.converse(modelId=MODEL, messages=_messages("hi"))
    assert info.value.response["Error"]["Code"] == "ModelStreamErrorException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424


def test_no_metadata_fault_ends_after_message_stop(emu: BedrockEmulator, client: Any) -> None:
    emu.inject_fault("no_metadata")
    got = _collect(client.converse_stream(modelId=MODEL, messages=_messages("hi"))["stream"])
    assert got["types"][-2:] == ["contentBlockStop", "messageStop"]
    assert got["metadata"] is None
    assert got["stop"] == "end_turn"


def test_inject_fault_rejects_typos_and_reset_clears(emu: BedrockEmulator, client: Any) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        emu.inject_fault("throttel")
    with pytest.raises(TypeError):
        emu.inject_fault("mid_stream", after_delta=2)
    with pytest.raises(ValueError):
        emu.inject_fault("mid_stream", exception_type="nope")
    client.converse(modelId=MODEL, messages=_messages("hi"))
    emu.inject_fault("throttle")
    emu.reset()
    assert emu.requests == []
    client.converse(modelId=MODEL, messages=_messages("hi"))  # the throttle was cleared
    assert len(emu.requests) == 1


def test_failing_answer_callback_is_an_internal_server_error() -> None:
    def answer(body: dict[str, Any]) -> str:
        raise RuntimeError("bug in test double")

    with BedrockEmulator(answer=answer) as emu:
        client = _client(emu.endpoint_url)
        with pytest.raises(ClientError) as info:
            client.converse_stream(modelId=MODEL, messages=_messages("hi"))
        assert info.value.response["Error"]["Code"] == "InternalServerException"


# --------------------------------------------------------------------------------------------- pacing


def test_first_token_delay_delays_the_first_event() -> None:
    delay = 0.3
    with BedrockEmulator(first_token_delay_s=delay) as emu:
        client = _client(emu.endpoint_url)
        start = time.monotonic()
        stream = client.converse_stream(modelId=MODEL, messages=_messages("hi"))["stream"]
        first = next(iter(stream))
        elapsed = time.monotonic() - start
        assert "messageStart" in first
        assert elapsed > 0.8 * delay
        _collect(stream)


def test_deltas_arrive_progressively() -> None:
    """With pacing the client sees the first delta well before the last: frames are not buffered."""
    pacing, words = 0.02, 11
    with BedrockEmulator(pacing_s=pacing, answer=lambda body: " ".join(["tok"] * words)) as emu:
        stream = _client(emu.endpoint_url).converse_stream(modelId=MODEL, messages=_messages("hi"))["stream"]
        arrivals = [time.monotonic() for event in stream if "contentBlockDelta" in event]
    assert len(arrivals) == words
    assert arrivals[-1] - arrivals[0] > 0.8 * pacing * (words - 1)


# --------------------------------------------------------------------------------------------- wire level


def _raw(emu: BedrockEmulator, method: str, path: str, body: bytes = b"") -> http.client.HTTPResponse:
    host, port = emu.endpoint_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    return conn.getresponse()


def test_bad_requests_get_json_errors_and_the_server_keeps_serving(emu: BedrockEmulator, client: Any) -> None:
    emu.inject_fault("throttle")
    cases = [
        ("POST", "/model/m/converse-stream", b"{not json", 400, "SerializationException"),
        ("POST", "/model/m/converse", b"[1, 2]", 400, "SerializationException"),
        ("POST", "/nowhere", b"{}", 404, "UnknownOperationException"),
        ("GET", "/model/m/converse", b"", 404, "UnknownOperationException"),
        # Well-formed JSON reaches the model route: the first one takes the pending throttle, the next one
        # fails validation (no messages).
        ("POST", "/model/m/converse-stream", b"{}", 429, "ThrottlingException"),
        ("POST", "/model/m/converse", b"{}", 400, "ValidationException"),
    ]
    for method, path, body, status, error_type in cases:
        resp = _raw(emu, method, path, body)
        assert (resp.status, resp.getheader("x-amzn-ErrorType")) == (status, error_type), path
        assert "message" in json.loads(resp.read())
    # Only the two well-formed requests were recorded ...
    assert [r["body"] for r in emu.requests] == [{}, {}]
    # ... and the server still serves boto3 normally.
    assert _collect(client.converse_stream(modelId=MODEL, messages=_messages("hi"))["stream"])["stop"] == "end_turn"


def test_stream_wire_format(emu: BedrockEmulator) -> None:
    body = json.dumps({"messages": _messages("hi"), "inferenceConfig": {"maxTokens": 2}}).encode()
    resp = _raw(emu, "POST", "/model/m/converse-stream", body)
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/vnd.amazon.eventstream"
    assert resp.getheader("Transfer-Encoding") == "chunked"
    buffer = EventStreamBuffer()
    buffer.add_data(resp.read())
    messages = list(buffer)
    assert [m.headers[":event-type"] for m in messages] == [
        "messageStart", "contentBlockDelta", "contentBlockDelta", "contentBlockStop", "messageStop", "metadata",
    ]  # fmt: skip
    for m in messages:
        assert m.headers[":message-type"] == "event"
        assert m.headers[":content-type"] == "application/json"
    assert json.loads(messages[0].payload) == {"role": "assistant"}
    assert json.loads(messages[-2].payload) == {"stopReason": "max_tokens"}


def test_client_that_stops_reading_after_a_mid_stream_fault_prints_no_traceback(
    emu: BedrockEmulator, client: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """A client giving up on a failed stream is normal: the server must not print a handler traceback.

    The client only peeks at the response until the whole stream (exception event and chunked terminator) is
    in its receive buffer, then closes without consuming it, so the kernel answers with a reset: the handler,
    back waiting for the next keep-alive request, sees ``ConnectionResetError``.
    """
    emu.inject_fault("mid_stream", after_deltas=1)
    body = json.dumps({"messages": _messages("hi")}).encode()
    host, port = emu.endpoint_url.removeprefix("http://").split(":")
    capfd.readouterr()
    before = set(threading.enumerate())
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /model/m/converse-stream HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body)
        )
        deadline = time.monotonic() + 5
        while not (peeked := sock.recv(1 << 16, socket.MSG_PEEK)).endswith(b"\r\n0\r\n\r\n"):
            assert peeked and time.monotonic() < deadline, peeked
            time.sleep(0.005)
    assert b"modelStreamErrorException" in peeked
    for thread in set(threading.enumerate()) - before:  # the connection's handler thread, which nobody joins
        thread.join(timeout=5)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred during processing of request" not in err, err
    assert _collect(client.converse_stream(modelId=MODEL, messages=_messages("hi"))["stream"])["stop"] == "end_turn"


def test_count_input_tokens() -> None:
    body = {
        "system": [{"text": "abcd"}, {"guardContent": {}}],
        "messages": [
            {"role": "user", "content": [{"text": "abcde"}, {"image": {}}]},
            {"role": "assistant", "content": [{"text": "xyz"}]},
        ],
    }
    assert count_input_tokens(body) == math.ceil(12 / 4)
    assert count_input_tokens({"messages": []}) == 0


def test_lifecycle() -> None:
    emu = BedrockEmulator()
    with pytest.raises(RuntimeError):
        _ = emu.endpoint_url
    emu.start()
    url = emu.endpoint_url
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
    emu.stop()
    emu.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = emu.endpoint_url


# --------------------------------------------------------------------------------------------- framing

_header_names = st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= 255)


@given(
    frames=st.lists(
        st.tuples(st.dictionaries(_header_names, st.text(max_size=40), max_size=4), st.binary(max_size=300)),
        min_size=1,
        max_size=4,
    ),
    chunk=st.integers(min_value=1, max_value=64),
)
def test_encoder_round_trips_through_botocore(frames: list[tuple[dict[str, str], bytes]], chunk: int) -> None:
    wire = b"".join(encode_event_message(h, p) for h, p in frames)
    buffer = EventStreamBuffer()
    decoded = []
    for i in range(0, len(wire), chunk):  # arbitrary split points, as a socket would deliver them
        buffer.add_data(wire[i : i + chunk])
        decoded.extend(buffer)
    assert [(m.headers, m.payload) for m in decoded] == frames
    assert all(
        m.prelude.total_length == len(encode_event_message(h, p)) for m, (h, p) in zip(decoded, frames, strict=True)
    )


def test_encoder_crcs_are_checked() -> None:
    frame = encode_event_message({":event-type": "messageStart"}, b'{"role":"assistant"}')
    for index in (8, len(frame) - 10, len(frame) - 1):  # prelude CRC, payload, message CRC
        corrupted = bytearray(frame)
        corrupted[index] ^= 0xFF
        buffer = EventStreamBuffer()
        buffer.add_data(bytes(corrupted))
        with pytest.raises(ChecksumMismatch):
            list(buffer)
