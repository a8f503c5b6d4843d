"""Team and stack budgets in USD and tokens: the pure arithmetic (properties), the counters on moto, the request
path (admit, cap, refuse, settle, release), and 64 concurrent requests against one hot team item."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from runtime import protocol
from runtime.budgets import (
    MICRO,
    STACK_KEY,
    UNLIMITED,
    BudgetLimits,
    Budgets,
    Hold,
    Price,
    Remaining,
    budget_key,
    granted_within,
    team_of,
)
from runtime.gatekeeper import Gatekeeper
from runtime.metering import Limits, Meter, table_spec
from tests.runtime.test_request_path import MODEL, SUB, Gateway, ask
from tests.support import Clock

PRICE = Price(input=1.0, output=5.0)  # USD per 1M tokens: 1 µUSD per input token, 5 per output token
prices = st.builds(Price, st.floats(0, 100), st.floats(0.001, 100))
counts = st.integers(0, 200_000)


# --- the pure part --------------------------------------------------------------------------------------------


@given(prices, counts, counts)
def test_a_cost_is_never_under_counted(price: Price, input_tokens: int, output_tokens: int) -> None:
    exact = input_tokens * price.input + output_tokens * price.output
    assert exact - 1e-6 <= price.cost(input_tokens, output_tokens) <= exact + 1


@given(prices, st.integers(0, 10**9), counts, counts, st.integers(0, 10**6))
@example(Price(12.5, 12.5), 1825, 146, 37, 109)  # input's cost alone rounds up: 462.5 → 463, yet 37+109 cost 1825
def test_the_capped_grant_fits_every_remaining_budget(
    price: Price, micro_usd: int, tokens: int, input_tokens: int, granted: int
) -> None:
    remaining = Remaining(micro_usd, tokens)
    fitted = granted_within(price, remaining, input_tokens, granted)
    assert 0 <= fitted <= granted
    if fitted > 0:
        assert price.cost(input_tokens, fitted) <= micro_usd and input_tokens + fitted <= tokens
    # Maximal: one token more would not fit (unless the request's own ask is the cap).
    if fitted < granted and fitted > 0:
        assert price.cost(input_tokens, fitted + 1) > micro_usd or input_tokens + fitted + 1 > tokens


@given(st.integers(0, 10**12))
def test_a_unit_without_a_limit_stays_unlimited_in_events_however_much_is_spent(spent: int) -> None:
    shown = Remaining(UNLIMITED - spent, UNLIMITED - spent).as_event()
    assert shown == {"usd": None, "tokens": None}
    assert Remaining(spent, spent).as_event() == {"usd": round(spent / MICRO, 6), "tokens": spent}


def test_the_team_is_the_team_group() -> None:
    assert team_of(["pro", "team:platform"]) == "platform"
    assert team_of(["team:b", "team:a"]) == "a"  # at most one is meant; with several, the same one every time
    assert team_of(["pro"]) is None and team_of(None) is None and team_of(["team:"]) is None


# --- the counters on moto -------------------------------------------------------------------------------------


@pytest.fixture
def budgets(dynamodb: Any) -> tuple[Budgets, Clock]:
    name = f"budgets-{uuid.uuid4().hex[:8]}"
    dynamodb.create_table(**table_spec(name))
    clock = Clock()
    return Budgets(name, dynamodb, clock=clock), clock


def test_a_budget_reserves_until_it_cannot_then_says_what_remains(budgets: tuple[Budgets, Clock]) -> None:
    store, _ = budgets
    key = budget_key("team", "platform")
    assert store.reserve(key, 100, 10) is None  # no budget set: not limited at this level
    store.set_limits(key, BudgetLimits(monthly_usd=0.001, monthly_tokens=25))  # 1,000 µUSD
    first = store.reserve(key, 600, 10)
    assert isinstance(first, Hold)
    assert store.reserve(key, 600, 10) == Remaining(400, 15)
    store.settle(first, 100, 4)  # the truth was cheaper: the rest comes back
    assert isinstance(store.reserve(key, 600, 10), Hold)
    usage = store.usage(key)
    assert usage is not None and usage.spent_micro_usd == 700 and usage.remaining == Remaining(300, 11)


def test_a_new_month_starts_from_the_limits_and_an_old_hold_changes_nothing(budgets: tuple[Budgets, Clock]) -> None:
    store, clock = budgets
    store.set_limits("stack", BudgetLimits(monthly_usd=1.0))
    old = store.reserve("stack", 900_000, 1)
    assert isinstance(old, Hold)
    clock.t += 31 * 86_400
    fresh = store.reserve("stack", 900_000, 1)
    assert isinstance(fresh, Hold) and fresh.month != old.month
    store.settle(old, 0, 0)  # last month's: this month's counter is untouched
    usage = store.usage("stack")
    assert usage is not None and usage.remaining.micro_usd == 100_000 and usage.remaining.tokens == UNLIMITED - 1


def test_the_stack_ceiling_starts_from_its_setting(budgets: tuple[Budgets, Clock]) -> None:
    store, _ = budgets
    assert isinstance(store.reserve("stack", 10, 1, default=BudgetLimits(monthly_usd=0.00002)), Hold)
    assert store.reserve("stack", 11, 1, default=BudgetLimits(monthly_usd=0.00002)) == Remaining(10, UNLIMITED - 1)


def test_raising_a_limit_keeps_what_was_spent(budgets: tuple[Budgets, Clock]) -> None:
    store, _ = budgets
    key = budget_key("team", "t")
    store.set_limits(key, BudgetLimits(monthly_usd=0.001))
    store.reserve(key, 800, 1)
    store.set_limits(key, BudgetLimits(monthly_usd=0.002))
    usage = store.usage(key)
    assert usage is not None and usage.spent_micro_usd == 800 and usage.remaining.micro_usd == 1_200
    assert store.teams() == ["t"]


# --- the request path -----------------------------------------------------------------------------------------


def priced(gateway: Gateway, **changes: Any) -> Budgets:
    """The gateway with the model priced at PRICE and budgets wired into the gatekeeper and the worker."""
    config = gateway.config.model_copy(update={"prices": {MODEL: (PRICE.input, PRICE.output)}, **changes})
    store = Budgets(config.metering_table, gateway.dynamodb, clock=gateway.clock)
    for part in (gateway.gatekeeper, gateway.worker):
        part.config, part.budgets = config, store
    return store


TEAM = ["team:platform"]


def test_a_team_members_request_holds_its_worst_case_cost_then_settles_the_real_one(gateway: Gateway) -> None:
    store = priced(gateway)
    key = budget_key("team", "platform")
    store.set_limits(key, BudgetLimits(monthly_usd=1.0))
    gateway.publish(ask(requestId="r1"), groups=TEAM)
    [job] = gateway.jobs
    [hold] = job.budget_holds
    assert hold["micro_usd"] == PRICE.cost(job.input_estimate, job.granted_output_tokens)
    gateway.run_jobs()
    end = gateway.events()[-1]
    usage = store.usage(key)
    assert usage is not None and usage.spent_micro_usd == PRICE.cost(end["usage"]["input"], end["usage"]["output"])
    assert usage.spent_tokens == end["usage"]["input"] + end["usage"]["output"]
    # The end says what the team has left, read in the settle's own round trip.
    assert end["budgets"] == {"team": {"name": "platform", "usd": usage.remaining.micro_usd / MICRO, "tokens": None}}


def test_a_small_team_budget_caps_the_grant_then_refuses_naming_the_team(gateway: Gateway) -> None:
    store = priced(gateway)
    key = budget_key("team", "platform")
    store.set_limits(key, BudgetLimits(monthly_usd=0.0015))  # 1,500 µUSD: 512 output tokens alone cost 2,560
    gateway.publish(ask(requestId="capped"), groups=TEAM)
    [job] = gateway.jobs
    assert 64 <= job.granted_output_tokens < 512
    assert PRICE.cost(job.input_estimate, job.granted_output_tokens) <= 1_500
    [refused] = gateway.publish(ask(requestId="over"), groups=TEAM)
    assert refused["error"].startswith("quota_exhausted")
    error = gateway.events()[-1]
    assert error["scope"] == "team" and error["budgets"]["team"]["usd"] < 0.0015 and error["retryAfterSeconds"] > 0
    # Nothing of the refused request is held, at the team or by the user.
    usage = gateway.meter.usage(SUB, gateway.config.tier("free").limits)
    assert usage.reserved == job.reserved_tokens


def test_the_stack_ceiling_refuses_with_scope_stack(gateway: Gateway) -> None:
    priced(gateway, stack_monthly_usd=0.000001)  # 1 µUSD: nothing fits
    [refused] = gateway.publish(ask())
    assert refused["error"].startswith("quota_exhausted") and gateway.events()[-1]["scope"] == "stack"
    assert gateway.jobs == [] and gateway.meter.usage(SUB, gateway.config.tier("free").limits).reserved == 0


def test_user_refusals_name_the_user_scope(gateway: Gateway) -> None:
    gateway.meter.admit(SUB, gateway.config.tier("free").limits, input_tokens=0, max_output_tokens=4_000)
    gateway.publish(ask())
    assert gateway.events()[-1]["scope"] == "user"


def test_a_failed_hand_over_gives_the_team_its_hold_back(gateway: Gateway) -> None:
    store = priced(gateway)
    key = budget_key("team", "platform")
    store.set_limits(key, BudgetLimits(monthly_usd=1.0))

    def failing_invoke(job: protocol.WorkerJob) -> None:
        raise ConnectionError("injected")

    gateway.gatekeeper.invoke_worker = failing_invoke
    [answer] = gateway.publish(ask(), groups=TEAM)
    assert answer["error"].startswith("internal")
    usage = store.usage(key)
    assert usage is not None and usage.spent_micro_usd == 0 and usage.spent_tokens == 0


def test_the_usage_action_shows_the_users_own_limits_and_what_their_team_and_the_stack_have_left(
    gateway: Gateway,
) -> None:
    store = priced(gateway, stack_monthly_usd=2.0)
    store.set_limits(budget_key("team", "platform"), BudgetLimits(monthly_usd=1.0))
    gateway.meter.set_override(SUB, Limits(window_tokens=7_000, monthly_tokens=100_000))
    gateway.publish(ask(requestId="spent"), groups=TEAM)
    gateway.run_jobs()
    end = gateway.events()[-1]
    spent = end["usage"]["input"] + end["usage"]["output"]
    [answer] = gateway.publish({"action": "usage", "requestId": "u1"}, groups=TEAM)
    assert answer["payload"] == {"requestId": "u1", "status": "usage"}
    usage = gateway.events()[-1]
    assert usage["type"] == "usage" and usage["seq"] == 0 and usage["tier"] == "free"
    assert usage["models"] == [MODEL] and usage["defaultModel"] == MODEL
    assert usage["limits"] == {"window": 7_000, "month": 100_000}  # the override, not the tier's 4,000 / 50,000
    assert usage["remaining"] == {"window": 7_000 - spent, "month": 100_000 - spent}
    cost_usd = PRICE.cost(end["usage"]["input"], end["usage"]["output"]) / MICRO
    assert usage["budgets"]["team"] == {"name": "platform", "usd": pytest.approx(1.0 - cost_usd), "tokens": None}
    assert usage["budgets"]["stack"]["usd"] == pytest.approx(2.0 - cost_usd)


def test_the_usage_action_before_any_request_needs_no_request_id_and_shows_full_budgets(gateway: Gateway) -> None:
    priced(gateway, stack_monthly_usd=2.0)
    gateway.calls.clear()
    [answer] = gateway.publish({"action": "usage"})
    usage = gateway.events()[-1]
    assert answer["payload"]["requestId"] == usage["requestId"]
    assert usage["remaining"] == usage["limits"] == {"window": 4_000, "month": 50_000}
    assert usage["budgets"] == {"stack": {"usd": 2.0, "tokens": None}}  # no team: no team entry
    # Nothing reaches the model; two reads (the user's item, the stack's), no write.
    assert gateway.jobs == [] and gateway.calls == Counter({"GetItem": 2})
    # Asked on a conversation's chat channel, it is answered on that conversation's responses channel.
    gateway.publish({"action": "usage", "requestId": "u2"}, channel=f"/chat/{SUB}/conv-9")
    assert [e["requestId"] for e in gateway.events(f"/responses/{SUB}/conv-9")] == ["u2"]


@pytest.mark.parametrize(
    "payload",
    [{"action": "usage", "afterSeq": 3}, {"action": "resume"}, {"action": "cancel"}, {"action": "usage", "x": 1}],
)
def test_actions_with_fields_that_do_not_fit_them_are_invalid(gateway: Gateway, payload: dict[str, Any]) -> None:
    [answer] = gateway.publish(payload)
    assert answer["error"].startswith("invalid_request")
    assert gateway.events()[-1]["code"] == "invalid_request"


# --- 64 at once -----------------------------------------------------------------------------------------------


def concurrent_gatekeeper(gateway: Gateway, store: Budgets) -> tuple[Gatekeeper, list[protocol.WorkerJob]]:
    """A gatekeeper safe to call from many threads: jobs and courtesy publishes collected, not sent."""
    jobs: list[protocol.WorkerJob] = []
    lock = threading.Lock()

    def collect(job: protocol.WorkerJob) -> None:
        with lock:
            jobs.append(job)

    meter = Meter(gateway.config.metering_table, client=gateway.dynamodb, clock=gateway.clock)
    keeper = Gatekeeper(gateway.gatekeeper.config, meter, None, collect, lambda channel, events: None,
                        clock=gateway.clock, budgets=store)  # fmt: skip
    return keeper, jobs


def publish_as(keeper: Gatekeeper, sub: str, groups: list[str], request_id: str) -> dict[str, Any]:
    identity = {"sub": sub, "groups": groups}
    [answer] = keeper.on_publish(identity, f"/chat/{sub}", [{"id": "e", "payload": ask(requestId=request_id)}])
    return answer


def test_64_members_at_once_never_overspend_a_small_team_budget_and_use_nearly_all_of_it(gateway: Gateway) -> None:
    store = priced(gateway)
    key = budget_key("team", "platform")
    limit = 20_000  # µUSD: about 7 requests of 2,700 µUSD (input + 512 output tokens)
    store.set_limits(key, BudgetLimits(monthly_usd=limit / MICRO))
    keeper, jobs = concurrent_gatekeeper(gateway, store)
    users = [str(uuid.UUID(int=i + 1)) for i in range(64)]
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(lambda u: publish_as(keeper, u, TEAM, "r"), users))
    outcomes = Counter(a["payload"]["status"] if "payload" in a else a["error"].split(":")[0] for a in answers)
    assert set(outcomes) <= {"accepted", "quota_exhausted"}, outcomes
    held = sum(h["micro_usd"] for j in jobs for h in j.budget_holds)
    usage = store.usage(key)
    assert usage is not None and usage.spent_micro_usd == held <= limit  # 0 over-admission
    assert held >= 0.95 * limit - PRICE.cost(30, 64)  # all but less than the smallest admissible request
    assert outcomes["accepted"] == len(jobs)


def test_64_requests_of_one_user_at_once_are_admitted_or_told_to_retry_never_internal(gateway: Gateway) -> None:
    store = priced(gateway)
    keeper, jobs = concurrent_gatekeeper(gateway, store)
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(lambda i: publish_as(keeper, SUB, [], f"r{i}"), range(64)))
    codes = Counter(a["payload"]["status"] if "payload" in a else a["error"].split(":")[0] for a in answers)
    assert set(codes) <= {"accepted", "rate_limited"}, codes
    usage = gateway.meter.usage(SUB, gateway.config.tier("free").limits)
    assert usage.reserved == sum(j.reserved_tokens for j in jobs) <= gateway.config.tier("free").window_tokens


# --- what is reported ------------------------------------------------------------------------------------------


def _emf(out: str, metric: str) -> list[dict[str, Any]]:
    blobs = [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]
    return [b for b in blobs if any(m["Name"] == metric for d in b["_aws"]["CloudWatchMetrics"] for m in d["Metrics"])]


def test_a_team_members_answer_reports_its_team_its_cost_and_the_share_of_the_ceiling_used(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    store = priced(gateway, stack_monthly_usd=0.01)  # 10,000 µUSD
    store.set_limits(budget_key("team", "platform"), BudgetLimits(monthly_usd=1.0))
    capsys.readouterr()
    gateway.publish(ask(requestId="reported"), groups=TEAM)
    gateway.run_jobs()
    out = capsys.readouterr().out
    end = gateway.events()[-1]
    cost = PRICE.cost(end["usage"]["input"], end["usage"]["output"])
    [record] = [json.loads(line)["usage"] for line in out.splitlines() if '"record_type":"usage"' in line]
    assert record["team"] == "platform" and record["request_id"] == "reported"
    [spend] = _emf(out, "SpendUsd")
    assert spend["team"] == "platform" and spend["SpendUsd"] == [pytest.approx(cost / MICRO)]
    [share] = _emf(out, "StackBudgetUsedPercent")
    assert share["StackBudgetUsedPercent"] == [pytest.approx(100 * cost / 10_000, abs=1e-3)]
    assert "team" not in share  # its own blob: the alarm reads it without dimensions


def test_a_refusal_records_the_team_and_an_unpriced_model_reports_no_spend(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.publish(ask(), groups=TEAM)  # no prices configured
    gateway.run_jobs()
    out = capsys.readouterr().out
    assert _emf(out, "SpendUsd") == []
    priced(gateway, stack_monthly_usd=0.000001)
    gateway.publish(ask(requestId="refused"), groups=TEAM)
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line)["usage"] for line in lines if '"record_type":"usage"' in line]
    assert [(r["outcome"], r["team"], r["refusal_reason"]) for r in records] == [("refused", "platform", "stack")]


def test_a_failing_budget_write_gives_back_the_other_levels_hold_and_the_users_reservation(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = priced(gateway, stack_monthly_usd=1.0)
    store.set_limits(budget_key("team", "platform"), BudgetLimits(monthly_usd=1.0))
    real_reserve = store.reserve

    def stack_write_fails(key: str, *args: Any, **kwargs: Any) -> Any:
        if key == "stack":
            raise ConnectionError("DynamoDB unreachable (injected)")
        return real_reserve(key, *args, **kwargs)

    monkeypatch.setattr(store, "reserve", stack_write_fails)
    [answer] = gateway.publish(ask(requestId="faulted"), groups=TEAM)
    assert answer["error"].startswith("internal")
    assert gateway.events()[-1]["code"] == "internal"  # the user is told
    team = store.usage(budget_key("team", "platform"))
    assert team is not None and (team.spent_micro_usd, team.spent_tokens) == (0, 0)  # the team's hold came back
    assert gateway.meter.usage(SUB, gateway.config.tier("free").limits).reserved == 0 and gateway.jobs == []
    monkeypatch.setattr(store, "reserve", real_reserve)
    [retried] = gateway.publish(ask(requestId="faulted"), groups=TEAM)  # the same requestId runs: it was forgotten
    assert retried["payload"]["status"] == "accepted"


# --- the ceiling `aigw budgets set` writes --------------------------------------------------------------------


def ceiling_admin(gateway: Gateway, store: Budgets, setting_usd: float) -> Any:
    """What `aigw budgets set` acts through, on this gateway's table, for a stack whose settings set the ceiling."""
    from aigw.admin import Target
    from aigw.teams import Admin

    target = Target(region="us-east-1", metering_table=gateway.config.metering_table, stack_monthly_usd=setting_usd)
    return Admin(cognito=None, budgets=store, target=target)


