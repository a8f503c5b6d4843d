"""Local Lambda execution environments: every invocation of a function runs in a worker process of its own pool.

Why processes: a Lambda execution environment serves one invocation at a time and is frozen or killed when the
invocation ends or times out, so the runtime may keep process-global state (Powertools' Logger keys, Metrics,
`AppSyncEventsResolver.current_event`) and a timed-out handler never acts again. Threads in one process give
neither. `LambdaProcessPool` gives both, locally:

- A function is named by import path, ``"package.module:function"`` (e.g. ``"runtime.handlers:gatekeeper_handler"``),
  and called ``handler(event, context)`` in a child process. Events and results cross as JSON.
- Each pool holds at most ``concurrency`` long-lived processes (its execution environments). One is started when
  an invocation finds none idle (a cold start: a fresh interpreter imports the handler's module) and is reused
  afterwards (warm, most recently used first). Callers beyond ``concurrency`` wait for a free environment, served
  in arrival order.
- Processes are started with multiprocessing's ``spawn`` context: a fresh interpreter, never ``fork`` of a parent
  that runs threads (the servers of `aigw dev`). The children see the environment variables as they were when
  `LambdaProcessPool.start` ran (a snapshot, applied before the handler's module is imported), which is how
  `aigw dev` points them at its local endpoints. Ctrl-C is the parent's business: children ignore SIGINT.
- An invocation that runs past ``timeout_s`` has its process killed (SIGKILL), so nothing it would have done
  later happens; the caller gets `FunctionTimeout` ("Task timed out after N.NN seconds", Lambda's words). The
  next invocation starts a new environment.
- A handler that raises returns `FunctionError` with the exception's type name, message and stack trace (the
  Python runtime's error document); the environment stays warm. One that kills its process (``os._exit``, a
  crash) is ``Runtime.ExitError``; a module that fails to import, ``Runtime.ImportModuleError`` (or
  ``Runtime.HandlerNotFound``, ``Runtime.UserCodeSyntaxError``), tried again on the next invocation.
- The handler gets a `LambdaContext`: ``function_name``, ``function_version``, ``invoked_function_arn``,
  ``memory_limit_in_mb``, ``aws_request_id``, ``log_group_name``, ``log_stream_name`` and
  ``get_remaining_time_in_millis()`` counted down from the function's timeout.
- What a child writes to ``sys.stdout``/``sys.stderr`` (the runtime's JSON logs, EMF metrics) is forwarded line by
  line, by the thread waiting for the invocation, to the parent's *current* ``sys.stdout``/``sys.stderr``, as
  Lambda ships it to CloudWatch: `aigw dev`'s console, its usage sink and pytest's capture see it as they would
  from an in-process handler. Between invocations nothing is read: the environment is frozen, as in Lambda.

Standard library only; local-only code, never shipped to Lambda.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import io
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any, Self

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_MEMORY_MB",
    "DEFAULT_REGION",
    "FunctionError",
    "FunctionTimeout",
    "LambdaContext",
    "LambdaProcessPool",
]

DEFAULT_MEMORY_MB = 128
"""``context.memory_limit_in_mb`` (Lambda's default memory size)."""
DEFAULT_ACCOUNT_ID = "123456789012"
"""Account in the ARNs of locally invoked functions (moto's default account too)."""
DEFAULT_REGION = "us-east-1"
"""Region in the ARNs when the environment names none."""
DEFAULT_TIMEOUT_S = 3.0
"""A function's timeout when none is given (Lambda's default)."""

# `spawn`: a fresh interpreter per environment. `fork` would copy a parent whose other threads (aiohttp, moto, the
# emulators) may hold locks mid-operation; `forkserver` shares one process-wide server whose environment and
# preloaded modules are fixed when it first starts, whereas each pool here snapshots its own environment.
_MP = multiprocessing.get_context("spawn")
_SPAWN_LOCK = threading.Lock()  # Process.start() touches multiprocessing's module-global child bookkeeping


# --------------------------------------------------------------------------------------------- context


class LambdaContext:
    """The subset of the Python runtime's context object a handler (or Powertools) commonly reads."""

    def __init__(
        self,
        *,
        function_name: str,
        function_version: str,
        invoked_function_arn: str,
        memory_limit_in_mb: int,
        timeout_s: float,
        aws_request_id: str,
    ) -> None:
        self.function_name = function_name
        self.function_version = function_version
        self.invoked_function_arn = invoked_function_arn
        self.memory_limit_in_mb = memory_limit_in_mb
        self.aws_request_id = aws_request_id
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"{time.strftime('%Y/%m/%d')}/[{function_version}]{uuid.uuid4().hex}"
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function's timeout (never below 0)."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def __repr__(self) -> str:
        return f"LambdaContext(function_name={self.function_name!r}, aws_request_id={self.aws_request_id!r})"


# --------------------------------------------------------------------------------------------- errors


class FunctionError(Exception):
    """An invocation that failed in its environment, as the Python runtime reports it.

    ``str(error)`` is the ``errorMessage`` (as ``str()`` of the handler's own exception would be); ``error_type`` is
    the ``errorType`` (the exception's class name, or a ``Runtime.*``/``Sandbox.*`` type); ``error_types`` names
    the exception's class and its bases, so a caller can still match on a base class across the process boundary;
    ``stack_trace`` is the handler's traceback (``traceback.format_tb`` lines).
    """

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        stack_trace: Sequence[str] = (),
        error_types: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.error_message = message
        self.stack_trace = list(stack_trace)
        self.error_types = tuple(error_types) or (error_type,)
        if self.stack_trace:  # shown under the parent's traceback when logged with logger.exception
            self.add_note("in the function's process:\n" + "".join(self.stack_trace).rstrip())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.error_type!r}, {self.error_message!r})"


