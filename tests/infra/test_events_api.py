"""EventsApi + ChannelHandlers under Pulumi mocks: auth per direction, handler wiring, least-privilege roles."""

from __future__ import annotations

import json
import re
from typing import Any

import botocore.session
import pulumi
import pytest

from aigw.mocks import Recorded, RecordingMocks, run
from components.channel_handlers import ChannelHandlers, ChannelHandlersArgs
from components.events_api import EventsApi, EventsApiArgs
from runtime.channels import CHAT_NAMESPACE, RESPONSES_NAMESPACE

COGNITO = "AMAZON_COGNITO_USER_POOLS"
IAM = "AWS_IAM"
REGION = "eu-west-1"
USER_POOL_ID = f"{REGION}_abcDEF123"
SUBSCRIBE_ARN = f"arn:aws:lambda:{REGION}:123456789012:function:gw-subscribe"
GATEKEEPER_ARN = f"arn:aws:lambda:{REGION}:123456789012:function:gw-gatekeeper"
RETENTION = 14

API = "aws:appsync/api:Api"
NAMESPACE = "aws:appsync/channelNamespace:ChannelNamespace"
DATA_SOURCE = "aws:appsync/dataSource:DataSource"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
EVENTS_API = ("ai-gateway:events:EventsApi", "events")
HANDLERS = ("ai-gateway:events:ChannelHandlers", "handlers")


@pytest.fixture(scope="module")
def built() -> tuple[RecordingMocks, dict[str, Any]]:
    outputs: dict[str, Any] = {}

    def program() -> pulumi.Output[Any]:
        api = EventsApi(
            "events",
            EventsApiArgs(
                name="ai-gateway-test",
                user_pool_id=USER_POOL_ID,
                region=REGION,
                log_retention_days=RETENTION,
                log_level="ERROR",
                tags={"project": "ai-gateway"},
            ),
        )
        handlers = ChannelHandlers(
            "handlers",
            ChannelHandlersArgs(
                name="ai-gateway-test",
                api_id=api.api_id,
                subscribe_function_arn=SUBSCRIBE_ARN,
                gatekeeper_function_arn=GATEKEEPER_ARN,
            ),
        )
        values = {
            "api_id": api.api_id,
            "api_arn": api.api_arn,
            "http_domain": api.http_domain,
            "realtime_domain": api.realtime_domain,
            "http_endpoint": api.http_endpoint,
            "realtime_endpoint": api.realtime_endpoint,
            "log_group_name": api.log_group_name,
            "chat_namespace_name": handlers.chat_namespace_name,
            "responses_namespace_name": handlers.responses_namespace_name,
            "gatekeeper_data_source_name": handlers.gatekeeper_data_source_name,
            "subscribe_data_source_name": handlers.subscribe_data_source_name,
        }
        return pulumi.Output.all(**values).apply(outputs.update)

    return run(program, region=REGION), outputs


def _auth_types(modes: list[dict[str, Any]]) -> list[str]:
    return [m["authType"] for m in modes]


def _namespace(mocks: RecordingMocks, name: str) -> Recorded:
    [found] = [r for r in mocks.of_type(NAMESPACE) if r.inputs["name"] == name]
    return found


def _data_source(mocks: RecordingMocks, function_arn: str) -> Recorded:
    [found] = [r for r in mocks.of_type(DATA_SOURCE) if r.inputs["lambdaConfig"]["functionArn"] == function_arn]
    return found


def _policy_of(mocks: RecordingMocks, role: Recorded) -> dict[str, Any]:
    [policy] = [p for p in mocks.of_type(ROLE_POLICY) if p.inputs["role"] == role.outputs["id"]]
    return json.loads(policy.inputs["policy"])


