"""Every name and enumerated value the program sends to AWS, checked against botocore's service models.

Pulumi accepts any string; AWS rejects bad names only at `pulumi up`. botocore carries each API's patterns,
lengths, ranges and enums, so a small table (Pulumi type + property -> service, operation, member) lets the
test catch them offline — including names Pulumi would auto-generate (`<logical name>-<7 hex chars>`).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import botocore.session
import pytest
import regex  # botocore patterns are Java regexes (\p{L} and friends), which `re` does not read

from aigw.mocks import Recorded
from components.web_app import MINIMUM_PROTOCOL_VERSION, SSL_SUPPORT_METHOD
from policy.rules import MODERN_TLS_POLICIES, SNI_ONLY
from tests.infra.test_program import STACKS, program, program_with_domain

AUTONAME_SUFFIX = "-a1b2c3d"

# (pulumi type, input property) -> (botocore service, operation, member); `[]` marks a list of values, dots a
# nested property (Pulumi) or member (botocore), e.g. CloudFront's `DistributionConfig.PriceClass`.
CHECKS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("aws:dynamodb/table:Table", "name"): ("dynamodb", "CreateTable", "TableName"),
    ("aws:dynamodb/table:Table", "billingMode"): ("dynamodb", "CreateTable", "BillingMode"),
    ("aws:lambda/function:Function", "name"): ("lambda", "CreateFunction", "FunctionName"),
    ("aws:lambda/function:Function", "runtime"): ("lambda", "CreateFunction", "Runtime"),
    ("aws:lambda/function:Function", "architectures[]"): ("lambda", "CreateFunction", "Architectures"),
    ("aws:lambda/function:Function", "memorySize"): ("lambda", "CreateFunction", "MemorySize"),
    ("aws:lambda/function:Function", "timeout"): ("lambda", "CreateFunction", "Timeout"),
    ("aws:lambda/function:Function", "handler"): ("lambda", "CreateFunction", "Handler"),
    ("aws:lambda/function:Function", "reservedConcurrentExecutions"): (
        "lambda", "PutFunctionConcurrency", "ReservedConcurrentExecutions"),
    ("aws:iam/role:Role", "name"): ("iam", "CreateRole", "RoleName"),
    ("aws:iam/rolePolicy:RolePolicy", "name"): ("iam", "PutRolePolicy", "PolicyName"),
    ("aws:appsync/api:Api", "name"): ("appsync", "CreateApi", "name"),
    ("aws:appsync/dataSource:DataSource", "name"): ("appsync", "CreateDataSource", "name"),
    ("aws:appsync/dataSource:DataSource", "type"): ("appsync", "CreateDataSource", "type"),
    ("aws:appsync/channelNamespace:ChannelNamespace", "name"): ("appsync", "CreateChannelNamespace", "name"),
    ("aws:cloudwatch/logGroup:LogGroup", "name"): ("logs", "CreateLogGroup", "logGroupName"),
    ("aws:cloudwatch/logGroup:LogGroup", "retentionInDays"): ("logs", "PutRetentionPolicy", "retentionInDays"),
    ("aws:cognito/userPool:UserPool", "name"): ("cognito-idp", "CreateUserPool", "PoolName"),
    ("aws:cognito/userPool:UserPool", "mfaConfiguration"): ("cognito-idp", "SetUserPoolMfaConfig", "MfaConfiguration"),
    ("aws:cognito/userPool:UserPool", "deletionProtection"): ("cognito-idp", "CreateUserPool", "DeletionProtection"),
    ("aws:cognito/userPoolClient:UserPoolClient", "name"): ("cognito-idp", "CreateUserPoolClient", "ClientName"),
    ("aws:cognito/userPoolClient:UserPoolClient", "explicitAuthFlows[]"): (
        "cognito-idp", "CreateUserPoolClient", "ExplicitAuthFlows"),
    ("aws:cognito/userGroup:UserGroup", "name"): ("cognito-idp", "CreateGroup", "GroupName"),
    ("aws:cognito/userGroup:UserGroup", "precedence"): ("cognito-idp", "CreateGroup", "Precedence"),
    ("aws:sqs/queue:Queue", "name"): ("sqs", "CreateQueue", "QueueName"),
    ("aws:sns/topic:Topic", "name"): ("sns", "CreateTopic", "Name"),
    ("aws:cloudwatch/metricAlarm:MetricAlarm", "name"): ("cloudwatch", "PutMetricAlarm", "AlarmName"),
    ("aws:cloudwatch/metricAlarm:MetricAlarm", "comparisonOperator"): (
        "cloudwatch", "PutMetricAlarm", "ComparisonOperator"),
    ("aws:cloudwatch/metricAlarm:MetricAlarm", "treatMissingData"): (
        "cloudwatch", "PutMetricAlarm", "TreatMissingData"),
    ("aws:cloudwatch/dashboard:Dashboard", "dashboardName"): ("cloudwatch", "PutDashboard", "DashboardName"),
    ("aws:bedrock/guardrail:Guardrail", "name"): ("bedrock", "CreateGuardrail", "name"),
    ("aws:lambda/functionEventInvokeConfig:FunctionEventInvokeConfig", "maximumRetryAttempts"): (
        "lambda", "PutFunctionEventInvokeConfig", "MaximumRetryAttempts"),
    ("aws:lambda/functionEventInvokeConfig:FunctionEventInvokeConfig", "maximumEventAgeInSeconds"): (
        "lambda", "PutFunctionEventInvokeConfig", "MaximumEventAgeInSeconds"),
    ("aws:s3/bucket:Bucket", "bucket"): ("s3", "CreateBucket", "Bucket"),
    ("aws:kinesis/firehoseDeliveryStream:FirehoseDeliveryStream", "name"): (
        "firehose", "CreateDeliveryStream", "DeliveryStreamName"),
    ("aws:athena/workgroup:Workgroup", "name"): ("athena", "CreateWorkGroup", "Name"),
    ("aws:cloudwatch/logSubscriptionFilter:LogSubscriptionFilter", "filterPattern"): (
        "logs", "PutSubscriptionFilter", "filterPattern"),
    ("aws:s3/bucketObjectv2:BucketObjectv2", "key"): ("s3", "PutObject", "Key"),
    ("aws:cloudfront/distribution:Distribution", "priceClass"): (
        "cloudfront", "CreateDistribution", "DistributionConfig.PriceClass"),
    ("aws:cloudfront/distribution:Distribution", "httpVersion"): (
        "cloudfront", "CreateDistribution", "DistributionConfig.HttpVersion"),
    ("aws:cloudfront/distribution:Distribution", "defaultCacheBehavior.viewerProtocolPolicy"): (
        "cloudfront", "CreateDistribution", "DistributionConfig.DefaultCacheBehavior.ViewerProtocolPolicy"),
    ("aws:cloudfront/distribution:Distribution", "defaultCacheBehavior.allowedMethods[]"): (
        "cloudfront", "CreateDistribution", "DistributionConfig.DefaultCacheBehavior.AllowedMethods.Items"),
    ("aws:cloudfront/distribution:Distribution", "defaultCacheBehavior.cachedMethods[]"): (
        "cloudfront", "CreateDistribution",
        "DistributionConfig.DefaultCacheBehavior.AllowedMethods.CachedMethods.Items"),
    ("aws:cloudfront/distribution:Distribution", "restrictions.geoRestriction.restrictionType"): (
        "cloudfront", "CreateDistribution", "DistributionConfig.Restrictions.GeoRestriction.RestrictionType"),
    ("aws:cloudfront/originAccessControl:OriginAccessControl", "originAccessControlOriginType"): (
        "cloudfront", "CreateOriginAccessControl", "OriginAccessControlConfig.OriginAccessControlOriginType"),
    ("aws:cloudfront/originAccessControl:OriginAccessControl", "signingBehavior"): (
        "cloudfront", "CreateOriginAccessControl", "OriginAccessControlConfig.SigningBehavior"),
    ("aws:cloudfront/originAccessControl:OriginAccessControl", "signingProtocol"): (
        "cloudfront", "CreateOriginAccessControl", "OriginAccessControlConfig.SigningProtocol"),
    ("aws:cloudfront/responseHeadersPolicy:ResponseHeadersPolicy", "securityHeadersConfig.frameOptions.frameOption"): (
        "cloudfront", "CreateResponseHeadersPolicy", "ResponseHeadersPolicyConfig.SecurityHeadersConfig.FrameOptions."
        "FrameOption"),
    ("aws:cloudfront/responseHeadersPolicy:ResponseHeadersPolicy",
     "securityHeadersConfig.referrerPolicy.referrerPolicy"): (
        "cloudfront", "CreateResponseHeadersPolicy", "ResponseHeadersPolicyConfig.SecurityHeadersConfig.ReferrerPolicy."
        "ReferrerPolicy"),
}
# Set only when the page has its own domain (`webApp.domainName`): checked on `program_with_domain`.
DOMAIN_CHECKS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("aws:cloudfront/distribution:Distribution", "aliases[]"): (
        "cloudfront", "CreateDistribution", "DistributionConfig.Aliases.Items"),
    ("aws:cloudfront/distribution:Distribution", "viewerCertificate.acmCertificateArn"): (
        "cloudfront", "CreateDistribution", "DistributionConfig.ViewerCertificate.ACMCertificateArn"),
    ("aws:cloudfront/distribution:Distribution", "viewerCertificate.sslSupportMethod"): (
        "cloudfront", "CreateDistribution", "DistributionConfig.ViewerCertificate.SSLSupportMethod"),
    ("aws:cloudfront/distribution:Distribution", "viewerCertificate.minimumProtocolVersion"): (
        "cloudfront", "CreateDistribution", "DistributionConfig.ViewerCertificate.MinimumProtocolVersion"),
}
# CloudFront security policies the policy pack's `cloudfront-modern-tls` refuses (below TLSv1.2_2019).
LEGACY_TLS_POLICIES = frozenset({"SSLv3", "TLSv1", "TLSv1_2016", "TLSv1.1_2016", "TLSv1.2_2018"})
# Name properties Pulumi fills in when the program leaves them out.
AUTONAMED = {"name", "dashboardName"}


@cache
def shape(service: str, operation: str, member: str) -> Any:
    model = botocore.session.get_session().get_service_model(service)
    found = model.operation_model(operation).input_shape
    for part in member.split("."):
        found = found.members[part]
    return found


def problems(value: Any, s: Any) -> list[str]:
    if s.type_name == "list":
        return [p for item in value for p in problems(item, s.member)]
    meta, found = s.metadata, []
    if "enum" in meta and value not in meta["enum"]:
        found.append(f"{value!r} not in {meta['enum']}")
    if s.type_name == "string":
        if "min" in meta and len(value) < meta["min"]:
            found.append(f"{value!r} shorter than {meta['min']}")
        if "max" in meta and len(value) > meta["max"]:
            found.append(f"{value!r} longer than {meta['max']}")
        if "pattern" in meta and not regex.fullmatch(meta["pattern"], value):
            found.append(f"{value!r} does not match {meta['pattern']}")
    if s.type_name in ("integer", "long"):
        if "min" in meta and value < meta["min"]:
            found.append(f"{value} below {meta['min']}")
        if "max" in meta and value > meta["max"]:
            found.append(f"{value} above {meta['max']}")
    return found


def value_of(resource: Recorded, prop: str) -> Any:
    *parents, key = prop.removesuffix("[]").split(".")
    inputs: Any = resource.inputs
    for parent in parents:
        inputs = inputs.get(parent) if isinstance(inputs, dict) else None
    if isinstance(inputs, dict) and key in inputs:
        value = inputs[key]
        return int(value) if isinstance(value, float) and value.is_integer() else value
    return resource.name + AUTONAME_SUFFIX if not parents and key in AUTONAMED else None


@pytest.mark.parametrize("stack", STACKS)
def test_names_and_enums_are_valid_for_the_aws_apis_that_receive_them(stack: str) -> None:
    mocks = program(stack)
    checked, failures = 0, []
    for (type_, prop), (service, operation, member) in CHECKS.items():
        for resource in mocks.of_type(type_):
            value = value_of(resource, prop)
            if value is None:
                continue
            checked += 1
            found = problems(value, shape(service, operation, member))
            failures += [f"{type_} {resource.name}.{prop}: {p}" for p in found]
    assert failures == []
    assert checked > 40  # the table actually found the program's resources


def test_the_checker_catches_what_aws_would_reject() -> None:
    assert problems("gate-keeper", shape("appsync", "CreateDataSource", "name"))  # no hyphens in data sources
    assert problems("x" * 65, shape("iam", "CreateRole", "RoleName"))
    assert problems("x86", shape("lambda", "CreateFunction", "Architectures"))
    assert problems(["x86"], shape("lambda", "CreateFunction", "Architectures"))
    assert problems(100_000, shape("lambda", "CreateFunction", "MemorySize"))
    assert not problems(["arm64"], shape("lambda", "CreateFunction", "Architectures"))
    assert problems("allow-all-ish", shape("cloudfront", "CreateDistribution",
                                           "DistributionConfig.DefaultCacheBehavior.ViewerProtocolPolicy"))
    assert problems("PriceClass_50", shape("cloudfront", "CreateDistribution", "DistributionConfig.PriceClass"))


def test_the_web_page_is_checked_too() -> None:
    mocks = program("dev")
    checked = {(t, p) for (t, p) in CHECKS if t.startswith("aws:cloudfront/")
               for r in mocks.of_type(t) if value_of(r, p) is not None}
    assert len(checked) == sum(1 for t, _ in CHECKS if t.startswith("aws:cloudfront/"))


def failures_of(mocks: Any, checks: dict[tuple[str, str], tuple[str, str, str]]) -> tuple[set[tuple[str, str]],
                                                                                           list[str]]:
    """(the checks that found a value, what botocore's model says is wrong with the values)."""
    found, failures = set(), []
    for (type_, prop), (service, operation, member) in checks.items():
        for resource in mocks.of_type(type_):
            value = value_of(resource, prop)
            if value is None:
                continue
            found.add((type_, prop))
            found_problems = problems(value, shape(service, operation, member))
            failures += [f"{type_} {resource.name}.{prop}: {p}" for p in found_problems]
    return found, failures


@pytest.mark.parametrize("stack", STACKS)
def test_the_page_on_its_own_domain_sends_valid_names_and_enums(stack: str) -> None:
    found, failures = failures_of(program_with_domain(stack), CHECKS | DOMAIN_CHECKS)
    assert failures == []
    assert set(DOMAIN_CHECKS) <= found  # the domain's settings were there to check
    assert {(t, p) for t, p in CHECKS if t.startswith("aws:cloudfront/")} <= found
    for plain in STACKS:  # and none of them is sent without a domain
        assert not failures_of(program(plain), DOMAIN_CHECKS)[0]


def test_the_certificate_settings_are_values_cloudfront_knows() -> None:
    version = shape("cloudfront", "CreateDistribution", "DistributionConfig.ViewerCertificate.MinimumProtocolVersion")
    method = shape("cloudfront", "CreateDistribution", "DistributionConfig.ViewerCertificate.SSLSupportMethod")
    assert not problems(MINIMUM_PROTOCOL_VERSION, version) and not problems(SSL_SUPPORT_METHOD, method)
    assert SSL_SUPPORT_METHOD == SNI_ONLY and MINIMUM_PROTOCOL_VERSION in MODERN_TLS_POLICIES
    assert problems("TLSv1.2_2099", version) and problems("sni", method)


def test_the_policy_packs_modern_tls_set_sorts_every_security_policy_botocore_knows() -> None:
    # A security policy AWS adds shows up in botocore's enum first: decide here (and in policy/rules.py) whether
    # `cloudfront-modern-tls` accepts it, rather than have the pack refuse it unseen.
    enum = set(shape("cloudfront", "CreateDistribution",
                     "DistributionConfig.ViewerCertificate.MinimumProtocolVersion").metadata["enum"])
    assert enum >= MODERN_TLS_POLICIES, MODERN_TLS_POLICIES - enum
    assert enum >= LEGACY_TLS_POLICIES, LEGACY_TLS_POLICIES - enum
    assert not MODERN_TLS_POLICIES & LEGACY_TLS_POLICIES
    assert enum == MODERN_TLS_POLICIES | LEGACY_TLS_POLICIES, enum - MODERN_TLS_POLICIES - LEGACY_TLS_POLICIES
    assert SNI_ONLY in shape("cloudfront", "CreateDistribution",
                             "DistributionConfig.ViewerCertificate.SSLSupportMethod").metadata["enum"]
