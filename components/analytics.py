"""Analytics: usage records from the functions' logs into S3 as Parquet, queryable with Athena.

Path of a record: the runtime writes one ``"record_type": "usage"`` JSON log line per request
(`runtime.observability`). A CloudWatch Logs subscription filter on each function's log group sends exactly those
lines to a Firehose delivery stream; its processing Lambda (`runtime.analytics.handler`) unpacks the gzipped
CloudWatch Logs envelopes into one flat JSON row per record; Firehose converts the rows to Parquet (Snappy) with
the schema of the Glue table and writes them under `runtime.analytics.PARTITION_PREFIX` of the data bucket.
Athena reads them through the Glue table, whose partitions are *projected* (no crawler, no `MSCK REPAIR`): the
projection's storage template is derived from `PARTITION_PREFIX`, so the two cannot drift apart.

The Glue columns are generated from `USAGE_RECORD_FIELDS`. Athena runs in a workgroup that enforces its own
settings (results in the results bucket, SSE-S3, a per-query scan cutoff); the saved queries are the ``.sql``
files of `queries_dir`, one `aws.athena.NamedQuery` each.

Both buckets are private (public access block, bucket-owner-enforced ownership, TLS only) and encrypted (SSE-S3,
so no role needs KMS permissions); the stream is encrypted with an AWS-owned key. Each role holds only what its
service calls, on the resources it calls them on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws

from components._s3 import policy_document, private_bucket
from components.functions import LOG_RETENTION_DAYS
from runtime.analytics import ERROR_PREFIX, PARTITION_PREFIX
from runtime.observability import USAGE_RECORD_FIELDS, USAGE_RECORD_TYPE

__all__ = [
    "GLUE_TYPES",
    "PROCESSOR_HANDLER",
    "TABLE_NAME",
    "USAGE_FILTER_PATTERN",
    "Analytics",
    "AnalyticsArgs",
    "NamedQuerySource",
    "glue_columns",
    "projection_parameters",
    "read_queries",
    "storage_location_template",
]

TABLE_NAME = "usage_records"
PROCESSOR_HANDLER = "runtime.analytics.handler"
PYTHON_RUNTIME = "python3.13"
USAGE_FILTER_PATTERN = f'{{ $.record_type = "{USAGE_RECORD_TYPE}" }}'

# `USAGE_RECORD_FIELDS` type -> Glue (Hive) column type.
GLUE_TYPES = {"string": "string", "int": "int", "bigint": "bigint", "boolean": "boolean", "timestamp": "timestamp"}

PROJECTION_FIRST_YEAR = 2025  # no usage record predates the gateway
PROJECTION_LAST_YEAR = 2099  # integer projection takes no "NOW"; a query filters on year anyway
# Firehose's prefix expressions -> the projected partition keys (all strings, zero-padded by `digits`).
_PREFIX_KEYS = {"!{timestamp:yyyy}": "year", "!{timestamp:MM}": "month", "!{timestamp:dd}": "day"}
PARTITION_KEYS = ("year", "month", "day")

PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
PARQUET_INPUT_FORMAT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUTPUT_FORMAT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"

MIN_PARQUET_BUFFER_MB, MAX_BUFFER_MB = 64, 128  # Firehose: format conversion needs >= 64 MB
MIN_BUFFER_S, MAX_BUFFER_S = 60, 900
MIN_BYTES_SCANNED_CUTOFF = 10 * 1024 * 1024  # Athena's minimum per-query limit (10 MB)
MIN_IA_TRANSITION_DAYS = 30  # S3 refuses an earlier transition to STANDARD_IA
PROCESSOR_TIMEOUT_S = 60  # Firehose waits up to 5 minutes; a batch of ~1 MB takes well under a second
PROCESSOR_MEMORY_MB = 256
PROCESSOR_BUFFER_MB = 1  # what Firehose hands the processor per invocation (Lambda's payload limit is 6 MB)
PROCESSOR_BUFFER_S = 60
FIREHOSE_LOG_STREAM = "DestinationDelivery"

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")  # S3 bucket names: lowercase, no underscores
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
_ACCOUNT_ID_LEN = 12
_HEADER = re.compile(r"^--\s*(name|description)\s*:\s*(.*?)\s*$", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class AnalyticsArgs:
    """What the analytics pipeline needs from the rest of the stack; the caller reads config, not the component.

    `processor_code` is the runtime archive, with the ``runtime/`` package at its root (the Functions component's
    code), run with `powertools_layer_arn`. Data objects move to STANDARD_IA after `data_transition_days` (None:
    never) and expire after `data_expiry_days`; Athena results expire after `results_expiry_days`.
    """

    name: str
    """Prefix of every physical name, e.g. ``ai-gateway-dev`` (lowercase: it names S3 buckets)."""
    region: str
    log_group_names: Sequence[pulumi.Input[str]]
    """The runtime functions' log groups; each gets a subscription filter for the usage lines."""
    processor_code: pulumi.Archive
    powertools_layer_arn: pulumi.Input[str]
    data_expiry_days: int
    data_transition_days: int | None
    results_expiry_days: int
    bytes_scanned_cutoff: int
    """Athena's per-query scan limit in bytes (>= 10 MB); a query that scans more is cancelled."""
    queries_dir: Path
    """The ``.sql`` files saved as named queries (``-- name:`` / ``-- description:`` header lines)."""
    render_query: Callable[[str, str], str] | None = None
    """(file stem, file text) -> the SQL to save, e.g. with the stack's tier limits and model prices filled in."""
    buffer_seconds: int = 300
    buffer_mb: int = 64
    log_retention_days: int = 30
    """The processing Lambda's and Firehose's own log groups."""
    processor_reserved_concurrency: int | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"name must be lowercase letters, digits and '-', got {self.name!r}")
        if not _REGION.match(self.region):
            raise ValueError(f"region does not look like an AWS region: {self.region!r}")
        for what, value, limit in (
            ("S3 bucket name", self.results_bucket_name("0" * _ACCOUNT_ID_LEN), 63),
            ("S3 bucket name", self.data_bucket_name("0" * _ACCOUNT_ID_LEN), 63),
            ("IAM role name", self.role_name("firehose"), 64),
            ("IAM role name", self.role_name("usage-logs"), 64),
            ("IAM role name", self.role_name("usage-processor"), 64),
            ("Firehose stream name", self.stream_name, 64),
        ):
            if len(value) > limit:
                raise ValueError(f"name {self.name!r} is too long: {what} {value!r} exceeds {limit} characters")
        if isinstance(self.log_group_names, str) or not self.log_group_names:
            raise ValueError("log_group_names must be a non-empty sequence of log group names")
        if not isinstance(self.processor_code, pulumi.Archive):
            raise ValueError("processor_code must be a pulumi.Archive (the runtime archive)")
        if self.data_expiry_days < 1:
            raise ValueError(f"data_expiry_days must be >= 1, got {self.data_expiry_days}")
        if self.data_transition_days is not None:
            if self.data_transition_days < MIN_IA_TRANSITION_DAYS:
                raise ValueError(
                    f"data_transition_days must be >= {MIN_IA_TRANSITION_DAYS} (STANDARD_IA), "
                    f"got {self.data_transition_days}"
                )
            if self.data_transition_days >= self.data_expiry_days:
                raise ValueError(
                    f"data_transition_days ({self.data_transition_days}) must be less than data_expiry_days "
                    f"({self.data_expiry_days})"
                )
        if self.results_expiry_days < 1:
            raise ValueError(f"results_expiry_days must be >= 1, got {self.results_expiry_days}")
        if not MIN_BUFFER_S <= self.buffer_seconds <= MAX_BUFFER_S:
            raise ValueError(f"buffer_seconds must be within {MIN_BUFFER_S}..{MAX_BUFFER_S}, got {self.buffer_seconds}")
        if not MIN_PARQUET_BUFFER_MB <= self.buffer_mb <= MAX_BUFFER_MB:
            raise ValueError(
                f"buffer_mb must be within {MIN_PARQUET_BUFFER_MB}..{MAX_BUFFER_MB} (Parquet conversion needs "
                f">= {MIN_PARQUET_BUFFER_MB}), got {self.buffer_mb}"
            )
        if self.bytes_scanned_cutoff < MIN_BYTES_SCANNED_CUTOFF:
            raise ValueError(
                f"bytes_scanned_cutoff must be >= {MIN_BYTES_SCANNED_CUTOFF} (Athena's minimum), "
                f"got {self.bytes_scanned_cutoff}"
            )
        if not Path(self.queries_dir).is_dir():
            raise ValueError(f"queries_dir {str(self.queries_dir)!r} is not a directory")
        if self.log_retention_days not in LOG_RETENTION_DAYS:
            raise ValueError(f"log_retention_days must be one of {sorted(LOG_RETENTION_DAYS)}")
        if self.processor_reserved_concurrency is not None and self.processor_reserved_concurrency < 1:
            raise ValueError(
                f"processor_reserved_concurrency must be >= 1 or None, got {self.processor_reserved_concurrency}"
            )

    def data_bucket_name(self, account: str) -> str:
        # Bucket names are global: the account and region keep stacks (and their copies) apart.
        return f"{self.name}-usage-{account}-{self.region}"

    def results_bucket_name(self, account: str) -> str:
        return f"{self.name}-athena-{account}-{self.region}"

    def role_name(self, purpose: str) -> str:
        return f"{self.name}-{purpose}-{self.region}"  # IAM is global, as in Functions

    @property
    def database_name(self) -> str:
        return f"{self.name}_analytics".replace("-", "_")  # Athena: lowercase, digits, underscores

    @property
    def stream_name(self) -> str:
        return f"{self.name}-usage"

    @property
    def processor_name(self) -> str:
        return f"{self.name}-usage-processor"

    @property
    def workgroup_name(self) -> str:
        return f"{self.name}-analytics"


