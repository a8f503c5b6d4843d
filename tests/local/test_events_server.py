"""The local AppSync Events server, over real sockets: aiohttp's WebSocket/HTTP client on one side, the server
in a background thread (`ServerThread`) on the other.

Cognito tokens are faked (``<name>-token`` authenticates as sub ``<name>``); IAM requests are signed with
botocore and verified with `sigv4_error` through `LocalAuthenticator`. The handlers mimic the runtime's:
onSubscribe allows only the caller's own ``/responses/<sub>`` channels, onPublish echoes each payload with an
added field and rejects payloads with ``{"bad": true}``.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials

from aigw.events_server import (
    AWS_IAM,
    COGNITO,
    MAX_SUBSCRIPTIONS_PER_CONNECTION,
    SUBPROTOCOL,
    AuthError,
    EventsServer,
    Identity,
    LocalAuthenticator,
    NamespaceConfig,
    ServerThread,
    decode_header_subprotocol,
    encode_header_subprotocol,
)
from runtime.appsync_publish import EventPublisher
from runtime.channels import is_valid_segment

REGION = "us-east-1"
ACCESS_KEY, SECRET = "AKIDLOCALWORKER", "worker-secret"
CREDENTIALS = {ACCESS_KEY: SECRET}
TIMEOUT = 5.0


# --------------------------------------------------------------------------------------------- fakes


class UnauthorizedException(Exception):
    """Named like Powertools' exception: the server recognises it by name."""


def fake_cognito(token: str) -> Identity:
    name = token.removesuffix("-token")
    if not token.endswith("-token") or not is_valid_segment(name):
        raise AuthError("invalid JWT")
    return Identity(
        kind="cognito",
        sub=name,
        username=name,
        groups=["users"],
        claims={"sub": name, "iss": "https://cognito-idp.local/pool", "cognito:username": name},
    )


def on_subscribe_own_channel(event: dict[str, Any], context: Any) -> None:
    sub = (event.get("identity") or {}).get("sub")
    segments = event["info"]["channel"]["segments"]
    if len(segments) < 2 or segments[1] != sub:
        raise UnauthorizedException(f"{event['info']['channel']['path']} is not yours")
    return None


def on_publish_echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    time.sleep(random.uniform(0, 0.002))  # widen any ordering race
    out = []
    for item in event["events"]:
        payload = item["payload"]
        if isinstance(payload, dict) and payload.get("bad") is True:
            out.append({"id": item["id"], "error": "bad payload"})
        else:
            out.append(
                {"id": item["id"], "payload": {**payload, "echoed": True} if isinstance(payload, dict) else payload}
            )
    return {"events": out}


def on_subscribe_crash(event: dict[str, Any], context: Any) -> None:
    raise RuntimeError("handler bug")


def on_publish_reject_all(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"error": "nobody may publish here"}


def make_server(**kwargs: Any) -> EventsServer:
    namespaces = [
        NamespaceConfig(
            "responses", publish_auth={AWS_IAM}, subscribe_auth={COGNITO}, on_subscribe=on_subscribe_own_channel
        ),
        NamespaceConfig("chat", publish_auth={COGNITO}, subscribe_auth={COGNITO}, on_publish=on_publish_echo),
        NamespaceConfig("open", publish_auth={COGNITO, AWS_IAM}, subscribe_auth={COGNITO, AWS_IAM}),
        NamespaceConfig(
            "boom",
            publish_auth={COGNITO},
            subscribe_auth={COGNITO},
            on_subscribe=on_subscribe_crash,
            on_publish=on_publish_reject_all,
        ),
    ]
    authenticator = LocalAuthenticator(CREDENTIALS, cognito=fake_cognito, region=REGION)
    return EventsServer(authenticator, namespaces, keepalive_s=kwargs.pop("keepalive_s", 30.0), **kwargs)


@pytest.fixture
def server() -> Iterator[EventsServer]:
    with ServerThread(make_server()) as running:
        yield running


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 12.0))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- client helpers