class FunctionTimeout(FunctionError):
    """The invocation ran past the function's timeout; its process was killed before it could do anything else."""


def _error_document(exc: BaseException, error_type: str | None = None) -> dict[str, Any]:
    """The Python runtime's unhandled-error document for ``exc`` (plus the class names of its MRO)."""
    return {
        "errorType": error_type or type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_tb(exc.__traceback__),
        "errorTypes": [cls.__name__ for cls in type(exc).__mro__ if cls is not object],
    }


def _function_error(document: Mapping[str, Any]) -> FunctionError:
    return FunctionError(
        str(document.get("errorType") or "Runtime.Unknown"),
        str(document.get("errorMessage") or ""),
        stack_trace=[str(line) for line in document.get("stackTrace") or ()],
        error_types=[str(name) for name in document.get("errorTypes") or ()],
    )


# --------------------------------------------------------------------------------------------- the child process


def _split_handler(path: str) -> tuple[str, str]:
    module, sep, function = path.partition(":")
    if not sep or not module or not function:
        raise ValueError(f"handler {path!r} must be 'package.module:function'")
    return module, function


def _load_handler(path: str) -> Callable[[Any, Any], Any]:
    """Import ``module:function`` as the Python runtime does at init; its failures carry Lambda's error types."""
    module_name, function_name = _split_handler(path)
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as exc:
        raise _InitError("Runtime.UserCodeSyntaxError", exc) from exc
    except ImportError as exc:
        raise _InitError("Runtime.ImportModuleError", exc, f"Unable to import module '{module_name}': {exc}") from exc
    handler = getattr(module, function_name, None)
    if not callable(handler):
        raise _InitError(
            "Runtime.HandlerNotFound",
            None,
            f"Handler '{function_name}' missing on module '{module_name}'",
        )
    return handler


class _InitError(Exception):
    """A failed init, already in Lambda's terms."""

    def __init__(self, error_type: str, cause: BaseException | None, message: str | None = None) -> None:
        super().__init__(message if message is not None else str(cause))
        self.error_type = error_type


class _Sender:
    """The child's one way to the parent: JSON messages on a pipe, whole, from any thread."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()

    def __call__(self, message: Mapping[str, Any]) -> None:
        self.send_text(json.dumps(message))  # ensure_ascii: lone surrogates survive as escapes

    def send_text(self, text: str) -> None:
        data = text.encode("utf-8")
        with self._lock:
            self._connection.send_bytes(data)


class _ForwardedStream(io.TextIOBase):
    """A child's stdout/stderr: complete lines go to the parent as ``log`` messages (the rest on flush)."""

    encoding = "utf-8"

    def __init__(self, send: _Sender, stream: str) -> None:
        self._send, self._stream = send, stream
        self._pending = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            complete, newline, self._pending = self._pending.rpartition("\n")
            if newline:
                self._send({"type": "log", "stream": self._stream, "text": complete + newline})
        return len(text)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, ""
        if pending:
            self._send({"type": "log", "stream": self._stream, "text": pending})


