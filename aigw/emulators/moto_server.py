"""moto's HTTP server with one difference that matters for us: requests are applied one at a time.

moto's own threaded server runs requests concurrently against unlocked Python dicts, so a conditional write's
check and its write can interleave with another request: lost updates that real DynamoDB, which applies
conditional writes atomically, never produces. The metering engine's promises rest on that atomicity, so
the local gateway, the tests and the benchmarks serve moto through this serialising wrapper.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.threaded_moto_server import MotoRequestHandler
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server


class _SerializedApp:
    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self._lock:
            # Drain the body under the lock too: some backends do their work lazily while it is iterated.
            return list(self._app(environ, start_response))


class AtomicMotoServer:
    """Threaded moto server on `host:port` (0 = ephemeral) whose requests never interleave."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host, self._port = host, port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> AtomicMotoServer:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request is noise here
        app = _SerializedApp(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(self._host, self._port, app, threaded=True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto", daemon=True)
        self._thread.start()
        return self

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("moto server is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> AtomicMotoServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
