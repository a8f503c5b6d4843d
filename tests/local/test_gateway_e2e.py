"""End-to-end: the whole gateway of `aigw dev`, in process, over real sockets, as a client sees it.

One gateway for the module (its own settings: the dev `free` tier, plus a `tiny` tier with a 10-second window
small enough to hit `rate_limited` with two requests). Every test talks to it the way a client does: Cognito
sign-in on moto, the AppSync Events WebSocket, the client contract of docs/request-path.md.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections.abc import Awaitable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlparse

import aiohttp
import boto3
import jwt
import pytest
from botocore.config import Config
from cryptography.hazmat.primitives.asymmetric import rsa
from moto.utilities.utils import load_resource

from aigw.client import Endpoints, EventsClient, ProtocolError
from aigw.dev import DevGateway, Ports, running
from aigw.emulators.bedrock import default_answer
from aigw.events_server import SUBPROTOCOL, encode_header_subprotocol
from aigw.local_cognito import LocalPool, add_user
from components.settings import StackSettings
from runtime.cache import AnswerCache
from runtime.metering import Limits, Meter

pytestmark = pytest.mark.moto

T = TypeVar("T")

MODEL = "amazon.nova-lite-v1:0"
PASSWORD = "Correct-Horse-9-Battery"
SETTINGS = StackSettings.from_values(
    {
        "region": "us-east-1",
        "defaultTier": "free",
        "tiers": [
            {
                "name": "free",
                "precedence": 20,
                "windowTokens": 20_000,
                "monthlyTokens": 500_000,
                "maxOutputTokens": 1024,
                "models": [MODEL],
            },
            # 400 tokens per 10 s: one ~850-character question (estimate 297 + at least 64 out) fits, a second
            # one does not until the first one's bucket has left the window.
            {
                "name": "tiny",
                "precedence": 30,
                "windowTokens": 400,
                "monthlyTokens": 100_000,
                "windowSeconds": 10,
                "minOutputTokens": 64,
                "maxOutputTokens": 128,
                "models": [MODEL],
            },
        ],
    }
)
FREE = next(t for t in SETTINGS.tiers if t.name == "free")
LONG_QUESTION = "Please summarise the following notes. " + " ".join(f"note{i:03d} is fine." for i in range(48))


# -- the gateway and its users


@pytest.fixture(scope="module")
def gateway() -> Iterator[DevGateway]:
    saved = dict(os.environ)  # `aigw dev` points the runtime at itself through the environment
    # Its own stack name: moto's backends outlive a stopped gateway in this process, so a second gateway with
    # the same stack name (tests/local/test_dev_gateway.py's) would find its tables already there.
    try:
        with running(SETTINGS, ports=Ports(0, 0, 0, 0), stack="e2e", pacing_s=0.0, keepalive_s=30) as gw:
            gw.warm()  # every handler process started once, here, rather than inside the tests' timeouts
            yield gw
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass(frozen=True)
class User:
    email: str
    sub: str
    token: str  # the IdToken


@dataclass
class Harness:
    gw: DevGateway
    endpoints: Endpoints
    pool: LocalPool
    idp: Any
    dynamodb: Any

    def user(self, tier: str = "free") -> User:
        email = f"user-{uuid.uuid4().hex[:12]}@example.com"
        sub = add_user(self.idp, self.pool, email, PASSWORD, tier=tier)
        result = self.idp.initiate_auth(
            ClientId=self.pool.client_id,
            AuthFlow="USER_PASSWORD_AUTH",
            AuthParameters={"USERNAME": email, "PASSWORD": PASSWORD},
        )
        return User(email, sub, result["AuthenticationResult"]["IdToken"])

    def client(self, user: User) -> EventsClient:
        return EventsClient(self.endpoints, user.token)

    def meter(self) -> Meter:
        return Meter(self.gw.info["tables"]["metering"], client=self.dynamodb)


@pytest.fixture(scope="module")
def h(gateway: DevGateway) -> Harness:
    info = gateway.info
    c = info["cognito"]
    config = Config(max_pool_connections=64, retries={"mode": "standard", "max_attempts": 3})
    idp = boto3.client("cognito-idp", region_name=info["region"], endpoint_url=c["endpoint"], config=config)
    dynamodb = boto3.client("dynamodb", region_name=info["region"], endpoint_url=c["endpoint"], config=config)
    assert gateway.pool is not None
    pool = gateway.pool
    endpoints = Endpoints(
        info["http"], info["realtime"], info["region"], c["endpoint"], c["user_pool_id"], c["client_id"]
    )
    return Harness(gateway, endpoints, pool, idp, dynamodb)


# -- helpers


def run(coro: Awaitable[T], timeout_s: float = 30) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


def user_message(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"text": text}]}]


def expected_answer(question: str) -> str:
    """The Bedrock emulator's deterministic answer to a single-turn question."""
    return default_answer({"messages": user_message(question)})


