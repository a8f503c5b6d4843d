"""A local Amazon Bedrock Runtime emulator speaking the real Converse / ConverseStream wire protocol.

The unmodified boto3 ``bedrock-runtime`` client can be pointed at it (``endpoint_url=emu.endpoint_url`` or
``AWS_ENDPOINT_URL_BEDROCK_RUNTIME``): responses are rest-json for ``Converse`` and the binary
``application/vnd.amazon.eventstream`` framing for ``ConverseStream``, sent as HTTP/1.1 chunks flushed one
event at a time so a client really sees the first delta before the last. Answers are deterministic (derived
from the last user message), usage is a simple deterministic count, and faults can be injected per request.
Standard library only; SigV4 is not verified.

With ``upstream_openai`` set (e.g. Ollama's ``http://127.0.0.1:11434/v1``) the emulator is instead a proxy to
an OpenAI-compatible ``/chat/completions`` server: the Converse request is translated, the upstream's SSE
deltas are re-framed as ``contentBlockDelta`` events as they arrive, and upstream failures come back
Bedrock-shaped (see `BedrockEmulator`).
"""

from __future__ import annotations

import binascii
import hashlib
import http.client
import itertools
import json
import math
import re
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from aigw.emulators._http import BackgroundHTTPServer, ErrorAnswer, KeepAliveHandler

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "FAULT_KINDS",
    "STREAM_EXCEPTION_TYPES",
    "BedrockEmulator",
    "count_input_tokens",
    "default_answer",
    "encode_event_message",
    "openai_chat_request",
    "split_tokens",
]

DEFAULT_MAX_TOKENS = 512
"""Output-token cap used when the request has no ``inferenceConfig.maxTokens``."""

FAULT_KINDS = frozenset({"throttle", "validation", "mid_stream", "no_metadata"})

STREAM_EXCEPTION_TYPES: dict[str, int] = {
    "internalServerException": 500,
    "modelStreamErrorException": 424,
    "validationException": 400,
    "throttlingException": 429,
    "serviceUnavailableException": 503,
}
"""Exception events of botocore's ``ConverseStreamOutput`` union, with each one's modelled HTTP status
(used when a ``mid_stream`` fault hits the non-streaming ``Converse`` operation)."""

_EVENTSTREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
_HEADER_TYPE_STRING = 7
_PATH_RE = re.compile(r"^/model/(?P<model_id>[^/]+)/(?P<op>converse|converse-stream)$")
_TOKEN_RE = re.compile(r"\s*\S+")

_SENTENCE_POOL = (
    "Here is a concise answer based on what you asked.",
    "The short version is that it depends on the constraints you care about most.",
    "A good first step is to measure the current behaviour before changing anything.",
    "Small, reversible changes are usually safer than one large rewrite.",
    "Caching the expensive part often removes most of the latency.",
    "Keep the budget explicit so that every request knows how much it may spend.",
    "Retries with jittered backoff smooth out transient throttling.",
    "Streaming the response lets the user read while the model is still writing.",
    "Logs with a request id make a failure easy to trace end to end.",
    "If in doubt, prefer the simplest design that meets the requirement.",
)


# --------------------------------------------------------------------------------------------- framing


def encode_event_message(headers: dict[str, str], payload: bytes) -> bytes:
    """Frame one event-stream message: prelude (+CRC), string headers, payload, message CRC.

    Layout (all integers big-endian): total length u32, headers length u32, CRC32 of those 8 bytes; then per
    header: name length u8, name, type byte 7 (string), value length u16, value; then the payload; then the
    CRC32 of everything before it.
    """
    encoded_headers = bytearray()
    for name, value in headers.items():
        name_bytes = name.encode("utf-8")
        value_bytes = value.encode("utf-8")
        if len(name_bytes) > 0xFF or len(value_bytes) > 0xFFFF:
            raise ValueError(f"event-stream header too long: {name!r}")
        encoded_headers += struct.pack(">B", len(name_bytes)) + name_bytes
        encoded_headers += struct.pack(">BH", _HEADER_TYPE_STRING, len(value_bytes)) + value_bytes
    total_length = 12 + len(encoded_headers) + len(payload) + 4
    prelude = struct.pack(">II", total_length, len(encoded_headers))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    message = prelude + bytes(encoded_headers) + payload
    return message + struct.pack(">I", binascii.crc32(message))


def _event(event_type: str, body: dict[str, Any]) -> bytes:
    """A normal (``:message-type: event``) JSON event."""
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_event_message(headers, json.dumps(body).encode("utf-8"))