def _resources(statement: dict[str, Any]) -> list[str]:
    resource = statement["Resource"]
    return [resource] if isinstance(resource, str) else list(resource)


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def test_every_child_is_parented_to_its_component(built) -> None:
    mocks, _ = built
    by_parent = {EVENTS_API: set(), HANDLERS: set()}
    for r in mocks.resources:
        if r.type.startswith("ai-gateway:"):
            continue
        assert r.parent in by_parent, f"{r.type} {r.name} has parent {r.parent}"
        by_parent[r.parent].add(r.type)
    assert by_parent[EVENTS_API] == {API, ROLE, ROLE_POLICY, LOG_GROUP}
    assert by_parent[HANDLERS] == {ROLE, ROLE_POLICY, DATA_SOURCE, NAMESPACE}


def test_api_accepts_cognito_users_and_iam_callers_and_defaults_to_cognito(built) -> None:
    mocks, _ = built
    config = mocks.one(API).inputs["eventConfig"]
    providers = {p["authType"]: p for p in config["authProviders"]}
    assert set(providers) == {COGNITO, IAM}
    assert providers[COGNITO]["cognitoConfig"] == {"userPoolId": USER_POOL_ID, "awsRegion": REGION}
    assert sorted(_auth_types(config["connectionAuthModes"])) == sorted([COGNITO, IAM])
    assert _auth_types(config["defaultPublishAuthModes"]) == [COGNITO]
    assert _auth_types(config["defaultSubscribeAuthModes"]) == [COGNITO]


def test_logs_go_through_the_logging_role_into_a_bounded_group(built) -> None:
    mocks, outputs = built
    api = mocks.one(API)
    log_config = api.inputs["eventConfig"]["logConfig"]
    assert log_config["logLevel"] == "ERROR"
    [logging_role] = [r for r in mocks.of_type(ROLE) if r.parent == EVENTS_API]
    assert log_config["cloudwatchLogsRoleArn"] == logging_role.outputs["arn"]

    log_group = mocks.one(LOG_GROUP)
    assert log_group.inputs["name"] == f"/aws/appsync/apis/{api.outputs['apiId']}"
    assert log_group.inputs["retentionInDays"] == RETENTION
    assert outputs["log_group_name"] == log_group.inputs["name"]


def test_logging_role_writes_only_to_the_api_log_group(built) -> None:
    mocks, _ = built
    [logging_role] = [r for r in mocks.of_type(ROLE) if r.parent == EVENTS_API]
    trust = json.loads(logging_role.inputs["assumeRolePolicy"])
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "appsync.amazonaws.com"}]

    group_arn = mocks.one(LOG_GROUP).outputs["arn"]
    statements = _policy_of(mocks, logging_role)["Statement"]
    assert {a for s in statements for a in _actions(s)} == {"logs:CreateLogStream", "logs:PutLogEvents"}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        for resource in _resources(statement):
            assert resource != "*"
            assert resource in (group_arn, f"{group_arn}:*"), resource


def test_namespaces_are_named_by_the_runtime_and_narrow_auth_per_direction(built) -> None:
    mocks, outputs = built
    api_id = mocks.one(API).outputs["apiId"]
    assert sorted(r.inputs["name"] for r in mocks.of_type(NAMESPACE)) == sorted([CHAT_NAMESPACE, RESPONSES_NAMESPACE])
    chat = _namespace(mocks, CHAT_NAMESPACE)
    responses = _namespace(mocks, RESPONSES_NAMESPACE)
    for namespace in (chat, responses):
        assert namespace.inputs["apiId"] == api_id
    # Users publish requests on chat and never read it; only the worker (IAM) publishes responses.
    assert _auth_types(chat.inputs["publishAuthModes"]) == [COGNITO]
    assert _auth_types(chat.inputs["subscribeAuthModes"]) == [IAM]
    assert _auth_types(responses.inputs["publishAuthModes"]) == [IAM]
    assert _auth_types(responses.inputs["subscribeAuthModes"]) == [COGNITO]
    assert outputs["chat_namespace_name"] == CHAT_NAMESPACE
    assert outputs["responses_namespace_name"] == RESPONSES_NAMESPACE


