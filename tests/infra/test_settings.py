"""The stack settings model: both stack files validate, bad config fails with the key and the fix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.settings import SettingsError, StackSettings, stack_file_values

ROOT = Path(__file__).resolve().parents[2]


def valid() -> dict[str, Any]:
    return {
        "region": "us-east-1",
        "defaultTier": "free",
        "tiers": [{"name": "free", "precedence": 1, "windowTokens": 1000, "monthlyTokens": 10000,
                   "models": ["amazon.nova-lite-v1:0"]}],
    }


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_both_stack_files_validate(stack: str) -> None:
    settings = StackSettings.from_stack_file(ROOT / f"Pulumi.{stack}.yaml")
    assert settings.region == "us-east-1" and settings.tiers


def test_dev_and_prod_differ_where_they_should() -> None:
    dev = StackSettings.from_stack_file(ROOT / "Pulumi.dev.yaml")
    prod = StackSettings.from_stack_file(ROOT / "Pulumi.prod.yaml")
    assert (dev.point_in_time_recovery, prod.point_in_time_recovery) == (False, True)
    assert (dev.deletion_protection, prod.deletion_protection) == (False, True)
    assert prod.mfa == "ON" and dev.mfa != "ON"
    assert prod.log_retention_days > dev.log_retention_days
    assert prod.alarms and not dev.alarms
    assert prod.guardrail.enabled and not dev.guardrail.enabled
    assert {t.name for t in dev.tiers} != {t.name for t in prod.tiers} or dev.tiers != prod.tiers
    assert dev.web_app.enabled and not prod.web_app.enabled
    assert dev.web_app.price_class == "PriceClass_100"


def test_web_app_settings_default_off_and_cheapest() -> None:
    settings = StackSettings.from_values(valid())
    assert settings.web_app.enabled is False and settings.web_app.price_class == "PriceClass_100"
    values = {**valid(), "webApp": {"enabled": True, "priceClass": "PriceClass_All"}}
    assert StackSettings.from_values(values).web_app.price_class == "PriceClass_All"


CERTIFICATE = "arn:aws:acm:us-east-1:123456789012:certificate/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def test_web_app_domain_is_optional_and_comes_with_its_certificate() -> None:
    for stack in ("dev", "prod"):  # neither stack file sets one
        web_app = StackSettings.from_stack_file(ROOT / f"Pulumi.{stack}.yaml").web_app
        assert web_app.domain_name is None and web_app.certificate_arn is None
    values = {**valid(), "webApp": {"enabled": True, "domainName": "chat.example.com", "certificateArn": CERTIFICATE}}
    web_app = StackSettings.from_values(values).web_app
    assert (web_app.domain_name, web_app.certificate_arn) == ("chat.example.com", CERTIFICATE)
    for name in ("a.b", "xn--bcher-kva.example", "ai-gateway.platform.example.co.uk", "1.example"):
        assert StackSettings.from_values({**valid(), "webApp": {"domainName": name, "certificateArn": CERTIFICATE}})
    for arn in ("arn:aws-cn:acm:us-east-1:123456789012:certificate/abc-1", "arn:aws:acm:us-east-1:000000000000:"
                "certificate/0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0"):
        assert StackSettings.from_values({**valid(), "webApp": {"domainName": "a.b", "certificateArn": arn}})


def test_prods_commented_domain_example_is_valid_once_uncommented(tmp_path: Path) -> None:
    text = (ROOT / "Pulumi.prod.yaml").read_text()
    example = re.findall(r"^    # ((?:domainName|certificateArn): .+)$", text, flags=re.MULTILINE)
    assert [line.split(":")[0] for line in example] == ["domainName", "certificateArn"]
    uncommented = re.sub(r"^    # ((?:domainName|certificateArn): )", r"    \1", text, flags=re.MULTILINE)
    (tmp_path / "Pulumi.prod.yaml").write_text(uncommented)
    web_app = StackSettings.from_stack_file(tmp_path / "Pulumi.prod.yaml").web_app
    assert web_app.domain_name == "chat.example.com" and web_app.certificate_arn.startswith("arn:aws:acm:us-east-1:")


@pytest.mark.parametrize(
    "name",
    ["https://chat.example.com", "chat.example.com/", "chat.example.com/chat", "chat.example.com.", "Chat.Example.com",
     "chat.example.com:443", "*.example.com", "localhost", "-chat.example.com", "chat-.example.com",
     "chat..example.com", "chat_1.example.com", "chat example.com", "chat.example.com\n", "",
     f"{'a' * 64}.example.com", ".".join(["abcdefghi"] * 26)],
)
def test_web_app_domain_must_be_a_dns_name(name: str) -> None:
    values = {**valid(), "webApp": {"enabled": True, "domainName": name, "certificateArn": CERTIFICATE}}
    with pytest.raises(SettingsError) as raised:
        StackSettings.from_values(values)
    message = str(raised.value)
    assert f"ai-gateway:webApp.domainName: {name!r} is not a DNS name" in message
    assert "(fix: pulumi config set --path 'webApp.domainName' <value>)" in message
    assert len(message.splitlines()) == 2  # that one error: the (valid) certificate is not blamed


@pytest.mark.parametrize(
    ("arn", "expected"),
    [
        ("arn:aws:acm:eu-west-1:123456789012:certificate/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
         "is an ACM certificate in eu-west-1, but CloudFront only accepts certificates from us-east-1"),
        ("arn:aws:acm:us-west-2:123456789012:certificate/abc",
         "is an ACM certificate in us-west-2, but CloudFront only accepts certificates from us-east-1"),
        ("arn:aws:iam::123456789012:server-certificate/chat", "is not an ACM certificate ARN"),
        ("arn:aws:acm:us-east-1:1234:certificate/abc", "is not an ACM certificate ARN"),
        ("arn:aws:acm:us-east-1:123456789012:certificate/", "is not an ACM certificate ARN"),
        ("arn:aws:acm:us-east-1:123456789012:certificate/abc\n", "is not an ACM certificate ARN"),
        ("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "is not an ACM certificate ARN"),
    ],
)
def test_web_app_certificate_must_be_an_acm_arn_in_us_east_1(arn: str, expected: str) -> None:
    values = {**valid(), "webApp": {"enabled": True, "domainName": "chat.example.com", "certificateArn": arn}}
    with pytest.raises(SettingsError) as raised:
        StackSettings.from_values(values)
    message = str(raised.value)
    assert f"ai-gateway:webApp.certificateArn: {arn!r} {expected}" in message
    assert "us-east-1" in message  # every refusal says where CloudFront takes certificates from
    assert "(fix: pulumi config set --path 'webApp.certificateArn' <value>)" in message


@pytest.mark.parametrize(
    ("web_app", "missing", "given"),
    [
        ({"enabled": True, "domainName": "chat.example.com"}, "certificateArn", "domainName"),
        ({"enabled": True, "certificateArn": CERTIFICATE}, "domainName", "certificateArn"),
        ({"domainName": "chat.example.com", "certificateArn": None}, "certificateArn", "domainName"),
    ],
)
def test_web_app_domain_and_certificate_come_together(web_app: dict[str, Any], missing: str, given: str) -> None:
    with pytest.raises(SettingsError) as raised:
        StackSettings.from_values({**valid(), "webApp": web_app})
    [line] = str(raised.value).splitlines()[1:]
    assert line.strip().startswith(f"ai-gateway:webApp.{missing}: webApp.{given} is ")
    assert line.endswith(f"(fix: pulumi config set --path 'webApp.{missing}' <value>)")
    assert f"(or unset webApp.{given})" in line


def test_pulumi_yaml_declares_the_models_defaults() -> None:
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    fields = {f.alias: f for f in StackSettings.model_fields.values()}
    for key, declaration in declared.items():
        assert key in fields, f"Pulumi.yaml declares {key!r}, which the settings model does not know"
        if "default" in declaration:
            assert declaration["default"] == fields[key].default, key


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda v: v.pop("defaultTier"),
         "ai-gateway:defaultTier: Field required (fix: pulumi config set --path 'defaultTier'"),
        (lambda v: v["tiers"][0].update(windowTokens=-5),
         "ai-gateway:tiers[0].windowTokens: Input should be greater than 0"),
        (lambda v: v["tiers"][0].update(models=["not a model"]), "'not a model' is not a Bedrock model id"),
        (lambda v: v["tiers"][0].update(defaultModel="amazon.titan-x"), "defaultModel 'amazon.titan-x' is not among"),
        (lambda v: v.update(defaultTier="gold"), "ai-gateway:defaultTier: 'gold' is not one of the tiers"),
        (lambda v: v.update(logRetentionDays=10), "ai-gateway:logRetentionDays: must be one of"),
        (lambda v: v.update(functions={"worker": {"memoryMb": 512, "timeoutS": 900}}),
         "ai-gateway:functions.worker.timeoutS: 900 must be below leaseSeconds (900)"),
        (lambda v: v.pop("region"), "aws:region: Field required (fix: pulumi config set aws:region <region>)"),
        (lambda v: v.update(unknownKey=1), "ai-gateway:unknownKey: Extra inputs are not permitted"),
        (lambda v: v.update(webApp={"enabled": True, "priceClass": "PriceClass_1"}),
         "ai-gateway:webApp.priceClass: Input should be 'PriceClass_100', 'PriceClass_200' or 'PriceClass_All' "
         "(fix: pulumi config set --path 'webApp.priceClass' <value>)"),
        (lambda v: v.update(webApp={"enabled": "sometimes"}), "ai-gateway:webApp.enabled: Input should be a valid"),
    ],
)
def test_bad_config_names_the_key_and_the_fix(change: Any, expected: str) -> None:
    values = valid()
    change(values)
    with pytest.raises(SettingsError) as raised:
        StackSettings.from_values(values)
    assert expected in str(raised.value)


def test_the_runtime_configuration_is_derived_not_repeated() -> None:
    settings = StackSettings.from_stack_file(ROOT / "Pulumi.prod.yaml")
    runtime = settings.runtime_config(
        stack="prod", metering_table="m-table", cache_table="c-table", streams_table="s-table",
        http_endpoint="https://example.appsync-api.us-east-1.amazonaws.com/event", worker_function_name="w",
    )
    assert runtime.tiers == settings.tiers and runtime.default_tier == settings.default_tier
    assert runtime.lease_seconds == settings.lease_seconds


def test_inference_profiles_grant_the_profile_and_its_foundation_model() -> None:
    values = valid()
    values["tiers"][0]["models"] = ["amazon.nova-lite-v1:0", "us.anthropic.claude-haiku-5-5"]
    arns = StackSettings.from_values(values).model_arns("123456789012")
    assert arns == [
        "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-lite-v1:0",
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-haiku-5-5",
        "arn:aws:bedrock:*::foundation-model/anthropic.claude-haiku-5-5",
    ]


@pytest.mark.parametrize(("region", "partition"), [("us-gov-west-1", "aws-us-gov"), ("cn-north-1", "aws-cn")])
def test_model_arns_are_in_the_regions_partition(region: str, partition: str) -> None:
    values = valid()
    values["region"] = region
    values["tiers"][0]["models"] = ["amazon.nova-lite-v1:0", "us.anthropic.claude-haiku-5-5"]
    arns = StackSettings.from_values(values).model_arns("123456789012")
    assert arns and all(arn.startswith(f"arn:{partition}:bedrock:") for arn in arns)


def test_the_powertools_layer_is_in_the_regions_partition() -> None:
    from components.functions import powertools_layer_arn

    assert powertools_layer_arn("us-gov-west-1", "python3.13", 34).startswith("arn:aws-us-gov:lambda:us-gov-west-1:")
    assert powertools_layer_arn("eu-west-1", "python3.13", 34).startswith("arn:aws:lambda:eu-west-1:")


def test_stack_file_values_strip_the_project_prefix(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text("config:\n  aws:region: eu-west-1\n  ai-gateway:logPrompts: true\n  other:key: 1\n")
    assert stack_file_values(path) == {"region": "eu-west-1", "logPrompts": True}


def test_reserved_concurrency_total_counts_every_function_and_the_processor() -> None:
    values = valid()
    assert StackSettings.from_values(values).reserved_concurrency_total == 0
    values["functions"] = {
        "gatekeeper": {"memoryMb": 256, "timeoutS": 10, "reservedConcurrency": 10},
        "worker": {"memoryMb": 512, "timeoutS": 300, "reservedConcurrency": 20},
    }
    assert StackSettings.from_values(values).reserved_concurrency_total == 10 + 20 + 5
    values["analytics"] = {"enabled": False}
    assert StackSettings.from_values(values).reserved_concurrency_total == 30


def test_both_stacks_deploy_on_a_new_account_without_reserving() -> None:
    # A new account's quota can be 10 executions, and Lambda keeps 100 unreserved: any reservation fails there.
    for stack in ("dev", "prod"):
        assert StackSettings.from_stack_file(ROOT / f"Pulumi.{stack}.yaml").reserved_concurrency_total == 0