class Client:
    """A WebSocket client speaking the AppSync Events protocol."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session, self.ws = session, ws

    @classmethod
    async def connect(
        cls,
        server: EventsServer,
        session: aiohttp.ClientSession,
        auth: dict[str, str] | None = None,
        *,
        token: str | None = "alice-token",
        via_headers: bool = False,
        init: bool = True,
    ) -> Client:
        if auth is None and token is not None:
            auth = {"host": server.http_domain, "Authorization": token}
        protocols = [SUBPROTOCOL]
        headers: dict[str, str] = {}
        if via_headers:
            headers = dict(auth or {})
            headers.pop("host", None)
        elif auth is not None:
            protocols.append(encode_header_subprotocol(auth))
        ws = await session.ws_connect(server.realtime_url, protocols=protocols, headers=headers)
        client = cls(session, ws)
        if init:
            await client.send({"type": "connection_init"})
            ack = await client.recv()
            assert ack == {"type": "connection_ack", "connectionTimeoutMs": 300_000}
        return client

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(message))

    async def recv(self, timeout: float = TIMEOUT, *, skip_ka: bool = True) -> dict[str, Any]:
        while True:
            message = await self.ws.receive(timeout=timeout)
            assert message.type == aiohttp.WSMsgType.TEXT, message
            frame = json.loads(message.data)
            if skip_ka and frame.get("type") == "ka":
                continue
            return frame

    async def nothing_more(self, wait: float = 0.2) -> None:
        """Assert that no frame other than keep-alives arrives within ``wait`` seconds."""
        with pytest.raises(asyncio.TimeoutError):
            frame = await self.recv(timeout=wait)
            pytest.fail(f"unexpected frame {frame}")

    async def subscribe(self, sub_id: str, channel: str, **extra: Any) -> dict[str, Any]:
        await self.send({"type": "subscribe", "id": sub_id, "channel": channel, **extra})
        return await self.recv()

    async def publish(self, pub_id: str, channel: str, events: list[Any], **extra: Any) -> dict[str, Any]:
        await self.send({"type": "publish", "id": pub_id, "channel": channel, "events": events, **extra})
        return await self.recv()


def signed_headers(url: str, body: bytes, *, secret: str = SECRET) -> dict[str, str]:
    """SigV4 (``appsync``) headers for ``POST url`` with ``body``, host included, as AppSync clients build them."""
    request = AWSRequest(method="POST", url=url, data=body, headers={"content-type": "application/json"})
    SigV4Auth(Credentials(ACCESS_KEY, secret), "appsync", REGION).add_auth(request)
    host = url.split("/")[2]
    return {"host": host, **dict(request.headers.items())}


async def http_publish(
    session: aiohttp.ClientSession,
    server: EventsServer,
    channel: str,
    events: list[str],
    *,
    headers: dict[str, str] | None = None,
    iam: bool = True,
    secret: str = SECRET,
) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"channel": channel, "events": events}).encode()
    if headers is None:
        headers = signed_headers(server.http_url, body, secret=secret) if iam else {}
    headers = {k: v for k, v in headers.items() if k.lower() != "host"}  # aiohttp sends the same Host itself
    async with session.post(server.http_url, data=body, headers=headers) as response:
        return response.status, await response.json()


def with_session(scenario: Callable[[aiohttp.ClientSession], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with aiohttp.ClientSession() as session:
            return await scenario(session)

    return run(main())


# --------------------------------------------------------------------------------------------- connection


def test_header_subprotocol_round_trips_with_and_without_padding() -> None:
    auth = {"host": "example.local:1", "Authorization": "alice-token"}
    encoded = encode_header_subprotocol(auth)
    assert "=" not in encoded
    assert decode_header_subprotocol(encoded) == auth
    padded = encoded + "=" * (-len(encoded.removeprefix("header-")) % 4)
    assert decode_header_subprotocol(padded) == auth


def test_connect_with_header_subprotocol_acks_and_sends_keepalives() -> None:
    with ServerThread(make_server(keepalive_s=0.1)) as server:

        async def scenario(session: aiohttp.ClientSession) -> None:
            client = await Client.connect(server, session)
            assert client.ws.protocol == SUBPROTOCOL
            assert await client.recv(skip_ka=False) == {"type": "ka"}
            assert await client.recv(skip_ka=False) == {"type": "ka"}

        with_session(scenario)


@pytest.mark.parametrize("header_name", ["Authorization", "authorization"])
def test_connect_with_upgrade_headers(server: EventsServer, header_name: str) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        client = await Client.connect(server, session, {header_name: "alice-token"}, via_headers=True)
        assert (await client.subscribe("s1", "/responses/alice"))["type"] == "subscribe_success"

    with_session(scenario)


@pytest.mark.parametrize("via_headers", [False, True])
@pytest.mark.parametrize("auth", [{"Authorization": "mallory"}, {}, {"x-api-key": "da2-xyz"}])
def test_bad_credentials_are_refused_at_connect(server: EventsServer, auth: dict[str, str], via_headers: bool) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        client = await Client.connect(server, session, auth, via_headers=via_headers, init=False)
        frame = await client.recv()
        assert frame["type"] == "connection_error"
        assert frame["errors"][0]["errorType"] == "UnauthorizedException"
        closing = await client.ws.receive(timeout=TIMEOUT)
        assert closing.type == aiohttp.WSMsgType.CLOSE
        assert client.ws.close_code == 4401

    with_session(scenario)


def test_malformed_header_subprotocol_is_a_connection_error(server: EventsServer) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        ws = await session.ws_connect(server.realtime_url, protocols=[SUBPROTOCOL, "header-%%%notbase64"])
        frame = json.loads((await ws.receive(timeout=TIMEOUT)).data)
        assert frame["type"] == "connection_error"
        assert frame["errors"][0]["errorType"] == "BadRequestException"

    with_session(scenario)


def test_iam_connection_via_signed_header_subprotocol(server: EventsServer) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        auth = signed_headers(server.http_url, b"{}")
        client = await Client.connect(server, session, auth)
        assert (await client.subscribe("s1", "/open/anything"))["type"] == "subscribe_success"
        # An IAM identity may not subscribe on a Cognito-only namespace.
        frame = await client.subscribe("s2", "/responses/alice")
        assert frame["type"] == "subscribe_error" and frame["errors"][0]["errorType"] == "UnauthorizedException"

        tampered = {**auth, "Authorization": auth["Authorization"][:-4] + "0000"}
        bad = await Client.connect(server, session, tampered, init=False)
        assert (await bad.recv())["type"] == "connection_error"

    with_session(scenario)


# --------------------------------------------------------------------------------------------- subscribe


def test_subscribe_rules(server: EventsServer) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        alice = await Client.connect(server, session)
        assert await alice.subscribe("own", "/responses/alice") == {"type": "subscribe_success", "id": "own"}
        assert (await alice.subscribe("deep", "responses/alice/conv-1/*"))["type"] == "subscribe_success"

        other = await alice.subscribe("other", "/responses/bob")
        assert other["type"] == "subscribe_error" and other["id"] == "other"
        assert other["errors"][0]["errorType"] == "UnauthorizedException"
        assert "not yours" in other["errors"][0]["message"]

        # Wildcard at the namespace level: valid for the channel rules, rejected by the handler.
        wildcard = await alice.subscribe("all", "/responses/*")
        assert wildcard["type"] == "subscribe_error" and wildcard["errors"][0]["errorType"] == "UnauthorizedException"

        for bad_channel in ["/responses/*/x", "/responses/al ice", "/responses//x", 42, "/a/b/c/d/e/f", "/*"]:
            frame = await alice.subscribe("bad", bad_channel)
            assert frame["type"] == "subscribe_error" and frame["id"] == "bad", bad_channel
            assert frame["errors"][0]["errorType"] == "BadRequestException", bad_channel

        missing = await alice.subscribe("nons", "/nowhere/alice")
        assert missing["type"] == "subscribe_error" and missing["errors"][0]["errorType"] == "ResourceNotFound"

        duplicate = await alice.subscribe("own", "/responses/alice")
        assert duplicate["type"] == "subscribe_error" and duplicate["errors"][0]["errorType"] == "BadRequestException"

    with_session(scenario)


def test_per_message_authorization_overrides_the_connection_identity(server: EventsServer) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        alice = await Client.connect(server, session)
        as_bob = {"host": server.http_domain, "authorization": "bob-token"}
        assert (await alice.subscribe("b", "/responses/bob", authorization=as_bob))["type"] == "subscribe_success"
        bad = await alice.subscribe("x", "/responses/alice", authorization={"Authorization": "nope"})
        assert bad["type"] == "subscribe_error" and bad["errors"][0]["errorType"] == "UnauthorizedException"

    with_session(scenario)


def test_handler_crash_is_an_error_frame_and_the_connection_survives(server: EventsServer) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        alice = await Client.connect(server, session)
        frame = await alice.subscribe("s", "/boom/alice")
        assert frame["type"] == "subscribe_error" and frame["errors"][0]["errorType"] == "InternalFailureException"
        assert (await alice.subscribe("s", "/responses/alice"))["type"] == "subscribe_success"

    with_session(scenario)


def test_subscription_limit_per_connection(server: EventsServer) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        alice = await Client.connect(server, session)
        for i in range(MAX_SUBSCRIPTIONS_PER_CONNECTION):
            await alice.send({"type": "subscribe", "id": f"s{i}", "channel": f"/open/c{i}"})
        for _ in range(MAX_SUBSCRIPTIONS_PER_CONNECTION):
            assert (await alice.recv())["type"] == "subscribe_success"
        frame = await alice.subscribe("one-too-many", "/open/extra")
        assert frame["type"] == "subscribe_error"
        assert frame["errors"][0]["errorType"] == "MaxSubscriptionsReachedError"
        assert (await alice.send({"type": "unsubscribe", "id": "s0"})) is None
        assert (await alice.recv())["type"] == "unsubscribe_success"
        assert (await alice.subscribe("one-more", "/open/extra"))["type"] == "subscribe_success"

    with_session(scenario)


# --------------------------------------------------------------------------------------------- publish over WS


def test_ws_publish_runs_the_handler_and_broadcasts_in_order(server: EventsServer) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        subscriber = await Client.connect(server, session)
        assert (await subscriber.subscribe("exact", "/chat/alice/conv-1"))["type"] == "subscribe_success"
        assert (await subscriber.subscribe("wild", "/chat/alice/*"))["type"] == "subscribe_success"
        assert (await subscriber.subscribe("elsewhere", "/chat/alice/conv-2"))["type"] == "subscribe_success"
        publisher = await Client.connect(server, session)

        answer = await publisher.publish("p1", "/chat/alice/conv-1", [json.dumps({"n": 0}), json.dumps({"n": 1})])
        assert answer["type"] == "publish_success" and answer["id"] == "p1"
        assert [s["index"] for s in answer["successful"]] == [0, 1] and answer["failed"] == []
        frames = [await subscriber.recv() for _ in range(4)]
        assert {f["type"] for f in frames} == {"data"}
        for sub_id in ("exact", "wild"):
            events = [json.loads(f["event"]) for f in frames if f["id"] == sub_id]
            assert events == [{"n": 0, "echoed": True}, {"n": 1, "echoed": True}]
            assert all(isinstance(f["event"], str) for f in frames)
        await subscriber.nothing_more(0.1)

        # Many publishes sent back to back (not awaiting answers) arrive in publish order.
        total = 0
        for batch in range(12):
            size = batch % 5 + 1
            events = [json.dumps({"n": total + i}) for i in range(size)]
            total += size
            await publisher.send(
                {"type": "publish", "id": f"b{batch}", "channel": "/chat/alice/conv-2", "events": events}
            )
        frames = [await subscriber.recv() for _ in range(2 * total)]  # via "elsewhere" and via "wild"
        for sub_id in ("elsewhere", "wild"):
            received = [json.loads(f["event"])["n"] for f in frames if f["id"] == sub_id]
            assert received == list(range(total)), sub_id
        answers = [await publisher.recv() for _ in range(12)]
        assert sorted(a["id"] for a in answers) == sorted(f"b{i}" for i in range(12))
        assert all(a["type"] == "publish_success" for a in answers)

    with_session(scenario)


def test_per_event_handler_errors_are_reported_in_failed(server: EventsServer) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        alice = await Client.connect(server, session)
        assert (await alice.subscribe("s", "/chat/alice"))["type"] == "subscribe_success"
        events = [json.dumps({"n": 0}), json.dumps({"bad": True}), json.dumps({"n": 2})]
        frames = [await alice.publish("p", "/chat/alice", events), await alice.recv(), await alice.recv()]
        (answer,) = [f for f in frames if f["type"] == "publish_success"]
        data = [f for f in frames if f["type"] == "data"]
        assert [s["index"] for s in answer["successful"]] == [0, 2]
        (failed,) = answer["failed"]
        assert failed["index"] == 1 and failed["errorCode"] == 400 and failed["errorMessage"] == "bad payload"
        assert len({s["identifier"] for s in answer["successful"]} | {failed["identifier"]}) == 3
        payloads = [json.loads(f["event"]) for f in data]
        assert payloads == [{"n": 0, "echoed": True}, {"n": 2, "echoed": True}]

        # A whole-batch {"error"} fails every event but is still publish_success.
        rejected = await alice.publish("q", "/boom/alice", [json.dumps(1), json.dumps(2)])
        assert rejected["type"] == "publish_success" and rejected["successful"] == []
        assert [f["index"] for f in rejected["failed"]] == [0, 1]

    with_session(scenario)


@pytest.mark.parametrize(
    ("channel", "events", "fragment"),
    [
        ("/chat/alice", [json.dumps(i) for i in range(6)], "1 to 5"),
        ("/chat/alice", [], "1 to 5"),
        ("/chat/alice", "not-a-list", "1 to 5"),
        ("/chat/alice", [json.dumps("x" * (241 * 1024))], "over the"),
        ("/chat/alice", [5], "must be a string"),
        ("/chat/alice", ["{not json"], "not valid JSON"),
        ("/chat/alice", ["NaN"], "not valid JSON"),
        ("/chat/alice/*", [json.dumps(1)], "wildcard"),
        ("/chat//alice", [json.dumps(1)], "empty segment"),
    ],
)
def test_ws_publish_validation(server: EventsServer, channel: str, events: Any, fragment: str) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        alice = await Client.connect(server, session)
        frame = await alice.publish("p", channel, events)
        assert frame["type"] == "publish_error" and frame["id"] == "p"
        assert frame["errors"][0]["errorType"] == "BadRequestException"
        assert fragment in frame["errors"][0]["message"]

    with_session(scenario)


def test_largest_allowed_event_is_accepted(server: EventsServer) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        alice = await Client.connect(server, session)
        event = json.dumps("x" * (240 * 1024 - 2))
        assert len(event.encode()) == 240 * 1024
        assert (await alice.subscribe("s", "/open/big"))["type"] == "subscribe_success"
        frame = await alice.publish("p", "/open/big", [event] * 5)
        frames = [frame, *[await alice.recv() for _ in range(5)]]
        assert sorted(f["type"] for f in frames) == ["data"] * 5 + ["publish_success"]
        assert all(f["event"] == event for f in frames if f["type"] == "data")

    with_session(scenario)


def test_publish_auth_mode_is_enforced_over_ws(server: EventsServer) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        alice = await Client.connect(server, session)
        frame = await alice.publish("p", "/responses/alice", [json.dumps(1)])
        assert frame["type"] == "publish_error" and frame["errors"][0]["errorType"] == "UnauthorizedException"

        # With a per-message IAM authorization (signed body {"channel", "events"}, compact as JS clients sign it).
        assert (await alice.subscribe("s", "/responses/alice"))["type"] == "subscribe_success"
        events = [json.dumps({"type": "delta", "text": "hi"})]
        body = json.dumps({"channel": "/responses/alice", "events": events}, separators=(",", ":")).encode()
        auth = signed_headers(server.http_url, body)
        await alice.send(
            {"type": "publish", "id": "q", "channel": "/responses/alice", "events": events, "authorization": auth}
        )
        frames = [await alice.recv(), await alice.recv()]
        assert sorted(f["type"] for f in frames) == ["data", "publish_success"]
        assert next(f for f in frames if f["type"] == "data")["event"] == events[0]

    with_session(scenario)


def test_malformed_frames_get_error_frames_and_the_connection_keeps_working(server: EventsServer) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        alice = await Client.connect(server, session)
        await alice.ws.send_str("{this is not json")
        frame = await alice.recv()
        assert frame["type"] == "error" and "id" not in frame
        assert frame["errors"][0]["errorType"] == "BadRequestException"

        await alice.ws.send_str("[1, 2]")
        assert (await alice.recv())["type"] == "error"

        await alice.send({"type": "frobnicate", "id": "f1"})
        assert await alice.recv() == {
            "type": "error",
            "id": "f1",
            "errors": [{"errorType": "UnsupportedOperation", "message": "unknown message type 'frobnicate'"}],
        }

        await alice.send({"type": "subscribe", "channel": "/responses/alice"})
        frame = await alice.recv()
        assert frame["type"] == "subscribe_error" and "id" not in frame

        await alice.send({"type": "publish", "id": 7, "channel": "/chat/alice", "events": ["1"]})
        assert (await alice.recv())["type"] == "publish_error"

        await alice.ws.send_bytes(b"\x00\x01")
        assert (await alice.recv())["type"] == "error"

        assert (await alice.subscribe("s", "/responses/alice", extra="ignored"))["type"] == "subscribe_success"

    with_session(scenario)


def test_unsubscribe_stops_delivery(server: EventsServer) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        alice = await Client.connect(server, session)
        assert (await alice.subscribe("s", "/open/room"))["type"] == "subscribe_success"
        assert (await alice.subscribe("t", "/open/room"))["type"] == "subscribe_success"
        await alice.send({"type": "unsubscribe", "id": "s"})
        assert await alice.recv() == {"type": "unsubscribe_success", "id": "s"}
        frames = [await alice.publish("p", "/open/room", ['"hello"']), await alice.recv()]
        assert sorted(f["type"] for f in frames) == ["data", "publish_success"]
        assert next(f for f in frames if f["type"] == "data")["id"] == "t"
        await alice.nothing_more(0.1)

        await alice.send({"type": "unsubscribe", "id": "s"})
        frame = await alice.recv()
        assert frame["type"] == "unsubscribe_error" and frame["id"] == "s"

    with_session(scenario)


# --------------------------------------------------------------------------------------------- HTTP publish


def test_http_iam_publish_reaches_ws_subscribers(server: EventsServer) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        alice = await Client.connect(server, session)
        assert (await alice.subscribe("s", "/responses/alice/*"))["type"] == "subscribe_success"
        events = [json.dumps({"i": i}) for i in range(3)]
        status, body = await http_publish(session, server, "/responses/alice/conv-9", events)
        assert status == 200, body
        assert [s["index"] for s in body["successful"]] == [0, 1, 2] and body["failed"] == []
        assert [(await alice.recv())["event"] for _ in range(3)] == events

        # The runtime's own publisher (botocore-signed keep-alive HTTP) is accepted too.
        def publish_with_runtime_client() -> None:
            with EventPublisher(server.http_url, REGION, ReadOnlyCredentials(ACCESS_KEY, SECRET, None)) as publisher:
                publisher.publish("/responses/alice/conv-9", [{"type": "done"}])

        await asyncio.to_thread(publish_with_runtime_client)
        assert json.loads((await alice.recv())["event"]) == {"type": "done"}

    with_session(scenario)


def test_http_publish_errors(server: EventsServer) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        ok = [json.dumps(1)]
        # Cognito token on an IAM-only namespace: authenticated, but the mode is not allowed.
        status, body = await http_publish(
            session, server, "/responses/alice", ok, headers={"Authorization": "alice-token"}
        )
        assert status == 403 and body["errors"][0]["errorType"] == "UnauthorizedException"
        # Bad signature, unknown key, bad token, no credentials: 401.
        status, body = await http_publish(session, server, "/responses/alice", ok, secret="wrong")
        assert status == 401 and body["errors"][0]["errorType"] == "UnauthorizedException"
        assert "signature" in body["errors"][0]["message"]
        status, body = await http_publish(session, server, "/responses/alice", ok, headers={"Authorization": "x"})
        assert status == 401
        status, body = await http_publish(session, server, "/responses/alice", ok, iam=False)
        assert status == 401
        # Invalid input: 400; unknown namespace: 404.
        for channel, events in [("/responses/*", ok), ("/responses/alice", ok * 6), ("/responses/alice", [1])]:
            status, body = await http_publish(session, server, channel, events)
            assert status == 400 and body["errors"][0]["errorType"] == "BadRequestException", (channel, events)
        status, body = await http_publish(session, server, "/nowhere/alice", ok)
        assert status == 404
        async with session.post(server.http_url, data=b"[]", headers={"Authorization": "alice-token"}) as response:
            assert response.status == 400
        async with session.get(server.http_url) as response:
            assert response.status == 405
        # A Cognito publish through the handler, over HTTP.
        events = [json.dumps({"a": 1}), json.dumps({"bad": True})]
        status, body = await http_publish(
            session, server, "/chat/alice", events, headers={"Authorization": "alice-token"}
        )
        assert status == 200
        assert [s["index"] for s in body["successful"]] == [0] and [f["index"] for f in body["failed"]] == [1]

    with_session(scenario)


def test_handler_event_shape(server: EventsServer) -> None:
    seen: list[dict[str, Any]] = []

    def capture(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(event)
        assert context.get_remaining_time_in_millis() > 0
        return {"events": [{"id": e["id"], "payload": e["payload"]} for e in event["events"]]}

    server.namespaces["chat"].on_publish = capture

    async def scenario(session: aiohttp.ClientSession) -> None:
        alice = await Client.connect(server, session)
        answer = await alice.publish("p", "chat/alice/conv-1", [json.dumps({"q": "hi"})])
        assert answer["type"] == "publish_success"
        (event,) = seen
        assert event["info"] == {
            "channel": {"path": "/chat/alice/conv-1", "segments": ["chat", "alice", "conv-1"]},
            "channelNamespace": {"name": "chat"},
            "operation": "PUBLISH",
        }
        assert event["events"] == [{"id": answer["successful"][0]["identifier"], "payload": {"q": "hi"}}]
        identity = event["identity"]
        assert identity["sub"] == "alice" and identity["username"] == "alice" and identity["groups"] == ["users"]
        assert identity["issuer"] == "https://cognito-idp.local/pool" and identity["defaultAuthStrategy"] == "ALLOW"
        assert identity["sourceIp"] == ["127.0.0.1"]
        assert event["request"]["headers"]["authorization"] == "alice-token"
        assert event["request"]["domainName"] is None
        assert event["stash"] == {} and event["outErrors"] == [] and event["prev"] is None

    with_session(scenario)


def test_runtime_subscribe_handler_is_called_like_lambda() -> None:
    """The real Powertools-based onSubscribe of `responses` accepts the server's event shape."""
    from runtime.handlers import subscribe_handler

    namespace = NamespaceConfig(
        "responses", publish_auth={AWS_IAM}, subscribe_auth={COGNITO}, on_subscribe=subscribe_handler
    )
    server = EventsServer(LocalAuthenticator(CREDENTIALS, cognito=fake_cognito), [namespace])
    with ServerThread(server):

        async def scenario(session: aiohttp.ClientSession) -> None:
            alice = await Client.connect(server, session)
            assert (await alice.subscribe("a", "/responses/alice/*"))["type"] == "subscribe_success"
            frame = await alice.subscribe("b", "/responses/bob")
            assert frame["type"] == "subscribe_error" and frame["errors"][0]["errorType"] == "UnauthorizedException"

        with_session(scenario)


