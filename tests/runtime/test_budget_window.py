"""A budget's rolling window in tokens (a team's `--window-tokens`): the pure timing (properties), the bucketed
counters on moto (reserve, advance, settle across a bucket's exit and a month's end, limits changed live, clocks
that disagree), and the refusal a team member sees."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.budgets import (
    UNLIMITED,
    WINDOW_BUCKETS,
    WINDOW_SECONDS,
    BudgetLimits,
    Budgets,
    Hold,
    Remaining,
    bucket_exit,
    budget_key,
    granted_within,
    refusing_limit,
    window_fits_in,
    window_left,
)
from runtime.metering import table_spec
from runtime.metering.core import WINDOW_RESOLUTION_S, bucket_of, next_month_start
from tests.runtime.test_budgets import PRICE, TEAM, priced
from tests.runtime.test_request_path import SUB, Gateway, ask
from tests.support import CallCounter, Clock

KEY = budget_key("team", "platform")


# --- the pure part --------------------------------------------------------------------------------------------

NOW = 1_790_000_005.0  # mid-bucket
spends = st.tuples(st.integers(0, 5_000), st.integers(0, 50_000))
buckets_st = st.dictionaries(st.integers(bucket_of(NOW) - WINDOW_BUCKETS - 5, bucket_of(NOW)), spends, max_size=12)


def covers(left: tuple[int, int], need: tuple[int, int]) -> bool:
    return left[0] >= need[0] and left[1] >= need[1]


@given(buckets_st, st.tuples(st.integers(-5_000, 5_000), st.integers(-50_000, 50_000)),
       st.tuples(st.integers(0, 20_000), st.integers(0, 200_000)))
def test_a_window_refusal_waits_exactly_until_enough_buckets_have_left(
    buckets: dict[int, tuple[int, int]], kept: tuple[int, int], need: tuple[int, int]
) -> None:
    wait = window_fits_in(buckets, kept, need, NOW)
    if wait is None:  # never: even an empty window is too small, in tokens or in dollars
        everything = (kept[0] + sum(t for t, _ in buckets.values()), kept[1] + sum(c for _, c in buckets.values()))
        assert not covers(everything, need)
        return
    assert covers(window_left(kept, buckets, NOW + wait), need)
    if wait > 0:
        just_before = NOW + wait - 1e-3
        assert not covers(window_left(kept, buckets, just_before), need)


@given(st.integers(0, 10**6), st.floats(0, 10**6))
def test_tokens_count_for_at_least_the_window_and_at_most_one_bucket_more(bucket: int, offset: float) -> None:
    admitted_at = bucket * WINDOW_RESOLUTION_S + offset % WINDOW_RESOLUTION_S
    exit_at = bucket_exit(bucket_of(admitted_at))
    assert WINDOW_SECONDS <= exit_at - admitted_at <= WINDOW_SECONDS + WINDOW_RESOLUTION_S


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 4_000))
def test_the_grant_fits_the_window_too(window: int, input_tokens: int, granted: int) -> None:
    fitted = granted_within(PRICE, Remaining(UNLIMITED, UNLIMITED, window_tokens=window), input_tokens, granted)
    assert fitted <= granted and (fitted == 0 or input_tokens + fitted <= window)
    money = window * 3  # µUSD
    fitted = granted_within(PRICE, Remaining(UNLIMITED, UNLIMITED, window_micro_usd=money), input_tokens, granted)
    assert fitted <= granted and (fitted == 0 or PRICE.cost(input_tokens, fitted) <= money)


# --- the counters on moto -------------------------------------------------------------------------------------


@pytest.fixture
def store(dynamodb: Any) -> tuple[Budgets, Clock, Any]:
    name = f"window-{uuid.uuid4().hex[:8]}"
    dynamodb.create_table(**table_spec(name))
    clock = Clock()
    return Budgets(name, dynamodb, clock=clock), clock, dynamodb


def item(budgets: Budgets) -> dict[str, Any]:
    return budgets.client.get_item(TableName=budgets.table_name, Key={"pk": {"S": KEY}})["Item"]


def test_a_window_admits_until_full_then_frees_as_its_buckets_leave(store: tuple[Budgets, Clock, Any]) -> None:
    budgets, clock, _ = store
    budgets.set_limits(KEY, BudgetLimits(window_tokens=1_000))
    first = budgets.reserve(KEY, 0, 600)
    assert isinstance(first, Hold) and first.bucket == bucket_of(clock())
    clock.t += 60
    assert isinstance(budgets.reserve(KEY, 0, 300), Hold)
    refused = budgets.reserve(KEY, 0, 200)
    assert isinstance(refused, Remaining) and refused.window_tokens == 100
    wait = window_fits_in(dict(refused.window_buckets), (refused.window_tokens, UNLIMITED), (200, 0), clock())
    assert wait is not None and WINDOW_SECONDS - 60 <= wait <= WINDOW_SECONDS - 60 + WINDOW_RESOLUTION_S
    clock.t += wait - 1
    assert isinstance(budgets.reserve(KEY, 0, 200), Remaining)  # a second early: the first bucket still counts
    clock.t += 1
    assert isinstance(budgets.reserve(KEY, 0, 200), Hold)
    # The month knows nothing of the window: every token is still this month's.
    usage = budgets.usage(KEY)
    assert usage is not None and usage.spent_tokens == 1_100 and usage.window_spent_tokens == 500


def test_settling_gives_the_window_back_what_was_not_used(store: tuple[Budgets, Clock, Any]) -> None:
    budgets, _, _ = store
    budgets.set_limits(KEY, BudgetLimits(window_tokens=1_000))
    hold = budgets.reserve(KEY, 0, 900)
    assert isinstance(hold, Hold)
    left = budgets.settle(hold, 0, 250)
    assert left is not None and left.window_tokens == 750 and left.as_event()["window"] == 750
    assert isinstance(budgets.reserve(KEY, 0, 750), Hold)


def test_an_item_keeps_only_the_live_buckets(store: tuple[Budgets, Clock, Any]) -> None:
    budgets, clock, _ = store
    budgets.set_limits(KEY, BudgetLimits(window_tokens=10**6))
    for _ in range(WINDOW_BUCKETS + 10):  # ten buckets more than the window holds
        assert isinstance(budgets.reserve(KEY, 0, 10), Hold)
        clock.t += WINDOW_RESOLUTION_S
    kept = [name for name in item(budgets) if name[0] == "b" and name[1:].isdigit()]
    assert len(kept) == WINDOW_BUCKETS + 1
    usage = budgets.usage(KEY)
    assert usage is not None and usage.remaining.window_tokens == 10**6 - 10 * WINDOW_BUCKETS


def test_a_hold_settled_after_its_bucket_left_the_window_changes_only_the_month(
    store: tuple[Budgets, Clock, Any],
) -> None:
    budgets, clock, _ = store
    budgets.set_limits(KEY, BudgetLimits(monthly_tokens=10_000, window_tokens=1_000))
    slow = budgets.reserve(KEY, 0, 800)
    assert isinstance(slow, Hold)
    clock.t += WINDOW_SECONDS + 2 * WINDOW_RESOLUTION_S
    assert isinstance(budgets.reserve(KEY, 0, 1_000), Hold)  # the slow one's bucket has left: a full window
    left = budgets.settle(slow, 0, 100)
    assert left is not None and left.tokens == 10_000 - 1_100 and left.window_tokens == 0  # not credited twice


def test_a_hold_settled_in_the_next_month_gives_back_its_window_only(store: tuple[Budgets, Clock, Any]) -> None:
    budgets, clock, _ = store
    clock.t = next_month_start(clock()) - 30
    budgets.set_limits(KEY, BudgetLimits(monthly_tokens=10_000, window_tokens=1_000))
    hold = budgets.reserve(KEY, 0, 900)
    assert isinstance(hold, Hold)
    clock.t += 60
    fresh = budgets.reserve(KEY, 0, 50)
    assert isinstance(fresh, Hold) and fresh.month != hold.month
    assert budgets.settle(hold, 0, 100) is None  # last month's counters are gone
    usage = budgets.usage(KEY)
    assert usage is not None and usage.spent_tokens == 50 and usage.remaining.window_tokens == 1_000 - 150


def test_changing_the_window_keeps_its_live_buckets_and_removing_it_forgets_them(
    store: tuple[Budgets, Clock, Any],
) -> None:
    budgets, clock, dynamodb = store
    budgets.set_limits(KEY, BudgetLimits(window_tokens=1_000))
    hold = budgets.reserve(KEY, 0, 700)
    assert isinstance(hold, Hold)
    budgets.set_limits(KEY, BudgetLimits(window_tokens=800))
    assert budgets.reserve(KEY, 0, 200) == Remaining(UNLIMITED, UNLIMITED - 700, window_tokens=100)
    budgets.set_limits(KEY, BudgetLimits())
    assert isinstance(budgets.reserve(KEY, 0, 5_000), Hold)
    assert not any(name[0] == "b" for name in item(budgets))
    assert budgets.settle(hold, 0, 0) is not None  # its bucket is gone: the month's part alone
    # Another process (a Lambda container) that still thinks the level has a window learns otherwise.
    other = Budgets(budgets.table_name, dynamodb, clock=clock)
    other._windowed.add(KEY)
    assert isinstance(other.reserve(KEY, 0, 10), Hold) and KEY not in other._windowed


def test_a_clock_behind_charges_the_bucket_already_current(store: tuple[Budgets, Clock, Any]) -> None:
    budgets, clock, dynamodb = store
    budgets.set_limits(KEY, BudgetLimits(window_tokens=1_000))
    budgets.reserve(KEY, 0, 1)
    behind = Budgets(budgets.table_name, dynamodb, clock=lambda: clock() - 35)
    hold = behind.reserve(KEY, 0, 100)
    assert isinstance(hold, Hold) and hold.bucket == bucket_of(clock())  # later buckets leave later: never lenient


def test_a_windowed_reservation_is_one_round_trip_once_the_bucket_is_current(
    store: tuple[Budgets, Clock, Any],
) -> None:
    budgets, clock, dynamodb = store
    budgets.set_limits(KEY, BudgetLimits(window_tokens=10_000))
    calls = CallCounter(dynamodb)
    try:
        budgets.reserve(KEY, 0, 1)  # a new process: learns the window (one more), the bucket is current
        assert calls.take()["UpdateItem"] == 2
        budgets.reserve(KEY, 0, 1)
        assert calls.take()["UpdateItem"] == 1
        clock.t += WINDOW_RESOLUTION_S
        budgets.reserve(KEY, 0, 1)  # a new bucket: refused on the old one, advanced, then taken
        assert calls.take()["UpdateItem"] == 3
    finally:
        calls.close()


# --- what a team member sees ----------------------------------------------------------------------------------


def test_a_team_window_caps_the_grant_then_refuses_with_a_real_retry_after(gateway: Gateway) -> None:
    budgets = priced(gateway)
    budgets.set_limits(KEY, BudgetLimits(monthly_usd=1.0, window_tokens=500))
    gateway.publish(ask(requestId="first"), groups=TEAM)
    [job] = gateway.jobs
    assert job.input_estimate + job.granted_output_tokens == 500  # capped from 512 to what the window has
    gateway.clock.t += 30
    [refused] = gateway.publish(ask(requestId="second"), groups=TEAM)
    assert refused["error"].startswith("rate_limited")
    error = gateway.events()[-1]
    assert error["scope"] == "team" and "last few minutes" in error["message"]
    assert WINDOW_SECONDS - 30 <= error["retryAfterSeconds"] <= WINDOW_SECONDS - 30 + WINDOW_RESOLUTION_S
    assert error["budgets"]["team"]["window"] < job.input_estimate + 64
    # The user's own meter gave the refused request's reservation back.
    assert gateway.meter.usage(SUB, gateway.config.tier("free").limits).reserved == job.reserved_tokens
    gateway.clock.t += error["retryAfterSeconds"]
    gateway.publish(ask(requestId="third"), groups=TEAM)
    assert len(gateway.jobs) == 2


def test_a_request_larger_than_the_team_window_is_invalid_not_retried(gateway: Gateway) -> None:
    budgets = priced(gateway)
    budgets.set_limits(KEY, BudgetLimits(window_tokens=20))
    [refused] = gateway.publish(ask(), groups=TEAM)
    assert refused["error"].startswith("invalid_request")
    assert gateway.events()[-1]["scope"] == "team" and gateway.jobs == []


def test_a_usd_window_counts_dollars_and_settles_them(store: tuple[Budgets, Clock, Any]) -> None:
    budgets, clock, _ = store
    budgets.set_limits(KEY, BudgetLimits(window_usd=0.001))  # 1,000 µUSD per 10 minutes, tokens unlimited
    hold = budgets.reserve(KEY, 800, 10**6)
    assert isinstance(hold, Hold)
    refused = budgets.reserve(KEY, 300, 1)
    assert isinstance(refused, Remaining) and refused.window_micro_usd == 200 and refused.window_tokens == UNLIMITED
    assert refused.as_event()["windowUsd"] == 0.0002 and "window" not in refused.as_event()
    left = budgets.settle(hold, 500, 10)
    assert left is not None and left.window_micro_usd == 500
    assert isinstance(budgets.reserve(KEY, 300, 1), Hold)
    clock.t += WINDOW_SECONDS + WINDOW_RESOLUTION_S
    assert isinstance(budgets.reserve(KEY, 1_000, 1), Hold)  # both buckets have left: the whole window again
    usage = budgets.usage(KEY)
    assert usage is not None and usage.limits.window_usd == 0.001 and usage.window_spent_micro_usd == 1_000
    assert usage.spent_micro_usd == 1_800  # the month counts all of it


def test_a_team_usd_window_refuses_for_minutes_with_the_wait(gateway: Gateway) -> None:
    budgets = priced(gateway)
    budgets.set_limits(KEY, BudgetLimits(window_usd=0.0028))  # 2,800 µUSD: one request of ~2,570 held, not two
    gateway.publish(ask(requestId="first"), groups=TEAM)
    [job] = gateway.jobs
    gateway.clock.t += 20
    [refused] = gateway.publish(ask(requestId="second"), groups=TEAM)
    assert refused["error"].startswith("rate_limited")
    error = gateway.events()[-1]
    assert error["scope"] == "team" and error["budgets"]["team"]["windowUsd"] < 0.001
    assert WINDOW_SECONDS - 20 <= error["retryAfterSeconds"] <= WINDOW_SECONDS - 20 + WINDOW_RESOLUTION_S
    gateway.run_jobs()  # the first settles for far less than it held: the window has room again
    [answer] = gateway.publish(ask(requestId="third"), groups=TEAM)
    assert answer["payload"]["status"] == "accepted" and job.budget_holds[0]["bucket"] is not None


def test_a_level_without_a_window_always_refuses_for_the_month() -> None:
    # What remained when asked may fit by the time the refusal is worded (another request gave some back): a level
    # with no window still refuses for its month, never for "the last few minutes".
    roomy = Remaining(10**6, 10**6)
    assert refusing_limit(PRICE, roomy, 10, 64) == "month"
    assert refusing_limit(PRICE, Remaining(10**6, 10**6, window_tokens=5), 10, 64) == "window"
    assert refusing_limit(PRICE, Remaining(0, 10**6, window_tokens=5), 10, 64) == "month"