# --- Pure helpers (tested directly) ---------------------------------------------------------------------------


def glue_columns() -> list[dict[str, str]]:
    """The table's columns, in `USAGE_RECORD_FIELDS` order: ``[{"name": ..., "type": ...}]``."""
    columns = []
    for name, kind in USAGE_RECORD_FIELDS:
        if kind not in GLUE_TYPES:
            raise ValueError(f"usage field {name!r} has type {kind!r}, which has no Glue type")
        columns.append({"name": name, "type": GLUE_TYPES[kind]})
    return columns


def storage_location_template(bucket: str, prefix: str = PARTITION_PREFIX) -> str:
    """Partition projection's template for Firehose's `prefix`: ``!{timestamp:yyyy}`` -> ``${year}`` etc."""
    template = prefix
    for expression, key in _PREFIX_KEYS.items():
        if template.count(expression) != 1:
            raise ValueError(f"prefix {prefix!r} must contain {expression} exactly once")
        template = template.replace(expression, "${" + key + "}")
    if "!{" in template or not template.endswith("/"):
        raise ValueError(f"prefix {prefix!r}: only {sorted(_PREFIX_KEYS)} can be projected, and it must end in '/'")
    return f"s3://{bucket}/{template}"


def _table_location(template: str) -> str:
    """The longest fixed directory of the template: ``s3://b/usage/year=${year}/...`` -> ``s3://b/usage/``."""
    return template[: template.index("${")].rsplit("/", 1)[0] + "/"


