"""EventPublisher against the local AppSync receiver over loopback; the Coalescer's batching properties."""

from __future__ import annotations

import json
import select
import shutil
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from email.message import Message
from typing import Any, cast

import pytest
from botocore.credentials import Credentials, ReadOnlyCredentials
from hypothesis import given
from hypothesis import strategies as st

from aigw.emulators.appsync_receiver import AppSyncReceiver
from runtime.appsync_publish import (
    MAX_EVENT_BYTES,
    Coalescer,
    EventPublisher,
    PublishConnectionError,
    PublishError,
    PublishResult,
    PublishValidationError,
    publish_retrying_failed,
)

REGION = "us-east-1"
CHANNEL = "/responses/user-1/conv-1"
CREDS = Credentials("AKIDEXAMPLE", "secret", "session-token")


@pytest.fixture
def receiver() -> Iterator[AppSyncReceiver]:
    with AppSyncReceiver({"AKIDEXAMPLE": "secret"}, region=REGION) as rcv:
        yield rcv


@pytest.fixture
def publisher(receiver: AppSyncReceiver) -> Iterator[EventPublisher]:
    with EventPublisher(receiver.endpoint_url, REGION, CREDS, timeout_s=2.0) as pub:
        yield pub


# --------------------------------------------------------------------------------------------- publisher


def test_publish_is_signed_accepted_and_recorded(
    receiver: AppSyncReceiver, publisher: EventPublisher
) -> None:
    events = [{"type": "delta", "text": "héllo"}, {"type": "done", "n": 2}]
    result = publisher.publish(CHANNEL, events)
    assert [entry["index"] for entry in result.successful] == [0, 1]
    assert result.failed == [] and result.ok
    assert receiver.received == [{"channel": CHANNEL, "events": events}]
    assert publisher.publish_count == 1


def test_ten_publishes_share_one_keep_alive_connection(
    receiver: AppSyncReceiver, publisher: EventPublisher
) -> None:
    for i in range(10):
        publisher.publish(CHANNEL, [{"i": i}])
    assert [r["events"] for r in receiver.received] == [[{"i": i}] for i in range(10)]
    assert publisher.publish_count == 10
    assert publisher.connections_opened == 1
    assert receiver.connections_accepted == 1


def test_wrong_secret_raises_publish_error_401(receiver: AppSyncReceiver) -> None:
    bad = Credentials("AKIDEXAMPLE", "wrong")
    with EventPublisher(receiver.endpoint_url, REGION, bad) as pub, pytest.raises(PublishError) as info:
        pub.publish(CHANNEL, [{"a": 1}])
    assert info.value.status == 401
    assert info.value.error_type == "UnauthorizedException"
    assert info.value.errors[0]["message"]
    assert receiver.received == []


def test_wrong_region_is_rejected(receiver: AppSyncReceiver) -> None:
    with (
        EventPublisher(receiver.endpoint_url, "eu-west-1", CREDS) as pub,
        pytest.raises(PublishError) as info,
    ):
        pub.publish(CHANNEL, [{"a": 1}])
    assert info.value.status == 401


@pytest.mark.parametrize(
    ("channel", "events"),
    [
        ("/responses/*", [{"a": 1}]),
        ("/responses//conv", [{"a": 1}]),
        ("/a/b/c/d/e/f", [{"a": 1}]),
        ("/-bad/x", [{"a": 1}]),
        (CHANNEL, []),
        (CHANNEL, [{"i": i} for i in range(6)]),
        (CHANNEL, [{"text": "x" * MAX_EVENT_BYTES}]),
        (CHANNEL, [{"n": float("nan")}]),
        (CHANNEL, [{"s": {1, 2}}]),
    ],
    ids=[
        "wildcard",
        "empty-segment",
        "six-segments",
        "leading-dash",
        "no-events",
        "six-events",
        "oversized",
        "nan",
        "set",
    ],
)
def test_invalid_publish_is_rejected_client_side(
    receiver: AppSyncReceiver, publisher: EventPublisher, channel: str, events: list[Any]
) -> None:
    with pytest.raises(PublishValidationError) as info:
        publisher.publish(channel, events)
    assert isinstance(info.value, ValueError)
    assert publisher.connections_opened == 0 and publisher.publish_count == 0
    assert receiver.received == []


