"""End-to-end gateway latency: `python -m benchmarks.gateway` prints JSON (a full run takes about 1.5 min).

Against an in-process `aigw dev` (or `--dev-json PATH` for one already running), with the Bedrock emulator at
zero latency (`pacing_s=0`): publish -> first `delta` and publish -> `end` latency (p50/p95/p99) and data frames
per response, for
- `sequential`: 500 requests one at a time from one client;
- `concurrent`: 50 clients at once (50 users, one WebSocket each), 10 requests each.
Both give each user 10 requests (the sequential client moves to a fresh user every 10): a user's metering item
keeps one entry per admission for the lease period, and its size shows in every admit, so `one_user_growth`
measures that separately (150 requests of one user, and the item's size after).
Every hop is a real loopback call on 127.0.0.1: WebSocket to the events server, HTTP to moto (DynamoDB), to the
Lambda Invoke emulator, to the Bedrock emulator and, for the answer, back to the events server.

The handlers run as `aigw dev` runs them, in their own worker processes (`--handlers processes`, the default;
every pool is warmed to its full concurrency first, as provisioned concurrency would be, so no cold start is
timed), or in this process's threads (`--handlers threads`, one at a time on the events server), which the
per-hop breakdown needs.

Where the time goes (`breakdown_sequential`, `--handlers threads` only): without changing product code, the benchmark
process wraps the boundaries it can see (the handler functions; the events server's frame dispatch, auth,
handler invocation and lock, HTTP publish and broadcast; the gatekeeper's cache, meter and invoke; the worker's
model stream, settle and publisher; moto's WSGI app) and times every botocore call per client with
`before-call`/`before-send`/`before-parse`/`after-call` hooks on the clients the handlers built. One request is
in flight at a time, so every timestamp inside a request's window belongs to it; the critical-path hops add up
to publish -> first delta exactly. Under concurrency the same boundaries are summarised without attribution
(`concurrent.boundaries_ms`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import statistics
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import boto3

from aigw.client import Endpoints, EventsClient, sign_in, token_sub
from aigw.local_cognito import LocalPool, add_user, generate_password

ROOT = Path(__file__).resolve().parents[1]
TRANSPORT = (
    "every hop is a real loopback call on 127.0.0.1: client -WebSocket-> events server (aiohttp) "
    "-> gatekeeper handler ({where}) -HTTP-> moto DynamoDB, -HTTP-> Lambda Invoke emulator -> worker handler "
    "-HTTP-> Bedrock emulator (event stream), -HTTP-> moto DynamoDB, -HTTP POST /event (SigV4)-> events server "
    "-WebSocket data frames-> client"
)
WHERE = {
    "processes": "a worker process of its pool, event and result as JSON over a pipe",
    "threads": "the events server's thread pool, one handler at a time",
}


# --------------------------------------------------------------------------------------------- statistics


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def summary(values_s: list[float]) -> dict[str, float]:
    """p50/p95/p99/mean/max in milliseconds of durations given in seconds."""
    if not values_s:
        return {}
    if len(values_s) == 1:
        v = _ms(values_s[0])
        return {"p50": v, "p95": v, "p99": v, "mean": v, "max": v}
    q = statistics.quantiles(values_s, n=100, method="inclusive")
    return {
        "p50": _ms(q[49]),
        "p95": _ms(q[94]),
        "p99": _ms(q[98]),
        "mean": _ms(statistics.fmean(values_s)),
        "max": _ms(max(values_s)),
    }


def _counts(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    return {"mean": round(statistics.fmean(values), 2), "min": min(values), "max": max(values)}


# --------------------------------------------------------------------------------------------- tracing


@dataclass(frozen=True)
class Rec:
    """One timed boundary: a span (t0 < t1) or a point (t0 == t1), from `time.perf_counter()`."""

    name: str
    t0: float
    t1: float
    key: Any = None

    @property
    def dur(self) -> float:
        return self.t1 - self.t0


@dataclass
class Tracer:
    """Collects `Rec`s from every thread while `on`; wrappers stay installed but cost a flag check when off."""

    on: bool = False
    recs: list[Rec] = field(default_factory=list)
    invoke_hops: list[float] = field(default_factory=list)
    worker_done: int = 0
    _invoked_at: dict[str, float] = field(default_factory=dict)
    _local: threading.local = field(default_factory=threading.local)
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def point(self, name: str, key: Any = None) -> None:
        if self.on:
            t = time.perf_counter()
            self.recs.append(Rec(name, t, t, key))

    def add(self, name: str, t0: float, key: Any = None) -> None:
        if self.on:
            self.recs.append(Rec(name, t0, time.perf_counter(), key))

    def reset(self) -> None:
        self.recs = []
        self.invoke_hops = []
        self._invoked_at.clear()

    # -- patching helpers

    def _patch(self, owner: Any, attr: str, make: Callable[[Any], Any]) -> None:
        original = getattr(owner, attr)
        setattr(owner, attr, make(original))
        self._undo.append(lambda: setattr(owner, attr, original))

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _sync_span(self, name: str, key_of: Callable[..., Any] | None = None) -> Callable[[Any], Any]:
        def make(original: Any) -> Any:
            @functools.wraps(original)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    self.add(name, t0, key_of(*args, **kwargs) if key_of and self.on else None)

            return wrapper

        return make

    def _async_span(self, name: str) -> Callable[[Any], Any]:
        def make(original: Any) -> Any:
            @functools.wraps(original)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    self.add(name, t0)

            return wrapper

        return make

    # -- before the gateway starts: classes and module functions it captures at start

    def install_static(self) -> None:
        from aigw.emulators.moto_server import _SerializedApp
        from aigw.events_server import EventsServer, LocalAuthenticator, _Connection
        from runtime import handlers

        tracer = self

        def dispatch(original: Any) -> Any:
            def wrapper(server: Any, connection: Any, data: str) -> Any:
                if tracer.on and '"publish"' in data:
                    tracer.point("srv.ws_publish_frame")
                return original(server, connection, data)

            return wrapper

        def call_locked(original: Any) -> Any:
            def wrapper(server: Any, handler: Any, event: Any, context: Any) -> Any:
                tracer.point("srv.handler_thread", getattr(handler, "__name__", None))
                lock = server._handler_lock
                if lock is not None and not isinstance(lock, _TimedLock):
                    server._handler_lock = _TimedLock(lock, tracer, "srv.handler_lock_wait")
                return original(server, handler, event, context)

            return wrapper

        def broadcast(original: Any) -> Any:
            def wrapper(server: Any, channel: Any, events: list[str]) -> Any:
                tracer.point(f"srv.broadcast.{channel.namespace}", len(events))
                return original(server, channel, events)

            return wrapper

        def writer_send(original: Any) -> Any:
            def wrapper(connection: Any, message: dict[str, Any]) -> Any:
                if tracer.on and message.get("type") == "data":
                    tracer.point("srv.frame_queued")
                return original(connection, message)

            return wrapper

        self._patch(EventsServer, "_dispatch", dispatch)
        self._patch(EventsServer, "_authenticate", self._async_span("srv.authenticate"))
        self._patch(EventsServer, "_invoke", self._async_span("srv.invoke_handler"))
        self._patch(EventsServer, "_call_locked", call_locked)
        self._patch(EventsServer, "_handle_http_publish", self._async_span("srv.http_publish"))
        self._patch(EventsServer, "_broadcast", broadcast)
        self._patch(_Connection, "send", writer_send)
        self._patch(LocalAuthenticator, "cognito", self._sync_span("jwt.verify"))
        self._patch(LocalAuthenticator, "iam", self._sync_span("sigv4.verify"))
        self._patch(handlers, "gatekeeper_handler", self._sync_span("gk.handler"))

        def moto_app(original: Any) -> Any:
            def wrapper(app: Any, environ: Any, start_response: Any) -> Any:
                if not isinstance(app._lock, _TimedLock):
                    app._lock = _TimedLock(app._lock, tracer, "moto.lock_wait")  # one request at a time
                t0 = time.perf_counter()
                try:
                    return original(app, environ, start_response)
                finally:
                    tracer.add("moto.request", t0)

            return wrapper

        self._patch(_SerializedApp, "__call__", moto_app)

        def worker_handler(original: Any) -> Any:
            @functools.wraps(original)
            def wrapper(event: Any, context: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    parsed = json.loads(event) if isinstance(event, str) else event
                    invoked = tracer._invoked_at.pop(parsed.get("request_id") or parsed.get("requestId"), None)
                    if invoked is not None and tracer.on:
                        tracer.invoke_hops.append(t0 - invoked)
                except (AttributeError, ValueError):
                    pass
                try:
                    return original(event, context)
                finally:
                    tracer.add("wk.handler", t0)
                    tracer.worker_done += 1

            return wrapper

        self._patch(handlers, "worker_handler", worker_handler)

    # -- once the gateway runs: the objects the handlers built (functools.cache: the very ones they use)

    def install_instances(self) -> None:
        from runtime import handlers
        from runtime.bedrock import TextDelta

        tracer = self
        from runtime.appsync_publish import EventPublisher

        gatekeeper, worker = handlers.gatekeeper(), handlers.worker()
        self._hook(gatekeeper.meter.client, "gk")
        if gatekeeper.cache is not None and gatekeeper.cache.client is not gatekeeper.meter.client:
            self._hook(gatekeeper.cache.client, "gk")
        for cell in gatekeeper.invoke_worker.__closure__ or ():  # the Lambda client the gatekeeper invokes with
            candidate = cell.cell_contents
            if getattr(getattr(candidate, "meta", None), "service_model", None) is not None:
                self._hook(candidate, "gk")
        self._hook(worker.meter.client, "wk")
        self._hook(worker.model._get_client(), "wk")

        if gatekeeper.cache is not None:
            self._patch(gatekeeper.cache, "lookup", self._sync_span("gk.cache_lookup"))
        self._patch(gatekeeper.meter, "admit", self._sync_span("gk.admit"))

        def invoke(original: Any) -> Any:
            def wrapper(job: Any) -> Any:
                t0 = time.perf_counter()
                if tracer.on:
                    tracer._invoked_at[job.request_id] = t0
                try:
                    return original(job)
                finally:
                    tracer.add("gk.invoke_worker", t0)

            return wrapper

        self._patch(gatekeeper, "invoke_worker", invoke)
        self._patch(worker.meter, "settle", self._sync_span("wk.settle"))

        def stream(original: Any) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
                events = original(*args, **kwargs)

                def timed() -> Iterator[Any]:
                    first = True
                    for event in events:
                        if first and isinstance(event, TextDelta):
                            tracer.point("wk.first_token")
                            first = False
                        yield event
                    tracer.point("wk.stream_end")

                return timed()

            return wrapper

        self._patch(worker.model, "stream", stream)
        # Each worker thread has its own publisher (handlers.publisher is per thread): time them all.
        self._patch(
            EventPublisher, "publish", self._sync_span("pub.publish", key_of=lambda _pub, _channel, events: len(events))
        )

    def _hook(self, client: Any, tag: str) -> None:
        """Time every call of a botocore client, split as before-call -> before-send (serialise, sign) ->
        before-parse (the loopback round trip and the server) -> after-call (parse)."""
        service = client.meta.service_model.service_name
        local, tracer = self._local, self

        def before(**kw: Any) -> None:
            local.started, local.sent, local.parsing = time.perf_counter(), None, None

        def send(**kw: Any) -> None:
            local.sent = time.perf_counter()

        def parse(**kw: Any) -> None:
            local.parsing = time.perf_counter()

        def after(**kw: Any) -> None:
            started = getattr(local, "started", None)
            if started is None or not tracer.on:
                return
            now, model = time.perf_counter(), kw.get("model")
            name = f"{tag}.{service}.{model.name if model is not None else 'error'}"
            tracer.recs.append(Rec(name, started, now))
            if local.sent is not None:
                tracer.recs.append(Rec(f"{name}.prepare", started, local.sent))
                if local.parsing is not None:
                    tracer.recs.append(Rec(f"{name}.server", local.sent, local.parsing))
                    tracer.recs.append(Rec(f"{name}.parse", local.parsing, now))
            local.started = None

        events = client.meta.events
        events.register("before-call", before)
        events.register("before-send", send)
        events.register("before-parse", parse)
        events.register("after-call", after)
        events.register("after-call-error", after)


class _TimedLock:
    """Stands in for a serialising lock (the events server's handler lock, moto's) and times each wait for it."""

    def __init__(self, lock: Any, tracer: Tracer, name: str) -> None:
        self._lock, self._tracer, self._name = lock, tracer, name

    def __enter__(self) -> None:
        t0 = time.perf_counter()
        self._lock.acquire()
        self._tracer.add(self._name, t0)

    def __exit__(self, *_: object) -> None:
        self._lock.release()


# --------------------------------------------------------------------------------------------- client side


class TimedClient(EventsClient):
    """`EventsClient` whose reader stamps each frame on arrival: data events queue as `(t, event)`."""

    stamps: dict[str, float]

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            now = time.perf_counter()
            frame = json.loads(message.data)
            kind, frame_id = frame.get("type"), frame.get("id")
            if kind == "data" and frame_id in self._queues:
                self._queues[frame_id].put_nowait((now, json.loads(frame["event"])))
            elif frame_id in self._pending:
                self.stamps[frame_id] = now
                self._pending.pop(frame_id).set_result(frame)


@dataclass
class Result:
    t_send: float
    t_ack: float | None = None
    t_first_delta: float | None = None
    t_end: float | None = None
    frames: int = 0
    deltas: int = 0
    outcome: str = "timeout"  # end | error:<code> | publish_error | timeout


@dataclass
class Session:
    """One signed-in user on its own WebSocket, subscribed to one conversation's responses channel."""

    client: TimedClient
    sub: str
    conversation: str
    queue: asyncio.Queue[tuple[float, dict[str, Any]]]

    @classmethod
    async def open(cls, endpoints: Endpoints, token: str) -> Session:
        client = TimedClient(endpoints, token)
        client.stamps = {}
        await client.__aenter__()
        sub, conversation = token_sub(token), f"bench-{uuid.uuid4().hex[:12]}"
        queue = await client.subscribe(f"/responses/{sub}/{conversation}")
        return cls(client, sub, conversation, queue)  # type: ignore[arg-type]

    async def ask(self, text: str, timeout_s: float) -> Result:
        client = self.client
        assert client._ws is not None
        request_id, publish_id = uuid.uuid4().hex, uuid.uuid4().hex
        request = {
            "requestId": request_id,
            "conversationId": self.conversation,
            "messages": [{"role": "user", "content": [{"text": text}]}],
        }
        ack: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        client._pending[publish_id] = ack
        message = {
            "type": "publish",
            "id": publish_id,
            "channel": f"/chat/{self.sub}/{self.conversation}",
            "events": [json.dumps(request)],
            "authorization": client.auth,
        }
        result = Result(t_send=time.perf_counter())
        await client._ws.send_json(message)
        deadline = result.t_send + timeout_s
        try:
            while True:
                t, event = await asyncio.wait_for(self.queue.get(), max(0.001, deadline - time.perf_counter()))
                if event.get("requestId") != request_id:
                    continue
                result.frames += 1
                if event.get("type") == "delta":
                    result.deltas += 1
                    if result.t_first_delta is None:
                        result.t_first_delta = t
                if event.get("type") in ("end", "error"):
                    result.t_end = t
                    result.outcome = "end" if event["type"] == "end" else f"error:{event.get('code')}"
                    break
            frame = await asyncio.wait_for(ack, max(0.001, deadline - time.perf_counter()))
            result.t_ack = client.stamps.pop(publish_id, None)
            if frame.get("type") != "publish_success" or frame.get("failed"):
                result.outcome = "publish_error"
        except TimeoutError:
            client._pending.pop(publish_id, None)
        return result

    async def close(self) -> None:
        await self.client.close()


