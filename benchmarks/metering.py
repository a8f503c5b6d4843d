"""Metering figures: `python -m benchmarks.metering` prints JSON.

DynamoDB calls per admit / refuse / settle (counted with a botocore event hook), sequential admit latency
and admissions per second, over-admitted tokens when 1, 16 and 64 requests of one user race, and the bytes a
user's item carries per remembered admission — all
against moto's HTTP server on 127.0.0.1 (served atomically, as DynamoDB applies conditional writes).
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config

from aigw.emulators.moto_server import AtomicMotoServer
from runtime.metering import Limits, Meter, table_spec

T0 = 1_794_744_003.0  # mid-month, fixed: figures do not depend on the day they are taken


def _client(endpoint: str) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(max_pool_connections=128),
    )


def _new_meter(client: Any, clock: Any = lambda: T0) -> Meter:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    client.create_table(**table_spec(name))
    return Meter(name, client=client, clock=clock, max_attempts=64)


def calls_per_operation(client: Any) -> dict[str, dict[str, int]]:
    calls: Counter[str] = Counter()
    client.meta.events.register("before-call.dynamodb.*", lambda model, **_: calls.update([model.name]))
    meter = _new_meter(client)
    limits = Limits(window_tokens=3_000, monthly_tokens=1_000_000)
    figures = {}
    calls.clear()
    d = meter.admit("u", limits, input_tokens=1_000, max_output_tokens=2_000)
    figures["admit"] = dict(calls)
    calls.clear()
    meter.admit("u", limits, input_tokens=1_000, max_output_tokens=2_000)
    figures["refuse"] = dict(calls)
    calls.clear()
    meter.settle("u", d.reservation_id, input_tokens=1_000, output_tokens=500)
    figures["settle"] = dict(calls)
    return figures


def admit_latency(client: Any, n: int = 300) -> dict[str, float]:
    now = [T0]
    meter = _new_meter(client, clock=lambda: now[0])
    # A busy user of a generous tier: a request every 10 s, each well within the window.
    limits = Limits(window_tokens=100_000, monthly_tokens=10**8)
    latencies = []
    started = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        d = meter.admit("u", limits, input_tokens=500, max_output_tokens=1_000)
        latencies.append((time.perf_counter() - t) * 1000)
        meter.settle("u", d.reservation_id, input_tokens=500, output_tokens=700)
        now[0] += 10
    elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100)
    return {
        "admit_p50_ms": round(q[49], 2),
        "admit_p99_ms": round(q[98], 2),
        "admit_settle_pairs_per_s": round(n / elapsed, 1),
    }


def over_admission(client: Any, concurrency: int) -> dict[str, int]:
    limits = Limits(window_tokens=20_000, monthly_tokens=10**9)
    meter = _new_meter(client)
    barrier = threading.Barrier(concurrency)
    per_thread = max(1, 64 // concurrency)

    def run(_: int) -> list[Any]:
        barrier.wait()
        return [meter.admit("hot", limits, input_tokens=500, max_output_tokens=1_000) for _ in range(per_thread)]

    with ThreadPoolExecutor(concurrency) as pool:
        decisions = [d for batch in pool.map(run, range(concurrency)) for d in batch]
    reserved = sum(d.reserved_tokens for d in decisions if d.admitted)
    return {
        "requests": len(decisions),
        "admitted": sum(d.admitted for d in decisions),
        "reserved_tokens": reserved,
        "limit": limits.window_tokens,
        "over_admitted_tokens": max(0, reserved - limits.window_tokens),
    }


def dynamodb_item_bytes(item: dict[str, Any]) -> int:
    """An item's size as DynamoDB bills and limits it (the developer guide's rules for item size): names and
    strings in UTF-8 bytes, numbers about one byte per two significant digits plus one, maps and lists 3 bytes
    plus 1 per element."""

    def value(v: dict[str, Any]) -> int:
        (kind, x), = v.items()
        if kind == "S":
            return len(x.encode())
        if kind == "N":
            digits = x.lstrip("-").replace(".", "").lstrip("0") or "0"
            return (len(digits.rstrip("0") or "0") + 1) // 2 + 1
        if kind in ("BOOL", "NULL"):
            return 1
        if kind == "M":
            return 3 + sum(1 + len(k.encode()) + value(e) for k, e in x.items())
        if kind == "L":
            return 3 + sum(1 + value(e) for e in x)
        raise ValueError(f"unsized attribute type {kind}")

    return sum(len(name.encode()) + value(v) for name, v in item.items())


def bytes_per_admission(client: Any, admissions: int = 200) -> dict[str, float]:
    """How a user's item grows with the admissions it remembers (each settled, each with a client requestId):
    what every later admission rewrites, and what DynamoDB bills it for (1 WCU per KB)."""
    meter = _new_meter(client)
    limits = Limits(window_tokens=10**7, monthly_tokens=10**9)
    key = {"pk": {"S": "user#u"}}

    def size() -> int:
        return dynamodb_item_bytes(client.get_item(TableName=meter.table_name, Key=key).get("Item") or {})

    first = meter.admit("u", limits, input_tokens=800, max_output_tokens=512, request_key=str(uuid.uuid4()))
    meter.settle("u", first.reservation_id, input_tokens=790, output_tokens=300)
    one = size()
    for _ in range(admissions - 1):
        d = meter.admit("u", limits, input_tokens=800, max_output_tokens=512, request_key=str(uuid.uuid4()))
        meter.settle("u", d.reservation_id, input_tokens=790, output_tokens=300)
    many = size()
    live = meter.admit("u", limits, input_tokens=800, max_output_tokens=512, request_key=str(uuid.uuid4()))
    with_live = size()
    meter.settle("u", live.reservation_id, input_tokens=790, output_tokens=300)
    return {
        "item_bytes_after_1": one,
        f"item_bytes_after_{admissions}": many,
        "bytes_per_settled_admission": round((many - one) / (admissions - 1), 1),
        "bytes_per_live_reservation": with_live - many,
        "admissions_per_400kb_item": int(400 * 1024 // ((many - one) / (admissions - 1))),
    }


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with AtomicMotoServer() as server:
        client = _client(server.endpoint_url)
        report = {
            "dynamodb_calls": calls_per_operation(client),
            "latency_against_moto": admit_latency(client),
            "concurrency": {f"{c}-way": over_admission(client, c) for c in (1, 16, 64)},
            "item_size": bytes_per_admission(client),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
