"""The client contract: what users publish on `chat`, what the worker receives, what users see on `responses`.

Request (published on `/chat/<sub>[/<conversationId>]`)::

    {"requestId"?: str, "conversationId"?: str, "modelId"?: str, "maxTokens"?: int,
     "messages": [{"role": "user" | "assistant", "content": [{"text": str}, ...]}, ...]}

Unknown fields are refused; the conversation must start and end with a user message (Bedrock's rule).
Actions on an admitted request, published on the same channel::

    {"action": "resume", "requestId": str, "afterSeq"?: int}   # every event with seq > afterSeq (default -1)
    {"action": "cancel", "requestId": str}                      # stop generating; `end` says "cancelled"

Events (published on `/responses/<sub>[/<conversationId>]`), all with `type`, `requestId`, `conversationId` and
`seq` (0, 1, 2 ... per request, in order): `start` {model, grantedTokens, cached}, `delta` {text, firstSeq?},
`end` {stopReason ("end_turn", "max_tokens", "cancelled", ...), usage {input, output}, remaining {window, month},
cached}, `error` {code, message, retryAfterSeconds?, remaining?, scope?, budgets?}. A refusal by the meter says
which budget refused (`scope`: "user", "team" or "stack") and, for team and stack, what remains of it
(`budgets` {scope: {usd, tokens}}, null where that level sets no limit). A replayed delta may merge several: it then
covers `firstSeq` .. `seq`. An `error` with code `stream_gap` says the events from its `seq` on are lost.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from runtime.errors import InvalidRequestError

ErrorCode = Literal[
    "invalid_request",
    "forbidden",
    "model_not_allowed",
    "rate_limited",
    "quota_exhausted",
    "model_throttled",
    "model_error",
    "stream_gap",
    "internal",
]
_ID = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,48}[A-Za-z0-9])?$"  # usable as a channel segment


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TextBlock(_Strict):
    text: str = Field(min_length=1)


class Message(_Strict):
    role: Literal["user", "assistant"]
    content: list[TextBlock] = Field(min_length=1, max_length=20)


class ChatRequest(_Strict):
    request_id: str | None = Field(default=None, alias="requestId", pattern=_ID)
    conversation_id: str | None = Field(default=None, alias="conversationId", pattern=_ID)
    model_id: str | None = Field(default=None, alias="modelId", min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, alias="maxTokens", gt=0)
    messages: list[Message] = Field(min_length=1)

    @model_validator(mode="after")
    def _starts_and_ends_with_the_user(self) -> ChatRequest:
        if self.messages[0].role != "user" or self.messages[-1].role != "user":
            raise ValueError("the conversation must start and end with a user message")
        return self

    def converse_messages(self) -> list[dict[str, Any]]:
        return [{"role": m.role, "content": [{"text": b.text} for b in m.content]} for m in self.messages]


class StreamAction(_Strict):
    """A client's action: replay what it missed of a request, stop a request's answer, or read its own budgets."""

    action: Literal["resume", "cancel", "usage"]
    request_id: str | None = Field(default=None, alias="requestId", pattern=_ID)
    after_seq: int = Field(default=-1, alias="afterSeq", ge=-1, le=1_000_000)

    @model_validator(mode="after")
    def _fields_fit_the_action(self) -> StreamAction:
        if self.action != "resume" and "after_seq" in self.model_fields_set:
            raise ValueError(f"afterSeq goes with resume, not {self.action}")
        if self.action != "usage" and self.request_id is None:
            raise ValueError(f"{self.action} needs the requestId of the request it acts on")
        return self


def is_action(payload: Any) -> bool:
    return isinstance(payload, dict) and "action" in payload


def parse_action(payload: Any) -> StreamAction:
    try:
        return StreamAction.model_validate(payload)
    except ValidationError as err:
        raise InvalidRequestError(_first_error(err)) from None


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "request"
    return f"{where}: {first['msg']}"


def parse_request(payload: Any, *, max_messages: int, max_message_chars: int, max_total_chars: int) -> ChatRequest:
    """Validate a published payload against the schema and the stack's size caps."""
    if not isinstance(payload, dict):
        raise InvalidRequestError("the request must be a JSON object")
    try:
        request = ChatRequest.model_validate(payload)
    except ValidationError as err:
        raise InvalidRequestError(_first_error(err)) from None
    if len(request.messages) > max_messages:
        raise InvalidRequestError(f"at most {max_messages} messages per request")
    total = 0
    for m in request.messages:
        size = sum(len(b.text) for b in m.content)
        if size > max_message_chars:
            raise InvalidRequestError(f"a message may hold at most {max_message_chars} characters")
        total += size
    if total > max_total_chars:
        raise InvalidRequestError(f"a request may hold at most {max_total_chars} characters in all")
    return request


# Conservative input estimate: UTF-8 bytes / 3 per text (English averages about 4 characters per token, and
# scripts that tokenise densely take 2-3 bytes per character), plus 4 tokens per message and 8 per request
# for the chat template. Over-estimating only lowers the output granted; settling records the truth.
BYTES_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REQUEST = 8


