"""A local stand-in for the HTTP publish endpoint (``POST /event``) of an AWS AppSync Events API.

It checks what AppSync checks before accepting a publish: an IAM SigV4 signature (service ``appsync``,
recomputed with botocore from the signed headers and the body, at most 5 minutes of clock skew) against the
secret of the request's access key, then the body (channel path rules, 1-5 events, each a string holding a
JSON value of at most 240 KB). Accepted publishes are recorded (and optionally passed to ``on_publish``) and
answered like AppSync: ``{"successful": [{"identifier", "index"}], "failed": []}``; rejections use AppSync's
``{"errors": [{"errorType", "message"}]}`` shape (401 ``UnauthorizedException``, 400 ``BadRequestException``).
Connections are HTTP/1.1 keep-alive, as with the real endpoint, so client connection reuse is observable.

Not modelled: API-key/Cognito/OIDC/Lambda auth, session-token validity (a token is only required to be
signed when sent), per-event ``failed`` answers, handlers. Standard library plus botocore only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.message import Message
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from aigw.emulators._http import BackgroundHTTPServer, ErrorAnswer, KeepAliveHandler
from aigw.json_text import JsonTextError, parse_json
from runtime.channels import parse_channel
from runtime.errors import InvalidChannelError

__all__ = [
    "MAX_EVENTS_PER_PUBLISH",
    "MAX_EVENT_BYTES",
    "MAX_SIGNATURE_SKEW_S",
    "AppSyncReceiver",
    "channel_error",
    "sigv4_error",
]

logger = logging.getLogger(__name__)

MAX_EVENTS_PER_PUBLISH = 5
MAX_EVENT_BYTES = 240 * 1024
MAX_SIGNATURE_SKEW_S = 300.0
"""SigV4 requests dated more than 5 minutes from the server clock are rejected, as AWS does."""

_MAX_BODY_BYTES = 8 * 1024 * 1024  # 5 x 240 KB events, generously allowing for JSON string escaping
_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_ALGORITHM = "AWS4-HMAC-SHA256"


# --------------------------------------------------------------------------------------------- validation


def channel_error(channel: object, *, allow_wildcard: bool = False) -> str | None:
    """Why ``channel`` is not a valid AppSync channel path, or None when it is (rules: `runtime.channels`)."""
    try:
        parse_channel(channel, allow_wildcard=allow_wildcard)  # type: ignore[arg-type]
    except InvalidChannelError as exc:
        return str(exc)
    return None


def _parse_authorization(value: str) -> dict[str, str] | None:
    """``Credential``/``SignedHeaders``/``Signature`` of a SigV4 Authorization header, or None."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != _ALGORITHM:
        return None
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, val = part.strip().partition("=")
        if sep:
            fields[key] = val
    if not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
        return None
    return fields


