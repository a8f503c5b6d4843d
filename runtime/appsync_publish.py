"""Publish events to an AWS AppSync Events API over HTTP, and coalesce a token stream into few publishes.

``EventPublisher`` sends ``POST /event`` requests signed with IAM SigV4 (service ``appsync``) over one reused
keep-alive connection. ``Coalescer`` sits in front of it for one channel: it merges consecutive text deltas
into one event and batches events (at most 5 per publish, AppSync's limit) so a streamed answer costs about
one publish per flush interval instead of one per token. ``publish_retrying_failed`` publishes again, once, the
events AppSync answered in ``failed`` (a 200 answer: the others were delivered).

Lambda code: imports only the standard library and botocore (boto3 lazily, for default credentials).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import re
import select
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import NoCredentialsError

from runtime.errors import GatewayError, InvalidInputError

__all__ = [
    "DEFAULT_FLUSH_INTERVAL_S",
    "DEFAULT_MAX_DELTA_CHARS",
    "MAX_EVENTS_PER_PUBLISH",
    "MAX_EVENT_BYTES",
    "Coalescer",
    "EventPublisher",
    "PublishConnectionError",
    "PublishError",
    "PublishResult",
    "PublishValidationError",
    "failed_entry_index",
    "publish_retrying_failed",
    "serialize_event",
    "validate_channel",
]

logger = logging.getLogger(__name__)

# AppSync Events quotas: a publish carries 1-5 events and each event is at most 240 KB.
MAX_EVENTS_PER_PUBLISH = 5
MAX_EVENT_BYTES = 240 * 1024

DEFAULT_FLUSH_INTERVAL_S = 0.05
# Merged delta text is bounded in characters; even fully escaped JSON (6 bytes per char for control
# characters) keeps an 8192-char delta near 48 KB, far below MAX_EVENT_BYTES.
DEFAULT_MAX_DELTA_CHARS = 8192

# AppSync channel segment (same rule as a namespace name); a channel has at most 5 segments.
_SEGMENT_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,48}[A-Za-z0-9])?")
_MAX_CHANNEL_SEGMENTS = 5

# Errors meaning the peer closed a reused keep-alive connection before answering (RemoteDisconnected is a
# ConnectionResetError). Timeouts are not here: the server may still be processing the request.
_STALE_CONNECTION_ERRORS = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


# --------------------------------------------------------------------------------------------- errors


class PublishValidationError(InvalidInputError):
    """The publish was rejected client-side (bad channel, event count or event size); nothing was sent."""


class PublishError(GatewayError):
    """AppSync answered a publish with a non-2xx ``status``; ``errors`` is its parsed error list."""

    def __init__(self, status: int | None, errors: list[dict[str, Any]], message: str | None = None) -> None:
        self.status = status
        self.errors = errors
        if message is None:
            first = errors[0] if errors else {}
            message = f"AppSync publish failed with HTTP {status}: {first.get('errorType', 'UnknownError')}"
            if first.get("message"):
                message += f": {first['message']}"
        super().__init__(message)

    @property
    def error_type(self) -> str | None:
        """``errorType`` of the first error, e.g. ``UnauthorizedException``."""
        return self.errors[0].get("errorType") if self.errors else None


class PublishConnectionError(PublishError):
    """No HTTP answer: connecting to or talking with the endpoint failed (``status`` None; see __cause__)."""

    def __init__(self, message: str) -> None:
        super().__init__(None, [], message)


# --------------------------------------------------------------------------------------------- validation


def validate_channel(channel: str) -> None:
    """Raise ``PublishValidationError`` unless ``channel`` is a publishable AppSync channel path.

    Optional leading ``/``, 1-5 segments of alphanumerics and inner dashes (1-50 chars), no wildcard.
    """
    if not isinstance(channel, str):
        raise PublishValidationError(f"channel must be a string, got {type(channel).__name__}")
    segments = channel.removeprefix("/").split("/")
    if len(segments) > _MAX_CHANNEL_SEGMENTS:
        raise PublishValidationError(f"channel {channel!r} has more than {_MAX_CHANNEL_SEGMENTS} segments")
    for segment in segments:
        if "*" in segment:
            raise PublishValidationError(f"channel {channel!r}: wildcards cannot be published to")
        if not _SEGMENT_RE.fullmatch(segment):
            raise PublishValidationError(f"channel {channel!r}: invalid segment {segment!r}")


def serialize_event(event: Any) -> str:
    """Compact JSON text of one event, checked against AppSync's per-event size limit."""
    try:
        text = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PublishValidationError(f"event is not JSON-serialisable: {exc}") from exc
    size = len(text.encode("utf-8"))
    if size > MAX_EVENT_BYTES:
        raise PublishValidationError(f"event is {size} bytes, over the {MAX_EVENT_BYTES}-byte AppSync limit")
    return text


