"""A local AWS Lambda ``Invoke`` endpoint, so the unmodified boto3 ``lambda`` client can call local functions.

Point a client at it with ``endpoint_url=emu.endpoint_url`` or ``AWS_ENDPOINT_URL_LAMBDA``. It serves
``POST /2015-03-31/functions/{FunctionName}/invocations`` for the Python callables it was given, by name:
``FunctionName`` may be the bare name, a partial ARN (``123456789012:function:name``) or a full ARN, each with
an optional ``:qualifier`` (as may the ``Qualifier`` query parameter); any qualifier resolves to the one
registered callable. ``X-Amz-Invocation-Type`` selects the mode, as Lambda does:

- ``RequestResponse`` (default): the function runs inline; 200 with its JSON result (``null`` for ``None``).
  A raised exception (or a result that is not JSON-serializable, or a timeout) is still a 200, with
  ``X-Amz-Function-Error: Unhandled`` and the Python runtime's ``{"errorMessage", "errorType", ...}`` body.
- ``Event``: the function is queued on a bounded thread pool (``workers`` threads) and the answer is 202
  with an empty body, at once. Failures are logged and counted in `failed`.
- ``DryRun``: 204 once the function resolves; nothing runs.

A function is a plain callable, run on this process's threads, or an `aigw.lambda_processes.LambdaProcessPool`
(what `aigw dev` registers): each invocation then runs in a process of its own with the pool's timeout, enforced
by killing the process (``Sandbox.Timedout``, "Task timed out after N.NN seconds"), and its errors keep their
type and stack trace. The emulator neither starts nor stops pools; their owner does.

Errors use the rest-json shape boto3 turns into ``ClientError``: an unknown function is 404
``ResourceNotFoundException``, a payload that is not JSON 400 ``InvalidRequestContentException``. The
function gets ``(event, context)``; ``context`` carries ``function_name``, ``aws_request_id``,
``invoked_function_arn``, ``memory_limit_in_mb`` and ``get_remaining_time_in_millis()`` counted down from
the function's timeout (a plain callable's: ``timeouts``, default 300 s, informational only: it is not stopped).
Standard library only; SigV4 is not verified (any ``Authorization`` is accepted, its region names the ARNs).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import traceback
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

from aigw.emulators._http import BackgroundHTTPServer, ErrorAnswer, KeepAliveHandler
from aigw.lambda_processes import DEFAULT_ACCOUNT_ID, DEFAULT_MEMORY_MB, FunctionError, LambdaContext, LambdaProcessPool

__all__ = ["DEFAULT_ACCOUNT_ID", "DEFAULT_MEMORY_MB", "DEFAULT_TIMEOUT_S", "LambdaContext", "LambdaEmulator"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0
"""Function timeout behind ``context.get_remaining_time_in_millis()`` when ``timeouts`` names none."""
DEFAULT_REGION = "us-east-1"
"""Region in the ARNs when the request's ``Authorization`` names none."""

_INVOCATION_TYPES = frozenset({"RequestResponse", "Event", "DryRun"})
_PATH_RE = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations$")
_NAME = r"(?P<name>[A-Za-z0-9_-]{1,64})"
_QUALIFIER = r"(?::(?P<qualifier>[A-Za-z0-9$_-]+))?"
_FUNCTION_NAME_RES = (
    re.compile(
        r"^arn:(?P<partition>aws[a-zA-Z-]*):lambda:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):function:"
        + _NAME
        + _QUALIFIER
        + "$"
    ),
    re.compile(r"^(?P<account>\d{12}):function:" + _NAME + _QUALIFIER + "$"),
    re.compile("^" + _NAME + _QUALIFIER + "$"),
)
_CREDENTIAL_SCOPE_RE = re.compile(r"Credential=[^/,\s]+/\d{8}/(?P<region>[a-z0-9-]+)/")

Handler = Callable[[Any, Any], Any]
"""A Lambda handler: ``handler(event, context) -> JSON-serializable result``."""


