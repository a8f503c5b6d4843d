"""Operations: one CloudWatch dashboard for the gateway, and alarms that page someone when it misbehaves.

The gateway's own metrics are the EMF metrics `runtime.observability` writes (namespace ``AIGateway``,
dimension ``model_id``, plus ``reason`` on Refusals and ``code`` on Errors); the Lambda and SQS metrics come
from AWS. Where a dimension's values are known at deploy time (the stack's model ids, the function names) the
dashboard lists each metric explicitly, so an idle model still shows a flat line; where they are open-ended
(refusal reasons, error codes) it uses a ``SEARCH`` expression, which finds whatever values have reported.

Error rate, per model: ``100 * Errors / requests`` over 5 minutes, where
- Errors counts only the gateway's own failures (`SERVER_ERROR_CODES`: the model failed or was throttled, or
  the worker failed); client mistakes (``invalid_request``, ``forbidden``, ``model_not_allowed``) and quota
  refusals are not failures of the gateway;
- requests is the SampleCount of ``ResponseLatencyMs``: the worker records exactly one latency per request it
  handles, completed, cached or failed, so the denominator already contains the errors. (``OutputTokens``
  SampleCount would miss answers of zero tokens and count failures that streamed a partial answer.)
Alarms built on metric math may read at most 10 metrics, which rules out one gateway-wide alarm over every
(model, code) pair; one alarm per model reads 4. Requests that fail before their model is known (the
gatekeeper's ``internal`` errors, dimension ``model_id=unknown``) have no latency, so their own alarm fires on
any of them. ``ExpiredReservations`` is also reported under ``unknown`` (leases found expired while refusing a
request), so its alarm sums every model with a Metrics Insights query.

Every alarm treats missing data as not breaching: these metrics are only written when something happens.
Notifications go to an SNS topic encrypted with a customer managed KMS key: CloudWatch alarms cannot publish to
a topic encrypted with the AWS managed ``alias/aws/sns`` key, whose key policy does not let CloudWatch use it
(and cannot be changed), so the alarm actions would fail silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

__all__ = [
    "FUNCTION_ROLES",
    "METRICS_NAMESPACE",
    "PERIOD_S",
    "SERVER_ERROR_CODES",
    "UNKNOWN_MODEL",
    "Observability",
    "ObservabilityArgs",
    "dashboard_url",
    "dashboard_widgets",
    "error_rate_queries",
]

METRICS_NAMESPACE = "AIGateway"  # runtime.observability.METRICS_NAMESPACE (not imported: it loads Powertools)
UNKNOWN_MODEL = "unknown"  # runtime.observability.UNKNOWN_MODEL: model_id of a request rejected before its model
SPEND_METRIC = "SpendUsd"  # runtime.observability.SPEND_METRIC (dimension team)
STACK_BUDGET_METRIC = "StackBudgetUsedPercent"  # runtime.observability.STACK_BUDGET_METRIC (no dimension)
FUNCTION_ROLES = ("gatekeeper", "worker", "subscribe")
SERVER_ERROR_CODES = ("model_throttled", "model_error", "internal")
"""Error codes (runtime.protocol.ErrorCode) that are the gateway's failures, not the caller's."""
PERIOD_S = 300
PERCENTILES = ("p50", "p90", "p99")

_DASHBOARD_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")  # PutDashboard DashboardName
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


@dataclass(frozen=True, kw_only=True)
class ObservabilityArgs:
    """What to watch and whom to tell; the caller reads stack config, the component never does."""

    name: str
    """The dashboard name (letters, digits, ``_``, ``-``); also prefixes the alarm and topic names."""
    region: str
    """Region of the metrics (the dashboard's widgets and its console URL)."""
    model_ids: tuple[str, ...]
    """The stack's allowed model ids: the ``model_id`` values of the per-model widgets and alarms."""
    function_names: Mapping[str, pulumi.Input[str]]
    """Lambda function names by role: ``gatekeeper``, ``worker``, ``subscribe``."""
    alarms_enabled: bool
    dead_letter_queue_name: pulumi.Input[str] | None = None
    """The worker's dead-letter queue (SQS queue name, not URL); None: no DLQ widget or alarm."""
    alarm_email: str | None = None
    """Subscribed to the alarm topic (the address must confirm); ignored while alarms are off."""
    error_rate_threshold_pct: float = 5
    stack_monthly_usd: float | None = None
    """The stack's monthly USD ceiling: a widget of how much is used and, with alarms, an alarm at
    `stack_budget_alarm_pct` of it. None: no ceiling."""
    stack_budget_alarm_pct: float = 80
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if _DASHBOARD_NAME.fullmatch(self.name) is None:
            raise ValueError(f"dashboard name {self.name!r}: use 1-255 letters, digits, '_' or '-'")
        if not self.region:
            raise ValueError("region is required")
        if not isinstance(self.model_ids, tuple) or not self.model_ids or not all(self.model_ids):
            raise ValueError("model_ids must be a non-empty tuple of model ids")
        slugs = [_slug(m) for m in self.model_ids]
        if len(set(slugs)) != len(slugs):
            raise ValueError(f"model_ids must be distinct (ignoring punctuation): {self.model_ids}")
        unknown = sorted(set(self.function_names) - set(FUNCTION_ROLES))
        if unknown:
            raise ValueError(f"function_names: unknown roles {unknown}; use {FUNCTION_ROLES}")
        if self.alarms_enabled and "worker" not in self.function_names:
            raise ValueError("function_names needs the worker when alarms are enabled (its errors are alarmed)")
        if not 0 < self.error_rate_threshold_pct <= 100:
            raise ValueError(f"error_rate_threshold_pct={self.error_rate_threshold_pct}; use a value in (0, 100]")
        if self.stack_monthly_usd is not None and not self.stack_monthly_usd > 0:
            raise ValueError(f"stack_monthly_usd={self.stack_monthly_usd}; use a positive amount or None")
        if not 0 < self.stack_budget_alarm_pct <= 100:
            raise ValueError(f"stack_budget_alarm_pct={self.stack_budget_alarm_pct}; use a value in (0, 100]")
        if self.alarm_email is not None and _EMAIL.fullmatch(self.alarm_email) is None:
            raise ValueError(f"alarm_email {self.alarm_email!r} is not an e-mail address")


def dashboard_url(region: str, name: str) -> str:
    return f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#dashboards:name={name}"


def _slug(model_id: str) -> str:
    """A model id as a resource / alarm name part: ``anthropic.claude-3:0`` -> ``anthropic-claude-3-0``."""
    return re.sub(r"[^0-9A-Za-z]+", "-", model_id).strip("-").lower()


# ---------------------------------------------------------------------------------------------------- dashboard


def _gateway_metric(metric: str, model_id: str, stat: str, label: str) -> list[Any]:
    return [METRICS_NAMESPACE, metric, "model_id", model_id, {"stat": stat, "label": label}]


def _per_model(metric: str, model_ids: tuple[str, ...], stat: str = "Sum") -> list[list[Any]]:
    return [_gateway_metric(metric, m, stat, m) for m in model_ids]


def _percentiles(metric: str, model_ids: tuple[str, ...]) -> list[list[Any]]:
    return [_gateway_metric(metric, m, p, f"{m} {p}") for m in model_ids for p in PERCENTILES]


def _search(metric: str, dimensions: tuple[str, ...], stat: str = "Sum") -> list[list[Any]]:
    schema = ",".join((METRICS_NAMESPACE, *dimensions))
    expression = f"SEARCH('{{{schema}}} MetricName=\"{metric}\"', '{stat}', {PERIOD_S})"
    return [[{"expression": expression, "id": "e1", "label": "", "period": PERIOD_S}]]


def _per_function(metric: str, functions: Mapping[str, pulumi.Input[str]], stat: str) -> list[list[Any]]:
    return [["AWS/Lambda", metric, "FunctionName", name, {"stat": stat, "label": role}]
            for role, name in functions.items()]


def dashboard_widgets(args: ObservabilityArgs) -> list[dict[str, Any]]:
    """The dashboard's widgets (function and queue names may still be Outputs): two per row, 12 x 6 each."""
    models, functions = args.model_ids, args.function_names
    graphs: list[tuple[str, list[list[Any]]]] = [
        ("Input tokens by model (Sum)", _per_model("InputTokens", models)),
        ("Output tokens by model (Sum)", _per_model("OutputTokens", models)),
        ("Time to first token (ms) p50 / p90 / p99", _percentiles("TimeToFirstTokenMs", models)),
        ("Response latency (ms) p50 / p90 / p99", _percentiles("ResponseLatencyMs", models)),
        ("Refusals by reason", _search("Refusals", ("model_id", "reason"))),
        ("Errors by code", _search("Errors", ("code", "model_id"))),
        ("Cache hits by model", _per_model("CacheHits", models)),
        # Also reported under `unknown`: leases found expired while the gatekeeper refused a request.
        ("Expired reservations", _per_model("ExpiredReservations", (*models, UNKNOWN_MODEL))),
        ("Reservation overshoot tokens", _per_model("ReservationOvershootTokens", models)),
        ("Events AppSync refused (after one retry)", [[METRICS_NAMESPACE, "PublishFailures", {"stat": "Sum"}]]),
        ("Spend by team (USD, catalog prices)", _search(SPEND_METRIC, ("team",))),
        ("Lambda errors", _per_function("Errors", functions, "Sum")),
        ("Lambda throttles", _per_function("Throttles", functions, "Sum")),
        ("Lambda duration (ms) p99", _per_function("Duration", functions, "p99")),
    ]
    if args.stack_monthly_usd is not None:
        graphs.append(
            (
                f"Stack ceiling used (% of ${args.stack_monthly_usd:,.2f} this month)",
                [[METRICS_NAMESPACE, STACK_BUDGET_METRIC, {"stat": "Maximum", "label": "used %"}]],
            )
        )
    if args.dead_letter_queue_name is not None:
        graphs.append(
            (
                "Worker dead-letter queue: messages visible",
                [["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", args.dead_letter_queue_name,
                  {"stat": "Maximum", "label": "visible"}]],
            )
        )
    return [
        {
            "type": "metric",
            "x": 12 * (i % 2),
            "y": 6 * (i // 2),
            "width": 12,
            "height": 6,
            "properties": {
                "title": title,
                "region": args.region,
                "view": "timeSeries",
                "stacked": False,
                "period": PERIOD_S,
                "metrics": metrics,
            },
        }
        for i, (title, metrics) in enumerate(graphs)
    ]


# ------------------------------------------------------------------------------------------------------ alarms


def _stat(
    query_id: str, namespace: str, metric: str, dimensions: Mapping[str, pulumi.Input[str]], stat: str
) -> aws.cloudwatch.MetricAlarmMetricQueryArgs:
    return aws.cloudwatch.MetricAlarmMetricQueryArgs(
        id=query_id,
        return_data=False,
        metric=aws.cloudwatch.MetricAlarmMetricQueryMetricArgs(
            namespace=namespace, metric_name=metric, dimensions=dict(dimensions), period=PERIOD_S, stat=stat
        ),
    )


def error_rate_queries(model_id: str) -> list[aws.cloudwatch.MetricAlarmMetricQueryArgs]:
    """``rate = 100 * SUM(server errors) / SampleCount(ResponseLatencyMs)`` for one model (4 metrics)."""
    errors = [
        _stat(f"e_{code}", METRICS_NAMESPACE, "Errors", {"model_id": model_id, "code": code}, "Sum")
        for code in SERVER_ERROR_CODES
    ]
    filled = ", ".join(f"FILL(e_{code}, 0)" for code in SERVER_ERROR_CODES)
    return [
        *errors,
        _stat("requests", METRICS_NAMESPACE, "ResponseLatencyMs", {"model_id": model_id}, "SampleCount"),
        aws.cloudwatch.MetricAlarmMetricQueryArgs(id="errors", expression=f"SUM([{filled}])", return_data=False),
        aws.cloudwatch.MetricAlarmMetricQueryArgs(
            id="rate", expression="100 * errors / requests", label="error rate (%)", return_data=True
        ),
    ]


EXPIRED_RESERVATIONS_QUERY = f'SELECT SUM(ExpiredReservations) FROM SCHEMA("{METRICS_NAMESPACE}", model_id)'


class Observability(pulumi.ComponentResource):
    """The gateway's dashboard, and (when enabled) its alarms with an encrypted SNS topic to notify."""

    dashboard_name: pulumi.Output[str]
    dashboard_url: pulumi.Output[str]
    alarm_topic_arn: pulumi.Output[str] | None
    """None while alarms are off."""

    def __init__(
        self, resource_name: str, args: ObservabilityArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ai-gateway:observability:Observability", resource_name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        dashboard = aws.cloudwatch.Dashboard(
            f"{resource_name}-dashboard",
            dashboard_name=args.name,
            dashboard_body=pulumi.Output.json_dumps({"widgets": dashboard_widgets(args)}),
            opts=child,
        )
        self.dashboard_name = dashboard.dashboard_name
        self.dashboard_url = dashboard.dashboard_name.apply(lambda name: dashboard_url(args.region, name))
        self.alarm_topic_arn = self._alarms(resource_name, args) if args.alarms_enabled else None
        self.register_outputs(
            {
                "dashboard_name": self.dashboard_name,
                "dashboard_url": self.dashboard_url,
                "alarm_topic_arn": self.alarm_topic_arn,
            }
        )

    def _alarms(self, resource_name: str, args: ObservabilityArgs) -> pulumi.Output[str]:
        """The topic (and its key, and the e-mail subscription) and every alarm; returns the topic ARN."""
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        partition = aws.get_partition_output(opts=invoke).partition
        account = aws.get_caller_identity_output(opts=invoke).account_id

        key = aws.kms.Key(
            f"{resource_name}-alarms",
            description=f"{args.name}: encrypts the alarm topic; CloudWatch alarms may use it to publish",
            enable_key_rotation=True,
            policy=pulumi.Output.json_dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "AccountAdministersTheKey",
                            "Effect": "Allow",
                            "Principal": {"AWS": pulumi.Output.format("arn:{0}:iam::{1}:root", partition, account)},
                            "Action": "kms:*",
                            "Resource": "*",
                        },
                        {
                            "Sid": "CloudWatchAlarmsPublishToTheTopic",
                            "Effect": "Allow",
                            "Principal": {"Service": "cloudwatch.amazonaws.com"},
                            "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                            "Resource": "*",
                        },
                    ],
                }
            ),
            tags=tags,
            opts=child,
        )
        topic = aws.sns.Topic(
            f"{resource_name}-alarms",
            name=f"{args.name}-alarms",
            kms_master_key_id=key.arn,
            tags=tags,
            opts=child,
        )
        if args.alarm_email is not None:
            aws.sns.TopicSubscription(
                f"{resource_name}-alarms-email",
                topic=topic.arn,
                protocol="email",
                endpoint=args.alarm_email,
                opts=child,
            )

        def alarm(suffix: str, description: str, **kwargs: Any) -> None:
            aws.cloudwatch.MetricAlarm(
                f"{resource_name}-{suffix}",
                name=f"{args.name}-{suffix}",
                alarm_description=description,
                alarm_actions=[topic.arn],
                ok_actions=[topic.arn],
                treat_missing_data="notBreaching",
                tags=tags,
                opts=child,
                **kwargs,
            )

        def any_of(
            namespace: str, metric: str, dimensions: Mapping[str, pulumi.Input[str]], stat: str
        ) -> dict[str, Any]:
            """``metric > 0`` over one period."""
            return {
                "namespace": namespace,
                "metric_name": metric,
                "dimensions": dict(dimensions),
                "statistic": stat,
                "period": PERIOD_S,
                "evaluation_periods": 1,
                "threshold": 0,
                "comparison_operator": "GreaterThanThreshold",
            }

        for model_id in args.model_ids:
            alarm(
                f"error-rate-{_slug(model_id)}",
                f"More than {args.error_rate_threshold_pct:g}% of {model_id} requests failed on the gateway's side"
                " (model error or throttling, or a worker failure) in 2 of the last 3 five-minute periods",
                metric_queries=error_rate_queries(model_id),
                evaluation_periods=3,
                datapoints_to_alarm=2,
                threshold=args.error_rate_threshold_pct,
                comparison_operator="GreaterThanThreshold",
            )
        alarm(
            "gatekeeper-internal-errors",
            "The gatekeeper failed to take requests (internal errors before the model was known)",
            **any_of(METRICS_NAMESPACE, "Errors", {"model_id": UNKNOWN_MODEL, "code": "internal"}, "Sum"),
        )
        alarm(
            "worker-errors",
            "The worker Lambda function failed (an invocation that raised; its event goes to the dead-letter queue)",
            **any_of("AWS/Lambda", "Errors", {"FunctionName": args.function_names["worker"]}, "Sum"),
        )
        for role, function_name in args.function_names.items():
            alarm(
                f"{role}-throttles",
                f"The {role} Lambda function was throttled (concurrency limit reached)",
                **any_of("AWS/Lambda", "Throttles", {"FunctionName": function_name}, "Sum"),
            )
        if args.dead_letter_queue_name is not None:
            alarm(
                "worker-dlq",
                "Requests the worker gave up on are waiting in its dead-letter queue",
                **any_of("AWS/SQS", "ApproximateNumberOfMessagesVisible",
                         {"QueueName": args.dead_letter_queue_name}, "Maximum"),
            )
        alarm(
            "publish-failures",
            "AppSync refused answer events twice: users saw an answer cut short or an error instead of its end",
            **any_of(METRICS_NAMESPACE, "PublishFailures", {}, "Sum"),
        )
        if args.stack_monthly_usd is not None:
            alarm(
                "stack-budget",
                f"More than {args.stack_budget_alarm_pct:g}% of the stack's monthly ceiling"
                f" (${args.stack_monthly_usd:,.2f}) is spent or held; at 100% every request is refused",
                namespace=METRICS_NAMESPACE,
                metric_name=STACK_BUDGET_METRIC,
                dimensions={},
                statistic="Maximum",
                period=PERIOD_S,
                evaluation_periods=1,
                threshold=args.stack_budget_alarm_pct,
                comparison_operator="GreaterThanOrEqualToThreshold",
            )
        alarm(
            "expired-reservations",
            "Token reservations expired before they were settled: workers are dying or running past their lease",
            metric_queries=[
                aws.cloudwatch.MetricAlarmMetricQueryArgs(
                    id="expired", expression=EXPIRED_RESERVATIONS_QUERY, period=PERIOD_S, return_data=True
                )
            ],
            evaluation_periods=1,
            threshold=0,
            comparison_operator="GreaterThanThreshold",
        )
        return topic.arn
