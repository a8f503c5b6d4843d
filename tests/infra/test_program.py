"""The real `__main__.py` under mocks, for both stacks: the wiring between components, checked offline."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest
from parliament import analyze_policy_string

from aigw.mocks import Recorded, RecordingMocks
from aigw.plan import inventory, run_stack
from components.settings import SettingsError, StackSettings, stack_file_values
from runtime import cache as answer_cache
from runtime import channels
from runtime.config import ENV
from runtime.metering import TTL_ATTRIBUTE as METERING_TTL

STACKS = ("dev", "prod")
COMPONENTS = {
    "ai-gateway:identity:Identity",
    "ai-gateway:metering:MeteringTable",
    "ai-gateway:cache:AnswerCacheTable",
    "ai-gateway:events:EventsApi",
    "ai-gateway:functions:Functions",
    "ai-gateway:events:ChannelHandlers",
    "ai-gateway:observability:Observability",
    "ai-gateway:analytics:Analytics",
}
WEB_APP = "ai-gateway:web:WebApp"  # the chat page: on in dev, off in prod (`webApp.enabled`)


@cache
def program(stack: str) -> RecordingMocks:
    return run_stack(stack)


# The chat page on the team's own domain (`webApp.domainName` + `webApp.certificateArn`), on in either stack.
DOMAIN = "chat.example.com"
CERTIFICATE_ARN = "arn:aws:acm:us-east-1:123456789012:certificate/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
WEB_APP_WITH_DOMAIN = {"enabled": True, "domainName": DOMAIN, "certificateArn": CERTIFICATE_ARN}


@cache
def program_with_domain(stack: str) -> RecordingMocks:
    return run_stack(stack, overrides={"webApp": WEB_APP_WITH_DOMAIN})


def by_name(mocks: RecordingMocks, type_: str, fragment: str) -> Recorded:
    [found] = [r for r in mocks.of_type(type_) if fragment in r.name]
    return found


@pytest.mark.parametrize("stack", STACKS)
def test_every_component_is_present_and_every_resource_parented(stack: str) -> None:
    mocks = program(stack)
    types = {r.type for r in mocks.resources}
    assert types >= COMPONENTS
    assert (WEB_APP in types) == (stack == "dev")
    assert ("ai-gateway:guardrails:Guardrail" in types or any("guardrail" in t.lower() for t in types)) == (
        stack == "prod"
    )
    orphans = [r.name for r in mocks.resources if r.type.startswith("aws:") and r.parent is None]
    assert orphans == []
    assert all(item.component for item in inventory(mocks))


@pytest.mark.parametrize("stack", STACKS)
def test_tables_use_the_runtime_ttl_attributes(stack: str) -> None:
    mocks = program(stack)
    metering = by_name(mocks, "aws:dynamodb/table:Table", "metering")
    answers = by_name(mocks, "aws:dynamodb/table:Table", "cache")
    assert metering.inputs["ttl"] == {"attributeName": METERING_TTL, "enabled": True}
    assert answers.inputs["ttl"] == {"attributeName": answer_cache.TTL_ATTRIBUTE, "enabled": True}


@pytest.mark.parametrize("stack", STACKS)
def test_handlers_point_at_the_right_functions_with_the_right_invoke_types(stack: str) -> None:
    mocks = program(stack)
    functions = {r.inputs["name"]: r for r in mocks.of_type("aws:lambda/function:Function")}
    sources = {r.inputs["name"]: r for r in mocks.of_type("aws:appsync/dataSource:DataSource")}
    namespaces = {r.inputs["name"]: r for r in mocks.of_type("aws:appsync/channelNamespace:ChannelNamespace")}
    assert set(namespaces) == {channels.CHAT_NAMESPACE, channels.RESPONSES_NAMESPACE}

    def target(namespace: str, hook: str) -> tuple[str, str]:
        handler = namespaces[namespace].inputs["handlerConfigs"][hook]
        assert handler["behavior"] == "DIRECT"
        source = sources[handler["integration"]["dataSourceName"]]
        arn = source.inputs["lambdaConfig"]["functionArn"]
        [function] = [f for f in functions.values() if arn.endswith(f":function:{f.inputs['name']}")]
        return function.inputs["handler"], handler["integration"]["lambdaConfig"]["invokeType"]

    assert target(channels.CHAT_NAMESPACE, "onPublish") == ("runtime.handlers.gatekeeper_handler", "REQUEST_RESPONSE")
    assert target(channels.RESPONSES_NAMESPACE, "onSubscribe") == (
        "runtime.handlers.subscribe_handler",
        "REQUEST_RESPONSE",
    )


@pytest.mark.parametrize("stack", STACKS)
def test_functions_get_the_runtime_environment_from_the_settings(stack: str) -> None:
    mocks = program(stack)
    settings = StackSettings.from_stack_file(f"Pulumi.{stack}.yaml")
    for function in mocks.of_type("aws:lambda/function:Function"):
        if function.inputs["handler"] == "runtime.analytics.handler":
            continue  # the Firehose processor needs no gateway configuration
        env = function.inputs["environment"]["variables"]
        optional = ("guardrail_id", "guardrail_version", "region", "stack_monthly_usd")
        required = {v for k, v in ENV.items() if k not in optional}
        assert required <= set(env), function.name
        assert json.loads(env[ENV["prices"]]) == {m: list(p) for m, p in settings.token_prices().items()}
        assert set(json.loads(env[ENV["prices"]])) == set(settings.model_ids)  # every model priced: budgets hold
        stack_ceiling = env.get(ENV["stack_monthly_usd"])
        assert (float(stack_ceiling) if stack_ceiling else None) == settings.stack_monthly_usd
        assert json.loads(env[ENV["tiers"]]) == [
            t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in settings.tiers
        ]
        assert env[ENV["worker_function_name"]].endswith("-worker")
        assert (ENV["guardrail_id"] in env) == settings.guardrail.enabled


@pytest.mark.parametrize("stack", STACKS)
def test_every_iam_policy_passes_parliament(stack: str) -> None:
    mocks = program(stack)
    for policy in mocks.of_type("aws:iam/rolePolicy:RolePolicy"):
        document = policy.inputs["policy"]
        findings = [
            f for f in analyze_policy_string(document).findings
            # parliament#48: it demands every resource type of bedrock:InvokeModelWithResponseStream at once.
            if not (f.issue == "RESOURCE_MISMATCH" and "bedrock:InvokeModel" in json.dumps(f.detail))
        ]
        assert findings == [], (policy.name, findings)
        for statement in json.loads(document)["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            assert not any(a == "*" or a.endswith(":*") for a in actions), policy.name
            assert "*" not in resources, policy.name


def test_dev_and_prod_differ_in_the_resources_too() -> None:
    def table(stack: str) -> dict[str, Any]:
        return by_name(program(stack), "aws:dynamodb/table:Table", "metering").inputs

    assert table("prod")["deletionProtectionEnabled"] and not table("dev")["deletionProtectionEnabled"]
    pool = {s: program(s).one("aws:cognito/userPool:UserPool").inputs for s in STACKS}
    assert pool["prod"]["mfaConfiguration"] == "ON" and pool["dev"]["mfaConfiguration"] == "OPTIONAL"
    alarms = {s: len(program(s).of_type("aws:cloudwatch/metricAlarm:MetricAlarm")) for s in STACKS}
    assert alarms["dev"] == 0 < alarms["prod"]


def reserved_total(mocks: RecordingMocks) -> int:
    functions = mocks.of_type("aws:lambda/function:Function")
    return sum(f.inputs.get("reservedConcurrentExecutions") or 0 for f in functions)


@pytest.mark.parametrize("stack", STACKS)
def test_no_stack_reserves_concurrency_unless_configured_to(stack: str) -> None:
    # A new account may have 10 executions and Lambda keeps 100 unreserved: any reservation fails `pulumi up` there.
    assert reserved_total(program(stack)) == 0
    functions = {"worker": {"memoryMb": 512, "timeoutS": 300, "reservedConcurrency": 40}}
    reserving = run_stack(stack, overrides={"functions": functions})
    settings = StackSettings.from_values({**stack_file_values(f"Pulumi.{stack}.yaml"), "functions": functions})
    assert reserved_total(reserving) == settings.reserved_concurrency_total == 40 + 5  # + the usage processor


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"defaultTier": None}, "ai-gateway:defaultTier: Field required"),
        ({"tiers": [{"name": "free", "precedence": 1, "windowTokens": -1, "monthlyTokens": 10, "models": ["a.b"]}]},
         "ai-gateway:tiers[0].windowTokens: Input should be greater than 0"),
        ({"defaultTier": "platinum"}, "ai-gateway:defaultTier: 'platinum' is not one of the tiers"),
    ],
)
def test_bad_config_stops_the_program_with_the_documented_message(override: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception) as raised:
        run_stack("dev", overrides=override)
    error = raised.value
    while not isinstance(error, SettingsError) and (error.__cause__ or error.__context__):
        error = error.__cause__ or error.__context__
    assert message in str(error)


def test_named_queries_carry_the_stacks_prices_and_tier_limits() -> None:
    mocks = program("dev")
    queries = {q.inputs["name"]: q.inputs["query"] for q in mocks.of_type("aws:athena/namedQuery:NamedQuery")}
    settings = StackSettings.from_stack_file("Pulumi.dev.yaml")
    cost = next(sql for name, sql in queries.items() if "cost" in name and "model" in name)
    prices = settings.model_prices_per_1k()  # from the model catalog
    assert set(prices) == set(settings.model_ids)
    for model, (_, output_per_1k) in prices.items():
        assert model in cost and str(output_per_1k) in cost
    top = next(sql for name, sql in queries.items() if "top" in name)
    assert all(f"'{t.name}'" in top and str(t.monthly_tokens) in top for t in settings.tiers)


def api_log_level(mocks: RecordingMocks) -> str:
    [api] = mocks.of_type("aws:appsync/api:Api")
    return str(api.inputs["eventConfig"]["logConfig"]["logLevel"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"logLevel": "DEBUG"}, "INFO"),  # DEBUG would log the events' payloads: the users' messages
        ({"logLevel": "DEBUG", "logPrompts": True}, "DEBUG"),
        ({"logLevel": "INFO"}, "INFO"),
        ({"logLevel": "WARNING"}, "ERROR"),
        ({"logLevel": "ERROR", "logPrompts": True}, "ERROR"),
    ],
)
def test_the_event_api_logs_payloads_only_when_prompts_may_be_logged(overrides: dict[str, Any], expected: str) -> None:
    assert api_log_level(run_stack("dev", overrides=overrides)) == expected


@pytest.mark.parametrize("log_level", ["DEBUG", "INFO", "WARNING", "ERROR"])
def test_no_function_lets_lambda_filter_above_info(log_level: str) -> None:
    mocks = run_stack("prod", overrides={"logLevel": log_level})
    for function in mocks.of_type("aws:lambda/function:Function"):
        assert function.inputs["loggingConfig"]["applicationLogLevel"] in ("DEBUG", "INFO"), function.name