def _exception_event(exception_type: str, message: str) -> bytes:
    """An in-stream exception, which botocore raises as ``EventStreamError`` while iterating."""
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_event_message(headers, json.dumps({"message": message}).encode("utf-8"))


# --------------------------------------------------------------------------------------------- answers


def _text_blocks(blocks: Any) -> list[str]:
    """The ``text`` members of a list of Converse content (or system) blocks; anything else is ignored."""
    if not isinstance(blocks, list):
        return []
    return [b["text"] for b in blocks if isinstance(b, dict) and isinstance(b.get("text"), str)]


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return "\n".join(_text_blocks(message.get("content")))
    return ""


def count_input_tokens(body: dict[str, Any]) -> int:
    """Deterministic input-token count: ceil(characters / 4) over all message and system text."""
    texts = _text_blocks(body.get("system"))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            texts += _text_blocks(message.get("content"))
    return math.ceil(sum(len(t) for t in texts) / 4)


def default_answer(body: dict[str, Any]) -> str:
    """Deterministic answer: 2-5 sentences from a fixed pool, chosen by a hash of the last user message."""
    digest = hashlib.sha256(_last_user_text(body).encode("utf-8")).digest()
    count = 2 + digest[0] % 4
    return " ".join(_SENTENCE_POOL[digest[1 + i] % len(_SENTENCE_POOL)] for i in range(count))


def split_tokens(text: str) -> list[str]:
    """Split text into emulated tokens: words carrying their leading whitespace (so they join back exactly)."""
    return _TOKEN_RE.findall(text)


# --------------------------------------------------------------------------------------------- upstream

_FINISH_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "content_filter": "content_filtered",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
}
"""OpenAI ``finish_reason`` → Converse ``stopReason``; anything else (or none) ends as ``end_turn``."""

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def openai_chat_request(body: dict[str, Any], model: str, *, stream: bool) -> dict[str, Any]:
    """Translate a Converse request body into an OpenAI ``/chat/completions`` body.

    ``system`` blocks become one leading ``system`` message; each ``user``/``assistant`` message becomes one
    message whose ``content`` is its text blocks joined by newlines (non-text blocks are dropped).
    ``inferenceConfig`` maps ``maxTokens``/``temperature``/``topP``/``stopSequences`` to ``max_tokens``/
    ``temperature``/``top_p``/``stop`` when present. Streaming asks for the final usage chunk.
    """
    messages: list[dict[str, str]] = []
    system = "\n".join(_text_blocks(body.get("system")))
    if system:
        messages.append({"role": "system", "content": system})
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") in ("user", "assistant"):
            messages.append({"role": message["role"], "content": "\n".join(_text_blocks(message.get("content")))})
    request: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if stream:
        request["stream_options"] = {"include_usage": True}
    config = body.get("inferenceConfig")
    if isinstance(config, dict):
        for source, target in (
            ("maxTokens", "max_tokens"),
            ("temperature", "temperature"),
            ("topP", "top_p"),
            ("stopSequences", "stop"),
        ):
            if config.get(source) is not None:
                request[target] = config[source]
    return request


class _UpstreamError(Exception):
    """The upstream stream failed after it began: an ``error`` payload, or it ended before ``[DONE]``."""


class _UpstreamEnded(_UpstreamError):
    """The upstream closed the stream without ``[DONE]`` (fine only if a ``finish_reason`` was seen)."""


def _sse_chunks(response: Any) -> Iterator[dict[str, Any]]:
    """The JSON ``data:`` payloads of an OpenAI SSE stream, each yielded as soon as its line arrives.

    Returns at ``data: [DONE]``; raises `_UpstreamError` for an ``error`` payload or unparsable data and
    `_UpstreamEnded` at end of stream without ``[DONE]``; transport errors (reset, timeout, a cut chunked
    body) become `_UpstreamError` too, so they cannot be mistaken for the client hanging up.
    """
    while True:
        try:
            raw = response.readline()  # returns as soon as one line is in, not when a buffer fills
        except (OSError, http.client.HTTPException) as exc:
            raise _UpstreamError(f"upstream connection failed: {exc!r}") from exc
        if not raw:
            break
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue  # blank separators, ``event:``/``id:`` fields and ``:`` comments
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        try:
            chunk = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _UpstreamError(f"unparsable upstream chunk: {data[:200]!r}") from exc
        if not isinstance(chunk, dict):
            raise _UpstreamError(f"unexpected upstream chunk: {data[:200]!r}")
        if chunk.get("error"):
            raise _UpstreamError(f"upstream error: {_error_message(chunk)}")
        yield chunk
    raise _UpstreamEnded("upstream stream ended before [DONE]")


