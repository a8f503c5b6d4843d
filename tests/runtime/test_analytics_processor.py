"""runtime.analytics: the Firehose processing Lambda (CloudWatch Logs usage lines → NDJSON rows for Parquet)."""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import json
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from runtime import analytics
from runtime.analytics import (
    ERROR_PREFIX,
    MAX_RECORD_BYTES,
    PARTITION_PREFIX,
    error_prefix_for,
    handler,
    prefix_for,
)
from runtime.observability import USAGE_NULLABLE_FIELDS, USAGE_RECORD_FIELDS, UsageRecord, logger

FIELD_NAMES = [name for name, _ in USAGE_RECORD_FIELDS]
PYTHON_TYPE_OF = {"string": str, "timestamp": str, "int": int, "bigint": int, "boolean": bool}


@pytest.fixture(autouse=True)
def _clean_logger() -> Any:
    logger.clear_state()
    yield
    logger.clear_state()


# ----------------------------------------------------------------------------------------------- builders


def usage(**overrides: Any) -> dict[str, Any]:
    base = UsageRecord(
        ts="2026-01-05T10:11:12.345Z",
        request_id="req-1",
        user_id="user-1",
        tier="standard",
        conversation_id="conv-1",
        model_id="anthropic.claude",
        outcome="completed",
        input_tokens=12,
        output_tokens=34,
        reserved_tokens=100,
        ttft_ms=120,
        latency_ms=900,
        stop_reason="end_turn",
        stack="dev",
    ).as_dict()
    base.update(overrides)
    return base


def usage_line(record: dict[str, Any] | None = None, **overrides: Any) -> str:
    """A Powertools usage line as `emit_usage` writes it."""
    return json.dumps(
        {
            "level": "INFO",
            "location": "emit_usage:1",
            "message": "usage",
            "timestamp": "2026-01-05 10:11:12,345+0000",
            "service": "ai-gateway",
            "correlation_id": "req-1",
            "record_type": "usage",
            "usage": record if record is not None else usage(**overrides),
        },
        separators=(",", ":"),
    )


def tab_form(line: str, request_id: str = "8f5c-aws-req") -> str:
    return f"2026-01-05T10:11:12.345Z\t{request_id}\tINFO\t{line}\n"


def cwl_payload(messages: list[str], message_type: str = "DATA_MESSAGE") -> dict[str, Any]:
    return {
        "messageType": message_type,
        "owner": "123456789012",
        "logGroup": "/aws/lambda/ai-gateway-worker" if message_type == "DATA_MESSAGE" else "",
        "logStream": "2026/01/05/[$LATEST]abc" if message_type == "DATA_MESSAGE" else "",
        "subscriptionFilters": ["usage"] if message_type == "DATA_MESSAGE" else [],
        "logEvents": [
            {"id": str(36000000000000000000000000 + i), "timestamp": 1767607872345 + i, "message": m}
            for i, m in enumerate(messages)
        ],
    }


def encode(payload: Any, *, compress: bool = True) -> str:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return base64.b64encode(gzip.compress(raw) if compress else raw).decode()


def control_message() -> dict[str, Any]:
    return cwl_payload(["CWL CONTROL MESSAGE: Checking health of destination Firehose."], "CONTROL_MESSAGE")


def event_of(*datas: str) -> dict[str, Any]:
    return {
        "invocationId": "inv-1",
        "deliveryStreamArn": "arn:aws:firehose:us-east-1:123456789012:deliverystream/usage",
        "region": "us-east-1",
        "records": [
            {"recordId": f"rec-{i}", "approximateArrivalTimestamp": 1767607872345, "data": d}
            for i, d in enumerate(datas)
        ],
    }