def sigv4_error(
    method: str,
    path: str,
    headers: Message,
    body: bytes,
    credentials: Mapping[str, str],
    *,
    now: float,
    service: str = "appsync",
    region: str | None = None,
    max_skew_s: float = MAX_SIGNATURE_SKEW_S,
) -> str | None:
    """Why the SigV4 signature of a request does not verify, or None when it does.

    The canonical request is rebuilt with botocore from exactly the headers named in ``SignedHeaders``,
    the request's ``X-Amz-Date`` and the body's SHA-256, then signed with the secret that ``credentials``
    maps the access key to. ``region`` (when given) must match the credential scope.
    """
    auth_header = headers.get("Authorization")
    if not auth_header:
        return "missing Authorization header"
    auth = _parse_authorization(auth_header)
    if auth is None:
        return f"Authorization header is not {_ALGORITHM} with Credential, SignedHeaders and Signature"
    scope = auth["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        return "malformed credential scope"
    access_key, scope_date, scope_region, scope_service, _ = scope
    secret = credentials.get(access_key)
    if secret is None:
        return "the security token included in the request is invalid (unknown access key)"
    if scope_service != service:
        return f"credential scope service {scope_service!r} is not {service!r}"
    if region is not None and scope_region != region:
        return f"credential scope region {scope_region!r} is not {region!r}"

    amz_date = headers.get("X-Amz-Date")
    if not amz_date:
        return "missing X-Amz-Date header"
    try:
        signed_at = datetime.strptime(amz_date, _AMZ_DATE_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return f"malformed X-Amz-Date {amz_date!r}"
    if amz_date[:8] != scope_date:
        return "credential scope date does not match X-Amz-Date"
    if abs(now - signed_at) > max_skew_s:
        return f"signature expired: X-Amz-Date is more than {max_skew_s:g} s from the server time"

    signed_names = auth["SignedHeaders"].split(";")
    if signed_names != sorted(set(signed_names)) or not {"host", "x-amz-date"} <= set(signed_names):
        return "SignedHeaders must be sorted, unique, and include host and x-amz-date"
    if headers.get("X-Amz-Security-Token") is not None and "x-amz-security-token" not in signed_names:
        return "X-Amz-Security-Token must be signed"
    body_sha256 = hashlib.sha256(body).hexdigest()
    request = AWSRequest(method=method, url=f"http://localhost{path}", data=body)
    for name in signed_names:
        values = headers.get_all(name)
        if values is None:
            return f"signed header {name!r} is missing"
        if name == "x-amz-content-sha256" and values != [body_sha256]:
            return "X-Amz-Content-SHA256 does not match the body"
        for value in values:
            request.headers[name] = value  # HTTPHeaders appends, keeping repeated headers
    request.context["timestamp"] = amz_date

    signer = SigV4Auth(ReadOnlyCredentials(access_key, secret, None), scope_service, scope_region)
    canonical_request = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical_request), request)
    if not hmac.compare_digest(expected.encode(), auth["Signature"].encode()):
        return "the request signature does not match the signature computed with the secret key"
    return None


class _Rejection(ErrorAnswer):
    """An AppSync error answer: HTTP ``status`` with ``{"errors": [{"errorType", "message"}]}``."""


def _bad_request(message: str) -> _Rejection:
    return _Rejection(400, "BadRequestException", message)


class InvalidEvents(ValueError):
    """A publish's ``events`` break AppSync's limits (1-5 JSON strings of at most 240 KB each)."""


