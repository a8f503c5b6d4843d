"""Request-path figures: `python -m benchmarks.runtime` prints JSON.

- publishes per response for 100 and 1,000 streamed deltas (burst, and paced at 10 ms per delta, about the
  rate Bedrock streams a fast model), and the HTTP connections the worker opened;
- answer-journal writes per response (at most one a second while streaming, plus the final one);
- resume: latency and publishes to replay a whole 1,000-delta answer, and its second half;
- cancel: tokens charged when the client cancels 1 s into a 10 s answer, against the whole answer, and the time
  from the cancel to the `cancelled` end;
- DynamoDB calls per request: admitted (gatekeeper + worker), refused, cached;
- import time of the handler module (median over fresh interpreters).
All against the project's local peers on 127.0.0.1: moto, the Bedrock emulator, the AppSync receiver.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from contextlib import redirect_stdout
from io import StringIO
from typing import Any

import boto3
from botocore.config import Config

from aigw.emulators.appsync_receiver import AppSyncReceiver
from aigw.emulators.bedrock import BedrockEmulator
from aigw.emulators.moto_server import AtomicMotoServer
from tests.runtime.test_request_path import CREDS, SUB, Gateway, ask


def _gateway(dynamodb: Any, receiver: AppSyncReceiver, bedrock: BedrockEmulator) -> Gateway:
    return Gateway(dynamodb, receiver, bedrock)


def _count_journal_writes(gw: Gateway) -> list[int]:
    writes = [0]

    def count(params: dict[str, Any], **_: Any) -> None:
        if params.get("TableName") == gw.config.streams_table:
            writes[0] += 1

    gw.dynamodb.meta.events.register("provide-client-params.dynamodb.UpdateItem", count)
    return writes


def publishes_per_response(dynamodb: Any, deltas: int, pacing_s: float) -> dict[str, Any]:
    with (
        AppSyncReceiver({CREDS.access_key: CREDS.secret_key}, region="us-east-1") as receiver,
        BedrockEmulator(answer=lambda _: " ".join(f"w{i}" for i in range(deltas)), pacing_s=pacing_s) as bedrock,
    ):
        gw = _gateway(dynamodb, receiver, bedrock)
        gw.meter.set_override(SUB, gw.config.tier("pro").limits)
        gw.publish(ask(maxTokens=2_000), groups=["pro"])
        journal_writes = _count_journal_writes(gw)
        started = time.perf_counter()
        with redirect_stdout(StringIO()):
            gw.run_jobs()
        elapsed = time.perf_counter() - started
        sizes = [len(p["events"]) for p in receiver.received]
        return {
            "deltas_from_model": deltas,
            "pacing_ms": pacing_s * 1000,
            "publishes": len(sizes),
            "events_published": sum(sizes),
            "max_events_per_publish": max(sizes),
            "connections_opened": gw.publisher.connections_opened,
            "journal_writes": journal_writes[0],
            "worker_seconds": round(elapsed, 3),
        }


def resume_and_cancel(dynamodb: Any, deltas: int = 1_000, pacing_s: float = 0.01) -> dict[str, Any]:
    answer = " ".join(f"w{i}" for i in range(deltas))
    with (
        AppSyncReceiver({CREDS.access_key: CREDS.secret_key}, region="us-east-1") as receiver,
        BedrockEmulator(answer=lambda _: answer, pacing_s=pacing_s) as bedrock,
        redirect_stdout(StringIO()),
    ):
        gw = _gateway(dynamodb, receiver, bedrock)
        gw.meter.set_override(SUB, gw.config.tier("pro").limits)
        gw.publish(ask(requestId="whole", maxTokens=2_000), groups=["pro"])
        gw.run_jobs()
        whole = gw.events()[-1]
        events = len(gw.events())
        replays = {}
        for name, after in (("whole_answer", -1), ("second_half", events // 2)):
            before = len(receiver.received)
            started = time.perf_counter()
            gw.publish({"action": "resume", "requestId": "whole", "afterSeq": after}, groups=["pro"])
            replays[name] = {
                "ms": round((time.perf_counter() - started) * 1000, 1),
                "events_replayed": sum(len(p["events"]) for p in receiver.received[before:]),
                "publishes": len(receiver.received) - before,
            }

        gw.publish(ask(requestId="cancelled", maxTokens=2_000), groups=["pro"])
        cancel_at: list[float] = []

        def cancel_after_one_second() -> None:
            time.sleep(1.0)
            cancel_at.append(time.perf_counter())
            gw.publish({"action": "cancel", "requestId": "cancelled"}, groups=["pro"], event_id="cancel")

        canceller = threading.Thread(target=cancel_after_one_second)
        canceller.start()
        gw.run_jobs()
        ended_at = time.perf_counter()
        canceller.join()
        end = gw.events()[-1]
    return {
        "events_in_answer": events,
        "resume": replays,
        "cancel": {
            "stop_reason": end["stopReason"],
            "output_tokens_charged": end["usage"]["output"],
            "output_tokens_whole_answer": whole["usage"]["output"],
            "tokens_saved": whole["usage"]["output"] - end["usage"]["output"],
            "cancel_to_end_ms": round((ended_at - cancel_at[0]) * 1000, 1),
        },
    }


def dynamodb_calls(dynamodb: Any) -> dict[str, dict[str, int]]:
    with (
        AppSyncReceiver({CREDS.access_key: CREDS.secret_key}, region="us-east-1") as receiver,
        BedrockEmulator() as bedrock,
    ):
        gw = _gateway(dynamodb, receiver, bedrock)
        figures = {}
        with redirect_stdout(StringIO()):
            gw.calls.clear()
            gw.publish(ask())
            gw.run_jobs()
            figures["admitted"] = dict(gw.calls)
            gw.cache.put("What is cached?", gw.config.tier("free").model, "An answer from the cache.")
            gw.calls.clear()
            gw.publish(ask("what is cached"))
            gw.run_jobs()
            figures["cached"] = dict(gw.calls)
            gw.meter.admit(SUB, gw.config.tier("free").limits, input_tokens=0, max_output_tokens=4_000)
            gw.calls.clear()
            gw.publish(ask("Something new?"))
            figures["refused"] = dict(gw.calls)
        return figures


def import_time_ms(runs: int = 7) -> float:
    code = "import time; t = time.perf_counter(); import runtime.handlers; print(time.perf_counter() - t)"
    samples = [float(subprocess.check_output([sys.executable, "-c", code], text=True)) for _ in range(runs)]
    return round(statistics.median(samples) * 1000, 1)


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # Local peers only: dummy credentials, so nothing here can reach (or bill) a real account.
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_PROFILE", None)
    with AtomicMotoServer() as moto:
        dynamodb = boto3.client(
            "dynamodb", endpoint_url=moto.endpoint_url, region_name="us-east-1",
            aws_access_key_id="bench", aws_secret_access_key="bench", config=Config(max_pool_connections=16),
        )
        report = {
            "publishes": [
                publishes_per_response(dynamodb, n, pacing) for n in (100, 1_000) for pacing in (0.0, 0.01)
            ],
            "resume_and_cancel": resume_and_cancel(dynamodb),
            "dynamodb_calls_per_request": dynamodb_calls(dynamodb),
            "handler_import_ms_median": import_time_ms(),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