# --------------------------------------------------------------------------------------------- concurrency


def test_fifty_clients_each_receive_only_their_own_events(server: EventsServer) -> None:
    users = [f"user-{i}" for i in range(50)]

    async def scenario(session: aiohttp.ClientSession) -> None:
        clients = await asyncio.gather(*(Client.connect(server, session, token=f"{u}-token") for u in users))
        answers = await asyncio.gather(
            *(c.subscribe(u, f"/responses/{u}") for c, u in zip(clients, users, strict=True))
        )
        assert all(a["type"] == "subscribe_success" for a in answers)

        async def publish_to(user: str) -> None:
            events = [json.dumps({"to": user, "n": n}) for n in range(3)]
            status, body = await http_publish(session, server, f"/responses/{user}", events)
            assert status == 200 and len(body["successful"]) == 3

        await asyncio.gather(*(publish_to(u) for u in users))

        async def check(client: Client, user: str) -> None:
            frames = [await client.recv() for _ in range(3)]
            assert [json.loads(f["event"]) for f in frames] == [{"to": user, "n": n} for n in range(3)]
            assert {f["id"] for f in frames} == {user}
            await client.nothing_more(0.2)

        await asyncio.gather(*(check(c, u) for c, u in zip(clients, users, strict=True)))
        await asyncio.gather(*(c.ws.close() for c in clients))

    with_session(scenario)
    deadline = time.monotonic() + TIMEOUT
    while server.connection_count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.connection_count == 0


