"""moto's HTTP server with two differences that matter for us: requests are applied one at a time, and the
browser's CORS preflights for the Cognito API are answered here, not by moto.

moto's own threaded server runs requests concurrently against unlocked Python dicts, so a conditional write's
check and its write can interleave with another request: lost updates that real DynamoDB, which applies
conditional writes atomically, never produces. The metering engine's promises rest on that atomicity, so
the local gateway, the tests and the benchmarks serve moto through this serialising wrapper.

The web page calls Cognito's JSON API (`POST /` with `X-Amz-Target`) from another origin, so the browser first
sends `OPTIONS /` carrying only `Access-Control-Request-*` headers. moto routes a request by its headers, and
a preflight has none of the ones it looks for: moto 5.2.6 hands it to its S3 backend, which raises, and the
page cannot sign in. Which moto release is installed must not decide whether sign-in works, so preflights
that ask for `X-Amz-Target` never reach moto (`cors_preflight_headers`), and every answer to a request with an
`Origin` carries `Access-Control-Allow-Origin` whatever moto added.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.threaded_moto_server import MotoRequestHandler
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

_PREFLIGHT_MAX_AGE_S = 600
_EXPOSED_HEADERS = "x-amzn-requestid, x-amzn-errortype, x-amzn-errormessage, date"
WsgiApp = Callable[..., Iterable[bytes]]


def cors_preflight_headers(method: str, headers: dict[str, str]) -> list[tuple[str, str]] | None:
    """The answer to a browser's CORS preflight for an AWS JSON API (Cognito's), or None for any other request.

    `headers` are the request's, keys lower-case. A preflight is an OPTIONS with `Access-Control-Request-Method`;
    it is ours when the headers it asks to send include `x-amz-target` (the AWS JSON protocol).
    """
    if method.upper() != "OPTIONS" or "access-control-request-method" not in headers:
        return None
    asked = [h.strip().lower() for h in headers.get("access-control-request-headers", "").split(",") if h.strip()]
    if "x-amz-target" not in asked:
        return None
    return [
        ("Access-Control-Allow-Origin", headers.get("origin", "*")),
        ("Access-Control-Allow-Methods", "POST, OPTIONS"),
        ("Access-Control-Allow-Headers", ", ".join(asked)),
        ("Access-Control-Max-Age", str(_PREFLIGHT_MAX_AGE_S)),
        ("Vary", "Origin"),
        ("Content-Length", "0"),
    ]


def _request_headers(environ: dict[str, Any]) -> dict[str, str]:
    return {key[5:].replace("_", "-").lower(): str(value) for key, value in environ.items() if key.startswith("HTTP_")}


class _CorsForCognito:
    """Answers Cognito preflights itself and makes every cross-origin answer name the origin it may reach."""

    def __init__(self, app: WsgiApp) -> None:
        self._app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        headers = _request_headers(environ)
        preflight = cors_preflight_headers(environ.get("REQUEST_METHOD", ""), headers)
        if preflight is not None:
            start_response("204 No Content", preflight)
            return [b""]
        origin = headers.get("origin")
        if origin is None:
            return self._app(environ, start_response)

        def with_origin(status: str, response_headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            names = {name.lower() for name, _ in response_headers}
            if "access-control-allow-origin" not in names:
                response_headers = [*response_headers, ("Access-Control-Allow-Origin", origin)]
            if "access-control-expose-headers" not in names:
                response_headers = [*response_headers, ("Access-Control-Expose-Headers", _EXPOSED_HEADERS)]
            return start_response(status, response_headers, *exc_info)

        return self._app(environ, with_origin)


class _SerializedApp:
    def __init__(self, app: WsgiApp, lock: threading.Lock) -> None:
        self._app = app
        self._lock = lock

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
        self.quiet = threading.Lock()
        """Held while a request is applied: hold it to see moto's state between requests (a snapshot)."""

    def start(self) -> AtomicMotoServer:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request is noise here
        app = _CorsForCognito(_SerializedApp(DomainDispatcherApplication(create_backend_app), self.quiet))
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
