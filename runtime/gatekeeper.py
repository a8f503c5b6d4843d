"""The gatekeeper: onPublish of the `chat` namespace, deciding per event before anything reaches the model.

For each published event: authorize the channel, validate the payload, pick the tier and model, estimate the
input, look up the answer cache, admit through the Meter, then hand the admitted request to the worker
(asynchronous invoke) and answer the event as accepted. A refused or invalid event is answered with an
`error` *and* a typed `error` event on the user's `responses` channel, so a UI subscribed there sees why in
the same stream. Nothing of a refused or invalid request reaches the model or the meter.

`requestId` is the client's idempotency key, per user: the meter remembers it with the reservation (in the
same conditional write, so no extra round trip), and a publish of a requestId it still remembers is answered
`accepted` again without invoking the worker or reserving anything (an answered one is replayed from the journal).

Actions (`{"action": "resume" | "cancel", "requestId"}`) act on the answer journal (`runtime.streams`): a resume
republishes the journaled events the client lacks on the request's responses channel (and a `stream_gap` error
when some can never come); a cancel sets the flag the worker sees at its next journal write.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from runtime import budgets as budget_levels
from runtime import channels, observability, protocol, streams
from runtime.appsync_publish import MAX_EVENTS_PER_PUBLISH
from runtime.budgets import MICRO, UNLIMITED, BudgetLimits, Budgets, Hold, Remaining, Scope
from runtime.cache import AnswerCache
from runtime.config import RuntimeConfig, TierSettings
from runtime.errors import ChannelForbiddenError, InvalidInputError, InvalidRequestError, MeterContentionError
from runtime.metering import Meter

Publish = Callable[[str, list[dict[str, Any]]], Any]
InvokeWorker = Callable[[protocol.WorkerJob], Any]


@dataclass
class Rejection(Exception):  # not frozen: raising sets __traceback__
    """An event the gatekeeper answers with an error (and a typed error event on the user's channel)."""

    code: protocol.ErrorCode
    message: str
    retry_after_s: float | None = None
    window: int | None = None
    month: int | None = None
    refusal_reason: str | None = None
    expired_reservations: int = 0
    scope: Scope | None = None  # the budget that refused
    budgets: dict[str, Any] | None = None  # what remains of the team's / stack's month


@dataclass
class _AlreadyAccepted(Exception):
    """The requestId was admitted before and the meter still remembers it; `answered` once it was settled."""

    answered: bool
    conversation_id: str | None
    window: int
    month: int


# A retry of an answered request whose journal is gone is told so: accepted, yet nothing else would come.
ALREADY_ANSWERED = "this requestId was already answered; to ask again, send the request with a new requestId"
STREAM_GAP = "part of this answer can no longer be delivered; ask again to get a whole answer"


class Gatekeeper:
    def __init__(
        self,
        config: RuntimeConfig,
        meter: Meter,
        cache: AnswerCache | None,
        invoke_worker: InvokeWorker,
        publish: Publish,
        clock: Callable[[], float] = time.time,
        journal: streams.Journal | None = None,
        budgets: Budgets | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.budgets = budgets
        # Team and stack reservations go out together: one round trip for both (boto3 clients are thread-safe).
        self._levels = ThreadPoolExecutor(max_workers=2, thread_name_prefix="budget")
        self.meter = meter
        self.cache = cache
        self.invoke_worker = invoke_worker
        self.publish = publish
        self.clock = clock

    def on_publish(
        self, identity: Mapping[str, Any] | None, channel_path: str, events: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """AppSync's onPublish answer: one `{"id", "payload"}` or `{"id", "error"}` per incoming event."""
        sub = identity.get("sub") if isinstance(identity, Mapping) else None
        groups = identity.get("groups") if isinstance(identity, Mapping) else None
        tier = self.config.tier_for(groups if isinstance(groups, list) else None)
        try:
            channel = channels.authorize(channels.PUBLISH, channel_path, sub if isinstance(sub, str) else "")
            denial = None
        except (ChannelForbiddenError, InvalidInputError) as err:
            channel, denial = None, Rejection("forbidden", f"you may not publish on {channel_path!r}: {err}")

        answers = []
        for event in events:
            payload = event.get("payload")
            request_id = protocol.safe_request_id(payload)
            conversation_id = protocol.safe_conversation_id(payload)
            observability.bind_request(request_id, user_id=sub if isinstance(sub, str) else "")
            job: protocol.WorkerJob | None = None
            try:
                if denial is not None:
                    raise denial
                assert channel is not None and isinstance(sub, str)
                if protocol.is_action(payload):
                    answers.append({"id": event.get("id"), "payload": self._act(sub, channel, payload, tier, groups)})
                    continue
                job = self._admit(sub, tier, channel, payload, request_id, budget_levels.team_of(groups))
                self.invoke_worker(job)
                answers.append({"id": event.get("id"), "payload": {"requestId": request_id, "status": "accepted"}})
            except _AlreadyAccepted as duplicate:
                # A retry of a request already admitted (e.g. after a timeout): same answer, no second model
                # call, no second charge. Its answer streams (or streamed) on the responses channel.
                observability.logger.info("duplicate request: already accepted", extra={"request_id": request_id})
                answers.append({"id": event.get("id"), "payload": {"requestId": request_id, "status": "accepted"}})
                if duplicate.answered:
                    assert isinstance(sub, str)
                    replayed = self._replay(sub, request_id, duplicate.conversation_id, after_seq=-1, tell_gap=False)
                    if not replayed:
                        self._tell(sub, request_id, duplicate.conversation_id, protocol.error_event(
                            request_id, duplicate.conversation_id, "invalid_request", ALREADY_ANSWERED,
                            window=duplicate.window, month=duplicate.month, seq=0))  # fmt: skip
            except Rejection as rejection:
                self._reject(sub, tier, request_id, conversation_id, rejection, groups=groups)
                answers.append({"id": event.get("id"), "error": f"{rejection.code}: {rejection.message}"})
            except Exception:
                observability.logger.exception("gatekeeper failed", extra={"request_id": request_id})
                failure = Rejection("internal", "the gateway could not take this request; please retry")
                if job is not None:  # admitted, then the hand-over failed: nothing will answer, so release now
                    failure.window, failure.month = self._release(job)
                self._reject(sub, tier, request_id, conversation_id, failure, job=job, groups=groups)
                answers.append({"id": event.get("id"), "error": f"{failure.code}: {failure.message}"})
        return answers

    # -- actions on a request's answer

    def _act(
        self, sub: str, channel: channels.Channel, payload: Any, tier: TierSettings, groups: object
    ) -> dict[str, Any]:
        try:
            action = protocol.parse_action(payload)
        except InvalidRequestError as err:
            raise Rejection("invalid_request", str(err)) from None
        conversation_id = channels.conversation_id_of(channel)  # answered where the client listens
        if action.action == "usage":
            request_id = action.request_id or protocol.new_request_id()
            event = self._usage_event(sub, tier, request_id, budget_levels.team_of(groups))
            self._tell(sub, request_id, conversation_id, event)
            return {"requestId": request_id, "status": "usage"}
        assert action.request_id is not None  # resume and cancel name their request (parse_action checks)
        if self.journal is None:
            raise Rejection("invalid_request", f"{action.action} is not available on this gateway")
        if action.action == "cancel":
            asked = self.journal.request_cancel(sub, action.request_id)
            observability.logger.info("cancel requested", extra={"request_id": action.request_id, "running": asked})
            return {"requestId": action.request_id, "status": "cancelling" if asked else "finished"}
        self._replay(sub, action.request_id, conversation_id, after_seq=action.after_seq, tell_gap=True)
        return {"requestId": action.request_id, "status": "resumed"}

    def _usage_event(self, sub: str, tier: TierSettings, request_id: str, team: str | None) -> dict[str, Any]:
        """What the caller may still spend: their own effective limits (and USD month, when they have one), and
        their team's and the stack's month."""
        used = self.meter.usage(sub, tier.limits)
        remaining: dict[str, Remaining] = {}
        if self.budgets is not None:
            if (user_usd := used.limits.monthly_usd) is not None:
                key, limit = budget_levels.budget_key("user", sub), round(user_usd * MICRO)
                mine = self.budgets.usage(key, spend_limit=limit)
                remaining[key] = mine.remaining if mine else Remaining(limit, UNLIMITED)
            if team is not None and (team_usage := self.budgets.usage(budget_levels.budget_key("team", team))):
                remaining[team_usage.key] = team_usage.remaining
            if self.config.stack_monthly_usd is not None:
                stack_usage = self.budgets.usage(budget_levels.STACK_KEY)
                ceiling = BudgetLimits(monthly_usd=self.config.stack_monthly_usd)  # until the first request starts it
                remaining[budget_levels.STACK_KEY] = (
                    stack_usage.remaining if stack_usage else Remaining(ceiling.micro_usd, ceiling.tokens)
                )
        return protocol.usage_event(
            request_id,
            tier=tier.name,
            models=list(tier.models),
            default_model=tier.model,
            limits={"window": used.limits.window_tokens, "month": used.limits.monthly_tokens},
            remaining={"window": used.window_remaining, "month": used.month_remaining},
            budgets=budget_levels.budgets_view(remaining),
        )

    def _replay(
        self, sub: str, request_id: str, conversation_id: str | None, *, after_seq: int, tell_gap: bool
    ) -> bool:
        """Publish the journaled events after `after_seq`; False when there is no journal to replay from."""
        state = self.journal.read(sub, request_id) if self.journal else None
        if state is None and not tell_gap:
            return False
        plan = streams.resume_plan(state, after_seq, self.clock())
        if state is not None and state.events:
            conversation_id = state.events[0].get("conversationId", conversation_id)
        target = (state.channel if state else None) or channels.responses_channel(sub, conversation_id)
        for start in range(0, len(plan.events), MAX_EVENTS_PER_PUBLISH):
            self.publish(target, plan.events[start : start + MAX_EVENTS_PER_PUBLISH])
        if plan.gap:
            lost_from = len(state.events) if state else 0
            gap = protocol.error_event(request_id, conversation_id, "stream_gap", STREAM_GAP, seq=lost_from)
            self._send_to(target, request_id, gap)
        return True

    # -- one event

    def _admit(
        self,
        sub: str,
        tier: TierSettings,
        channel: channels.Channel,
        payload: Any,
        request_id: str,
        team: str | None = None,
    ) -> protocol.WorkerJob:
        cfg = self.config
        try:
            request = protocol.parse_request(
                payload,
                max_messages=cfg.max_messages,
                max_message_chars=cfg.max_message_chars,
                max_total_chars=cfg.max_total_chars,
            )
        except InvalidRequestError as err:
            raise Rejection("invalid_request", str(err)) from None
        conversation_id = _conversation(channel, request)
        model_id = request.model_id or tier.model
        if model_id not in tier.models:
            offered = ", ".join(tier.models)
            raise Rejection(
                "model_not_allowed",
                f"model {model_id!r} is not available on the {tier.name} tier; it offers {offered} "
                f"(leave modelId out for {tier.model})",
            )

        messages = request.converse_messages()
        input_estimate = protocol.estimate_input_tokens(messages)
        max_output = min(request.max_tokens or tier.max_output_tokens, tier.max_output_tokens)
        cached = self.cache.lookup(messages, model_id) if self.cache else None
        if cached is not None:
            # A prepared answer costs `cache_cost_tokens` (0 by default: then the meter is not touched).
            input_estimate, max_output = 0, cfg.cache_cost_tokens

        decision = None
        if max_output > 0:
            try:
                decision = self.meter.admit(
                    sub, tier.limits, input_tokens=input_estimate, max_output_tokens=max_output, request_key=request_id
                )
            except MeterContentionError:
                # Many requests of one user at once: a refusal to retry shortly, never `internal`.
                raise Rejection(
                    "rate_limited", "too many requests at once; retry shortly", retry_after_s=1.0,
                    refusal_reason="contention", scope="user",
                ) from None
            if decision.duplicate_of is not None:
                raise _AlreadyAccepted(
                    decision.duplicate_answered, conversation_id, decision.window_remaining, decision.month_remaining
                )
            if not decision.admitted:
                raise _refusal(decision)
        if decision is None:
            usage = self.meter.usage(sub, tier.limits)
            window, month = usage.window_remaining, usage.month_remaining
        else:
            window, month = decision.window_remaining, decision.month_remaining
        holds: list[Hold] = []
        granted = decision.granted_output_tokens if decision else 0
        if decision is not None and cached is None:
            min_output = min(decision.limits.min_output_tokens, max_output)
            holds, granted = self._reserve_budgets(sub, team, model_id, input_estimate, granted, min_output, decision)

        return protocol.WorkerJob(
            request_id=request_id,
            conversation_id=conversation_id,
            user_id=sub,
            tier=tier.name,
            model_id=model_id,
            messages=messages,
            channel=channels.responses_channel(sub, conversation_id),
            reservation_id=decision.reservation_id if decision else None,
            granted_output_tokens=granted,
            input_estimate=input_estimate,
            reserved_tokens=decision.reserved_tokens if decision else 0,
            window_remaining=window,
            month_remaining=month,
            admitted_at=self.clock(),
            cached_answer=cached.answer if cached else None,
            expired_reservations=decision.expired_reservations if decision else 0,
            budget_holds=tuple(h.fields() for h in holds),
            team=team,
        )

    # -- team and stack budgets

    def _reserve_budgets(
        self, sub: str, team: str | None, model_id: str, input_tokens: int, granted: int, min_output: int,
        decision: Any,
    ) -> tuple[list[Hold], int]:
        """Reserve the request's worst-case cost at its team and the stack; the grant, capped to fit them all.

        Both levels are asked at once. One that is short lets the request through with a smaller grant when at
        least the minimum output still fits (the others' holds shrink to match); else everything reserved for the
        request, its user's too, is given back and the refusal names that level. Should a write fail, everything
        reserved for the request is given back too before the error goes on (the caller answers `internal`).
        """
        budgets, price = self.budgets, self.config.price(model_id)
        # (scope, key, the limits an absent item starts from, the caller's own µUSD limit).
        levels: list[tuple[Scope, str, BudgetLimits | None, int | None]] = []
        if (user_usd := decision.limits.monthly_usd) is not None and price is not None:
            # The user's own USD month: the limit is their tier's or override's, the item only counts spending.
            levels.append(("user", budget_levels.budget_key("user", sub), BudgetLimits(), round(user_usd * MICRO)))
        if team is not None:
            levels.append(("team", budget_levels.budget_key("team", team), None, None))
        if self.config.stack_monthly_usd is not None:
            levels.append(("stack", budget_levels.STACK_KEY, BudgetLimits(monthly_usd=self.config.stack_monthly_usd),
                           None))
        if budgets is None or not levels:
            return [], granted

        def cost(output: int) -> int:
            return price.cost(input_tokens, output) if price is not None else 0

        # Each level's answer on its own: when one fails, what the others took is known, and so given back.
        futures = [
            self._levels.submit(budgets.reserve, key, cost(granted), input_tokens + granted, default, limit)
            for _, key, default, limit in levels
        ]
        answers = [f.exception() or f.result() for f in futures]
        holds = [a for a in answers if isinstance(a, Hold)]
        try:
            for (scope, *_), answer in zip(levels, answers, strict=True):
                if isinstance(answer, MeterContentionError):
                    raise self._contention(scope) from None
                if isinstance(answer, BaseException):
                    raise answer
            short = [(level[0], a) for level, a in zip(levels, answers, strict=True) if isinstance(a, Remaining)]
            if not short:
                return holds, granted
            fitted = min(budget_levels.granted_within(price, r, input_tokens, granted) for _, r in short)
            if fitted < min_output:
                scope, remaining = min(short, key=lambda s: budget_levels.granted_within(
                    price, s[1], input_tokens, granted))
                raise self._budget_refusal(decision, scope, remaining, price, input_tokens, min_output)
            for hold in holds:
                budgets.settle(hold, cost(fitted), input_tokens + fitted)
            holds = [Hold(h.key, h.month, cost(fitted), input_tokens + fitted, h.bucket, h.limit) for h in holds]
            for scope, _ in short:
                key, default, limit = next((k, d, li) for s, k, d, li in levels if s == scope)
                try:
                    again = budgets.reserve(key, cost(fitted), input_tokens + fitted, default, limit)
                except MeterContentionError:
                    raise self._contention(scope) from None
                if isinstance(again, Remaining):
                    raise self._budget_refusal(decision, scope, again, price, input_tokens, min_output)
                if isinstance(again, Hold):
                    holds.append(again)
            return holds, fitted
        except BaseException:
            self._give_back(sub, holds, decision.reservation_id)
            raise

    def _contention(self, scope: Scope) -> Rejection:
        """A budget item that kept changing under the reservation (a window's bucket turning over under many
        writers): a refusal to retry shortly, never `internal`."""
        return Rejection("rate_limited", "too many requests at once; retry shortly", retry_after_s=1.0,
                         refusal_reason="contention", scope=scope)

    def _budget_refusal(
        self, decision: Any, scope: Scope, remaining: Remaining, price: Any, input_tokens: int, min_output: int
    ) -> Rejection:
        """The refusal naming the level and which of its limits: the month (until the next one) or the rolling
        window (until enough of its buckets leave it; a request larger than the window itself is invalid)."""
        whose = {"user": "your", "team": "your team's", "stack": "this gateway's"}[scope]
        now = self.clock()
        common: dict[str, Any] = {
            "window": decision.window_remaining + decision.reserved_tokens,
            "month": decision.month_remaining + decision.reserved_tokens,
            "scope": scope,
            "budgets": {scope: remaining.as_event()},
        }
        if budget_levels.refusing_limit(price, remaining, input_tokens, min_output) == "month":
            return Rejection("quota_exhausted", f"{whose} monthly budget is used up",
                             retry_after_s=budget_levels.retry_after_month(now),
                             refusal_reason="monthly" if scope == "user" else scope, **common)  # user: their month
        reason = "team_window" if scope == "team" else scope  # only a team's budget has a window
        need = (input_tokens + min_output, price.cost(input_tokens, min_output) if price is not None else 0)
        wait = budget_levels.window_fits_in(
            dict(remaining.window_buckets), (remaining.window_tokens, remaining.window_micro_usd), need, now)
        if wait is None:
            return Rejection("invalid_request", f"this request is larger than {whose} rolling-window budget "
                             "allows; shorten it or ask for fewer tokens", refusal_reason=reason, **common)
        return Rejection("rate_limited", f"{whose} budget for the last few minutes is used up",
                         retry_after_s=wait, refusal_reason=reason, **common)

    def _give_back(self, sub: str, holds: Sequence[Hold], reservation_id: str) -> bool:
        """Release what was reserved for a request that will not run: every budget hold, then the user's
        reservation (and its requestId, so a retry is a new request). Each is tried whatever the others do;
        False when one failed (the user's lease still releases it in the end; a hold stays counted as spent)."""
        released = True
        for hold in holds:
            try:
                if self.budgets is not None:
                    self.budgets.settle(hold, 0, 0)
            except Exception:
                observability.logger.exception("budget release failed", extra={"budget": hold.key})
                released = False
        try:
            self.meter.release(sub, reservation_id)
        except Exception:
            observability.logger.exception("release failed", extra={"reservation_id": reservation_id})
            released = False
        return released

    def _release(self, job: protocol.WorkerJob) -> tuple[int | None, int | None]:
        """Give an admitted job's reservation back (settled at 0 tokens); the remaining (window, month) after.

        Should this write fail too, the lease still releases it (and the expired-reservations alarm sees it); the
        remaining budget is then unknown. Should the invoke have been delivered after all (it reported failure,
        yet the worker runs), the worker's settle finds the reservation settled and changes nothing: that rare
        answer goes uncharged, rather than the common failure charging for nothing.
        """
        if job.reservation_id is None:
            return job.window_remaining, job.month_remaining
        if not self._give_back(job.user_id, [Hold(**h) for h in job.budget_holds], job.reservation_id):
            return None, None
        return job.window_remaining + job.reserved_tokens, job.month_remaining + job.reserved_tokens

    def _reject(
        self,
        sub: Any,
        tier: TierSettings,
        request_id: str,
        conversation_id: str | None,
        rejection: Rejection,
        job: protocol.WorkerJob | None = None,
        groups: object = None,
    ) -> None:
        """Record and tell a refusal or failure; `job` when it happened after admission (its reservation named)."""
        outcome = "refused" if rejection.refusal_reason else "error"
        observability.record_request(
            observability.UsageRecord(
                ts=observability.utc_timestamp(self.clock()),
                request_id=request_id,
                user_id=sub if isinstance(sub, str) else "",
                tier=tier.name,
                team=budget_levels.team_of(groups),
                conversation_id=conversation_id,
                model_id=job.model_id if job else "",
                outcome=outcome,
                refusal_reason=rejection.refusal_reason,
                error_code=None if rejection.refusal_reason else rejection.code,
                input_tokens=0,
                output_tokens=0,
                reserved_tokens=job.reserved_tokens if job else 0,
                ttft_ms=None,
                latency_ms=None,
                cache_hit=False,
                stop_reason=None,
                stack=self.config.stack,
            ),
            expired_reservations=rejection.expired_reservations,
        )
        if not isinstance(sub, str) or not channels.is_valid_segment(sub):
            return  # no channel of the caller's own to tell
        event = protocol.error_event(
            request_id,
            conversation_id,
            rejection.code,
            rejection.message,
            retry_after_s=rejection.retry_after_s,
            window=rejection.window,
            month=rejection.month,
            seq=0,  # a refused request's whole stream is this one event
            scope=rejection.scope,
            budgets=rejection.budgets,
        )
        self._tell(sub, request_id, conversation_id, event)

    def _tell(self, sub: str, request_id: str, conversation_id: str | None, event: dict[str, Any]) -> None:
        """Publish `event` on the caller's responses channel; a failure is logged, never raised."""
        self._send_to(channels.responses_channel(sub, conversation_id), request_id, event)

    def _send_to(self, channel: str, request_id: str, event: dict[str, Any]) -> None:
        try:
            self.publish(channel, [event])
        except Exception:
            # The event's own answer still tells the client; a failed courtesy publish must not.
            observability.logger.exception("could not publish the error event", extra={"request_id": request_id})


def _conversation(channel: channels.Channel, request: protocol.ChatRequest) -> str | None:
    from_channel = channels.conversation_id_of(channel)
    if from_channel and request.conversation_id and from_channel != request.conversation_id:
        raise Rejection("invalid_request", "conversationId differs from the channel's conversation")
    return from_channel or request.conversation_id


def _refusal(decision: Any) -> Rejection:
    remaining = {
        "window": decision.window_remaining,
        "month": decision.month_remaining,
        "expired_reservations": decision.expired_reservations,
    }
    if decision.retry_after_s is None:
        limit = "rolling-window" if decision.reason == "window" else "monthly"
        return Rejection(
            "invalid_request",
            f"this request is larger than your {limit} limit allows; shorten it or ask for fewer tokens",
            refusal_reason=decision.reason,
            scope="user",
            **remaining,
        )
    if decision.reason == "monthly":
        return Rejection(
            "quota_exhausted",
            "your monthly token quota is used up",
            retry_after_s=decision.retry_after_s,
            refusal_reason="monthly",
            scope="user",
            **remaining,
        )
    return Rejection(
        "rate_limited",
        "too many tokens in the last few minutes",
        retry_after_s=decision.retry_after_s,
        refusal_reason="window",
        scope="user",
        **remaining,
    )