def projection_parameters(bucket: str) -> dict[str, str]:
    """The Glue table parameters enabling partition projection over year/month/day (zero-padded like Firehose)."""
    return {
        "projection.enabled": "true",
        "projection.year.type": "integer",
        "projection.year.range": f"{PROJECTION_FIRST_YEAR},{PROJECTION_LAST_YEAR}",
        "projection.month.type": "integer",
        "projection.month.range": "1,12",
        "projection.month.digits": "2",
        "projection.day.type": "integer",
        "projection.day.range": "1,31",
        "projection.day.digits": "2",
        "storage.location.template": storage_location_template(bucket),
    }


@dataclass(frozen=True)
class NamedQuerySource:
    stem: str
    name: str
    description: str | None
    query: str


def read_queries(queries_dir: Path) -> list[NamedQuerySource]:
    """Every ``*.sql`` file of `queries_dir`, sorted by file name. The name is the ``-- name:`` header or the
    file's stem; the description the ``-- description:`` header. Headers are the leading comment lines."""
    queries = []
    for path in sorted(Path(queries_dir).glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        headers: dict[str, str] = {}
        for line in text.splitlines():
            stripped = line.strip()
            if not stripped:
                continue
            if not stripped.startswith("--"):
                break
            if match := _HEADER.match(stripped):
                headers.setdefault(match.group(1).lower(), match.group(2))
        if not text.strip():
            raise ValueError(f"{path}: empty query")
        queries.append(
            NamedQuerySource(
                stem=path.stem,
                name=headers.get("name") or path.stem,
                description=headers.get("description") or None,
                query=text,
            )
        )
    names = [q.name for q in queries]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"{queries_dir}: duplicate query names {duplicates}")
    return queries


