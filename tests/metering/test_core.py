"""Properties of the pure metering core: no I/O, so Hypothesis can explore many interleavings quickly."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from runtime.errors import (
    InvalidLimitsError,
    InvalidReservationIdError,
    InvalidTokenCountError,
)
from runtime.metering import Limits, MeterState, core
from tests.metering.reference import ReferenceMeter

LEASE = 900.0
MID_MONTH = datetime(2026, 11, 15, 12, 0, 3, tzinfo=UTC).timestamp()
MONTH_END = datetime(2026, 12, 1, tzinfo=UTC).timestamp()  # 2026-11 -> 2026-12

limits_strategy = st.builds(
    Limits,
    window_tokens=st.integers(200, 20_000),
    monthly_tokens=st.integers(200, 60_000),
    window_seconds=st.sampled_from([60, 600]),
    min_output_tokens=st.integers(1, 128),
)
start_strategy = st.one_of(
    st.floats(MID_MONTH, MID_MONTH + 30, allow_nan=False),
    st.floats(MONTH_END - 700, MONTH_END - 1, allow_nan=False),  # sequences that cross a month end
)
admit_op = st.tuples(st.just("admit"), st.integers(0, 3_000), st.integers(1, 4_000))
settle_op = st.tuples(st.just("settle"), st.integers(0, 10_000), st.floats(0, 1))
advance_op = st.tuples(st.just("advance"), st.floats(0, 1_500, allow_nan=False))
ops_strategy = st.lists(st.one_of(admit_op, settle_op, advance_op), min_size=1, max_size=40)


@dataclass
class CoreHarness:
    """Applies operations to the pure core and, alongside, to the naive reference model."""

    limits: Limits
    now: float
    state: MeterState = field(default_factory=MeterState)
    reference: ReferenceMeter = field(default_factory=lambda: ReferenceMeter(lease_seconds=LEASE))
    pending: list[str] = field(default_factory=list)
    overshoot: int = 0  # reported by settles of reservations whose lease had run out
    nonces: itertools.count = field(default_factory=itertools.count)

    def admit(self, input_tokens: int, max_output: int) -> core.Decision:
        expected = self.reference.expected_grant(self.now, self.limits, input_tokens, max_output)
        decision, new_state = core.admit(
            self.state, self.limits, input_tokens, max_output, self.now, lambda: f"{next(self.nonces):08x}",
            lease_seconds=LEASE, grace_seconds=LEASE,
        )
        assert decision.admitted == (expected is not None)
        if decision.admitted:
            assert new_state is not None and decision.reservation_id
            assert decision.granted_output_tokens == expected
            assert decision.reserved_tokens == input_tokens + expected
            self.state = new_state
            self.reference.record_admission(decision.reservation_id, self.now, input_tokens, expected)
            self.pending.append(decision.reservation_id)
        else:
            assert new_state is None
        return decision

    def settle(self, index: int, fraction: float) -> None:
        if not self.pending:
            return
        rid = self.pending.pop(index % len(self.pending))
        request = self.reference.requests[rid]
        output = int((request.reserved - request.input_estimate) * fraction)
        settlement, new_state = core.settle(
            self.state, rid, request.input_estimate, output, self.now, lease_seconds=LEASE
        )
        recorded = self.reference.record_settle(rid, request.input_estimate + output, self.now)
        late = self.now >= request.lease_until
        if not recorded:
            assert settlement.status == "stale" and new_state is None
        else:
            assert settlement.status == ("expired" if late else "settled")
            assert settlement.overshoot_tokens == (request.input_estimate + output if late else 0)
        self.overshoot += settlement.overshoot_tokens
        if new_state is not None:
            self.state = new_state

    def run(self, ops: list[tuple]) -> None:
        for op in ops:
            if op[0] == "admit":
                self.admit(op[1], op[2])
            elif op[0] == "settle":
                self.settle(op[1], op[2])
            else:
                self.now += op[1]
            self.check()

    def check(self) -> None:
        u = core.usage(self.state, self.limits, self.now)
        assert u.window_used == self.reference.window_used(self.now, self.limits)
        assert u.month_used == self.reference.month_used(self.now)
        assert u.reserved == self.reference.reserved(self.now)
        # The promise itself, over exact timestamps: no limit is ever exceeded beyond the overshoot the meter
        # reported (here only late settles of expired leases: actual usage never exceeds the reservation).
        assert self.reference.exact_window_charge(self.now, self.limits) <= self.limits.window_tokens + self.overshoot
        assert self.reference.month_used(self.now) <= self.limits.monthly_tokens + self.overshoot


@given(limits=limits_strategy, start=start_strategy, ops=ops_strategy)
def test_never_over_admits_and_agrees_with_the_reference_model(limits: Limits, start: float, ops: list) -> None:
    CoreHarness(limits, start).run(ops)


@given(limits=limits_strategy, start=start_strategy, ops=ops_strategy, input_tokens=st.integers(0, 3_000),
       max_output=st.integers(1, 4_000))
def test_granted_output_never_exceeds_what_remains(
    limits: Limits, start: float, ops: list, input_tokens: int, max_output: int
) -> None:
    h = CoreHarness(limits, start)
    h.run(ops)
    before = core.usage(h.state, limits, h.now)
    decision = h.admit(input_tokens, max_output)
    if decision.admitted:
        assert decision.granted_output_tokens <= max_output
        assert input_tokens + decision.granted_output_tokens <= before.window_remaining
        assert input_tokens + decision.granted_output_tokens <= before.month_remaining
        if before.window_remaining - input_tokens >= max_output and before.month_remaining - input_tokens >= max_output:
            assert decision.granted_output_tokens == max_output  # ample budget: exactly what was asked


@given(limits=limits_strategy, start=start_strategy, ops=ops_strategy, input_tokens=st.integers(0, 3_000),
       max_output=st.integers(1, 4_000))
def test_retry_after_is_the_exact_earliest_admission_time(
    limits: Limits, start: float, ops: list, input_tokens: int, max_output: int
) -> None:
    h = CoreHarness(limits, start)
    h.run(ops)
    decision = h.admit(input_tokens, max_output)
    assume(not decision.admitted)
    need = input_tokens + min(limits.min_output_tokens, max_output)
    if need > limits.window_tokens or need > limits.monthly_tokens:
        assert decision.retry_after_s is None  # can never fit: saying "retry later" would be a lie
        return
    retry = decision.retry_after_s
    assert retry is not None and retry > 0

    def admitted_at(t: float) -> bool:
        decision, _ = core.admit(h.state, limits, input_tokens, max_output, t, lambda: "feedface", lease_seconds=LEASE)
        return decision.admitted

    assert admitted_at(h.now + retry)
    earlier = h.now + retry - min(0.01, retry / 2)
    assert not admitted_at(earlier)


@given(limits=limits_strategy, start=start_strategy, ops=ops_strategy)
def test_settling_twice_is_settling_once(limits: Limits, start: float, ops: list) -> None:
    h = CoreHarness(limits, start)
    h.run(ops)
    decision = h.admit(10, 50)
    assume(decision.admitted)
    rid = decision.reservation_id
    first, state1 = core.settle(h.state, rid, 10, 20, h.now)
    assert first.status == "settled" and state1 is not None
    second, state2 = core.settle(state1, rid, 10, 20, h.now + 1)
    assert second.status == "duplicate" and state2 is None
    # The duplicate neither changed the state nor charged again: the month holds the 30 tokens once.
    before = core.usage(h.state, limits, h.now).month_used - decision.reserved_tokens
    assert core.usage(state1, limits, h.now).month_used == before + 30
    assert second.charged_tokens == first.charged_tokens == 30


@given(
    start=start_strategy,
    usages=st.lists(st.tuples(st.integers(0, 500), st.integers(0, 500)), min_size=1, max_size=20),
    gaps=st.lists(st.floats(0, 20), min_size=20, max_size=20),
)
def test_usage_after_settle_is_the_sum_of_actual_usage(start: float, usages: list, gaps: list) -> None:
    limits = Limits(window_tokens=10**7, monthly_tokens=10**8)
    state, now, rids = MeterState(), start, []
    nonces = itertools.count()
    for (inp, _), gap in zip(usages, gaps, strict=False):
        now += gap
        decision, state = core.admit(state, limits, inp, 500, now, lambda: f"{next(nonces):08x}")
        rids.append(decision.reservation_id)
    for rid, (inp, out) in zip(rids, usages, strict=True):
        _, state = core.settle(state, rid, inp, out, now)
    u = core.usage(state, limits, now)
    total = sum(i + o for i, o in usages)
    assert u.window_used == total and u.reserved == 0
    months = {core.month_key(start), core.month_key(now)}
    assert sum(state.months.get(m, 0) for m in months) == total


@given(limits=limits_strategy, start=start_strategy, n=st.integers(1, 20))
def test_lease_expiry_releases_budget_and_is_counted(limits: Limits, start: float, n: int) -> None:
    state, admitted = MeterState(), 0
    for i in range(n):
        decision, new_state = core.admit(state, limits, 20, 2_000, start, lambda i=i: f"{i:08x}", lease_seconds=LEASE)
        if new_state is not None:
            state, admitted = new_state, admitted + 1
    assume(admitted)
    later = start + LEASE
    u = core.usage(state, limits, later)
    assert u.reserved == 0
    assert u.month_used == 0 or core.month_key(later) != core.month_key(start)
    assert u.window_used == 0
    decision, new_state = core.admit(state, limits, 0, 1, later, lambda: "ffffffff", lease_seconds=LEASE)
    assert decision.admitted and decision.expired_reservations == admitted
    assert new_state is not None and new_state.expired_total == admitted


def test_a_request_admitted_in_one_month_counts_there_even_when_settled_in_the_next() -> None:
    limits = Limits(window_tokens=100_000, monthly_tokens=1_000_000)
    admitted_at = MONTH_END - 5
    decision, state = core.admit(MeterState(), limits, 100, 1_000, admitted_at, lambda: "0000aaaa")
    _, state = core.settle(state, decision.reservation_id, 100, 400, MONTH_END + 5)
    assert state.months["2026-11"] == 500
    assert core.usage(state, limits, MONTH_END + 5).month_used == 0
    # ...while the rolling window still sees it: the window does not care about calendars.
    assert core.usage(state, limits, MONTH_END + 5).window_used == 500


def test_window_refusal_names_the_limit_and_what_remains() -> None:
    limits = Limits(window_tokens=1_000, monthly_tokens=100_000)
    d1, state = core.admit(MeterState(), limits, 100, 900, MID_MONTH, lambda: "0000aaaa")
    assert d1.granted_output_tokens == 900 and d1.window_remaining == 0
    d2, none = core.admit(state, limits, 100, 900, MID_MONTH + 1, lambda: "0000bbbb")
    assert none is None and not d2.admitted
    assert d2.reason == "window" and d2.window_remaining == 0 and d2.month_remaining == 99_000
    exit_at = (core.bucket_of(MID_MONTH) + 61) * 10
    assert MID_MONTH + 1 + d2.retry_after_s == pytest.approx(exit_at, abs=1e-6)


def test_monthly_refusal_retries_at_the_start_of_next_month() -> None:
    limits = Limits(window_tokens=100_000, monthly_tokens=1_000)
    first, state = core.admit(MeterState(), limits, 100, 900, MID_MONTH, lambda: "0000aaaa")
    _, state = core.settle(state, first.reservation_id, 100, 850, MID_MONTH + 30)
    d, _ = core.admit(state, limits, 100, 900, MID_MONTH + 60, lambda: "0000bbbb")
    assert d.reason == "monthly" and d.month_remaining == 50
    assert MID_MONTH + 60 + d.retry_after_s == pytest.approx(MONTH_END, abs=1e-6)


def test_a_short_request_is_served_below_the_tier_minimum_only_if_it_asked_for_less() -> None:
    limits = Limits(window_tokens=1_000, monthly_tokens=100_000, min_output_tokens=64)
    _, state = core.admit(MeterState(), limits, 0, 950, MID_MONTH, lambda: "0000aaaa")
    assert not core.admit(state, limits, 0, 100, MID_MONTH, lambda: "0000bbbb")[0].admitted  # 50 left < 64
    small, _ = core.admit(state, limits, 0, 20, MID_MONTH, lambda: "0000cccc")
    assert small.admitted and small.granted_output_tokens == 20


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_tokens": 0, "monthly_tokens": 10},
        {"window_tokens": 10, "monthly_tokens": -1},
        {"window_tokens": 1.5, "monthly_tokens": 10},
        {"window_tokens": True, "monthly_tokens": 10},
        {"window_tokens": 10, "monthly_tokens": 10, "window_seconds": 605},
        {"window_tokens": 10, "monthly_tokens": 10, "min_output_tokens": 0},
    ],
)
def test_unenforceable_limits_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidLimitsError):
        Limits(**kwargs)


@pytest.mark.parametrize("inp,out", [(-1, 10), (1.0, 10), (10, 0), ("5", 10), (None, 10)])
def test_bad_token_counts_raise_typed_errors(inp: object, out: object) -> None:
    with pytest.raises(InvalidTokenCountError):
        core.admit(MeterState(), Limits(1000, 1000), inp, out, MID_MONTH, lambda: "0000aaaa")  # type: ignore[arg-type]


@pytest.mark.parametrize("rid", ["", "nonexistent-id", "r1.1.2026-11.5.5", None, 42])
def test_malformed_reservation_ids_raise_typed_errors(rid: object) -> None:
    with pytest.raises(InvalidReservationIdError):
        core.settle(MeterState(), rid, 1, 1, MID_MONTH)  # type: ignore[arg-type]


def test_the_number_of_remembered_admissions_is_bounded() -> None:
    # Tiny requests at a high rate from one user: the item must stay far below DynamoDB's 400 KB.
    limits = Limits(window_tokens=10**9, monthly_tokens=10**10, min_output_tokens=1)
    state, now = MeterState(), MID_MONTH
    nonces = itertools.count()
    for _ in range(core.MAX_ENTRIES):
        decision, state = core.admit(state, limits, 1, 1, now, lambda: f"{next(nonces):08x}")
        _, state = core.settle(state, decision.reservation_id, 1, 1, now)
        now += 0.01
    refused, none = core.admit(state, limits, 1, 1, now, lambda: "ffffffff")
    assert none is None and not refused.admitted and refused.reason == "window"
    later = now + refused.retry_after_s
    assert core.admit(state, limits, 1, 1, later, lambda: "fffffffe")[0].admitted
    assert not core.admit(state, limits, 1, 1, later - 0.05, lambda: "fffffffd")[0].admitted


@given(limits=limits_strategy, start=start_strategy, ops=ops_strategy, settled=st.booleans(),
       later=st.floats(0, LEASE - 1, allow_nan=False))
def test_a_request_key_admitted_once_is_a_duplicate_while_remembered_and_reserves_nothing(
    limits: Limits, start: float, ops: list, settled: bool, later: float
) -> None:
    h = CoreHarness(limits, start)
    h.run(ops)
    first, state = core.admit(h.state, limits, 10, 50, h.now, lambda: "aaaaaaaa", lease_seconds=LEASE,
                              request_key="req-1")
    assume(first.admitted and state is not None)
    if settled:
        _, state = core.settle(state, first.reservation_id, 10, 20, h.now)
        assert state is not None
    again, unchanged = core.admit(state, limits, 10, 50, h.now + later, lambda: "bbbbbbbb", lease_seconds=LEASE,
                                  request_key="req-1")
    assert again.duplicate_of == first.reservation_id and not again.admitted and unchanged is None
    assert again.reserved_tokens == 0 and again.reservation_id is None
    # Another key is decided on its merits, as if the duplicate had never been asked.
    other, _ = core.admit(state, limits, 10, 50, h.now + later, lambda: "cccccccc", lease_seconds=LEASE,
                          request_key="req-2")
    plain, _ = core.admit(state, limits, 10, 50, h.now + later, lambda: "cccccccc", lease_seconds=LEASE)
    assert other.duplicate_of is None and other.admitted == plain.admitted


def test_a_request_key_is_forgotten_with_its_entry() -> None:
    limits = Limits(window_tokens=10_000, monthly_tokens=100_000)
    first, state = core.admit(MeterState(), limits, 10, 50, MID_MONTH, lambda: "aaaaaaaa", lease_seconds=LEASE,
                              request_key="req-1")
    assert state is not None
    _, state = core.settle(state, first.reservation_id, 10, 20, MID_MONTH)
    assert state is not None
    forgotten = max(e.keep_until for e in state.entries.values())
    again, new_state = core.admit(state, limits, 10, 50, forgotten, lambda: "bbbbbbbb", lease_seconds=LEASE,
                                  request_key="req-1")
    assert again.admitted and again.duplicate_of is None and new_state is not None


def test_a_request_key_whose_lease_expired_unanswered_or_was_released_is_admitted_again() -> None:
    limits = Limits(window_tokens=10_000, monthly_tokens=100_000)
    first, state = core.admit(MeterState(), limits, 10, 50, MID_MONTH, lambda: "aaaaaaaa", lease_seconds=LEASE,
                              request_key="req-1")
    assert state is not None
    # The worker died: once the lease is over, the request was never answered, so it may run.
    expired, _ = core.admit(state, limits, 10, 50, MID_MONTH + LEASE, lambda: "bbbbbbbb", lease_seconds=LEASE,
                            request_key="req-1")
    assert expired.admitted and expired.duplicate_of is None
    # Released (the hand-over failed): the key is forgotten at once.
    _, released = core.settle(state, first.reservation_id, 0, 0, MID_MONTH, lease_seconds=LEASE,
                              forget_request_key=True)
    assert released is not None
    again, _ = core.admit(released, limits, 10, 50, MID_MONTH + 1, lambda: "cccccccc", lease_seconds=LEASE,
                          request_key="req-1")
    assert again.admitted and again.duplicate_of is None
    # Settled normally, it is an answered duplicate.
    _, settled = core.settle(state, first.reservation_id, 10, 20, MID_MONTH, lease_seconds=LEASE)
    assert settled is not None
    dup, _ = core.admit(settled, limits, 10, 50, MID_MONTH + 1, lambda: "dddddddd", lease_seconds=LEASE,
                        request_key="req-1")
    assert dup.duplicate_of == first.reservation_id and dup.duplicate_answered
    live, _ = core.admit(state, limits, 10, 50, MID_MONTH + 1, lambda: "eeeeeeee", lease_seconds=LEASE,
                         request_key="req-1")
    assert live.duplicate_of == first.reservation_id and not live.duplicate_answered
