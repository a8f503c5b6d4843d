"""The executable specification: the real Meter over moto's HTTP server, step by step beside a reference model.

Rules are what users and workers do (admit, settle, crash without settling, settle twice, wait, change a
user's override); invariants are the promises. The clock is ours, so windows and month ends pass instantly.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from runtime.metering import Limits, Meter, table_spec
from tests.metering.reference import ReferenceMeter

TIER = Limits(window_tokens=6_000, monthly_tokens=20_000, window_seconds=600, min_output_tokens=64)
VIP = Limits(window_tokens=12_000, monthly_tokens=30_000, window_seconds=600, min_output_tokens=32)
STARTS = [
    datetime(2026, 11, 15, 12, 0, 3, tzinfo=UTC).timestamp(),
    datetime(2026, 11, 30, 23, 45, 0, tzinfo=UTC).timestamp(),  # a month end within a few steps
]


class MeterMachine(RuleBasedStateMachine):
    client: Any = None  # set by the test below: a DynamoDB client for the session's moto server

    reservations = Bundle("reservations")
    settled = Bundle("settled")

    def __init__(self) -> None:
        super().__init__()
        self.table = f"sm-{uuid.uuid4().hex[:12]}"
        self.client.create_table(**table_spec(self.table))
        self.now = STARTS[0]
        self.meter = Meter(self.table, client=self.client, clock=lambda: self.now)
        self.reference = ReferenceMeter(lease_seconds=self.meter.lease_seconds)
        self.override: Limits | None = None
        self.ceiling = TIER  # the most generous limits in force so far (VIP dominates TIER field by field)
        self.overshoot = 0

    @property
    def limits(self) -> Limits:
        return self.override or TIER

    @initialize(start=st.sampled_from(STARTS))
    def start_at(self, start: float) -> None:
        self.now = start

    @rule(target=reservations, input_tokens=st.integers(0, 3_000), max_output=st.integers(1, 3_000))
    def admit(self, input_tokens: int, max_output: int) -> Any:
        expected = self.reference.expected_grant(self.now, self.limits, input_tokens, max_output)
        d = self.meter.admit("user", TIER, input_tokens=input_tokens, max_output_tokens=max_output)
        assert d.admitted == (expected is not None), (d, expected)
        if not d.admitted:
            assert d.reason in ("window", "monthly")
            return None  # kept in the bundle as None; the settle rules skip it
        assert d.granted_output_tokens == expected
        self.reference.record_admission(d.reservation_id, self.now, input_tokens, expected)
        return d.reservation_id

    @rule(source=consumes(reservations), target=settled, fraction=st.floats(0, 1), extra_input=st.integers(0, 50))
    def settle(self, source: str | None, fraction: float, extra_input: int) -> Any:
        if source is None:
            return None
        request = self.reference.requests[source]
        output = int((request.reserved - request.input_estimate) * fraction)
        actual_input = request.input_estimate + extra_input  # the estimate may be low: the truth is recorded
        s = self.meter.settle("user", source, input_tokens=actual_input, output_tokens=output)
        recorded = self.reference.record_settle(source, actual_input + output, self.now)
        late = self.now >= request.lease_until
        assert s.status == ("stale" if not recorded else "expired" if late else "settled")
        granted = request.reserved - request.input_estimate
        in_time = max(0, extra_input + output - granted)  # only a low input estimate can overshoot in time
        assert s.overshoot_tokens == (0 if not recorded else actual_input + output if late else in_time)
        self.overshoot += s.overshoot_tokens
        return source

    @rule(source=settled)
    def settle_again(self, source: str | None) -> None:
        if source is None:
            return
        request = self.reference.requests[source]
        s = self.meter.settle("user", source, input_tokens=request.input_estimate, output_tokens=0)
        assert s.status in ("duplicate", "stale")  # either way: nothing recorded twice (the invariants check)

    @rule(source=consumes(reservations))
    def crash_without_settling(self, source: str | None) -> None:
        """The worker died: the reservation stays until its lease runs out."""

    @rule(seconds=st.one_of(st.floats(0, 30), st.floats(30, 700), st.just(900.0)))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: self.override is None)
    @rule()
    def grant_override(self) -> None:
        self.meter.set_override("user", VIP)
        self.override = self.ceiling = VIP

    @precondition(lambda self: self.override is not None)
    @rule()
    def clear_override(self) -> None:
        self.meter.clear_override("user")
        self.override = None

    @invariant()
    def usage_matches_the_reference(self) -> None:
        u = self.meter.usage("user", TIER)
        assert u.limits == self.limits
        assert u.window_used == self.reference.window_used(self.now, self.limits)
        assert u.month_used == self.reference.month_used(self.now)
        assert u.reserved == self.reference.reserved(self.now)

    @invariant()
    def never_over_admitted(self) -> None:
        # Only reported overshoot (low input estimates, late settles) can take usage past a limit. Lowering a
        # user's limits does not claw back what was admitted under higher ones, hence the ceiling.
        window = self.reference.exact_window_charge(self.now, self.ceiling)
        assert window <= self.ceiling.window_tokens + self.overshoot
        assert self.reference.month_used(self.now) <= self.ceiling.monthly_tokens + self.overshoot


@pytest.mark.moto
def test_meter_state_machine(dynamodb: Any) -> None:
    MeterMachine.client = dynamodb
    # Each step is a few HTTP round trips to moto: a smaller, fixed budget keeps the suite fast.
    # No shrinking: over HTTP it can take minutes; the printed unshrunk steps are enough to replay a failure.
    no_shrink = [Phase.explicit, Phase.reuse, Phase.generate]
    run_state_machine_as_test(
        MeterMachine,
        settings=settings(
            settings.default, max_examples=25, stateful_step_count=20, deadline=None, phases=no_shrink
        ),
    )
