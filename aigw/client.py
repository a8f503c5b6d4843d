"""A small AppSync Events client for people and tests: sign in to Cognito, connect, subscribe, publish, stream.

Speaks the same protocol as AWS's clients (header subprotocol auth, connection_init, per-operation ids), so
it works against `aigw dev` and a deployed stack alike. `ask()` sends one chat request and yields the events
of its answer until `end` or `error`.

A chat request travels as one AppSync event, the whole conversation so far included, and AppSync refuses an event
over 240 KB with a bare `BadRequestException`. So `publish` refuses such a request itself, before sending, and
tells it the way the gateway tells a refusal: the request in `failed` (`"invalid_request: message too long: ..."`)
and a typed `error` event on the request's responses channel. A chat request the server still refuses outright
is told the same way, in words for people instead of the server's exception text.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import boto3

from runtime.appsync_publish import MAX_EVENT_BYTES

SUBPROTOCOL = "aws-appsync-event-ws"

# The web page says the same (web/app.js): the limit is per request, and the history travels in each request.
TOO_LONG = (
    "message too long: {size_kb} KB, the limit is {limit_kb} KB per request (the conversation so far is sent with "
    "each message); shorten it or start a new conversation"
)
SENT_WITH_TOO_LONG = "not sent: it was published together with a request over the {limit_kb} KB limit"

# A whole publish the server refused (`publish_error`), as the typed error a person is shown. By errorType.
_PUBLISH_REFUSALS: dict[str, dict[str, Any]] = {
    "BadRequestException": {
        "code": "invalid_request",
        "message": "the gateway refused the request as malformed or too large (at most 240 KB per request, "
        "the conversation so far included)",
    },
    "UnauthorizedException": {
        "code": "forbidden",
        "message": "the gateway did not accept your sign-in for this request; sign in again",
    },
}
_THROTTLED = {"LimitExceededError", "TooManyRequestsException", "ThrottlingException"}


@dataclass(frozen=True)
class Endpoints:
    http: str
    realtime: str
    region: str
    cognito_endpoint: str | None
    user_pool_id: str
    client_id: str
    ca_file: str | None = None  # a local CA to trust (`aigw dev --tls`)

    @classmethod
    def from_dev_json(cls, path: str | Path = ".aigw/dev.json") -> Endpoints:
        info = json.loads(Path(path).read_text())
        c = info["cognito"]
        ca_file = (info.get("tls") or {}).get("ca_file")
        return cls(
            info["http"], info["realtime"], info["region"], c.get("endpoint"), c["user_pool_id"], c["client_id"],
            ca_file,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.ca_file:
            return None
        context = ssl.create_default_context()
        context.load_verify_locations(self.ca_file)
        return context


def sign_in(endpoints: Endpoints, username: str, password: str) -> dict[str, str]:
    """Cognito USER_PASSWORD_AUTH; returns the AuthenticationResult (IdToken, AccessToken, RefreshToken...)."""
    cognito = boto3.client("cognito-idp", region_name=endpoints.region, endpoint_url=endpoints.cognito_endpoint)
    result = cognito.initiate_auth(
        ClientId=endpoints.client_id,
        AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": username, "PASSWORD": password},
    )
    return result["AuthenticationResult"]


def event_text(event: Any) -> str:
    """An event as `publish` sends it: compact JSON in UTF-8, whose bytes AppSync's 240 KB limit counts."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def too_long_message(event_bytes: int) -> str | None:
    """The `invalid_request` message for a chat request of `event_bytes` bytes, or None when it fits."""
    if event_bytes <= MAX_EVENT_BYTES:
        return None
    return TOO_LONG.format(size_kb=math.ceil(event_bytes / 1024), limit_kb=MAX_EVENT_BYTES // 1024)


def publish_refusal(frame: dict[str, Any]) -> dict[str, Any]:
    """The typed error fields (`code`, `message`, maybe `retryAfterSeconds`) of a `publish_error` frame."""
    errors = frame.get("errors") or [{}]
    error_type = str(errors[0].get("errorType") or "UnknownError")
    if error_type in _PUBLISH_REFUSALS:
        return dict(_PUBLISH_REFUSALS[error_type])
    if error_type in _THROTTLED:
        return {"code": "rate_limited", "message": "too many requests right now", "retryAfterSeconds": 1}
    return {"code": "internal", "message": f"the gateway could not take the request ({error_type}); try again"}


def chat_request_id(event: Any) -> str | None:
    """The `requestId` of a chat request (an event with `requestId` and `messages`), else None."""
    if isinstance(event, dict) and isinstance(event.get("messages"), list) and isinstance(event.get("requestId"), str):
        return event["requestId"]
    return None


def channel_matches(subscribed: str, channel: str) -> bool:
    """Whether a subscription to `subscribed` (maybe ending in `/*`, strictly below) receives `channel`."""
    if subscribed.endswith("/*"):
        return channel.startswith(subscribed[:-1]) and len(channel) > len(subscribed) - 1
    return subscribed == channel


def token_sub(token: str) -> str:
    """The `sub` claim of a JWT (read, not verified: the server verifies)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]


class ProtocolError(RuntimeError):
    """The server answered an operation with an error frame."""

    def __init__(self, frame: dict[str, Any]) -> None:
        errors = frame.get("errors") or [{}]
        super().__init__(f"{frame.get('type')}: {errors[0].get('errorType')}: {errors[0].get('message')}")
        self.frame = frame


@dataclass
class EventsClient:
    endpoints: Endpoints
    token: str
    _session: aiohttp.ClientSession | None = None
    _ws: aiohttp.ClientWebSocketResponse | None = None
    _queues: dict[str, asyncio.Queue[dict[str, Any]]] = field(default_factory=dict)
    _channels: dict[str, str] = field(default_factory=dict)  # subscription id -> channel
    _pending: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _reader: asyncio.Task[None] | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"host": urlparse(self.endpoints.http).netloc, "Authorization": self.token}

    async def __aenter__(self) -> EventsClient:
        await self._connect()
        return self

    async def _connect(self) -> None:
        header = base64.urlsafe_b64encode(json.dumps(self.auth).encode()).decode().rstrip("=")
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(
            self.endpoints.realtime,
            protocols=[SUBPROTOCOL, f"header-{header}"],
            ssl=self.endpoints.ssl_context() or True,
        )
        await self._ws.send_json({"type": "connection_init"})
        ack = await self._ws.receive_json(timeout=10)
        if ack.get("type") != "connection_ack":
            await self.close()
            raise ProtocolError(ack)
        self._reader = asyncio.create_task(self._read())

    @property
    def connected(self) -> bool:
        """False once the socket closed (a redeploy, a network blip): `reconnect` then restores it."""
        return self._reader is not None and not self._reader.done() and self._ws is not None and not self._ws.closed

    async def reconnect(self, attempts: int = 5) -> None:
        """A new connection with every subscription renewed under its old id, so queues keep filling; events
        sent while down are not replayed by AppSync: callers resume their answers (`action: resume`)."""
        subscriptions = dict(self._channels)
        for attempt in range(attempts):
            await self.close()
            try:
                await self._connect()
                for sub_id, channel in subscriptions.items():
                    await self._call({"type": "subscribe", "id": sub_id, "channel": channel,
                                      "authorization": self.auth})
                return
            except (OSError, TimeoutError, aiohttp.ClientError, ProtocolError):
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(min(2.0, 0.2 * 2**attempt))

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._reader:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                frame = json.loads(message.data)
                kind, frame_id = frame.get("type"), frame.get("id")
                if kind == "data" and frame_id in self._queues:
                    await self._queues[frame_id].put(json.loads(frame["event"]))
                elif frame_id in self._pending:
                    self._pending.pop(frame_id).set_result(frame)
        finally:
            # Nothing answers an operation of a closed socket: fail them now rather than at their timeout.
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the connection to the gateway closed"))
            self._pending.clear()

    async def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self._ws is not None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message["id"]] = future
        await self._ws.send_json(message)
        frame = await asyncio.wait_for(future, 30)
        if frame["type"].endswith("_error") or frame["type"] == "error":
            raise ProtocolError(frame)
        return frame

    async def subscribe(self, channel: str) -> asyncio.Queue[dict[str, Any]]:
        queue, _ = await self._subscribe(channel)
        return queue

    async def _subscribe(self, channel: str) -> tuple[asyncio.Queue[dict[str, Any]], str]:
        sub_id = uuid.uuid4().hex
        self._queues[sub_id] = asyncio.Queue()
        self._channels[sub_id] = channel
        await self._call({"type": "subscribe", "id": sub_id, "channel": channel, "authorization": self.auth})
        return self._queues[sub_id], sub_id

    async def unsubscribe(self, sub_id: str) -> None:
        self._queues.pop(sub_id, None)
        self._channels.pop(sub_id, None)
        await self._call({"type": "unsubscribe", "id": sub_id})

    async def publish(self, channel: str, events: list[Any]) -> dict[str, Any]:
        """Publish events; answers the `publish_success` frame, or raises `ProtocolError` on an error frame.

        A batch of chat requests is refused here when one is over the event limit, and turned into a refusal
        when the server answers it with `publish_error` (see the module docstring): in both cases the answer has
        every request in `failed` and each request's typed `error` event is already in the subscriptions' queues.
        """
        texts = [event_text(e) for e in events]
        chat_batch = bool(events) and all(chat_request_id(e) for e in events)
        if chat_batch:
            messages = [too_long_message(len(text.encode())) for text in texts]
            if any(messages):
                limit_kb = MAX_EVENT_BYTES // 1024
                other = SENT_WITH_TOO_LONG.format(limit_kb=limit_kb)
                return self._refused(events, [{"code": "invalid_request", "message": m or other} for m in messages])
        message = {"type": "publish", "id": uuid.uuid4().hex, "channel": channel, "events": texts,
                   "authorization": self.auth}
        try:
            return await self._call(message)
        except ProtocolError as err:
            if not chat_batch or err.frame.get("type") != "publish_error":
                raise
            return self._refused(events, [publish_refusal(err.frame)] * len(events))

    def _refused(self, requests: list[dict[str, Any]], refusals: list[dict[str, Any]]) -> dict[str, Any]:
        """Tell refused chat requests as the gateway does: `failed` entries, and typed `error` events."""
        sub = token_sub(self.token)
        failed = []
        for index, (request, refusal) in enumerate(zip(requests, refusals, strict=True)):
            conversation_id = request.get("conversationId")
            failed.append({"identifier": str(uuid.uuid4()), "index": index, "errorCode": 400,
                           "errorMessage": f"{refusal['code']}: {refusal['message']}"})
            error = {"type": "error", "requestId": request["requestId"], "conversationId": conversation_id, **refusal}
            responses = f"/responses/{sub}" + (f"/{conversation_id}" if isinstance(conversation_id, str) else "")
            for sub_id, subscribed in self._channels.items():
                if channel_matches(subscribed, responses) and sub_id in self._queues:
                    self._queues[sub_id].put_nowait(error)
        return {"type": "publish_success", "id": None, "successful": [], "failed": failed, "refused_by": "client"}

    async def ask(
        self, messages: list[dict[str, Any]], *, conversation_id: str, model_id: str | None = None,
        max_tokens: int | None = None, timeout_s: float = 60,
    ) -> AsyncIterator[dict[str, Any]]:
        """Publish one chat request; yield its events (`start`, `delta`..., `end` | `error`)."""
        sub = token_sub(self.token)
        channel = f"/responses/{sub}/{conversation_id}"
        queue, sub_id = await self._subscribe(channel)
        try:
            async for event in self._answer(queue, sub, conversation_id, messages, model_id, max_tokens, timeout_s):
                yield event
        finally:
            await self.unsubscribe(sub_id)  # a connection may hold only 200 subscriptions

    async def _answer(
        self, queue: asyncio.Queue[dict[str, Any]], sub: str, conversation_id: str, messages: list[dict[str, Any]],
        model_id: str | None, max_tokens: int | None, timeout_s: float,
    ) -> AsyncIterator[dict[str, Any]]:
        request_id = uuid.uuid4().hex
        request: dict[str, Any] = {"requestId": request_id, "conversationId": conversation_id, "messages": messages}
        if model_id:
            request["modelId"] = model_id
        if max_tokens:
            request["maxTokens"] = max_tokens
        answer = await self.publish(f"/chat/{sub}/{conversation_id}", [request])
        if answer.get("failed"):
            # The gatekeeper refused the event; the typed error event follows on the responses channel.
            pass
        while True:
            event = await asyncio.wait_for(queue.get(), timeout_s)
            if event.get("requestId") != request_id:
                continue
            yield event
            if event["type"] in ("end", "error"):
                return
