"""The data and operations components under Pulumi mocks: the runtime's tables, the guardrail, the dashboard
and alarms. Checked against the runtime's own definitions (table specs, the EMF metrics it writes) and
botocore's Bedrock model, so infra and code cannot drift apart silently."""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from typing import Any, get_args

import botocore.session
import pulumi
import pytest

from aigw.mocks import Recorded, RecordingMocks, run
from components import observability as ops_component
from components.cache import AnswerCacheTable, AnswerCacheTableArgs
from components.guardrails import DEFAULT_PII_ENTITIES, Guardrail, GuardrailArgs
from components.metering import MeteringTable, MeteringTableArgs
from components.observability import SERVER_ERROR_CODES, Observability, ObservabilityArgs, error_rate_queries
from runtime import cache, metering, observability, protocol

REGION = "eu-west-1"
MODELS = ("anthropic.claude-3-haiku-20240307-v1:0", "eu.amazon.nova-lite-v1:0")
FUNCTIONS = {"gatekeeper": "gw-gatekeeper", "worker": "gw-worker", "subscribe": "gw-subscribe"}
DLQ = "gw-worker-dlq"
EMAIL = "ops@example.com"

TABLE = "aws:dynamodb/table:Table"
GUARDRAIL = "aws:bedrock/guardrail:Guardrail"
GUARDRAIL_VERSION = "aws:bedrock/guardrailVersion:GuardrailVersion"
DASHBOARD = "aws:cloudwatch/dashboard:Dashboard"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
TOPIC = "aws:sns/topic:Topic"
SUBSCRIPTION = "aws:sns/topicSubscription:TopicSubscription"
KEY = "aws:kms/key:Key"
METERING = ("ai-gateway:metering:MeteringTable", "metering")
CACHE = ("ai-gateway:cache:AnswerCacheTable", "cache")
GUARD = ("ai-gateway:guardrails:Guardrail", "guardrail")
OPS = ("ai-gateway:observability:Observability", "ops")
COMPONENTS = {METERING, CACHE, GUARD, OPS}
AWS_METRICS = {"AWS/Lambda": {"Errors", "Throttles", "Duration"}, "AWS/SQS": {"ApproximateNumberOfMessagesVisible"}}


# Two stacks: every boolean flipped between them, so no assertion passes by a default.
CASES: dict[str, dict[str, Any]] = {
    "full": {
        "tables": {"point_in_time_recovery": True, "deletion_protection": False},
        "guardrail": {},
        "ops": {"alarms_enabled": True, "alarm_email": EMAIL, "dead_letter_queue_name": DLQ,
                "stack_monthly_usd": 2000.0},
    },
    "lean": {
        "tables": {"point_in_time_recovery": False, "deletion_protection": True},
        "guardrail": {"content_filter_strength": "MEDIUM", "prompt_attack_strength": "LOW", "pii_action": "BLOCK",
                      "pii_entities": ("EMAIL", "AWS_SECRET_KEY")},
        "ops": {"alarms_enabled": True, "alarm_email": None, "dead_letter_queue_name": None},
    },
    "quiet": {
        "tables": {"point_in_time_recovery": True, "deletion_protection": True},
        "guardrail": {},
        "ops": {"alarms_enabled": False, "alarm_email": EMAIL, "dead_letter_queue_name": DLQ},
    },
}


@pytest.fixture(scope="module", params=list(CASES))
def stack(request: pytest.FixtureRequest) -> Iterator[tuple[dict[str, Any], RecordingMocks, dict[str, Any]]]:
    case = CASES[request.param]
    outputs: dict[str, Any] = {}

    def program() -> pulumi.Output[Any]:
        meter = MeteringTable("metering", MeteringTableArgs(name="gw-test-metering", **case["tables"]))
        answers = AnswerCacheTable("cache", AnswerCacheTableArgs(name="gw-test-cache", **case["tables"]))
        guard = Guardrail("guardrail", GuardrailArgs(name="gw-test", tags={"stack": "test"}, **case["guardrail"]))
        ops = Observability(
            "ops",
            ObservabilityArgs(
                name="gw-test",
                region=REGION,
                model_ids=MODELS,
                # Outputs, as the functions component gives them.
                function_names={role: pulumi.Output.from_input(name) for role, name in FUNCTIONS.items()},
                **case["ops"],
            ),
        )
        values = {
            "metering_name": meter.table_name, "metering_arn": meter.table_arn,
            "cache_name": answers.table_name, "cache_arn": answers.table_arn,
            "guardrail_id": guard.guardrail_id, "guardrail_arn": guard.guardrail_arn, "version": guard.version,
            "dashboard_name": ops.dashboard_name, "dashboard_url": ops.dashboard_url,
            "alarm_topic_arn": ops.alarm_topic_arn,
        }
        return pulumi.Output.all(**values).apply(outputs.update)

    yield case, run(program, region=REGION), outputs


