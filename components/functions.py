"""Functions: the gateway's three Lambda functions, their roles, log groups and the worker's dead-letter queue.

The `runtime/` package is shipped as source (no build step); its third-party imports (Powertools, pydantic)
come from AWS's public Powertools layer and boto3 from the Lambda runtime. Each function gets its own role
holding exactly what its code calls, on the resources it calls them on, so a bug or an injection in one
function cannot reach what only another needs (the gatekeeper cannot call Bedrock, the worker cannot invoke
Lambda, the subscribe handler can only write its own logs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws

from components.settings import aws_partition
from runtime.channels import RESPONSES_NAMESPACE
from runtime.config import ENV

__all__ = [
    "FUNCTION_KINDS",
    "HANDLERS",
    "LOG_RETENTION_DAYS",
    "MAX_ENVIRONMENT_BYTES",
    "RESERVED_ENV",
    "FunctionSettings",
    "Functions",
    "FunctionsArgs",
    "lambda_environment",
    "max_event_age_seconds",
    "powertools_layer_arn",
]

RUNTIME_DIR = Path(__file__).resolve().parents[1] / "runtime"

FUNCTION_KINDS = ("gatekeeper", "worker", "subscribe")
HANDLERS = {kind: f"runtime.handlers.{kind}_handler" for kind in FUNCTION_KINDS}

# AWS's account publishing the public Powertools for AWS Lambda (Python) layers in the commercial partition.
POWERTOOLS_LAYER_ACCOUNT = "017000801446"
METRICS_NAMESPACE = "AIGateway"  # the one `runtime.observability` defaults to

# Lambda sets these itself and refuses a configuration that names them (AWS_REGION comes from `to_env()`).
RESERVED_ENV = frozenset({
    "_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR", "TZ",
})  # fmt: skip
MAX_ENVIRONMENT_BYTES = 4096  # Lambda's quota on all of a function's variables together
_ENV_KEY = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]+$")  # Lambda's `Environment.Variables` key pattern

# The values CloudWatch Logs accepts for a retention (0, "never expire", is deliberately not offered).
LOG_RETENTION_DAYS = frozenset(
    {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653}
)
# The Python level names Powertools takes (`POWERTOOLS_LOG_LEVEL`); Lambda's WARN and FATAL are accepted as aliases.
_LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
_LOG_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}

MIN_EVENT_AGE_S, MAX_EVENT_AGE_S = 60, 21_600  # FunctionEventInvokeConfig's accepted range
DLQ_RETENTION_S = 14 * 24 * 3600  # SQS's maximum: time to look at a failed job after a long weekend

_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
_PYTHON_RUNTIME = re.compile(r"^python3\.(\d+)$")


@dataclass(frozen=True)
class FunctionSettings:
    """Sizing of one function. `reserved_concurrency` None leaves it unreserved; 0 is a kill switch."""

    memory_mb: int
    timeout_s: int
    reserved_concurrency: int | None = None

    def __post_init__(self) -> None:
        if not 128 <= self.memory_mb <= 10_240:
            raise ValueError(f"memory_mb must be within 128..10240, got {self.memory_mb}")
        if not 1 <= self.timeout_s <= 900:
            raise ValueError(f"timeout_s must be within 1..900, got {self.timeout_s}")
        if self.reserved_concurrency is not None and self.reserved_concurrency < 0:
            raise ValueError(f"reserved_concurrency must be >= 0 or None, got {self.reserved_concurrency}")


@dataclass(frozen=True)
class FunctionsArgs:
    """What the functions need from the rest of the stack.

    `runtime_env` is the complete runtime environment (`RuntimeConfig.to_env()`, values may be Outputs). The
    component removes `AWS_REGION` (Lambda sets it) and owns `AIGW_WORKER_FUNCTION`, which it sets to the
    worker's deterministic name `{name}-worker`. `model_arns` are the Bedrock foundation-model and
    inference-profile ARNs the worker may invoke (for a cross-region profile, the caller includes the
    foundation models of every destination region).
    """

    name: str  # prefix of every physical name, e.g. "ai-gateway-dev"
    region: str
    runtime_env: pulumi.Input[Mapping[str, str]]
    metering_table_arn: pulumi.Input[str]
    cache_table_arn: pulumi.Input[str]
    streams_table_arn: pulumi.Input[str]  # the answer journal (runtime/streams.py)
    api_id: pulumi.Input[str]  # the AppSync Events API whose `responses` namespace the functions publish to
    model_arns: pulumi.Input[Sequence[str]]
    powertools_layer_version: int
    lease_seconds: int  # the meter's reservation lease (`AIGW_LEASE_SECONDS`)
    gatekeeper: FunctionSettings
    worker: FunctionSettings
    subscribe: FunctionSettings
    log_retention_days: int = 30
    log_level: str = "INFO"
    guardrail_arn: pulumi.Input[str] | None = None
    python_runtime: str = "python3.13"
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"name must match [a-zA-Z0-9-_]+, got {self.name!r}")
        if not _REGION.match(self.region):
            raise ValueError(f"region does not look like an AWS region: {self.region!r}")
        for kind in FUNCTION_KINDS:
            if len(role := self.role_name(kind)) > 64:  # the function name is shorter still
                raise ValueError(f"name {self.name!r} is too long: IAM role name {role!r} exceeds 64 characters")
        if not _PYTHON_RUNTIME.match(self.python_runtime):
            raise ValueError(f"python_runtime must look like 'python3.13', got {self.python_runtime!r}")
        if self.powertools_layer_version < 1:
            raise ValueError(f"powertools_layer_version must be >= 1, got {self.powertools_layer_version}")
        if self.lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {self.lease_seconds}")
        if self.worker.timeout_s >= self.lease_seconds:
            # Otherwise a reservation can expire while its worker still streams: the meter would let the
            # user spend the same tokens twice.
            raise ValueError(
                f"worker timeout ({self.worker.timeout_s}s) must be shorter than the lease ({self.lease_seconds}s)"
            )
        if self.log_retention_days not in LOG_RETENTION_DAYS:
            raise ValueError(f"log_retention_days must be one of {sorted(LOG_RETENTION_DAYS)}")
        if self.python_log_level not in _LOG_LEVELS:
            raise ValueError(f"log_level must be one of {sorted(_LOG_LEVELS)}, got {self.log_level!r}")

    def function_name(self, kind: str) -> str:
        return f"{self.name}-{kind}"

    def role_name(self, kind: str) -> str:
        # IAM is global: the region keeps the same stack deployed in two regions from colliding.
        return f"{self.name}-{kind}-{self.region}"

    @property
    def python_log_level(self) -> str:
        level = self.log_level.upper()
        return _LOG_LEVEL_ALIASES.get(level, level)


def lambda_application_log_level(python_log_level: str) -> str:
    """Lambda's JSON `application_log_level` for a function whose Powertools logs at `python_log_level`.

    Never above INFO: Lambda files a line without a recognised `level` (every EMF metric blob) or without an
    RFC 3339 `timestamp` as INFO, so a WARN or ERROR filter here would drop the metrics and, with them, alarms and
    dashboards. Powertools (`POWERTOOLS_LOG_LEVEL`) does the filtering; Lambda only passes DEBUG through for it.
    """
    return "DEBUG" if python_log_level == "DEBUG" else "INFO"


def powertools_layer_arn(region: str, python_runtime: str, version: int) -> str:
    """AWS's public Powertools V3 layer for arm64: `...:AWSLambdaPowertoolsPythonV3-python313-arm64:<version>`."""
    layer = f"AWSLambdaPowertoolsPythonV3-{python_runtime.replace('.', '')}-arm64"
    return f"arn:{aws_partition(region)}:lambda:{region}:{POWERTOOLS_LAYER_ACCOUNT}:layer:{layer}:{version}"