def latency_report(results: list[Result], wall_s: float) -> dict[str, Any]:
    ok = [r for r in results if r.outcome == "end" and r.t_end is not None]
    first = [r.t_first_delta - r.t_send for r in ok if r.t_first_delta is not None]
    return {
        "requests": len(results),
        "completed": len(ok),
        "outcomes": dict(Counter(r.outcome for r in results)),
        "publish_to_first_delta_ms": summary(first),
        "publish_to_end_ms": summary([r.t_end - r.t_send for r in ok]),  # type: ignore[operator]
        "publish_to_publish_success_ms": summary([r.t_ack - r.t_send for r in ok if r.t_ack is not None]),
        "data_frames_per_response": _counts([r.frames for r in ok]),
        "delta_events_per_response": _counts([r.deltas for r in ok]),
        "wall_s": round(wall_s, 2),
        "requests_per_s": round(len(ok) / wall_s, 1) if wall_s else None,
    }


def _question(i: int) -> str:
    return f"Benchmark question {i}: how quickly does the gateway answer?"


# --------------------------------------------------------------------------------------------- users


def make_users(endpoints: Endpoints, count: int, tier: str) -> list[str]:
    """`count` fresh users in `tier` (fresh each run: no quota carried over); returns their id tokens."""
    cognito = boto3.client("cognito-idp", region_name=endpoints.region, endpoint_url=endpoints.cognito_endpoint)
    pool = LocalPool(
        user_pool_id=endpoints.user_pool_id,
        client_id=endpoints.client_id,
        region=endpoints.region,
        endpoint=endpoints.cognito_endpoint or "",
        issuer="",
        jwks_url="",
        tiers=(tier,),
    )
    run = uuid.uuid4().hex[:8]
    tokens = []
    for i in range(count):
        username, password = f"bench-{run}-{i}@example.com", generate_password()
        add_user(cognito, pool, username, password, tier=tier)
        tokens.append(sign_in(endpoints, username, password)["IdToken"])
    return tokens


