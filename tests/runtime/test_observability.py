"""runtime.observability: the usage-record contract, the EMF metrics and the prompt-logging switch."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import re
import threading
import typing
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import observability as obs
from runtime.observability import (
    OUTCOMES,
    REFUSAL_REASONS,
    USAGE_FIELD_TYPES,
    USAGE_NULLABLE_FIELDS,
    USAGE_RECORD_FIELDS,
    InvalidUsageRecordError,
    UsageRecord,
    emit_usage,
    log_prompt,
    logger,
    metrics,
    record_usage_metrics,
)

TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
PYTHON_TYPE_OF = {"string": str, "timestamp": str, "int": int, "bigint": int, "boolean": bool}


@pytest.fixture(autouse=True)
def _clean_observability(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("POWERTOOLS_METRICS_DISABLED", "POWERTOOLS_DEV"):
        monkeypatch.delenv(name, raising=False)
    metrics.clear_metrics()
    logger.clear_state()
    yield
    metrics.clear_metrics()
    logger.clear_state()


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line as JSON (split on "\\n" only: CloudWatch's line break, not str.splitlines')."""
    return [json.loads(line) for line in text.split("\n") if line]


def usage_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("record_type") == "usage"]


def emf_blobs(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if "_aws" in line]


def captured(action: Callable[[], None]) -> list[dict[str, Any]]:
    """Run `action`, return its stdout as JSON lines (usable inside @given, unlike capsys)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        action()
    return parse_lines(buffer.getvalue())


def make_record(**overrides: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "ts": "2025-01-31T12:00:00.123Z",
        "request_id": "req-1",
        "user_id": "3f1c2a9e-8d4b-4c1e-9a7f-2b6d5e4c3a21",
        "tier": "pro",
        "team": "platform",
        "conversation_id": "conv-1",
        "model_id": "anthropic.claude-3-haiku",
        "outcome": "completed",
        "input_tokens": 120,
        "output_tokens": 480,
        "reserved_tokens": 1000,
        "ttft_ms": 350,
        "latency_ms": 2100,
        "stop_reason": "end_turn",
        "stack": "dev",
    }
    values.update(overrides)
    return UsageRecord(**values)


def metric_values(blob: dict[str, Any]) -> dict[str, list[float]]:
    definitions = blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]
    return {d["Name"]: blob[d["Name"]] for d in definitions}


def dimension_sets(blob: dict[str, Any]) -> list[list[str]]:
    return blob["_aws"]["CloudWatchMetrics"][0]["Dimensions"]


def assert_valid_emf(blob: dict[str, Any], model_id: str) -> None:
    (directive,) = blob["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "AIGateway"
    assert directive["Dimensions"], "no dimension set"
    for dimension_set in directive["Dimensions"]:
        assert "model_id" in dimension_set
        assert "service" not in dimension_set
        for name in dimension_set:
            assert isinstance(blob[name], str)
    assert blob["model_id"] == model_id
    assert isinstance(blob["_aws"]["Timestamp"], int)


@contextlib.contextmanager
def no_warnings() -> Iterator[None]:
    """Any warning fails (Powertools warns on an empty flush or a dropped dimension)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ------------------------------------------------------------------------------------------------- the schema


def test_usage_record_fields_agree_with_the_dataclass() -> None:
    fields = dataclasses.fields(UsageRecord)
    hints = typing.get_type_hints(UsageRecord)
    assert [f.name for f in fields] == [name for name, _ in USAGE_RECORD_FIELDS]
    for name, kind in USAGE_RECORD_FIELDS:
        assert kind in USAGE_FIELD_TYPES
        hint = hints[name]
        args = typing.get_args(hint)
        nullable = type(None) in args
        assert nullable == (name in USAGE_NULLABLE_FIELDS), name
        python_type = next(a for a in args if a is not type(None)) if nullable else hint
        assert python_type is PYTHON_TYPE_OF[kind], name
    assert {name for name, _ in USAGE_RECORD_FIELDS} >= USAGE_NULLABLE_FIELDS
    assert [name for name, _ in USAGE_RECORD_FIELDS][:2] == ["schema_version", "ts"]