def test_a_ceiling_lowered_by_the_cli_refuses_though_the_setting_would_admit(gateway: Gateway) -> None:
    store = priced(gateway, stack_monthly_usd=1.0)
    [first] = gateway.publish(ask(requestId="before"))
    assert first["payload"]["status"] == "accepted"  # the item now exists, started from the setting's $1
    gateway.run_jobs()
    ceiling_admin(gateway, store, 1.0).set_stack_ceiling(0.000001)
    [refused] = gateway.publish(ask(requestId="after"))
    assert refused["error"].startswith("quota_exhausted") and gateway.events()[-1]["scope"] == "stack"
    gateway.publish({"action": "usage", "requestId": "u"})
    assert gateway.events()[-1]["budgets"]["stack"]["usd"] == 0  # the usage action reads the same, lowered, ceiling


def test_a_ceiling_raised_by_the_cli_admits_and_outlives_the_month(gateway: Gateway) -> None:
    store = priced(gateway, stack_monthly_usd=0.000001)  # the setting alone: nothing fits
    [refused] = gateway.publish(ask(requestId="r0"))
    assert refused["error"].startswith("quota_exhausted")
    shown = ceiling_admin(gateway, store, 0.000001).set_stack_ceiling(3.0)
    assert shown["limit"]["usd"] == 3.0 and shown["enabled"] is True
    [admitted] = gateway.publish(ask(requestId="r1"))
    assert admitted["payload"]["status"] == "accepted"
    gateway.run_jobs()
    # A new month rolls the counters over from the item's limit, not from the setting.
    gateway.clock.t += 31 * 86_400
    [next_month] = gateway.publish(ask(requestId="r2"))
    assert next_month["payload"]["status"] == "accepted"
    usage = store.usage(STACK_KEY)
    assert usage is not None and usage.limits.monthly_usd == 3.0 and usage.spent_micro_usd > 0