def max_event_age_seconds(lease_seconds: int, worker_timeout_s: int) -> int:
    """How long a queued worker job may wait: it must not start so late that it outlives its reservation.

    Lambda only accepts 60..21600 s; below 60 the bound cannot hold and a late job settles after its lease,
    which the meter still records (a late settlement), just without the reservation's protection.
    """
    return max(MIN_EVENT_AGE_S, min(MAX_EVENT_AGE_S, lease_seconds - worker_timeout_s))


def lambda_environment(runtime_env: Mapping[str, Any], region: str, extra: Mapping[str, str]) -> dict[str, str]:
    """The variables one function gets: the runtime's, minus what Lambda reserves, plus the component's own.

    Raises ValueError for anything Lambda would refuse at deployment (reserved or malformed keys, more than
    4 KB in total) and for a runtime region or worker name that contradicts the component's.
    """
    env: dict[str, str] = {}
    for key, value in runtime_env.items():
        if not isinstance(value, str):
            raise ValueError(f"environment variable {key} must be a string, got {type(value).__name__}")
        if key == ENV["region"]:
            if value != region:
                raise ValueError(f"{key}={value!r} contradicts the functions' region {region!r}")
            continue  # Lambda sets it
        if key in RESERVED_ENV:
            raise ValueError(f"environment variable {key} is reserved by Lambda")
        env[key] = value
    for key, value in extra.items():
        if key in env and env[key] != value:
            raise ValueError(f"{key}={env[key]!r} contradicts the component's {value!r}")
        env[key] = value
    for key in env:
        if not _ENV_KEY.match(key):
            raise ValueError(f"environment variable name {key!r} is not accepted by Lambda")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in env.items())
    if size > MAX_ENVIRONMENT_BYTES:
        raise ValueError(f"environment is {size} bytes, over Lambda's {MAX_ENVIRONMENT_BYTES}-byte limit")
    return env