def test_the_record_is_frozen_and_defaults_fill_in() -> None:
    record = UsageRecord(request_id="r", user_id="u", tier="free", model_id="m", outcome="completed", stack="dev")
    assert record.schema_version == 2
    assert datetime.strptime(record.ts, TS_FORMAT)
    assert (record.input_tokens, record.cache_hit, record.conversation_id) == (0, False, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.outcome = "error"  # type: ignore[misc]


@pytest.mark.parametrize(
    "overrides",
    [
        {"outcome": "done"},
        {"outcome": "refused"},  # no reason
        {"outcome": "refused", "refusal_reason": "daily"},
        {"refusal_reason": "window"},  # reason on a completed request
        {"outcome": "error"},  # no code
        {"outcome": "error", "error_code": "  "},
        {"error_code": "Throttled"},  # code on a completed request
        {"outcome": "cached", "cache_hit": False},
        {"input_tokens": -1},
        {"input_tokens": True},
        {"output_tokens": 1.0},
        {"reserved_tokens": 2**63},
        {"ttft_ms": 2**31},
        {"latency_ms": "12"},
        {"cache_hit": 1},
        {"request_id": ""},
        {"tier": " "},
        {"stack": ""},
        {"model_id": None},
        {"request_id": None},
        {"stack": 3},
        {"conversation_id": 7},
        {"schema_version": 1},
        {"team": 7},
        {"ts": "2025-01-31T12:00:00Z"},
        {"ts": "2025-01-31T12:00:00.123+00:00"},
        {"ts": "2025-02-30T12:00:00.123Z"},
        {"ts": "2025-01-31 12:00:00.123Z"},
    ],
)
def test_a_record_that_breaks_the_contract_is_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidUsageRecordError):
        make_record(**overrides)
    assert issubclass(InvalidUsageRecordError, ValueError)


def test_user_and_model_may_be_empty_for_an_early_rejection() -> None:
    record = make_record(user_id="", model_id="", outcome="error", error_code="invalid_request")
    assert (record.user_id, record.model_id) == ("", "")


def test_utc_timestamp_format() -> None:
    moment = datetime(2025, 1, 31, 13, 0, 0, 123999, tzinfo=UTC)
    assert obs.utc_timestamp(moment) == "2025-01-31T13:00:00.123Z"
    cet = moment.astimezone(timezone(timedelta(hours=1)))
    assert obs.utc_timestamp(cet) == "2025-01-31T13:00:00.123Z"
    assert obs.utc_timestamp(datetime(5, 1, 2, 3, 4, 5)) == "0005-01-02T03:04:05.000Z"
    assert obs.utc_timestamp(1738324800.1239) == "2025-01-31T12:00:00.123Z"  # epoch seconds, as time.time()
    assert obs.utc_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert obs.utc_timestamp().endswith("Z")
    with pytest.raises(InvalidUsageRecordError):
        obs.utc_timestamp("2025-01-31")  # type: ignore[arg-type]


def test_monotonic_ms_is_an_increasing_int() -> None:
    first = obs.monotonic_ms()
    assert isinstance(first, int)
    assert obs.monotonic_ms() >= first


# ------------------------------------------------------------------------------------------------- usage line


def test_a_completed_request_writes_exactly_one_usage_line(capsys: pytest.CaptureFixture[str]) -> None:
    obs.bind_request("req-1", user_id="u-1")
    record = make_record()
    emit_usage(record)
    record_usage_metrics(record)
    lines = parse_lines(capsys.readouterr().out)

    (line,) = usage_lines(lines)
    assert line["message"] == "usage"
    assert line["level"] == "INFO"
    assert line["service"] == "ai-gateway"
    assert line["correlation_id"] == "req-1"
    usage = line["usage"]
    assert list(usage) == [name for name, _ in USAGE_RECORD_FIELDS]
    assert usage == dataclasses.asdict(record)
    for name, kind in USAGE_RECORD_FIELDS:
        if name not in ("refusal_reason", "error_code"):  # null on a completed request
            assert type(usage[name]) is PYTHON_TYPE_OF[kind], name
    assert (usage["refusal_reason"], usage["error_code"]) == (None, None)
    assert datetime.strptime(usage["ts"], TS_FORMAT)
    # Only the usage line carries the marker: a `{ $.record_type = "usage" }` filter selects exactly one line.
    assert sum(1 for item in lines if item.get("record_type") == "usage") == 1