def test_wildcard_matches_strictly_below_its_prefix(server: EventsServer) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        alice = await Client.connect(server, session)
        assert (await alice.subscribe("w", "/open/a/*"))["type"] == "subscribe_success"
        for channel in ["/open/a", "/open/ab", "/open/b/a", "/open/a/x", "/open/a/x/y/z"]:
            frames = [await alice.publish(channel, channel, [json.dumps(channel)])]
            if channel.startswith("/open/a/"):
                frames.append(await alice.recv())
                assert [json.loads(f["event"]) for f in frames if f["type"] == "data"] == [channel]
            assert [f["type"] for f in frames if f["type"] != "data"] == ["publish_success"]
        await alice.nothing_more(0.1)

    with_session(scenario)


def test_slow_handler_times_out_without_blocking_other_connections() -> None:
    def slow(event: dict[str, Any], context: Any) -> None:
        time.sleep(0.5)

    namespaces = [
        NamespaceConfig("slow", publish_auth={COGNITO}, subscribe_auth={COGNITO}, on_subscribe=slow),
        NamespaceConfig("open", publish_auth={COGNITO}, subscribe_auth={COGNITO}),
    ]
    server = EventsServer(LocalAuthenticator({}, cognito=fake_cognito), namespaces, handler_timeout_s=0.2)
    with ServerThread(server):

        async def scenario(session: aiohttp.ClientSession) -> None:
            alice = await Client.connect(server, session)
            bob = await Client.connect(server, session, token="bob-token")
            await alice.send({"type": "subscribe", "id": "s", "channel": "/slow/alice"})
            started = time.monotonic()
            assert (await bob.subscribe("b", "/open/bob"))["type"] == "subscribe_success"
            assert time.monotonic() - started < 0.15  # the event loop was not blocked by the handler
            frame = await alice.recv()
            assert frame["type"] == "subscribe_error" and frame["errors"][0]["errorType"] == "InternalFailureException"
            assert "timed out" in frame["errors"][0]["message"]

        with_session(scenario)