def test_event_exactly_at_the_size_limit_is_accepted(
    receiver: AppSyncReceiver, publisher: EventPublisher
) -> None:
    overhead = len(json.dumps({"t": ""}, separators=(",", ":")))
    event = {"t": "é" * ((MAX_EVENT_BYTES - overhead) // 2)}  # 2 UTF-8 bytes per "é": the limit is in bytes
    assert len(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()) == MAX_EVENT_BYTES
    publisher.publish(CHANNEL, [event, {"after": True}])
    assert receiver.received[0]["events"][0] == event


def test_reconnects_after_server_restart(receiver: AppSyncReceiver, publisher: EventPublisher) -> None:
    publisher.publish(CHANNEL, [{"n": 1}])
    receiver.stop()
    receiver.start()
    publisher.publish(CHANNEL, [{"n": 2}])
    assert [r["events"] for r in receiver.received] == [[{"n": 1}], [{"n": 2}]]
    assert publisher.connections_opened == 2


def test_reconnects_when_server_closed_idle_connection(
    receiver: AppSyncReceiver, publisher: EventPublisher
) -> None:
    publisher.publish(CHANNEL, [{"n": 1}])
    receiver.drop_connections()
    publisher.publish(CHANNEL, [{"n": 2}])
    publisher.publish(CHANNEL, [{"n": 3}])
    assert len(receiver.received) == 3
    assert publisher.connections_opened == 2


def _dropping_receiver(drops: list[int]) -> AppSyncReceiver:
    """A receiver that cuts the connection instead of answering while ``drops[0]`` > 0 (then decrements)."""
    holder: dict[str, AppSyncReceiver] = {}

    def on_publish(channel: str, events: list[Any]) -> None:
        if drops[0] > 0:
            drops[0] -= 1
            holder["rcv"].drop_connections()

    holder["rcv"] = AppSyncReceiver({"AKIDEXAMPLE": "secret"}, on_publish=on_publish)
    return holder["rcv"]


def test_reused_connection_dying_mid_request_is_retried_once() -> None:
    drops = [0]
    with _dropping_receiver(drops) as rcv, EventPublisher(rcv.endpoint_url, REGION, CREDS) as pub:
        pub.publish(CHANNEL, [{"n": 1}])
        drops[0] = 1
        pub.publish(CHANNEL, [{"n": 2}])  # the first attempt is cut, the retry on a new connection succeeds
        assert pub.connections_opened == 2
        # The cut attempt had reached the server: the retry makes delivery at-least-once.
        assert [r["events"] for r in rcv.received] == [[{"n": 1}], [{"n": 2}], [{"n": 2}]]

        drops[0] = 2
        with pytest.raises(PublishConnectionError) as info:
            pub.publish(CHANNEL, [{"n": 3}])
        assert info.value.status is None
        assert pub.connections_opened == 3  # exactly one retry


def test_fresh_connection_failure_is_not_retried() -> None:
    with _dropping_receiver([1]) as rcv, EventPublisher(rcv.endpoint_url, REGION, CREDS) as pub:
        with pytest.raises(PublishConnectionError):
            pub.publish(CHANNEL, [{"n": 1}])
        assert pub.connections_opened == 1
        pub.publish(CHANNEL, [{"n": 2}])  # the publisher stays usable
        assert pub.connections_opened == 2


def test_connection_refused_raises_publish_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with EventPublisher(f"http://127.0.0.1:{port}/event", REGION, CREDS, timeout_s=1.0) as pub:
        with pytest.raises(PublishConnectionError):
            pub.publish(CHANNEL, [{"n": 1}])
        assert pub.connections_opened == 0


def test_default_credentials_are_resolved_lazily_once(
    receiver: AppSyncReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    import boto3

    sessions: list[Any] = []
    real_session = boto3.Session

    def counting_session(*args: Any, **kwargs: Any) -> Any:
        sessions.append(1)
        return real_session(*args, **kwargs)

    monkeypatch.setattr(boto3, "Session", counting_session)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with EventPublisher(receiver.endpoint_url, REGION) as pub:
        assert sessions == []
        pub.publish(CHANNEL, [{"n": 1}])
        pub.publish(CHANNEL, [{"n": 2}])
    assert sessions == [1]
    assert len(receiver.received) == 2


def test_credentials_are_frozen_per_request_so_rotation_is_picked_up() -> None:
    class Rotating:
        """Stands in for RefreshableCredentials: every freeze may return newer keys."""

        def __init__(self) -> None:
            self.keys = [
                ReadOnlyCredentials("AKIDOLD", "old-secret", None),
                ReadOnlyCredentials("AKIDNEW", "new", "t"),
            ]

        def get_frozen_credentials(self) -> ReadOnlyCredentials:
            return self.keys.pop(0) if len(self.keys) > 1 else self.keys[0]

    with (
        AppSyncReceiver({"AKIDOLD": "old-secret", "AKIDNEW": "new"}) as rcv,
        EventPublisher(rcv.endpoint_url, REGION, Rotating()) as pub,
    ):
        pub.publish(CHANNEL, [{"n": 1}])
        pub.publish(CHANNEL, [{"n": 2}])
        assert len(rcv.received) == 2


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A throwaway self-signed certificate for 127.0.0.1 (skips when no openssl CLI is installed)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


def _tls_contexts(tls_files: tuple[str, str]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = tls_files
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    return server_ctx, ssl.create_default_context(cafile=cert)


def test_https_publishes_reuse_one_tls_connection(tls_files: tuple[str, str]) -> None:
    server_ctx, client_ctx = _tls_contexts(tls_files)
    with (
        AppSyncReceiver({"AKIDEXAMPLE": "secret"}, ssl_context=server_ctx) as rcv,
        EventPublisher(rcv.endpoint_url, REGION, CREDS, ssl_context=client_ctx) as pub,
    ):
        assert rcv.endpoint_url.startswith("https://")
        for i in range(5):
            pub.publish(CHANNEL, [{"i": i}])
        assert pub.connections_opened == 1 and rcv.connections_accepted == 1
        rcv.drop_connections()
        pub.publish(CHANNEL, [{"i": 5}])
        assert pub.connections_opened == 2
        assert len(rcv.received) == 6


def test_tls_socket_readable_only_for_session_tickets_is_still_reusable(tls_files: tuple[str, str]) -> None:
    """TLS 1.3 session tickets make an idle socket readable with no application data: not a closed peer.

    Python's server sends them right after the handshake, so only a just-opened connection shows this;
    the private hooks are used because a publish always consumes them while reading its response.
    """
    server_ctx, client_ctx = _tls_contexts(tls_files)
    with (
        AppSyncReceiver({"AKIDEXAMPLE": "secret"}, ssl_context=server_ctx) as rcv,
        EventPublisher(rcv.endpoint_url, REGION, CREDS, ssl_context=client_ctx) as pub,
    ):
        conn = pub._connect()
        assert conn.sock is not None
        readable, _, _ = select.select([conn.sock], [], [], 2.0)
        assert readable and conn.sock.version() == "TLSv1.3"
        assert pub._reusable_connection() is conn
        pub.publish(CHANNEL, [{"i": 1}])
        assert pub.connections_opened == 1
        assert len(rcv.received) == 1


def test_endpoint_must_be_http_url() -> None:
    with pytest.raises(ValueError):
        EventPublisher("ftp://example.com/event", REGION, CREDS)


def test_coalescer_streams_through_publisher_to_receiver(
    receiver: AppSyncReceiver, publisher: EventPublisher
) -> None:
    clock = FakeClock()
    coalescer = Coalescer(CHANNEL, publisher.publish, clock=clock, common_fields={"requestId": "r1"})
    tokens = [f"tok{i} " for i in range(200)]
    for token in tokens:
        coalescer.add_delta(token)
        clock.advance(0.002)
    coalescer.add({"type": "done"})
    coalescer.close()
    events = [e for r in receiver.received for e in r["events"]]
    assert "".join(e["text"] for e in events if e["type"] == "delta") == "".join(tokens)
    assert events[-1] == {"type": "done"}
    assert all(e["requestId"] == "r1" for e in events if e["type"] == "delta")
    assert publisher.publish_count == coalescer.publish_count <= 10
    assert publisher.connections_opened == 1


# --------------------------------------------------------------------------------------------- coalescer


class FakeClock:
    """A manually advanced monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """A ``send`` callable that records publishes."""

    def __init__(self) -> None:
        self.publishes: list[tuple[str, list[Any]]] = []

    def __call__(self, channel: str, events: list[Any]) -> None:
        self.publishes.append((channel, [dict(e) for e in events]))

    @property
    def events(self) -> list[Any]:
        return [e for _, batch in self.publishes for e in batch]


def _merged(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Join adjacent ``("d", text)`` items: the stream's order-preserving view, blind to delta splits."""
    out: list[tuple[str, Any]] = []
    for kind, value in items:
        if kind == "d":
            if not value:
                continue
            if out and out[-1][0] == "d":
                out[-1] = ("d", out[-1][1] + value)
                continue
        out.append((kind, value))
    return out


_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("delta"), st.text(max_size=12)),
        st.tuples(st.just("event"), st.none()),
        st.tuples(st.just("advance"), st.integers(min_value=0, max_value=80)),  # milliseconds
        st.tuples(st.just("flush"), st.none()),
        st.tuples(st.just("poll"), st.none()),
    ),
    max_size=80,
)


@given(ops=_OPERATIONS, max_delta_chars=st.sampled_from([1, 3, 16, 8192]))
def test_coalescer_batches_without_losing_reordering_or_delaying(
    ops: list[tuple[str, Any]], max_delta_chars: int
) -> None:
    clock, send = FakeClock(), Recorder()
    interval = 0.05
    co = Coalescer(
        "/responses/u/c",
        send,
        flush_interval_s=interval,
        common_fields={"seq": 7},
        max_delta_chars=max_delta_chars,
        clock=clock,
    )
    submitted: list[tuple[str, Any]] = []
    times: list[tuple[float, str, Any]] = []  # (submit time, kind, value) of every non-empty submission
    next_id = 0
    for op, arg in ops:
        if op == "advance":
            clock.advance(arg / 1000)
            continue
        if op == "delta":
            co.add_delta(arg)
            submitted.append(("d", arg))
            if arg:
                times.append((clock.now, "d", arg))
        elif op == "event":
            co.add({"type": "tool", "id": next_id})
            submitted.append(("e", next_id))
            times.append((clock.now, "e", next_id))
            next_id += 1
        elif op == "flush":
            co.flush()
            assert co.pending == 0
        else:
            co.poll()
        # Independent of the coalescer's bookkeeping: the oldest submission not yet fully published.
        published_chars = sum(len(e["text"]) for e in send.events if e["type"] == "delta")
        published_ids = {e["id"] for e in send.events if e["type"] == "tool"}
        for at, kind, value in times:
            if kind == "d":
                if published_chars < len(value):
                    assert clock.now - at < interval
                    break
                published_chars -= len(value)
            elif value not in published_ids:
                assert clock.now - at < interval
                break
    co.close()
    assert co.pending == 0
    assert all(1 <= len(batch) <= 5 for _, batch in send.publishes)
    assert all(channel == "/responses/u/c" for channel, _ in send.publishes)
    for event in send.events:
        if event["type"] == "delta":
            assert 1 <= len(event["text"]) <= max_delta_chars
            assert event["seq"] == 7
    received = [("d", e["text"]) if e["type"] == "delta" else ("e", e["id"]) for e in send.events]
    assert _merged(received) == _merged(submitted)
    assert co.publish_count == len(send.publishes)


@given(
    stream=st.lists(
        st.tuples(st.text(alphabet="ab é\n", min_size=1, max_size=4), st.integers(min_value=0, max_value=10)),
        min_size=1,
        max_size=200,
    )
)
def test_fast_token_stream_costs_about_one_publish_per_interval(stream: list[tuple[str, int]]) -> None:
    """Tokens at most 10 ms apart: about one publish per 50 ms interval, never one per token."""
    clock, send = FakeClock(), Recorder()
    co = Coalescer("/responses/u/c", send, clock=clock)
    start = clock.now
    for token, gap_ms in stream:
        co.add_delta(token)
        clock.advance(gap_ms / 1000)
    elapsed = clock.now - start
    co.close()
    assert len(send.publishes) <= int(elapsed / co.flush_interval_s) + 2
    assert "".join(e["text"] for e in send.events) == "".join(token for token, _ in stream)


def test_thousand_single_token_deltas_take_about_two_hundred_publishes() -> None:
    clock, send = FakeClock(), Recorder()
    co = Coalescer("/responses/u/c", send, clock=clock)
    for i in range(1000):
        co.add_delta(str(i % 10))
        clock.advance(0.01)
    co.close()
    assert 150 <= len(send.publishes) <= 1000 * 0.01 / 0.05 + 2
    assert all(len(batch) == 1 for _, batch in send.publishes)  # consecutive deltas merged into one event
    assert "".join(e["text"] for e in send.events) == "".join(str(i % 10) for i in range(1000))


def test_merged_delta_carries_common_fields_and_add_ends_it() -> None:
    clock, send = FakeClock(), Recorder()
    co = Coalescer("/r/u/c", send, clock=clock, first_text_at_once=False, common_fields={"requestId": "r1"})
    co.add_delta("Hel")
    co.add_delta("lo")
    co.add({"type": "tool_use", "name": "x"})
    co.add_delta(" world")
    assert send.publishes == [] and co.pending == 3
    co.flush()
    assert send.publishes == [
        (
            "/r/u/c",
            [
                {"type": "delta", "text": "Hello", "requestId": "r1"},
                {"type": "tool_use", "name": "x"},
                {"type": "delta", "text": " world", "requestId": "r1"},
            ],
        )
    ]


def test_sixth_event_sends_the_first_five() -> None:
    clock, send = FakeClock(), Recorder()
    co = Coalescer("/r/u/c", send, clock=clock)
    for i in range(5):
        co.add({"i": i})
    assert send.publishes == []
    co.add({"i": 5})
    assert [len(batch) for _, batch in send.publishes] == [5]
    assert co.pending == 1


def test_long_text_is_split_into_bounded_delta_events() -> None:
    clock, send = FakeClock(), Recorder()
    co = Coalescer("/r/u/c", send, clock=clock, max_delta_chars=4)
    co.add_delta("abcdefghijklmnopqrstuvwxyz")  # 7 events: one full publish of 5, 2 left pending
    assert [[e["text"] for e in batch] for _, batch in send.publishes] == [
        ["abcd", "efgh", "ijkl", "mnop", "qrst"]
    ]
    co.close()
    assert [e["text"] for e in send.events][5:] == ["uvwx", "yz"]


def test_deadline_poll_and_seconds_until_flush() -> None:
    clock, send = FakeClock(), Recorder()
    co = Coalescer("/r/u/c", send, clock=clock, first_text_at_once=False, flush_interval_s=0.05)
    assert co.seconds_until_flush() is None
    co.add_delta("a")
    clock.advance(0.03)
    assert co.seconds_until_flush() == pytest.approx(0.02)
    assert co.poll() is False
    clock.advance(0.03)
    assert co.seconds_until_flush() == 0.0
    assert co.poll() is True
    assert send.events == [{"type": "delta", "text": "a"}]


def test_failed_send_keeps_the_batch_pending() -> None:
    clock = FakeClock()
    sent: list[list[Any]] = []
    failing = [True]

    def send(channel: str, events: list[Any]) -> None:
        if failing[0]:
            raise PublishError(503, [{"errorType": "ServiceUnavailable"}])
        sent.append(events)

    co = Coalescer("/r/u/c", send, clock=clock, first_text_at_once=False)
    co.add_delta("a")
    clock.advance(0.06)
    with pytest.raises(PublishError):
        co.add_delta("b")
    assert co.pending == 1
    failing[0] = False
    co.close()
    assert sent == [[{"type": "delta", "text": "ab"}]]
    with pytest.raises(RuntimeError):
        co.add({"late": True})


def test_common_fields_cannot_shadow_type_or_text() -> None:
    with pytest.raises(ValueError):
        Coalescer("/r/u/c", Recorder(), common_fields={"text": "x"})


def test_the_first_text_goes_out_at_once_and_later_text_is_coalesced() -> None:
    clock, send = FakeClock(), Recorder()
    co = Coalescer("/r/u/c", send, clock=clock)
    co.add({"type": "start"})
    assert send.publishes == []  # a start alone waits for the first text
    co.add_delta("Hel")
    assert send.publishes == [("/r/u/c", [{"type": "start"}, {"type": "delta", "text": "Hel"}])]
    co.add_delta("lo")
    co.add_delta(" world")
    assert len(send.publishes) == 1  # after the first text, the interval rules again


# --------------------------------------------------------------------------------------------- partial failures


class RejectingReceiver(AppSyncReceiver):
    """An AppSync receiver that answers 200 with some events in ``failed``, as AppSync does for a partial failure.

    ``reject(event)`` is asked about every event of every publish; a rejected event is answered in ``failed``
    (``identifier``, ``index``, ``code``, ``message``) and not delivered. ``bodies`` holds every publish's events
    as sent, first attempts and retries alike; ``received`` holds only what was delivered.
    """

    def __init__(self, reject: Callable[[Any], bool], credentials: Mapping[str, str] | None = None) -> None:
        super().__init__(credentials or {"AKIDEXAMPLE": "secret"}, region=REGION)
        self.reject = reject
        self.bodies: list[list[Any]] = []
        self._delivered: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    @property
    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._delivered)

    def _handle(self, method: str, path: str, headers: Message, body: bytes) -> tuple[int, dict[str, Any]]:
        status, answer = super()._handle(method, path, headers, body)  # signature and limits, as AppSync
        payload = json.loads(body)
        events = [json.loads(text) for text in payload["events"]]
        rejected = [index for index, event in enumerate(events) if self.reject(event)]
        with self._lock:
            self.bodies.append(events)
            delivered = [event for index, event in enumerate(events) if index not in rejected]
            if delivered:
                self._delivered.append({"channel": payload["channel"], "events": delivered})
        failed = [
            {"identifier": str(uuid.uuid4()), "index": index, "code": 500, "message": "simulated AppSync failure"}
            for index in rejected
        ]
        successful = [entry for entry in answer["successful"] if entry["index"] not in rejected]
        return status, {"successful": successful, "failed": failed}


