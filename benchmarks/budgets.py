"""Budget figures: `python -m benchmarks.budgets` prints JSON.

- DynamoDB round trips and calls of the gatekeeper's admitted path with one level (the user's tokens) and with
  three (user, team, stack ceiling): a round trip is a stretch of time with at least one call in flight, so the
  team and stack decrements, sent together, count once;
- 64 concurrent requests from 64 members of one team against a small team budget (the hot item): admitted,
  refused, µUSD held against the limit (over-admission), and the share of the budget used;
- 64 concurrent requests of one user: what they were answered (meter contention is `rate_limited`, never
  `internal`) and how many contention refusals there were.
All against moto's server on 127.0.0.1 (served atomically, as DynamoDB applies conditional writes); latencies
measure moto on a shared 2-core machine, the call counts and outcomes are what carries over to AWS.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout
from io import StringIO
from typing import Any

import boto3
from botocore.config import Config

from aigw.emulators.appsync_receiver import AppSyncReceiver
from aigw.emulators.bedrock import BedrockEmulator
from aigw.emulators.moto_server import AtomicMotoServer
from runtime.budgets import MICRO, BudgetLimits, budget_key
from runtime.metering import Limits
from runtime.metering.core import WINDOW_RESOLUTION_S
from tests.runtime.test_budgets import TEAM, concurrent_gatekeeper, priced, publish_as
from tests.runtime.test_request_path import CREDS, Gateway, ask


class _CallTimeline:
    """Start and end of every DynamoDB call (botocore events), to count round trips that overlap as one."""

    def __init__(self, client: Any) -> None:
        self.spans: list[tuple[float, float]] = []
        self._open: dict[int, float] = {}
        self._lock = threading.Lock()
        client.meta.events.register("before-call.dynamodb.*", self._start)
        client.meta.events.register("after-call.dynamodb.*", self._end)

    def _start(self, **_: Any) -> None:
        self._open[threading.get_ident()] = time.perf_counter()

    def _end(self, **_: Any) -> None:
        started = self._open.pop(threading.get_ident(), None)
        if started is not None:
            with self._lock:
                self.spans.append((started, time.perf_counter()))

    def take(self) -> tuple[int, int]:
        """(calls, round trips) since the last take."""
        with self._lock:
            spans, self.spans = sorted(self.spans), []
        trips, busy_until = 0, float("-inf")
        for start, end in spans:
            if start > busy_until:
                trips += 1
            busy_until = max(busy_until, end)
        return len(spans), trips


def round_trips(dynamodb: Any, gateway: Gateway, runs: int = 30) -> dict[str, Any]:
    timeline = _CallTimeline(dynamodb)
    figures: dict[str, Any] = {}
    team_limits = {"user+team+stack": BudgetLimits(monthly_usd=100.0),
                   "user+team with a window+stack": BudgetLimits(monthly_usd=100.0, window_tokens=10**9)}
    for levels, groups in (("user", []), *((name, TEAM) for name in team_limits)):
        store = priced(gateway, stack_monthly_usd=1_000.0 if groups else None)
        store.set_limits(budget_key("team", "platform"), team_limits.get(levels, BudgetLimits()))
        store.reserve("stack", 0, 0, BudgetLimits(monthly_usd=1_000.0))  # started: a month's first is one more
        store.reserve(budget_key("team", "platform"), 0, 0)  # this process has seen the level (and its window)
        trips, calls, latency = [], [], []
        for i in range(runs):
            timeline.take()
            t0 = time.perf_counter()
            [answer] = gateway.publish(ask(requestId=f"{len(groups)}-{i}"), groups=groups, sub=str(uuid.uuid4()))
            assert answer.get("payload", {}).get("status") == "accepted", answer
            latency.append((time.perf_counter() - t0) * 1000)
            n, t = timeline.take()
            calls.append(n)
            trips.append(t)
        gateway.jobs.clear()
        figures[levels] = {
            "round_trips_p50": statistics.median(trips),
            "calls_p50": statistics.median(calls),
            "gatekeeper_ms_p50_against_moto": round(statistics.median(latency), 1),
        }
    return figures


def hot_team(gateway: Gateway, members: int = 64, *, window: bool = False) -> dict[str, Any]:
    """64 members at once against a small team budget: the month's USD, or (`window`) a rolling window of tokens
    whose bucket turns over just as they arrive, so every one of them finds the item to advance first."""
    store = priced(gateway)
    key = budget_key("team", f"hot-{uuid.uuid4().hex[:6]}")
    limit = 20_000  # µUSD, or tokens in the window: about 7 requests of 2,700 µUSD, or 37 of ~530 tokens
    store.set_limits(key, BudgetLimits(window_tokens=limit) if window else BudgetLimits(monthly_usd=limit / MICRO))
    if window:
        store.reserve(key, 0, 0)
        gateway.clock.t += WINDOW_RESOLUTION_S
    keeper, jobs = concurrent_gatekeeper(gateway, store)
    users = [str(uuid.uuid4()) for _ in range(members)]
    groups = [f"team:{key.removeprefix('team#')}"]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(members) as pool:
        answers = list(pool.map(lambda u: publish_as(keeper, u, groups, "r"), users))
    elapsed = time.perf_counter() - t0
    outcomes = Counter(a["payload"]["status"] if "payload" in a else a["error"].split(":")[0] for a in answers)
    unit = "tokens" if window else "micro_usd"
    held = sum(h[unit] for j in jobs for h in j.budget_holds)
    return {
        "requests": members,
        "outcomes": dict(outcomes),
        "contention_refusals": sum("too many requests at once" in a.get("error", "") for a in answers),
        f"limit_{unit}": limit,
        f"held_{unit}": held,
        f"over_admitted_{unit}": max(0, held - limit),
        "share_used": round(held / limit, 3),
        "wall_s_against_moto": round(elapsed, 2),
    }


def hot_user(gateway: Gateway, requests: int = 64) -> dict[str, Any]:
    """With limits every request fits in, so that each refusal is the meter's contention and nothing else."""
    store = priced(gateway)
    keeper, jobs = concurrent_gatekeeper(gateway, store)
    sub = str(uuid.uuid4())
    roomy = Limits(window_tokens=10**6, monthly_tokens=10**8)
    gateway.meter.set_override(sub, roomy)
    with ThreadPoolExecutor(requests) as pool:
        answers = list(pool.map(lambda i: publish_as(keeper, sub, [], f"r{i}"), range(requests)))
    outcomes = Counter(a["payload"]["status"] if "payload" in a else a["error"].split(":")[0] for a in answers)
    retry_after = sorted({a["error"] for a in answers if "error" in a})
    usage = gateway.meter.usage(sub, roomy)
    return {
        "requests": requests,
        "outcomes": dict(outcomes),
        "contention_refusals": outcomes.get("rate_limited", 0),
        "refusal_messages": retry_after,
        "reserved_tokens_recorded": usage.reserved,
        "reserved_tokens_of_accepted_jobs": sum(j.reserved_tokens for j in jobs),
    }


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # Local peers only: dummy credentials, so nothing here can reach (or bill) a real account.
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_PROFILE", None)
    with (
        AtomicMotoServer() as moto,
        AppSyncReceiver({CREDS.access_key: CREDS.secret_key}, region="us-east-1") as receiver,
        BedrockEmulator() as bedrock,
    ):
        dynamodb = boto3.client(
            "dynamodb", endpoint_url=moto.endpoint_url, region_name="us-east-1",
            aws_access_key_id="bench", aws_secret_access_key="bench", config=Config(max_pool_connections=128),
        )
        with redirect_stdout(StringIO()):  # the handlers' structured logs
            report = {
                "admitted_path": round_trips(dynamodb, Gateway(dynamodb, receiver, bedrock)),
                "64_members_of_one_team": hot_team(Gateway(dynamodb, receiver, bedrock)),
                "64_members_of_one_team_window_turning_over": hot_team(
                    Gateway(dynamodb, receiver, bedrock), window=True),
                "64_requests_of_one_user": hot_user(Gateway(dynamodb, receiver, bedrock)),
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
