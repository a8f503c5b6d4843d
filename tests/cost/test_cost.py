"""`aigw.cost` and `aigw plan --cost`: arithmetic checked by hand, idle stacks, settings moving lines, the CLI."""

from __future__ import annotations

import json
import math
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aigw.cli import app
from aigw.cost import (
    CostReport,
    MissingPriceError,
    UnknownModelError,
    estimate,
    load_prices,
    load_profile,
    make_profile,
    unit_scale,
)
from aigw.mocks import RecordingMocks
from aigw.plan import ROOT, inventory, run_stack
from components.settings import StackSettings, stack_file_values

FIXTURES = Path(__file__).parent / "fixtures"
PRICES = load_prices(FIXTURES / "prices.yaml")
GB, TB = 1024**3, 1024**4
NOVA, HAIKU = "amazon.nova-lite-v1:0", "us.anthropic.claude-haiku-5-5"


def _key(overrides: dict[str, Any]) -> str:
    return json.dumps(overrides, sort_keys=True)


@cache
def _stack(stack: str, overrides_key: str = "{}") -> tuple[RecordingMocks, StackSettings]:
    overrides = json.loads(overrides_key)
    mocks = run_stack(stack, overrides=overrides)
    settings = StackSettings.from_values({**stack_file_values(ROOT / f"Pulumi.{stack}.yaml"), **overrides})
    return mocks, settings


def _report(stack: str, profile: str = "hand", overrides: dict[str, Any] | None = None) -> CostReport:
    mocks, settings = _stack(stack, _key(overrides or {}))
    return estimate(mocks, settings, load_profile(FIXTURES / f"{profile}.yaml"), PRICES)


def _by_key(report: CostReport) -> dict[tuple[str, str], float]:
    return {(line.service, line.item): line.monthly_usd for line in report.lines}


