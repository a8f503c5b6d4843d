"""A local AWS AppSync Events server (HTTP publish + WebSocket realtime) for ``aigw dev`` and tests.

Contract: ``/work/shared/reference/appsync-events-protocol.md``. Channel path rules come from
`runtime.channels.parse_channel` (the one owner); IAM SigV4 checking reuses
`aigw.emulators.appsync_receiver.sigv4_error`.

Endpoints
---------
- ``POST /event`` (`EventsServer.http_url`): ``{"channel", "events"}`` with real auth headers. 200
  ``{"successful": [{"identifier", "index"}], "failed": [{"identifier", "index", "errorCode", "errorMessage"}]}``
  (a partial or total per-event failure is still 200); otherwise ``{"errors": [{"errorType", "message"}]}``:
  401 ``UnauthorizedException`` (missing/bad credentials), 400 ``BadRequestException`` (body, channel or
  event limits), 404 ``ResourceNotFound`` (unknown namespace), 403 ``UnauthorizedException`` (auth mode not
  allowed on the namespace, or the handler raised ``UnauthorizedException``), 500 ``InternalFailureException``
  (handler crashed or timed out). ``OPTIONS`` answers CORS preflights; every answer carries
  ``Access-Control-Allow-Origin: *`` so a browser UI on another local port can publish.
- ``GET /event/realtime`` (`EventsServer.realtime_url`): the WebSocket. The server selects subprotocol
  ``aws-appsync-event-ws`` when offered (a client offering none is tolerated).

Protocol decisions (where the contract leaves a choice)
-------------------------------------------------------
- Connection auth: the ``header-<base64url JSON>`` subprotocol (padding optional), else the ordinary upgrade
  headers (``Authorization`` compared case-insensitively). ``Authorization`` starting ``AWS4-HMAC-SHA256`` is
  IAM (verified as a signed ``POST /event`` of body ``{}``); any other value is a Cognito JWT (a ``Bearer``
  prefix is tolerated and stripped); ``x-api-key`` alone is refused (API keys are not emulated). A refused
  connection is *upgraded*, then sent ``{"type": "connection_error", "errors": [...]}`` and closed with code
  4401 (4400 for a malformed header subprotocol): every AppSync client reads ``connection_error``, whereas a
  401 before the upgrade only surfaces as an opaque handshake failure in browsers.
- ``connection_init`` is optional; each one is answered ``connection_ack`` with ``connectionTimeoutMs``.
  ``{"type": "ka"}`` is sent every ``keepalive_s`` from the moment the connection is accepted.
- Per-message auth: a message's own non-empty ``authorization`` map is authenticated like the connection's
  (IAM: signed body ``{"channel": C}`` for subscribe, ``{"channel": C, "events": [...]}`` for publish, both
  compact and ``json.dumps``-default spacing accepted); otherwise the connection's identity is used.
- Order of checks for subscribe and publish: credentials -> channel rules (``BadRequestException``) ->
  namespace exists (``ResourceNotFound``) -> auth mode allowed on the namespace (``UnauthorizedException``)
  -> (publish) event limits (``BadRequestException``) -> handler. Over the WebSocket every failure is a
  ``subscribe_error``/``publish_error``/``unsubscribe_error``/``error`` frame carrying the message ``id`` when
  it is known; the connection stays open.
- onSubscribe: ``None`` (or any value without ``error``) allows; ``{"error": msg}`` or an exception whose class
  (or a base class) is named ``UnauthorizedException`` rejects with ``UnauthorizedException``; any other
  exception or a timeout is ``InternalFailureException``.
- onPublish: ``{"events": [...]}``: entries with ``error`` are ``failed`` (``errorCode`` 400); entries with
  ``payload`` are ``successful`` and broadcast with that (possibly transformed) payload; input events the
  handler leaves out are dropped silently (reported ``successful``, not broadcast). ``{"error": msg}`` fails
  every event of the batch (still ``publish_success``/200, all in ``failed``). An exception or timeout is a
  ``publish_error`` (WS) / 500 (HTTP), or ``UnauthorizedException`` / 403 when the exception is named so.
  Without a handler the events are broadcast as the exact strings published. ``identifier`` is the event
  ``id`` given to the handler (a UUID).
- Wildcards: ``/ns/a/*`` matches every channel strictly below ``/ns/a`` (``/ns/a/x``, ``/ns/a/x/y``), not
  ``/ns/a`` itself.
- Delivery: one ``data`` frame per event per matching subscription (a connection with two matching
  subscriptions gets one frame for each). Each connection has one writer, and a publish enqueues all its
  frames at once, so events are delivered in publish order; a WebSocket's operations are serialised per
  channel (publish) and per subscription id (subscribe/unsubscribe), so one publisher's publishes on a
  channel reach every subscriber in order. A connection more than ``max_pending_frames`` behind is closed
  (code 1013).
- Handlers are sync functions (the Lambda entry points) called as ``handler(event, context)``, or
  `aigw.lambda_processes.LambdaProcessPool`s (what `aigw dev` uses). A pool runs each invocation in a process of
  its own, as Lambda does, under the pool's timeout (the function's): no lock, and a handler that overruns is
  killed, so it does nothing after the timeout; its errors keep their type names across the process boundary.
  A plain function runs in this process's thread pool under ``handler_timeout_s`` (a timed-out one keeps
  running in its thread); ``serialize_handlers`` (default on) runs those one at a time, as Powertools'
  ``AppSyncEventsResolver`` keeps the current event in process-global state, so such a handler must not wait on
  a publish to this server that itself runs a handler (a publish to a namespace without ``on_publish`` is fine).
- Limits: 1-5 events per publish, each a string <= 240 KB holding JSON (no ``NaN``); 200 subscriptions per
  connection (``MaxSubscriptionsReachedError``); a subscription id already active on the connection is a
  ``BadRequestException``. Not modelled: API key / OIDC / Lambda authorizers, publish rate limits, the 24 h
  connection limit, ``broadcast_error``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from aigw.emulators.appsync_receiver import (
    InvalidEvents,
    published_events,
    sigv4_error,
)
from aigw.json_text import JsonTextError, parse_json
from aigw.lambda_processes import FunctionError, FunctionTimeout, LambdaProcessPool
from runtime.channels import COGNITO_AUTH, IAM_AUTH, Channel, parse_channel
from runtime.errors import InvalidChannelError

__all__ = [
    "AWS_IAM",
    "COGNITO",
    "MAX_SUBSCRIPTIONS_PER_CONNECTION",
    "SUBPROTOCOL",
    "AuthError",
    "Authenticator",
    "EventsServer",
    "Identity",
    "LocalAuthenticator",
    "LocalLambdaContext",
    "NamespaceConfig",
    "OperationError",
    "ServerThread",
    "decode_header_subprotocol",
    "encode_header_subprotocol",
]

logger = logging.getLogger(__name__)

SUBPROTOCOL = "aws-appsync-event-ws"
HEADER_SUBPROTOCOL_PREFIX = "header-"
COGNITO = COGNITO_AUTH
AWS_IAM = IAM_AUTH
SUPPORTED_AUTH_MODES = frozenset({COGNITO, AWS_IAM})
MAX_SUBSCRIPTIONS_PER_CONNECTION = 200

_SIGV4_PREFIX = "AWS4-HMAC-SHA256"
_MAX_BODY_BYTES = 8 * 1024 * 1024  # 5 x 240 KB events, generously allowing for JSON string escaping
_MAX_ID_CHARS = 256
_CLOSE_UNAUTHORIZED = 4401
_CLOSE_BAD_REQUEST = 4400
_CLOSE_TRY_AGAIN_LATER = 1013  # the client fell too far behind


# --------------------------------------------------------------------------------------------- identities


class AuthError(Exception):
    """Credentials that do not authenticate (bad/expired token, bad signature). The message is shown to the caller."""


class OperationError(Exception):
    """An AppSync error answer: ``error_type`` (e.g. ``BadRequestException``), ``message`` and an HTTP ``status``."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message

    def errors(self) -> list[dict[str, str]]:
        return [{"errorType": self.error_type, "message": self.message}]