def test_nullable_fields_are_written_as_null(capsys: pytest.CaptureFixture[str]) -> None:
    emit_usage(make_record(team=None, conversation_id=None, ttft_ms=None, latency_ms=None, stop_reason=None))
    (line,) = usage_lines(parse_lines(capsys.readouterr().out))
    assert set(line["usage"]) == {name for name, _ in USAGE_RECORD_FIELDS}
    for name in USAGE_NULLABLE_FIELDS:
        assert line["usage"][name] is None


def test_the_usage_line_survives_a_log_level_above_info(capsys: pytest.CaptureFixture[str]) -> None:
    previous = logger.log_level
    logger.setLevel("WARNING")
    try:
        logger.info("diagnostic noise")
        emit_usage(make_record())
    finally:
        logger.setLevel(previous)
    lines = parse_lines(capsys.readouterr().out)
    assert [line["message"] for line in lines] == ["usage"]
    assert lines[0]["level"] == "WARNING"


# Lambda's JSON log-level filter as its developer guide documents it: a line keeps its `level` only when that is
# a level Lambda knows and the line has an RFC 3339 `timestamp`; any other line (an EMF blob has neither) is INFO.
LAMBDA_LEVEL_ORDER = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
RFC_3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})")


def lambda_level(line: dict[str, Any]) -> str:
    level, timestamp = line.get("level"), line.get("timestamp")
    if level in LAMBDA_LEVEL_ORDER and isinstance(timestamp, str) and RFC_3339.fullmatch(timestamp):
        return str(level)
    return "INFO"


def lambda_keeps(line: dict[str, Any], application_log_level: str) -> bool:
    return LAMBDA_LEVEL_ORDER.index(lambda_level(line)) >= LAMBDA_LEVEL_ORDER.index(application_log_level)


def test_log_timestamps_are_rfc_3339(capsys: pytest.CaptureFixture[str]) -> None:
    logger.error("boom")
    (line,) = parse_lines(capsys.readouterr().out)
    assert RFC_3339.fullmatch(line["timestamp"]), line["timestamp"]
    assert lambda_level(line) == "ERROR"  # so Lambda files an error as an error, not as INFO


