"""`aigw dev`: the whole gateway on one machine, running the same handler functions as Lambda.

What starts, each on a 127.0.0.1 port:
- moto's server (served atomically) for DynamoDB and Cognito IDP: the runtime's tables and a user pool,
  client and tier groups mirroring the stack file, read through the same `StackSettings` as `__main__.py`;
- the Bedrock ConverseStream emulator;
- the AppSync Events server (HTTP `/event`, WebSocket `/event/realtime`) whose namespaces call
  `runtime.handlers.subscribe_handler` and `gatekeeper_handler`, exactly as AppSync calls the Lambdas;
- a Lambda Invoke endpoint running `runtime.handlers.worker_handler` for the gatekeeper's async invoke.
Local and AWS differ only in configuration: the runtime finds everything through `AWS_ENDPOINT_URL_<SERVICE>`
and its `AIGW_*` variables.

The three handlers run as Lambda runs them (`aigw.lambda_processes`): each function has its own pool of worker
processes (one invocation per process at a time, at most ``lambda_concurrency`` processes, started on first
use and reused), with the stack's timeout and memory; an invocation that overruns its timeout is killed with
its process, and Powertools' process-global state is never shared by two invocations. The processes see the
environment as it is once every service is up. ``handlers_in="threads"`` runs them in this process instead
(one at a time on the events server), for tests and benchmarks that patch or trace the handlers.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

from aigw import local_state
from aigw.emulators.bedrock import BedrockEmulator
from aigw.emulators.lambda_invoke import LambdaEmulator
from aigw.emulators.moto_server import AtomicMotoServer
from aigw.events_server import EventsServer, Identity, LocalAuthenticator, NamespaceConfig, ServerThread
from aigw.lambda_processes import LambdaProcessPool
from aigw.local_cognito import (
    JwtVerifier,
    LocalPool,
    existing_pool,
    identity_from_claims,
    provision,
    seed_demo_user,
)
from aigw.tls import ensure_local_ca
from aigw.usage_sink import UsageSink
from components.settings import PROJECT, StackSettings
from components.web_app import (
    connect_sources,
    content_security_policy,
    security_headers,
    web_client_config,
    web_files,
)
from runtime import cache as answer_cache
from runtime import channels, metering, streams

STATE_DIR = Path(".aigw")
WEB_DIR = Path(__file__).resolve().parents[1] / "web"  # the chat page served at `/`


class _EnvOverride:
    """Sets an environment variable until `stop()`, which restores what was there (on the gateway's stop stack)."""

    def __init__(self, name: str, value: str) -> None:
        self.name, self._previous = name, os.environ.get(name)
        os.environ[name] = value

    def stop(self) -> None:
        if self._previous is None:
            os.environ.pop(self.name, None)
        else:
            os.environ[self.name] = self._previous


class PortInUseError(RuntimeError):
    """A port `aigw dev` needs is taken; the message names it and the flag that moves it."""


@dataclass(frozen=True)
class Ports:
    events: int = 4100
    moto: int = 4101
    bedrock: int = 4102
    lambda_: int = 4103

    def check_free(self, host: str = "127.0.0.1") -> None:
        """Raises PortInUseError naming every taken port at once (not one per attempt)."""
        taken = []
        for name, port in asdict(self).items():
            if port == 0:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((host, port))
                except OSError:
                    flag = "--" + name.rstrip("_").replace("_", "-") + "-port"
                    taken.append(f"{port} ({name.rstrip('_')}; choose another with {flag})")
        if taken:
            several = len(taken) > 1
            raise PortInUseError(f"port{'s' if several else ''} taken: " + ", ".join(taken)
                                 + (" — another `aigw dev` may be running" if several else ""))


class _Snapshots:
    """Keeps moto's state for the gateway's pool and tables in a snapshot: every `every_s` while running, and
    once more at a clean stop (after the services above it on the stop stack have stopped writing)."""

    def __init__(self, moto: AtomicMotoServer, path: Path, region: str, every_s: float) -> None:
        self.moto, self.path, self.region, self.every_s = moto, path, region, every_s
        self._pool_ids: list[str] = []
        self._table_names: list[str] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, pool_ids: list[str], table_names: list[str]) -> None:
        """What to keep; only from here on is anything saved (a failed start never overwrites a snapshot)."""
        self._pool_ids, self._table_names = pool_ids, table_names
        self.save()
        self._thread = threading.Thread(target=self._every, name="moto-snapshots", daemon=True)
        self._thread.start()

    def save(self) -> int:
        with self.moto.quiet:  # between two requests: a consistent state
            return local_state.save(self.path, self.region, pool_ids=self._pool_ids, table_names=self._table_names)

    def _every(self) -> None:
        while not self._stopping.wait(self.every_s):
            self.save()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self.save()