def run(event: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The handler's response and its log lines."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        response = handler(event, None)
    return response, [json.loads(line) for line in out.getvalue().split("\n") if line]


def rows_of(entry: dict[str, Any]) -> list[dict[str, Any]]:
    text = base64.b64decode(entry["data"]).decode("utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.split("\n")[:-1]]


def assert_row_schema(row: dict[str, Any]) -> None:
    assert list(row) == FIELD_NAMES
    for name, kind in USAGE_RECORD_FIELDS:
        value = row[name]
        if value is None:
            assert name in USAGE_NULLABLE_FIELDS
        else:
            assert type(value) is PYTHON_TYPE_OF[kind], (name, value)
    datetime.strptime(row["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")  # what OpenX's yyyy-MM-dd'T'HH:mm:ss[.S]'Z' reads


def assert_answered_once(event: dict[str, Any], response: dict[str, Any]) -> None:
    assert [e["recordId"] for e in response["records"]] == [r["recordId"] for r in event["records"]]
    assert set(response) == {"records"}
    for entry in response["records"]:
        assert set(entry) == {"recordId", "result", "data"}
        assert entry["result"] in ("Ok", "Dropped", "ProcessingFailed")


# ---------------------------------------------------------------------------------------------------- tests


def test_a_mixed_batch_is_answered_record_by_record() -> None:
    good = usage_line()
    refused = usage_line(
        request_id="req-2",
        outcome="refused",
        refusal_reason="window",
        conversation_id=None,
        ttft_ms=None,
        latency_ms=None,
        stop_reason=None,
        input_tokens=0,
        output_tokens=0,
    )
    datas = [
        # 0: a data message, several events: usage lines, in both forms, among other lines
        encode(
            cwl_payload(
                [
                    "START RequestId: 8f5c Version: $LATEST\n",
                    good,
                    json.dumps({"level": "INFO", "message": "bedrock call", "record_type": "prompt"}),
                    tab_form(refused),
                    "REPORT RequestId: 8f5c Duration: 12.3 ms\n",
                ]
            )
        ),
        encode(control_message()),  # 1
        encode(cwl_payload(["START RequestId: x\n", json.dumps({"level": "INFO", "message": "hi"})])),  # 2
        encode(cwl_payload([good, '{"record_type":"usage","usage":{"request_id":'])),  # 3: malformed usage JSON
        base64.b64encode(b"not gzip at all").decode(),  # 4
        "%%% not base64 %%%",  # 5
        encode(b"{not json", compress=True),  # 6: gzip, but not a JSON envelope
        encode(cwl_payload([usage_line(outcome="teleported")])),  # 7: parses, fails validation
        encode(cwl_payload([tab_form(usage_line(request_id="req-3"))])),  # 8: tab form only
    ]
    event = event_of(*datas)
    response, logs = run(event)
    assert_answered_once(event, response)
    results = [e["result"] for e in response["records"]]
    assert results == [
        "Ok",
        "Dropped",
        "Dropped",
        "ProcessingFailed",
        "ProcessingFailed",
        "ProcessingFailed",
        "ProcessingFailed",
        "ProcessingFailed",
        "Ok",
    ]

    rows = rows_of(response["records"][0])
    assert [r["request_id"] for r in rows] == ["req-1", "req-2"]
    for row in rows:
        assert_row_schema(row)
    assert rows[0] == usage()
    assert rows[1]["refusal_reason"] == "window" and rows[1]["conversation_id"] is None
    assert [r["request_id"] for r in rows_of(response["records"][8])] == ["req-3"]

    # Failures hand back the original data, for Firehose's error prefix: never dropped silently.
    for i in (3, 4, 5, 6, 7):
        assert response["records"][i]["data"] == datas[i]

    batch = [line for line in logs if line.get("message") == "analytics batch"]
    assert len(batch) == 1
    assert batch[0]["record_type"] == "analytics_batch"
    assert (batch[0]["records"], batch[0]["ok"], batch[0]["dropped"], batch[0]["failed"]) == (9, 2, 2, 5)
    assert batch[0]["usage_rows"] == 3 and batch[0]["control_messages"] == 1
    assert batch[0]["failure_reasons"] == {
        "bad_usage_line": 1,
        "not_gzip": 1,
        "bad_base64": 1,
        "bad_envelope": 1,
        "invalid_usage": 1,
    }
    warnings = [line for line in logs if line.get("message") == "analytics record failed"]
    assert sorted(w["recordId"] for w in warnings) == ["rec-3", "rec-4", "rec-5", "rec-6", "rec-7"]
    assert all(line.get("record_type") != "usage" for line in logs)  # never re-selected by the usage filter


def test_missing_optional_fields_become_null_and_types_are_coerced() -> None:
    record = usage()
    for name in ("conversation_id", "ttft_ms", "latency_ms", "stop_reason", "refusal_reason", "error_code"):
        record.pop(name)
    record.update(input_tokens="12", output_tokens=34.0, cache_hit="false", ts="2026-01-05T11:11:12.345678+01:00")
    record["extra_key"] = "ignored"
    response, _ = run(event_of(encode(cwl_payload([usage_line(record)]))))
    [row] = rows_of(response["records"][0])
    assert_row_schema(row)
    assert row["input_tokens"] == 12 and row["output_tokens"] == 34 and row["cache_hit"] is False
    assert row["ts"] == "2026-01-05T10:11:12.345Z"
    for name in ("conversation_id", "ttft_ms", "latency_ms", "stop_reason", "refusal_reason", "error_code"):
        assert row[name] is None


@pytest.mark.parametrize(
    "change",
    [
        {"input_tokens": -1},
        {"input_tokens": True},
        {"input_tokens": "12.5"},
        {"ttft_ms": 2**31},
        {"ts": "yesterday"},
        {"ts": 1767607872},
        {"request_id": 7},
        {"cache_hit": "maybe"},
        {"schema_version": 3},
        {"outcome": "error"},  # an error without error_code
    ],
)
def test_an_invalid_usage_line_fails_its_record(change: dict[str, Any]) -> None:
    data = encode(cwl_payload([usage_line(request_id="ok"), usage_line(**change)]))
    response, _ = run(event_of(data))
    assert response["records"] == [{"recordId": "rec-0", "result": "ProcessingFailed", "data": data}]


def test_a_version_1_line_from_a_function_deployed_before_teams_is_read_with_a_null_team() -> None:
    old = usage(team="ignored")
    old.pop("team")
    old["schema_version"] = 1
    response, _ = run(event_of(encode(cwl_payload([usage_line(old)]))))
    [record] = response["records"]
    assert record["result"] == "Ok"
    rows = [json.loads(line) for line in base64.b64decode(record["data"]).decode().splitlines()]
    assert [(r["schema_version"], r["team"], r["request_id"]) for r in rows] == [(2, None, "req-1")]


@pytest.mark.parametrize("missing", ["request_id", "ts", "schema_version", "cache_hit"])
def test_a_missing_required_field_fails_its_record(missing: str) -> None:
    record = usage()
    record.pop(missing)
    response, _ = run(event_of(encode(cwl_payload([usage_line(record)]))))
    assert response["records"][0]["result"] == "ProcessingFailed"


@pytest.mark.parametrize(
    "envelope",
    [
        [1, 2],
        {"messageType": "SOMETHING_ELSE", "logEvents": []},
        {"messageType": "DATA_MESSAGE", "logEvents": "nope"},
        {"messageType": "DATA_MESSAGE", "logEvents": [{"message": '{"record_type":"usage","usage":"x"}'}]},
        {"messageType": "DATA_MESSAGE", "logEvents": [{"message": 'x {"record_type": "usage", "usage": {}}'}]},
    ],
)
def test_a_bad_envelope_or_usage_shape_fails(envelope: Any) -> None:
    data = encode(envelope)
    response, _ = run(event_of(data))
    assert response["records"] == [{"recordId": "rec-0", "result": "ProcessingFailed", "data": data}]


def test_an_output_record_over_the_firehose_record_limit_fails() -> None:
    # Many large usage lines in one subscription payload: the gzip input is small, the rows are not.
    line = usage_line(conversation_id="c" * 20_000)
    count = MAX_RECORD_BYTES // 20_000 + 2
    data = encode(cwl_payload([line] * count))
    small = encode(cwl_payload([usage_line()]))
    response, logs = run(event_of(data, small))
    assert [e["result"] for e in response["records"]] == ["ProcessingFailed", "Ok"]
    assert response["records"][0]["data"] == data
    [warning] = [line for line in logs if line.get("message") == "analytics record failed"]
    assert warning["reason"] == "record_too_large" and warning["recordId"] == "rec-0"


def test_the_response_stays_under_the_lambda_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Scaled down: a 40 KB response budget, records whose rows are ~10 KB each (their gzip input is tiny).
    monkeypatch.setattr(analytics, "MAX_RESPONSE_BYTES", 40_000)
    datas = [encode(cwl_payload([usage_line(request_id=f"r{i}", conversation_id="c" * 7_000)])) for i in range(8)]
    event = event_of(*datas)
    response, logs = run(event)
    assert_answered_once(event, response)
    results = [e["result"] for e in response["records"]]
    assert results[0] == "Ok" and "ProcessingFailed" in results
    assert len(json.dumps(response, separators=(",", ":"))) <= 40_000
    for entry, data in zip(response["records"], datas, strict=True):
        if entry["result"] == "ProcessingFailed":
            assert entry["data"] == data
    [batch] = [line for line in logs if line.get("message") == "analytics batch"]
    assert batch["failure_reasons"] == {"response_too_large": results.count("ProcessingFailed")}


def test_random_batches_answer_every_record_exactly_once() -> None:
    rng = random.Random(7)
    makers = [
        lambda i: encode(control_message()),
        lambda i: encode(cwl_payload([usage_line(request_id=f"q{i}")] * rng.randint(1, 4))),
        lambda i: encode(cwl_payload([tab_form(usage_line(request_id=f"t{i}")), "END RequestId: x\n"])),
        lambda i: encode(cwl_payload(["plain text"])),
        lambda i: encode(cwl_payload(['{"record_type":"usage",'])),
        lambda i: base64.b64encode(rng.randbytes(30)).decode(),
    ]
    datas = [rng.choice(makers)(i) for i in range(60)]
    event = event_of(*datas)
    response, _ = run(event)
    assert_answered_once(event, response)
    for entry in response["records"]:
        if entry["result"] == "Ok":
            for row in rows_of(entry):
                assert_row_schema(row)


def test_an_empty_batch() -> None:
    assert run(event_of())[0] == {"records": []}


def test_prefixes_share_one_layout() -> None:
    assert PARTITION_PREFIX == "usage/year=!{timestamp:yyyy}/month=!{timestamp:MM}/day=!{timestamp:dd}/"
    assert prefix_for(datetime(2026, 1, 5)) == "usage/year=2026/month=01/day=05/"
    assert prefix_for(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == "usage/year=2026/month=12/day=31/"
    # An aware timestamp is rendered in UTC, as Firehose does.
    assert prefix_for(datetime(2026, 1, 5, 23, 30, tzinfo=timezone(timedelta(hours=-5)))) == (
        "usage/year=2026/month=01/day=06/"
    )
    assert "!{firehose:error-output-type}" in ERROR_PREFIX
    assert error_prefix_for(datetime(2026, 1, 5)).endswith("/processing-failed/year=2026/month=01/day=05/")
    assert not error_prefix_for(datetime(2026, 1, 5)).startswith(PARTITION_PREFIX.split("/")[0] + "/")