def test_hand_computed_profile_line_by_line_on_prod() -> None:
    # hand.yaml: 100 users × 10 requests/day × 30 = 30,000 requests; 20 % cached -> 24,000 answered, 6,000 cached.
    report = _report("prod")
    p = {pid: price.usd for pid, price in PRICES.items()}
    answered, cached, requests, connections = 24_000, 6_000, 30_000, 100 * 30
    log_gb = requests * 4096 / GB
    expected = {
        ("Bedrock", f"{NOVA} input tokens"): 12_000 * 1000 / 1e3 * p[f"bedrock.{NOVA}.input"],
        ("Bedrock", f"{NOVA} output tokens"): 12_000 * 500 / 1e3 * p[f"bedrock.{NOVA}.output"],
        ("Bedrock", f"{HAIKU} input tokens"): 12_000 * 1000 / 1e3 * p[f"bedrock.{HAIKU}.input"],
        ("Bedrock", f"{HAIKU} output tokens"): 12_000 * 500 / 1e3 * p[f"bedrock.{HAIKU}.output"],
        # 4,000 input chars -> 4 text units, 2,000 output chars -> 2
        ("Bedrock", "guardrail text units"): answered * 6 / 1e3 * p["bedrock.guardrail_text_units"],
        ("Bedrock", "guardrail PII text units"): answered * 6 / 1e3 * p["bedrock.guardrail_pii_text_units"],
        # connect + subscribe per connection, 1 client publish per request, per answer ceil(12/5)=3 publishes +
        # 12 deliveries, per cached answer 1 publish + 3 deliveries
        ("AppSync Events", "operations"): (2 * connections + requests + answered * 15 + cached * 4) / 1e6
        * p["appsync_events.operations"],
        ("AppSync Events", "connection minutes"): 100 * 60 * 30 / 1e6 * p["appsync_events.connection_minutes"],
        ("Lambda", "gatekeeper requests"): requests / 1e6 * p["lambda.requests"],
        ("Lambda", "gatekeeper GB-seconds"): requests * 0.1 * 256 / 1024 * p["lambda.gb_second_arm64"],
        ("Lambda", "worker requests"): requests / 1e6 * p["lambda.requests"],
        ("Lambda", "worker GB-seconds"): (answered * 4.0 + cached * 0.1) * 512 / 1024 * p["lambda.gb_second_arm64"],
        ("Lambda", "subscribe requests"): connections / 1e6 * p["lambda.requests"],
        ("Lambda", "subscribe GB-seconds"): connections * 0.02 * 128 / 1024 * p["lambda.gb_second_arm64"],
        ("Lambda", "processor requests"): requests / 1e6 * p["lambda.requests"],
        ("Lambda", "processor GB-seconds"): requests * 0.5 * 256 / 1024 * p["lambda.gb_second_arm64"],
        ("DynamoDB", "write request units"): (answered * 3 + cached) / 1e6 * p["dynamodb.write_request_units"],
        # the answer journal: 4 s of streaming -> 4 + 1 writes of ceil((500 × 4 + 12 × 120) / 1024) = 4 KB; cached: 1
        ("DynamoDB", "answer-journal write units"): (answered * 5 * 4 + cached * 4) / 1e6
        * p["dynamodb.write_request_units"],
        ("DynamoDB", "read request units"): requests / 1e6 * p["dynamodb.read_request_units"],
        ("DynamoDB", "storage"): 100 * 2048 / GB * p["dynamodb.storage_gb_month"],
        ("DynamoDB", "point-in-time recovery"): 100 * 2048 / GB * p["dynamodb.pitr_gb_month"],
        ("CloudWatch", "log ingestion"): log_gb * p["cloudwatch.logs_ingest_gb"],
        ("CloudWatch", "log storage"): log_gb * 90 / 30 * p["cloudwatch.logs_storage_gb_month"],
        # 3 models × (5 metrics + 6 refusal reasons + 3 error codes) + 4 error codes of model "unknown"
        # + SpendUsd of team "none" + StackBudgetUsedPercent (prod has a ceiling)
        ("CloudWatch", "custom metrics"): 48 * p["cloudwatch.custom_metric_month"],
        ("CloudWatch", "dashboards"): 1 * p["cloudwatch.dashboard_month"],
        # 3 error-rate alarms reading 4 metrics each + 8 single-metric alarms (one the stack ceiling's)
        ("CloudWatch", "alarms (standard)"): 20 * p["cloudwatch.alarm_standard_month"],
        # the expired-reservations Metrics Insights alarm: one metric per model id
        ("CloudWatch", "alarms (Metrics Insights)"): 3 * p["cloudwatch.metrics_insights_alarm_month"],
        ("Firehose", "ingestion"): requests * 5120 / GB * p["firehose.ingest_gb"],
        ("Firehose", "format conversion (Parquet)"): requests * 5120 / GB * p["firehose.format_conversion_gb"],
        ("S3", "storage"): requests * 600 * 0.2 / GB * 400 / 30 * p["s3.storage_gb_month"],
        ("S3", "PUT requests"): (8640 + 100) / 1e3 * p["s3.put_per_1k"],
        ("Athena", "data scanned"): 100 * 10 * 1024**2 / TB * p["athena.tb_scanned"],
        ("KMS", "customer-managed keys"): 1 * p["kms.key_month"],
        ("KMS", "requests"): 0.0,
        ("SNS", "alarm notifications"): 0.0,
        ("SQS", "dead-letter queue requests"): 0.0,
    }
    got = _by_key(report)
    assert set(got) == set(expected)  # 100 users < 10,000 free MAU: no Cognito line
    for key, usd in expected.items():
        assert got[key] == pytest.approx(usd, rel=1e-9, abs=1e-12), key
    fixed = sum(usd for key, usd in expected.items() if key in {
        ("CloudWatch", "dashboards"), ("CloudWatch", "alarms (standard)"), ("CloudWatch", "alarms (Metrics Insights)"),
        ("KMS", "customer-managed keys")})
    assert report.fixed_usd == pytest.approx(fixed)
    assert report.total_usd == pytest.approx(sum(expected.values()))
    assert report.per_request_usd_month == pytest.approx(report.total_usd - report.fixed_usd)
    assert report.cost_per_request_usd == pytest.approx(report.per_request_usd_month / requests)
    assert report.requests_per_month == requests


def test_inventory_gives_the_same_report_but_for_metric_math_alarms() -> None:
    # `inventory` keeps only key settings: without metricQueries every alarm counts as one standard metric,
    # and the guardrail's policies are unknown (no PII line).
    mocks, settings = _stack("prod")
    profile = load_profile(FIXTURES / "hand.yaml")
    from_items = _by_key(estimate(inventory(mocks), settings, profile, PRICES))
    from_mocks = _by_key(estimate(mocks, settings, profile, PRICES))
    assert from_items.pop(("CloudWatch", "alarms (standard)")) == pytest.approx(
        12 * PRICES["cloudwatch.alarm_standard_month"].usd)
    for key in (("CloudWatch", "alarms (standard)"), ("CloudWatch", "alarms (Metrics Insights)"),
                ("Bedrock", "guardrail PII text units")):
        from_mocks.pop(key)
    assert from_items == pytest.approx(from_mocks)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_idle_profile_has_only_fixed_lines(stack: str) -> None:
    report = _report(stack, "idle")
    assert report.lines and {line.kind for line in report.lines} == {"fixed"}
    assert report.per_request_usd_month == 0 and report.cost_per_request_usd == 0
    assert report.total_usd == pytest.approx(report.fixed_usd)