def published_events(events: object) -> list[Any]:
    """The parsed payloads of a publish's ``events``, validated against AppSync's limits."""
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS_PER_PUBLISH:
        count = f" (got {len(events)})" if isinstance(events, list) else ""
        raise InvalidEvents(f"events must be a list of 1 to {MAX_EVENTS_PER_PUBLISH} strings{count}")
    parsed: list[Any] = []
    for index, event in enumerate(events):
        if not isinstance(event, str):
            raise InvalidEvents(f"event {index} must be a string containing JSON, not {type(event).__name__}")
        try:
            size = len(event.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate, from a "\ud800" escape in the body: not text
            raise InvalidEvents(f"event {index} is not UTF-8 text (it holds a lone surrogate)") from None
        if size > MAX_EVENT_BYTES:
            raise InvalidEvents(f"event {index} is {size} bytes, over the {MAX_EVENT_BYTES}-byte limit")
        try:
            parsed.append(parse_json(event, f"event {index}"))
        except JsonTextError as exc:
            raise InvalidEvents(str(exc)) from None
    return parsed


def _parse_publish(body: bytes) -> tuple[str, list[Any]]:
    """The channel and parsed events of a publish body, validated as AppSync does."""
    try:
        payload = parse_json(body, "the request body")
    except JsonTextError as exc:
        raise _bad_request(str(exc)) from None
    if not isinstance(payload, dict):
        raise _bad_request("request body must be a JSON object")
    channel = payload.get("channel")
    problem = channel_error(channel)
    if problem is not None or not isinstance(channel, str):
        raise _bad_request(problem or "channel must be a string")
    try:
        parsed = published_events(payload.get("events"))
    except InvalidEvents as exc:
        raise _bad_request(str(exc)) from exc
    return channel, parsed


# --------------------------------------------------------------------------------------------- server


class _Handler(KeepAliveHandler["AppSyncReceiver"]):
    """One client connection; HTTP/1.1 keep-alive like the real endpoint."""

    def do_POST(self) -> None:
        self._serve()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST

    def _serve(self) -> None:
        length_header = self.headers.get("Content-Length", "0")  # no length and no Transfer-Encoding: no body
        if self.headers.get("Transfer-Encoding") is not None or not length_header.isdigit():
            # The body cannot be delimited (chunked bodies are not supported), so the connection is unusable.
            self.close_connection = True
            self._send_json(411, _errors("BadRequestException", "a valid Content-Length header is required"))
            return
        length = int(length_header)
        if length > _MAX_BODY_BYTES:
            self.close_connection = True
            self._send_json(413, _errors("BadRequestException", "request body too large"))
            return
        body = self.rfile.read(length)  # always consume the body so the next request on the connection parses
        try:
            status, answer = self.owner._handle(self.command, self.path, self.headers, body)
        except _Rejection as rejection:
            status, answer = rejection.status, _errors(rejection.error_type, rejection.message)
        self._send_json(status, answer)


def _errors(error_type: str, message: str) -> dict[str, Any]:
    return {"errors": [{"errorType": error_type, "message": message}]}


class AppSyncReceiver(BackgroundHTTPServer):
    """Serves ``POST /event`` on ``host`` (default 127.0.0.1, ephemeral port) in a background thread.

    ``credentials`` maps access key ids to secret keys; only requests signed with one of them are accepted.
    ``region`` (optional) pins the region of the credential scope. ``on_publish(channel, events)`` is called
    with every accepted publish (parsed events) before it is answered; if it raises, the publish is answered
    500 and not recorded. ``clock`` (wall-clock seconds) is what signature dates are checked against.
    ``ssl_context`` (a server context with a certificate) serves HTTPS, as AppSync does.
    ``stop()`` then ``start()`` restarts on the same port. Lifecycle (``start``/``stop``/context manager),
    ``connections_accepted`` and ``drop_connections()`` come from `BackgroundHTTPServer`.
    """

    handler_class = _Handler
    thread_name = "appsync-receiver"
    poll_interval_s = 0.02
    _noun = "receiver"

    def __init__(
        self,
        credentials: Mapping[str, str],
        *,
        region: str | None = None,
        on_publish: Callable[[str, list[Any]], None] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.credentials = dict(credentials)
        self.region = region
        self.on_publish = on_publish
        self.clock = clock
        self._cond = threading.Condition()
        self._received: list[dict[str, Any]] = []
        super().__init__(host=host, port=port, ssl_context=ssl_context)

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT/event`` (https with ``ssl_context``); stable across stop/start."""
        if self._port == 0:
            raise RuntimeError("receiver not started")
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self._host}:{self._port}/event"

    # -- observation and test controls ---------------------------------------------------------------

    @property
    def received(self) -> list[dict[str, Any]]:
        """Snapshot of accepted publishes, in arrival order: ``{"channel": str, "events": [parsed JSON]}``."""
        with self._cond:
            return list(self._received)

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate(received)`` holds (True) or ``timeout`` seconds pass (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(list(self._received)), timeout=timeout)

    def reset(self) -> None:
        """Forget recorded publishes."""
        with self._cond:
            self._received.clear()

    # -- used by the handler -------------------------------------------------------------------------

    def _handle(self, method: str, path: str, headers: Message, body: bytes) -> tuple[int, dict[str, Any]]:
        if path.partition("?")[0] != "/event":
            raise _Rejection(404, "NotFoundException", f"no route for {path!r}: publish with POST /event")
        if method != "POST":
            raise _Rejection(
                405, "BadRequestException", f"{method} is not supported: publish with POST /event"
            )
        problem = sigv4_error(
            method, path, headers, body, self.credentials, now=self.clock(), region=self.region
        )
        if problem is not None:
            raise _Rejection(401, "UnauthorizedException", problem)
        channel, events = _parse_publish(body)
        if self.on_publish is not None:
            try:
                self.on_publish(channel, events)
            except Exception as exc:
                logger.exception("appsync receiver: on_publish callback failed")
                raise _Rejection(500, "InternalFailureException", f"on_publish failed: {exc!r}") from exc
        with self._cond:
            self._received.append({"channel": channel, "events": events})
            self._cond.notify_all()
        successful = [{"identifier": str(uuid.uuid4()), "index": i} for i in range(len(events))]
        return 200, {"successful": successful, "failed": []}