async def ask_raw(
    client: EventsClient, sub: str, question: str, conversation_id: str, timeout_s: float = 20
) -> tuple[str, list[dict[str, Any]]]:
    """Like `EventsClient.ask`, but returns *every* event of the channel (not only this request's) until the
    request's `end`/`error`: the caller checks nobody else's events arrived."""
    queue = await client.subscribe(f"/responses/{sub}/{conversation_id}")
    request_id = uuid.uuid4().hex
    request = {"requestId": request_id, "conversationId": conversation_id, "messages": user_message(question)}
    answer = await client.publish(f"/chat/{sub}/{conversation_id}", [request])
    assert answer["successful"] and not answer["failed"], answer
    events: list[dict[str, Any]] = []
    while True:
        event = await asyncio.wait_for(queue.get(), timeout_s)
        events.append(event)
        if event.get("requestId") == request_id and event["type"] in ("end", "error"):
            return request_id, events


async def ask(client: EventsClient, question: str, conversation_id: str) -> list[dict[str, Any]]:
    return [e async for e in client.ask(user_message(question), conversation_id=conversation_id, timeout_s=20)]


def check_answer(events: list[dict[str, Any]], *, cached: bool) -> str:
    """The answer's text, after checking the stream is `start`, `delta`..., `end` and well formed."""
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start", kinds
    assert kinds[-1] == "end", events[-1]
    assert len(kinds) >= 3 and set(kinds[1:-1]) == {"delta"}, kinds
    assert len({e["requestId"] for e in events}) == 1
    assert len({e["conversationId"] for e in events}) == 1
    start, end = events[0], events[-1]
    assert start["cached"] is cached and end["cached"] is cached
    assert start["model"] == MODEL
    assert set(end["usage"]) == {"input", "output"} and set(end["remaining"]) == {"window", "month"}
    assert end["stopReason"]
    text = "".join(e["text"] for e in events[1:-1])
    assert text
    return text


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def moto_private_key() -> Any:
    """The key moto signs every pool's tokens with (bundled as cognitoidp/resources/jwks-private.json.gz)."""
    return jwt.algorithms.RSAAlgorithm.from_jwk(load_resource("cognitoidp/resources/jwks-private.json"))


async def open_socket(h: Harness, token: str) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    auth = {"host": urlparse(h.endpoints.http).netloc, "Authorization": token}
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(h.endpoints.realtime, protocols=[SUBPROTOCOL, encode_header_subprotocol(auth)])
    return session, ws


async def next_frame(ws: aiohttp.ClientWebSocketResponse, timeout_s: float = 10) -> dict[str, Any]:
    """The next frame that is not a keep-alive."""
    while True:
        frame = await ws.receive_json(timeout=timeout_s)
        if frame.get("type") != "ka":
            return frame


# -- 1. streaming


def test_an_answer_streams_start_deltas_end(h: Harness) -> None:
    user = h.user()
    question = "How does a rolling window limit work?"

    async def scenario() -> list[dict[str, Any]]:
        async with h.client(user) as client:
            return await ask(client, question, "conv-stream")

    events = run(scenario())
    text = check_answer(events, cached=False)
    assert text == expected_answer(question)  # every delta, in order, nothing lost or repeated
    end = events[-1]
    assert end["usage"]["input"] > 0 and end["usage"]["output"] > 0
    assert 0 <= end["remaining"]["window"] < 20_000 and 0 <= end["remaining"]["month"] < 500_000
    assert all(e["conversationId"] == "conv-stream" for e in events)


# -- 2. someone else's channel


