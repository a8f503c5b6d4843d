"""The worker's thin adapter over Amazon Bedrock ``ConverseStream``.

``ModelClient.stream`` sends one Converse-format request and turns the event stream into three small event
types: ``TextDelta`` (each text delta), ``StreamStop`` (``messageStop``; a guardrail intervention is just
``stop_reason == "guardrail_intervened"``) and ``StreamUsage`` (``metadata``; absent if the stream ends
without it, in which case the worker counts tokens itself).

Failure policy:

* Throttling before anything was yielded (``ThrottlingException``, ``ServiceUnavailableException``,
  ``ModelNotReadyException``, ``TooManyRequestsException`` on the call, or a throttling / unavailable
  exception event before the first delta) is retried with full-jitter exponential backoff; past the budget
  it raises ``ModelThrottledError``. Nothing is retried once an event was yielded: the user saw it.
* Everything else raises ``ModelInvocationError`` with a generic public message; the upstream exception is
  its ``__cause__`` (its text is never copied into the error).
* Bad arguments raise ``InvalidModelRequestError`` (a ``ValueError``) when ``stream()`` is called, before any
  request. Once iteration starts, only ``ModelError`` subclasses escape.

botocore's own retries are switched off on the client this module creates (one attempt), so this policy is
the only one and ``attempts`` counts real calls. Lambda code: stdlib, boto3/botocore and ``runtime`` only;
the boto3 client is created lazily on first use, never at import.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from runtime.errors import InvalidModelRequestError, ModelInvocationError, ModelThrottledError

__all__ = [
    "THROTTLE_CODES",
    "GuardrailSettings",
    "ModelClient",
    "ModelEvent",
    "StreamStop",
    "StreamUsage",
    "TextDelta",
]

logger = logging.getLogger(__name__)

THROTTLE_CODES = frozenset(
    {"ThrottlingException", "ServiceUnavailableException", "ModelNotReadyException", "TooManyRequestsException"}
)
"""Error codes retried before the first token. In-stream exception events use lower camel case
(``throttlingException``); codes are compared with the first letter upper-cased."""


# --------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer text, in order."""

    text: str


@dataclass(frozen=True)
class StreamStop:
    """The model stopped: ``end_turn``, ``max_tokens``, ``stop_sequence``, ``guardrail_intervened``, ..."""

    stop_reason: str


@dataclass(frozen=True)
class StreamUsage:
    """Bedrock's own token counts for the call (and its latency, when reported)."""

    input_tokens: int
    output_tokens: int
    latency_ms: int | None


ModelEvent = TextDelta | StreamStop | StreamUsage