def rejecting(kind: str, times: int) -> Callable[[Any], bool]:
    """A ``reject`` rule for `RejectingReceiver`: the first ``times`` events of ``type`` ``kind`` are refused."""
    left = [times]

    def reject(event: Any) -> bool:
        if isinstance(event, dict) and event.get("type") == kind and left[0] > 0:
            left[0] -= 1
            return True
        return False

    return reject


def test_only_the_refused_events_are_published_again_once() -> None:
    events = [{"type": "x", "n": 0}, {"type": "y", "n": 1}, {"type": "x", "n": 2}]
    with RejectingReceiver(rejecting("x", 2)) as rcv, EventPublisher(rcv.endpoint_url, REGION, CREDS) as pub:
        result = publish_retrying_failed(pub.publish, CHANNEL, events)
    assert rcv.bodies == [events, [events[0], events[2]]]  # the retry carries the refused events only
    assert result.ok and sorted(entry["index"] for entry in result.successful) == [0, 1, 2]
    assert [e for r in rcv.received for e in r["events"]] == [events[1], events[0], events[2]]


def test_events_refused_twice_are_reported_at_their_original_index_after_one_retry() -> None:
    events = [{"type": "x", "n": 0}, {"type": "y", "n": 1}, {"type": "x", "n": 2}]
    with RejectingReceiver(rejecting("x", 99)) as rcv, EventPublisher(rcv.endpoint_url, REGION, CREDS) as pub:
        result = publish_retrying_failed(pub.publish, CHANNEL, events)
        assert pub.publish_count == 2  # bounded: one retry, of the refused subset
    assert rcv.bodies == [events, [events[0], events[2]]]
    assert [entry["index"] for entry in result.failed] == [0, 2]
    assert [entry["code"] for entry in result.failed] == [500, 500]
    assert [entry["index"] for entry in result.successful] == [1]