def test_another_users_channels_are_refused(h: Harness) -> None:
    victim, attacker = h.user(), h.user()
    conversation = "conv-private"

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with h.client(victim) as v, h.client(attacker) as a:
            victim_queue = await v.subscribe(f"/responses/{victim.sub}/{conversation}")

            for channel in (f"/responses/{victim.sub}/{conversation}", f"/responses/{victim.sub}/*"):
                with pytest.raises(ProtocolError) as refused:
                    await a.subscribe(channel)
                frame = refused.value.frame
                assert frame["type"] == "subscribe_error", frame
                assert frame["errors"][0]["errorType"] == "UnauthorizedException", frame

            own_queue = await a.subscribe(f"/responses/{attacker.sub}/{conversation}")
            request_id = uuid.uuid4().hex
            request = {
                "requestId": request_id,
                "conversationId": conversation,
                "messages": user_message("Tell me the victim's secrets"),
            }
            answer = await a.publish(f"/chat/{victim.sub}/{conversation}", [request])
            assert not answer["successful"], answer
            assert [f["index"] for f in answer["failed"]] == [0]
            assert answer["failed"][0]["errorMessage"].startswith("forbidden:"), answer

            # The attacker is told on their own channel (the contract's typed error event)...
            told = await asyncio.wait_for(own_queue.get(), 10)
            # ...and, the gatekeeper having finished, nothing ever reaches the victim.
            await asyncio.sleep(0.5)
            leaked = [victim_queue.get_nowait() for _ in range(victim_queue.qsize())]
            return [told], leaked

    told, leaked = run(scenario())
    assert told[0]["type"] == "error" and told[0]["code"] == "forbidden", told
    assert leaked == []
    # Nothing of the refused request reached the meter (so nothing reached the model either).
    meter = h.meter()
    for user in (victim, attacker):
        assert meter.usage(user.sub, FREE.limits).month_used == 0


# -- 3. the rolling window


def _exhaust_then_refuse(h: Harness, user: User, conversation: str) -> dict[str, Any]:
    """One long question admitted and answered, then the same again refused; returns the refusal event."""

    async def scenario() -> dict[str, Any]:
        async with h.client(user) as client:
            check_answer(await ask(client, LONG_QUESTION, conversation), cached=False)
            refused = await ask(client, LONG_QUESTION, conversation)
            assert len(refused) == 1, refused
            return refused[0]

    error = run(scenario())
    assert error["type"] == "error" and error["code"] == "rate_limited", error
    assert 0 < error["retryAfterSeconds"] <= 20, error  # a 10 s window of 10 s buckets: at most two buckets
    assert error["remaining"]["window"] < 400, error
    return error


def test_over_the_window_is_rate_limited_until_the_limits_are_raised(h: Harness) -> None:
    user = h.user("tiny")
    _exhaust_then_refuse(h, user, "conv-override")

    h.meter().set_override(user.sub, Limits(window_tokens=50_000, monthly_tokens=100_000, window_seconds=10))

    async def again() -> list[dict[str, Any]]:
        async with h.client(user) as client:
            return await ask(client, LONG_QUESTION, "conv-override")

    events = run(again())
    check_answer(events, cached=False)
    assert events[-1]["remaining"]["window"] > 49_000  # the override's limits, not the tier's


def test_over_the_window_is_admitted_again_after_retry_after_seconds(h: Harness) -> None:
    user = h.user("tiny")
    # Usage leaves the window a whole 10-second bucket at a time, so the wait is 10-20 s depending on where in
    # its bucket the first request lands. Land it late in a bucket (with ~1.5 s of slack before the next one)
    # so the wait after the refusal stays near 11-12 s.
    phase = time.time() % 10
    if not 7.5 <= phase <= 8.5:
        time.sleep((7.6 - phase) % 10)
    error = _exhaust_then_refuse(h, user, "conv-wait")
    received = time.monotonic()
    assert error["retryAfterSeconds"] <= 13, error

    async def again() -> list[dict[str, Any]]:
        async with h.client(user) as client:
            return await ask(client, LONG_QUESTION, "conv-wait")

    # Two seconds before the time given, the window is still full (retryAfterSeconds is not a guess)...
    time.sleep(max(0.0, error["retryAfterSeconds"] - 2 - (time.monotonic() - received)))
    early = run(again())
    assert [e["type"] for e in early] == ["error"] and early[0]["code"] == "rate_limited", early
    assert 0 < early[0]["retryAfterSeconds"] <= 2.5, early
    # ...and once it has passed, the same request is admitted and answered.
    time.sleep(max(0.0, error["retryAfterSeconds"] - (time.monotonic() - received)))
    check_answer(run(again()), cached=False)


# -- 4. the answer cache


def test_a_cached_answer_streams_with_cached_true(h: Harness) -> None:
    user = h.user()
    tier = FREE
    cache = AnswerCache(h.gw.info["tables"]["cache"], client=h.dynamodb, namespace=SETTINGS.cache_namespace)
    answer = "Opening hours are nine to five, Monday to Friday. Weekends are closed."
    cache.put("What are your opening hours?", tier.model, answer)

    async def scenario() -> list[dict[str, Any]]:
        async with h.client(user) as client:
            return await ask(client, "  what ARE your   Opening Hours ", "conv-cache")

    events = run(scenario())
    assert check_answer(events, cached=True) == answer
    assert events[-1]["usage"] == {"input": 0, "output": 0}  # cacheCostTokens defaults to 0
    assert cache.get("What are your opening hours?", tier.model).hit_count == 1  # type: ignore[union-attr]


