"""The background HTTP/1.1 server lifecycle shared by the local emulators (Bedrock, AppSync).

`BackgroundHTTPServer` binds a threading HTTP server on ``host``/``port``, serves it from a daemon thread, and
on ``stop()`` shuts it down and cuts the keep-alive connections still open, as a restarted server would; a
later ``start()`` rebinds the port first bound. Handlers derive from `KeepAliveHandler`: HTTP/1.1 keep-alive,
Nagle off, no access log, and every connection tracked so ``stop()``/``drop_connections()`` can cut it. A
client that hangs up mid-response is normal for a test double, so connection errors are logged at debug
level instead of printing a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

__all__ = ["BackgroundHTTPServer", "ErrorAnswer", "KeepAliveHandler"]

logger = logging.getLogger(__name__)

OwnerT = TypeVar("OwnerT", bound="BackgroundHTTPServer")


class ErrorAnswer(Exception):
    """An AWS error answer: HTTP ``status``, the service's ``error_type`` and a ``message``.

    Each emulator subclasses it and renders it in its own service's error shape.
    """

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: BackgroundHTTPServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that resets or hangs up (or a connection cut by stop()/drop_connections()) ends its handler
        # with a socket error: normal here, so keep test output clean. Anything else is a bug: show it.
        if isinstance(sys.exc_info()[1], OSError):
            logger.debug("%s: connection from %s ended in error", self.owner._noun, client_address, exc_info=True)
            return
        super().handle_error(request, client_address)


class KeepAliveHandler(BaseHTTPRequestHandler, Generic[OwnerT]):
    """One client connection, HTTP/1.1 keep-alive like the real AWS endpoints, tracked by its `owner`."""

    protocol_version = "HTTP/1.1"
    # Headers and body (or event-stream chunks) go out in separate writes; with Nagle on, a write waits for
    # the client's delayed ACK (~40 ms per response on Linux loopback).
    disable_nagle_algorithm = True
    server: _Server

    @property
    def owner(self) -> OwnerT:
        """The `BackgroundHTTPServer` (emulator) this connection belongs to."""
        return self.server.owner  # type: ignore[return-value]

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # name fixed by the base class
        """Stay quiet: test output should not fill with access logs."""

    def do_POST(self) -> None:
        self._serve()

    do_GET = do_PUT = do_DELETE = do_POST

    def _serve(self) -> None:
        """Answer the request (every method lands here unless a subclass routes methods itself)."""
        raise NotImplementedError

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        """A JSON answer with a fresh ``x-amzn-RequestId`` and ``headers``, sized so keep-alive works.

        Says ``Connection: close`` when the connection ends after this answer (``close_connection``).
        """
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


class BackgroundHTTPServer:
    """Serves `handler_class` on ``host``/``port`` (0 = ephemeral) from a daemon thread.

    Subclasses set `handler_class`, `thread_name` and `poll_interval_s`; ``ssl_context`` (a server context
    with a certificate) serves HTTPS. ``stop()`` then ``start()`` comes back on the same port.
    """

    handler_class: ClassVar[type[KeepAliveHandler]]
    thread_name: ClassVar[str] = "http-server"
    poll_interval_s: ClassVar[float] = 0.05
    """How often the serve loop checks for ``stop()``; short keeps ``stop()`` fast in tests."""
    _noun: ClassVar[str] = "server"
    """What error messages call the server: ``"<noun> already started"``."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None) -> None:
        self._host = host
        self._port = port
        self._ssl_context = ssl_context
        self._connections_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._connections_accepted = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running server."""
        if self._server is None:
            raise RuntimeError(f"{self._noun} not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        """Bind and serve in a daemon thread; returns self. After ``stop()``, rebinds the same port."""
        if self._server is not None:
            raise RuntimeError(f"{self._noun} already started")
        server = _Server((self._host, self._port), self.handler_class)
        if self._ssl_context is not None:
            server.socket = self._ssl_context.wrap_socket(server.socket, server_side=True)
        server.owner = self
        self._port = server.server_address[1]  # a restart comes back on the same port
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": self.poll_interval_s},
            name=self.thread_name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open keep-alive connections, so pooled clients cannot reach a dead server."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start() if self._server is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- connections ---------------------------------------------------------------------------------

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted since construction (across restarts)."""
        with self._connections_lock:
            return self._connections_accepted

    def drop_connections(self) -> None:
        """Close every open client connection, like a server-side idle timeout."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(conn)
                self._connections_accepted += 1
            else:
                self._connections.discard(conn)
