"""The analytics pipeline's Data Firehose processing Lambda: CloudWatch Logs usage lines → NDJSON rows.

Pipeline
--------
CloudWatch Logs subscription (filter ``{ $.record_type = "usage" }``) → Data Firehose → `handler` (this module)
→ Firehose record format conversion (OpenX JSON SerDe in, Parquet out, schema from the Glue table generated from
`USAGE_RECORD_FIELDS`) → S3 under `PARTITION_PREFIX` (failures under `ERROR_PREFIX`).

Each Firehose record's ``data`` is a base64, gzip-compressed CloudWatch Logs subscription payload. `handler` answers
every input ``recordId`` exactly once, in input order:

- ``CONTROL_MESSAGE`` (CloudWatch's reachability probe): ``Dropped``.
- ``DATA_MESSAGE`` with at least one usage line: ``Ok``, data = one JSON row per usage line, each ending in ``\\n``.
- ``DATA_MESSAGE`` with no usage line: ``Dropped``.
- bad base64, not gzip, a bad JSON envelope or an unknown ``messageType``; a usage line that does not parse or
  validate; rows over the size limits below: ``ProcessingFailed`` with the original data, which Firehose writes
  under `ERROR_PREFIX` (error output type ``processing-failed``). Never dropped silently.

(``Dropped`` records also carry their original data: Firehose requires a ``data`` field and ignores it.)

A record is all or nothing: one bad usage line fails the whole record, so its good lines go to the error prefix
with it (the original payload, replayable once fixed), never half into the table and half nowhere.

Usage lines
-----------
A log event's message is a usage line when it is a JSON object whose top-level ``record_type`` is ``"usage"``:
either the whole message (Lambda's JSON log format, Powertools' own output) or the fourth field of Lambda's text
format ``timestamp<TAB>requestId<TAB>LEVEL<TAB>{json}``. Other messages (START/END/REPORT, other records, plain
text) are skipped. A message that mentions ``"record_type": "usage"`` but is not valid JSON is a broken usage line,
so it fails its record rather than vanish.

Rows
----
Each row has exactly the `USAGE_RECORD_FIELDS` keys, in that order (extra keys in the line are ignored; a missing
nullable field is ``null``; a missing non-nullable field fails). Values are coerced to the column type: ``int`` and
``bigint`` take an int, an integral float or a decimal string; ``boolean`` takes a bool or ``"true"``/``"false"``;
``string`` takes a string only. The coerced record must then pass `UsageRecord`'s own checks (ranges, the outcome
rules, ``schema_version == USAGE_SCHEMA_VERSION``); a version 1 line (no ``team``) is read as version 2 with a
null team, so lines logged by functions deployed before the change are not lost.

``ts`` is written as ``2025-01-31T12:00:00.123Z`` (UTC, milliseconds, ``Z``: `utc_timestamp`). Firehose's OpenX
JSON SerDe parses, for a ``timestamp`` column, ``yyyy-MM-dd'T'HH:mm:ss[.S]'Z'`` (fraction up to 9 digits),
``yyyy-[M]M-[d]d HH:mm:ss[.S]`` and epoch seconds/milliseconds; the record's own format is the first, so it is kept
as is and no custom ``TimestampFormats`` (Hive SerDe only) are needed. Any other ISO-8601 form in a line (an
offset, other precision) is normalised to it; a naive one is taken as UTC.

Size limits
-----------
Firehose takes a transformed record of at most 1,000 KiB (``MAX_RECORD_BYTES``, the Firehose record limit, before
base64) and a Lambda response of at most 6 MB (the synchronous invocation limit). A record may only be answered by
itself (Firehose maps records 1:1), so a record whose rows exceed ``MAX_RECORD_BYTES`` is ``ProcessingFailed`` with
reason ``record_too_large``. The response is kept under ``MAX_RESPONSE_BYTES`` (6 MB less a margin): an ``Ok``
record is only emitted when its entry, plus the failure entries of every record still to come, still fits;
otherwise it is ``ProcessingFailed`` with reason ``response_too_large``. A failure entry carries the original data,
no larger than in the request (itself under 6 MB), so the response always fits and nothing is lost: the original
data lands in the error prefix. (With CloudWatch's ~1 MB subscription batches and a 1 MB Lambda buffer hint this
is a guard, not a normal path.)

Counts
------
Each invocation logs one Powertools line ``"analytics batch"`` with ``record_type: "analytics_batch"`` and the
counts (records, ok, dropped, failed, usage rows, skipped events, failures per reason); every failure also logs a
WARNING with its ``recordId`` and reason (never the data). No PutMetricData.

Lambda code: imports only the standard library and `runtime`.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import re
import zlib
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from runtime.observability import (
    USAGE_NULLABLE_FIELDS,
    USAGE_RECORD_FIELDS,
    USAGE_RECORD_TYPE,
    USAGE_SCHEMA_VERSION,
    InvalidUsageRecordError,
    UsageRecord,
    logger,
    utc_timestamp,
)

__all__ = [
    "ERROR_PREFIX",
    "MAX_RECORD_BYTES",
    "MAX_RESPONSE_BYTES",
    "PARTITION_PREFIX",
    "error_prefix_for",
    "handler",
    "prefix_for",
    "process_event",
]

# Firehose S3 prefixes (Firehose renders !{timestamp:...} from the record's arrival time, in UTC).
PARTITION_PREFIX = "usage/year=!{timestamp:yyyy}/month=!{timestamp:MM}/day=!{timestamp:dd}/"
# An error prefix must hold !{firehose:error-output-type} when the prefix uses expressions; the type is
# "processing-failed" for this Lambda's failures and "format-conversion-failed" for Parquet conversion failures.
ERROR_PREFIX = (
    "usage-errors/!{firehose:error-output-type}/year=!{timestamp:yyyy}/month=!{timestamp:MM}/day=!{timestamp:dd}/"
)

MAX_RECORD_BYTES = 1_000 * 1024  # Firehose's record limit (before base64)
MAX_RESPONSE_BYTES = 6 * 1024 * 1024 - 64 * 1024  # Lambda's 6 MB synchronous response limit, less a margin

OK, DROPPED, FAILED = "Ok", "Dropped", "ProcessingFailed"

_USAGE_MARKER = re.compile(r'"record_type"\s*:\s*"usage"')
_INT_STRING = re.compile(r"[+-]?\d+", re.ASCII)


def _render(template: str, ts: datetime) -> str:
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC)
    return (
        template.replace("!{timestamp:yyyy}", f"{ts.year:04d}")
        .replace("!{timestamp:MM}", f"{ts.month:02d}")
        .replace("!{timestamp:dd}", f"{ts.day:02d}")
    )


def prefix_for(ts: datetime) -> str:
    """`PARTITION_PREFIX` rendered for ``ts`` (a naive datetime is UTC), e.g. ``usage/year=2026/month=01/day=05/``."""
    return _render(PARTITION_PREFIX, ts)


def error_prefix_for(ts: datetime, output_type: str = "processing-failed") -> str:
    """`ERROR_PREFIX` rendered for ``ts`` and a Firehose error output type."""
    return _render(ERROR_PREFIX, ts).replace("!{firehose:error-output-type}", output_type)


class _RecordFailure(Exception):
    """A record that must be answered ``ProcessingFailed``; ``reason`` is a short, loggable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ------------------------------------------------------------------------------------------------ decoding