def _unauthorized(message: str, status: int = 401) -> OperationError:
    return OperationError(status, "UnauthorizedException", message)


def _bad_request(message: str) -> OperationError:
    return OperationError(400, "BadRequestException", message)


@dataclass(frozen=True)
class Identity:
    """Who made a request, as an authenticator established it."""

    kind: Literal["cognito", "iam"]
    sub: str | None
    username: str | None
    groups: list[str] | None
    claims: dict[str, Any]
    account_id: str | None = None
    user_arn: str | None = None

    @property
    def auth_mode(self) -> str:
        return COGNITO if self.kind == "cognito" else AWS_IAM

    def to_event_identity(self, source_ip: str | None = None) -> dict[str, Any]:
        """The ``identity`` object AppSync hands channel-namespace handlers for this caller."""
        source = [source_ip] if source_ip else []
        if self.kind == "cognito":
            return {
                "sub": self.sub,
                "issuer": self.claims.get("iss"),
                "username": self.username,
                "claims": dict(self.claims),
                "sourceIp": source,
                "defaultAuthStrategy": "ALLOW",
                "groups": list(self.groups) if self.groups is not None else None,
            }
        return {
            "accountId": self.account_id,
            "userArn": self.user_arn,
            "username": self.username,
            "sourceIp": source,
            "cognitoIdentityPoolId": None,
            "cognitoIdentityId": None,
            "cognitoIdentityAuthType": None,
            "cognitoIdentityAuthProvider": None,
        }


