"""Metering figures: `python -m benchmarks.metering` prints JSON.

DynamoDB calls per admit / refuse / settle (counted with a botocore event hook), sequential admit latency
and admissions per second, and over-admitted tokens when 1, 16 and 64 requests of one user race — all
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


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with AtomicMotoServer() as server:
        client = _client(server.endpoint_url)
        report = {
            "dynamodb_calls": calls_per_operation(client),
            "latency_against_moto": admit_latency(client),
            "concurrency": {f"{c}-way": over_admission(client, c) for c in (1, 16, 64)},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