# -- 5. tokens refused at connect


def _expired(h: Harness, user: User) -> str:
    claims = claims_of(user.token)
    now = int(time.time())
    claims.update(iat=now - 7200, auth_time=now - 7200, exp=now - 3600)
    return jwt.encode(claims, moto_private_key(), algorithm="RS256", headers={"kid": "dummy"})


def _forged(h: Harness, user: User) -> str:
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims_of(user.token), impostor, algorithm="RS256", headers={"kid": "dummy"})


def _wrong_client(h: Harness, user: User) -> str:
    other = h.idp.create_user_pool_client(
        UserPoolId=h.pool.user_pool_id, ClientName="another-app", ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH"]
    )["UserPoolClient"]["ClientId"]
    result = h.idp.initiate_auth(
        ClientId=other, AuthFlow="USER_PASSWORD_AUTH", AuthParameters={"USERNAME": user.email, "PASSWORD": PASSWORD}
    )
    token = result["AuthenticationResult"]["IdToken"]
    assert claims_of(token)["aud"] == other  # a genuine token of this pool, for another app client
    return token


def _alg_none(h: Harness, user: User) -> str:
    header = b64(json.dumps({"alg": "none", "kid": "dummy", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims_of(user.token)).encode())}."


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (_expired, "expired"),
        (_forged, "bad_signature"),
        (_wrong_client, "wrong_client"),
        (_alg_none, "unsupported_alg"),
    ],
    ids=["expired", "forged", "wrong-client", "alg-none"],
)
def test_bad_tokens_are_refused_at_connect(h: Harness, forge: Any, reason: str) -> None:
    user = h.user()
    token = forge(h, user)

    async def connect(token: str) -> tuple[dict[str, Any], aiohttp.WSMessage]:
        session, ws = await open_socket(h, token)
        try:
            await ws.send_json({"type": "connection_init"})
            first = await next_frame(ws)
            closing = await ws.receive(timeout=10)
            return first, closing
        finally:
            await ws.close()
            await session.close()

    frame, closing = run(connect(token))
    assert frame["type"] == "connection_error", frame
    assert frame["errors"][0]["errorType"] == "UnauthorizedException", frame
    assert reason in frame["errors"][0]["message"], frame
    assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 4401)  # and the socket is closed

    # The same harness with the user's genuine token is accepted: the refusal is the token's doing.
    frame, _ = run(_ack(h, user.token))
    assert frame["type"] == "connection_ack", frame


async def _ack(h: Harness, token: str) -> tuple[dict[str, Any], None]:
    session, ws = await open_socket(h, token)
    try:
        await ws.send_json({"type": "connection_init"})
        return await next_frame(ws), None
    finally:
        await ws.close()
        await session.close()


# -- 6. malformed frames


def test_malformed_frames_get_error_frames_and_the_connection_keeps_working(h: Harness) -> None:
    user = h.user()
    auth = {"host": urlparse(h.endpoints.http).netloc, "Authorization": user.token}

    async def scenario() -> list[dict[str, Any]]:
        session, ws = await open_socket(h, user.token)
        try:
            await ws.send_json({"type": "connection_init"})
            assert (await next_frame(ws))["type"] == "connection_ack"
            answers = []
            await ws.send_str("{not json")
            answers.append(await next_frame(ws))
            await ws.send_str("[1, 2, 3]")
            answers.append(await next_frame(ws))
            await ws.send_json({"type": "launch_missiles", "id": "op-1"})
            answers.append(await next_frame(ws))
            await ws.send_json({"type": "subscribe", "channel": f"/responses/{user.sub}/conv-x"})  # no id
            answers.append(await next_frame(ws))
            await ws.send_json(
                {"type": "subscribe", "id": "sub-1", "channel": f"/responses/{user.sub}/conv-x", "authorization": auth}
            )
            answers.append(await next_frame(ws))
            return answers
        finally:
            await ws.close()
            await session.close()

    bad_json, not_object, unknown, no_id, subscribed = run(scenario())
    assert bad_json["type"] == "error" and bad_json["errors"][0]["errorType"] == "BadRequestException"
    assert not_object["type"] == "error" and not_object["errors"][0]["errorType"] == "BadRequestException"
    assert unknown == {"type": "error", "id": "op-1", "errors": [unknown["errors"][0]]}
    assert unknown["errors"][0]["errorType"] == "UnsupportedOperation"
    assert no_id["type"] == "subscribe_error" and no_id["errors"][0]["errorType"] == "BadRequestException"
    assert subscribed == {"type": "subscribe_success", "id": "sub-1"}