@pytest.fixture(scope="module")
def emitted_metrics() -> dict[str, frozenset[str]]:
    """What the runtime really writes: metric name -> dimension names, read from its EMF output."""
    base = {"request_id": "r", "user_id": "u", "tier": "t", "model_id": MODELS[0], "stack": "test"}
    records = [
        observability.UsageRecord(**base, outcome="cached", cache_hit=True, input_tokens=3, output_tokens=5,
                                  ttft_ms=1, latency_ms=2),
        observability.UsageRecord(**base, outcome="refused", refusal_reason="window"),
        observability.UsageRecord(**base, outcome="error", error_code="model_error"),
    ]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        for record in records:
            observability.record_usage_metrics(record, overshoot_tokens=7, expired_reservations=1)
        observability.record_publish_failures(2)
        observability.record_spend(team="platform", usd=0.0123, stack_used_pct=12.5)
    found: dict[str, frozenset[str]] = {}
    for line in buffer.getvalue().splitlines():
        blob = json.loads(line)
        for directive in blob.get("_aws", {}).get("CloudWatchMetrics", []):
            assert directive["Namespace"] == observability.METRICS_NAMESPACE
            (dimensions,) = directive["Dimensions"]
            for metric in directive["Metrics"]:
                found[metric["Name"]] = frozenset(dimensions)
    assert {"InputTokens", "Refusals", "Errors", "CacheHits", "ExpiredReservations", "PublishFailures"} <= set(found)
    return found


@pytest.fixture(scope="module")
def bedrock_enums() -> dict[str, set[str]]:
    model = botocore.session.get_session().get_service_model("bedrock")
    return {
        name: set(model.shape_for(name).enum)
        for name in ("GuardrailContentFilterType", "GuardrailFilterStrength", "GuardrailPiiEntityType",
                     "GuardrailSensitiveInformationAction")
    }


def _child(mocks: RecordingMocks, type_: str, parent: tuple[str, str]) -> Recorded:
    [found] = [r for r in mocks.of_type(type_) if r.parent == parent]
    return found


# ----------------------------------------------------------------------------------------------------- all


def test_every_resource_belongs_to_a_component(stack: Any) -> None:
    _, mocks, _ = stack
    for resource in mocks.resources:
        if (resource.type, resource.name) in COMPONENTS:
            assert resource.parent is None
        else:
            assert resource.parent in COMPONENTS, f"{resource.type} {resource.name} has parent {resource.parent}"


# -------------------------------------------------------------------------------------------------- tables


@pytest.mark.parametrize(("component", "runtime", "name"), [(METERING, metering, "gw-test-metering"),
                                                            (CACHE, cache, "gw-test-cache")])
def test_tables_are_the_runtime_specs(stack: Any, component: tuple[str, str], runtime: Any, name: str) -> None:
    case, mocks, outputs = stack
    spec = runtime.table_spec(name)
    table = _child(mocks, TABLE, component).inputs
    assert table["name"] == spec["TableName"]
    assert [{"AttributeName": table["hashKey"], "KeyType": "HASH"}] == spec["KeySchema"]
    assert "rangeKey" not in table
    assert table["billingMode"] == spec["BillingMode"]
    assert [{"AttributeName": a["name"], "AttributeType": a["type"]} for a in table["attributes"]] == (
        spec["AttributeDefinitions"]
    )
    assert table["ttl"] == {"attributeName": runtime.TTL_ATTRIBUTE, "enabled": True}
    assert table["serverSideEncryption"] == {"enabled": True}
    assert table["pointInTimeRecovery"] == {"enabled": case["tables"]["point_in_time_recovery"]}
    assert table["deletionProtectionEnabled"] is case["tables"]["deletion_protection"]
    prefix = "metering" if component == METERING else "cache"
    assert outputs[f"{prefix}_name"] == name
    assert outputs[f"{prefix}_arn"].startswith("arn:aws:dynamodb:")