# --------------------------------------------------------------------------------------------- context


@dataclass(frozen=True)
class _Target:
    """A resolved ``FunctionName``: the registered name, the qualifier used (if any) and the invoked ARN."""

    name: str
    qualifier: str | None
    arn: str


# --------------------------------------------------------------------------------------------- server


class _ClientError(ErrorAnswer):
    """A Lambda rest-json error: status, ``x-amzn-ErrorType`` and ``{"Type": "User", "message": ...}``."""


class _Handler(KeepAliveHandler["LambdaEmulator"]):
    """One connection; HTTP/1.1 keep-alive so boto3's connection pool behaves as it does against AWS."""

    # -- plumbing ------------------------------------------------------------------------------------

    def _send_error(self, err: _ClientError) -> None:
        self._send_json(err.status, {"Type": "User", "message": err.message}, {"x-amzn-ErrorType": err.error_type})

    def _send_raw(self, status: int, data: bytes, request_id: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", request_id)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if data:
            self.wfile.write(data)

    # -- request handling ----------------------------------------------------------------------------

    def _serve(self) -> None:
        raw = self._read_body()  # always drain the body so the keep-alive connection stays in sync
        url = urlsplit(self.path)
        match = _PATH_RE.match(url.path) if self.command == "POST" else None
        if match is None:
            self._send_error(_ClientError(404, "UnknownOperationException", f"No route for {self.path}"))
            return
        emulator = self.owner
        try:
            region = _request_region(self.headers.get("Authorization"))
            qualifiers = parse_qs(url.query).get("Qualifier")
            target = emulator._resolve(unquote(match["name"]), qualifiers[-1] if qualifiers else None, region)
            invocation_type = self.headers.get("X-Amz-Invocation-Type") or "RequestResponse"
            if invocation_type not in _INVOCATION_TYPES:
                raise _ClientError(
                    400,
                    "InvalidParameterValueException",
                    f"Unsupported invocation type {invocation_type!r}; expected one of {sorted(_INVOCATION_TYPES)}",
                )
            request_id = str(uuid.uuid4())
            if invocation_type == "DryRun":
                logger.debug("lambda emulator: DryRun %s (request %s)", target.arn, request_id)
                self._send_raw(204, b"", request_id)
                return
            event = _parse_payload(raw)
            if invocation_type == "Event":
                emulator._submit(target, event, request_id)
                self._send_raw(202, b"", request_id)
                return
        except _ClientError as err:
            self._send_error(err)
            return
        body, error_type = emulator._invoke_inline(target, event, request_id)
        headers = {"X-Amz-Executed-Version": _executed_version(target.qualifier)}
        if error_type is not None:
            headers["X-Amz-Function-Error"] = "Unhandled"
        self._send_raw(200, body, request_id, headers)


def _request_region(authorization: str | None) -> str:
    """The region in a SigV4 ``Authorization`` header's credential scope (not verified), else the default."""
    match = _CREDENTIAL_SCOPE_RE.search(authorization or "")
    return match["region"] if match else DEFAULT_REGION


def _parse_payload(raw: bytes) -> Any:
    """The event: the JSON payload, or ``{}`` for an empty one (as when the CLI sends no ``--payload``)."""
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _ClientError(
            400, "InvalidRequestContentException", f"Could not parse request body into json: {exc}"
        ) from exc


def _executed_version(qualifier: str | None) -> str:
    """``X-Amz-Executed-Version``: a numeric version as given; ``$LATEST`` for no qualifier or an alias."""
    return qualifier if qualifier is not None and qualifier.isdigit() else "$LATEST"


def _error_body(exc: BaseException, request_id: str, error_type: str | None = None) -> bytes:
    """The Python runtime's unhandled-error document (for a pool's `FunctionError`, the one its process made)."""
    if isinstance(exc, FunctionError):
        error_type, stack_trace = error_type or exc.error_type, exc.stack_trace
    else:
        stack_trace = traceback.format_tb(exc.__traceback__)
    return json.dumps(
        {
            "errorMessage": str(exc),
            "errorType": error_type or type(exc).__name__,
            "requestId": request_id,
            "stackTrace": stack_trace,
        }
    ).encode("utf-8")


def _error_type(exc: BaseException) -> str:
    return exc.error_type if isinstance(exc, FunctionError) else type(exc).__name__


# --------------------------------------------------------------------------------------------- public API


class LambdaEmulator(BackgroundHTTPServer):
    """A Lambda ``Invoke`` peer on 127.0.0.1 for the callables in ``functions`` (name → handler).

    ``workers`` bounds the thread pool that runs ``Event`` invocations (queued beyond that, as Lambda's
    asynchronous queue). ``timeouts`` (name → seconds, default `DEFAULT_TIMEOUT_S`) and
    ``memory_limit_in_mb`` feed the context. `completed` and `failed` count finished invocations of either
    kind (returned / raised; each lands in exactly one), and `wait_idle` waits until none is queued or
    running. Lifecycle (``start``/``stop``/context manager; a restart rebinds the same port) comes from
    `BackgroundHTTPServer`; ``stop()`` lets already-queued ``Event`` invocations finish in the background.
    """

    handler_class = _Handler
    thread_name = "lambda-emulator"
    poll_interval_s = 0.05
    _noun = "emulator"

    def __init__(
        self,
        functions: Mapping[str, Handler],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        workers: int = 8,
        timeouts: Mapping[str, float] | None = None,
        memory_limit_in_mb: int = DEFAULT_MEMORY_MB,
        account_id: str = DEFAULT_ACCOUNT_ID,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        for name, fn in functions.items():
            if not re.fullmatch(_NAME, name):
                raise ValueError(f"invalid function name {name!r}")
            if not callable(fn):
                raise TypeError(f"function {name!r} is not callable")
        unknown = set(timeouts or {}) - set(functions)
        if unknown:
            raise ValueError(f"timeouts name unregistered functions {sorted(unknown)}")
        pooled = sorted(name for name in timeouts or {} if isinstance(functions[name], LambdaProcessPool))
        if pooled:
            raise ValueError(f"timeouts name process pools {pooled}: a pool's own timeout_s applies")
        self._functions = dict(functions)
        self._timeouts = dict(timeouts or {})
        self.workers = workers
        self.memory_limit_in_mb = memory_limit_in_mb
        self.account_id = account_id
        self._state = threading.Condition()
        self._pending = 0
        self._completed = 0
        self._failed = 0
        self._executor: ThreadPoolExecutor | None = None
        super().__init__(host=host, port=port)

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the worker pool and the server; returns self."""
        if self._server is not None:
            raise RuntimeError(f"{self._noun} already started")
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="lambda-emulator-fn")
        return super().start()

    def stop(self) -> None:
        """Stop serving; queued ``Event`` invocations still run (and count), without blocking the caller."""
        super().stop()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    # -- counters ------------------------------------------------------------------------------------

    @property
    def completed(self) -> int:
        """Invocations (either kind) whose function returned normally."""
        with self._state:
            return self._completed

    @property
    def failed(self) -> int:
        """Invocations (either kind) whose function raised or returned something not JSON-serializable."""
        with self._state:
            return self._failed

    @property
    def pending(self) -> int:
        """Invocations accepted and not yet finished (queued or running)."""
        with self._state:
            return self._pending

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no invocation is queued or running; False if ``timeout`` seconds pass first."""
        with self._state:
            return self._state.wait_for(lambda: self._pending == 0, timeout)

    # -- used by the handler -------------------------------------------------------------------------

    def _resolve(self, function_name: str, query_qualifier: str | None, region: str) -> _Target:
        for pattern in _FUNCTION_NAME_RES:
            match = pattern.fullmatch(function_name)
            if match is not None:
                break
        else:
            raise _ClientError(
                400,
                "ValidationException",
                f"1 validation error detected: Value '{function_name}' at 'functionName' failed to satisfy "
                "constraint: Member must satisfy a function name, partial ARN or ARN pattern",
            )
        groups = match.groupdict()
        qualifier = groups.get("qualifier")
        if qualifier is not None and query_qualifier is not None and qualifier != query_qualifier:
            raise _ClientError(
                400,
                "InvalidParameterValueException",
                "The derived qualifier from the function name does not match the specified qualifier.",
            )
        qualifier = qualifier or query_qualifier
        arn = "arn:{}:lambda:{}:{}:function:{}".format(
            groups.get("partition") or "aws",
            groups.get("region") or region,
            groups.get("account") or self.account_id,
            groups["name"],
        )
        if qualifier is not None:
            arn += f":{qualifier}"
        if groups["name"] not in self._functions:
            raise _ClientError(404, "ResourceNotFoundException", f"Function not found: {arn}")
        return _Target(groups["name"], qualifier, arn)

    def _context(self, target: _Target, request_id: str) -> LambdaContext:
        return LambdaContext(
            function_name=target.name,
            function_version=_executed_version(target.qualifier),
            invoked_function_arn=target.arn,
            memory_limit_in_mb=self.memory_limit_in_mb,
            timeout_s=self._timeouts.get(target.name, DEFAULT_TIMEOUT_S),
            aws_request_id=request_id,
        )

    def _begin(self) -> None:
        with self._state:
            self._pending += 1

    def _end(self, *, ok: bool) -> None:
        with self._state:
            self._pending -= 1
            if ok:
                self._completed += 1
            else:
                self._failed += 1
            self._state.notify_all()

    def _submit(self, target: _Target, event: Any, request_id: str) -> None:
        """Queue an ``Event`` invocation; counted as pending before the 202 goes out."""
        executor = self._executor
        self._begin()
        try:
            if executor is None:
                raise RuntimeError("emulator stopped")
            executor.submit(self._run_background, target, event, request_id)
        except RuntimeError as exc:  # stop() raced this request: tell the client, do not drop the event
            with self._state:
                self._pending -= 1
                self._state.notify_all()
            raise _ClientError(503, "ServiceException", "The emulator is shutting down") from exc
        logger.debug("lambda emulator: Event %s queued (request %s)", target.arn, request_id)

    def _run_background(self, target: _Target, event: Any, request_id: str) -> None:
        ok = False
        try:
            self._functions[target.name](event, self._context(target, request_id))
            ok = True
        except FunctionError as exc:  # from a process: its own traceback is in the error (ours says nothing)
            logger.error(
                "lambda emulator: Event invocation of %s failed (request %s): %s: %s%s",
                target.arn,
                request_id,
                exc.error_type,
                exc,
                "".join(["\n", *exc.stack_trace]).rstrip(),
            )
        except Exception:
            logger.exception("lambda emulator: Event invocation of %s failed (request %s)", target.arn, request_id)
        finally:
            self._end(ok=ok)
        logger.debug("lambda emulator: Event %s finished ok=%s (request %s)", target.arn, ok, request_id)

    def _invoke_inline(self, target: _Target, event: Any, request_id: str) -> tuple[bytes, str | None]:
        """Run a ``RequestResponse`` invocation: (response body, error type or None)."""
        logger.debug("lambda emulator: RequestResponse %s (request %s)", target.arn, request_id)
        self._begin()
        ok = False
        try:
            try:
                result = self._functions[target.name](event, self._context(target, request_id))
            except Exception as exc:
                logger.debug("lambda emulator: %s raised (request %s)", target.arn, request_id, exc_info=True)
                return _error_body(exc, request_id), _error_type(exc)
            try:
                body = json.dumps(result).encode("utf-8")
            except (TypeError, ValueError) as exc:
                marshal = TypeError(f"Unable to marshal response: {exc}")
                return _error_body(marshal, request_id, "Runtime.MarshalError"), "Runtime.MarshalError"
            ok = True
            return body, None
        finally:
            self._end(ok=ok)
