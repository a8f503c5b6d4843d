"""The Analytics component under Pulumi mocks: private buckets, a Glue table matching the usage records and the
Firehose prefix, a wired Firehose stream, scoped roles, the subscription filters and the Athena workgroup."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pulumi
import pytest
from parliament import analyze_policy_string

from aigw.mocks import ACCOUNT, Recorded, RecordingMocks, run
from components.analytics import (
    GLUE_TYPES,
    PROCESSOR_HANDLER,
    Analytics,
    AnalyticsArgs,
    read_queries,
    storage_location_template,
)
from policy.rules import policy_document_problems
from runtime.analytics import ERROR_PREFIX, PARTITION_PREFIX, prefix_for
from runtime.observability import USAGE_RECORD_FIELDS

COMPONENT = ("ai-gateway:analytics:Analytics", "analytics")
NAME = "ai-gateway-dev"
REGION = "us-east-1"
RUNTIME_DIR = Path(__file__).resolve().parents[2] / "runtime"
LOG_GROUPS = [f"/aws/lambda/{NAME}-gatekeeper", f"/aws/lambda/{NAME}-worker"]
LAYER = f"arn:aws:lambda:{REGION}:017000801446:layer:AWSLambdaPowertoolsPythonV3-python313-arm64:27"
DATA_BUCKET = f"{NAME}-usage-{ACCOUNT}-{REGION}"
RESULTS_BUCKET = f"{NAME}-athena-{ACCOUNT}-{REGION}"
CUTOFF = 10 * 1024**3
QUERIES = {
    "daily_tokens.sql": "-- name: daily-tokens\n-- description: Tokens per day\nSELECT 1 FROM usage_records\n",
    "top_users.sql": "-- description: Heaviest users\n\nSELECT user_id FROM usage_records\n",
}

BUCKET = "aws:s3/bucket:Bucket"
FIREHOSE = "aws:kinesis/firehoseDeliveryStream:FirehoseDeliveryStream"
TABLE = "aws:glue/catalogTable:CatalogTable"
FUNCTION = "aws:lambda/function:Function"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"


def make_args(queries_dir: Path, **changes: Any) -> AnalyticsArgs:
    args = AnalyticsArgs(
        name=NAME,
        region=REGION,
        log_group_names=[LOG_GROUPS[0], pulumi.Output.from_input(LOG_GROUPS[1])],  # as Functions passes them
        processor_code=pulumi.FileArchive(str(RUNTIME_DIR)),
        powertools_layer_arn=LAYER,
        data_expiry_days=400,
        data_transition_days=90,
        results_expiry_days=7,
        bytes_scanned_cutoff=CUTOFF,
        queries_dir=queries_dir,
        tags={"project": "ai-gateway"},
    )
    return dataclasses.replace(args, **changes)


@pytest.fixture(scope="module")
def queries_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("queries")
    for file_name, text in QUERIES.items():
        (path / file_name).write_text(text, encoding="utf-8")
    (path / "README.md").write_text("not a query", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mocks(queries_dir: Path) -> RecordingMocks:
    return run(lambda: Analytics(COMPONENT[1], make_args(queries_dir)), region=REGION)


def on_bucket(mocks: RecordingMocks, type_: str, bucket: Recorded) -> Recorded:
    """The one `type_` resource attached to `bucket` (by the bucket id the mocks give it)."""
    [found] = [r for r in mocks.of_type(type_) if r.inputs["bucket"] == bucket.outputs["id"]]
    return found


def buckets(mocks: RecordingMocks) -> dict[str, Recorded]:
    return {b.inputs["bucket"]: b for b in mocks.of_type(BUCKET)}


def statements(document: str) -> list[dict[str, Any]]:
    return json.loads(document)["Statement"]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def policy_of(mocks: RecordingMocks, role_name: str) -> list[dict[str, Any]]:
    role = next(r for r in mocks.of_type(ROLE) if r.inputs["name"] == role_name)
    [policy] = [p for p in mocks.of_type(ROLE_POLICY) if p.inputs["role"] == role.outputs["id"]]
    return statements(policy.inputs["policy"])


def grants(statement_list: list[dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for s in statement_list:
        assert s["Effect"] == "Allow"
        for action in as_list(s["Action"]):
            out.setdefault(action, set()).update(as_list(s["Resource"]))
    return out


def render(template: str, parameters: dict[str, str], **values: int) -> str:
    """What Athena's partition projection does with `template` for the given key values."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        digits = int(parameters.get(f"projection.{key}.digits", "1"))
        return f"{values[key]:0{digits}d}"

    return re.sub(r"\$\{(\w+)\}", value, template)