def runtime_archive() -> pulumi.AssetArchive:
    """`runtime/` as the function code, bytecode caches left out (they would change the hash on every run)."""
    files = sorted(
        p for p in RUNTIME_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    return pulumi.AssetArchive(
        {f"runtime/{p.relative_to(RUNTIME_DIR).as_posix()}": pulumi.FileAsset(str(p)) for p in files}
    )


def _check_model_arns(arns: Sequence[str]) -> list[str]:
    arns = list(arns)
    if not arns:
        raise ValueError("model_arns must not be empty: the worker could not call any model")
    for arn in arns:
        if not isinstance(arn, str) or not arn.startswith("arn:") or ":bedrock:" not in arn:
            raise ValueError(f"model_arns must be Bedrock ARNs, got {arn!r}")
    return arns


def _document(*statements: Mapping[str, Any]) -> pulumi.Output[str]:
    return pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _allow(sid: str, actions: Sequence[str], resources: Any) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": resources}


class Functions(pulumi.ComponentResource):
    """The subscribe handler, the gatekeeper and the worker, each with its own least-privilege role."""

    gatekeeper_arn: pulumi.Output[str]
    worker_arn: pulumi.Output[str]
    subscribe_arn: pulumi.Output[str]
    gatekeeper_name: pulumi.Output[str]
    worker_name: pulumi.Output[str]
    subscribe_name: pulumi.Output[str]
    gatekeeper_role_arn: pulumi.Output[str]
    worker_role_arn: pulumi.Output[str]
    subscribe_role_arn: pulumi.Output[str]
    dead_letter_queue_url: pulumi.Output[str]
    dead_letter_queue_arn: pulumi.Output[str]

    def __init__(self, resource_name: str, args: FunctionsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ai-gateway:functions:Functions", resource_name, None, opts)
        self._args = args
        self._roles: dict[str, aws.iam.Role] = {}
        self._policies: dict[str, aws.iam.RolePolicy] = {}
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        partition = aws.get_partition_output(opts=invoke).partition
        account = aws.get_caller_identity_output(opts=invoke).account_id
        self._partition, self._account = partition, account
        self._code = runtime_archive()
        self._layer = powertools_layer_arn(args.region, args.python_runtime, args.powertools_layer_version)

        responses_arn = pulumi.Output.format(
            "arn:{0}:appsync:{1}:{2}:apis/{3}/channelNamespace/{4}",
            partition, args.region, account, args.api_id, RESPONSES_NAMESPACE,
        )  # fmt: skip
        worker_function_name = args.function_name("worker")

        # The dead-letter queue: where an async worker job lands when it fails or ages out. SSE-SQS, so
        # Lambda needs no KMS permission to write to it.
        dlq = aws.sqs.Queue(
            f"{args.name}-worker-dlq",
            name=f"{worker_function_name}-dlq",
            sqs_managed_sse_enabled=True,
            message_retention_seconds=DLQ_RETENTION_S,
            tags=dict(args.tags),
            opts=child,
        )

        # The worker first: the gatekeeper's policy names it.
        worker = self._function(
            "worker",
            args.worker,
            worker_function_name,
            [
                _allow("Metering", ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
                       [args.metering_table_arn]),
                # append: one conditional UpdateItem per journal write, which also reads the cancel flag.
                _allow("Journal", ["dynamodb:UpdateItem"], [args.streams_table_arn]),
                _allow("InvokeModels", ["bedrock:InvokeModelWithResponseStream"],
                       pulumi.Output.from_input(args.model_arns).apply(_check_model_arns)),
                *([_allow("ApplyGuardrail", ["bedrock:ApplyGuardrail"], [args.guardrail_arn])]
                  if args.guardrail_arn is not None else []),
                _allow("PublishResponses", ["appsync:EventPublish"], [responses_arn]),
                _allow("DeadLetter", ["sqs:SendMessage"], [dlq.arn]),
            ],
        )  # fmt: skip
        gatekeeper = self._function(
            "gatekeeper",
            args.gatekeeper,
            worker.name,  # same value as worker_function_name; the Output orders the worker first
            [
                # admit/usage: a consistent read, then a conditional put; release after a failed hand-over:
                # an update (runtime/metering/dynamodb.py).
                _allow("Metering", ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
                       [args.metering_table_arn]),
                # resume reads the journal; cancel sets its flag (runtime/streams.py).
                _allow("Journal", ["dynamodb:GetItem", "dynamodb:UpdateItem"], [args.streams_table_arn]),
                # lookup: one conditional UpdateItem counting the hit (runtime/cache.py); admin ops run elsewhere.
                _allow("Cache", ["dynamodb:UpdateItem"], [args.cache_table_arn]),
                _allow("InvokeWorker", ["lambda:InvokeFunction"], [worker.arn]),
                _allow("PublishResponses", ["appsync:EventPublish"], [responses_arn]),
            ],
        )  # fmt: skip
        subscribe = self._function("subscribe", args.subscribe, worker_function_name, [])

        # Asynchronous invocations of the worker: never retried (a retry calls the model a second time and
        # settles twice), and dropped to the DLQ once too old to finish within the reservation's lease.
        self.worker_invoke_config = aws.lambda_.FunctionEventInvokeConfig(
            f"{args.name}-worker-async",
            function_name=worker.name,
            maximum_retry_attempts=0,
            maximum_event_age_in_seconds=max_event_age_seconds(args.lease_seconds, args.worker.timeout_s),
            destination_config=aws.lambda_.FunctionEventInvokeConfigDestinationConfigArgs(
                on_failure=aws.lambda_.FunctionEventInvokeConfigDestinationConfigOnFailureArgs(destination=dlq.arn),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self._policies["worker"]]),
        )

        self.gatekeeper_arn, self.gatekeeper_name = gatekeeper.arn, gatekeeper.name
        self.worker_arn, self.worker_name = worker.arn, worker.name
        self.subscribe_arn, self.subscribe_name = subscribe.arn, subscribe.name
        self.gatekeeper_role_arn = self._roles["gatekeeper"].arn
        self.worker_role_arn = self._roles["worker"].arn
        self.subscribe_role_arn = self._roles["subscribe"].arn
        self.dead_letter_queue_url, self.dead_letter_queue_arn = dlq.url, dlq.arn
        self.register_outputs({
            "gatekeeper_arn": self.gatekeeper_arn,
            "worker_arn": self.worker_arn,
            "subscribe_arn": self.subscribe_arn,
            "gatekeeper_name": self.gatekeeper_name,
            "worker_name": self.worker_name,
            "subscribe_name": self.subscribe_name,
            "gatekeeper_role_arn": self.gatekeeper_role_arn,
            "worker_role_arn": self.worker_role_arn,
            "subscribe_role_arn": self.subscribe_role_arn,
            "dead_letter_queue_url": self.dead_letter_queue_url,
            "dead_letter_queue_arn": self.dead_letter_queue_arn,
        })  # fmt: skip

    def _function(
        self,
        kind: str,
        settings: FunctionSettings,
        worker_function_name: pulumi.Input[str],
        statements: list[dict[str, Any]],
    ) -> aws.lambda_.Function:
        """One function with its log group, role and inline policy (its own logs plus `statements`)."""
        args = self._args
        child = pulumi.ResourceOptions(parent=self)
        function_name = args.function_name(kind)
        log_group_name = f"/aws/lambda/{function_name}"

        log_group = aws.cloudwatch.LogGroup(
            f"{function_name}-logs",
            name=log_group_name,
            retention_in_days=args.log_retention_days,
            tags=dict(args.tags),
            opts=child,
        )
        role = aws.iam.Role(
            f"{function_name}-role",
            name=args.role_name(kind),
            assume_role_policy=_document({
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }),
            tags=dict(args.tags),
            opts=child,
        )  # fmt: skip
        # The log group exists already (created above), so no logs:CreateLogGroup.
        log_arn = pulumi.Output.format(
            "arn:{0}:logs:{1}:{2}:log-group:{3}", self._partition, args.region, self._account, log_group_name
        )
        log_streams = pulumi.Output.concat(log_arn, ":*")
        logs = _allow("Logs", ["logs:CreateLogStream", "logs:PutLogEvents"], [log_arn, log_streams])
        policy = aws.iam.RolePolicy(
            f"{function_name}-policy",
            name=function_name,
            role=role.id,
            policy=_document(logs, *statements),
            opts=child,
        )
        self._roles[kind], self._policies[kind] = role, policy

        variables = pulumi.Output.all(pulumi.Output.from_input(args.runtime_env), worker_function_name).apply(
            lambda values: lambda_environment(
                values[0],
                args.region,
                {
                    ENV["worker_function_name"]: values[1],
                    "POWERTOOLS_SERVICE_NAME": function_name,
                    "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                    "POWERTOOLS_LOG_LEVEL": args.python_log_level,
                },
            )
        )
        return aws.lambda_.Function(
            function_name,
            name=function_name,
            role=role.arn,
            architectures=["arm64"],
            runtime=args.python_runtime,
            handler=HANDLERS[kind],
            code=self._code,
            layers=[self._layer],
            memory_size=settings.memory_mb,
            timeout=settings.timeout_s,
            reserved_concurrent_executions=settings.reserved_concurrency,
            environment=aws.lambda_.FunctionEnvironmentArgs(variables=variables),
            logging_config=aws.lambda_.FunctionLoggingConfigArgs(
                log_format="JSON",
                log_group=log_group.name,
                application_log_level=lambda_application_log_level(args.python_log_level),
                system_log_level="INFO",  # platform START/REPORT lines: duration and memory of each invoke
            ),
            tags=dict(args.tags),
            # Not invocable before it can log and do its job.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[log_group, policy]),
        )