def _decode_envelope(data: Any) -> dict[str, Any]:
    if not isinstance(data, str):
        raise _RecordFailure("bad_base64", "data is not a string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _RecordFailure("bad_base64", str(exc)) from None
    try:
        text = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise _RecordFailure("not_gzip", str(exc)) from None
    try:
        envelope = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _RecordFailure("bad_envelope", f"not JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise _RecordFailure("bad_envelope", "not a JSON object")
    return envelope


def _json_part(message: str) -> str | None:
    """The JSON object text of a log message: the whole message, or the 4th field of Lambda's text format."""
    text = message.strip()
    if text.startswith("{"):
        return text
    parts = text.split("\t", 3)
    if len(parts) == 4 and parts[3].lstrip().startswith("{"):
        return parts[3].strip()
    return None


def _usage_of(message: Any) -> dict[str, Any] | None:
    """The ``usage`` object of a usage line, or None for any other message. Raises on a broken usage line."""
    if not isinstance(message, str):
        return None
    text = _json_part(message)
    if text is None:
        if _USAGE_MARKER.search(message):
            raise _RecordFailure("bad_usage_line", "a usage marker outside a JSON object")
        return None
    try:
        line = json.loads(text)
    except ValueError as exc:
        if _USAGE_MARKER.search(text):
            raise _RecordFailure("bad_usage_line", f"not JSON: {exc}") from None
        return None
    if not isinstance(line, dict) or line.get("record_type") != USAGE_RECORD_TYPE:
        return None
    usage = line.get("usage")
    if not isinstance(usage, dict):
        raise _RecordFailure("bad_usage_line", "'usage' is not an object")
    return usage


# ------------------------------------------------------------------------------------------------ coercion


def _coerce(name: str, kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "string":
        if isinstance(value, str):
            return value
    elif kind in ("int", "bigint"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _INT_STRING.fullmatch(value.strip()):
            return int(value.strip())
    elif kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
    elif kind == "timestamp" and isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            return utc_timestamp(moment)
    raise InvalidUsageRecordError(f"{name}: cannot make a {kind} of {value!r}")


def _row(usage: dict[str, Any]) -> dict[str, Any]:
    """The usage object as a validated row: exactly the schema's keys, in order, coerced to the column types."""
    values: dict[str, Any] = {}
    if usage.get("schema_version") == 1 and "team" not in usage:
        # Version 1 differs only by the team it lacks: a line logged by a function deployed before it still counts.
        usage = {**usage, "schema_version": USAGE_SCHEMA_VERSION}
    for name, kind in USAGE_RECORD_FIELDS:
        if name not in usage and name not in USAGE_NULLABLE_FIELDS:
            raise InvalidUsageRecordError(f"{name} is missing")
        values[name] = _coerce(name, kind, usage.get(name))
    return UsageRecord(**values).as_dict()


class InvalidUsageLine(ValueError):
    """A log line that claims to be a usage record but breaks the usage schema."""


def usage_row(message: Any) -> dict[str, Any] | None:
    """The validated usage row of one log message, or None when it is not a usage line.

    The one parser of usage lines: the Firehose processor here and `aigw dev`'s local Parquet sink both use it.
    """
    try:
        usage = _usage_of(message)
        return None if usage is None else _row(usage)
    except (_RecordFailure, InvalidUsageRecordError) as exc:
        raise InvalidUsageLine(str(exc)) from exc


def _rows_of(envelope: dict[str, Any], counts: Counter[str]) -> list[dict[str, Any]]:
    events = envelope.get("logEvents")
    if not isinstance(events, list):
        raise _RecordFailure("bad_envelope", "logEvents is not a list")
    rows = []
    for event in events:
        message = event.get("message") if isinstance(event, dict) else None
        usage = _usage_of(message)
        if usage is None:
            counts["skipped_events"] += 1
            continue
        try:
            rows.append(_row(usage))
        except (InvalidUsageRecordError, TypeError, ValueError) as exc:
            raise _RecordFailure("invalid_usage", str(exc)) from None
    return rows


def _ndjson(rows: list[dict[str, Any]]) -> bytes:
    # ASCII escapes: valid UTF-8 whatever the strings hold (a lone surrogate from a "\ud800" escape included).
    return "".join(json.dumps(row, separators=(",", ":"), ensure_ascii=True) + "\n" for row in rows).encode("ascii")


# -------------------------------------------------------------------------------------------------- handler


def _entry(record_id: Any, result: str, data: str) -> dict[str, Any]:
    return {"recordId": record_id, "result": result, "data": data}


def _entry_size(entry: dict[str, Any]) -> int:
    return len(json.dumps(entry, separators=(",", ":"))) + 2  # plus a separator


def _transform(record: dict[str, Any], counts: Counter[str]) -> tuple[str, str]:
    """``(result, data)`` for one record; raises `_RecordFailure`."""
    envelope = _decode_envelope(record.get("data"))
    kind = envelope.get("messageType")
    if kind == "CONTROL_MESSAGE":
        counts["control_messages"] += 1
        return DROPPED, record["data"]
    if kind != "DATA_MESSAGE":
        raise _RecordFailure("bad_envelope", f"unknown messageType {kind!r}")
    rows = _rows_of(envelope, counts)
    if not rows:
        return DROPPED, record["data"]
    payload = _ndjson(rows)
    if len(payload) > MAX_RECORD_BYTES:
        raise _RecordFailure("record_too_large", f"{len(payload)} bytes of rows > {MAX_RECORD_BYTES}")
    counts["usage_rows"] += len(rows)
    return OK, base64.b64encode(payload).decode("ascii")


def process_event(event: dict[str, Any]) -> dict[str, Any]:
    """The Firehose transformation response for ``event``: one entry per input record, in order."""
    records = event.get("records")
    if not isinstance(records, list):
        raise ValueError("a Firehose transformation event has a 'records' list")
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()

    def original(record: Any) -> str:
        data = record.get("data") if isinstance(record, dict) else None
        return data if isinstance(data, str) else ""

    def record_id(record: Any) -> Any:
        return record.get("recordId") if isinstance(record, dict) else None

    # What answering each record as a failure would cost: reserved for the records still to come, so the response
    # always fits (a failure entry is no larger than the record was in the request).
    fallback_sizes = [_entry_size(_entry(record_id(r), FAILED, original(r))) for r in records]
    reserved = sum(fallback_sizes)
    used = 0
    out: list[dict[str, Any]] = []
    for index, record in enumerate(records):
        reserved -= fallback_sizes[index]
        try:
            if not isinstance(record, dict):
                raise _RecordFailure("bad_record", "not an object")
            result, data = _transform(record, counts)
            entry = _entry(record["recordId"], result, data)
            if used + _entry_size(entry) + reserved > MAX_RESPONSE_BYTES:
                raise _RecordFailure("response_too_large", f"the response would exceed {MAX_RESPONSE_BYTES} bytes")
        except _RecordFailure as failure:
            entry = _entry(record_id(record), FAILED, original(record))
            reasons[failure.reason] += 1
            logger.warning(
                "analytics record failed",
                extra={"recordId": entry["recordId"], "reason": failure.reason, "detail": failure.detail[:500]},
            )
        counts[entry["result"]] += 1
        used += _entry_size(entry)
        out.append(entry)

    logger.info(
        "analytics batch",
        extra={
            "record_type": "analytics_batch",
            "invocation_id": event.get("invocationId"),
            "records": len(records),
            "ok": counts[OK],
            "dropped": counts[DROPPED],
            "failed": counts[FAILED],
            "usage_rows": counts["usage_rows"],
            "control_messages": counts["control_messages"],
            "skipped_events": counts["skipped_events"],
            "failure_reasons": dict(reasons),
            "response_bytes": used,
        },
    )
    return {"records": out}


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Firehose processing Lambda's entry point (see the module docstring)."""
    return process_event(event)