# --- Structure ---------------------------------------------------------------------------------------------------


def test_every_child_is_parented_to_the_component(mocks: RecordingMocks) -> None:
    children = [r for r in mocks.resources if (r.type, r.name) != COMPONENT]
    assert len(children) > 20
    assert [r.name for r in children if r.parent != COMPONENT] == []


def test_buckets_are_encrypted_private_owner_enforced_and_tls_only(mocks: RecordingMocks) -> None:
    found = buckets(mocks)
    assert set(found) == {DATA_BUCKET, RESULTS_BUCKET}
    for bucket in found.values():
        sse = on_bucket(mocks, "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
                        bucket)  # fmt: skip
        [rule] = sse.inputs["rules"]
        assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] in {"AES256", "aws:kms"}
        block = on_bucket(mocks, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", bucket).inputs
        assert all(block[f] is True for f in
                   ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"))  # fmt: skip
        ownership = on_bucket(mocks, "aws:s3/bucketOwnershipControls:BucketOwnershipControls", bucket).inputs
        assert ownership["rule"]["objectOwnership"] == "BucketOwnerEnforced"
        [deny] = statements(on_bucket(mocks, "aws:s3/bucketPolicy:BucketPolicy", bucket).inputs["policy"])
        assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        arn = f"arn:aws:s3:::{bucket.inputs['bucket']}"
        assert deny["Resource"] == [arn, f"{arn}/*"]
    assert found[DATA_BUCKET].inputs["forceDestroy"] is False  # usage data is not thrown away with the stack


def test_lifecycles_transition_and_expire(mocks: RecordingMocks) -> None:
    found = buckets(mocks)
    lifecycle = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
    [data] = on_bucket(mocks, lifecycle, found[DATA_BUCKET]).inputs["rules"]
    assert data["status"] == "Enabled" and data["expiration"]["days"] == 400
    assert data["transitions"] == [{"days": 90, "storageClass": "STANDARD_IA"}]
    [results] = on_bucket(mocks, lifecycle, found[RESULTS_BUCKET]).inputs["rules"]
    assert results["expiration"]["days"] == 7 and not results.get("transitions")
    for rule in (data, results):
        assert rule["abortIncompleteMultipartUpload"]["daysAfterInitiation"] >= 1


# --- Glue ---------------------------------------------------------------------------------------------------------


def test_glue_columns_are_the_usage_record_fields(mocks: RecordingMocks) -> None:
    table = mocks.one(TABLE).inputs
    columns = [(c["name"], c["type"]) for c in table["storageDescriptor"]["columns"]]
    expected = {"string": "string", "int": "int", "bigint": "bigint", "boolean": "boolean", "timestamp": "timestamp"}
    assert columns == [(name, expected[kind]) for name, kind in USAGE_RECORD_FIELDS]
    assert expected == GLUE_TYPES
    assert table["name"] == "usage_records"
    assert table["databaseName"] == mocks.one("aws:glue/catalogDatabase:CatalogDatabase").inputs["name"]


def test_glue_table_is_parquet_with_string_partition_keys(mocks: RecordingMocks) -> None:
    table = mocks.one(TABLE).inputs
    descriptor = table["storageDescriptor"]
    parquet = "org.apache.hadoop.hive.ql.io.parquet"
    assert descriptor["serDeInfo"]["serializationLibrary"] == f"{parquet}.serde.ParquetHiveSerDe"
    assert descriptor["inputFormat"] == f"{parquet}.MapredParquetInputFormat"
    assert descriptor["outputFormat"] == f"{parquet}.MapredParquetOutputFormat"
    assert descriptor["location"] == f"s3://{DATA_BUCKET}/usage/"
    assert table["tableType"] == "EXTERNAL_TABLE"
    assert table["partitionKeys"] == [{"name": k, "type": "string"} for k in ("year", "month", "day")]


def test_partition_projection_matches_the_firehose_prefix(mocks: RecordingMocks) -> None:
    parameters = mocks.one(TABLE).inputs["parameters"]
    assert parameters["projection.enabled"] == "true"
    for key in ("year", "month", "day"):
        assert parameters[f"projection.{key}.type"] == "integer"
    assert parameters["projection.month.range"] == "1,12" and parameters["projection.month.digits"] == "2"
    assert parameters["projection.day.range"] == "1,31" and parameters["projection.day.digits"] == "2"
    first, last = map(int, parameters["projection.year.range"].split(","))
    assert first <= 2026 <= last
    template = parameters["storage.location.template"]
    assert template == f"s3://{DATA_BUCKET}/usage/year=${{year}}/month=${{month}}/day=${{day}}/"
    for day in (datetime(2026, 1, 5), datetime(2026, 12, 31)):
        rendered = render(template, parameters, year=day.year, month=day.month, day=day.day)
        assert rendered == f"s3://{DATA_BUCKET}/" + prefix_for(day)
    assert render(template, parameters, year=2026, month=1, day=5) == f"s3://{DATA_BUCKET}/usage/year=2026/month=01/day=05/"


def test_storage_template_refuses_a_prefix_it_cannot_project() -> None:
    with pytest.raises(ValueError, match="exactly once"):
        storage_location_template("b", "usage/dt=!{timestamp:yyyy-MM-dd}/")
    with pytest.raises(ValueError, match="projected"):
        storage_location_template("b", "usage/!{partitionKeyFromQuery:x}/year=!{timestamp:yyyy}/"
                                       "month=!{timestamp:MM}/day=!{timestamp:dd}/")  # fmt: skip


# --- Processor and Firehose --------------------------------------------------------------------------------------


def test_processor_function(mocks: RecordingMocks) -> None:
    fn = mocks.one(FUNCTION)
    inputs = fn.inputs
    assert inputs["handler"] == PROCESSOR_HANDLER == "runtime.analytics.handler"
    assert inputs["architectures"] == ["arm64"] and inputs["runtime"] == "python3.13"
    assert inputs["layers"] == [LAYER]
    [log_group] = [g for g in mocks.of_type("aws:cloudwatch/logGroup:LogGroup")
                   if g.inputs["name"] == f"/aws/lambda/{inputs['name']}"]  # fmt: skip
    assert log_group.inputs["retentionInDays"] == 30
    assert inputs["loggingConfig"]["logGroup"] == log_group.inputs["name"]
    # Its role writes its own logs and nothing else.
    role_arn = inputs["role"]
    role = next(r for r in mocks.of_type(ROLE) if r.outputs["arn"] == role_arn)
    trust = statements(role.inputs["assumeRolePolicy"])
    assert [s["Principal"] for s in trust] == [{"Service": "lambda.amazonaws.com"}]
    log_arn = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{log_group.inputs['name']}"
    assert grants(policy_of(mocks, role.inputs["name"])) == {
        "logs:CreateLogStream": {log_arn, f"{log_arn}:*"},
        "logs:PutLogEvents": {log_arn, f"{log_arn}:*"},
    }


def test_firehose_writes_parquet_under_the_partition_prefix(mocks: RecordingMocks) -> None:
    stream = mocks.one(FIREHOSE).inputs
    assert stream["destination"] == "extended_s3"
    assert stream["serverSideEncryption"]["enabled"] is True
    s3 = stream["extendedS3Configuration"]
    assert s3["prefix"] == PARTITION_PREFIX
    assert s3["errorOutputPrefix"] == ERROR_PREFIX
    assert s3["bucketArn"] == f"arn:aws:s3:::{DATA_BUCKET}"
    assert (s3["bufferingInterval"], s3["bufferingSize"]) == (300, 64)
    assert s3["compressionFormat"] == "UNCOMPRESSED"
    conversion = s3["dataFormatConversionConfiguration"]
    assert conversion["enabled"] is True
    assert "openXJsonSerDe" in conversion["inputFormatConfiguration"]["deserializer"]
    assert conversion["outputFormatConfiguration"]["serializer"]["parquetSerDe"]["compression"] == "SNAPPY"
    schema = conversion["schemaConfiguration"]
    table = mocks.one(TABLE).inputs
    assert (schema["databaseName"], schema["tableName"]) == (table["databaseName"], table["name"])
    assert schema["roleArn"] == s3["roleArn"] and schema["region"] == REGION and schema["catalogId"] == ACCOUNT


def test_firehose_runs_the_processor(mocks: RecordingMocks) -> None:
    s3 = mocks.one(FIREHOSE).inputs["extendedS3Configuration"]
    processing = s3["processingConfiguration"]
    assert processing["enabled"] is True
    [processor] = processing["processors"]
    assert processor["type"] == "Lambda"
    parameters = {p["parameterName"]: p["parameterValue"] for p in processor["parameters"]}
    assert parameters["LambdaArn"] == mocks.one(FUNCTION).outputs["arn"]


def test_firehose_role_is_scoped(mocks: RecordingMocks) -> None:
    role_arn = mocks.one(FIREHOSE).inputs["extendedS3Configuration"]["roleArn"]
    role = next(r for r in mocks.of_type(ROLE) if r.outputs["arn"] == role_arn)
    [trust] = statements(role.inputs["assumeRolePolicy"])
    assert trust["Principal"] == {"Service": "firehose.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"sts:ExternalId": ACCOUNT}}
    allowed = grants(policy_of(mocks, role.inputs["name"]))
    bucket = f"arn:aws:s3:::{DATA_BUCKET}"
    database = mocks.one("aws:glue/catalogDatabase:CatalogDatabase").inputs["name"]
    glue = f"arn:aws:glue:{REGION}:{ACCOUNT}"
    s3_resources = {r for a, rs in allowed.items() if a.startswith("s3:") for r in rs}
    assert s3_resources == {bucket, f"{bucket}/*"}
    assert allowed["s3:PutObject"] == {f"{bucket}/*"} and allowed["s3:ListBucket"] == {bucket}
    assert {a for a in allowed if a.startswith("glue:")} == {"glue:GetTable", "glue:GetTableVersion",
                                                             "glue:GetTableVersions"}  # fmt: skip
    assert allowed["glue:GetTable"] == {f"{glue}:catalog", f"{glue}:database/{database}",
                                        f"{glue}:table/{database}/usage_records"}  # fmt: skip
    assert allowed["lambda:InvokeFunction"] == {mocks.one(FUNCTION).outputs["arn"]}
    assert {a.split(":")[0] for a in allowed} == {"s3", "glue", "lambda", "logs"}


# --- Subscription filters ----------------------------------------------------------------------------------------


def test_subscription_filters_send_usage_lines_to_firehose(mocks: RecordingMocks) -> None:
    filters = mocks.of_type("aws:cloudwatch/logSubscriptionFilter:LogSubscriptionFilter")
    assert sorted(f.inputs["logGroup"] for f in filters) == sorted(LOG_GROUPS)
    stream = mocks.one(FIREHOSE)
    for f in filters:
        assert f.inputs["filterPattern"] == '{ $.record_type = "usage" }'
        assert f.inputs["destinationArn"] == stream.outputs["arn"]
    [role_arn] = {f.inputs["roleArn"] for f in filters}
    role = next(r for r in mocks.of_type(ROLE) if r.outputs["arn"] == role_arn)
    [trust] = statements(role.inputs["assumeRolePolicy"])
    assert trust["Principal"] == {"Service": f"logs.{REGION}.amazonaws.com"}
    assert trust["Condition"] == {"StringLike": {"aws:SourceArn": f"arn:aws:logs:{REGION}:{ACCOUNT}:*"}}
    stream_arn = f"arn:aws:firehose:{REGION}:{ACCOUNT}:deliverystream/{stream.inputs['name']}"
    assert grants(policy_of(mocks, role.inputs["name"])) == {
        "firehose:PutRecord": {stream_arn},
        "firehose:PutRecordBatch": {stream_arn},
    }


# --- IAM, all roles ----------------------------------------------------------------------------------------------


def test_every_policy_is_scoped(mocks: RecordingMocks) -> None:
    policies = mocks.of_type(ROLE_POLICY)
    assert len(policies) == 3  # processor, Firehose, CloudWatch Logs
    for policy in policies:
        document = policy.inputs["policy"]
        assert policy_document_problems(document) == [], policy.name
        for statement in statements(document):
            assert statement["Effect"] == "Allow"
            assert all(a != "*" and not a.endswith(":*") for a in as_list(statement["Action"])), policy.name
            assert all(r != "*" for r in as_list(statement["Resource"])), policy.name
        findings = analyze_policy_string(document).findings
        assert findings == [], (policy.name, [(f.issue, f.detail) for f in findings])


# --- Athena ------------------------------------------------------------------------------------------------------


def test_workgroup_enforces_encrypted_results_and_a_scan_cutoff(mocks: RecordingMocks) -> None:
    workgroup = mocks.one("aws:athena/workgroup:Workgroup").inputs
    config = workgroup["configuration"]
    assert config["enforceWorkgroupConfiguration"] is True
    assert config["bytesScannedCutoffPerQuery"] == CUTOFF
    results = config["resultConfiguration"]
    assert results["outputLocation"].startswith(f"s3://{RESULTS_BUCKET}/")
    assert results["encryptionConfiguration"]["encryptionOption"] == "SSE_S3"
    assert results["expectedBucketOwner"] == ACCOUNT


def test_one_named_query_per_sql_file(mocks: RecordingMocks, queries_dir: Path) -> None:
    queries = {q.inputs["name"]: q.inputs for q in mocks.of_type("aws:athena/namedQuery:NamedQuery")}
    assert set(queries) == {"daily-tokens", "top_users"}  # the header's name, else the stem
    assert queries["daily-tokens"]["description"] == "Tokens per day"
    assert queries["top_users"]["description"] == "Heaviest users"
    assert queries["top_users"]["query"] == QUERIES["top_users.sql"]
    workgroup = mocks.one("aws:athena/workgroup:Workgroup").inputs["name"]
    database = mocks.one("aws:glue/catalogDatabase:CatalogDatabase").inputs["name"]
    assert all(q["workgroup"] == workgroup and q["database"] == database for q in queries.values())
    assert [q.stem for q in read_queries(queries_dir)] == ["daily_tokens", "top_users"]


def test_duplicate_query_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.sql").write_text("-- name: same\nSELECT 1\n", encoding="utf-8")
    (tmp_path / "same.sql").write_text("SELECT 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="duplicate"):
        read_queries(tmp_path)


# --- Outputs and arguments ---------------------------------------------------------------------------------------


def test_outputs(queries_dir: Path) -> None:
    seen: dict[str, Any] = {}

    def program() -> pulumi.Output[Any]:
        analytics = Analytics(COMPONENT[1], make_args(queries_dir))
        names = ("data_bucket_name", "results_bucket_name", "database_name", "table_name", "workgroup_name",
                 "stream_name")  # fmt: skip
        return pulumi.Output.all(*(getattr(analytics, n) for n in names)).apply(
            lambda values: seen.update(zip(names, values, strict=True))
        )

    run(program, region=REGION)
    assert seen == {
        "data_bucket_name": DATA_BUCKET,
        "results_bucket_name": RESULTS_BUCKET,
        "database_name": "ai_gateway_dev_analytics",
        "table_name": "usage_records",
        "workgroup_name": f"{NAME}-analytics",
        "stream_name": f"{NAME}-usage",
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "AI_Gateway"}, "lowercase"),
        ({"name": "a" * 40}, "too long"),
        ({"region": "mars"}, "region"),
        ({"log_group_names": []}, "log_group_names"),
        ({"buffer_mb": 32}, "Parquet"),
        ({"buffer_seconds": 1000}, "buffer_seconds"),
        ({"bytes_scanned_cutoff": 1024}, "bytes_scanned_cutoff"),
        ({"data_transition_days": 10}, "STANDARD_IA"),
        ({"data_transition_days": 400}, "less than"),
        ({"data_expiry_days": 0}, "data_expiry_days"),
        ({"results_expiry_days": 0}, "results_expiry_days"),
        ({"log_retention_days": 2}, "log_retention_days"),
    ],
)
def test_bad_arguments_are_refused(queries_dir: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_args(queries_dir, **changes)


def test_missing_queries_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="queries_dir"):
        make_args(tmp_path / "nope")