class Authenticator(Protocol):
    """Turns credentials into an `Identity`; raises `AuthError` when they do not authenticate.

    Both methods are sync and are run in a worker thread. ``headers`` of `iam` is a case-insensitive
    multi-mapping (``multidict.CIMultiDict``: ``get``/``getall``) of the signed request's headers.
    """

    def cognito(self, token: str) -> Identity: ...

    def iam(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Identity: ...


def _as_message(headers: Mapping[str, str]) -> Message:
    """``headers`` as an `email.message.Message` (case-insensitive, repeated values kept) for `sigv4_error`."""
    message = Message()
    items: Iterable[tuple[str, str]] = headers.items()
    for name, value in items:
        message[name] = value  # Message appends, so repeated headers survive
    return message


class LocalAuthenticator:
    """An `Authenticator`: IAM by SigV4 against ``iam_credentials`` (access key -> secret), Cognito by ``cognito``.

    ``cognito(token) -> Identity`` is the JWT verifier (it raises `AuthError`); without one every token is
    refused. ``iam_identities`` optionally maps an access key to the `Identity` to report; otherwise the
    identity is ``arn:aws:iam::<account_id>:user/<access key>``.
    """

    def __init__(
        self,
        iam_credentials: Mapping[str, str],
        *,
        cognito: Callable[[str], Identity] | None = None,
        region: str | None = None,
        account_id: str = "000000000000",
        iam_identities: Mapping[str, Identity] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.iam_credentials = dict(iam_credentials)
        self._cognito = cognito
        self.region = region
        self.account_id = account_id
        self.iam_identities = dict(iam_identities or {})
        self.clock = clock

    def cognito(self, token: str) -> Identity:
        if self._cognito is None:
            raise AuthError("Cognito user pool authorization is not configured")
        return self._cognito(token)

    def iam(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Identity:
        message = _as_message(headers)
        problem = sigv4_error(method, path, message, body, self.iam_credentials, now=self.clock(), region=self.region)
        if problem is not None:
            raise AuthError(problem)
        credential = (message.get("Authorization") or "").partition("Credential=")[2]
        access_key = credential.split("/", 1)[0]
        known = self.iam_identities.get(access_key)
        if known is not None:
            return known
        return Identity(
            kind="iam",
            sub=None,
            username=access_key,
            groups=None,
            claims={},
            account_id=self.account_id,
            user_arn=f"arn:aws:iam::{self.account_id}:user/{access_key}",
        )


# --------------------------------------------------------------------------------------------- configuration


Handler = Callable[[dict[str, Any], Any], Any]


@dataclass
class NamespaceConfig:
    """A channel namespace: allowed auth modes and optional DIRECT Lambda (REQUEST_RESPONSE) handlers."""

    name: str
    publish_auth: set[str]
    subscribe_auth: set[str]
    on_publish: Handler | None = None
    on_subscribe: Handler | None = None

    def __post_init__(self) -> None:
        channel = parse_channel(self.name, allow_wildcard=False)
        if channel.segments:
            raise ValueError(f"namespace name {self.name!r} must be a single segment")
        for modes in (self.publish_auth, self.subscribe_auth):
            unknown = set(modes) - SUPPORTED_AUTH_MODES
            if unknown:
                raise ValueError(f"unsupported auth modes {sorted(unknown)}; use {sorted(SUPPORTED_AUTH_MODES)}")


@dataclass
class LocalLambdaContext:
    """Enough of a Lambda context object for handlers (and Powertools) run by the local server."""

    function_name: str
    timeout_s: float
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 128
    log_group_name: str = "/aws/lambda/local"
    log_stream_name: str = "local"
    _started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:local:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self._started)) * 1000))


# --------------------------------------------------------------------------------------------- helpers


def encode_header_subprotocol(auth: Mapping[str, str]) -> str:
    """``header-<base64url(JSON auth map)>`` without padding, as AppSync clients send it."""
    encoded = base64.urlsafe_b64encode(json.dumps(dict(auth)).encode()).decode().rstrip("=")
    return HEADER_SUBPROTOCOL_PREFIX + encoded