def _error_message(payload: Any) -> str:
    """The message of an OpenAI-style error body (``{"error": {"message": ...}}`` or ``{"error": "..."}``)."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str) and error:
            return error
    return json.dumps(payload)[:500]


def _upstream_http_error(url: str, err: urllib.error.HTTPError) -> _ClientError:
    """An upstream HTTP error status as the Bedrock error a client would see for the same kind of failure."""
    try:
        detail = _error_message(json.loads(err.read() or b"null"))
    except (OSError, http.client.HTTPException, UnicodeDecodeError, json.JSONDecodeError):
        detail = err.reason if isinstance(err.reason, str) else str(err)
    message = f"upstream {url} answered {err.code}: {detail}"
    if err.code == 429:
        return _ClientError(429, "ThrottlingException", message)
    if err.code in (401, 403):
        return _ClientError(403, "AccessDeniedException", message)
    if 400 <= err.code < 500:
        return _ClientError(400, "ValidationException", message)  # e.g. Ollama's "model not found"
    return _ClientError(503, "ServiceUnavailableException", message)


def _delta_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            return delta["content"]
    return ""


def _finish_reason(chunk: dict[str, Any]) -> str | None:
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else None
    return None


def _openai_usage(chunk: dict[str, Any]) -> tuple[int, int] | None:
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            return prompt, completion
    return None


# --------------------------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class _Fault:
    kind: str
    params: dict[str, Any] = field(default_factory=dict)


def _make_fault(kind: str, kw: dict[str, Any]) -> _Fault:
    """Validate ``inject_fault`` arguments up front, so a typo fails in the test, not in the server thread."""
    allowed: dict[str, set[str]] = {
        "throttle": {"message"},
        "validation": {"message"},
        "mid_stream": {"after_deltas", "exception_type", "message"},
        "no_metadata": set(),
    }
    if kind not in allowed:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
    unknown = set(kw) - allowed[kind]
    if unknown:
        raise TypeError(f"fault {kind!r} got unexpected arguments {sorted(unknown)}")
    params = dict(kw)
    if kind == "mid_stream":
        params.setdefault("after_deltas", 1)
        params.setdefault("exception_type", "modelStreamErrorException")
        params.setdefault("message", "The model stream was interrupted (injected fault).")
        if not isinstance(params["after_deltas"], int) or params["after_deltas"] < 0:
            raise ValueError("after_deltas must be a non-negative int")
        if params["exception_type"] not in STREAM_EXCEPTION_TYPES:
            raise ValueError(f"exception_type must be one of {sorted(STREAM_EXCEPTION_TYPES)}")
    elif kind == "throttle":
        params.setdefault("message", "Too many requests")
    elif kind == "validation":
        params.setdefault("message", "Malformed input request (injected fault).")
    return _Fault(kind, params)


# --------------------------------------------------------------------------------------------- server


class _ClientError(ErrorAnswer):
    """A rest-json error response: status, ``x-amzn-ErrorType`` and ``{"message": ...}``."""


class _Handler(KeepAliveHandler["BedrockEmulator"]):
    """One connection; HTTP/1.1 keep-alive so boto3's connection pool behaves as it does against AWS."""

    # -- plumbing ------------------------------------------------------------------------------------

    def _send_error(self, err: _ClientError) -> None:
        self._send_json(err.status, {"message": err.message}, {"x-amzn-ErrorType": err.error_type})

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    # -- request handling ----------------------------------------------------------------------------

    def _serve(self) -> None:
        received = time.monotonic()
        raw = self._read_body()  # always drain the body so the keep-alive connection stays in sync
        match = _PATH_RE.match(urlsplit(self.path).path) if self.command == "POST" else None
        if match is None:
            self._send_error(_ClientError(404, "UnknownOperationException", f"No route for {self.path}"))
            return
        try:
            body = json.loads(raw or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        if not isinstance(body, dict):
            self._send_error(_ClientError(400, "SerializationException", "Request body is not a JSON object"))
            return
        emulator = self.owner
        model_id = unquote(match["model_id"])
        fault = emulator._record_and_pop_fault(model_id, body)
        streaming = match["op"] == "converse-stream"
        try:
            if fault is not None and fault.kind == "throttle":
                raise _ClientError(429, "ThrottlingException", fault.params["message"])
            if fault is not None and fault.kind == "validation":
                raise _ClientError(400, "ValidationException", fault.params["message"])
            if fault is not None and fault.kind == "mid_stream" and not streaming:
                exc_type = fault.params["exception_type"]
                status = STREAM_EXCEPTION_TYPES[exc_type]
                raise _ClientError(status, exc_type[0].upper() + exc_type[1:], fault.params["message"])
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _ClientError(400, "ValidationException", "messages must be a non-empty list")
            if emulator.upstream_openai is not None:
                _max_tokens(body)  # same validation as the emulated path; the upstream does the capping
                model = emulator.upstream_model or model_id
                if streaming:
                    self._stream_upstream(emulator.upstream_openai, model, body, fault, received)
                else:
                    self._converse_upstream(emulator.upstream_openai, model, body, received)
                return
            tokens, stop_reason = emulator._plan(body)
        except _ClientError as err:
            self._send_error(err)
            return
        usage_in = count_input_tokens(body)
        if streaming:
            self._stream(fault, tokens, stop_reason, usage_in, received)
        else:
            self._converse(tokens, stop_reason, usage_in, received)

    def _converse(self, tokens: list[str], stop_reason: str, usage_in: int, received: float) -> None:
        emulator = self.owner
        if tokens:
            time.sleep(emulator.first_token_delay_s + emulator.pacing_s * (len(tokens) - 1))
        self._send_json(
            200,
            {
                "output": {"message": {"role": "assistant", "content": [{"text": "".join(tokens)}]}},
                "stopReason": stop_reason,
                "usage": _usage(usage_in, len(tokens)),
                "metrics": {"latencyMs": _elapsed_ms(received)},
            },
        )

    def _stream(
        self, fault: _Fault | None, tokens: list[str], stop_reason: str, usage_in: int, received: float
    ) -> None:
        emulator = self.owner
        self.send_response(200)
        self.send_header("Content-Type", _EVENTSTREAM_CONTENT_TYPE)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.flush()
        fail_after = fault.params["after_deltas"] if fault is not None and fault.kind == "mid_stream" else None
        try:
            time.sleep(emulator.first_token_delay_s)
            self._write_chunk(_event("messageStart", {"role": "assistant"}))
            for i, token in enumerate(tokens):
                if i == fail_after:
                    break
                if i > 0 and emulator.pacing_s > 0:
                    time.sleep(emulator.pacing_s)
                self._write_chunk(_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": token}}))
            if fault is not None and fault.kind == "mid_stream":
                self._write_chunk(_exception_event(fault.params["exception_type"], fault.params["message"]))
            else:
                self._write_chunk(_event("contentBlockStop", {"contentBlockIndex": 0}))
                self._write_chunk(_event("messageStop", {"stopReason": stop_reason}))
                if fault is None or fault.kind != "no_metadata":
                    metadata = {
                        "usage": _usage(usage_in, len(tokens)),
                        "metrics": {"latencyMs": _elapsed_ms(received)},
                    }
                    self._write_chunk(_event("metadata", metadata))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client went away mid-stream; nothing left to tell it

    # -- upstream (OpenAI-compatible) proxying -------------------------------------------------------

    def _open_upstream(self, base_url: str, payload: dict[str, Any]) -> Any:
        """POST ``{base_url}/chat/completions``; failures before a 200 raise the matching `_ClientError`."""
        url = base_url.rstrip("/") + "/chat/completions"
        request = urllib.request.Request(
            url,
            data=json.dumps(payload).encode("utf-8"),
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
            method="POST",
        )
        # A local model server must not be sent through an HTTP(S)_PROXY from the developer's environment.
        handlers = [urllib.request.ProxyHandler({})] if urlsplit(url).hostname in _LOOPBACK_HOSTS else []
        try:
            return urllib.request.build_opener(*handlers).open(request, timeout=self.owner.upstream_timeout_s)
        except urllib.error.HTTPError as err:
            with err:
                raise _upstream_http_error(url, err) from None
        except (OSError, http.client.HTTPException) as exc:  # refused, timed out, reset, garbled status line
            raise _ClientError(503, "ServiceUnavailableException", f"upstream {url} unavailable: {exc}") from None

    def _converse_upstream(self, base_url: str, model: str, body: dict[str, Any], received: float) -> None:
        """Non-streaming ``Converse`` through the upstream (``stream: false``)."""
        with self._open_upstream(base_url, openai_chat_request(body, model, stream=False)) as response:
            try:
                answer = json.loads(response.read())
            except (OSError, http.client.HTTPException, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise _ClientError(503, "ServiceUnavailableException", f"upstream answer unreadable: {exc}") from None
        choices = answer.get("choices") if isinstance(answer, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        message = choice.get("message")
        if not isinstance(message, dict):
            raise _ClientError(503, "ServiceUnavailableException", f"upstream answer has no message: {answer!r:.300}")
        text = message.get("content") if isinstance(message.get("content"), str) else ""
        usage = _openai_usage(answer) or (count_input_tokens(body), len(split_tokens(text)))
        self._send_json(
            200,
            {
                "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
                "stopReason": _FINISH_REASONS.get(choice.get("finish_reason") or "", "end_turn"),
                "usage": _usage(*usage),
                "metrics": {"latencyMs": _elapsed_ms(received)},
            },
        )

    def _stream_upstream(
        self, base_url: str, model: str, body: dict[str, Any], fault: _Fault | None, received: float
    ) -> None:
        """``ConverseStream`` through the upstream: each SSE delta goes out as one event the moment it arrives.

        Until the first upstream chunk is in, a failure is still an HTTP error (503 ServiceUnavailable); after
        the event-stream has begun it is a ``modelStreamErrorException`` event. ``mid_stream`` and
        ``no_metadata`` faults apply as on the emulated path.
        """
        response = self._open_upstream(base_url, openai_chat_request(body, model, stream=True))
        with response:
            chunks = _sse_chunks(response)
            try:
                first: dict[str, Any] | None = next(chunks)
            except StopIteration:
                first = None  # [DONE] straight away: an empty answer
            except _UpstreamError as exc:
                raise _ClientError(503, "ServiceUnavailableException", f"upstream stream failed: {exc}") from None
            self.send_response(200)
            self.send_header("Content-Type", _EVENTSTREAM_CONTENT_TYPE)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
            self.end_headers()
            try:
                self._write_chunk(_event("messageStart", {"role": "assistant"}))
                self._relay(chunks, first, body, fault, received)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                self.close_connection = True  # the client went away; closing the upstream stops generation

    def _relay(
        self,
        chunks: Iterator[dict[str, Any]],
        first: dict[str, Any] | None,
        body: dict[str, Any],
        fault: _Fault | None,
        received: float,
    ) -> None:
        """Write the events for ``first`` and the rest of ``chunks``; client write errors propagate."""
        fail_after = fault.params["after_deltas"] if fault is not None and fault.kind == "mid_stream" else None
        finish: str | None = None
        usage: tuple[int, int] | None = None
        deltas: list[str] = []
        try:
            for chunk in chunks if first is None else itertools.chain((first,), chunks):
                text = _delta_text(chunk)
                if text:
                    if len(deltas) == fail_after:
                        self._write_chunk(_exception_event(fault.params["exception_type"], fault.params["message"]))
                        return
                    deltas.append(text)
                    self._write_chunk(_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}}))
                finish = _finish_reason(chunk) or finish
                usage = _openai_usage(chunk) or usage
        except _UpstreamError as exc:
            # Closing without [DONE] once a finish_reason (and maybe usage) arrived is complete enough.
            if not isinstance(exc, _UpstreamEnded) or finish is None:
                self._write_chunk(_exception_event("modelStreamErrorException", f"upstream stream failed: {exc}"))
                return
        if fail_after is not None:  # fewer deltas than after_deltas: fail at the end, like the emulated path
            self._write_chunk(_exception_event(fault.params["exception_type"], fault.params["message"]))
            return
        self._write_chunk(_event("contentBlockStop", {"contentBlockIndex": 0}))
        self._write_chunk(_event("messageStop", {"stopReason": _FINISH_REASONS.get(finish or "", "end_turn")}))
        if fault is None or fault.kind != "no_metadata":
            usage = usage or (count_input_tokens(body), len(split_tokens("".join(deltas))))
            metadata = {"usage": _usage(*usage), "metrics": {"latencyMs": _elapsed_ms(received)}}
            self._write_chunk(_event("metadata", metadata))


def _max_tokens(body: dict[str, Any]) -> int:
    """``inferenceConfig.maxTokens`` (default `DEFAULT_MAX_TOKENS`); 400 ValidationException if not a positive int."""
    config = body.get("inferenceConfig")
    max_tokens = config.get("maxTokens", DEFAULT_MAX_TOKENS) if isinstance(config, dict) else None
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _ClientError(400, "ValidationException", "inferenceConfig.maxTokens must be a positive integer")
    return max_tokens


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {"inputTokens": input_tokens, "outputTokens": output_tokens, "totalTokens": input_tokens + output_tokens}


def _elapsed_ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


# --------------------------------------------------------------------------------------------- public API


class BedrockEmulator(BackgroundHTTPServer):
    """A Bedrock Runtime ``Converse``/``ConverseStream`` peer on 127.0.0.1, run in a background thread.

    ``answer`` overrides the deterministic answer text (it gets the parsed request body). ``pacing_s`` is the
    sleep between deltas and ``first_token_delay_s`` the sleep before the first event. ``requests`` records
    every well-formed model call (including faulted ones, so retries are visible). Lifecycle (``start``/
    ``stop``/context manager; a restart rebinds the same port) comes from `BackgroundHTTPServer`.

    ``upstream_openai`` (an OpenAI-compatible base URL such as ``http://127.0.0.1:11434/v1``) turns the
    emulator into a proxy for real model text: both ``Converse`` and ``ConverseStream`` are translated by
    `openai_chat_request` and sent to ``{upstream_openai}/chat/completions`` under the model name
    ``upstream_model``, or, when that is None, the request's Bedrock model id as sent (decoded). Streaming
    relays each SSE ``delta.content`` as a ``contentBlockDelta`` the moment it arrives; ``finish_reason``
    maps to ``stopReason`` (``stop``→``end_turn``, ``length``→``max_tokens``) and the upstream ``usage`` to
    ``metadata.usage`` (the emulator's own count when the upstream sends none). Upstream failures before
    the first chunk are HTTP errors (refused/timeout/5xx → 503 ServiceUnavailableException, 429 →
    ThrottlingException, other 4xx → ValidationException), after it a ``modelStreamErrorException`` event.
    ``upstream_timeout_s`` bounds the connect and each read. In this mode ``answer``, ``pacing_s`` and
    ``first_token_delay_s`` are unused; injected faults still apply.
    """

    handler_class = _Handler
    thread_name = "bedrock-emulator"
    poll_interval_s = 0.05
    _noun = "emulator"

    def __init__(
        self,
        *,
        answer: Callable[[dict[str, Any]], str] | None = None,
        pacing_s: float = 0.0,
        first_token_delay_s: float = 0.0,
        upstream_openai: str | None = None,
        upstream_model: str | None = None,
        upstream_timeout_s: float = 60.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.answer = answer or default_answer
        self.upstream_openai = upstream_openai or None
        self.upstream_model = upstream_model or None
        self.upstream_timeout_s = upstream_timeout_s
        self.pacing_s = pacing_s
        self.first_token_delay_s = first_token_delay_s
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._faults: deque[_Fault] = deque()
        super().__init__(host=host, port=port)

    # -- test controls -------------------------------------------------------------------------------

    def inject_fault(self, kind: str, **kw: Any) -> None:
        """Queue a fault for the next model request (FIFO, one consumed per request).

        Kinds: ``throttle`` (429 ThrottlingException; ``message``), ``validation`` (400 ValidationException;
        ``message``), ``mid_stream`` (after ``after_deltas`` deltas, default 1, an exception event of
        ``exception_type``, default ``modelStreamErrorException``; ``message``), ``no_metadata`` (a normal
        stream without the final ``metadata`` event). On non-streaming ``Converse``, ``mid_stream`` becomes
        the matching HTTP error and ``no_metadata`` has no effect.
        """
        fault = _make_fault(kind, kw)
        with self._lock:
            self._faults.append(fault)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Snapshot of received model calls: ``{"model_id": ..., "body": parsed_json}`` in arrival order."""
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        """Forget recorded requests and pending faults."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()

    # -- used by the handler -------------------------------------------------------------------------

    def _record_and_pop_fault(self, model_id: str, body: dict[str, Any]) -> _Fault | None:
        with self._lock:
            self._requests.append({"model_id": model_id, "body": body})
            return self._faults.popleft() if self._faults else None

    def _plan(self, body: dict[str, Any]) -> tuple[list[str], str]:
        """The tokens to emit and the stop reason, honouring ``inferenceConfig.maxTokens``."""
        max_tokens = _max_tokens(body)
        try:
            text = self.answer(body)
        except Exception as exc:  # a broken answer callback should surface as a 500, not a hung client
            raise _ClientError(500, "InternalServerException", f"answer callback failed: {exc!r}") from exc
        tokens = split_tokens(text)
        if len(tokens) > max_tokens:
            return tokens[:max_tokens], "max_tokens"
        return tokens, "end_turn"