@pytest.mark.parametrize("name", ["ab", "has space", "x" * 256, "ünïcode"])
def test_table_names_dynamodb_rejects_fail_at_preview(name: str) -> None:
    for args in (MeteringTableArgs, AnswerCacheTableArgs):
        with pytest.raises(ValueError, match="table name"):
            args(name=name, point_in_time_recovery=False, deletion_protection=False)


# ----------------------------------------------------------------------------------------------- guardrail


def test_guardrail_filters_content_both_ways_and_prompt_attacks_on_input_only(
    stack: Any, bedrock_enums: dict[str, set[str]]
) -> None:
    case, mocks, _ = stack
    strength = case["guardrail"].get("content_filter_strength", "HIGH")
    attack = case["guardrail"].get("prompt_attack_strength", "HIGH")
    filters = {f["type"]: f for f in mocks.one(GUARDRAIL).inputs["contentPolicyConfig"]["filtersConfigs"]}
    assert set(filters) == bedrock_enums["GuardrailContentFilterType"]  # every category Bedrock has
    assert filters.pop("PROMPT_ATTACK") == {"type": "PROMPT_ATTACK", "inputStrength": attack, "outputStrength": "NONE"}
    for kind, f in filters.items():
        assert f == {"type": kind, "inputStrength": strength, "outputStrength": strength}
    for f in [*filters.values()]:
        assert {f["inputStrength"], f["outputStrength"]} <= bedrock_enums["GuardrailFilterStrength"]


def test_guardrail_handles_the_pii_entities(stack: Any, bedrock_enums: dict[str, set[str]]) -> None:
    case, mocks, _ = stack
    entities = case["guardrail"].get("pii_entities", DEFAULT_PII_ENTITIES)
    action = case["guardrail"].get("pii_action", "ANONYMIZE")
    configs = mocks.one(GUARDRAIL).inputs["sensitiveInformationPolicyConfig"]["piiEntitiesConfigs"]
    assert configs == [{"type": e, "action": action} for e in entities]
    assert {c["type"] for c in configs} <= bedrock_enums["GuardrailPiiEntityType"]
    assert action in bedrock_enums["GuardrailSensitiveInformationAction"]


def test_guardrail_is_published_as_a_version(stack: Any) -> None:
    _, mocks, outputs = stack
    guardrail = mocks.one(GUARDRAIL)
    assert guardrail.parent == GUARD and guardrail.inputs["name"] == "gw-test"
    assert guardrail.inputs["tags"] == {"stack": "test"}
    assert guardrail.inputs["blockedInputMessaging"] and guardrail.inputs["blockedOutputsMessaging"]
    version = mocks.one(GUARDRAIL_VERSION)
    assert version.parent == GUARD
    assert version.inputs["guardrailArn"] == outputs["guardrail_arn"] == guardrail.outputs["guardrailArn"]
    assert outputs["guardrail_id"] and outputs["guardrail_arn"].endswith(f":guardrail/{outputs['guardrail_id']}")
    assert outputs["version"] == "1"  # the published version, not the guardrail's DRAFT


def test_a_policy_change_publishes_a_new_version() -> None:
    def description(**policy: Any) -> str:
        mocks = run(lambda: Guardrail("g", GuardrailArgs(name="gw", **policy)) and None)
        return mocks.one(GUARDRAIL_VERSION).inputs["description"]

    assert description() == description(tags={"any": "tag"})  # tags are not part of a version
    # The description is replace-on-change for a version: a different one means a newly published version.
    assert len({description(), description(content_filter_strength="LOW"), description(pii_action="BLOCK"),
                description(pii_entities=("EMAIL",)), description(blocked_input_message="No.")}) == 5