def _serve(requests: Connection, replies: Connection, handler_path: str, environment: dict[str, str]) -> None:
    """A child process: init (environment, streams, import), then one invocation at a time until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which kills its environments
    os.environ.clear()
    os.environ.update(environment)
    send = _Sender(replies)
    sys.stdout = _ForwardedStream(send, "stdout")
    sys.stderr = _ForwardedStream(send, "stderr")
    try:
        handler = _load_handler(handler_path)
    except _InitError as exc:
        send({"type": "init_error", **_error_document(exc, exc.error_type)})
        return
    except Exception as exc:  # the module raised at import: reported as its own type, like the Python runtime
        send({"type": "init_error", **_error_document(exc)})
        return
    send({"type": "ready", "pid": os.getpid()})
    while True:
        try:
            message = json.loads(requests.recv_bytes())
        except (EOFError, OSError):  # the parent closed the pipe (stop) or went away
            return
        reply = _invoke_in_child(handler, message)
        sys.stdout.flush()  # the invocation's last log lines go before its reply, as they were written
        sys.stderr.flush()
        send.send_text(reply)


def _invoke_in_child(handler: Callable[[Any, Any], Any], message: Mapping[str, Any]) -> str:
    """One invocation's reply, as JSON text: ``result``, or ``error`` (the runtime's error document)."""
    request_id = message["requestId"]
    context = LambdaContext(aws_request_id=request_id, **message["context"])
    try:
        result = handler(message["event"], context)
    except Exception as exc:
        return json.dumps({"type": "error", "requestId": request_id, **_error_document(exc)})
    try:
        return json.dumps({"type": "result", "requestId": request_id, "result": result})
    except (TypeError, ValueError) as exc:
        marshal = TypeError(f"Unable to marshal response: {exc}")
        document = _error_document(marshal, "Runtime.MarshalError")
        return json.dumps({"type": "error", "requestId": request_id, **document})


# --------------------------------------------------------------------------------------------- the parent side


class _Exited(Exception):
    """The environment's process ended (crashed, exited, or was killed) before it answered."""


class _Environment:
    """One execution environment: a child process and its two pipes. Only the thread running an invocation
    reads the replies pipe, so between invocations nothing of the child is read: it is frozen, as in Lambda
    (lines it writes meanwhile wait in the pipe and are forwarded with the next invocation's)."""

    def __init__(self, process: BaseProcess, requests: Connection, replies: Connection) -> None:
        self.process = process
        self._requests = requests
        self._replies = replies

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.exitcode is None  # polls without blocking

    def _next(self, deadline: float) -> dict[str, Any]:
        """The next message that is not a log line (those are forwarded on the way); `TimeoutError` at the
        deadline, `_Exited` when the child is gone."""
        while True:
            try:
                answered = self._replies.poll(max(0.0, deadline - time.monotonic()))
                message = json.loads(self._replies.recv_bytes()) if answered else None
            except (EOFError, OSError, ValueError) as exc:  # EOF: the child's end closed with its process
                raise _Exited from exc
            if message is None:
                raise TimeoutError  # (outside the try: TimeoutError is an OSError)
            if message.get("type") == "log":
                _write_log(message)
            else:
                return message

    def wait_ready(self, timeout_s: float) -> None:
        """Wait for the child's init; `FunctionError` when it failed, `TimeoutError` when it took too long."""
        message = self._next(time.monotonic() + timeout_s)
        if message.get("type") == "init_error":
            raise _function_error(message)

    def run(self, request: bytes, request_id: str, timeout_s: float) -> dict[str, Any]:
        """Send one invocation and wait for its reply: `TimeoutError` past ``timeout_s``, `_Exited` if it died."""
        deadline = time.monotonic() + timeout_s
        try:
            self._requests.send_bytes(request)
        except OSError as exc:
            raise _Exited from exc
        while True:
            message = self._next(deadline)
            if message.get("requestId") == request_id:
                return message

    def exit_description(self) -> str:
        self.process.join(1.0)
        code = self.process.exitcode
        if code is None:
            return "exit status unknown"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"signal: {signal.Signals(-code).name.removeprefix('SIG').lower()}"
        return f"exit status {code}"

    def kill_process(self) -> None:
        """SIGKILL: no cleanup code, no last publish, nothing; then reap it. The pipes stay open for whoever is
        reading them (it sees EOF)."""
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.process.join(5.0)

    def kill(self) -> None:
        """`kill_process`, then close the pipes: only by the thread that owns the environment."""
        self.kill_process()
        for connection in (self._requests, self._replies):
            with contextlib.suppress(OSError):
                connection.close()