@pytest.mark.parametrize(
    ("overrides", "moved"),
    [
        ({"logRetentionDays": 30}, {("CloudWatch", "log storage")}),
        ({"functions": {"worker": {"memoryMb": 1024, "timeoutS": 300}}}, {("Lambda", "worker GB-seconds")}),
        ({"pointInTimeRecovery": True}, {("DynamoDB", "point-in-time recovery")}),
        ({"guardrail": {"enabled": True}},
         {("Bedrock", "guardrail text units"), ("Bedrock", "guardrail PII text units")}),
    ],
    ids=["retention", "worker-memory", "pitr", "guardrail"],
)
def test_a_setting_moves_exactly_its_lines(overrides: dict[str, Any], moved: set[tuple[str, str]]) -> None:
    before, after = _by_key(_report("dev")), _by_key(_report("dev", overrides=overrides))
    changed = {k for k in before.keys() | after.keys() if not math.isclose(before.get(k, -1), after.get(k, -1))}
    assert changed == moved
    assert all(after.get(k, 0) > before.get(k, 0) for k in moved)


def test_unknown_model_is_named() -> None:
    with pytest.raises(UnknownModelError, match=re.escape("meta.llama-nope-v1:0")) as info:
        _report("dev", "unknown_model")
    assert isinstance(info.value, ValueError) and info.value.model == "meta.llama-nope-v1:0"


def test_missing_price_is_named() -> None:
    mocks, settings = _stack("dev")
    prices = {k: v for k, v in PRICES.items() if k != "dynamodb.read_request_units"}
    with pytest.raises(MissingPriceError, match=re.escape("dynamodb.read_request_units")):
        estimate(mocks, settings, load_profile(FIXTURES / "hand.yaml"), prices)


def test_units_set_the_divisor() -> None:
    assert unit_scale("1M requests") == 1e6
    assert unit_scale("1K tokens") == 1e3
    assert unit_scale("10K requests") == 1e4
    assert unit_scale("per 1,000 requests") == 1e3
    assert unit_scale("GB-second") == 1 and unit_scale("MAU") == 1 and unit_scale("") == 1