def decode_header_subprotocol(value: str) -> dict[str, str]:
    """The auth map of a ``header-...`` subprotocol (padding optional); `OperationError` 400 if malformed."""
    data = value[len(HEADER_SUBPROTOCOL_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(data.rstrip("=") + "=" * (-len(data.rstrip("=")) % 4))
        auth = parse_json(raw, "the header subprotocol")
    except (binascii.Error, ValueError):
        raise _bad_request("the header subprotocol is not base64url-encoded JSON") from None
    if not isinstance(auth, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in auth.items()):
        raise _bad_request("the header subprotocol must encode a JSON object of string headers")
    return auth


def parse_published_events(events: object) -> list[Any]:
    """The parsed payloads of a publish's ``events``, validated against AppSync's limits."""
    try:
        return published_events(events)
    except InvalidEvents as exc:
        raise _bad_request(str(exc)) from exc


def _parse_channel(raw: object, *, publish: bool) -> Channel:
    try:
        return parse_channel(raw, allow_wildcard=not publish)
    except InvalidChannelError as exc:
        raise _bad_request(str(exc)) from exc


def _exception_named_unauthorized(exc: BaseException) -> bool:
    if isinstance(exc, FunctionError):  # raised in a handler's own process: its class names came along
        return "UnauthorizedException" in exc.error_types
    return any(cls.__name__ == "UnauthorizedException" for cls in type(exc).__mro__)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


# --------------------------------------------------------------------------------------------- connections


@dataclass(eq=False)
class _Subscription:
    id: str
    channel: Channel
    connection: _Connection


class _Connection:
    """One WebSocket client: its identity, subscriptions, a single ordered writer and its in-flight operations."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        identity: Identity,
        headers: dict[str, str],
        remote: str | None,
        max_pending: int,
    ) -> None:
        self.ws = ws
        self.identity = identity
        self.headers = headers
        self.remote = remote
        self.subscriptions: dict[str, _Subscription] = {}
        self.closed = False
        self._max_pending = max_pending
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._tails: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.tasks: set[asyncio.Task[Any]] = set()

    def send(self, message: dict[str, Any]) -> None:
        """Queue a frame for the writer (never blocks; frames go out in the order queued)."""
        if self.closed:
            return
        if self._queue.qsize() >= self._max_pending:
            logger.warning("events server: closing a connection %d frames behind", self._queue.qsize())
            self.closed = True
            self.spawn_task(self.ws.close(code=_CLOSE_TRY_AGAIN_LATER, message=b"client too slow"))
            return
        self._queue.put_nowait(_dumps(message))

    async def writer(self) -> None:
        while True:
            frame = await self._queue.get()
            if frame is None:
                return
            try:
                await self.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                logger.debug("events server: write to a closing connection failed", exc_info=True)
                return

    def finish_writer(self) -> None:
        self._queue.put_nowait(None)

    def spawn_task(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def run_serialized(self, key: tuple[str, str], operation: Callable[[], Awaitable[None]]) -> None:
        """Run ``operation`` after every earlier operation with the same ``key`` on this connection has finished."""
        previous = self._tails.get(key)

        async def runner() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            await operation()

        task = self.spawn_task(runner())
        self._tails[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tails.get(key) is done:
                del self._tails[key]

        task.add_done_callback(forget)


# --------------------------------------------------------------------------------------------- the server


class EventsServer:
    """The local AppSync Events API: ``POST /event`` and the ``/event/realtime`` WebSocket (see module docstring).

    ``namespaces`` are the channel namespaces; ``connection_auth`` the auth modes allowed to open a
    WebSocket (default: every supported mode). ``http_domain`` is the host clients use (in URLs and in
    authorization maps); by default ``host:port``. ``ssl_context`` serves https/wss. ``handler_timeout_s`` is
    the Lambda timeout applied to plain-function handlers (a `LambdaProcessPool` has its own);
    ``handler_workers`` sizes the thread pool that runs them or waits on the pools (size it to their concurrency).
    """

    def __init__(
        self,
        authenticator: Authenticator,
        namespaces: list[NamespaceConfig],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        keepalive_s: float = 60.0,
        connection_timeout_ms: int = 300_000,
        http_domain: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connection_auth: set[str] | None = None,
        handler_timeout_s: float = 30.0,
        handler_workers: int = 8,
        serialize_handlers: bool = True,
        max_pending_frames: int = 10_000,
        static_files: Callable[[], Mapping[str, tuple[Path, str]]] | None = None,
        static_config: Callable[[], dict[str, Any]] | None = None,
        static_headers: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.static_files = static_files
        self.static_config = static_config
        self.static_headers = static_headers
        self.namespaces = {ns.name: ns for ns in namespaces}
        if len(self.namespaces) != len(namespaces):
            raise ValueError("namespace names must be unique")
        self.host = host
        self._requested_port = port
        self.keepalive_s = keepalive_s
        self.connection_timeout_ms = connection_timeout_ms
        self._http_domain = http_domain
        self.ssl_context = ssl_context
        self.connection_auth = set(connection_auth) if connection_auth is not None else set(SUPPORTED_AUTH_MODES)
        self.handler_timeout_s = handler_timeout_s
        self.handler_workers = handler_workers
        self.max_pending_frames = max_pending_frames
        self._handler_lock = threading.Lock() if serialize_handlers else None
        self._executor: ThreadPoolExecutor | None = None
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._connections: set[_Connection] = set()
        # Subscriptions indexed for delivery: exact path -> subs; wildcard prefix (parts before '*') -> subs.
        self._exact: dict[str, set[_Subscription]] = {}
        self._wildcard: dict[tuple[str, ...], set[_Subscription]] = {}

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("events server already started")
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_route("POST", "/event", self._handle_http_publish)
        app.router.add_route("OPTIONS", "/event", self._handle_preflight)
        app.router.add_route("GET", "/event/realtime", self._handle_websocket)
        app.router.add_route("*", "/event", self._handle_method_not_allowed)
        if self.static_config is not None:
            app.router.add_route("GET", "/config.json", self._handle_static_config)
        if self.static_files is not None:
            app.router.add_route("GET", "/", self._handle_static)
            app.router.add_route("GET", "/{name:.+}", self._handle_static)
        self._executor = ThreadPoolExecutor(self.handler_workers, thread_name_prefix="aigw-events-handler")
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port, ssl_context=self.ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]
        logger.info("events server listening on %s and %s", self.http_url, self.realtime_url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await self.close_connections(1001, "server shutting down")
        await runner.cleanup()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def close_connections(self, code: int = 1012, reason: str = "service restart") -> int:
        """Close every WebSocket (as a redeploy or a network blip would); returns how many were open.
        Clients are expected to reconnect and subscribe again."""
        connections = list(self._connections)
        for connection in connections:
            for task in list(connection.tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await connection.ws.close(code=code, message=reason.encode())
        return len(connections)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("events server not started")
        return self._port

    @property
    def http_domain(self) -> str:
        """The host clients put in URLs and authorization maps (``host:port`` unless configured)."""
        return self._http_domain or f"{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.http_domain}/event"

    @property
    def realtime_url(self) -> str:
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://{self.http_domain}/event/realtime"

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # -- authentication --------------------------------------------------------------------------------

    async def _in_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    async def _authenticate(self, auth: Mapping[str, str], signed_bodies: list[bytes]) -> Identity:
        """The identity of an authorization map (or upgrade/HTTP headers); `OperationError` 401 if refused.

        IAM maps are verified as a signed ``POST /event`` of one of ``signed_bodies`` (first that verifies).
        """
        lower = CIMultiDict(auth)
        authorization = lower.get("authorization")
        try:
            if authorization and authorization.startswith(_SIGV4_PREFIX):
                problem = "no signed body to verify"
                for body in signed_bodies:
                    try:
                        return await self._in_thread(self.authenticator.iam, "POST", "/event", lower, body)
                    except AuthError as exc:
                        problem = str(exc)
                raise _unauthorized(problem)
            if authorization:
                token = authorization.strip()
                if token[:7].lower() == "bearer ":
                    token = token[7:].strip()
                return await self._in_thread(self.authenticator.cognito, token)
        except AuthError as exc:
            raise _unauthorized(str(exc) or "invalid credentials") from exc
        if lower.get("x-api-key"):
            raise _unauthorized("API_KEY authorization is not supported by the local events server")
        raise _unauthorized("missing Authorization")

    @staticmethod
    def _signed_bodies(payload: dict[str, Any]) -> list[bytes]:
        """The serialisations a client may have signed for ``payload`` (JavaScript's and Python's defaults)."""
        compact = json.dumps(payload, separators=(",", ":")).encode()
        spaced = json.dumps(payload).encode()
        return [compact] if compact == spaced else [compact, spaced]

    def _namespace(self, channel: Channel) -> NamespaceConfig:
        namespace = self.namespaces.get(channel.namespace)
        if namespace is None:
            raise OperationError(404, "ResourceNotFound", f"channel namespace {channel.namespace!r} does not exist")
        return namespace

    @staticmethod
    def _check_mode(identity: Identity, allowed: set[str], operation: str, namespace: str) -> None:
        if identity.auth_mode not in allowed:
            raise _unauthorized(
                f"{identity.auth_mode} is not allowed to {operation} on namespace {namespace!r}"
                f" (allowed: {', '.join(sorted(allowed)) or 'none'})",
                status=403,
            )

    # -- handlers --------------------------------------------------------------------------------------

    def _event(
        self,
        identity: Identity,
        source_ip: str | None,
        headers: Mapping[str, str],
        channel: Channel,
        operation: str,
        events: list[dict[str, Any]] | None,
    ) -> dict[str, Any]:
        return {
            "identity": identity.to_event_identity(source_ip),
            "request": {"headers": dict(headers), "domainName": None},
            "info": {
                "channel": {"path": channel.path, "segments": [channel.namespace, *channel.segments]},
                "channelNamespace": {"name": channel.namespace},
                "operation": operation,
            },
            "events": events,
            "result": None,
            "error": None,
            "prev": None,
            "stash": {},
            "outErrors": [],
        }

    def _call_locked(self, handler: Handler, event: dict[str, Any], context: LocalLambdaContext) -> Any:
        if self._handler_lock is None:
            return handler(event, context)
        with self._handler_lock:
            return handler(event, context)

    async def _invoke(self, handler: Handler, event: dict[str, Any]) -> Any:
        """Run a handler off the event loop under its Lambda timeout; its exceptions (and timeouts) propagate."""
        loop = asyncio.get_running_loop()
        if isinstance(handler, LambdaProcessPool):
            # Its own process: nothing shared, so no lock; the pool enforces the function's timeout by killing
            # the process (FunctionTimeout), so no asyncio timeout races it.
            context = LocalLambdaContext(function_name=handler.function_name, timeout_s=handler.timeout_s)
            return await loop.run_in_executor(self._executor, handler, event, context)
        name = getattr(handler, "__name__", type(handler).__name__)
        context = LocalLambdaContext(function_name=name, timeout_s=self.handler_timeout_s)
        future = loop.run_in_executor(self._executor, self._call_locked, handler, event, context)
        return await asyncio.wait_for(future, self.handler_timeout_s)

    async def _run_subscribe_handler(self, namespace: NamespaceConfig, event: dict[str, Any]) -> None:
        if namespace.on_subscribe is None:
            return
        try:
            result = await self._invoke(namespace.on_subscribe, event)
        except (TimeoutError, FunctionTimeout) as exc:
            raise OperationError(500, "InternalFailureException", "the onSubscribe handler timed out") from exc
        except Exception as exc:
            if _exception_named_unauthorized(exc):
                raise _unauthorized(str(exc) or "subscription rejected", status=403) from exc
            logger.exception("events server: onSubscribe handler of %r failed", namespace.name)
            raise OperationError(500, "InternalFailureException", "the onSubscribe handler failed") from exc
        if isinstance(result, dict) and result.get("error"):
            raise _unauthorized(str(result["error"]), status=403)

    # -- publish (shared by HTTP and WebSocket) --------------------------------------------------------

    async def publish(
        self,
        identity: Identity,
        channel_raw: object,
        events_raw: object,
        *,
        headers: Mapping[str, str] | None = None,
        source_ip: str | None = None,
    ) -> dict[str, list[dict[str, Any]]]:
        """Validate, run onPublish, broadcast; ``{"successful", "failed"}`` or `OperationError`.

        ``identity`` must already be authenticated. The one publish path of HTTP and WebSocket publishes.
        """
        channel = _parse_channel(channel_raw, publish=True)
        namespace = self._namespace(channel)
        self._check_mode(identity, namespace.publish_auth, "publish", namespace.name)
        payloads = parse_published_events(events_raw)
        assert isinstance(events_raw, list)
        ids = [str(uuid.uuid4()) for _ in payloads]
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        outgoing: list[str] = []
        if namespace.on_publish is None:
            outgoing = list(events_raw)
            successful = [{"identifier": ids[i], "index": i} for i in range(len(ids))]
        else:
            event = self._event(
                identity,
                source_ip,
                headers or {},
                channel,
                "PUBLISH",
                [{"id": ids[i], "payload": payload} for i, payload in enumerate(payloads)],
            )
            result = await self._run_publish_handler(namespace, event)
            by_id = self._handler_results(namespace, ids, result)
            for index, identifier in enumerate(ids):
                entry = by_id.get(identifier)
                if entry is not None and "error" in entry and entry["error"] is not None:
                    failed.append(
                        {
                            "identifier": identifier,
                            "index": index,
                            "errorCode": 400,
                            "errorMessage": str(entry["error"]),
                        }
                    )
                    continue
                successful.append({"identifier": identifier, "index": index})
                if entry is not None:
                    outgoing.append(_dumps(entry.get("payload")))
        self._broadcast(channel, outgoing)
        return {"successful": successful, "failed": failed}

    async def _run_publish_handler(self, namespace: NamespaceConfig, event: dict[str, Any]) -> Any:
        assert namespace.on_publish is not None
        try:
            return await self._invoke(namespace.on_publish, event)
        except (TimeoutError, FunctionTimeout) as exc:
            raise OperationError(500, "InternalFailureException", "the onPublish handler timed out") from exc
        except Exception as exc:
            if _exception_named_unauthorized(exc):
                raise _unauthorized(str(exc) or "publish rejected", status=403) from exc
            logger.exception("events server: onPublish handler of %r failed", namespace.name)
            raise OperationError(500, "InternalFailureException", "the onPublish handler failed") from exc

    @staticmethod
    def _handler_results(namespace: NamespaceConfig, ids: list[str], result: Any) -> dict[str, dict[str, Any]]:
        """The handler's answer per event id (``{"error"}`` for all when the whole batch failed)."""
        if isinstance(result, dict) and result.get("error") is not None and "events" not in result:
            return {identifier: {"id": identifier, "error": str(result["error"])} for identifier in ids}
        events = result.get("events") if isinstance(result, dict) else None
        if not isinstance(events, list):
            logger.warning(
                "events server: onPublish handler of %r returned %r, not {'events': [...]}; failing the batch",
                namespace.name,
                type(result).__name__,
            )
            message = "the onPublish handler returned an invalid response"
            return {identifier: {"id": identifier, "error": message} for identifier in ids}
        known = set(ids)
        by_id: dict[str, dict[str, Any]] = {}
        for entry in events:
            if not isinstance(entry, dict) or entry.get("id") not in known:
                logger.warning("events server: ignoring onPublish result entry %.200r (unknown id)", entry)
                continue
            by_id.setdefault(entry["id"], entry)
        return by_id

    def _broadcast(self, channel: Channel, events: list[str]) -> None:
        """Queue one data frame per event for every matching subscription (synchronously: keeps order)."""
        if not events:
            return
        parts = (channel.namespace, *channel.segments)
        targets: list[_Subscription] = list(self._exact.get(channel.path, ()))
        for length in range(1, len(parts)):
            targets.extend(self._wildcard.get(parts[:length], ()))
        for event in events:
            for subscription in targets:
                subscription.connection.send({"type": "data", "id": subscription.id, "event": event})

    def _add_subscription(self, subscription: _Subscription) -> None:
        channel = subscription.channel
        if channel.is_wildcard:
            prefix = (channel.namespace, *channel.segments[:-1])
            self._wildcard.setdefault(prefix, set()).add(subscription)
        else:
            self._exact.setdefault(channel.path, set()).add(subscription)
        subscription.connection.subscriptions[subscription.id] = subscription

    def _remove_subscription(self, subscription: _Subscription) -> None:
        channel = subscription.channel
        if channel.is_wildcard:
            index: dict[Any, set[_Subscription]] = self._wildcard
            key: Any = (channel.namespace, *channel.segments[:-1])
        else:
            index, key = self._exact, channel.path
        bucket = index.get(key)
        if bucket is not None:
            bucket.discard(subscription)
            if not bucket:
                del index[key]
        subscription.connection.subscriptions.pop(subscription.id, None)

    # -- static web page (`aigw dev` serves web/) -------------------------------------------------------

    async def _handle_static(self, request: web.Request) -> web.StreamResponse:
        assert self.static_files is not None
        name = request.match_info.get("name", "index.html")
        # Only the listed files, looked up by exact name: no path ever reaches the filesystem.
        found = self.static_files().get(name)
        if found is None:
            raise web.HTTPNotFound()
        path, content_type = found
        return web.Response(
            body=path.read_bytes(),
            headers={**self._static_headers(), "Content-Type": content_type, "Cache-Control": "no-cache"},
        )

    async def _handle_static_config(self, request: web.Request) -> web.Response:
        assert self.static_config is not None
        return web.json_response(
            self.static_config(), headers={**self._static_headers(), "Cache-Control": "no-store"}
        )

    def _static_headers(self) -> dict[str, str]:
        headers = {"X-Content-Type-Options": "nosniff"}
        if self.static_headers is not None:
            headers.update(self.static_headers())
        return headers

    # -- HTTP ------------------------------------------------------------------------------------------

    @staticmethod
    def _json(status: int, body: Any) -> web.Response:
        response = web.json_response(body, status=status, dumps=_dumps)
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    async def _handle_preflight(self, request: web.Request) -> web.Response:
        return web.Response(
            status=200,
            headers={
                "Access-Control-Allow-Origin": "*",
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", "*"),
                "Access-Control-Max-Age": "600",
            },
        )

    async def _handle_method_not_allowed(self, request: web.Request) -> web.Response:
        error = OperationError(
            405, "BadRequestException", f"{request.method} is not supported: publish with POST /event"
        )
        return self._json(error.status, {"errors": error.errors()})

    async def _handle_http_publish(self, request: web.Request) -> web.Response:
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge as exc:
                raise OperationError(413, "BadRequestException", "request body too large") from exc
            headers = CIMultiDict(request.headers)
            authorization = headers.get("Authorization", "")
            if authorization.startswith(_SIGV4_PREFIX):
                try:
                    identity = await self._in_thread(
                        self.authenticator.iam, request.method, request.path_qs, headers, body
                    )
                except AuthError as exc:
                    raise _unauthorized(str(exc) or "invalid signature") from exc
            else:
                identity = await self._authenticate(headers, [])
            try:
                payload = parse_json(body, "the request body")
            except JsonTextError as exc:
                raise _bad_request(str(exc)) from None
            if not isinstance(payload, dict):
                raise _bad_request("request body must be a JSON object")
            result = await self.publish(
                identity,
                payload.get("channel"),
                payload.get("events"),
                headers=_lower_headers(request.headers),
                source_ip=request.remote,
            )
        except OperationError as error:
            return self._json(error.status, {"errors": error.errors()})
        return self._json(200, result)

    # -- WebSocket -------------------------------------------------------------------------------------

    def _connection_auth_map(self, request: web.Request) -> dict[str, str]:
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        for protocol in offered:
            if protocol.startswith(HEADER_SUBPROTOCOL_PREFIX):
                return decode_header_subprotocol(protocol)
        return dict(request.headers)

    async def _handle_websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), autoping=True, max_msg_size=_MAX_BODY_BYTES)
        if not ws.can_prepare(request).ok:
            error = _bad_request("expected a WebSocket upgrade")
            return self._json(error.status, {"errors": error.errors()})
        await ws.prepare(request)
        try:
            auth = self._connection_auth_map(request)
            identity = await self._authenticate(auth, [b"{}"])
            if identity.auth_mode not in self.connection_auth:
                raise _unauthorized(f"{identity.auth_mode} may not open connections", status=403)
        except OperationError as error:
            with contextlib.suppress(Exception):
                await ws.send_str(_dumps({"type": "connection_error", "errors": error.errors()}))
                code = _CLOSE_BAD_REQUEST if error.error_type == "BadRequestException" else _CLOSE_UNAUTHORIZED
                await ws.close(code=code, message=error.error_type.encode())
            return ws

        headers = _lower_headers(request.headers)
        headers.pop("sec-websocket-protocol", None)
        headers.update(_lower_headers(auth))
        connection = _Connection(ws, identity, headers, request.remote, self.max_pending_frames)
        self._connections.add(connection)
        writer = asyncio.ensure_future(connection.writer())
        keepalive = asyncio.ensure_future(self._keepalive(connection))
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._dispatch(connection, message.data)
                elif message.type == WSMsgType.BINARY:
                    connection.send(self._error_frame("error", None, _bad_request("binary frames are not supported")))
                elif message.type == WSMsgType.ERROR:
                    logger.debug("events server: websocket error %r", ws.exception())
                    break
        finally:
            connection.closed = True
            self._connections.discard(connection)
            for subscription in list(connection.subscriptions.values()):
                self._remove_subscription(subscription)
            keepalive.cancel()
            for task in list(connection.tasks):
                task.cancel()
            writer.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(writer, keepalive, *connection.tasks, return_exceptions=True)
        return ws

    async def _keepalive(self, connection: _Connection) -> None:
        while not connection.closed:
            await asyncio.sleep(self.keepalive_s)
            connection.send({"type": "ka"})

    @staticmethod
    def _error_frame(frame_type: str, message_id: str | None, error: OperationError) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": frame_type}
        if message_id is not None:
            frame["id"] = message_id
        frame["errors"] = error.errors()
        return frame

    def _dispatch(self, connection: _Connection, data: str) -> None:
        """Handle one text frame: answer at once, or start its (serialised) operation."""
        try:
            message = parse_json(data, "the message")
        except JsonTextError as exc:
            connection.send(self._error_frame("error", None, _bad_request(str(exc))))
            return
        if not isinstance(message, dict):
            connection.send(self._error_frame("error", None, _bad_request("the message must be a JSON object")))
            return
        raw_id = message.get("id")
        message_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= _MAX_ID_CHARS else None
        kind = message.get("type")
        if kind == "connection_init":
            connection.send({"type": "connection_ack", "connectionTimeoutMs": self.connection_timeout_ms})
            return
        if kind == "ka":
            return
        if kind not in ("subscribe", "unsubscribe", "publish"):
            error = OperationError(400, "UnsupportedOperation", f"unknown message type {kind!r}")
            connection.send(self._error_frame("error", message_id, error))
            return
        if message_id is None:
            problem = "is missing" if raw_id is None else f"must be a string of 1 to {_MAX_ID_CHARS} characters"
            connection.send(self._error_frame(f"{kind}_error", None, _bad_request(f"the message id {problem}")))
            return
        if kind == "subscribe":
            connection.run_serialized(("id", message_id), lambda: self._ws_subscribe(connection, message_id, message))
        elif kind == "unsubscribe":
            connection.run_serialized(("id", message_id), lambda: self._ws_unsubscribe(connection, message_id))
        else:
            key = message.get("channel")
            connection.run_serialized(
                ("channel", key if isinstance(key, str) else ""),
                lambda: self._ws_publish(connection, message_id, message),
            )

    async def _message_identity(
        self, connection: _Connection, message: dict[str, Any], signed: dict[str, Any]
    ) -> Identity:
        auth = message.get("authorization")
        if auth is None or auth == {}:
            return connection.identity
        if not isinstance(auth, dict) or not all(isinstance(v, str) for v in auth.values()):
            raise _bad_request("authorization must be an object of string headers")
        return await self._authenticate(auth, self._signed_bodies(signed))

    async def _ws_subscribe(self, connection: _Connection, message_id: str, message: dict[str, Any]) -> None:
        try:
            if message_id in connection.subscriptions:
                raise _bad_request(f"subscription id {message_id!r} is already in use on this connection")
            if len(connection.subscriptions) >= MAX_SUBSCRIPTIONS_PER_CONNECTION:
                raise self._max_subscriptions()
            raw_channel = message.get("channel")
            identity = await self._message_identity(connection, message, {"channel": raw_channel})
            channel = _parse_channel(raw_channel, publish=False)
            namespace = self._namespace(channel)
            self._check_mode(identity, namespace.subscribe_auth, "subscribe", namespace.name)
            headers = {**connection.headers, **_lower_headers(message.get("authorization") or {})}
            event = self._event(identity, connection.remote, headers, channel, "SUBSCRIBE", None)
            await self._run_subscribe_handler(namespace, event)
            # Re-checked after the handler ran: no await from here to the success frame, so nothing
            # broadcast to this subscription can overtake subscribe_success.
            if connection.closed:
                return
            if len(connection.subscriptions) >= MAX_SUBSCRIPTIONS_PER_CONNECTION:
                raise self._max_subscriptions()
            self._add_subscription(_Subscription(message_id, channel, connection))
            connection.send({"type": "subscribe_success", "id": message_id})
        except OperationError as error:
            connection.send(self._error_frame("subscribe_error", message_id, error))

    @staticmethod
    def _max_subscriptions() -> OperationError:
        return OperationError(
            400,
            "MaxSubscriptionsReachedError",
            f"a connection may hold at most {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions",
        )

    async def _ws_unsubscribe(self, connection: _Connection, message_id: str) -> None:
        subscription = connection.subscriptions.get(message_id)
        if subscription is None:
            error = OperationError(404, "ResourceNotFound", f"no subscription with id {message_id!r}")
            connection.send(self._error_frame("unsubscribe_error", message_id, error))
            return
        self._remove_subscription(subscription)
        connection.send({"type": "unsubscribe_success", "id": message_id})

    async def _ws_publish(self, connection: _Connection, message_id: str, message: dict[str, Any]) -> None:
        try:
            raw_channel, events = message.get("channel"), message.get("events")
            identity = await self._message_identity(connection, message, {"channel": raw_channel, "events": events})
            headers = {**connection.headers, **_lower_headers(message.get("authorization") or {})}
            result = await self.publish(identity, raw_channel, events, headers=headers, source_ip=connection.remote)
        except OperationError as error:
            connection.send(self._error_frame("publish_error", message_id, error))
            return
        connection.send({"type": "publish_success", "id": message_id, **result})


# --------------------------------------------------------------------------------------------- background thread


class ServerThread:
    """Runs an `EventsServer` on its own event loop in a daemon thread: ``with ServerThread(server) as s: ...``.

    ``__enter__`` returns the (started) server; ``stop()`` (or leaving the block) stops it and the loop.
    """

    def __init__(self, server: EventsServer, *, start_timeout_s: float = 10.0) -> None:
        self.server = server
        self.start_timeout_s = start_timeout_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> EventsServer:
        if self._thread is not None:
            raise RuntimeError("server thread already started")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="aigw-events-server", daemon=True)
        self._thread.start()
        if not self._started.wait(self.start_timeout_s):
            raise RuntimeError("events server did not start in time")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("events server failed to start") from self._error
        return self.server

    def _run(self) -> None:
        loop = self.loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.server.start())
        except BaseException as exc:
            self._error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.server.stop())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def call(self, coro: Awaitable[Any], timeout: float | None = 10.0) -> Any:
        """Run a coroutine on the server's loop from another thread and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None or self.loop is None:
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        thread.join(timeout=10.0)

    def __enter__(self) -> EventsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
