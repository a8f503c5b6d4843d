"""The AppSync Events receiver checks SigV4 and the publish body like AppSync, over raw HTTP/1.1 requests.

Requests here are signed with botocore directly (not with the runtime's publisher), so the receiver is
checked against an independent client.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from aigw.emulators.appsync_receiver import MAX_EVENT_BYTES, AppSyncReceiver, channel_error

REGION = "us-east-1"
SECRETS = {"AKIDEXAMPLE": "secret"}
CHANNEL = "/responses/user-1/conv-1"


@pytest.fixture
def receiver() -> Iterator[AppSyncReceiver]:
    with AppSyncReceiver(SECRETS, region=REGION) as rcv:
        yield rcv


def _body(channel: Any = CHANNEL, events: Any = None) -> bytes:
    if events is None:
        events = [json.dumps({"type": "delta", "text": "hi"})]
    return json.dumps({"channel": channel, "events": events}).encode()


def _sign(
    url: str,
    body: bytes,
    *,
    key: str = "AKIDEXAMPLE",
    secret: str = "secret",
    token: str | None = "session-token",
    region: str = REGION,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """Headers of a botocore-SigV4-signed ``POST url`` carrying ``body``."""
    headers = {"Host": urlsplit(url).netloc, "Content-Type": "application/json", **(extra or {})}
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(Credentials(key, secret, token), "appsync", region).add_auth(request)
    return dict(request.headers.items())


def _post(
    conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str], path: str = "/event"
) -> tuple[int, dict[str, Any]]:
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


@pytest.fixture
def conn(receiver: AppSyncReceiver) -> Iterator[http.client.HTTPConnection]:
    parts = urlsplit(receiver.endpoint_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    yield connection
    connection.close()


def _error(answer: dict[str, Any]) -> tuple[str, str]:
    (error,) = answer["errors"]
    return error["errorType"], error["message"]


# --------------------------------------------------------------------------------------------- acceptance


def test_signed_publish_is_accepted_recorded_and_answered_like_appsync(
    receiver: AppSyncReceiver, conn: http.client.HTTPConnection
) -> None:
    events = [json.dumps({"type": "delta", "text": "a"}), json.dumps([1, "two"]), json.dumps("three")]
    body = _body(events=events)
    status, answer = _post(conn, body, _sign(receiver.endpoint_url, body))
    assert status == 200
    assert answer["failed"] == []
    assert [entry["index"] for entry in answer["successful"]] == [0, 1, 2]
    assert all(uuid.UUID(entry["identifier"]) for entry in answer["successful"])
    parsed = [{"type": "delta", "text": "a"}, [1, "two"], "three"]
    assert receiver.received == [{"channel": CHANNEL, "events": parsed}]


def test_keep_alive_serves_many_requests_on_one_connection(
    receiver: AppSyncReceiver, conn: http.client.HTTPConnection
) -> None:
    good, bad = _body(), _body(events=[])
    statuses = [
        _post(conn, body, _sign(receiver.endpoint_url, body))[0] for body in (good, bad, good, good)
    ]  # error answers keep the connection usable too
    assert statuses == [200, 400, 200, 200]
    assert receiver.connections_accepted == 1
    assert len(receiver.received) == 3


def test_on_publish_callback_sees_parsed_events() -> None:
    seen: list[tuple[str, list[Any]]] = []
    with AppSyncReceiver(SECRETS, on_publish=lambda ch, ev: seen.append((ch, ev))) as rcv:
        parts = urlsplit(rcv.endpoint_url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        body = _body()
        assert _post(connection, body, _sign(rcv.endpoint_url, body))[0] == 200
        connection.close()
    assert seen == [(CHANNEL, [{"type": "delta", "text": "hi"}])]


def test_failing_on_publish_answers_500_and_records_nothing() -> None:
    def boom(channel: str, events: list[Any]) -> None:
        raise RuntimeError("fan-out broke")

    with AppSyncReceiver(SECRETS, on_publish=boom) as rcv:
        parts = urlsplit(rcv.endpoint_url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        body = _body()
        status, answer = _post(connection, body, _sign(rcv.endpoint_url, body))
        connection.close()
        assert status == 500
        assert _error(answer)[0] == "InternalFailureException"
        assert rcv.received == []


# --------------------------------------------------------------------------------------------- signature


def test_unknown_access_key_is_unauthorized(
    receiver: AppSyncReceiver, conn: http.client.HTTPConnection
) -> None:
    body = _body()
    status, answer = _post(conn, body, _sign(receiver.endpoint_url, body, key="AKIDOTHER"))
    assert status == 401
    assert _error(answer)[0] == "UnauthorizedException"


def test_wrong_secret_is_unauthorized(receiver: AppSyncReceiver, conn: http.client.HTTPConnection) -> None:
    body = _body()
    status, answer = _post(conn, body, _sign(receiver.endpoint_url, body, secret="not-the-secret"))
    assert status == 401
    assert "signature does not match" in _error(answer)[1]


def test_tampered_body_is_unauthorized(receiver: AppSyncReceiver, conn: http.client.HTTPConnection) -> None:
    headers = _sign(receiver.endpoint_url, _body(events=[json.dumps({"text": "hello"})]))
    status, answer = _post(conn, _body(events=[json.dumps({"text": "HACKED"})]), headers)
    assert status == 401
    assert "signature does not match" in _error(answer)[1]
    assert receiver.received == []


def test_declared_payload_hash_must_match_the_body(
    receiver: AppSyncReceiver, conn: http.client.HTTPConnection
) -> None:
    original = _body(events=[json.dumps({"text": "hello"})])
    declared = {"X-Amz-Content-SHA256": hashlib.sha256(original).hexdigest()}
    headers = _sign(receiver.endpoint_url, original, extra=declared)
    assert _post(conn, original, headers)[0] == 200
    status, answer = _post(conn, _body(events=[json.dumps({"text": "HACKED"})]), headers)
    assert status == 401
    assert "X-Amz-Content-SHA256" in _error(answer)[1]


@pytest.mark.parametrize("header", ["X-Amz-Date", "Host", "X-Amz-Security-Token"])
def test_tampered_signed_header_is_unauthorized(
    receiver: AppSyncReceiver, conn: http.client.HTTPConnection, header: str
) -> None:
    body = _body()
    headers = _sign(receiver.endpoint_url, body)
    headers[header] = headers[header][:-1] + ("0" if headers[header][-1] != "0" else "1")
    assert _post(conn, body, headers)[0] == 401


def test_unsigned_security_token_is_unauthorized(
    receiver: AppSyncReceiver, conn: http.client.HTTPConnection
) -> None:
    body = _body()
    headers = _sign(receiver.endpoint_url, body, token=None)
    assert _post(conn, body, headers)[0] == 200  # no token at all is fine (long-term keys)
    headers["X-Amz-Security-Token"] = "added-after-signing"
    assert _post(conn, body, headers)[0] == 401


def test_missing_or_malformed_authorization_is_unauthorized(
    receiver: AppSyncReceiver, conn: http.client.HTTPConnection
) -> None:
    body = _body()
    headers = _sign(receiver.endpoint_url, body)
    del headers["Authorization"]
    assert _post(conn, body, headers)[0] == 401
    headers["Authorization"] = "Bearer abc"
    assert _post(conn, body, headers)[0] == 401


def test_credential_scope_must_be_appsync_in_the_receiver_region(
    receiver: AppSyncReceiver, conn: http.client.HTTPConnection
) -> None:
    body = _body()
    assert _post(conn, body, _sign(receiver.endpoint_url, body, region="eu-west-1"))[0] == 401
    request = AWSRequest(method="POST", url=receiver.endpoint_url, data=body)
    SigV4Auth(Credentials("AKIDEXAMPLE", "secret"), "execute-api", REGION).add_auth(request)
    assert _post(conn, body, dict(request.headers.items()))[0] == 401


@pytest.mark.parametrize(("skew_s", "status"), [(-301, 401), (-200, 200), (200, 200), (301, 401)])
def test_signature_date_must_be_within_five_minutes(skew_s: float, status: int) -> None:
    with AppSyncReceiver(SECRETS, clock=lambda: time.time() + skew_s) as rcv:
        parts = urlsplit(rcv.endpoint_url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        body = _body()
        got, answer = _post(connection, body, _sign(rcv.endpoint_url, body))
        connection.close()
    assert got == status
    if status == 401:
        assert "expired" in _error(answer)[1]


# --------------------------------------------------------------------------------------------- body rules


@pytest.mark.parametrize(
    "channel",
    [
        "",
        "/",
        "//responses",
        "/responses/",
        "/responses//conv",
        "/a/b/c/d/e/f",
        "/-responses",
        "/responses-",
        "/res_ponses",
        "/name space",
        "/responses/*",
        "/resp*",
        "/" + "a" * 51,
        "/responses/" + "b" * 51,
        123,
        None,
    ],
)
def test_invalid_channel_is_a_bad_request(
    receiver: AppSyncReceiver, conn: http.client.HTTPConnection, channel: Any
) -> None:
    body = _body(channel=channel)
    status, answer = _post(conn, body, _sign(receiver.endpoint_url, body))
    assert status == 400
    assert _error(answer)[0] == "BadRequestException"
    assert receiver.received == []


@pytest.mark.parametrize(
    "channel", ["responses/u/c", "/a", "/a/b/c/d/e", "/" + "a" * 50, "/0-9/A-z/x", CHANNEL.upper()]
)
def test_valid_channels_are_accepted(
    receiver: AppSyncReceiver, conn: http.client.HTTPConnection, channel: str
) -> None:
    body = _body(channel=channel)
    assert _post(conn, body, _sign(receiver.endpoint_url, body))[0] == 200
    assert receiver.received[0]["channel"] == channel


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (_body(events=[]), "1 to 5"),
        (_body(events=[json.dumps({"i": i}) for i in range(6)]), "1 to 5"),
        (_body(events="{}"), "1 to 5"),
        (_body(events=[{"not": "a string"}]), "string containing JSON"),
        (_body(events=["{not json"]), "not valid JSON"),
        (_body(events=["NaN"]), "not valid JSON"),
        (_body(events=[json.dumps({"t": "x" * MAX_EVENT_BYTES})]), "byte limit"),
    ],
    ids=["not-json", "not-object", "no-events", "six-events", "events-not-list", "event-not-string",
         "event-not-json", "event-nan", "event-too-large"],
)  # fmt: skip
def test_invalid_body_is_a_bad_request(
    receiver: AppSyncReceiver, conn: http.client.HTTPConnection, payload: bytes, fragment: str
) -> None:
    status, answer = _post(conn, payload, _sign(receiver.endpoint_url, payload))
    assert status == 400
    error_type, message = _error(answer)
    assert error_type == "BadRequestException"
    assert fragment in message


def test_event_size_limit_counts_utf8_bytes(
    receiver: AppSyncReceiver, conn: http.client.HTTPConnection
) -> None:
    text = "é" * ((MAX_EVENT_BYTES - len('{"t":""}')) // 2)  # 2 bytes per char in UTF-8
    at_limit = json.dumps({"t": text}, ensure_ascii=False, separators=(",", ":"))
    assert len(at_limit.encode()) == MAX_EVENT_BYTES
    body = _body(events=[at_limit])
    assert _post(conn, body, _sign(receiver.endpoint_url, body))[0] == 200
    over = json.dumps({"t": text + "x"}, ensure_ascii=False, separators=(",", ":"))
    body = _body(events=[over])
    assert _post(conn, body, _sign(receiver.endpoint_url, body))[0] == 400


def test_other_paths_and_methods_are_refused(
    receiver: AppSyncReceiver, conn: http.client.HTTPConnection
) -> None:
    body = _body()
    assert _post(conn, body, _sign(receiver.endpoint_url, body), path="/graphql")[0] == 404
    conn.request("GET", "/event")
    response = conn.getresponse()
    response.read()
    assert response.status == 405


def test_request_without_content_length_is_refused_and_closed(receiver: AppSyncReceiver) -> None:
    parts = urlsplit(receiver.endpoint_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(b"POST /event HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 411")
    assert b"Connection: close" in data


def test_channel_error_allows_a_trailing_wildcard_only_for_subscriptions() -> None:
    assert channel_error("/responses/*") is not None
    assert channel_error("/responses/*", allow_wildcard=True) is None
    assert channel_error("/*", allow_wildcard=True) is not None  # the namespace is never a wildcard
    assert channel_error("/responses/*/x", allow_wildcard=True) is not None
    assert channel_error("/responses/a*", allow_wildcard=True) is not None


# --------------------------------------------------------------------------------------------- lifecycle


def test_wait_for_blocks_until_a_publish_arrives(receiver: AppSyncReceiver) -> None:
    assert receiver.wait_for(lambda received: len(received) == 1, timeout=0.05) is False
    body = _body()
    headers = _sign(receiver.endpoint_url, body)

    def publish_later() -> None:
        time.sleep(0.05)
        parts = urlsplit(receiver.endpoint_url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        _post(connection, body, headers)
        connection.close()

    thread = threading.Thread(target=publish_later)
    thread.start()
    assert receiver.wait_for(lambda received: len(received) == 1, timeout=5) is True
    thread.join()
    receiver.reset()
    assert receiver.received == []


def test_stop_cuts_keep_alive_connections_and_start_reuses_the_port(
    receiver: AppSyncReceiver, conn: http.client.HTTPConnection
) -> None:
    url = receiver.endpoint_url
    body = _body()
    assert _post(conn, body, _sign(url, body))[0] == 200
    receiver.stop()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        _post(conn, body, _sign(url, body))
    conn.close()
    receiver.start()
    assert receiver.endpoint_url == url
    assert _post(conn, body, _sign(url, body))[0] == 200  # http.client reconnects after close()
    assert receiver.connections_accepted == 2
