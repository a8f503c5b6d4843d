"""The worker: streams one admitted request's answer to the user's `responses` channel and settles its tokens.

Bedrock ConverseStream runs with `maxTokens` = the grant, so an answer can never exceed the user's budget.
Text is coalesced (at most 5 events per publish, a flush at least every `flush_interval_ms`), never published
token by token. Whatever happens — throttling, a broken stream, a failed publish — the reservation is settled
with what is known (Bedrock's reported usage, else a conservative count of what was streamed) and the user
gets a typed `end` or `error` event. Internal exception text never reaches the user.

Every event sent gets `seq` and is journaled (`runtime.streams`) at most once a second and at the end; the journal
write is also where the worker learns that the client cancelled (it then closes the model stream and ends with
`stopReason: "cancelled"`, charging what was generated).

`publish` answers with what AppSync refused (`runtime.handlers.publish` has already retried those once). Text
that never arrived and is not in the journal either turns the `end` into an `error` (the client must not keep a
gappy answer as complete; journaled text it gets back by resuming), and a final event that never arrived is
followed by one `error` publish, so the client is not left waiting. Neither changes what is charged: the model
did generate it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime import budgets as budget_levels
from runtime import observability, protocol
from runtime.appsync_publish import Coalescer
from runtime.bedrock import GuardrailSettings, ModelClient, StreamStop, StreamUsage, TextDelta
from runtime.budgets import Budgets, Hold, Remaining
from runtime.cache import chunks
from runtime.config import RuntimeConfig
from runtime.errors import ModelError, ModelThrottledError
from runtime.metering import Meter
from runtime.streams import JOURNAL_INTERVAL_S, MAX_JOURNAL_BYTES, Journal, JournalConflictError

Publish = Callable[[str, list[dict[str, Any]]], Any]

_TEXT_LOST = "part of the answer could not be delivered; please ask again"
_END_LOST = "the end of the answer could not be delivered; please ask again"


def _is_delta(event: Any) -> bool:
    return isinstance(event, dict) and event.get("type") == "delta"


def _is_final(event: Any) -> bool:
    return isinstance(event, dict) and event.get("type") in ("end", "error")


class _JournalWriter:
    """One stream's journal: records every event as it is sent, writes them at most once per `interval_s` (and
    at the end), and learns of a cancel from those writes. A failed write keeps its events for the next one."""

    def __init__(
        self,
        journal: Journal | None,
        job: protocol.WorkerJob,
        monotonic: Callable[[], float],
        interval_s: float = JOURNAL_INTERVAL_S,
        max_bytes: int = MAX_JOURNAL_BYTES,
    ) -> None:
        self.journal, self.job, self.monotonic = journal, job, monotonic
        self.interval_s, self.max_bytes = interval_s, max_bytes
        self.recorded: dict[int, dict[str, Any]] = {}
        self.journaled = 0  # events 0 .. journaled-1 are in the journal
        self.bytes = 0
        self.full = False
        self.cancelled = False
        self.writes = 0
        self._broken = False
        self._last_write = monotonic()

    def record(self, batch: list[Any]) -> None:
        for event in batch:
            if isinstance(event, dict) and isinstance(event.get("seq"), int):
                self.recorded.setdefault(event["seq"], event)  # a resent batch has the same seqs

    def maybe_write(self) -> None:
        if self.monotonic() - self._last_write >= self.interval_s and self.journaled in self.recorded:
            self.write(done=False)

    def write(self, *, done: bool) -> None:
        if self.journal is None or self._broken:
            return
        batch: list[dict[str, Any]] = []
        while not self.full and (event := self.recorded.get(self.journaled + len(batch))) is not None:
            size = len(json.dumps(event, separators=(",", ":"))) + 8
            if self.bytes + size > self.max_bytes:
                self.full = True  # what follows cannot be replayed; a resume past here gets `stream_gap`
                break
            self.bytes += size
            batch.append(event)
        self._last_write = self.monotonic()
        self.writes += 1
        try:
            cancelled = self.journal.append(
                self.job.user_id, self.job.request_id, self.job.channel, batch,
                first_seq=self.journaled, done=done, full=self.full,
            )  # fmt: skip
        except JournalConflictError:
            observability.logger.error("journal written by another worker", extra={"request_id": self.job.request_id})
            self._broken = True
            return
        except Exception:
            observability.logger.exception("journal write failed", extra={"request_id": self.job.request_id})
            self.bytes -= sum(len(json.dumps(e, separators=(",", ":"))) + 8 for e in batch)
            return
        if cancelled:
            self.cancelled = True
            self.bytes -= sum(len(json.dumps(e, separators=(",", ":"))) + 8 for e in batch)
        else:
            self.journaled += len(batch)


@dataclass
class _Outcome:
    stop_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    reported_usage: bool = False
    ttft_ms: int | None = None
    error_code: protocol.ErrorCode | None = None
    error_message: str = ""
    text: list[str] = field(default_factory=list)  # the answer as streamed (logged only with logPrompts)
    budgets: dict[str, Any] = field(default_factory=dict)  # what the team's / stack's month has left, once settled
    stack_remaining: Remaining | None = None  # the stack ceiling's month after this request's settle


class Worker:
    def __init__(
        self,
        config: RuntimeConfig,
        meter: Meter,
        model: ModelClient,
        publish: Publish,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        journal: Journal | None = None,
        journal_interval_s: float = JOURNAL_INTERVAL_S,
        budgets: Budgets | None = None,
    ) -> None:
        self.config = config
        self.budgets = budgets
        self.journal = journal
        self.journal_interval_s = journal_interval_s
        self.meter = meter
        self.model = model
        self.publish = publish
        self.clock = clock
        self.monotonic = monotonic
        self.guardrail = (
            GuardrailSettings(config.guardrail_id, config.guardrail_version)
            if config.guardrail_id and config.guardrail_version
            else None
        )

    def handle(self, job: protocol.WorkerJob) -> _Outcome:
        started = self.monotonic()
        journal = _JournalWriter(self.journal, job, self.monotonic, self.journal_interval_s)

        def send(channel: str, batch: list[Any]) -> Any:
            journal.record(batch)  # before the publish: text AppSync refuses can still be resumed from the journal
            return self.publish(channel, batch)

        coalescer = Coalescer(
            job.channel,
            send,
            flush_interval_s=self.config.flush_interval_ms / 1000,
            common_fields={k: v for k, v in protocol.delta_fields(job).items() if k not in ("type", "text")},
            clock=self.monotonic,
            sequence=True,
        )
        outcome = _Outcome()
        try:
            self._send(coalescer.add, protocol.start_event(job))
            if job.cached_answer is not None:
                self._stream_cached(job, coalescer, outcome, started)
            elif self.clock() >= job.admitted_at + self.config.lease_seconds:
                outcome.error_code, outcome.error_message = "internal", "the request expired before it could run"
            else:
                self._stream_model(job, coalescer, journal, outcome, started)
            self._send(coalescer.flush)  # the answer goes out before the bookkeeping
            lost = [e for e in coalescer.undelivered if _is_delta(e)]
            if not outcome.error_code and lost:
                journal.write(done=False)  # text in the journal is not lost: the client resumes it (a seq gap)
                if any(e["seq"] >= journal.journaled for e in lost):
                    outcome.error_code, outcome.error_message = "internal", _TEXT_LOST
        finally:
            charged, overshoot = self._settle(job, outcome)
        window = max(0, job.window_remaining + job.reserved_tokens - charged)
        month = max(0, job.month_remaining + job.reserved_tokens - charged)
        if outcome.error_code:
            final = protocol.error_event(
                job.request_id,
                job.conversation_id,
                outcome.error_code,
                outcome.error_message,
                window=window,
                month=month,
                budgets=outcome.budgets,
            )
        else:
            final = protocol.end_event(
                job,
                stop_reason=outcome.stop_reason or "end_turn",
                input_tokens=outcome.input_tokens,
                output_tokens=outcome.output_tokens,
                window=window,
                month=month,
                budgets=outcome.budgets,
            )
        self._send(coalescer.add, final)
        self._send(coalescer.close)
        journal.write(done=True)
        if coalescer.pending or any(_is_final(e) for e in coalescer.undelivered):
            self._announce_lost_final(job, outcome, coalescer.next_seq, window=window, month=month)
        latency_ms = int((self.monotonic() - started) * 1000)
        observability.record_request(
            observability.UsageRecord(
                ts=observability.utc_timestamp(job.admitted_at),
                request_id=job.request_id,
                user_id=job.user_id,
                tier=job.tier,
                team=job.team,
                conversation_id=job.conversation_id,
                model_id=job.model_id,
                outcome="error" if outcome.error_code else ("cached" if job.cached_answer is not None else "completed"),
                refusal_reason=None,
                error_code=outcome.error_code,
                input_tokens=outcome.input_tokens,
                output_tokens=outcome.output_tokens,
                reserved_tokens=job.reserved_tokens,
                ttft_ms=outcome.ttft_ms,
                latency_ms=latency_ms,
                cache_hit=job.cached_answer is not None,
                stop_reason=outcome.stop_reason,
                stack=self.config.stack,
            ),
            overshoot_tokens=overshoot,
            expired_reservations=job.expired_reservations,
        )
        self._report_spend(job, outcome)
        observability.log_prompt(job.request_id, job.messages, "".join(outcome.text), enabled=self.config.log_prompts)
        return outcome

    # -- the two sources of text

    def _stream_cached(self, job: protocol.WorkerJob, coalescer: Coalescer, outcome: _Outcome, started: float) -> None:
        outcome.ttft_ms = int((self.monotonic() - started) * 1000)
        for piece in chunks(job.cached_answer or ""):
            outcome.text.append(piece)
            self._send(coalescer.add_delta, piece)
        # A prepared answer costs what the stack says (cache_cost_tokens), charged as output.
        outcome.stop_reason, outcome.output_tokens, outcome.reported_usage = "end_turn", job.reserved_tokens, True

    def _stream_model(
        self,
        job: protocol.WorkerJob,
        coalescer: Coalescer,
        journal: _JournalWriter,
        outcome: _Outcome,
        started: float,
    ) -> None:
        streamed = outcome.text
        try:
            stream = self.model.stream(job.model_id, job.messages, job.granted_output_tokens, guardrail=self.guardrail)
            for event in stream:
                if isinstance(event, TextDelta):
                    if outcome.ttft_ms is None:
                        outcome.ttft_ms = int((self.monotonic() - started) * 1000)
                    streamed.append(event.text)
                    self._send(coalescer.add_delta, event.text)
                    journal.maybe_write()
                    if journal.cancelled:
                        stream.close()  # closes Bedrock's HTTP stream: generation (and its cost) stops here
                        outcome.stop_reason = "cancelled"
                        break
                elif isinstance(event, StreamStop):
                    outcome.stop_reason = event.stop_reason
                elif isinstance(event, StreamUsage):
                    outcome.input_tokens, outcome.output_tokens = event.input_tokens, event.output_tokens
                    outcome.reported_usage = True
        except ModelThrottledError:
            outcome.error_code, outcome.error_message = "model_throttled", "the model is busy; please retry shortly"
        except ModelError:
            outcome.error_code, outcome.error_message = "model_error", "the model could not complete this answer"
        except Exception:
            observability.logger.exception("worker failed", extra={"request_id": job.request_id})
            outcome.error_code, outcome.error_message = "internal", "the gateway failed while answering"
        if not outcome.reported_usage and (streamed or outcome.stop_reason):
            # The model ran but reported no usage: charge the input estimate and a conservative count of the text.
            outcome.input_tokens = job.input_estimate
            outcome.output_tokens = protocol.estimate_output_tokens("".join(streamed))

    # -- plumbing

    def _settle(self, job: protocol.WorkerJob, outcome: _Outcome) -> tuple[int, int]:
        """Settle with what is known; returns (tokens charged, overshoot). Never raises."""
        if job.reservation_id is None:
            return outcome.input_tokens + outcome.output_tokens, 0
        self._settle_budgets(job, outcome)
        try:
            s = self.meter.settle(
                job.user_id, job.reservation_id, input_tokens=outcome.input_tokens, output_tokens=outcome.output_tokens
            )
            return s.charged_tokens, s.overshoot_tokens
        except Exception:
            # The lease releases the reservation if this write never lands; the alarm on expired leases sees it.
            observability.logger.exception("settle failed", extra={"request_id": job.request_id})
            return job.reserved_tokens, 0

    def _settle_budgets(self, job: protocol.WorkerJob, outcome: _Outcome) -> None:
        """The team's and stack's holds replaced by the request's real cost. Never raises."""
        if not job.budget_holds or self.budgets is None:
            return
        price = self.config.price(job.model_id)
        cost = price.cost(outcome.input_tokens, outcome.output_tokens) if price is not None else 0
        remaining: dict[str, Remaining] = {}
        for hold in job.budget_holds:
            try:
                left = self.budgets.settle(Hold(**hold), cost, outcome.input_tokens + outcome.output_tokens)
            except Exception:
                # The hold stays counted as spent this month: over-counting, never over-admitting.
                observability.logger.exception("budget settle failed", extra={"request_id": job.request_id})
                continue
            if left is not None:
                remaining[hold["key"]] = left
        outcome.budgets = budget_levels.budgets_view(remaining)
        outcome.stack_remaining = remaining.get(budget_levels.STACK_KEY)

    def _report_spend(self, job: protocol.WorkerJob, outcome: _Outcome) -> None:
        """The request's cost by team, and the share of the stack's ceiling used (its 80 % alarm). Never raises."""
        price = self.config.price(job.model_id)
        if price is None or job.cached_answer is not None:
            return  # unpriced: no figure to report; a prepared answer calls no model
        used_pct = None
        if self.config.stack_monthly_usd and (left := outcome.stack_remaining) is not None:
            # The live ceiling (`aigw budgets set` may have moved it), else the settings' starting value.
            ceiling = left.limit_micro_usd or self.config.stack_monthly_usd * budget_levels.MICRO
            used_pct = round(100 * max(0.0, ceiling - left.micro_usd) / ceiling, 3)
        try:
            usd = price.cost(outcome.input_tokens, outcome.output_tokens) / budget_levels.MICRO
            observability.record_spend(team=job.team, usd=usd, stack_used_pct=used_pct)
        except Exception:
            observability.logger.exception("spend metric failed", extra={"request_id": job.request_id})

    def _announce_lost_final(
        self, job: protocol.WorkerJob, outcome: _Outcome, seq: int, *, window: int, month: int
    ) -> None:
        """The `end` (or `error`) never reached the client: one more publish, as a typed error. Settled already."""
        observability.logger.error(
            "final event not delivered; publishing an error event instead", extra={"request_id": job.request_id}
        )
        if not outcome.error_code:
            outcome.error_code, outcome.error_message = "internal", _END_LOST
        error = protocol.error_event(
            job.request_id, job.conversation_id, outcome.error_code, outcome.error_message, window=window, month=month
        )
        self._send(self.publish, job.channel, [{**error, "seq": seq}])  # not journaled: the journal has the final

    def _send(self, action: Callable[..., Any], *args: Any) -> None:
        try:
            action(*args)
        except Exception:
            # A failed publish must not stop generation or settling; the coalescer retries the batch later.
            observability.logger.exception("publish failed")