def test_a_retry_that_cannot_be_sent_leaves_the_first_refusals_standing() -> None:
    answers: list[Any] = [PublishResult(successful=[{"index": 0}], failed=[{"index": 1, "code": 500}])]

    def send(channel: str, events: list[Any]) -> PublishResult:
        if not answers:
            raise PublishConnectionError("gone")
        return cast(PublishResult, answers.pop(0))

    result = publish_retrying_failed(send, CHANNEL, [{"n": 0}, {"n": 1}])
    assert [entry["index"] for entry in result.failed] == [1] and [e["index"] for e in result.successful] == [0]


def test_coalescer_keeps_the_events_appsync_refused_as_undelivered() -> None:
    clock, sent = FakeClock(), Recorder()

    def send(channel: str, events: list[Any]) -> PublishResult:
        sent(channel, events)
        refused = [index for index, event in enumerate(events) if event.get("type") == "delta"]
        return PublishResult(
            successful=[{"index": i} for i in range(len(events)) if i not in refused],
            failed=[{"index": i, "code": 500} for i in refused],
        )

    co = Coalescer("/r/u/c", send, clock=clock)
    co.add({"type": "start"})
    co.add_delta("lost")
    co.add({"type": "end"})
    co.close()
    assert co.undelivered == [{"type": "delta", "text": "lost"}]
    assert co.pending == 0 and len(sent.publishes) == 2  # refused events are not re-sent by the coalescer
