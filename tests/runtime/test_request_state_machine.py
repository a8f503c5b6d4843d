"""Every failure path settles: a Hypothesis state machine over gatekeeper + worker, faults injected at every step.

Users publish requests (some with a requestId they already used), the hand-over to the worker fails now and
then, workers run with the model throttled, broken mid-stream or silent about usage, with AppSync refusing a kind
of event twice, with the journal failing, with the client cancelling; clients resume; time passes. The promises:

- a finished request holds no reservation: what the meter holds is exactly what queued jobs reserved;
- what the meter charged is what the usage records say was used, and no request is charged twice;
- every request that reached a worker was told how it ended (an `end` or `error` delivered last, in seq order),
  and a resume of it replays to that end.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from aigw.emulators.bedrock import BedrockEmulator
from runtime import observability, protocol
from runtime.appsync_publish import publish_retrying_failed
from tests.runtime.test_appsync_publish import RejectingReceiver
from tests.runtime.test_request_path import CREDS, SUB, Gateway, ask

REQUEST_IDS = [f"req-{i}" for i in range(6)]  # few, so retries of a used requestId are common
MODEL_FAULTS = [None, None, "throttle", "mid_stream", "no_metadata", "validation"]
REFUSED_KINDS = [None, None, "start", "delta", "end"]


class RequestPathMachine(RuleBasedStateMachine):
    # Set by the test: peers shared by every example (a fresh Gateway, with fresh tables, per example).
    dynamodb: Any = None
    receiver: RejectingReceiver | None = None
    bedrock: BedrockEmulator | None = None
    records: list[observability.UsageRecord] = []
    refused_kind: str | None = None  # what the receiver refuses (twice per event, so it stays undelivered)

    def __init__(self) -> None:
        super().__init__()
        assert self.receiver is not None and self.bedrock is not None
        self.gateway = Gateway(self.dynamodb, self.receiver, self.bedrock)
        self.gateway.worker.journal_interval_s = 0  # a journal write (and cancel check) at every delta
        self.gateway.worker.publish = lambda channel, events: publish_retrying_failed(
            self.gateway.publisher.publish, channel, events
        )
        self.limits = self.gateway.config.tier("free").limits
        self.records.clear()
        self.bedrock.reset()
        type(self).refused_kind = None
        self.reached_worker: set[str] = set()

    # -- what users and the platform do

    @rule(request_id=st.sampled_from(REQUEST_IDS), invoke_fails=st.booleans(), words=st.integers(1, 60))
    def publish_a_request(self, request_id: str, invoke_fails: bool, words: int) -> None:
        real_invoke = self.gateway.gatekeeper.invoke_worker
        if invoke_fails:

            def refuse(job: protocol.WorkerJob) -> None:
                raise ConnectionError("Lambda Invoke failed (injected)")

            self.gateway.gatekeeper.invoke_worker = refuse
        try:
            [answer] = self.gateway.publish(ask(f"question {words} " + "word " * words, requestId=request_id))
        finally:
            self.gateway.gatekeeper.invoke_worker = real_invoke
        assert ("payload" in answer) != ("error" in answer)
        if "error" in answer:
            assert answer["error"].split(":")[0] in {"internal", "rate_limited", "quota_exhausted", "invalid_request"}

    @precondition(lambda self: self.gateway.jobs)
    @rule(
        model_fault=st.sampled_from(MODEL_FAULTS),
        refused=st.sampled_from(REFUSED_KINDS),
        journal_fails=st.booleans(),
        cancel=st.booleans(),
        words=st.integers(0, 120),
    )
    def run_the_next_job(
        self, model_fault: str | None, refused: str | None, journal_fails: bool, cancel: bool, words: int
    ) -> None:
        assert self.bedrock is not None
        job = self.gateway.jobs.pop(0)
        self.reached_worker.add(job.request_id)
        self.bedrock.answer = (lambda body: "Sure. " + "text " * words) if words else (lambda body: "Yes.")
        if model_fault == "mid_stream":
            self.bedrock.inject_fault("mid_stream", after_deltas=1)
        elif model_fault is not None:
            self.bedrock.inject_fault(model_fault)
        type(self).refused_kind = refused
        journal, real_append = self.gateway.journal, self.gateway.journal.append
        real_publish = self.gateway.worker.publish
        if journal_fails:

            def broken_append(*args: Any, **kwargs: Any) -> bool:
                raise ConnectionError("DynamoDB unreachable (injected)")

            journal.append = broken_append  # type: ignore[method-assign]
        if cancel:
            asked: list[Any] = []

            def publish_then_cancel(channel: str, events: list[dict[str, Any]]) -> Any:
                result = real_publish(channel, events)
                if not asked and any(e.get("type") == "delta" for e in events):
                    asked.append(self.gateway.publish({"action": "cancel", "requestId": job.request_id}, event_id="c"))
                return result

            self.gateway.worker.publish = publish_then_cancel
        assert self.receiver is not None
        start = len(self.receiver.received)
        try:
            self.gateway.worker.handle(job)
        finally:
            journal.append = real_append  # type: ignore[method-assign]
            self.gateway.worker.publish = real_publish
            type(self).refused_kind = None
            self.bedrock.reset()  # a fault the job did not reach (it expired unrun) must not hit the next one
        # The user was told how it ended: the last event of this request delivered is an end or an error.
        mine = [e for p in self.receiver.received[start:] for e in p["events"] if e.get("requestId") == job.request_id]
        assert mine and mine[-1]["type"] in ("end", "error")

    @precondition(lambda self: self.reached_worker)
    @rule(data=st.data())
    def resume_a_finished_request(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.reached_worker)))
        if any(j.request_id == request_id for j in self.gateway.jobs):
            return  # admitted again and queued: its journal is being rewritten
        state = self.gateway.journal.read(SUB, request_id)
        if state is None or not state.done:
            return  # the journal failed for this one: the resume says stream_gap (tested elsewhere)
        before = len(self.gateway.events())
        [answer] = self.gateway.publish({"action": "resume", "requestId": request_id, "afterSeq": -1}, event_id="r")
        assert answer["payload"]["status"] == "resumed"
        replay = [e for e in self.gateway.events()[before:] if e["requestId"] == request_id]
        expected = 0
        for event in replay:
            assert event.get("firstSeq", event["seq"]) == expected  # in order, nothing missing, nothing twice
            expected = event["seq"] + 1
        assert replay[-1]["type"] in ("end", "error") and replay[-1] == state.events[-1]

    @rule(seconds=st.sampled_from([1, 30, 120]))
    def time_passes(self, seconds: int) -> None:
        self.gateway.clock.t += seconds

    # -- the promises

    @invariant()
    def only_queued_jobs_hold_a_reservation(self) -> None:
        usage = self.gateway.meter.usage(SUB, self.limits)
        lease = self.gateway.meter.lease_seconds
        queued = sum(j.reserved_tokens for j in self.gateway.jobs if self.gateway.clock.t < j.admitted_at + lease)
        assert usage.reserved == queued

    @invariant()
    def charged_is_what_was_recorded_and_nothing_twice(self) -> None:
        usage = self.gateway.meter.usage(SUB, self.limits)
        recorded = sum(r.input_tokens + r.output_tokens for r in self.records if r.user_id == SUB)
        assert usage.month_used - usage.reserved == recorded  # month_used counts reservations as used
        charged = Counter(r.request_id for r in self.records if r.input_tokens + r.output_tokens > 0)
        assert all(n == 1 for n in charged.values()), charged


@pytest.mark.moto
def test_every_failure_path_settles_and_tells_the_user(dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    records = RequestPathMachine.records
    monkeypatch.setattr(observability, "record_request", lambda record, **_: records.append(record))

    def reject(event: Any) -> bool:
        return isinstance(event, dict) and event.get("type") == RequestPathMachine.refused_kind

    with (
        RejectingReceiver(reject, {CREDS.access_key: CREDS.secret_key}) as receiver,
        BedrockEmulator() as bedrock,
    ):
        RequestPathMachine.dynamodb, RequestPathMachine.receiver, RequestPathMachine.bedrock = (
            dynamodb,
            receiver,
            bedrock,
        )
        run_state_machine_as_test(
            RequestPathMachine,
            settings=settings(
                settings.default,
                max_examples=20,
                stateful_step_count=15,
                deadline=None,
                phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking over HTTP: see the meter's
            ),
        )