# -- 7. publish limits


def test_publish_limits_five_events_and_240_kb(h: Harness) -> None:
    user = h.user()
    channel = f"/chat/{user.sub}/conv-limits"
    junk = {"not": "a chat request"}  # refused by the gatekeeper per event: never reaches the model

    async def scenario() -> dict[str, Any]:
        results: dict[str, Any] = {}
        async with h.client(user) as client:
            results["five"] = await client.publish(channel, [junk] * 5)
            for name, events in (
                ("six", [junk] * 6),
                ("big", [{"pad": "x" * (241 * 1024)}]),
            ):
                with pytest.raises(ProtocolError) as refused:
                    await client.publish(channel, events)
                results[name] = refused.value.frame
            results["just_under"] = await client.publish(channel, [{"pad": "x" * (240 * 1024 - 20)}])
            results["after"] = await client.subscribe(f"/responses/{user.sub}/conv-limits")
        return results

    results = run(scenario())
    for name in ("six", "big"):
        frame = results[name]
        assert frame["type"] == "publish_error", frame
        assert frame["errors"][0]["errorType"] == "BadRequestException", frame
    assert "5" in results["six"]["errors"][0]["message"]
    assert str(240 * 1024) in results["big"]["errors"][0]["message"]
    # At the limits the server accepts the publish; the gatekeeper then refuses each event on its merits.
    assert len(results["five"]["failed"]) == 5
    assert all(f["errorMessage"].startswith("invalid_request:") for f in results["five"]["failed"])
    assert [f["errorMessage"].split(":")[0] for f in results["just_under"]["failed"]] == ["invalid_request"]


# -- 8. many clients at once


# Regression test for workers sharing one (not thread-safe) EventPublisher across `aigw dev`'s worker threads:
# the raced keep-alive connection lost some clients' `end` and duplicated others' `start`/`delta`.
# The usage records check what running each handler invocation in a process of its own (as Lambda does) buys:
# Powertools' logger state is per process, so a record can only carry its own request's correlation id.
def test_fifty_concurrent_clients_each_get_their_own_answer_and_usage_record(
    h: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    with ThreadPoolExecutor(16) as pool:
        users = list(pool.map(lambda _: h.user(), range(50)))
    questions = {u.sub: f"Question {i} from {u.email}: what is {i} squared?" for i, u in enumerate(users)}

    async def one(user: User) -> tuple[str, list[dict[str, Any]]]:
        async with h.client(user) as client:
            return await ask_raw(client, user.sub, questions[user.sub], "conv-load", timeout_s=5)

    async def everyone() -> list[tuple[str, list[dict[str, Any]]]]:
        return await asyncio.gather(*(one(u) for u in users))

    results = run(everyone(), timeout_s=60)
    assert len({request_id for request_id, _ in results}) == 50
    for user, (request_id, events) in zip(users, results, strict=True):
        assert {e["requestId"] for e in events} == {request_id}, user  # nobody else's events
        assert check_answer(events, cached=False) == expected_answer(questions[user.sub])

    # Each usage record (logged by the worker after its `end`) names its request and carries that request's
    # correlation id, however many invocations ran at the same time.
    request_ids = {request_id for request_id, _ in results}
    records: dict[str, list[dict[str, Any]]] = {}
    deadline = time.monotonic() + 20
    while not request_ids <= records.keys() and time.monotonic() < deadline:
        for line in capsys.readouterr().out.splitlines():
            if line.startswith("{") and '"record_type":"usage"' in line:
                record = json.loads(line)
                records.setdefault(record["usage"]["request_id"], []).append(record)
        time.sleep(0.1)
    ours = {request_id: records.get(request_id, []) for request_id in request_ids}
    assert all(len(found) == 1 for found in ours.values()), {r: len(f) for r, f in ours.items() if len(f) != 1}
    mismatched = [r for r, (record,) in ours.items() if record["correlation_id"] != r]
    assert mismatched == [], f"{len(mismatched)} of 50 usage records carry another request's correlation id"
    assert {record["usage"]["outcome"] for (record,) in ours.values()} == {"completed"}