@dataclass(frozen=True)
class GuardrailSettings:
    """A Bedrock guardrail to apply, in synchronous stream-processing mode."""

    identifier: str
    version: str
    trace: bool = False

    def __post_init__(self) -> None:
        for name in ("identifier", "version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise InvalidModelRequestError(f"guardrail {name} must be a non-empty string")
        if not isinstance(self.trace, bool):
            raise InvalidModelRequestError("guardrail trace must be a bool")

    def to_request(self) -> dict[str, str]:
        """The ``guardrailConfig`` member of a ConverseStream request."""
        return {
            "guardrailIdentifier": self.identifier,
            "guardrailVersion": self.version,
            "trace": "enabled" if self.trace else "disabled",
            "streamProcessingMode": "sync",
        }


# --------------------------------------------------------------------------------------------- helpers


def _error_code(exc: ClientError) -> str:
    code = str((exc.response or {}).get("Error", {}).get("Code") or "")
    return code[:1].upper() + code[1:]


def _is_throttle(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and _error_code(exc) in THROTTLE_CODES


def _upstream_code(exc: BaseException) -> str:
    """A short, safe label for logs and metrics: the AWS error code, else the exception class name."""
    if isinstance(exc, ClientError):
        return _error_code(exc) or type(exc).__name__
    return type(exc).__name__


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidModelRequestError(f"{name} must be a positive int, got {value!r}")
    return value


def _validate_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidModelRequestError("messages must be a non-empty list")
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ("user", "assistant")
            or not isinstance(message.get("content"), list)
        ):
            raise InvalidModelRequestError(f"messages[{i}] must be {{'role': 'user'|'assistant', 'content': [...]}}")


def _event_to_model_event(event: dict[str, Any]) -> ModelEvent | None:
    """Map one parsed ConverseStream event; events we do not surface (messageStart, ...) give None."""
    if "contentBlockDelta" in event:
        text = (event["contentBlockDelta"].get("delta") or {}).get("text")
        return TextDelta(text) if isinstance(text, str) and text else None
    if "messageStop" in event:
        return StreamStop(str(event["messageStop"].get("stopReason") or "unknown"))
    if "metadata" in event:
        metadata = event["metadata"]
        usage = metadata.get("usage") or {}
        latency = (metadata.get("metrics") or {}).get("latencyMs")
        if "inputTokens" not in usage or "outputTokens" not in usage:
            return None
        return StreamUsage(
            input_tokens=int(usage["inputTokens"]),
            output_tokens=int(usage["outputTokens"]),
            latency_ms=int(latency) if latency is not None else None,
        )
    return None


# --------------------------------------------------------------------------------------------- client


class ModelClient:
    """Streams Bedrock ConverseStream answers with this module's retry and error policy.

    ``client`` is a boto3 ``bedrock-runtime`` client; if None, one is created on first use (endpoint from
    the usual configuration, so ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` is honoured) with botocore retries off.
    A passed client is used as is: give it ``total_max_attempts=1`` too, or its retries stack with ours.
    ``attempts`` is the number of ``converse_stream`` calls made by the last ``stream()``.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        max_throttle_retries: int = 3,
        backoff_base_s: float = 0.2,
        backoff_cap_s: float = 2.0,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        if isinstance(max_throttle_retries, bool) or not isinstance(max_throttle_retries, int):
            raise InvalidModelRequestError("max_throttle_retries must be an int")
        if max_throttle_retries < 0:
            raise InvalidModelRequestError("max_throttle_retries must be >= 0")
        for name, value in (("backoff_base_s", backoff_base_s), ("backoff_cap_s", backoff_cap_s)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InvalidModelRequestError(f"{name} must be a finite number >= 0")
        self._client = client
        self._client_lock = threading.Lock()
        self.max_throttle_retries = max_throttle_retries
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_cap_s = float(backoff_cap_s)
        self._sleep = sleep
        self.attempts = 0

    # -- plumbing ------------------------------------------------------------------------------------

    def _get_client(self) -> Any:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config

                    config = Config(retries={"mode": "standard", "total_max_attempts": 1})
                    # A private session: boto3's default session is not safe to build clients from concurrently.
                    self._client = boto3.session.Session().client("bedrock-runtime", config=config)
        return self._client

    def _backoff_s(self, retry: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**retry)]."""
        return random.uniform(0.0, min(self.backoff_cap_s, self.backoff_base_s * (2**retry)))

    # -- API -----------------------------------------------------------------------------------------

    def stream(
        self,
        model_id: str,
        messages: list[dict[str, Any]],
        max_tokens: int,
        *,
        system: str | None = None,
        guardrail: GuardrailSettings | None = None,
        temperature: float | None = None,
    ) -> Generator[ModelEvent, None, None]:
        """Validate now, then return an iterator of TextDelta / StreamStop / StreamUsage.

        Arguments are checked eagerly (``InvalidModelRequestError`` before any request); the request is sent
        on the first ``next()``. Iteration raises only ``ModelThrottledError`` or ``ModelInvocationError``.
        Closing the iterator early closes the HTTP stream.
        """
        if not isinstance(model_id, str) or not model_id:
            raise InvalidModelRequestError("model_id must be a non-empty string")
        _validate_messages(messages)
        inference: dict[str, Any] = {"maxTokens": _positive_int("max_tokens", max_tokens)}
        if temperature is not None:
            if (
                isinstance(temperature, bool)
                or not isinstance(temperature, int | float)
                or not 0.0 <= temperature <= 1.0
            ):
                raise InvalidModelRequestError(f"temperature must be a number in [0, 1], got {temperature!r}")
            inference["temperature"] = float(temperature)
        request: dict[str, Any] = {"modelId": model_id, "messages": messages, "inferenceConfig": inference}
        if system is not None:
            if not isinstance(system, str):
                raise InvalidModelRequestError("system must be a string")
            if system:
                request["system"] = [{"text": system}]
        if guardrail is not None:
            if not isinstance(guardrail, GuardrailSettings):
                raise InvalidModelRequestError("guardrail must be a GuardrailSettings")
            request["guardrailConfig"] = guardrail.to_request()
        self.attempts = 0
        return self._run(request)

    def _run(self, request: dict[str, Any]) -> Generator[ModelEvent, None, None]:
        retry = 0
        while True:
            yielded = False
            stream = None
            try:
                try:
                    self.attempts += 1
                    stream = self._get_client().converse_stream(**request)["stream"]
                    events = iter(stream)
                    while True:
                        try:
                            raw = next(events)
                        except StopIteration:
                            return
                        event = _event_to_model_event(raw)
                        if event is not None:
                            yielded = True
                            yield event
                except Exception as exc:
                    # ClientError / EventStreamError, BotoCoreError (connection, timeout, credentials), and what
                    # the event-stream parser or urllib3 raise while reading a broken stream: all are upstream
                    # failures here. GeneratorExit (the consumer closed us) is not an Exception.
                    if yielded or not _is_throttle(exc):
                        code = _upstream_code(exc)
                        logger.warning(
                            "bedrock converse_stream failed",
                            extra={"upstream_code": code, "attempt": self.attempts, "mid_stream": yielded},
                        )
                        raise ModelInvocationError(upstream_code=code) from exc
                    if retry >= self.max_throttle_retries:
                        logger.warning(
                            "bedrock throttled beyond the retry budget",
                            extra={"upstream_code": _upstream_code(exc), "attempts": self.attempts},
                        )
                        raise ModelThrottledError(upstream_code=_upstream_code(exc)) from exc
                    delay = self._backoff_s(retry)
                    logger.info(
                        "bedrock throttled; retrying",
                        extra={"upstream_code": _upstream_code(exc), "attempt": self.attempts, "delay_s": delay},
                    )
            finally:
                if stream is not None:
                    try:
                        stream.close()
                    except Exception:  # closing a dead connection must not mask the real outcome
                        logger.debug("closing the bedrock stream failed", exc_info=True)
            self._sleep(delay)
            retry += 1