def test_handlers_are_wired_direct_and_synchronous(built) -> None:
    mocks, outputs = built
    gatekeeper = _data_source(mocks, GATEKEEPER_ARN)
    subscribe = _data_source(mocks, SUBSCRIBE_ARN)

    chat = _namespace(mocks, CHAT_NAMESPACE).inputs["handlerConfigs"]
    assert set(chat) == {"onPublish"}
    assert chat["onPublish"] == {
        "behavior": "DIRECT",
        "integration": {
            "dataSourceName": gatekeeper.inputs["name"],
            "lambdaConfig": {"invokeType": "REQUEST_RESPONSE"},
        },
    }
    responses = _namespace(mocks, RESPONSES_NAMESPACE).inputs["handlerConfigs"]
    assert set(responses) == {"onSubscribe"}
    assert responses["onSubscribe"] == {
        "behavior": "DIRECT",
        "integration": {
            "dataSourceName": subscribe.inputs["name"],
            "lambdaConfig": {"invokeType": "REQUEST_RESPONSE"},
        },
    }
    assert outputs["gatekeeper_data_source_name"] == gatekeeper.inputs["name"]
    assert outputs["subscribe_data_source_name"] == subscribe.inputs["name"]


def test_data_sources_have_names_appsync_accepts(built) -> None:
    mocks, _ = built
    shape = botocore.session.get_session().get_service_model("appsync").shape_for("ResourceName")
    pattern, low, high = shape.metadata["pattern"], shape.metadata["min"], shape.metadata["max"]
    assert pattern == "[_A-Za-z][_0-9A-Za-z]*"  # the rule the reference documents; fail loudly if AWS changes it
    api_id = mocks.one(API).outputs["apiId"]
    names = [d.inputs["name"] for d in mocks.of_type(DATA_SOURCE)]
    assert len(names) == len(set(names)) == 2
    for data_source in mocks.of_type(DATA_SOURCE):
        name = data_source.inputs["name"]
        assert re.fullmatch(pattern, name), name
        assert re.fullmatch(r"^[_A-Za-z][_0-9A-Za-z]*$", name), name
        assert low <= len(name) <= high
        assert data_source.inputs["type"] == "AWS_LAMBDA"
        assert data_source.inputs["apiId"] == api_id


def test_data_sources_invoke_exactly_the_two_functions_through_the_service_role(built) -> None:
    mocks, _ = built
    [service_role] = [r for r in mocks.of_type(ROLE) if r.parent == HANDLERS]
    trust = json.loads(service_role.inputs["assumeRolePolicy"])
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "appsync.amazonaws.com"}]
    for data_source in mocks.of_type(DATA_SOURCE):
        assert data_source.inputs["serviceRoleArn"] == service_role.outputs["arn"]

    statements = _policy_of(mocks, service_role)["Statement"]
    assert all(s["Effect"] == "Allow" for s in statements)
    assert {a for s in statements for a in _actions(s)} == {"lambda:InvokeFunction"}
    resources = [r for s in statements for r in _resources(s)]
    assert sorted(resources) == sorted([SUBSCRIBE_ARN, GATEKEEPER_ARN])


def test_endpoints(built) -> None:
    mocks, outputs = built
    dns = mocks.one(API).outputs["dns"]
    assert outputs["http_domain"] == dns["HTTP"]
    assert outputs["realtime_domain"] == dns["REALTIME"]
    assert outputs["http_endpoint"] == f"https://{dns['HTTP']}/event"
    assert outputs["http_endpoint"].endswith("/event")
    assert outputs["realtime_endpoint"] == f"wss://{dns['REALTIME']}/event/realtime"
    assert outputs["realtime_endpoint"].endswith("/event/realtime")
    assert outputs["api_id"] == mocks.one(API).outputs["apiId"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("log_retention_days", 10), ("log_level", "VERBOSE"), ("name", "has/slash"), ("name", "x" * 51)],
)
def test_args_reject_what_aws_would_refuse_at_deploy(field: str, value: Any) -> None:
    args: dict[str, Any] = {"name": "gw", "user_pool_id": USER_POOL_ID, "region": REGION, "log_retention_days": 7}
    with pytest.raises(ValueError):
        EventsApiArgs(**{**args, field: value})