def test_default_pii_entities_are_bedrock_types(bedrock_enums: dict[str, set[str]]) -> None:
    assert set(DEFAULT_PII_ENTITIES) <= bedrock_enums["GuardrailPiiEntityType"]
    assert {"EMAIL", "PHONE", "CREDIT_DEBIT_CARD_NUMBER", "AWS_ACCESS_KEY", "AWS_SECRET_KEY"} <= set(
        DEFAULT_PII_ENTITIES
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "has space"}, "guardrail name"),
        ({"content_filter_strength": "NONE"}, "content_filter_strength"),
        ({"prompt_attack_strength": "high"}, "prompt_attack_strength"),
        ({"pii_action": "NONE"}, "pii_action"),
        ({"pii_entities": ()}, "pii_entities"),
        ({"pii_entities": ["EMAIL"]}, "pii_entities"),
        ({"pii_entities": ("email",)}, "pii_entities"),
        ({"pii_entities": ("EMAIL", "EMAIL")}, "twice"),
        ({"blocked_output_message": ""}, "blocked_output_message"),
    ],
)
def test_guardrail_args_bedrock_would_reject_fail_at_preview(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GuardrailArgs(**{"name": "gw", **changes})


# ------------------------------------------------------------------------------------------------- dashboard


def _dashboard(mocks: RecordingMocks) -> list[dict[str, Any]]:
    body = json.loads(mocks.one(DASHBOARD).inputs["dashboardBody"])
    return body["widgets"]


_SEARCH = re.compile(r"""SEARCH\('\{([^}]*)\} MetricName="(\w+)"', '(\w+)', (\d+)\)""")


def _series(widget: dict[str, Any]) -> list[tuple[str, str, frozenset[str], dict[str, str]]]:
    """(namespace, metric, dimension names, dimension values) of every line of a widget; SEARCH values are {}."""
    found = []
    for line in widget["properties"]["metrics"]:
        if isinstance(line[0], dict):
            match = _SEARCH.fullmatch(line[0]["expression"])
            assert match, line
            namespace, *dimensions = match[1].split(",")
            found.append((namespace, match[2], frozenset(dimensions), {}))
        else:
            namespace, metric, *rest = line
            pairs = rest[:-1] if rest and isinstance(rest[-1], dict) else rest
            values = dict(zip(pairs[::2], pairs[1::2], strict=True))
            found.append((namespace, metric, frozenset(values), values))
    return found


def test_dashboard_shows_only_metrics_that_exist(stack: Any, emitted_metrics: dict[str, frozenset[str]]) -> None:
    case, mocks, outputs = stack
    widgets = _dashboard(mocks)
    assert mocks.one(DASHBOARD).inputs["dashboardName"] == outputs["dashboard_name"] == "gw-test"
    seen = set()
    for widget in widgets:
        assert widget["type"] == "metric" and widget["properties"]["region"] == REGION
        for namespace, metric, dimensions, _ in _series(widget):
            if namespace == observability.METRICS_NAMESPACE:
                assert emitted_metrics.get(metric) == dimensions, f"{metric} {sorted(dimensions)} is never written"
                seen.add(metric)
            else:
                assert metric in AWS_METRICS[namespace]
    # ... and every metric the runtime writes is on it (the ceiling's share only where the stack has a ceiling)
    ceiling = set() if case["ops"].get("stack_monthly_usd") else {observability.STACK_BUDGET_METRIC}
    assert seen == set(emitted_metrics) - ceiling


def test_dashboard_lists_each_model_and_function(stack: Any) -> None:
    case, mocks, _ = stack
    by_metric: dict[str, list[dict[str, str]]] = {}
    for widget in _dashboard(mocks):
        for namespace, metric, _, values in _series(widget):
            by_metric.setdefault(f"{namespace}/{metric}", []).append(values)
    for metric in ("InputTokens", "OutputTokens", "CacheHits", "ReservationOvershootTokens", "ExpiredReservations"):
        models = [v["model_id"] for v in by_metric[f"AIGateway/{metric}"]]
        assert set(MODELS) <= set(models) and len(models) == len(set(models))
    assert {v["model_id"] for v in by_metric["AIGateway/ExpiredReservations"]} == {*MODELS, "unknown"}
    for metric in ("TimeToFirstTokenMs", "ResponseLatencyMs"):
        assert sorted(v["model_id"] for v in by_metric[f"AIGateway/{metric}"]) == sorted(MODELS * 3)
    # Open-ended dimension values: searched, not listed.
    assert by_metric["AIGateway/Refusals"] == [{}] and by_metric["AIGateway/Errors"] == [{}]
    for metric in ("Errors", "Throttles", "Duration"):
        assert sorted(v["FunctionName"] for v in by_metric[f"AWS/Lambda/{metric}"]) == sorted(FUNCTIONS.values())
    queues = by_metric.get("AWS/SQS/ApproximateNumberOfMessagesVisible", [])
    assert queues == ([{"QueueName": DLQ}] if case["ops"]["dead_letter_queue_name"] else [])


def test_dashboard_percentiles_and_url(stack: Any) -> None:
    _, mocks, outputs = stack
    stats = {
        line[-1]["stat"]
        for widget in _dashboard(mocks)
        if widget["properties"]["title"].startswith(("Time to first token", "Response latency"))
        for line in widget["properties"]["metrics"]
    }
    assert stats == {"p50", "p90", "p99"}
    assert outputs["dashboard_url"] == (
        f"https://{REGION}.console.aws.amazon.com/cloudwatch/home?region={REGION}#dashboards:name=gw-test"
    )


# ---------------------------------------------------------------------------------------------------- alarms


def test_alarms_exist_only_when_enabled_and_notify_the_topic(stack: Any) -> None:
    case, mocks, outputs = stack
    alarms = mocks.of_type(ALARM)
    if not case["ops"]["alarms_enabled"]:
        assert alarms == [] and mocks.of_type(TOPIC) == [] and mocks.of_type(SUBSCRIPTION) == []
        assert outputs["alarm_topic_arn"] is None
        return
    topic = _child(mocks, TOPIC, OPS)
    assert outputs["alarm_topic_arn"] == topic.outputs["arn"]
    names = {a.inputs["name"] for a in alarms}
    expected = {
        "gw-test-error-rate-anthropic-claude-3-haiku-20240307-v1-0",
        "gw-test-error-rate-eu-amazon-nova-lite-v1-0",
        "gw-test-gatekeeper-internal-errors",
        "gw-test-worker-errors",
        "gw-test-gatekeeper-throttles",
        "gw-test-worker-throttles",
        "gw-test-subscribe-throttles",
        "gw-test-expired-reservations",
        "gw-test-publish-failures",
    }
    expected |= {"gw-test-worker-dlq"} if case["ops"]["dead_letter_queue_name"] else set()
    expected |= {"gw-test-stack-budget"} if case["ops"].get("stack_monthly_usd") else set()
    assert names == expected
    for alarm in alarms:
        assert alarm.inputs["treatMissingData"] == "notBreaching"
        assert alarm.inputs["alarmActions"] == [topic.outputs["arn"]]
        assert alarm.inputs["okActions"] == [topic.outputs["arn"]]
        budget = alarm.inputs["name"] == "gw-test-stack-budget"
        assert alarm.inputs["comparisonOperator"] == (
            "GreaterThanOrEqualToThreshold" if budget else "GreaterThanThreshold"
        )
        if budget:  # 80 % of the ceiling, on the share the worker reports after each request
            assert (alarm.inputs["metricName"], alarm.inputs["threshold"]) == ("StackBudgetUsedPercent", 80)


def test_email_subscription_only_with_an_address(stack: Any) -> None:
    case, mocks, _ = stack
    subscriptions = mocks.of_type(SUBSCRIPTION)
    if case["ops"]["alarms_enabled"] and case["ops"]["alarm_email"]:
        [subscription] = subscriptions
        assert subscription.inputs["protocol"] == "email" and subscription.inputs["endpoint"] == EMAIL
        assert subscription.inputs["topic"] == mocks.one(TOPIC).outputs["arn"]
    else:
        assert subscriptions == []


def test_alarm_topic_is_encrypted_with_a_key_cloudwatch_may_use(stack: Any) -> None:
    case, mocks, _ = stack
    if not case["ops"]["alarms_enabled"]:
        assert mocks.of_type(KEY) == []
        return
    key = mocks.one(KEY)
    # Not alias/aws/sns: CloudWatch cannot use the AWS managed key, and its alarm actions would fail.
    assert mocks.one(TOPIC).inputs["kmsMasterKeyId"] == key.outputs["arn"]
    assert key.inputs["enableKeyRotation"] is True
    statements = json.loads(key.inputs["policy"])["Statement"]
    [cloudwatch] = [s for s in statements if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
    assert set(cloudwatch["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    assert any(s["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"} for s in statements)


def test_alarms_watch_metrics_that_exist(stack: Any, emitted_metrics: dict[str, frozenset[str]]) -> None:
    _, mocks, _ = stack
    for alarm in mocks.of_type(ALARM):
        inputs = alarm.inputs
        metrics = [q["metric"] for q in inputs.get("metricQueries", []) if "metric" in q]
        if "metricName" in inputs:
            metrics.append(inputs)
        for m in metrics:
            if m["namespace"] == observability.METRICS_NAMESPACE:
                assert emitted_metrics[m["metricName"]] == frozenset(m["dimensions"]), inputs["name"]
            else:
                assert m["metricName"] in AWS_METRICS[m["namespace"]], inputs["name"]
        for query in inputs.get("metricQueries", []):
            if query.get("expression", "").startswith("SELECT"):
                metric, namespace, dimension = re.fullmatch(
                    r'SELECT SUM\((\w+)\) FROM SCHEMA\("(\w+)", (\w+)\)', query["expression"]
                ).groups()
                assert namespace == observability.METRICS_NAMESPACE
                assert emitted_metrics[metric] == {dimension}
        returned = [q for q in inputs.get("metricQueries", []) if q.get("returnData")]
        assert len(returned) == (1 if "metricQueries" in inputs else 0)


def test_component_constants_are_the_runtimes() -> None:
    assert ops_component.METRICS_NAMESPACE == observability.METRICS_NAMESPACE
    assert ops_component.UNKNOWN_MODEL == observability.UNKNOWN_MODEL
    assert ops_component.SPEND_METRIC == observability.SPEND_METRIC
    assert ops_component.STACK_BUDGET_METRIC == observability.STACK_BUDGET_METRIC


def test_error_rate_alarm_counts_gateway_failures_over_requests() -> None:
    assert set(SERVER_ERROR_CODES) <= set(get_args(protocol.ErrorCode))
    queries = error_rate_queries(MODELS[0])
    metrics = [q for q in queries if q.metric is not None]
    assert len(metrics) <= 10  # CloudWatch's hard limit for a metric-math alarm
    errors = {q.metric.dimensions["code"] for q in metrics if q.metric.metric_name == "Errors"}
    assert errors == set(SERVER_ERROR_CODES)
    [requests] = [q for q in metrics if q.metric.metric_name == "ResponseLatencyMs"]
    assert requests.metric.stat == "SampleCount" and requests.metric.dimensions == {"model_id": MODELS[0]}
    assert {q.metric.period for q in metrics} == {300}


def test_error_rate_threshold_follows_the_args(stack: Any) -> None:
    _, mocks, _ = stack
    for alarm in mocks.of_type(ALARM):
        if "-error-rate-" in alarm.name:
            assert alarm.inputs["threshold"] == 5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "has space"}, "dashboard name"),
        ({"model_ids": ()}, "model_ids"),
        ({"model_ids": ("a.b", "a-b")}, "distinct"),
        ({"function_names": {"gatekeeper": "g"}}, "worker"),
        ({"function_names": {"worker": "w", "other": "o"}}, "unknown roles"),
        ({"error_rate_threshold_pct": 0}, "error_rate_threshold_pct"),
        ({"alarm_email": "not-an-address"}, "alarm_email"),
    ],
)
def test_observability_args_that_cannot_work_fail_at_preview(changes: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"name": "gw", "region": REGION, "model_ids": MODELS, "function_names": FUNCTIONS,
                            "alarms_enabled": True}
    with pytest.raises(ValueError, match=message):
        ObservabilityArgs(**{**base, **changes})