# --------------------------------------------------------------------------------------------- publisher


@dataclass(frozen=True)
class PublishResult:
    """AppSync's answer to a publish: per-event ``successful``/``failed`` entries (``index`` = position)."""

    successful: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no event was rejected."""
        return not self.failed

    def failed_indexes(self, count: int) -> list[int]:
        """Positions (in a publish of ``count`` events) of the rejected events, ascending; bad indexes skipped."""
        return sorted({i for entry in self.failed if (i := failed_entry_index(entry)) is not None and 0 <= i < count})


def failed_entry_index(entry: Any) -> int | None:
    """The ``index`` of a ``successful``/``failed`` answer entry, or None when it names no integer."""
    index = entry.get("index") if isinstance(entry, dict) else None
    return index if type(index) is int else None


def publish_retrying_failed(
    send: Callable[[str, list[Any]], PublishResult], channel: str, events: list[Any]
) -> PublishResult:
    """Publish ``events``; publish the ones AppSync answered in ``failed`` again, once, and nothing else.

    The answer's indexes refer to positions in ``events``; what is still in ``failed`` was refused twice (or
    the retry could not be sent). Exceptions of the first publish propagate, as from ``send``.
    """
    first = send(channel, events)
    refused = first.failed_indexes(len(events))
    if not refused:
        return first
    try:
        retry = send(channel, [events[i] for i in refused])
    except PublishError as exc:
        # The refusals stand; the caller reports them. One retry is the budget, whatever went wrong.
        logger.warning("AppSync publish retry failed (%s); %d events stay undelivered", exc, len(refused))
        return first

    def original(entry: dict[str, Any]) -> dict[str, Any]:
        index = failed_entry_index(entry)
        return {**entry, "index": refused[index]} if index is not None and 0 <= index < len(refused) else entry

    retried = set(refused)
    return PublishResult(
        successful=first.successful + [original(entry) for entry in retry.successful],
        # Entries of the first answer that named no usable index could not be retried: they stay failed.
        failed=[e for e in first.failed if failed_entry_index(e) not in retried] + [original(e) for e in retry.failed],
    )


class _CredentialsLike(Protocol):
    def get_frozen_credentials(self) -> ReadOnlyCredentials: ...


class EventPublisher:
    """Publishes events to ``http_endpoint`` (the API's ``https://<host>/event``) with SigV4 ``appsync``.

    ``credentials`` is a botocore credentials object (frozen per request, so refreshed credentials are
    picked up) or ``None`` for ``boto3.Session().get_credentials()``, resolved on first publish. One
    keep-alive connection is reused across publishes; if the server closed it, the publish reconnects once.
    ``publish_count`` (publishes that got an HTTP answer) and ``connections_opened`` are for benchmarks.
    ``ssl_context`` replaces the default (system CAs) for https, e.g. to trust a local test certificate.
    Not thread-safe: use one publisher per thread.
    """

    def __init__(
        self,
        http_endpoint: str,
        region: str,
        credentials: _CredentialsLike | ReadOnlyCredentials | None = None,
        timeout_s: float = 5.0,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(http_endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"http_endpoint must be an http(s) URL, got {http_endpoint!r}")
        self.http_endpoint = http_endpoint
        self.region = region
        self.timeout_s = timeout_s
        self._scheme = parts.scheme
        self._hostname = parts.hostname
        self._port = parts.port
        # The Host header is set explicitly so the signed value and the sent value are the same string.
        default_port = 443 if parts.scheme == "https" else 80
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        self._host_header = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._credentials = credentials
        self._conn: http.client.HTTPConnection | None = None
        self._ssl_context = ssl_context
        self.publish_count = 0
        self.connections_opened = 0

    # -- public API ----------------------------------------------------------------------------------

    def publish(self, channel: str, events: list[Any]) -> PublishResult:
        """Publish 1-5 JSON-serialisable events to ``channel``; raises ``PublishError`` on a non-2xx answer.

        Client-side problems raise ``PublishValidationError`` before anything is sent.
        """
        body = self._encode(channel, events)
        headers = self._sign(body)
        status, data = self._send(body, headers)
        self.publish_count += 1
        return self._parse(status, data)

    def close(self) -> None:
        """Close the kept-alive connection (a later publish reconnects)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- request building ----------------------------------------------------------------------------

    @staticmethod
    def _encode(channel: str, events: list[Any]) -> bytes:
        validate_channel(channel)
        if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS_PER_PUBLISH:
            count = len(events) if isinstance(events, list) else type(events).__name__
            raise PublishValidationError(f"a publish carries 1-{MAX_EVENTS_PER_PUBLISH} events, got {count}")
        payload = {"channel": channel, "events": [serialize_event(e) for e in events]}
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def _frozen_credentials(self) -> ReadOnlyCredentials:
        if self._credentials is None:
            import boto3  # lazily: resolving the default chain at import time would slow cold starts

            self._credentials = boto3.Session().get_credentials()
            if self._credentials is None:
                raise NoCredentialsError()
        getter = getattr(self._credentials, "get_frozen_credentials", None)
        return cast(ReadOnlyCredentials, getter() if getter is not None else self._credentials)

    def _sign(self, body: bytes) -> dict[str, str]:
        request = AWSRequest(
            method="POST",
            url=self.http_endpoint,
            data=body,
            headers={"Host": self._host_header, "Content-Type": "application/json"},
        )
        SigV4Auth(self._frozen_credentials(), "appsync", self.region).add_auth(request)
        return dict(request.headers.items())

    # -- transport -----------------------------------------------------------------------------------

    def _connect(self) -> http.client.HTTPConnection:
        self.close()
        conn: http.client.HTTPConnection
        if self._scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()  # loading CA certificates costs ~10 ms
            conn = http.client.HTTPSConnection(
                self._hostname, self._port, timeout=self.timeout_s, context=self._ssl_context
            )
        else:
            conn = http.client.HTTPConnection(self._hostname, self._port, timeout=self.timeout_s)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise PublishConnectionError(f"cannot connect to {self.http_endpoint}: {exc}") from exc
        self._conn = conn
        self.connections_opened += 1
        return conn

    def _reusable_connection(self) -> http.client.HTTPConnection | None:
        """The kept-alive connection, unless it is gone or the peer has already closed it."""
        conn = self._conn
        if conn is None or conn.sock is None:
            return None
        sock = conn.sock
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return None
        if not readable:
            return conn
        # An idle socket turns readable on FIN, on stray bytes, or (TLS 1.3) on a late session ticket that
        # carries no application data. A non-blocking read tells them apart.
        alive = False
        try:
            sock.setblocking(False)
            sock.recv(1)  # b"" is EOF; any byte means the response stream is out of sync
        except (BlockingIOError, ssl.SSLWantReadError):
            alive = True
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(self.timeout_s)
        if not alive:
            logger.debug("AppSync keep-alive connection closed by the peer while idle; reconnecting")
            self.close()
            return None
        return conn

    def _send(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        conn = self._reusable_connection()
        if conn is not None:
            try:
                return self._roundtrip(conn, body, headers)
            except _STALE_CONNECTION_ERRORS as exc:
                # The server dropped the reused connection without answering (idle-timeout race): retry
                # once on a fresh one. A server that processed the request and then died sees it twice.
                logger.debug("AppSync keep-alive connection dropped (%r); retrying once", exc)
                self.close()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise PublishConnectionError(f"publish to {self.http_endpoint} failed: {exc!r}") from exc
        conn = self._connect()
        try:
            return self._roundtrip(conn, body, headers)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise PublishConnectionError(f"publish to {self.http_endpoint} failed: {exc!r}") from exc

    def _roundtrip(self, conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        conn.request("POST", self._path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()  # read fully, or the connection cannot be reused
        if response.will_close:
            self.close()
        return response.status, data

    @staticmethod
    def _parse(status: int, data: bytes) -> PublishResult:
        try:
            parsed = json.loads(data) if data else {}
        except ValueError:
            parsed = None
        if not 200 <= status < 300:
            errors = parsed.get("errors") if isinstance(parsed, dict) else None
            if not isinstance(errors, list):
                snippet = data[:200].decode("utf-8", "replace")
                errors = [{"errorType": "UnknownError", "message": f"unparseable error body: {snippet!r}"}]
            raise PublishError(status, errors)
        if not isinstance(parsed, dict):
            raise PublishError(status, [], f"AppSync answered HTTP {status} with a non-JSON-object body")
        return PublishResult(successful=list(parsed.get("successful") or []), failed=list(parsed.get("failed") or []))


# --------------------------------------------------------------------------------------------- coalescer


@dataclass
class _Pending:
    """One buffered event: a non-delta event as given, or a delta whose text is still being merged."""

    created_at: float
    event: Any = None
    parts: list[str] | None = None  # delta text pieces; joined once, at send time
    chars: int = 0
    sent: Any = None  # the event as first sent: a retry resends it unchanged (same text, same seq)


class Coalescer:
    """Buffers one channel's events and hands them to ``send(channel, events)`` in few, small publishes.

    Consecutive ``add_delta`` texts merge into one ``{"type": "delta", "text": ..., **common_fields}`` event
    (at most ``max_delta_chars`` characters each); ``add`` appends an event as-is. A publish carries at most
    5 events. The flush decision runs on every call, with time from ``clock``: the first text is sent at
    once, and after that everything pending is sent once the oldest pending event is ``flush_interval_s``
    old. With ``sequence`` each event sent gets ``seq`` (0, 1, 2 ... in send order), fixed at its first send. No
    thread runs in the background, so a caller that may go quiet should call ``poll()``
    (``seconds_until_flush()`` tells when). If ``send`` raises, the batch stays pending and the exception
    propagates; the next flush retries it. If ``send`` returns a ``PublishResult`` with ``failed`` entries,
    those events go to ``undelivered`` and are not sent again here (``send`` owns retrying, e.g. with
    ``publish_retrying_failed``). Not thread-safe.
    """

    def __init__(
        self,
        channel: str,
        send: Callable[[str, list[Any]], object],
        *,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        common_fields: Mapping[str, Any] | None = None,
        max_delta_chars: int = DEFAULT_MAX_DELTA_CHARS,
        clock: Callable[[], float] = time.monotonic,
        first_text_at_once: bool = True,
        sequence: bool = False,
    ) -> None:
        common = dict(common_fields or {})
        if {"type", "text"} & common.keys():
            raise ValueError("common_fields must not contain 'type' or 'text'")
        if flush_interval_s < 0:
            raise ValueError("flush_interval_s must be >= 0")
        if max_delta_chars < 1:
            raise ValueError("max_delta_chars must be >= 1")
        self.channel = channel
        self.flush_interval_s = flush_interval_s
        self.max_delta_chars = max_delta_chars
        self._send = send
        self._common = common
        self._clock = clock
        self._pending: list[_Pending] = []
        self._closed = False
        self._first_text_at_once = first_text_at_once
        self.publish_count = 0
        self._sequence = sequence
        self.next_seq = 0  # the seq the next event sent gets (with ``sequence``)
        self.undelivered: list[Any] = []  # events AppSync refused, in publish order

    @property
    def pending(self) -> int:
        """Number of buffered events (a merged delta counts once)."""
        return len(self._pending)

    def add_delta(self, text: str) -> None:
        """Append streamed text, merging it into the pending delta event when there is one."""
        self._check_open()
        now = self._clock()
        while text:
            last = self._pending[-1] if self._pending else None
            if last is None or last.parts is None or last.sent is not None or last.chars >= self.max_delta_chars:
                parts: list[str] = []
                last = _Pending(created_at=now, parts=parts)
                self._pending.append(last)
            else:
                parts = last.parts
            room = self.max_delta_chars - last.chars
            piece, text = text[:room], text[room:]
            parts.append(piece)
            last.chars += len(piece)
        self._settle(now)

    def add(self, event: Any) -> None:
        """Append a non-delta event as-is (it also ends the current delta: later text starts a new one)."""
        self._check_open()
        now = self._clock()
        self._pending.append(_Pending(created_at=now, event=event))
        self._settle(now)

    def poll(self) -> bool:
        """Flush if the oldest pending event reached the flush interval; True when something was sent."""
        return self._flush_if_due(self._clock())

    def seconds_until_flush(self) -> float | None:
        """Seconds until ``poll()`` would flush (0 when overdue), or None when nothing is pending."""
        if not self._pending:
            return None
        return max(0.0, self._pending[0].created_at + self.flush_interval_s - self._clock())

    def flush(self) -> None:
        """Send everything pending now, in publishes of at most 5 events."""
        while self._pending:
            self._send_batch(min(len(self._pending), MAX_EVENTS_PER_PUBLISH))

    def close(self) -> None:
        """Flush the rest; later adds raise."""
        self.flush()
        self._closed = True

    # -- internals -----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("coalescer is closed")

    def _settle(self, now: float) -> None:
        """After buffering: send full batches, then everything if the oldest event is due."""
        # Full batches go only once a sixth event exists: the fifth may be a delta that was still growing.
        # The buffer is updated before any send, so a failing send loses nothing.
        while len(self._pending) > MAX_EVENTS_PER_PUBLISH:
            self._send_batch(MAX_EVENTS_PER_PUBLISH)
        self._flush_if_due(now)

    def _flush_if_due(self, now: float) -> bool:
        # The first text goes out at once (with whatever preceded it): time to first token is what users feel.
        first_text = (
            self._first_text_at_once and self.publish_count == 0 and any(p.parts is not None for p in self._pending)
        )
        if self._pending and (first_text or now - self._pending[0].created_at >= self.flush_interval_s):
            self.flush()
            return True
        return False

    def _send_batch(self, count: int) -> None:
        batch = [self._materialize(item) for item in self._pending[:count]]
        result = self._send(self.channel, batch)
        del self._pending[:count]  # only once sent: a failed send leaves the batch pending
        self.publish_count += 1
        if isinstance(result, PublishResult):
            self.undelivered.extend(batch[i] for i in result.failed_indexes(len(batch)))

    def _materialize(self, item: _Pending) -> Any:
        if item.sent is None:
            event = item.event if item.parts is None else {"type": "delta", "text": "".join(item.parts), **self._common}
            if self._sequence and isinstance(event, dict):
                event, self.next_seq = {**event, "seq": self.next_seq}, self.next_seq + 1
            item.sent = event
        return item.sent