def test_stopping_the_server_closes_connections() -> None:
    thread = ServerThread(make_server())
    server = thread.start()

    async def scenario(session: aiohttp.ClientSession) -> None:
        alice = await Client.connect(server, session)
        await asyncio.to_thread(thread.stop)
        message = await alice.ws.receive(timeout=TIMEOUT)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)

    with_session(scenario)


# --------------------------------------------------------------------------------------------- hostile input

# What Python and its json module say, which must never reach a client (it helps only an attacker).
LEAKS = re.compile(
    r"codec|Traceback|RecursionError|maximum recursion|Exceeds the limit|sys\.set_int_max_str_digits|Expecting"
    r"|\(char \d+\)|Error\(|Exception\(|handler bug|surrogates not allowed|\bline \d+ column"
)
DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "1" * 5_000


def _publish_body(events_json: str) -> bytes:
    return ('{"channel": "/open/x", "events": ' + events_json + "}").encode()


@pytest.mark.parametrize(("body", "says"), [
    (b"\xff\xfe{", "not UTF-8"),
    (b'{"channel": "/open/x", "events": ["1"], "x": "\xe9"}', "not UTF-8"),
    (DEEP.encode(), "too deeply"),
    (_publish_body("[" + HUGE_INT + "]"), "digits"),
    (b"{not json", "line 1, column 2"),
    (_publish_body(json.dumps([DEEP])), "too deeply"),
    (_publish_body(json.dumps([HUGE_INT])), "digits"),
    (_publish_body(json.dumps(["[1, 2"])), "not valid JSON"),
    (_publish_body(json.dumps(["Infinity"])), "Infinity is not a JSON value"),
    (_publish_body('["\\ud800"]'), "not"),
])  # fmt: skip
def test_hostile_http_publishes_get_a_typed_400_in_our_words(server: EventsServer, body: bytes, says: str) -> None:
    async def scenario(session: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
        headers = {k: v for k, v in signed_headers(server.http_url, body).items() if k.lower() != "host"}
        async with session.post(server.http_url, data=body, headers=headers) as response:
            return response.status, await response.json()

    status, answer = with_session(scenario)
    [error] = answer["errors"]
    assert status == 400 and error["errorType"] == "BadRequestException", answer
    assert says in error["message"] and not LEAKS.search(error["message"]), error["message"]


@pytest.mark.parametrize(("text", "says"), [
    (DEEP, "too deeply"),
    ('{"type": "publish", "id": "p", "n": ' + HUGE_INT + "}", "digits"),
    ('{"type": "subscribe", "id": ', "not valid JSON"),
    (json.dumps({"type": "publish", "id": "p", "channel": "/open/x", "events": [DEEP]}), "too deeply"),
    (json.dumps({"type": "publish", "id": "p", "channel": "/open/x", "events": [HUGE_INT]}), "digits"),
    (json.dumps({"type": "subscribe", "id": "s", "channel": "/boom/alice"}), "handler failed"),
])  # fmt: skip
def test_hostile_websocket_messages_get_a_typed_error_and_the_connection_lives(
    server: EventsServer, text: str, says: str
) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        alice = await Client.connect(server, session)
        await alice.ws.send_str(text)
        frame = await alice.recv()
        assert frame["type"].endswith("error"), frame
        [error] = frame["errors"]
        assert says in error["message"] and not LEAKS.search(json.dumps(frame)), frame
        # The connection keeps serving.
        assert (await alice.subscribe("ok", "/open/fine"))["type"] == "subscribe_success"

    with_session(scenario)