def test_cli_json_schema() -> None:
    result = CliRunner().invoke(app, ["plan", "--stack", "dev", "--cost", "--profile", str(FIXTURES / "hand.yaml"),
                                      "--prices", str(FIXTURES / "prices.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) == {"stack", "profile", "requests_per_month", "lines", "fixed_usd", "per_request_usd_month",
                           "total_usd", "cost_per_request_usd"}
    assert report["stack"] == "dev" and report["profile"] == "hand" and report["requests_per_month"] == 30_000
    for line in report["lines"]:
        assert set(line) == {"service", "item", "quantity", "unit", "unit_price_usd", "monthly_usd", "kind",
                             "price_id", "note", "billed_quantity", "price_confirmed"}
        assert line["kind"] in ("fixed", "per_request", "storage")
        assert line["billed_quantity"] * line["unit_price_usd"] == pytest.approx(line["monthly_usd"])
    assert report["total_usd"] == pytest.approx(sum(line["monthly_usd"] for line in report["lines"]))
    assert report["fixed_usd"] == pytest.approx(
        sum(line["monthly_usd"] for line in report["lines"] if line["kind"] == "fixed"))


def test_a_priced_model_the_stack_does_not_allow_is_estimated_with_a_warning() -> None:
    mocks, settings = _stack("dev")
    values = dict(load_profile(FIXTURES / "hand.yaml").values)
    values["model_mix"] = {NOVA: 0.5, "us.anthropic.claude-sonnet-5-5": 0.5}
    prices = dict(PRICES)
    for side in ("input", "output"):
        prices[f"bedrock.us.anthropic.claude-sonnet-5-5.{side}"] = PRICES[f"bedrock.{HAIKU}.{side}"]
    report = estimate(mocks, settings, make_profile(values, "x"), prices)
    sonnet = [li for li in report.lines if li.item.startswith("us.anthropic.claude-sonnet-5-5")]
    assert len(sonnet) == 2 and all("NOT allowed" in li.note for li in sonnet)


def test_cli_table_and_errors() -> None:
    args = ["plan", "--stack", "dev", "--cost", "--prices", str(FIXTURES / "prices.yaml")]
    result = CliRunner().invoke(app, [*args, "--profile", str(FIXTURES / "hand.yaml")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "subtotal usage" in result.output and "one average request" in result.output
    bad = CliRunner().invoke(app, [*args, "--profile", str(FIXTURES / "unknown_model.yaml")])
    assert bad.exit_code == 2 and "meta.llama-nope-v1:0" in bad.output


def _table_rows(text: str) -> list[list[str]]:
    """The body rows of a Rich table (cells of one printed line, borders dropped)."""
    return [[cell.strip() for cell in line.strip("│").split("│")] for line in text.splitlines()
            if line.startswith("│")]


def test_the_cost_table_reads_as_written_at_120_columns() -> None:
    args = ["plan", "--stack", "prod", "--cost"]
    text = CliRunner().invoke(app, args, env={"COLUMNS": "120"})
    assert text.exit_code == 0, text.output
    report = json.loads(CliRunner().invoke(app, [*args, "--json"]).output)
    lines = text.output.splitlines()
    assert max(len(line) for line in lines) <= 120 and "…" not in text.output  # folded, never cut
    assert not re.search(r"\d[eE][+-]\d", text.output)  # no scientific notation anywhere
    # Each priced line: its quantity is in the unit's terms, so quantity × unit price is the month's dollars.
    checked = 0
    for cells in _table_rows(text.output):
        quantity, price, monthly = cells[3], cells[5].rstrip(" *"), cells[6]
        if not (quantity and price.startswith("$") and monthly.startswith("$")):
            continue
        product = float(quantity.replace(",", "")) * float(price[1:].replace(",", ""))
        shown = float(monthly.lstrip("$").replace(",", ""))
        assert product == pytest.approx(shown, rel=0.06, abs=0.006), cells
        checked += 1
    assert checked >= 20
    # Unconfirmed prices are marked, and counted in the footer as --json counts them.
    unconfirmed = sum(not line["price_confirmed"] for line in report["lines"])
    assert 0 < unconfirmed < len(report["lines"])
    assert sum(cells[5].endswith(" *") for cells in _table_rows(text.output)) == unconfirmed
    assert f"* {unconfirmed} of {len(report['lines'])} prices are unconfirmed" in " ".join(lines)
    # Storage is billed on what is stored, not per request.
    kinds = {(line["service"], line["item"]): line["kind"] for line in report["lines"]}
    assert kinds[("DynamoDB", "point-in-time recovery")] == kinds[("DynamoDB", "storage")] == "storage"
    assert report["per_request_usd_month"] == pytest.approx(
        sum(line["monthly_usd"] for line in report["lines"] if line["kind"] != "fixed"))


def test_the_chat_page_is_priced_on_dev_and_absent_on_prod() -> None:
    # hand.yaml on dev: 100 users × 1 connection/day × 30 = 3,000 connections -> 3,000 page loads (1 each, the
    # default), each fetching every uploaded file: web/ plus config.json.
    from components.web_app import web_files

    mocks, _ = _stack("dev")
    objects = mocks.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    files = web_files(ROOT / "web")
    assert len(objects) == len(files) + 1
    [config] = [o.inputs["content"] for o in objects if o.inputs["key"] == "config.json"]
    page_bytes = sum(f.path.stat().st_size for f in files) + len(config.encode())
    p = {pid: price.usd for pid, price in PRICES.items()}
    got = _by_key(_report("dev"))
    assert got[("CloudFront", "HTTPS requests")] == pytest.approx(3_000 * len(objects) / 1e4
                                                                  * p["cloudfront.https_requests"])
    assert got[("CloudFront", "data transfer out")] == pytest.approx(3_000 * page_bytes / GB
                                                                     * p["cloudfront.data_out_gb"])
    assert got[("S3", "web page storage")] == pytest.approx(page_bytes / GB * p["s3.storage_gb_month"])
    # The files are served no-cache (config.json is never cached at all): every request reaches the bucket.
    assert got[("S3", "web page GET requests")] == pytest.approx(3_000 * len(objects) / 1e3 * p["s3.get_per_1k"])
    lines = {line.item: line for line in _report("dev").lines}
    assert lines["web page storage"].kind == "fixed" and lines["web page GET requests"].kind == "per_request"
    assert "cache hit ratio at the edge assumed 0" in lines["web page GET requests"].note
    assert not any(line.service == "CloudFront" or line.item.startswith("web page") for line in _report("prod").lines)


def test_page_loads_follow_the_profile() -> None:
    mocks, settings = _stack("dev")
    values = dict(load_profile(FIXTURES / "hand.yaml").values)
    once = _by_key(estimate(mocks, settings, make_profile(values, "x"), PRICES))
    twice = _by_key(estimate(mocks, settings, make_profile({**values, "page_loads_per_connection": 2}, "x"), PRICES))
    for key in (("CloudFront", "HTTPS requests"), ("CloudFront", "data transfer out"), ("S3", "web page GET requests")):
        assert twice[key] == pytest.approx(2 * once[key])
    assert twice[("S3", "web page storage")] == once[("S3", "web page storage")]
    idle = _report("dev", "idle")
    assert not any(line.service == "CloudFront" or line.item == "web page GET requests" for line in idle.lines)
    assert any(line.item == "web page storage" for line in idle.lines)
