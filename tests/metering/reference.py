"""A plain reference model of the metering promises: a list of requests, summed on demand.

Deliberately naive (no buckets stored, no pruning, no DynamoDB): the meter must agree with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from runtime.metering import Limits

RESOLUTION_S = 10


def month_of(t: float) -> tuple[int, int]:
    d = datetime.fromtimestamp(t, UTC)
    return d.year, d.month


@dataclass
class Request:
    admitted_at: float
    reserved: int
    input_estimate: int
    lease_until: float
    actual: int | None = None

    def charge(self, now: float) -> int:
        if self.actual is not None:
            return self.actual
        return self.reserved if now < self.lease_until else 0

    def in_window(self, now: float, limits: Limits) -> bool:
        # Counted until the end of the 10 s bucket that closes `window_seconds` after admission.
        buckets = limits.window_seconds // RESOLUTION_S
        exit_at = (math.floor(self.admitted_at / RESOLUTION_S) + buckets + 1) * RESOLUTION_S
        return now < exit_at


@dataclass
class ReferenceMeter:
    lease_seconds: float = 900.0
    grace_seconds: float = 900.0  # how long after its lease the meter remembers an admission
    requests: dict[str, Request] = field(default_factory=dict)

    def window_used(self, now: float, limits: Limits) -> int:
        return sum(r.charge(now) for r in self.requests.values() if r.in_window(now, limits))

    def month_used(self, now: float) -> int:
        return sum(r.charge(now) for r in self.requests.values() if month_of(r.admitted_at) == month_of(now))

    def reserved(self, now: float) -> int:
        return sum(r.reserved for r in self.requests.values() if r.actual is None and now < r.lease_until)

    def exact_window_charge(self, now: float, limits: Limits) -> int:
        """Tokens of requests admitted in the last `window_seconds` exactly: the promise users are made."""
        return sum(r.charge(now) for r in self.requests.values() if now - limits.window_seconds < r.admitted_at <= now)

    def expected_grant(self, now: float, limits: Limits, input_tokens: int, max_output: int) -> int | None:
        """Granted output tokens, or None for a refusal."""
        granted = min(
            max_output,
            limits.window_tokens - self.window_used(now, limits) - input_tokens,
            limits.monthly_tokens - self.month_used(now) - input_tokens,
        )
        return granted if granted >= min(limits.min_output_tokens, max_output) else None

    def record_admission(self, rid: str, now: float, input_tokens: int, granted: int) -> None:
        self.requests[rid] = Request(now, input_tokens + granted, input_tokens, now + self.lease_seconds)

    def record_settle(self, rid: str, actual: int, now: float) -> bool:
        """Whether the meter must record this usage: once, and only within lease + grace of the admission."""
        request = self.requests[rid]
        if request.actual is not None or now >= request.admitted_at + self.lease_seconds + self.grace_seconds:
            return False
        request.actual = actual
        return True