def meter_item(endpoint: str | None, region: str, table: str, sub: str) -> dict[str, Any]:
    """Size of one user's metering item (approximated by its DynamoDB-JSON length): its live reservations and
    the settled requests it remembers for retries (`dn` tombstones)."""
    dynamodb = boto3.client("dynamodb", region_name=region, endpoint_url=endpoint)
    item = dynamodb.get_item(TableName=table, Key={"pk": {"S": f"user#{sub}"}}).get("Item") or {}
    return {
        "json_bytes": len(json.dumps(item, separators=(",", ":"))),
        "reservation_entries": len(item.get("rs", {}).get("M", {})),
        "remembered_requests": len(item.get("dn", {}).get("M", {})),
    }


# --------------------------------------------------------------------------------------------- scenarios


@dataclass
class Run:
    results: list[Result]
    windows: list[list[Rec]] | None
    busy_s: float  # time with a request in flight (sessions are opened outside it)


async def run_sequential(
    endpoints: Endpoints, tokens: list[str], n: int, per_user: int, timeout_s: float, tracer: Tracer | None = None,
    first_question: int = 0,
) -> Run:
    """`n` requests one at a time from one client; a fresh user (and WebSocket) every `per_user` requests.

    With a `tracer`, records are collected and each request's are those inside its window; the next request
    waits for the worker's tail (usage record) so that nothing spills over.
    """
    results: list[Result] = []
    busy = 0.0
    session: Session | None = None
    if tracer is not None:
        tracer.reset()
        tracer.on = True
    try:
        for i in range(n):
            if i % per_user == 0:
                if session is not None:
                    await session.close()
                session = await Session.open(endpoints, tokens[i // per_user])
            done = tracer.worker_done + 1 if tracer is not None else 0
            started = time.perf_counter()
            results.append(await session.ask(_question(first_question + i), timeout_s))  # type: ignore[union-attr]
            busy += time.perf_counter() - started
            while tracer is not None and tracer.worker_done < done and time.perf_counter() - started < timeout_s:
                await asyncio.sleep(0.0005)
    finally:
        if tracer is not None:
            tracer.on = False
        if session is not None:
            await session.close()
    windows = None
    if tracer is not None:
        recs = sorted(tracer.recs, key=lambda r: r.t0)
        windows = []
        for i, result in enumerate(results):
            end = results[i + 1].t_send if i + 1 < len(results) else float("inf")
            windows.append([r for r in recs if result.t_send <= r.t0 < end])
    return Run(results, windows, busy)


async def warm_up(endpoints: Endpoints, token: str, timeout_s: float, n: int = 5) -> None:
    """First requests build the handlers' clients and connection pools: keep them out of the figures."""
    await run_sequential(endpoints, [token], n, n, timeout_s, first_question=-100)


async def concurrent(
    endpoints: Endpoints, tokens: list[str], per_client: int, timeout_s: float
) -> dict[str, Any]:
    sessions = await asyncio.gather(*(Session.open(endpoints, t) for t in tokens))
    try:

        async def run(index: int, session: Session) -> list[Result]:
            return [await session.ask(_question(index * 1000 + i), timeout_s) for i in range(per_client)]

        started = time.perf_counter()
        batches = await asyncio.gather(*(run(i, s) for i, s in enumerate(sessions)))
        report = latency_report([r for b in batches for r in b], time.perf_counter() - started)
        report["clients"] = len(sessions)
        report["requests_per_client"] = per_client
        return report
    finally:
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


def growth_report(run: Run, item: dict[str, Any], buckets: int = 3, size: int = 20) -> dict[str, Any]:
    """Latency of one user's requests as its metering item grows: the first, middle and last `size` requests."""
    n = len(run.results)
    starts = sorted({0, max(0, n // 2 - size // 2), max(0, n - size)})[:buckets]
    out: dict[str, Any] = {"requests_from_one_user": n, "meter_item_after": item, "by_request_index": []}
    for start in starts:
        chunk = run.results[start : start + size]
        row: dict[str, Any] = {
            "requests": f"{start + 1}-{start + len(chunk)}",
            "publish_to_first_delta_p50_ms": summary(
                [r.t_first_delta - r.t_send for r in chunk if r.t_first_delta is not None]
            ).get("p50"),
        }
        if run.windows is not None:
            for call in ("gk.dynamodb.GetItem", "gk.dynamodb.PutItem", "wk.dynamodb.UpdateItem"):
                durations = [r.dur for w in run.windows[start : start + size] for r in w if r.name == call]
                row[f"{call}_p50_ms"] = summary(durations).get("p50")
        out["by_request_index"].append(row)
    return out


# --------------------------------------------------------------------------------------------- analysis


CRITICAL_PATH = [
    ("client -> events server (WebSocket frame dispatched)", "c.send", "srv.ws_publish_frame"),
    ("events server: JWT auth + publish validation + handler hand-off", "srv.ws_publish_frame", "gk.handler.start"),
    ("gatekeeper: start -> Lambda invoke call", "gk.handler.start", "gk.invoke_worker.start"),
    ("Lambda invoke hop (invoke call -> worker handler start)", "gk.invoke_worker.start", "wk.handler.start"),
    ("worker: start -> Bedrock ConverseStream call", "wk.handler.start", "wk.bedrock-runtime.ConverseStream.start"),
    ("worker: Bedrock call -> first token", "wk.bedrock-runtime.ConverseStream.start", "wk.first_token"),
    # The coalescer sends the first text at once, so the first publish starts right after the first token.
    ("worker: first token -> first publish", "wk.first_token", "pub.publish.start"),
    ("publish: worker POST /event -> events server handler", "pub.publish.start", "srv.http_publish.start"),
    ("events server: SigV4 verify + broadcast", "srv.http_publish.start", "srv.broadcast.responses"),
    ("fan-out: broadcast -> data frame at the client", "srv.broadcast.responses", "c.first_delta"),
]


def _edges(recs: list[Rec], result: Result) -> dict[str, float]:
    """First occurrence of every boundary in one request's window: `<name>.start`, `<name>.end` or `<name>`."""
    at: dict[str, float] = {"c.send": result.t_send}
    if result.t_first_delta is not None:
        at["c.first_delta"] = result.t_first_delta
    if result.t_end is not None:
        at["c.end"] = result.t_end
    if result.t_ack is not None:
        at["c.ack"] = result.t_ack
    for r in recs:
        if r.t0 == r.t1:
            at.setdefault(r.name, r.t0)
        else:
            at.setdefault(f"{r.name}.start", r.t0)
            at.setdefault(f"{r.name}.end", r.t1)
    return at


# Every timed boundary pair of one sequential request: (label, from, to); `c.*` are client-side stamps.
HOPS = [
    ("publish -> first delta (client)", "c.send", "c.first_delta"),
    ("publish -> end (client)", "c.send", "c.end"),
    ("publish -> publish_success (client)", "c.send", "c.ack"),
    ("ws: JWT auth incl. thread hop (EventsServer._authenticate)", "srv.authenticate.start", "srv.authenticate.end"),
    ("ws: JWT verify itself (RS256, in the thread)", "jwt.verify.start", "jwt.verify.end"),
    ("ws: auth done -> handler thread picked up", "srv.authenticate.end", "srv.handler_thread"),
    ("ws: handler thread -> gatekeeper running", "srv.handler_thread", "gk.handler.start"),
    ("ws: handler lock wait", "srv.handler_lock_wait.start", "srv.handler_lock_wait.end"),
    ("ws: onPublish invocation as the server sees it", "srv.invoke_handler.start", "srv.invoke_handler.end"),
    ("ws: gatekeeper returned -> server resumes on its loop", "gk.handler.end", "srv.invoke_handler.end"),
    ("ws: gatekeeper returned -> publish_success at the client", "gk.handler.end", "c.ack"),
    ("gatekeeper total", "gk.handler.start", "gk.handler.end"),
    ("gatekeeper: handler start -> cache lookup (Powertools resolve, parse, tier)", "gk.handler.start",
     "gk.cache_lookup.start"),
    ("gatekeeper: cache lookup (AnswerCache.lookup)", "gk.cache_lookup.start", "gk.cache_lookup.end"),
    ("gatekeeper: admit (Meter.admit)", "gk.admit.start", "gk.admit.end"),
    ("gatekeeper: invoke worker (Lambda Invoke, Event)", "gk.invoke_worker.start", "gk.invoke_worker.end"),
    ("gatekeeper: after invoke -> handler returns", "gk.invoke_worker.end", "gk.handler.end"),
    ("worker total (handler)", "wk.handler.start", "wk.handler.end"),
    ("worker: Bedrock call -> response headers (after-call)", "wk.bedrock-runtime.ConverseStream.start",
     "wk.bedrock-runtime.ConverseStream.end"),
    ("worker: Bedrock call -> first token", "wk.bedrock-runtime.ConverseStream.start", "wk.first_token"),
    ("worker: settle (Meter.settle)", "wk.settle.start", "wk.settle.end"),
    ("worker: stream end -> settle start", "wk.stream_end", "wk.settle.start"),
    ("worker: settle end -> first publish", "wk.settle.end", "pub.publish.start"),
    ("worker: first publish call (EventPublisher.publish)", "pub.publish.start", "pub.publish.end"),
    ("publish: SigV4 verify (in the thread)", "sigv4.verify.start", "sigv4.verify.end"),
    ("publish: events server HTTP handler", "srv.http_publish.start", "srv.http_publish.end"),
    ("publish: server answered -> publisher returns", "srv.http_publish.end", "pub.publish.end"),
    ("fan-out: broadcast -> frame queued", "srv.broadcast.responses", "srv.frame_queued"),
    ("fan-out: frame queued -> client receives", "srv.frame_queued", "c.first_delta"),
    ("worker: publish returned -> handler returns (usage record, metrics)", "pub.publish.end", "wk.handler.end"),
]


_CALL_PARTS = {
    "prepare": "client: serialise + sign",
    "server": "loopback round trip + server",
    "parse": "client: parse",
}
_AWS_SERVICES = ("dynamodb", "lambda", "bedrock-runtime")


def breakdown(results: list[Result], windows: list[list[Rec]], invoke_hops: list[float]) -> dict[str, Any]:
    hops: dict[str, list[float]] = defaultdict(list)
    path: dict[str, list[float]] = defaultdict(list)
    calls: dict[str, Counter[str]] = {"gatekeeper": Counter(), "worker": Counter()}
    call_times: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    publishes, events_per_publish = [], []
    complete = 0
    for result, recs in zip(results, windows, strict=True):
        if result.outcome != "end" or result.t_first_delta is None:
            continue
        at = _edges(recs, result)
        if not all(a in at and b in at for _, a, b in CRITICAL_PATH):
            continue
        complete += 1
        for label, a, b in CRITICAL_PATH:
            path[label].append(at[b] - at[a])

        for label, a, b in HOPS:
            if a in at and b in at:
                hops[label].append(at[b] - at[a])
        # every botocore call, per client and operation (in call order within the gatekeeper / the worker)
        seen: Counter[str] = Counter()
        for r in recs:
            parts = r.name.split(".")
            if len(parts) < 3 or parts[0] not in ("gk", "wk") or parts[1] not in _AWS_SERVICES:
                continue
            base = ".".join(parts[:3])
            if len(parts) == 3:
                seen[base] += 1
                calls["gatekeeper" if parts[0] == "gk" else "worker"][f"{parts[1]}.{parts[2]}"] += 1
            label = f"{base} #{seen[base]}" if seen[base] > 1 else base
            part = _CALL_PARTS.get(parts[3], parts[3]) if len(parts) == 4 else "total"
            call_times[label][part].append(r.dur)
            if len(parts) == 3 and parts[1] == "dynamodb":
                inside = [m for m in recs if m.name == "moto.request" and r.t0 <= m.t0 and m.t1 <= r.t1]
                if inside:
                    call_times[label]["of which moto itself (WSGI app: dispatch, backend, response)"].append(
                        inside[0].dur
                    )
        pubs = [r for r in recs if r.name == "pub.publish"]
        publishes.append(len(pubs))
        events_per_publish.extend(r.key for r in pubs if isinstance(r.key, int))
    if complete == 0:
        return {"requests": len(results), "complete_traces": 0}
    n = complete
    dyn = {side: {op: round(c / n, 2) for op, c in ops.items()} for side, ops in calls.items()}
    total_mean = sum(statistics.fmean(v) for v in path.values())
    critical = [
        {"hop": label, "p50_ms": summary(v)["p50"], "mean_ms": summary(v)["mean"],
         "share_of_mean": round(statistics.fmean(v) / total_mean, 3)}
        for label, v in path.items()
    ]
    return {
        "requests": len(results),
        "complete_traces": complete,
        "critical_path_to_first_delta": critical,
        "critical_path_mean_sum_ms": _ms(total_mean),
        "top_contributors": sorted(critical, key=lambda c: -c["mean_ms"])[:5],
        "hops_ms": {label: summary(v) for label, v in hops.items()},
        "aws_calls_ms": {
            label: {part: summary(v) for part, v in parts.items()} for label, parts in call_times.items()
        },
        "lambda_invoke_hop_ms": summary(invoke_hops),
        "aws_calls_per_request": dyn,
        "publishes_per_response": _counts(publishes),
        "events_per_publish": _counts(events_per_publish),
    }


def contention(recs: list[Rec], invoke_hops: list[float]) -> dict[str, Any]:
    """Under concurrency windows overlap: per-boundary durations only (not attributed to requests)."""
    by: dict[str, list[float]] = defaultdict(list)
    for r in recs:
        if r.t0 != r.t1 and not r.name.endswith(".prepare"):
            by[r.name].append(r.dur)
    wanted = [
        "srv.authenticate", "jwt.verify", "srv.invoke_handler", "srv.handler_lock_wait", "moto.lock_wait",
        "moto.request", "gk.handler",
        "gk.cache_lookup", "gk.admit",
        "gk.invoke_worker", "wk.handler", "wk.settle", "pub.publish", "srv.http_publish", "sigv4.verify",
    ]
    out = {name: summary(by[name]) for name in wanted if by.get(name)}
    out.update({name: summary(v) for name, v in sorted(by.items()) if name.count(".") >= 2 and name not in out})
    out["lambda invoke hop (invoke call -> worker start)"] = summary(invoke_hops)
    return out


# --------------------------------------------------------------------------------------------- main


class CountingSink:
    """Where the runtime's JSON logs and EMF metrics go during the run (stdout carries the report)."""

    encoding = "utf-8"

    def __init__(self) -> None:
        self.bytes = 0
        self.lines = 0
        self.levels: Counter[str] = Counter()  # WARNING / ERROR lines: a failed publish or settle shows here

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self.bytes += len(text)
        self.lines += text.count("\n")
        for level in ("WARNING", "ERROR", "CRITICAL"):
            if f'"level":"{level}"' in text:
                self.levels[level] += 1
        return len(text)

    def flush(self) -> None:
        pass


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def measure(
    info: dict[str, Any], args: argparse.Namespace, tracer: Tracer | None, sink: CountingSink | None
) -> dict[str, Any]:
    c = info["cognito"]
    endpoints = Endpoints(
        info["http"], info["realtime"], info["region"], c["endpoint"], c["user_pool_id"], c["client_id"]
    )
    per_user = args.per_user
    groups = {
        "warmup": 1,
        "sequential": -(-args.sequential // per_user),
        "concurrent": args.users,
        "breakdown": -(-args.breakdown // per_user),
        "growth": 1 if args.growth else 0,
    }
    tokens = await asyncio.to_thread(make_users, endpoints, sum(groups.values()), args.tier)
    users: dict[str, list[str]] = {}
    for name, count in groups.items():
        users[name], tokens = tokens[:count], tokens[count:]
    await warm_up(endpoints, users["warmup"][0], args.timeout)

    report: dict[str, Any] = {}
    run = await run_sequential(endpoints, users["sequential"], args.sequential, per_user, args.timeout)
    report["sequential"] = {
        "clients": 1,
        "users": f"a fresh user (and WebSocket) every {per_user} requests, as in the concurrent run",
        **latency_report(run.results, run.busy_s),
    }

    if tracer is not None:
        tracer.reset()
        tracer.on = True
    try:
        report["concurrent"] = await concurrent(endpoints, users["concurrent"], per_user, args.timeout)
    finally:
        if tracer is not None:
            tracer.on = False
    if tracer is not None:
        report["concurrent"]["boundaries_ms"] = contention(tracer.recs, tracer.invoke_hops)
        lines_before = sink.lines if sink else 0
        run = await run_sequential(endpoints, users["breakdown"], args.breakdown, per_user, args.timeout, tracer)
        assert run.windows is not None
        report["breakdown_sequential"] = {
            "instrumented_publish_to_first_delta_ms": latency_report(run.results, run.busy_s)[
                "publish_to_first_delta_ms"
            ],
            **breakdown(run.results, run.windows, tracer.invoke_hops),
        }
        if sink is not None and run.results:
            report["breakdown_sequential"]["runtime_log_lines_per_request"] = round(
                (sink.lines - lines_before) / len(run.results), 1
            )
    else:
        report["breakdown_sequential"] = (
            "not available: hops are timed in-process only (run with --handlers threads, without --dev-json)"
        )

    if args.growth:
        token = users["growth"][0]
        run = await run_sequential(endpoints, [token], args.growth, args.growth, args.timeout, tracer)
        item = await asyncio.to_thread(
            meter_item, c["endpoint"], info["region"], info["tables"]["metering"], token_sub(token)
        )
        report["one_user_growth"] = growth_report(run, item)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--dev-json", type=Path, help="measure an already running `aigw dev` (its .aigw/dev.json)")
    parser.add_argument("--stack-file", type=Path, default=ROOT / "Pulumi.dev.yaml")
    parser.add_argument("--tier", default="pro", help="tier of the benchmark users (its window must fit the run)")
    parser.add_argument("--sequential", type=int, default=500, help="requests from one client, one at a time")
    parser.add_argument("--users", type=int, default=50, help="concurrent clients, one user each")
    parser.add_argument("--per-user", type=int, default=10, help="requests per user (both runs)")
    parser.add_argument("--breakdown", type=int, default=100, help="traced sequential requests for the per-hop view")
    parser.add_argument("--growth", type=int, default=150, help="sequential requests of one user (0: skip)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for one answer")
    parser.add_argument(
        "--handlers",
        choices=sorted(WHERE),
        default="processes",
        help="where the in-process gateway runs the handlers: worker processes (as `aigw dev`) or threads (traced)",
    )
    args = parser.parse_args()

    header: dict[str, Any] = {
        "machine": machine(),
        "transport": TRANSPORT.format(where=WHERE[args.handlers]),
        "bedrock_emulator": {"pacing_s": 0.0, "first_token_delay_s": 0.0},
        "users_tier": args.tier,
    }
    if args.dev_json:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")  # admin calls to the local Cognito and DynamoDB (moto)
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        header["gateway"] = f"already running, from {args.dev_json}"
        header["processes"] = "the gateway in its own process; clients in this one"
        header["bedrock_emulator"] = "as the running gateway was started (`aigw dev --pacing-ms`, default 20 ms)"
        report = asyncio.run(measure(json.loads(args.dev_json.read_text()), args, None, None))
    else:
        from aigw.dev import Ports, running
        from components.settings import StackSettings

        settings = StackSettings.from_stack_file(args.stack_file)
        threads = args.handlers == "threads"
        tracer = Tracer() if threads else None  # the handlers it patches run in this process only with threads
        if tracer is not None:
            tracer.install_static()
        sink = CountingSink()
        started = time.perf_counter()
        try:
            with (
                contextlib.redirect_stdout(sink),
                running(settings, ports=Ports(0, 0, 0, 0), pacing_s=0.0, handlers_in=args.handlers) as gw,
            ):
                header["gateway"] = f"in-process `aigw dev` ({args.stack_file.name}), ports chosen by the OS"
                if tracer is not None:
                    tracer.install_instances()
                    header["processes"] = (
                        "one: clients, events server, moto, emulators and handlers share this interpreter (and its GIL)"
                    )
                else:
                    gw.warm()
                    header["processes"] = (
                        "clients, events server, moto and the emulators share this interpreter (and its GIL); each "
                        f"function's handler runs in its own pool of {gw.lambda_concurrency} worker processes, "
                        "all started before the first request"
                    )
                report = asyncio.run(measure(gw.info, args, tracer, sink))
        finally:
            if tracer is not None:
                tracer.undo()
        header["run_s"] = round(time.perf_counter() - started, 1)
        header["runtime_log"] = {"lines": sink.lines, "warnings_and_errors": dict(sink.levels)}
    print(json.dumps({**header, **report}, indent=2))


if __name__ == "__main__":
    main()
