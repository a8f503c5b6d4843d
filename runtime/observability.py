"""The gateway's logs and metrics, shared by the Lambda handlers (gatekeeper, worker).

Logs
----
`logger` is a Powertools `Logger`: one JSON object per line on stdout, service ``ai-gateway``
(``POWERTOOLS_SERVICE_NAME`` overrides it; ``POWERTOOLS_LOG_LEVEL``, ``POWERTOOLS_LOGGER_SAMPLE_RATE`` and Lambda's
``AWS_LAMBDA_LOG_LEVEL`` apply as usual). A handler starts each request with `bind_request`, which drops the
previous request's keys (Lambda reuses the process) and makes the request id the ``correlation_id`` of every line.
Lines are always compact (one line each, whatever ``POWERTOOLS_DEV`` says) and stay valid UTF-8 even when a value
holds a lone surrogate (which ``json.loads`` produces from a ``"\\ud800"`` escape): such a line falls back to ASCII
escapes instead of failing to encode and being lost.

Usage records: the analytics contract
-------------------------------------
Every request ends in exactly one `UsageRecord` (outcome ``completed``, ``cached``, ``refused`` or ``error``),
written by `emit_usage` as ONE log line::

    {"level":"INFO", ..., "message":"usage", "record_type":"usage", "usage":{"schema_version":1, "ts":..., ...}}

``record_type`` is a top-level marker, so the CloudWatch Logs subscription filter ``{ $.record_type = "usage" }``
selects exactly these lines; ``usage`` is the record as a flat object, keys in `USAGE_RECORD_FIELDS` order, null
for an absent nullable field. The line is written at INFO, or at the logger's level when that is higher (a
``WARNING`` level must not silently drop billing data, and Lambda's log-level filter looks at the line's level).

The schema is data: `USAGE_RECORD_FIELDS` lists ``(name, type)`` pairs with types from `USAGE_FIELD_TYPES`
(``string``, ``int`` = 32-bit signed, ``bigint`` = 64-bit signed, ``boolean``, ``timestamp`` = ISO-8601 UTC with
milliseconds and ``Z``, e.g. ``2025-01-31T12:00:00.123Z``), and `USAGE_NULLABLE_FIELDS` the fields that may be
null; a Glue table is generated from them. Changing the fields means bumping `USAGE_SCHEMA_VERSION`.

`UsageRecord` checks itself when built and raises `InvalidUsageRecordError` (a ``ValueError``) for a record that
would break the contract: a wrong type (``bool`` is not an ``int``), a negative count, an ``int`` beyond its
column's range, a blank ``request_id``, ``tier``, ``stack`` or ``error_code`` (``user_id`` and ``model_id`` may be
empty: the gatekeeper rejects some requests before it knows them), a malformed ``ts``, or fields that contradict
the outcome (``refusal_reason`` is set exactly when refused, ``error_code`` exactly when error, a ``cached`` record
has ``cache_hit``).

Prompts and answers
-------------------
Their text is logged only through `log_prompt`, and only when its ``enabled`` is ``True`` itself (the stack's
``logPrompts``); anything else, a truthy string included, logs nothing.

Metrics
-------
`metrics` is a Powertools `Metrics` writing CloudWatch EMF to stdout (no PutMetricData call, ever), namespace
``AIGateway`` (``POWERTOOLS_METRICS_NAMESPACE`` overrides it; ``POWERTOOLS_METRICS_DISABLED`` turns them off).
It adds no ``service`` dimension, whatever ``POWERTOOLS_SERVICE_NAME`` says: the dimension sets are exactly

=================================================================  ============  ===========================
metric                                                             unit          dimensions
=================================================================  ============  ===========================
InputTokens, OutputTokens (when > 0)                               Count         model_id
TimeToFirstTokenMs, ResponseLatencyMs (when not null)              Milliseconds  model_id
CacheHits (1 when cache_hit)                                       Count         model_id
ReservationOvershootTokens, ExpiredReservations (when > 0)         Count         model_id
Refusals (1 when refused)                                          Count         model_id, reason
Errors (1 when error)                                              Count         model_id, code
PublishFailures (events AppSync still refused after one retry)     Count         (none)
SpendUsd (a priced request's cost, catalog prices)                 None          team (``none`` without one)
StackBudgetUsedPercent (after each request under the ceiling)      Percent       (none)
=================================================================  ============  ===========================

`record_usage_metrics` turns one record into these and flushes them itself (handlers use no decorator), one EMF
blob per dimension set, so sets never mix; a blank ``model_id`` becomes the dimension value ``unknown``. It
flushes, with the first blob, whatever else is pending in `metrics`, and leaves `metrics` empty even when metrics
are disabled or a flush fails. `record_request` is the one call a handler makes at the end of a request:
`emit_usage`, then `record_usage_metrics`. ``PublishFailures`` is not a request's: the publishing shell,
`runtime.handlers.publish`, counts it with `record_publish_failures`, on a blob of its own; the worker reports
money with `record_spend` (its own blobs too: the team dimension never mixes with model_id).

Lambda code: imports only the standard library and Powertools. Import creates the two objects and nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.logging import Logger
from aws_lambda_powertools.metrics import Metrics, MetricUnit

from runtime.errors import InvalidInputError

__all__ = [
    "METRICS_NAMESPACE",
    "OUTCOMES",
    "PUBLISH_FAILURES_METRIC",
    "REFUSAL_REASONS",
    "SERVICE_NAME",
    "UNKNOWN_MODEL",
    "USAGE_FIELD_TYPES",
    "USAGE_NULLABLE_FIELDS",
    "USAGE_RECORD_FIELDS",
    "USAGE_RECORD_TYPE",
    "USAGE_SCHEMA_VERSION",
    "InvalidUsageRecordError",
    "UsageRecord",
    "bind_request",
    "emit_usage",
    "log_prompt",
    "logger",
    "metrics",
    "monotonic_ms",
    "record_publish_failures",
    "record_request",
    "record_usage_metrics",
    "utc_timestamp",
]

SERVICE_NAME = "ai-gateway"
METRICS_NAMESPACE = "AIGateway"
# Events AppSync refused (a 200 answer's `failed`) and refused again on the one retry.
PUBLISH_FAILURES_METRIC = "PublishFailures"
# The model_id dimension value of a record whose model_id is blank (a request rejected before its model was known).
UNKNOWN_MODEL = "unknown"

USAGE_SCHEMA_VERSION = 2  # 2: team
USAGE_RECORD_TYPE = "usage"
OUTCOMES = ("completed", "cached", "refused", "error")
# team: its month; team_window: its rolling window; contention: too many at once.
REFUSAL_REASONS = ("window", "monthly", "team", "team_window", "stack", "contention")

USAGE_FIELD_TYPES = ("string", "int", "bigint", "boolean", "timestamp")

USAGE_RECORD_FIELDS: tuple[tuple[str, str], ...] = (
    ("schema_version", "int"),
    ("ts", "timestamp"),
    ("request_id", "string"),
    ("user_id", "string"),
    ("tier", "string"),
    ("team", "string"),
    ("conversation_id", "string"),
    ("model_id", "string"),
    ("outcome", "string"),
    ("refusal_reason", "string"),
    ("error_code", "string"),
    ("input_tokens", "bigint"),
    ("output_tokens", "bigint"),
    ("reserved_tokens", "bigint"),
    ("ttft_ms", "int"),
    ("latency_ms", "int"),
    ("cache_hit", "boolean"),
    ("stop_reason", "string"),
    ("stack", "string"),
)

USAGE_NULLABLE_FIELDS: frozenset[str] = frozenset(
    {"team", "conversation_id", "refusal_reason", "error_code", "ttft_ms", "latency_ms", "stop_reason"}
)

# Never blank. user_id and model_id may be "": the gatekeeper rejects some requests before it knows either.
# error_code is a dimension value (Powertools skips a blank one, with a warning).
_NON_BLANK_FIELDS = frozenset({"request_id", "tier", "stack", "error_code"})
_INT_RANGES = {"int": 2**31 - 1, "bigint": 2**63 - 1}
_TS_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", re.ASCII)


class InvalidUsageRecordError(InvalidInputError):
    """A usage record that breaks the schema (types, ranges, timestamp format) or contradicts its outcome."""


# ---------------------------------------------------------------------------------------------------------- logs


class _CurrentStdout:
    """Writes to whatever ``sys.stdout`` is at write time, as the EMF ``print`` does, so logs and metrics always
    land in the same place (also under ``contextlib.redirect_stdout`` and pytest's capture)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def _dumps(log: dict[str, Any]) -> str:
    text = json.dumps(log, default=str, separators=(",", ":"), ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: not writable as UTF-8, but fine as a \udxxx escape
            text = json.dumps(log, default=str, separators=(",", ":"), ensure_ascii=True)
    return text


logger = Logger(
    service=os.environ.get("POWERTOOLS_SERVICE_NAME") or SERVICE_NAME,
    stream=_CurrentStdout(),  # type: ignore[arg-type]
    json_serializer=_dumps,
    utc=True,
    # Lambda's JSON log filtering needs an RFC 3339 timestamp; Powertools' default ("2025-01-31 12:00:00,123+0000")
    # is not one, and Lambda would file every such line as INFO.
    use_rfc3339=True,
)

# service="" (not None): no `service` dimension, even when POWERTOOLS_SERVICE_NAME is set.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or METRICS_NAMESPACE, service="")


def bind_request(request_id: str, **keys: Any) -> None:
    """Start a request's log context: forget the previous request's keys, make ``request_id`` the correlation id
    of every following line, and append ``keys`` (e.g. ``user_id``) to them.

    The keys are Powertools' thread-safe (context-local) ones, not ``set_correlation_id``'s process-global ones:
    in Lambda a process serves one request at a time either way, but `aigw dev` runs handlers on threads, where
    global keys let one request's lines carry another's correlation id."""
    logger.thread_safe_clear_keys()
    logger.thread_safe_append_keys(correlation_id=request_id, **keys)


def log_prompt(request_id: str, messages: Any, answer: str | None, enabled: bool) -> None:
    """Log a request's messages and answer, only if ``enabled is True`` (the stack's ``logPrompts``).

    Fails closed: ``False``, ``None``, ``"true"`` or anything else that is not the boolean ``True`` logs nothing.
    The line carries ``"record_type": "prompt"``, so the usage subscription filter never selects it.
    """
    if enabled is not True:
        return
    logger.info(
        "prompt",
        extra={"record_type": "prompt", "request_id": request_id, "messages": messages, "answer": answer},
    )


# ----------------------------------------------------------------------------------------------- usage record


def utc_timestamp(moment: datetime | float | None = None) -> str:
    """``moment`` (default: now) as the record's ``ts``: ISO-8601 UTC, milliseconds (truncated), ``Z``.

    ``moment`` is a datetime (a naive one is taken to be UTC) or epoch seconds (``time.time()``).
    """
    if moment is None:
        moment = datetime.now(UTC)
    elif isinstance(moment, int | float) and not isinstance(moment, bool):
        moment = datetime.fromtimestamp(moment, UTC)
    elif not isinstance(moment, datetime):
        raise InvalidUsageRecordError(f"a timestamp is a datetime or epoch seconds, got {type(moment).__name__}")
    elif moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def monotonic_ms() -> int:
    """A monotonic clock in whole milliseconds, for ``ttft_ms`` and ``latency_ms`` (differences only)."""
    return time.monotonic_ns() // 1_000_000


def _check_field(name: str, kind: str, value: Any) -> None:
    if value is None:
        if name not in USAGE_NULLABLE_FIELDS:
            raise InvalidUsageRecordError(f"{name} may not be null")
        return
    if kind in ("string", "timestamp"):
        if not isinstance(value, str):
            raise InvalidUsageRecordError(f"{name} must be a string, got {type(value).__name__}")
        if name in _NON_BLANK_FIELDS and not value.strip():
            raise InvalidUsageRecordError(f"{name} may not be blank")
        if kind == "timestamp" and not _valid_ts(value):
            raise InvalidUsageRecordError(f"{name} must look like 2025-01-31T12:00:00.123Z, got {value!r}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise InvalidUsageRecordError(f"{name} must be a bool, got {type(value).__name__}")
    else:  # int, bigint
        if type(value) is not int:
            raise InvalidUsageRecordError(f"{name} must be an int, got {type(value).__name__}")
        if not 0 <= value <= _INT_RANGES[kind]:
            raise InvalidUsageRecordError(f"{name} must be between 0 and {_INT_RANGES[kind]}, got {value}")


def _valid_ts(value: str) -> bool:
    if not _TS_PATTERN.fullmatch(value):
        return False
    try:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    """One request's usage: the analytics contract (see the module docstring). Keyword arguments only; fields
    in `USAGE_RECORD_FIELDS` order. Raises `InvalidUsageRecordError` when the record breaks the contract."""

    schema_version: int = USAGE_SCHEMA_VERSION
    ts: str = field(default_factory=utc_timestamp)
    request_id: str
    user_id: str
    tier: str
    team: str | None = None  # the user's team (Cognito group team:<name>), for cost by team
    conversation_id: str | None = None
    model_id: str
    outcome: str
    refusal_reason: str | None = None
    error_code: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    reserved_tokens: int = 0
    ttft_ms: int | None = None
    latency_ms: int | None = None
    cache_hit: bool = False
    stop_reason: str | None = None
    stack: str

    def __post_init__(self) -> None:
        for name, kind in USAGE_RECORD_FIELDS:
            _check_field(name, kind, getattr(self, name))
        if self.schema_version != USAGE_SCHEMA_VERSION:
            raise InvalidUsageRecordError(f"schema_version must be {USAGE_SCHEMA_VERSION}, got {self.schema_version}")
        if self.outcome not in OUTCOMES:
            raise InvalidUsageRecordError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")
        if self.refusal_reason is not None and self.refusal_reason not in REFUSAL_REASONS:
            raise InvalidUsageRecordError(f"refusal_reason must be one of {REFUSAL_REASONS} or None")
        if (self.outcome == "refused") != (self.refusal_reason is not None):
            raise InvalidUsageRecordError("refusal_reason is set exactly when the outcome is 'refused'")
        if (self.outcome == "error") != (self.error_code is not None):
            raise InvalidUsageRecordError("error_code is set exactly when the outcome is 'error'")
        if self.outcome == "cached" and not self.cache_hit:
            raise InvalidUsageRecordError("a 'cached' outcome has cache_hit=True")

    def as_dict(self) -> dict[str, Any]:
        """The record as the flat JSON object of the usage line, keys in `USAGE_RECORD_FIELDS` order."""
        return {name: getattr(self, name) for name, _ in USAGE_RECORD_FIELDS}


def emit_usage(record: UsageRecord) -> None:
    """Write ``record`` as one log line: ``"record_type": "usage"`` at top level, the record under ``"usage"``.

    At INFO, or at the logger's own level when higher, so no log-level setting drops it.
    """
    if not isinstance(record, UsageRecord):
        raise InvalidUsageRecordError(f"emit_usage takes a UsageRecord, got {type(record).__name__}")
    level = max(logging.INFO, logger.log_level)
    # Straight to the std logger: past Powertools' log buffer (when configured), which could hold it back or drop it.
    logging.getLogger(logger.name).log(
        level,
        USAGE_RECORD_TYPE,
        extra={"record_type": USAGE_RECORD_TYPE, "usage": record.as_dict()},
        stacklevel=2,
    )


# ---------------------------------------------------------------------------------------------------- metrics


def _non_negative_int(name: str, value: Any) -> int:
    if type(value) is not int or value < 0:
        raise InvalidInputError(f"{name} must be a non-negative int, got {value!r}")
    return value


def record_usage_metrics(record: UsageRecord, *, overshoot_tokens: int = 0, expired_reservations: int = 0) -> None:
    """Turn ``record`` into the EMF metrics of the module docstring and flush them to stdout now.

    ``overshoot_tokens``: tokens used beyond the reservation (``ReservationOvershootTokens``);
    ``expired_reservations``: expired reservations this request found and released (``ExpiredReservations``).
    """
    if not isinstance(record, UsageRecord):
        raise InvalidUsageRecordError(f"record_usage_metrics takes a UsageRecord, got {type(record).__name__}")
    _non_negative_int("overshoot_tokens", overshoot_tokens)
    _non_negative_int("expired_reservations", expired_reservations)

    count, ms = MetricUnit.Count, MetricUnit.Milliseconds
    main: list[tuple[str, MetricUnit, int]] = []
    if record.input_tokens > 0:
        main.append(("InputTokens", count, record.input_tokens))
    if record.output_tokens > 0:
        main.append(("OutputTokens", count, record.output_tokens))
    if record.ttft_ms is not None:
        main.append(("TimeToFirstTokenMs", ms, record.ttft_ms))
    if record.latency_ms is not None:
        main.append(("ResponseLatencyMs", ms, record.latency_ms))
    if record.cache_hit:
        main.append(("CacheHits", count, 1))
    if overshoot_tokens > 0:
        main.append(("ReservationOvershootTokens", count, overshoot_tokens))
    if expired_reservations > 0:
        main.append(("ExpiredReservations", count, expired_reservations))

    blobs: list[tuple[dict[str, str], list[tuple[str, MetricUnit, int]]]] = [({}, main)]
    if record.refusal_reason is not None:
        blobs.append(({"reason": record.refusal_reason}, [("Refusals", count, 1)]))
    if record.error_code is not None:
        blobs.append(({"code": record.error_code}, [("Errors", count, 1)]))

    model_dimension = record.model_id if record.model_id.strip() else UNKNOWN_MODEL
    try:
        for extra_dimensions, values in blobs:
            if not values:
                continue
            metrics.add_dimension(name="model_id", value=model_dimension)
            for dimension, dimension_value in extra_dimensions.items():
                metrics.add_dimension(name=dimension, value=dimension_value)
            for name, unit, value in values:
                metrics.add_metric(name=name, unit=unit, value=value)
            metrics.flush_metrics()
    finally:
        # flush_metrics keeps everything when metrics are disabled, and nothing may leak into the next request.
        metrics.clear_metrics()


SPEND_METRIC = "SpendUsd"
STACK_BUDGET_METRIC = "StackBudgetUsedPercent"
NO_TEAM = "none"  # the team dimension of a request whose user is in no team


def record_spend(*, team: str | None, usd: float, stack_used_pct: float | None = None) -> None:
    """One request's cost by team, and how much of the stack's monthly ceiling is used (for the 80 % alarm)."""
    if not (isinstance(usd, int | float) and usd >= 0) or isinstance(usd, bool):
        raise InvalidUsageRecordError(f"usd must be a non-negative number, got {usd!r}")
    blobs: list[tuple[dict[str, str], str, MetricUnit, float]] = [
        ({"team": team or NO_TEAM}, SPEND_METRIC, MetricUnit.NoUnit, usd)
    ]
    if stack_used_pct is not None:
        blobs.append(({}, STACK_BUDGET_METRIC, MetricUnit.Percent, stack_used_pct))
    for dimensions, name, unit, value in blobs:
        try:
            for dimension, dimension_value in dimensions.items():
                metrics.add_dimension(name=dimension, value=dimension_value)
            metrics.add_metric(name=name, unit=unit, value=value)
            metrics.flush_metrics()
        finally:
            metrics.clear_metrics()  # flush keeps everything when metrics are disabled: never mix the two


def record_publish_failures(count: int) -> None:
    """Count events AppSync refused twice (``PublishFailures``, no dimensions) and flush them now, on their own."""
    _non_negative_int("count", count)
    if count == 0:
        return
    try:
        metrics.add_metric(name=PUBLISH_FAILURES_METRIC, unit=MetricUnit.Count, value=count)
        metrics.flush_metrics()
    finally:
        metrics.clear_metrics()  # flush keeps everything when metrics are disabled


def record_request(record: UsageRecord, *, overshoot_tokens: int = 0, expired_reservations: int = 0) -> None:
    """The end of a request: `emit_usage` (first: the contract), then `record_usage_metrics`."""
    emit_usage(record)
    record_usage_metrics(record, overshoot_tokens=overshoot_tokens, expired_reservations=expired_reservations)