def estimate_input_tokens(messages: list[dict[str, Any]], system: str | None = None) -> int:
    texts = [b.get("text", "") for m in messages for b in m.get("content", [])]
    if system:
        texts.append(system)
    body = sum(math.ceil(len(t.encode("utf-8")) / BYTES_PER_TOKEN) for t in texts)
    return body + TOKENS_PER_MESSAGE * len(messages) + TOKENS_PER_REQUEST


def estimate_output_tokens(text: str) -> int:
    """Tokens of streamed text when the model reported no usage (a broken stream): the same conservative rule."""
    return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN)


def new_request_id() -> str:
    return uuid.uuid4().hex


class WorkerJob(BaseModel):
    """What the gatekeeper hands the worker (asynchronous Lambda invoke payload)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str
    conversation_id: str | None
    user_id: str
    tier: str
    model_id: str
    messages: list[dict[str, Any]]
    channel: str  # where the answer goes: the user's responses channel
    reservation_id: str | None  # None: nothing reserved (a free cache hit)
    granted_output_tokens: int
    input_estimate: int
    reserved_tokens: int
    window_remaining: int  # after the reservation
    month_remaining: int
    admitted_at: float
    cached_answer: str | None = None
    expired_reservations: int = 0  # leases the admission found expired, for the ExpiredReservations metric
    # Team and stack reservations (runtime.budgets.Hold fields: key, month, micro_usd, tokens, bucket), settled with
    # the truth.
    budget_holds: tuple[dict[str, Any], ...] = ()
    team: str | None = None  # the user's team, for its usage record and spend metric


# --- events on the responses channel --------------------------------------------------------------------


def _base(kind: str, request_id: str, conversation_id: str | None) -> dict[str, Any]:
    return {"type": kind, "requestId": request_id, "conversationId": conversation_id}


def start_event(job: WorkerJob) -> dict[str, Any]:
    return {
        **_base("start", job.request_id, job.conversation_id),
        "model": job.model_id,
        "grantedTokens": job.granted_output_tokens,
        "cached": job.cached_answer is not None,
    }


def delta_fields(job: WorkerJob) -> dict[str, Any]:
    """The fields every delta of a job carries (the coalescer adds `text`)."""
    return _base("delta", job.request_id, job.conversation_id)


def end_event(
    job: WorkerJob,
    *,
    stop_reason: str,
    input_tokens: int,
    output_tokens: int,
    window: int,
    month: int,
    budgets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    event = {
        **_base("end", job.request_id, job.conversation_id),
        "stopReason": stop_reason,
        "usage": {"input": input_tokens, "output": output_tokens},
        "remaining": {"window": window, "month": month},
        "cached": job.cached_answer is not None,
    }
    if budgets:
        event["budgets"] = budgets  # what the team's / stack's month has left after this answer
    return event


def usage_event(
    request_id: str,
    *,
    tier: str,
    models: list[str],
    default_model: str,
    limits: Mapping[str, int],
    remaining: Mapping[str, int],
    budgets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The answer to `{"action": "usage"}`: the caller's own effective limits (override or tier) and what is left,
    and the models the tier offers."""
    event = {
        **_base("usage", request_id, None),
        "seq": 0,
        "tier": tier,
        "models": list(models),
        "defaultModel": default_model,
        "limits": dict(limits),
        "remaining": dict(remaining),
    }
    if budgets:
        event["budgets"] = budgets  # team/stack: {scope: {"usd", "tokens"} (+ "name" for a team)}
    return event


def error_event(
    request_id: str,
    conversation_id: str | None,
    code: ErrorCode,
    message: str,
    *,
    retry_after_s: float | None = None,
    window: int | None = None,
    month: int | None = None,
    seq: int | None = None,
    scope: str | None = None,
    budgets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    event = {**_base("error", request_id, conversation_id), "code": code, "message": message}
    if scope is not None:
        event["scope"] = scope  # which budget refused: user, team or stack
    if budgets:
        event["budgets"] = budgets  # what remains of the team's / stack's month: {scope: {usd, tokens}}
    if seq is not None:
        event["seq"] = seq
    if retry_after_s is not None:
        event["retryAfterSeconds"] = math.ceil(retry_after_s * 1000) / 1000
    if window is not None and month is not None:
        event["remaining"] = {"window": window, "month": month}
    return event


def safe_request_id(payload: Any) -> str:
    """The client's requestId when it is well formed, else a fresh one (so even rejects can be correlated)."""
    rid = payload.get("requestId") if isinstance(payload, dict) else None
    return rid if isinstance(rid, str) and re.match(_ID, rid) else new_request_id()


def safe_conversation_id(payload: Any) -> str | None:
    cid = payload.get("conversationId") if isinstance(payload, dict) else None
    return cid if isinstance(cid, str) and re.match(_ID, cid) else None
