"""The Bedrock emulator as a proxy to an OpenAI-compatible server: the unmodified boto3 client on one side, a
fake ``/chat/completions`` SSE server on the other."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

from aigw.emulators.bedrock import BedrockEmulator, openai_chat_request

MODEL = "us.anthropic.claude-haiku-5-5"
GAP_S = 0.15  # between the fake's chunks: long enough to tell real streaming from buffering


@dataclass
class Script:
    """What the fake upstream does with the next request."""

    deltas: list[str] = field(default_factory=lambda: ["Hello", " from", " upstream."])
    finish: str = "stop"
    usage: dict[str, int] | None = field(default_factory=lambda: {"prompt_tokens": 11, "completion_tokens": 3})
    die_after: int | None = None  # cut the connection after this many content chunks
    status: int = 200
    delay_s: float = 0.0  # before answering at all


class _FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FakeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.received.append({"path": self.path, "body": body})
        script = self.server.script
        time.sleep(script.delay_s)
        if script.status != 200:
            data = json.dumps({"error": {"message": f"model {body['model']!r} not found"}}).encode()
            self.send_response(script.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if not body.get("stream"):
            answer = {
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(script.deltas)},
                             "finish_reason": script.finish}],
                "usage": script.usage,
            }
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        for i, text in enumerate(script.deltas):
            if i == script.die_after:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)  # mid-chunked-body: the proxy sees a cut stream
                self.close_connection = True
                return
            time.sleep(GAP_S)
            self._sse({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
        self._sse({"choices": [{"index": 0, "delta": {}, "finish_reason": script.finish}]})
        if script.usage is not None:
            self._sse({"choices": [], "usage": script.usage})
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _sse(self, payload: dict[str, Any]) -> None:
        self._chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


class _FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.received: list[dict[str, Any]] = []
        self.script = Script()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the proxy hanging up (e.g. after a timeout) is expected here


@pytest.fixture
def fake() -> Iterator[_FakeServer]:
    server = _FakeServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _client(endpoint_url: str) -> Any:
    config = Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5)
    return boto3.client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=endpoint_url,
        aws_access_key_id="x", aws_secret_access_key="x", config=config,
    )


@pytest.fixture
def emu(fake: _FakeServer) -> Iterator[BedrockEmulator]:
    with BedrockEmulator(upstream_openai=fake.base_url) as emulator:
        yield emulator


def _collect(stream: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"types": [], "deltas": [], "times": [], "stop": None, "metadata": None}
    for event in stream:
        (etype,) = event.keys()
        out["types"].append(etype)
        if etype == "contentBlockDelta":
            out["deltas"].append(event[etype]["delta"]["text"])
            out["times"].append(time.monotonic())
        elif etype == "messageStop":
            out["stop"] = event[etype]["stopReason"]
        elif etype == "metadata":
            out["metadata"] = event[etype]
    return out


SYSTEM = [{"text": "Be brief."}, {"text": "Be kind."}]
MESSAGES = [
    {"role": "user", "content": [{"text": "Hi"}, {"text": "there"}]},
    {"role": "assistant", "content": [{"text": "Hello."}]},
    {"role": "user", "content": [{"text": "Say something."}]},
]


def test_stream_is_translated_and_relayed_as_it_arrives(fake: _FakeServer, emu: BedrockEmulator) -> None:
    resp = _client(emu.endpoint_url).converse_stream(
        modelId=MODEL, system=SYSTEM, messages=MESSAGES, inferenceConfig={"maxTokens": 64, "temperature": 0.2}
    )
    got = _collect(resp["stream"])

    n = len(fake.script.deltas)
    assert got["types"] == ["messageStart", *["contentBlockDelta"] * n, "contentBlockStop", "messageStop", "metadata"]
    assert got["deltas"] == ["Hello", " from", " upstream."]
    # Real streaming: each delta reaches boto3 about one upstream gap after the previous, not all at the end.
    gaps = [b - a for a, b in zip(got["times"], got["times"][1:], strict=False)]
    assert all(gap > GAP_S / 2 for gap in gaps), gaps
    assert got["stop"] == "end_turn"
    assert got["metadata"]["usage"] == {"inputTokens": 11, "outputTokens": 3, "totalTokens": 14}

    (sent,) = fake.received
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"] == {
        "model": MODEL,  # no upstream_model: the Bedrock model id as sent
        "messages": [
            {"role": "system", "content": "Be brief.\nBe kind."},
            {"role": "user", "content": "Hi\nthere"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Say something."},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 64,
        "temperature": 0.2,
    }
    assert emu.requests[0]["model_id"] == MODEL  # still recorded like any emulated call


def test_length_maps_to_max_tokens_and_missing_usage_falls_back(fake: _FakeServer) -> None:
    fake.script = Script(deltas=["one", " two"], finish="length", usage=None)
    with BedrockEmulator(upstream_openai=fake.base_url + "/", upstream_model="llama3.2") as emu:
        resp = _client(emu.endpoint_url).converse_stream(
            modelId=MODEL, messages=[{"role": "user", "content": [{"text": "12345678"}]}],
            inferenceConfig={"maxTokens": 2},
        )
        got = _collect(resp["stream"])
    assert got["deltas"] == ["one", " two"]
    assert got["stop"] == "max_tokens"
    # No upstream usage: the emulator's own count (ceil(8 chars / 4) in, 2 words out).
    assert got["metadata"]["usage"] == {"inputTokens": 2, "outputTokens": 2, "totalTokens": 4}
    assert fake.received[0]["body"]["model"] == "llama3.2"
    assert fake.received[0]["body"]["max_tokens"] == 2


def test_non_streaming_converse_is_translated_too(fake: _FakeServer, emu: BedrockEmulator) -> None:
    out = _client(emu.endpoint_url).converse(modelId=MODEL, messages=MESSAGES)
    assert out["output"]["message"] == {"role": "assistant", "content": [{"text": "Hello from upstream."}]}
    assert out["stopReason"] == "end_turn"
    assert out["usage"] == {"inputTokens": 11, "outputTokens": 3, "totalTokens": 14}
    assert fake.received[0]["body"]["stream"] is False
    assert "stream_options" not in fake.received[0]["body"]


def test_upstream_down_is_service_unavailable() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with BedrockEmulator(upstream_openai=f"http://127.0.0.1:{port}/v1") as emu:
        client = _client(emu.endpoint_url)
        with pytest.raises(ClientError) as err:
            client.converse_stream(modelId=MODEL, messages=MESSAGES)
        assert err.value.response["Error"]["Code"] == "ServiceUnavailableException"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        with pytest.raises(ClientError) as err:
            client.converse(modelId=MODEL, messages=MESSAGES)
        assert err.value.response["Error"]["Code"] == "ServiceUnavailableException"


def test_upstream_timeout_before_streaming_is_service_unavailable(fake: _FakeServer) -> None:
    fake.script = Script(delay_s=0.6)
    with (
        BedrockEmulator(upstream_openai=fake.base_url, upstream_timeout_s=0.2) as emu,
        pytest.raises(ClientError) as err,
    ):
        _client(emu.endpoint_url).converse_stream(modelId=MODEL, messages=MESSAGES)
    assert err.value.response["Error"]["Code"] == "ServiceUnavailableException"


def test_upstream_http_error_is_bedrock_shaped(fake: _FakeServer, emu: BedrockEmulator) -> None:
    fake.script = Script(status=404)
    with pytest.raises(ClientError) as err:
        _client(emu.endpoint_url).converse_stream(modelId=MODEL, messages=MESSAGES)
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "not found" in err.value.response["Error"]["Message"]


def test_upstream_dying_mid_stream_is_an_exception_event(fake: _FakeServer, emu: BedrockEmulator) -> None:
    fake.script = Script(die_after=2)
    resp = _client(emu.endpoint_url).converse_stream(modelId=MODEL, messages=MESSAGES)
    deltas: list[str] = []
    with pytest.raises(EventStreamError) as err:
        for event in resp["stream"]:
            if "contentBlockDelta" in event:
                deltas.append(event["contentBlockDelta"]["delta"]["text"])
    assert deltas == ["Hello", " from"]
    assert err.value.response["Error"]["Code"] == "modelStreamErrorException"
    assert "upstream" in err.value.response["Error"]["Message"]


def test_injected_faults_still_apply(fake: _FakeServer, emu: BedrockEmulator) -> None:
    client = _client(emu.endpoint_url)
    emu.inject_fault("throttle")
    with pytest.raises(ClientError) as err:
        client.converse_stream(modelId=MODEL, messages=MESSAGES)
    assert err.value.response["Error"]["Code"] == "ThrottlingException"
    assert fake.received == []  # refused before reaching the upstream

    emu.inject_fault("mid_stream", after_deltas=1)
    with pytest.raises(EventStreamError):
        _collect(client.converse_stream(modelId=MODEL, messages=MESSAGES)["stream"])


def test_translation_drops_non_text_blocks_and_maps_sampling() -> None:
    body = {
        "messages": [{"role": "user", "content": [{"text": "a"}, {"image": {"format": "png"}}]}],
        "inferenceConfig": {"topP": 0.9, "stopSequences": ["END"]},
    }
    assert openai_chat_request(body, "m", stream=False) == {
        "model": "m",
        "messages": [{"role": "user", "content": "a"}],
        "stream": False,
        "top_p": 0.9,
        "stop": ["END"],
    }