def _allow(sid: str, actions: Sequence[str], resources: Any) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": resources}


def _trust(service: pulumi.Input[str], condition: Mapping[str, Any]) -> pulumi.Output[str]:
    return policy_document({
        "Effect": "Allow",
        "Principal": {"Service": service},
        "Action": "sts:AssumeRole",
        "Condition": condition,
    })  # fmt: skip


# --- The component ----------------------------------------------------------------------------------------------


class Analytics(pulumi.ComponentResource):
    """Usage records: log subscription -> Firehose (Lambda, Parquet) -> S3 -> Glue table -> Athena workgroup."""

    data_bucket_name: pulumi.Output[str]
    results_bucket_name: pulumi.Output[str]
    database_name: pulumi.Output[str]
    table_name: pulumi.Output[str]
    workgroup_name: pulumi.Output[str]
    stream_name: pulumi.Output[str]
    stream_arn: pulumi.Output[str]
    processor_name: pulumi.Output[str]

    def __init__(self, resource_name: str, args: AnalyticsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ai-gateway:analytics:Analytics", resource_name, None, opts)
        self._args = args
        self._resource_name = resource_name
        self._tags = dict(args.tags)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        partition = aws.get_partition_output(opts=invoke).partition
        account = aws.get_caller_identity_output(opts=invoke).account_id
        self._partition = partition
        queries = read_queries(args.queries_dir)  # fail before declaring anything

        data_bucket, data_arn = self._bucket(
            "data", account.apply(args.data_bucket_name), args.data_expiry_days, args.data_transition_days,
            force_destroy=False,
        )  # fmt: skip
        results_bucket, _ = self._bucket(
            "results", account.apply(args.results_bucket_name), args.results_expiry_days, None, force_destroy=True
        )

        # --- Glue: the database and the partition-projected Parquet table ---
        database = aws.glue.CatalogDatabase(
            f"{resource_name}-database",
            name=args.database_name,
            description="ai-gateway usage records",
            tags=self._tags,
            opts=child,
        )
        table = aws.glue.CatalogTable(
            f"{resource_name}-usage-records",
            name=TABLE_NAME,
            database_name=database.name,
            description="One row per gateway request (runtime.observability.UsageRecord)",
            table_type="EXTERNAL_TABLE",
            parameters=data_bucket.bucket.apply(
                lambda bucket: {
                    "classification": "parquet",
                    "EXTERNAL": "TRUE",
                    "parquet.compression": "SNAPPY",
                    **projection_parameters(bucket),
                }
            ),
            partition_keys=[aws.glue.CatalogTablePartitionKeyArgs(name=key, type="string") for key in PARTITION_KEYS],
            storage_descriptor=aws.glue.CatalogTableStorageDescriptorArgs(
                location=data_bucket.bucket.apply(lambda bucket: _table_location(storage_location_template(bucket))),
                input_format=PARQUET_INPUT_FORMAT,
                output_format=PARQUET_OUTPUT_FORMAT,
                ser_de_info=aws.glue.CatalogTableStorageDescriptorSerDeInfoArgs(
                    serialization_library=PARQUET_SERDE, parameters={"serialization.format": "1"}
                ),
                columns=[
                    aws.glue.CatalogTableStorageDescriptorColumnArgs(name=column["name"], type=column["type"])
                    for column in glue_columns()
                ],
            ),
            opts=child,
        )
        glue_prefix = pulumi.Output.format("arn:{0}:glue:{1}:{2}", partition, args.region, account)
        glue_catalog = pulumi.Output.concat(glue_prefix, ":catalog")
        glue_database = pulumi.Output.concat(glue_prefix, ":database/", database.name)
        glue_table = pulumi.Output.concat(glue_prefix, ":table/", database.name, "/", table.name)

        # --- The processing Lambda: CloudWatch Logs envelopes -> one JSON row per usage record ---
        processor = self._processor(account)

        # --- Firehose ---
        stream_arn = pulumi.Output.format(
            "arn:{0}:firehose:{1}:{2}:deliverystream/{3}", partition, args.region, account, args.stream_name
        )
        firehose_logs = aws.cloudwatch.LogGroup(
            f"{resource_name}-firehose-logs",
            name=f"/aws/kinesisfirehose/{args.stream_name}",
            retention_in_days=args.log_retention_days,
            tags=self._tags,
            opts=child,
        )
        firehose_log_stream = aws.cloudwatch.LogStream(
            f"{resource_name}-firehose-log-stream",
            name=FIREHOSE_LOG_STREAM,
            log_group_name=firehose_logs.name,
            opts=child,
        )
        firehose_role = aws.iam.Role(
            f"{resource_name}-firehose-role",
            name=args.role_name("firehose"),
            assume_role_policy=_trust("firehose.amazonaws.com", {"StringEquals": {"sts:ExternalId": account}}),
            tags=self._tags,
            opts=child,
        )
        firehose_log_arn = pulumi.Output.format(
            "arn:{0}:logs:{1}:{2}:log-group:{3}", partition, args.region, account, firehose_logs.name
        )
        firehose_policy = aws.iam.RolePolicy(
            f"{resource_name}-firehose-policy",
            name=args.role_name("firehose"),
            role=firehose_role.id,
            policy=policy_document(
                _allow("DataBucket", ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
                       [data_arn]),
                _allow("DataObjects", ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"],
                       [pulumi.Output.concat(data_arn, "/*")]),
                _allow("Schema", ["glue:GetTable", "glue:GetTableVersion", "glue:GetTableVersions"],
                       [glue_catalog, glue_database, glue_table]),
                _allow("Processor", ["lambda:GetFunctionConfiguration", "lambda:InvokeFunction"], [processor.arn]),
                _allow("DeliveryLogs", ["logs:PutLogEvents"],
                       [pulumi.Output.concat(firehose_log_arn, ":log-stream:", firehose_log_stream.name)]),
            ),
            opts=child,
        )  # fmt: skip
        stream = aws.kinesis.FirehoseDeliveryStream(
            f"{resource_name}-stream",
            name=args.stream_name,
            destination="extended_s3",
            server_side_encryption=aws.kinesis.FirehoseDeliveryStreamServerSideEncryptionArgs(
                enabled=True, key_type="AWS_OWNED_CMK"
            ),
            extended_s3_configuration=aws.kinesis.FirehoseDeliveryStreamExtendedS3ConfigurationArgs(
                role_arn=firehose_role.arn,
                bucket_arn=data_arn,
                prefix=PARTITION_PREFIX,
                error_output_prefix=ERROR_PREFIX,
                buffering_interval=args.buffer_seconds,
                buffering_size=args.buffer_mb,
                compression_format="UNCOMPRESSED",  # Parquet compresses itself (Snappy); Firehose requires this
                cloudwatch_logging_options=aws.kinesis.FirehoseDeliveryStreamExtendedS3ConfigurationCloudwatchLoggingOptionsArgs(
                    enabled=True, log_group_name=firehose_logs.name, log_stream_name=firehose_log_stream.name
                ),
                processing_configuration=aws.kinesis.FirehoseDeliveryStreamExtendedS3ConfigurationProcessingConfigurationArgs(
                    enabled=True,
                    processors=[
                        aws.kinesis.FirehoseDeliveryStreamExtendedS3ConfigurationProcessingConfigurationProcessorArgs(
                            type="Lambda",
                            parameters=[
                                _processor_parameter("LambdaArn", processor.arn),
                                _processor_parameter("BufferSizeInMBs", str(PROCESSOR_BUFFER_MB)),
                                _processor_parameter("BufferIntervalInSeconds", str(PROCESSOR_BUFFER_S)),
                            ],
                        )
                    ],
                ),
                data_format_conversion_configuration=aws.kinesis.FirehoseDeliveryStreamExtendedS3ConfigurationDataFormatConversionConfigurationArgs(
                    enabled=True,
                    input_format_configuration=aws.kinesis.FirehoseDeliveryStreamExtendedS3ConfigurationDataFormatConversionConfigurationInputFormatConfigurationArgs(
                        deserializer=aws.kinesis.FirehoseDeliveryStreamExtendedS3ConfigurationDataFormatConversionConfigurationInputFormatConfigurationDeserializerArgs(
                            open_x_json_ser_de=aws.kinesis.FirehoseDeliveryStreamExtendedS3ConfigurationDataFormatConversionConfigurationInputFormatConfigurationDeserializerOpenXJsonSerDeArgs()
                        )
                    ),
                    output_format_configuration=aws.kinesis.FirehoseDeliveryStreamExtendedS3ConfigurationDataFormatConversionConfigurationOutputFormatConfigurationArgs(
                        serializer=aws.kinesis.FirehoseDeliveryStreamExtendedS3ConfigurationDataFormatConversionConfigurationOutputFormatConfigurationSerializerArgs(
                            parquet_ser_de=aws.kinesis.FirehoseDeliveryStreamExtendedS3ConfigurationDataFormatConversionConfigurationOutputFormatConfigurationSerializerParquetSerDeArgs(
                                compression="SNAPPY"
                            )
                        )
                    ),
                    schema_configuration=aws.kinesis.FirehoseDeliveryStreamExtendedS3ConfigurationDataFormatConversionConfigurationSchemaConfigurationArgs(
                        role_arn=firehose_role.arn,
                        catalog_id=account,
                        database_name=database.name,
                        table_name=table.name,
                        region=args.region,
                        version_id="LATEST",
                    ),
                ),
            ),
            tags=self._tags,
            # Firehose checks its role when the stream is created.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[firehose_policy]),
        )

        # --- CloudWatch Logs -> Firehose, usage lines only ---
        logs_role = aws.iam.Role(
            f"{resource_name}-logs-role",
            name=args.role_name("usage-logs"),
            assume_role_policy=_trust(
                f"logs.{args.region}.amazonaws.com",
                {"StringLike": {"aws:SourceArn": pulumi.Output.format(
                    "arn:{0}:logs:{1}:{2}:*", partition, args.region, account)}},
            ),
            tags=self._tags,
            opts=child,
        )  # fmt: skip
        logs_policy = aws.iam.RolePolicy(
            f"{resource_name}-logs-policy",
            name=args.role_name("usage-logs"),
            role=logs_role.id,
            policy=policy_document(_allow("Deliver", ["firehose:PutRecord", "firehose:PutRecordBatch"], [stream_arn])),
            opts=child,
        )
        for i, log_group in enumerate(args.log_group_names):
            aws.cloudwatch.LogSubscriptionFilter(
                f"{resource_name}-usage-filter-{i}",
                name=f"{args.name}-usage",
                log_group=log_group,
                filter_pattern=USAGE_FILTER_PATTERN,
                destination_arn=stream.arn,
                role_arn=logs_role.arn,
                # CloudWatch Logs tests delivery when the filter is created.
                opts=pulumi.ResourceOptions(parent=self, depends_on=[logs_policy, stream]),
            )

        # --- Athena ---
        workgroup = aws.athena.Workgroup(
            f"{resource_name}-workgroup",
            name=args.workgroup_name,
            description="ai-gateway usage analytics",
            state="ENABLED",
            force_destroy=True,  # its saved queries and history go with it
            configuration=aws.athena.WorkgroupConfigurationArgs(
                enforce_workgroup_configuration=True,
                publish_cloudwatch_metrics_enabled=True,
                bytes_scanned_cutoff_per_query=args.bytes_scanned_cutoff,
                engine_version=aws.athena.WorkgroupConfigurationEngineVersionArgs(
                    selected_engine_version="Athena engine version 3"
                ),
                result_configuration=aws.athena.WorkgroupConfigurationResultConfigurationArgs(
                    output_location=pulumi.Output.format("s3://{0}/results/", results_bucket.bucket),
                    expected_bucket_owner=account,
                    encryption_configuration=aws.athena.WorkgroupConfigurationResultConfigurationEncryptionConfigurationArgs(
                        encryption_option="SSE_S3"
                    ),
                ),
            ),
            tags=self._tags,
            opts=child,
        )
        for query in queries:
            aws.athena.NamedQuery(
                f"{resource_name}-query-{query.stem}",
                name=query.name,
                description=query.description,
                database=database.name,
                workgroup=workgroup.name,
                query=args.render_query(query.stem, query.query) if args.render_query else query.query,
                opts=child,
            )

        self.data_bucket_name = data_bucket.bucket
        self.results_bucket_name = results_bucket.bucket
        self.database_name = database.name
        self.table_name = table.name
        self.workgroup_name = workgroup.name
        self.stream_name = stream.name
        self.stream_arn = stream.arn
        self.processor_name = processor.name
        self.register_outputs({
            "data_bucket_name": self.data_bucket_name,
            "results_bucket_name": self.results_bucket_name,
            "database_name": self.database_name,
            "table_name": self.table_name,
            "workgroup_name": self.workgroup_name,
            "stream_name": self.stream_name,
            "stream_arn": self.stream_arn,
            "processor_name": self.processor_name,
        })  # fmt: skip

    def _bucket(
        self,
        purpose: str,
        bucket_name: pulumi.Output[str],
        expiry_days: int,
        transition_days: int | None,
        *,
        force_destroy: bool,
    ) -> tuple[aws.s3.Bucket, pulumi.Output[str]]:
        """A private, encrypted, TLS-only bucket whose objects expire; returns it and its ARN."""
        resource_name = f"{self._resource_name}-{purpose}"
        child = pulumi.ResourceOptions(parent=self)
        private = private_bucket(
            resource_name, bucket_name=bucket_name, partition=self._partition, force_destroy=force_destroy,
            tags=self._tags, parent=self,
        )
        bucket, arn = private.bucket, private.arn
        private.policy(parent=self, suffix="tls-only")
        aws.s3.BucketLifecycleConfiguration(
            f"{resource_name}-lifecycle",
            bucket=bucket.id,
            rules=[
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                    transitions=[
                        aws.s3.BucketLifecycleConfigurationRuleTransitionArgs(
                            days=transition_days, storage_class="STANDARD_IA"
                        )
                    ]
                    if transition_days is not None
                    else None,
                    expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(days=expiry_days),
                    abort_incomplete_multipart_upload=(
                        aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                            days_after_initiation=1
                        )
                    ),
                )
            ],
            opts=child,
        )
        return bucket, arn

    def _processor(self, account: pulumi.Output[str]) -> aws.lambda_.Function:
        """The Firehose processing Lambda, its log group and a role that can only write those logs."""
        args = self._args
        child = pulumi.ResourceOptions(parent=self)
        name, prefix = args.processor_name, f"{self._resource_name}-processor"
        log_group = aws.cloudwatch.LogGroup(
            f"{prefix}-logs",
            name=f"/aws/lambda/{name}",
            retention_in_days=args.log_retention_days,
            tags=self._tags,
            opts=child,
        )
        role = aws.iam.Role(
            f"{prefix}-role",
            name=args.role_name("usage-processor"),
            assume_role_policy=policy_document({
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }),
            tags=self._tags,
            opts=child,
        )  # fmt: skip
        log_arn = pulumi.Output.format(
            "arn:{0}:logs:{1}:{2}:log-group:{3}", self._partition, args.region, account, log_group.name
        )
        policy = aws.iam.RolePolicy(
            f"{prefix}-policy",
            name=name,
            role=role.id,
            policy=policy_document(
                _allow("Logs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                       [log_arn, pulumi.Output.concat(log_arn, ":*")])
            ),
            opts=child,
        )  # fmt: skip
        return aws.lambda_.Function(
            prefix,
            name=name,
            description="Firehose processor: CloudWatch Logs usage lines -> rows of the usage_records table",
            role=role.arn,
            architectures=["arm64"],
            runtime=PYTHON_RUNTIME,
            handler=PROCESSOR_HANDLER,
            code=args.processor_code,
            layers=[args.powertools_layer_arn],
            memory_size=PROCESSOR_MEMORY_MB,
            timeout=PROCESSOR_TIMEOUT_S,
            reserved_concurrent_executions=args.processor_reserved_concurrency,
            environment=aws.lambda_.FunctionEnvironmentArgs(variables={"POWERTOOLS_SERVICE_NAME": name}),
            logging_config=aws.lambda_.FunctionLoggingConfigArgs(
                log_format="JSON", log_group=log_group.name, application_log_level="INFO", system_log_level="INFO"
            ),
            tags=self._tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[log_group, policy]),
        )


def _processor_parameter(
    name: str, value: pulumi.Input[str]
) -> aws.kinesis.FirehoseDeliveryStreamExtendedS3ConfigurationProcessingConfigurationProcessorParameterArgs:
    return aws.kinesis.FirehoseDeliveryStreamExtendedS3ConfigurationProcessingConfigurationProcessorParameterArgs(
        parameter_name=name, parameter_value=value
    )