def _write_log(message: Mapping[str, Any]) -> None:
    target = sys.stderr if message.get("stream") == "stderr" else sys.stdout
    with contextlib.suppress(Exception):  # a closed or failing stand-in must not fail the invocation
        target.write(str(message.get("text", "")))
        target.flush()


class _Waiter:
    """A caller queued for an environment: handed one that was released, or leave to start one."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.environment: _Environment | None = None
        self.may_start = False  # a slot of ``concurrency`` is reserved for it (counted in ``_starting``)


class LambdaProcessPool:
    """One function's execution environments: at most ``concurrency`` processes running ``handler`` (see module doc).

    ``handler`` is ``"package.module:function"``; ``function_name`` (default: the function's own name) and
    ``memory_limit_in_mb`` feed the context; ``timeout_s`` is the function's timeout, enforced by killing the
    process; ``init_timeout_s`` bounds a cold start (a fresh interpreter importing the module). `start` snapshots
    the environment; `invoke` (or calling the pool like a handler) runs one invocation; `stop` kills every process.
    Callers that find every environment busy are served in arrival order.
    """

    def __init__(
        self,
        handler: str,
        *,
        function_name: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_limit_in_mb: int = DEFAULT_MEMORY_MB,
        concurrency: int = 4,
        init_timeout_s: float = 60.0,
    ) -> None:
        _split_handler(handler)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if timeout_s <= 0 or init_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        self.handler = handler
        self.function_name = function_name or handler.partition(":")[2]
        self.timeout_s = float(timeout_s)
        self.memory_limit_in_mb = memory_limit_in_mb
        self.concurrency = concurrency
        self.init_timeout_s = init_timeout_s
        self._environment: dict[str, str] | None = None
        self._lock = threading.Lock()
        self._idle: list[_Environment] = []  # most recently used last: reused first, as Lambda keeps the warmest
        self._live: set[_Environment] = set()
        self._starting = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()  # FIFO: nobody waits behind late comers
        self._initialising: set[BaseProcess] = set()  # started, not yet ready: `stop` kills these too
        self._cold_starts = 0
        self._timeouts = 0

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Take the environment variables the children will see (now, not at each cold start); returns self."""
        with self._lock:
            if self._environment is not None:
                raise RuntimeError(f"pool of {self.function_name} already started")
            self._environment = dict(os.environ)
        return self

    def stop(self) -> None:
        """Kill every environment (an invocation in flight fails with ``Runtime.ExitError``); callers waiting for
        one get `RuntimeError`. The pool can be started again."""
        with self._lock:
            idle, busy = list(self._idle), [e for e in self._live if e not in self._idle]
            self._live.clear()
            self._idle.clear()
            waiters, self._waiters = list(self._waiters), collections.deque()
            initialising = list(self._initialising)
            self._environment = None
        for waiter in waiters:
            waiter.ready.set()  # finds no environment and no slot: the pool stopped
        for environment in idle:
            environment.kill()
        for environment in busy:
            environment.kill_process()  # its invoking thread sees EOF and closes the pipes
        for process in initialising:  # its starting thread sees EOF, reaps it and reports the stop
            with contextlib.suppress(OSError, ValueError):
                process.kill()
            process.join(5.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def warm(self, count: int | None = None) -> int:
        """Start environments until ``count`` (default: ``concurrency``) exist, in parallel, as provisioned
        concurrency does; returns how many were started. Keeps cold starts out of what a caller measures."""
        wanted = min(self.concurrency, self.concurrency if count is None else count)
        with self._lock:
            environment_vars = self._running_environment()
            missing = max(0, wanted - len(self._live) - self._starting)
            self._starting += missing
        results: list[_Environment | BaseException] = []

        def one() -> None:
            try:
                results.append(self._start_reserved(environment_vars))
            except BaseException as exc:
                results.append(exc)

        threads = [threading.Thread(target=one, name=f"lambda-warm-{self.function_name}") for _ in range(missing)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for result in results:
            if isinstance(result, _Environment):
                self._release(result)
        errors = [result for result in results if isinstance(result, BaseException)]
        if errors:
            raise errors[0]
        return len(results)

    # -- figures ---------------------------------------------------------------------------------------

    @property
    def cold_starts(self) -> int:
        """Environments started so far (the first invocation's, replacements of killed ones, `warm`'s)."""
        with self._lock:
            return self._cold_starts

    @property
    def timeouts(self) -> int:
        """Invocations whose process was killed at the timeout."""
        with self._lock:
            return self._timeouts

    @property
    def environments(self) -> int:
        """Environments alive now (idle or busy)."""
        with self._lock:
            return len(self._live)

    # -- invoking --------------------------------------------------------------------------------------

    def __call__(self, event: Any, context: Any = None) -> Any:
        """Use the pool as a handler: the request id, ARN and version come from ``context`` when it has them; the
        timeout is always the pool's (the function's configuration, enforced), not the context's countdown."""
        return self.invoke(
            event,
            request_id=getattr(context, "aws_request_id", None),
            invoked_function_arn=getattr(context, "invoked_function_arn", None),
            function_version=getattr(context, "function_version", None) or "$LATEST",
        )

    def invoke(
        self,
        event: Any,
        *,
        request_id: str | None = None,
        invoked_function_arn: str | None = None,
        function_version: str = "$LATEST",
    ) -> Any:
        """Run ``handler(event, context)`` in an environment; its JSON result, or `FunctionError` /
        `FunctionTimeout`. `RuntimeError` when the pool is not running."""
        request_id = request_id or str(uuid.uuid4())
        context = {
            "function_name": self.function_name,
            "function_version": function_version,
            "invoked_function_arn": invoked_function_arn or self._arn(),
            "memory_limit_in_mb": self.memory_limit_in_mb,
            "timeout_s": self.timeout_s,
        }
        # Serialised before an environment is taken: an event that is not JSON fails here, in the caller.
        request = json.dumps({"type": "invoke", "requestId": request_id, "event": event, "context": context})
        environment = self._acquire()
        try:
            reply = environment.run(request.encode("utf-8"), request_id, self.timeout_s)
        except TimeoutError:
            self._discard(environment, timed_out=True)
            raise FunctionTimeout(
                "Sandbox.Timedout", f"RequestId: {request_id} Error: Task timed out after {self.timeout_s:.2f} seconds"
            ) from None
        except _Exited:
            how = environment.exit_description()
            self._discard(environment)
            message = f"RequestId: {request_id} Error: Runtime exited with error: {how}"
            raise FunctionError("Runtime.ExitError", message) from None
        except BaseException:
            self._discard(environment)
            raise
        self._release(environment)
        if reply.get("type") == "error":
            raise _function_error(reply)
        return reply.get("result")

    def _arn(self) -> str:
        region = (self._environment or {}).get("AWS_REGION") or DEFAULT_REGION
        return f"arn:aws:lambda:{region}:{DEFAULT_ACCOUNT_ID}:function:{self.function_name}"

    # -- environments ----------------------------------------------------------------------------------

    def _running_environment(self) -> dict[str, str]:
        if self._environment is None:
            raise RuntimeError(f"pool of {self.function_name} is not running")
        return self._environment

    def _acquire(self) -> _Environment:
        """A warm idle environment, else a cold start when under ``concurrency``, else the next one released
        (or the next free slot), in arrival order."""
        while True:
            with self._lock:
                environment_vars = self._running_environment()
                found = self._take_idle_locked()
                if found is None and not self._waiters and len(self._live) + self._starting < self.concurrency:
                    self._starting += 1  # the slot is ours while the process starts, outside the lock
                    break
                if found is None:
                    waiter = _Waiter()
                    self._waiters.append(waiter)
            if found is not None:
                return found
            waiter.ready.wait()
            if waiter.environment is not None:
                if waiter.environment.alive:
                    return waiter.environment
                self._discard(waiter.environment)  # died while idle: try again from the front of the line
                continue
            if not waiter.may_start:
                raise RuntimeError(f"pool of {self.function_name} stopped")
            with self._lock:
                environment_vars = self._running_environment()
            break
        return self._start_reserved(environment_vars)

    def _take_idle_locked(self) -> _Environment | None:
        """The warmest idle environment still alive (one that died while idle is dropped, as Lambda would)."""
        while self._idle:
            environment = self._idle.pop()
            if environment.alive:
                return environment
            self._live.discard(environment)
            environment.kill()  # only reaps and closes: nobody else holds an idle environment
            self._slot_freed_locked()
        return None

    def _start_reserved(self, environment_vars: dict[str, str]) -> _Environment:
        """Cold-start an environment in a slot already counted in ``_starting``; it is live (busy) on return."""
        try:
            environment = self._cold_start(environment_vars)
        except BaseException:
            with self._lock:
                self._starting -= 1
                self._slot_freed_locked()
            raise
        with self._lock:
            self._starting -= 1
            stopped = self._environment is not environment_vars  # stopped (or restarted) while it started
            if not stopped:
                self._live.add(environment)
                self._cold_starts += 1
        if stopped:
            environment.kill()
            raise RuntimeError(f"pool of {self.function_name} stopped")
        return environment

    def _cold_start(self, environment_vars: dict[str, str]) -> _Environment:
        requests_read, requests_write = _MP.Pipe(duplex=False)
        replies_read, replies_write = _MP.Pipe(duplex=False)
        process = _MP.Process(
            target=_serve,
            args=(requests_read, replies_write, self.handler, environment_vars),
            name=f"lambda:{self.function_name}",
            daemon=True,  # never outlives the parent
        )
        try:
            with _SPAWN_LOCK:
                process.start()
        except BaseException:
            for connection in (requests_read, requests_write, replies_read, replies_write):
                connection.close()
            raise
        requests_read.close()  # the child's ends: only the child holds them now, so its exit is our EOF
        replies_write.close()
        environment = _Environment(process, requests_write, replies_read)
        with self._lock:
            stopped = self._environment is not environment_vars
            if not stopped:
                self._initialising.add(process)
        if stopped:
            environment.kill()
            raise RuntimeError(f"pool of {self.function_name} stopped")
        try:
            environment.wait_ready(self.init_timeout_s)
        except TimeoutError:
            environment.kill()
            raise FunctionError(
                "Runtime.InitError", f"{self.handler} did not initialise within {self.init_timeout_s:.0f} seconds"
            ) from None
        except _Exited:
            how = environment.exit_description()
            environment.kill()
            raise FunctionError("Runtime.ExitError", f"Runtime exited during init with error: {how}") from None
        except BaseException:
            environment.kill()
            raise
        finally:
            with self._lock:
                self._initialising.discard(process)
        return environment

    def _release(self, environment: _Environment) -> None:
        """Hand the environment to the first waiting caller, else keep it idle (warm)."""
        with self._lock:
            if environment in self._live:
                if self._waiters:
                    waiter = self._waiters.popleft()
                    waiter.environment = environment
                    waiter.ready.set()
                else:
                    self._idle.append(environment)
                return
        environment.kill()  # the pool was stopped meanwhile

    def _discard(self, environment: _Environment, *, timed_out: bool = False) -> None:
        environment.kill()
        with self._lock:
            if environment in self._live:
                self._live.discard(environment)
                self._slot_freed_locked()
            if timed_out:
                self._timeouts += 1

    def _slot_freed_locked(self) -> None:
        """A slot of ``concurrency`` came free: the first waiting caller may start an environment in it."""
        if self._waiters and self._environment is not None:
            waiter = self._waiters.popleft()
            self._starting += 1
            waiter.may_start = True
            waiter.ready.set()

    def __repr__(self) -> str:
        return f"LambdaProcessPool({self.handler!r}, function_name={self.function_name!r})"