def test_the_share_of_the_ceiling_used_is_of_the_live_ceiling(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    store = priced(gateway, stack_monthly_usd=0.01)  # the setting: 10,000 µUSD
    ceiling_admin(gateway, store, 0.01).set_stack_ceiling(0.02)  # the live ceiling: 20,000 µUSD
    capsys.readouterr()
    gateway.publish(ask(requestId="shared"))
    gateway.run_jobs()
    out = capsys.readouterr().out
    end = gateway.events()[-1]
    cost = PRICE.cost(end["usage"]["input"], end["usage"]["output"])
    [share] = _emf(out, "StackBudgetUsedPercent")
    assert share["StackBudgetUsedPercent"] == [pytest.approx(100 * cost / 20_000, abs=1e-3)]


# --- a user's own USD month -----------------------------------------------------------------------------------


def with_user_usd(gateway: Gateway, monthly_usd: float, **changes: Any) -> Budgets:
    """The gateway priced, its free tier with a USD month for each user."""
    store = priced(gateway, **changes)
    config = gateway.gatekeeper.config
    tiers = tuple(t.model_copy(update={"monthly_usd": monthly_usd}) if t.name == "free" else t for t in config.tiers)
    config = config.model_copy(update={"tiers": tiers})
    for part in (gateway.gatekeeper, gateway.worker):
        part.config = config
    return store


def test_a_users_usd_month_holds_the_worst_case_settles_the_truth_then_refuses_naming_the_user(
    gateway: Gateway,
) -> None:
    store = with_user_usd(gateway, 0.004)  # 4,000 µUSD: one request of ~2,700 held, then not another
    key = budget_key("user", SUB)
    gateway.publish(ask(requestId="first"))
    [job] = gateway.jobs
    [hold] = job.budget_holds
    assert hold["key"] == key and hold["micro_usd"] == PRICE.cost(job.input_estimate, job.granted_output_tokens)
    gateway.run_jobs()
    end = gateway.events()[-1]
    cost = PRICE.cost(end["usage"]["input"], end["usage"]["output"])
    usage = store.usage(key)
    assert usage is not None and usage.spent_micro_usd == cost
    assert end["budgets"] == {"user": {"usd": (4_000 - cost) / MICRO, "tokens": None}}
    # What is left caps the next grant; once too little is left for the minimum output, the refusal is the user's.
    for attempt in range(100):
        [answer] = gateway.publish(ask(requestId=f"r{attempt}"))
        if "error" in answer:
            break
        gateway.run_jobs()
    assert answer["error"].startswith("quota_exhausted")
    error = gateway.events()[-1]
    assert error["scope"] == "user" and error["message"] == "your monthly budget is used up"
    assert 0 <= error["budgets"]["user"]["usd"] < PRICE.cost(job.input_estimate, 64) / MICRO
    spent = store.usage(key)
    assert spent is not None and spent.spent_micro_usd <= 4_000  # never over the user's month
    # The refused request holds nothing, at the user's budget or their meter.
    assert gateway.meter.usage(SUB, gateway.config.tier("free").limits).reserved == 0


def test_an_override_with_its_own_usd_month_wins_and_one_without_keeps_the_tiers(gateway: Gateway) -> None:
    with_user_usd(gateway, 0.000001)  # 1 µUSD: the tier refuses everything
    gateway.meter.set_override(SUB, Limits(window_tokens=7_000, monthly_tokens=100_000, monthly_usd=1.0))
    assert gateway.meter.get_override(SUB) == Limits(7_000, 100_000, monthly_usd=1.0)  # stored exactly
    [answer] = gateway.publish(ask(requestId="a"))
    assert answer["payload"]["status"] == "accepted"
    gateway.meter.set_override(SUB, Limits(window_tokens=7_000, monthly_tokens=100_000))
    [answer] = gateway.publish(ask(requestId="b"))
    assert answer["error"].startswith("quota_exhausted") and gateway.events()[-1]["scope"] == "user"


def test_the_usage_action_shows_the_users_usd_month(gateway: Gateway) -> None:
    with_user_usd(gateway, 0.5)
    gateway.publish(ask(requestId="spent"))
    gateway.run_jobs()
    end = gateway.events()[-1]
    cost = PRICE.cost(end["usage"]["input"], end["usage"]["output"])
    gateway.publish({"action": "usage", "requestId": "u"})
    assert gateway.events()[-1]["budgets"] == {"user": {"usd": (500_000 - cost) / MICRO, "tokens": None}}


def test_without_a_usd_month_a_user_has_no_budget_item(gateway: Gateway) -> None:
    store = priced(gateway)
    gateway.publish(ask())
    [job] = gateway.jobs
    assert job.budget_holds == () and store.usage(budget_key("user", SUB)) is None
