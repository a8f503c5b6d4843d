"""No level is ever over its limit: a Hypothesis state machine over team and stack budgets on moto.

Members of one team (and users in none) publish in concurrent bursts through a thread-safe gatekeeper; workers
answer the admitted requests in any order; the team's budget is raised; minutes pass; months end. After every step:

- no level has spent more than its limit (each user's USD month, team USD month, team token and USD windows,
  stack ceiling);
- the team's window holds, bucket by bucket, exactly the tokens of the requests admitted in its live buckets (held
  while running, the truth once answered);
- what each level counts as spent is exactly the holds of the requests still running plus the real cost of those
  answered, this month (nothing leaked by a refusal's compensation, nothing settled twice);
- each user's meter holds exactly what their running requests reserved.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from aigw.emulators.appsync_receiver import AppSyncReceiver
from aigw.emulators.bedrock import BedrockEmulator
from runtime import observability, protocol
from runtime.budgets import STACK_KEY, BudgetLimits, budget_key, is_live
from runtime.metering.core import bucket_of, month_key, next_month_start
from tests.runtime.test_budgets import PRICE, concurrent_gatekeeper, publish_as, with_user_usd
from tests.runtime.test_request_path import CREDS, Gateway

TEAM_KEY = budget_key("team", "platform")
USERS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(8)]
TEAM_MEMBERS = set(USERS[:5])  # the other three are in no team: only the stack ceiling applies to them
CEILING_MICRO_USD = 20_000  # µUSD: about 7 requests of ~2,700 held (input + 512 output tokens)
TEAM_WINDOW_TOKENS = 1_600  # about 3 requests of ~530 tokens held in any 10 minutes
TEAM_WINDOW_MICRO_USD = 6_500  # and about 2 of ~2,600 µUSD: which binds depends on what was settled
USER_MICRO_USD = 4_500  # each user's own month: one request held at a time (~2,700), not two


class BudgetMachine(RuleBasedStateMachine):
    dynamodb: Any = None
    receiver: AppSyncReceiver | None = None
    bedrock: BedrockEmulator | None = None
    records: list[observability.UsageRecord] = []

    def __init__(self) -> None:
        super().__init__()
        assert self.receiver is not None and self.bedrock is not None
        self.gateway = Gateway(self.dynamodb, self.receiver, self.bedrock)
        self.store = with_user_usd(self.gateway, USER_MICRO_USD / 1e6, stack_monthly_usd=CEILING_MICRO_USD / 1e6)
        self.team_limit = 12_000
        self.store.set_limits(TEAM_KEY, self._team_limits())
        self.keeper, self.admitted = concurrent_gatekeeper(self.gateway, self.store)
        self.running: list[protocol.WorkerJob] = []
        self.answered: list[protocol.WorkerJob] = []
        self.records.clear()
        self.bursts = 0

    # -- what users and the platform do

    @rule(senders=st.lists(st.sampled_from(USERS), min_size=1, max_size=8))
    def a_burst_of_requests(self, senders: list[str]) -> None:
        self.bursts += 1
        ids = [f"b{self.bursts}-{i}" for i in range(len(senders))]

        def send(i: int) -> dict[str, Any]:
            groups = ["team:platform"] if senders[i] in TEAM_MEMBERS else []
            return publish_as(self.keeper, senders[i], groups, ids[i])

        with ThreadPoolExecutor(len(senders)) as pool:
            answers = list(pool.map(send, range(len(senders))))
        for answer in answers:
            outcome = answer["payload"]["status"] if "payload" in answer else answer["error"].split(":")[0]
            assert outcome in {"accepted", "quota_exhausted", "rate_limited"}, answer
        self.running.extend(self.admitted)
        self.admitted.clear()

    @precondition(lambda self: self.running)
    @rule(pick=st.integers(0, 63))
    def a_worker_answers(self, pick: int) -> None:
        job = self.running.pop(pick % len(self.running))
        self.gateway.worker.handle(job)
        self.answered.append(job)

    @rule(extra=st.integers(1, 5_000))
    def the_team_budget_is_raised(self, extra: int) -> None:
        self.team_limit += extra
        self.store.set_limits(TEAM_KEY, self._team_limits())

    @rule(seconds=st.sampled_from([5, 10, 60, 300, 600, 610]))
    def time_passes(self, seconds: int) -> None:
        self.gateway.clock.t += seconds

    @rule()
    def a_month_ends(self) -> None:
        self.gateway.clock.t = next_month_start(self.gateway.clock()) + 3_600

    def _team_limits(self) -> BudgetLimits:
        return BudgetLimits(monthly_usd=self.team_limit / 1e6, window_tokens=TEAM_WINDOW_TOKENS,
                            window_usd=TEAM_WINDOW_MICRO_USD / 1e6)

    # -- the promises

    def _month(self) -> str:
        return month_key(self.gateway.clock())

    def _expected_spent(self, key: str) -> int:
        month, cost_of = self._month(), self._costs()
        def holds(job: protocol.WorkerJob) -> list[dict[str, Any]]:
            return [h for h in job.budget_holds if (h["key"], h["month"]) == (key, month)]

        held = sum(h["micro_usd"] for j in self.running for h in holds(j))
        # A job that ran after its lease ran out answers `internal` and costs nothing: no record with tokens.
        settled = sum(cost_of.get(j.request_id, 0) for j in self.answered for _ in holds(j))
        return held + settled

    def _costs(self) -> dict[str, int]:
        return {r.request_id: PRICE.cost(r.input_tokens, r.output_tokens) for r in self.records if r.input_tokens}

    @invariant()
    def no_level_is_over_its_limit_and_each_counts_exactly_what_it_holds_and_was_spent(self) -> None:
        users = [(budget_key("user", u), USER_MICRO_USD) for u in USERS]
        for key, limit in ((TEAM_KEY, self.team_limit), (STACK_KEY, CEILING_MICRO_USD), *users):
            usage = self.store.usage(key)
            spent = usage.spent_micro_usd if usage and usage.month == self._month() else 0
            assert spent <= limit, (key, spent, limit)
            assert spent == self._expected_spent(key), key

    @invariant()
    def the_team_window_holds_exactly_its_live_requests_and_never_more_than_its_limit(self) -> None:
        now_bucket, tokens, costs = bucket_of(self.gateway.clock()), self._tokens(), self._costs()
        expected: dict[int, tuple[int, int]] = defaultdict(lambda: (0, 0))
        for done, jobs in ((False, self.running), (True, self.answered)):
            for job in jobs:
                for hold in job.budget_holds:
                    if hold["key"] == TEAM_KEY and is_live(hold["bucket"], now_bucket):
                        t, c = expected[hold["bucket"]]
                        if done:
                            expected[hold["bucket"]] = (t + tokens.get(job.request_id, 0),
                                                        c + costs.get(job.request_id, 0))
                        else:
                            expected[hold["bucket"]] = (t + hold["tokens"], c + hold["micro_usd"])
        usage = self.store.usage(TEAM_KEY)
        assert usage is not None
        kept = dict(usage.remaining.window_buckets)
        assert {b: n for b, n in kept.items() if n != (0, 0)} == {b: n for b, n in expected.items() if n != (0, 0)}
        assert usage.window_spent_tokens <= TEAM_WINDOW_TOKENS
        assert usage.window_spent_micro_usd <= TEAM_WINDOW_MICRO_USD
        assert usage.remaining.window_tokens == TEAM_WINDOW_TOKENS - usage.window_spent_tokens
        assert usage.remaining.window_micro_usd == TEAM_WINDOW_MICRO_USD - usage.window_spent_micro_usd

    def _tokens(self) -> dict[str, int]:
        return {r.request_id: r.input_tokens + r.output_tokens for r in self.records if r.input_tokens}

    @invariant()
    def each_users_meter_holds_what_their_running_requests_reserved(self) -> None:
        reserved: dict[str, int] = defaultdict(int)
        for job in self.running:
            if job.admitted_at >= self.gateway.clock() - self.gateway.config.lease_seconds:
                reserved[job.user_id] += job.reserved_tokens
        limits = self.gateway.config.tier("free").limits
        for user in USERS:
            assert self.gateway.meter.usage(user, limits).reserved == reserved[user], user


@pytest.mark.moto
def test_no_budget_level_is_ever_over_its_limit(dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    records = BudgetMachine.records
    real = observability.record_request

    def keep(record: observability.UsageRecord, **kwargs: Any) -> None:
        records.append(record)
        real(record, **kwargs)

    monkeypatch.setattr(observability, "record_request", keep)
    with (
        AppSyncReceiver({CREDS.access_key: CREDS.secret_key}, region="us-east-1") as receiver,
        BedrockEmulator() as bedrock,
    ):
        BudgetMachine.dynamodb, BudgetMachine.receiver, BudgetMachine.bedrock = dynamodb, receiver, bedrock
        run_state_machine_as_test(
            BudgetMachine,
            settings=settings(
                settings.default,
                max_examples=10,  # each step checks every level over HTTP: ~3 s an example
                stateful_step_count=12,
                deadline=None,
                phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking over HTTP: see the meter's
            ),
        )