@pytest.mark.parametrize("log_level", ["DEBUG", "INFO", "WARNING", "ERROR"])
def test_lambda_keeps_every_metric_and_usage_record_at_every_log_level(
    log_level: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from components.functions import lambda_application_log_level

    previous = logger.log_level
    logger.setLevel(log_level)
    try:
        obs.record_request(make_record(), overshoot_tokens=0)
    finally:
        logger.setLevel(previous)
    lines = parse_lines(capsys.readouterr().out)
    assert usage_lines(lines) and emf_blobs(lines)
    application_log_level = lambda_application_log_level(log_level)
    dropped = [line for line in lines if not lambda_keeps(line, application_log_level)]
    assert dropped == []


def test_a_lone_surrogate_does_not_lose_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    record = make_record(stop_reason="bad \ud800 text", conversation_id="café")
    emit_usage(record)
    captured_out = capsys.readouterr()
    (line,) = usage_lines(parse_lines(captured_out.out))
    assert line["usage"] == dataclasses.asdict(record)
    assert "Logging error" not in captured_out.err


def test_requests_on_threads_keep_their_own_correlation_id(capsys: pytest.CaptureFixture[str]) -> None:
    # `aigw dev` runs handlers on threads: each request's lines must carry its own id, however they interleave.
    rounds, names = 50, ("req-a", "req-b", "req-c")
    barrier = threading.Barrier(len(names))

    def serve(request_id: str) -> None:
        obs.bind_request(request_id, user_id=f"user-of-{request_id}")
        for n in range(rounds):
            barrier.wait()  # every thread has bound its request before any logs this round
            logger.info("step", extra={"request_id": request_id, "n": n})

    threads = [threading.Thread(target=serve, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = [line for line in parse_lines(capsys.readouterr().out) if line.get("message") == "step"]
    assert len(lines) == rounds * len(names)
    assert all(line["correlation_id"] == line["request_id"] for line in lines)
    assert all(line["user_id"] == f"user-of-{line['request_id']}" for line in lines)


def test_bind_request_forgets_the_previous_request(capsys: pytest.CaptureFixture[str]) -> None:
    obs.bind_request("req-a", user_id="alice")
    logger.info("one")
    obs.bind_request("req-b")
    logger.info("two")
    first, second = parse_lines(capsys.readouterr().out)
    assert (first["correlation_id"], first["user_id"]) == ("req-a", "alice")
    assert second["correlation_id"] == "req-b"
    assert "user_id" not in second


def test_emit_usage_takes_only_a_usage_record() -> None:
    with pytest.raises(InvalidUsageRecordError):
        emit_usage(dataclasses.asdict(make_record()))  # type: ignore[arg-type]
    with pytest.raises(InvalidUsageRecordError):
        record_usage_metrics(dataclasses.asdict(make_record()))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- metrics


def test_a_completed_request_emits_its_metrics_under_model_id(capsys: pytest.CaptureFixture[str]) -> None:
    record = make_record()
    record_usage_metrics(record, overshoot_tokens=40, expired_reservations=2)
    lines = parse_lines(capsys.readouterr().out)
    assert usage_lines(lines) == []
    (blob,) = emf_blobs(lines)
    assert_valid_emf(blob, record.model_id)
    assert dimension_sets(blob) == [["model_id"]]
    assert metric_values(blob) == {
        "InputTokens": [120.0],
        "OutputTokens": [480.0],
        "TimeToFirstTokenMs": [350.0],
        "ResponseLatencyMs": [2100.0],
        "ReservationOvershootTokens": [40.0],
        "ExpiredReservations": [2.0],
    }
    units = {d["Name"]: d["Unit"] for d in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units == {
        "InputTokens": "Count",
        "OutputTokens": "Count",
        "TimeToFirstTokenMs": "Milliseconds",
        "ResponseLatencyMs": "Milliseconds",
        "ReservationOvershootTokens": "Count",
        "ExpiredReservations": "Count",
    }


def test_a_refusal_emits_refusals_with_a_reason_dimension(capsys: pytest.CaptureFixture[str]) -> None:
    record = make_record(
        outcome="refused", refusal_reason="monthly", input_tokens=0, output_tokens=0, ttft_ms=None, latency_ms=4
    )
    record_usage_metrics(record)
    blobs = emf_blobs(parse_lines(capsys.readouterr().out))
    for blob in blobs:
        assert_valid_emf(blob, record.model_id)
    (refusal,) = (b for b in blobs if "Refusals" in b)
    assert dimension_sets(refusal) == [["model_id", "reason"]]
    assert refusal["reason"] == "monthly"
    assert metric_values(refusal) == {"Refusals": [1.0]}
    (main,) = (b for b in blobs if "Refusals" not in b)
    assert dimension_sets(main) == [["model_id"]]
    assert metric_values(main) == {"ResponseLatencyMs": [4.0]}


def test_a_refusal_with_nothing_else_emits_a_single_blob(capsys: pytest.CaptureFixture[str]) -> None:
    record = make_record(
        outcome="refused", refusal_reason="window", input_tokens=0, output_tokens=0, ttft_ms=None, latency_ms=None
    )
    with no_warnings():
        record_usage_metrics(record)
    (blob,) = emf_blobs(parse_lines(capsys.readouterr().out))
    assert metric_values(blob) == {"Refusals": [1.0]}
    assert blob["reason"] == "window"


def test_an_error_emits_errors_with_a_code_dimension(capsys: pytest.CaptureFixture[str]) -> None:
    record = make_record(outcome="error", error_code="ModelTimeout", output_tokens=12, stop_reason=None)
    record_usage_metrics(record)
    blobs = emf_blobs(parse_lines(capsys.readouterr().out))
    assert len(blobs) == 2
    for blob in blobs:
        assert_valid_emf(blob, record.model_id)
    (error,) = (b for b in blobs if "Errors" in b)
    assert dimension_sets(error) == [["model_id", "code"]]
    assert error["code"] == "ModelTimeout"
    assert metric_values(error) == {"Errors": [1.0]}
    (main,) = (b for b in blobs if "Errors" not in b)
    assert "code" not in main and "Errors" not in metric_values(main)
    assert metric_values(main)["OutputTokens"] == [12.0]


def test_a_cached_answer_emits_cache_hits(capsys: pytest.CaptureFixture[str]) -> None:
    record = make_record(outcome="cached", cache_hit=True, input_tokens=0, output_tokens=0, ttft_ms=20, latency_ms=90)
    record_usage_metrics(record)
    (blob,) = emf_blobs(parse_lines(capsys.readouterr().out))
    assert_valid_emf(blob, record.model_id)
    assert metric_values(blob) == {"CacheHits": [1.0], "TimeToFirstTokenMs": [20.0], "ResponseLatencyMs": [90.0]}


def test_a_blank_model_id_is_the_unknown_dimension(capsys: pytest.CaptureFixture[str]) -> None:
    record = make_record(model_id="", outcome="refused", refusal_reason="window", latency_ms=3)
    with no_warnings():
        record_usage_metrics(record)
    blobs = emf_blobs(parse_lines(capsys.readouterr().out))
    assert len(blobs) == 2
    for blob in blobs:
        assert_valid_emf(blob, "unknown")


def test_record_request_writes_the_usage_line_then_the_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    record = make_record(outcome="error", error_code="model_error")
    obs.record_request(record, overshoot_tokens=3)
    lines = parse_lines(capsys.readouterr().out)
    assert lines[0]["record_type"] == "usage"
    assert lines[0]["usage"] == dataclasses.asdict(record)
    blobs = emf_blobs(lines[1:])
    assert len(blobs) == len(lines) - 1 == 2
    assert metric_values(blobs[0])["ReservationOvershootTokens"] == [3.0]
    assert metric_values(blobs[1]) == {"Errors": [1.0]}


def test_no_service_dimension_even_when_the_service_env_var_is_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "ai-gateway")
    record_usage_metrics(make_record(outcome="error", error_code="E"))
    for blob in emf_blobs(parse_lines(capsys.readouterr().out)):
        assert_valid_emf(blob, "anthropic.claude-3-haiku")


def test_disabled_metrics_print_nothing_and_leak_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    record_usage_metrics(make_record(), overshoot_tokens=5)
    assert capsys.readouterr().out == ""
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED")
    record_usage_metrics(make_record(model_id="other", input_tokens=1, output_tokens=0, ttft_ms=None, latency_ms=None))
    (blob,) = emf_blobs(parse_lines(capsys.readouterr().out))
    assert metric_values(blob) == {"InputTokens": [1.0]}
    assert blob["model_id"] == "other"


@pytest.mark.parametrize("bad", [-1, 1.5, True, None])
def test_record_usage_metrics_refuses_bad_counts(bad: Any) -> None:
    with pytest.raises(ValueError):
        record_usage_metrics(make_record(), overshoot_tokens=bad)
    with pytest.raises(ValueError):
        record_usage_metrics(make_record(), expired_reservations=bad)


def test_no_synchronous_put_metric_data() -> None:
    source = Path(obs.__file__).read_text()
    assert "put_metric_data" not in source
    assert "boto3" not in source and "botocore" not in source


# ---------------------------------------------------------------------------------------------------- prompts

SECRET_PROMPT = "zebra-prompt-7f3a"
SECRET_ANSWER = "quokka-answer-91c2"


@pytest.mark.parametrize("enabled", [False, None, "true", 1])
def test_prompts_are_not_logged_unless_enabled(
    enabled: Any, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    messages = [{"role": "user", "content": [{"type": "text", "text": SECRET_PROMPT}]}]
    obs.bind_request("req-p")
    log_prompt("req-p", messages, SECRET_ANSWER, enabled)
    record = make_record(request_id="req-p")
    emit_usage(record)
    record_usage_metrics(record)
    out = capsys.readouterr()
    for text in (out.out, out.err, caplog.text):
        assert SECRET_PROMPT not in text
        assert SECRET_ANSWER not in text
    assert not any(line.get("record_type") == "prompt" for line in parse_lines(out.out))


def test_prompts_are_logged_when_enabled(capsys: pytest.CaptureFixture[str]) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": SECRET_PROMPT}]}]
    obs.bind_request("req-p")
    log_prompt("req-p", messages, SECRET_ANSWER, True)
    (line,) = parse_lines(capsys.readouterr().out)
    assert line["record_type"] == "prompt"
    assert (line["request_id"], line["correlation_id"]) == ("req-p", "req-p")
    assert line["messages"] == messages
    assert line["answer"] == SECRET_ANSWER


# ------------------------------------------------------------------------------------------------- properties

ids = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != "")
optional_text = st.none() | st.text(max_size=40)
ints = st.integers(min_value=0, max_value=2**31 - 1)
bigints = st.integers(min_value=0, max_value=2**63 - 1)
timestamps = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)).map(
    obs.utc_timestamp
)


@st.composite
def usage_records(draw: st.DrawFn) -> UsageRecord:
    outcome = draw(st.sampled_from(OUTCOMES))
    return UsageRecord(
        ts=draw(timestamps),
        request_id=draw(ids),
        user_id=draw(st.text(max_size=40)),
        tier=draw(ids),
        conversation_id=draw(optional_text),
        model_id=draw(st.text(max_size=40)),
        outcome=outcome,
        refusal_reason=draw(st.sampled_from(REFUSAL_REASONS)) if outcome == "refused" else None,
        error_code=draw(ids) if outcome == "error" else None,
        input_tokens=draw(bigints),
        output_tokens=draw(bigints),
        reserved_tokens=draw(bigints),
        ttft_ms=draw(st.none() | ints),
        latency_ms=draw(st.none() | ints),
        cache_hit=True if outcome == "cached" else draw(st.booleans()),
        stop_reason=draw(optional_text),
        stack=draw(ids),
    )


@given(usage_records())
def test_any_record_round_trips_through_its_usage_line(record: UsageRecord) -> None:
    lines = captured(lambda: emit_usage(record))
    (line,) = usage_lines(lines)
    assert len(lines) == 1
    assert list(line["usage"]) == [name for name, _ in USAGE_RECORD_FIELDS]
    assert UsageRecord(**line["usage"]) == record
    for name, kind in USAGE_RECORD_FIELDS:
        value = line["usage"][name]
        assert value is None or type(value) is PYTHON_TYPE_OF[kind]


@given(usage_records(), st.integers(0, 10**6), st.integers(0, 100))
def test_any_record_emits_valid_emf_with_model_id(record: UsageRecord, overshoot: int, expired: int) -> None:
    lines = captured(lambda: record_usage_metrics(record, overshoot_tokens=overshoot, expired_reservations=expired))
    blobs = emf_blobs(lines)
    assert len(blobs) == len(lines)
    for blob in blobs:
        assert_valid_emf(blob, record.model_id if record.model_id.strip() else "unknown")
    by_name: dict[str, list[float]] = {}
    for blob in blobs:
        for name, values in metric_values(blob).items():
            assert name not in by_name, "a metric in two blobs"
            by_name[name] = values
    assert ("Refusals" in by_name) == (record.outcome == "refused")
    assert ("Errors" in by_name) == (record.outcome == "error")
    assert ("CacheHits" in by_name) == record.cache_hit
    if record.input_tokens:
        assert by_name["InputTokens"] == [float(record.input_tokens)]
    if record.latency_ms is not None:
        assert by_name["ResponseLatencyMs"] == [float(record.latency_ms)]
    for blob in blobs:
        extra = {name for dims in dimension_sets(blob) for name in dims} - {"model_id"}
        if "Refusals" in blob:
            assert extra == {"reason"} and blob["reason"] == record.refusal_reason
        elif "Errors" in blob:
            assert extra == {"code"} and blob["code"] == record.error_code
        else:
            assert extra == set()