@dataclass
class DevGateway:
    """Starts and stops every local service; `info` is what `.aigw/dev.json` records.

    ``tls``: the events server serves https/wss as ``localhost`` with a certificate of the local CA that
    `aigw.tls.ensure_local_ca` keeps in ``tls_dir``; ``info["tls"]["ca_file"]`` names the CA for clients
    (Node: ``NODE_EXTRA_CA_CERTS``). The worker's publishes (``http.client`` with the default SSL context)
    trust it through ``SSL_CERT_FILE`` = a bundle of the default CAs plus the local one, set while running.
    """

    settings: StackSettings
    ports: Ports = field(default_factory=Ports)
    stack: str = "dev"
    pacing_s: float = 0.02
    keepalive_s: float = 60.0
    seed_user: bool = True
    tls: bool = False
    tls_dir: Path = STATE_DIR
    upstream_openai: str | None = None
    """An OpenAI-compatible base URL (Ollama: ``http://127.0.0.1:11434/v1``) the Bedrock emulator proxies to
    for real model text; None keeps its deterministic answers."""
    analytics_dir: Path | None = STATE_DIR / "analytics"
    """Where `usage_sink` writes the usage records as Parquet (`aigw analytics` reads them); None: no sink."""
    usage_sink: UsageSink | None = None
    """Started by `start()`, closed (the rest flushed) by `stop()`; `offer` it the runtime's log lines."""
    info: dict[str, Any] = field(default_factory=dict)
    pool: LocalPool | None = None
    """The local Cognito pool, once provisioned (tests and benchmarks add users to it)."""
    bedrock: BedrockEmulator | None = None
    """The Bedrock emulator, once started (tests queue faults with `bedrock.inject_fault`)."""
    events: ServerThread | None = None
    """The AppSync Events server's thread, once started (`events.call(events.server.close_connections())`)."""
    handlers_in: Literal["processes", "threads"] = "processes"
    """Where the Lambda handlers run: their own worker processes, as in Lambda (default), or this process's
    threads (tests and benchmarks that patch the handlers in place)."""
    lambda_concurrency: int = 4
    """At most this many processes (execution environments) per function."""
    lambdas: dict[str, LambdaProcessPool] = field(default_factory=dict)
    """The functions' process pools by kind (``gatekeeper``, ``subscribe``, ``worker``) once started; empty
    with ``handlers_in="threads"``. `warm` starts all their processes ahead of a measurement."""
    state_dir: Path | None = None
    """Where the pool (users, passwords, groups), the tables (limits, overrides, budgets, cache, metering) and
    the demo password are kept between runs (`aigw.local_state`); None: every start is clean (tests)."""
    fresh: bool = False
    """Forget what `state_dir` holds (and the analytics records) and start clean."""
    demo_password: str | None = None
    """The demo user's password; default: the one kept in `state_dir`, else a new one (shell-safe symbols)."""
    snapshot_every_s: float = 30.0
    restored: bool = False
    """The pool and tables came back from `state_dir`'s snapshot."""
    state_note: str | None = None
    """Why a snapshot was not loaded, when there was one."""
    _stack: list[Any] = field(default_factory=list)

    def start(self) -> DevGateway:
        """Start every service; if one fails, stop those already started (their ports and processes) and raise."""
        try:
            return self._start_services()
        except BaseException:
            self.stop()
            raise

    def warm(self) -> None:
        """Start every function's processes now (as provisioned concurrency would), so no cold start is measured."""
        for lambda_pool in self.lambdas.values():
            lambda_pool.warm()

    def _lambda_pools(self, prefix: str) -> dict[str, LambdaProcessPool]:
        """One pool per function, named and sized as the stack deploys it (not started: see `_start_services`)."""
        sizes = self.settings.functions
        return {
            kind: LambdaProcessPool(
                f"runtime.handlers:{kind}_handler",
                function_name=f"{prefix}-{kind}",
                timeout_s=sizing.timeout_s,
                memory_limit_in_mb=sizing.memory_mb,
                concurrency=self.lambda_concurrency,
            )
            for kind, sizing in (
                ("gatekeeper", sizes.gatekeeper),
                ("subscribe", sizes.subscribe),
                ("worker", sizes.worker),
            )
        }

    def _start_services(self) -> DevGateway:
        self.ports.check_free()
        if self.fresh and self.state_dir is not None and self.analytics_dir is not None:
            shutil.rmtree(self.analytics_dir, ignore_errors=True)  # else reports name users that no longer exist
        if self.analytics_dir is not None:
            # First on the stop stack, so it is closed last: after the services that log usage have stopped.
            self.usage_sink = UsageSink(self.analytics_dir).start()
            self._stack.append(self.usage_sink)
        region = self.settings.region
        prefix = f"{PROJECT}-{self.stack}"
        # Local credentials: the worker signs its publishes with these and the events server checks them.
        access_key, secret_key = "AKIDAIGWLOCAL", secrets.token_urlsafe(24)
        os.environ.update(
            AWS_ACCESS_KEY_ID=access_key,
            AWS_SECRET_ACCESS_KEY=secret_key,
            AWS_REGION=region,
            AWS_DEFAULT_REGION=region,
        )
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.pop("AWS_PROFILE", None)

        moto = AtomicMotoServer(port=self.ports.moto).start()
        self._stack.append(moto)
        restored = self._restore(region) if self.state_dir is not None else None
        snapshots = None
        if self.state_dir is not None:
            snapshots = _Snapshots(moto, self.state_dir / local_state.SNAPSHOT_NAME, region, self.snapshot_every_s)
            self._stack.append(snapshots)  # stopped after everything started later: their writes are in it
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = moto.endpoint_url
        os.environ["AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER"] = moto.endpoint_url
        config = Config(retries={"mode": "standard", "max_attempts": 3}, max_pool_connections=64)
        dynamodb = boto3.client("dynamodb", region_name=region, config=config)
        tables = {"metering": f"{prefix}-metering", "cache": f"{prefix}-answers", "streams": f"{prefix}-streams"}
        for spec_of, ttl, name in (
            (metering.table_spec, metering.TTL_ATTRIBUTE, tables["metering"]),
            (answer_cache.table_spec, answer_cache.TTL_ATTRIBUTE, tables["cache"]),
            (streams.table_spec, streams.TTL_ATTRIBUTE, tables["streams"]),
        ):
            if restored is not None and name in restored.table_names:
                continue  # kept from the last run
            # A fresh gateway starts empty, even when an earlier one in this process (tests) used the names:
            # moto keeps its state per process.
            with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
                dynamodb.delete_table(TableName=name)
            dynamodb.create_table(**spec_of(name))
            dynamodb.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl}
            )

        cognito = boto3.client("cognito-idp", region_name=region, config=config)
        kept = existing_pool(cognito, self.settings, name=prefix, among=restored.pool_ids) if restored else None
        pool: LocalPool = kept or provision(cognito, self.settings, name=prefix)
        self.pool, self.restored = pool, kept is not None
        demo = seed_demo_user(cognito, pool, self.settings, password=self._demo_password(),
                              reset_tier=not self.restored) if self.seed_user else None
        if demo is not None and self.state_dir is not None:
            _write_private(self.state_dir / DEMO_FILE, json.dumps({"username": demo[0], "password": demo[1]}))
        if snapshots is not None:
            snapshots.track([pool.user_pool_id], list(tables.values()))

        bedrock = BedrockEmulator(
            port=self.ports.bedrock, pacing_s=self.pacing_s, upstream_openai=self.upstream_openai
        ).start()
        self._stack.append(bedrock)
        self.bedrock = bedrock
        os.environ["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] = bedrock.endpoint_url

        in_processes = self.handlers_in == "processes"
        pools = self._lambda_pools(prefix) if in_processes else {}
        if in_processes:
            gatekeeper_handler: Any = pools["gatekeeper"]
            subscribe_handler: Any = pools["subscribe"]
            worker_handler: Any = pools["worker"]
        else:
            from runtime import handlers  # imported once the environment is in place

            gatekeeper_handler = handlers.gatekeeper_handler
            subscribe_handler = handlers.subscribe_handler
            worker_handler = handlers.worker_handler

        verifier = JwtVerifier(pool.jwks_url, pool.issuer, pool.client_id)

        def cognito_identity(token: str) -> Identity:
            found = identity_from_claims(verifier.verify(token))
            return Identity(
                kind="cognito", sub=found["sub"], username=found["username"], groups=found["groups"],
                claims=found["claims"],
            )

        authenticator = LocalAuthenticator({access_key: secret_key}, cognito=cognito_identity, region=region)
        namespaces = [
            NamespaceConfig(
                name=channels.CHAT_NAMESPACE,
                publish_auth=set(channels.NAMESPACE_AUTH[channels.CHAT_NAMESPACE]["publish"]),
                subscribe_auth=set(channels.NAMESPACE_AUTH[channels.CHAT_NAMESPACE]["subscribe"]),
                on_publish=gatekeeper_handler,
            ),
            NamespaceConfig(
                name=channels.RESPONSES_NAMESPACE,
                publish_auth=set(channels.NAMESPACE_AUTH[channels.RESPONSES_NAMESPACE]["publish"]),
                subscribe_auth=set(channels.NAMESPACE_AUTH[channels.RESPONSES_NAMESPACE]["subscribe"]),
                on_subscribe=subscribe_handler,
            ),
        ]
        local_tls = ensure_local_ca(self.tls_dir) if self.tls else None
        server = EventsServer(
            authenticator,
            namespaces,
            port=self.ports.events,
            keepalive_s=self.keepalive_s,
            ssl_context=local_tls.server_ssl_context() if local_tls else None,
            static_files=self.page_files if WEB_DIR.is_dir() else None,
            static_config=self.web_config,
            static_headers=self.web_headers,
            # Handlers in processes share nothing, so they run side by side; in threads, one at a time.
            serialize_handlers=not in_processes,
            # Threads that mostly wait on the pools: enough that one namespace's queue never holds up the other's.
            handler_workers=8 * self.lambda_concurrency if in_processes else 8,
        )
        events = ServerThread(server)
        events.start()
        self._stack.append(events)
        self.events = events
        http_url, realtime_url = server.http_url, server.realtime_url
        if local_tls is not None:
            # The certificate names localhost (and 127.0.0.1); clients use the name, as they would on AWS.
            http_url = f"https://localhost:{server.port}/event"
            realtime_url = f"wss://localhost:{server.port}/event/realtime"
            self._stack.append(_EnvOverride("SSL_CERT_FILE", str(local_tls.write_trust_bundle())))

        worker_name = f"{prefix}-worker"
        lambdas = LambdaEmulator(
            {worker_name: worker_handler}, port=self.ports.lambda_, workers=max(8, self.lambda_concurrency)
        ).start()
        self._stack.append(lambdas)
        os.environ["AWS_ENDPOINT_URL_LAMBDA"] = lambdas.endpoint_url

        runtime = self.settings.runtime_config(
            stack=f"local-{self.stack}",
            metering_table=tables["metering"],
            cache_table=tables["cache"],
            streams_table=tables["streams"],
            http_endpoint=http_url,
            worker_function_name=worker_name,
        )
        os.environ.update(runtime.to_env())
        if in_processes:
            # Only now is the environment complete (every endpoint is known): the pools snapshot it here.
            for lambda_pool in pools.values():
                self._stack.append(lambda_pool.start())
            self.lambdas = pools
        else:
            for cached in (handlers.config, handlers.gatekeeper, handlers.worker):
                cached.cache_clear()  # a previous gateway in this process must not leak its clients

        self.info = {
            "http": http_url,
            "realtime": realtime_url,
            "region": region,
            "cognito": {"endpoint": moto.endpoint_url, "user_pool_id": pool.user_pool_id, "client_id": pool.client_id},
            "demo_user": {"username": demo[0], "password": demo[1]} if demo else None,
            "tables": tables,
            "bedrock": bedrock.endpoint_url,
            "lambda": lambdas.endpoint_url,
            "worker_function": worker_name,
            "analytics": str(self.analytics_dir) if self.analytics_dir is not None else None,
            # The chat page, served by the events server next to the API.
            "web": http_url.removesuffix("/event") + "/" if WEB_DIR.is_dir() else None,
        }
        if local_tls is not None:
            self.info["tls"] = {"ca_file": str(local_tls.ca_file)}
        return self

    def web_config(self) -> dict[str, Any]:
        """`/config.json` for the web page: the document the deployed stack serves, with local endpoints."""
        info = self.info
        cognito = info["cognito"]
        return web_client_config(
            region=info["region"],
            http_endpoint=info["http"],
            realtime_endpoint=info["realtime"],
            cognito_endpoint=cognito["endpoint"],
            user_pool_id=cognito["user_pool_id"],
            client_id=cognito["client_id"],
            settings=self.settings,
        )

    def page_files(self) -> dict[str, tuple[Path, str]]:
        """The page's files exactly as the WebApp component uploads them (`components.web_app.web_files`): the
        same names, the same content types, the same refusals. Listed per request, so new files show up."""
        return {f.key: (f.path, f.content_type) for f in web_files(WEB_DIR)}

    def web_headers(self) -> dict[str, str]:
        """The deployed page's security headers (the same CSP, with local origins), so the page is tested under
        them. Not HSTS: on localhost it would pin every other local server to https for two years."""
        headers = security_headers(content_security_policy(connect_sources(self.web_config())))
        headers.pop("Strict-Transport-Security")
        return headers

    def _restore(self, region: str) -> local_state.Restored | None:
        assert self.state_dir is not None
        snapshot = self.state_dir / local_state.SNAPSHOT_NAME
        if self.fresh:
            snapshot.unlink(missing_ok=True)
            (self.state_dir / DEMO_FILE).unlink(missing_ok=True)
            return None
        if not snapshot.is_file():
            return None
        try:
            return local_state.restore(snapshot, region)
        except local_state.SnapshotUnreadableError as err:
            aside = local_state.set_aside(snapshot)
            self.state_note = f"{err}; started clean (the old snapshot is kept as {aside})"
            return None

    def _demo_password(self) -> str | None:
        if self.demo_password is not None:
            return self.demo_password
        if self.state_dir is None or not (self.state_dir / DEMO_FILE).is_file():
            return None
        try:
            kept = json.loads((self.state_dir / DEMO_FILE).read_text())
        except (OSError, ValueError):
            return None
        return kept.get("password") if isinstance(kept, dict) and isinstance(kept.get("password"), str) else None

    def stop(self) -> None:
        while self._stack:
            self._stack.pop().stop()
        self.lambdas = {}

    def write_info(self, directory: Path = STATE_DIR) -> Path:
        """This instance's endpoints in ``dev-<events port>.json``, and in ``dev.json``: clients' default is the
        instance started last. Returns the dev.json path; `remove_info` undoes it at a clean stop."""
        directory.mkdir(exist_ok=True)
        text = json.dumps(self.info, indent=2) + "\n"
        (directory / self._instance_file()).write_text(text)
        path = directory / "dev.json"
        path.write_text(text)
        return path

    def remove_info(self, directory: Path = STATE_DIR) -> None:
        """Remove this instance's file; dev.json, if it named this instance, then names another one still
        running (the newest), or goes."""
        (directory / self._instance_file()).unlink(missing_ok=True)
        default = directory / "dev.json"
        try:
            if json.loads(default.read_text()) != self.info:
                return  # another instance is the default now
        except (OSError, ValueError):
            return
        others = sorted(directory.glob("dev-*.json"), key=lambda p: p.stat().st_mtime)
        if others:
            default.write_text(others[-1].read_text())
        else:
            default.unlink(missing_ok=True)

    def _instance_file(self) -> str:
        return f"dev-{urlsplit(self.info['http']).port}.json"


DEMO_FILE = "demo-user.json"


def _write_private(path: Path, text: str) -> None:
    """A file only this user can read (it holds a password)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text + "\n")


@contextmanager
def running(settings: StackSettings, **kwargs: Any) -> Iterator[DevGateway]:
    gateway = DevGateway(settings, **kwargs).start()
    try:
        yield gateway
    finally:
        gateway.stop()
