"""Every rule in `policy.rules`, called directly with real pulumi-policy args objects (props wrapped in the
analyzer's unknown-checking proxies, camelCase keys as Pulumi sends them). No server is started."""

from __future__ import annotations

import ast
import json
import runpy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi_policy
import pytest
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError

from policy import rules
from policy.rules import ALL_RULES, policy_resource, resource_args, stack_args

ROOT = Path(__file__).resolve().parents[2]
PROD = {"stack": "prod"}
DEV = {"stack": "dev"}


def violations(rule: Any, args: Any) -> list[str]:
    found: list[str] = []
    result = rule.validate(args, lambda message, urn=None: found.append(message))
    assert result is None  # every rule is synchronous
    return found


def doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(action: Any, resource: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource}


TABLE_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/ai-gateway-prod-metering"
LOG_KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ALL_FLAGS = {"blockPublicAcls": True, "blockPublicPolicy": True, "ignorePublicAcls": True,
             "restrictPublicBuckets": True}
AES = [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}]


@dataclass(frozen=True)
class Case:
    rule: Any
    label: str
    args: Callable[[], Any]
    violates: bool
    expect: str = ""  # a violating case: what one of the messages must say (the reason, not just any violation)


def r(type_: str, props: dict[str, Any], config: dict[str, Any] | None = None) -> Callable[[], Any]:
    return lambda: resource_args(type_, props, name="x", config=config)


def s(*resources: tuple[str, str, dict[str, Any]], config: dict[str, Any] | None = None) -> Callable[[], Any]:
    return lambda: stack_args([policy_resource(t, n, p) for t, n, p in resources], config=config)


BUCKET = "aws:s3/bucket:Bucket"
SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
PAB = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
TABLE, LOGS, FIREHOSE = rules.DYNAMODB_TABLE, rules.LOG_GROUP, rules.FIREHOSE
FN, POOL, ROLE_POLICY = rules.LAMBDA_FUNCTION, rules.USER_POOL, "aws:iam/rolePolicy:RolePolicy"
CF = rules.CLOUDFRONT_DISTRIBUTION
S3_REST = "page-bucket.s3.us-east-1.amazonaws.com"


def behavior(viewer: str = "redirect-to-https", headers: str | None = "rhp-id", **extra: Any) -> dict[str, Any]:
    found = {"targetOriginId": "s3", "viewerProtocolPolicy": viewer, **extra}
    return {**found, "responseHeadersPolicyId": headers} if headers is not None else found


def distribution(*origins: dict[str, Any], default: dict[str, Any] | None = None,
                 ordered: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    props = {"origins": list(origins) or [{"originId": "s3", "domainName": S3_REST, "originAccessControlId": "oac"}],
             "defaultCacheBehavior": default if default is not None else behavior()}
    return {**props, "orderedCacheBehaviors": ordered} if ordered is not None else props


RHP = rules.RESPONSE_HEADERS_POLICY
MANAGED_SIMPLE_CORS = "60669652-455b-4ae9-85a4-c4c02393f86c"  # AWS-managed "SimpleCORS": no CSP, no HSTS
CSP = {"contentSecurityPolicy": "default-src 'none'", "override": True}
HSTS = {"accessControlMaxAgeSec": 63072000, "includeSubdomains": True, "override": True}


def headers_policy(policy_id: str = "rhp-id", **sections: Any) -> dict[str, Any]:
    """A response headers policy's props (outputs, as a stack rule sees them); a section given as None is left
    out, one given a value replaces the default."""
    config = {"contentSecurityPolicy": CSP, "strictTransportSecurity": HSTS, "contentTypeOptions": {"override": True},
              "frameOptions": {"frameOption": "DENY", "override": True}}
    for name, value in sections.items():
        config.pop(name) if value is None else config.__setitem__(name, value)
    return {"id": policy_id, "name": "page-headers", "securityHeadersConfig": config}


def page(props: dict[str, Any], *policies: dict[str, Any]) -> Callable[[], Any]:
    """A stack of one distribution and `policies`."""
    return s((CF, "page", props), *((RHP, f"headers-{i}", policy) for i, policy in enumerate(policies)))


WITH_CONFIG = distribution(ordered=[behavior(pathPattern="config.json")])
ACM_ARN = "arn:aws:acm:us-east-1:123456789012:certificate/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def certificate(**viewer: Any) -> dict[str, Any]:
    """A distribution on its own domain whose viewerCertificate is `viewer` (a None value is left out)."""
    return {**distribution(), "aliases": ["chat.example.com"],
            "viewerCertificate": {k: v for k, v in viewer.items() if v is not None}}


def acm(method: str | None = "sni-only", version: str | None = "TLSv1.2_2021") -> dict[str, Any]:
    return certificate(acmCertificateArn=ACM_ARN, sslSupportMethod=method, minimumProtocolVersion=version)


CASES = [
    # Encryption at rest
    Case(rules.dynamodb_encryption, "sse on", r(TABLE, {"serverSideEncryption": {"enabled": True}}), False),
    Case(rules.dynamodb_encryption, "sse unset", r(TABLE, {}), True),
    Case(rules.dynamodb_encryption, "sse off", r(TABLE, {"serverSideEncryption": {"enabled": False}}), True),
    Case(rules.dynamodb_encryption, "other types ignored", r(FN, {}), False),
    Case(rules.s3_encryption, "bucket-level config", s((BUCKET, "b", {"serverSideEncryptionConfiguration": {
        "rule": {"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms"}}}})), False),
    Case(rules.s3_encryption, "separate config by id",
         s((BUCKET, "b", {"id": "b-id"}), (SSE, "b-sse", {"bucket": "b-id", "rules": AES})), False),
    Case(rules.s3_encryption, "no config", s((BUCKET, "b", {"id": "b-id"})), True),
    Case(rules.s3_encryption, "config for another bucket",
         s((BUCKET, "b", {"id": "b-id"}), (SSE, "c-sse", {"bucket": "c-id", "rules": AES})), True),
    Case(rules.s3_encryption, "config without algorithm",
         s((BUCKET, "b", {"id": "b-id"}), (SSE, "b-sse", {"bucket": "b-id", "rules": [{}]})), True),
    Case(rules.log_group_kms, "no key, not required", r(LOGS, {"retentionInDays": 30}), False),
    Case(rules.log_group_kms, "key ARN", r(LOGS, {"kmsKeyId": LOG_KEY}, {"requireKms": True}), False),
    Case(rules.log_group_kms, "no key, required", r(LOGS, {}, {"requireKms": True}), True),
    Case(rules.log_group_kms, "key id instead of ARN", r(LOGS, {"kmsKeyId": "1234abcd"}), True),
    Case(rules.firehose_encryption, "sse on",
         r(FIREHOSE, {"serverSideEncryption": {"enabled": True, "keyType": "AWS_OWNED_CMK"}}), False),
    Case(rules.firehose_encryption, "stream-sourced (SSE not allowed)",
         r(FIREHOSE, {"kinesisSourceConfiguration": {"kinesisStreamArn": "arn:x", "roleArn": "arn:y"}}), False),
    Case(rules.firehose_encryption, "sse unset", r(FIREHOSE, {"destination": "extended_s3"}), True),
    Case(rules.firehose_encryption, "CMK without key",
         r(FIREHOSE, {"serverSideEncryption": {"enabled": True, "keyType": "CUSTOMER_MANAGED_CMK"}}), True),
    # Prod durability
    Case(rules.dynamodb_pitr, "prod, on", r(TABLE, {"pointInTimeRecovery": {"enabled": True}}, PROD), False),
    Case(rules.dynamodb_pitr, "dev, off", r(TABLE, {"pointInTimeRecovery": {"enabled": False}}, DEV), False),
    Case(rules.dynamodb_pitr, "prod, off", r(TABLE, {"pointInTimeRecovery": {"enabled": False}}, PROD), True),
    Case(rules.dynamodb_pitr, "prod, unset", r(TABLE, {}, PROD), True),
    Case(rules.dynamodb_deletion_protection, "prod, on", r(TABLE, {"deletionProtectionEnabled": True}, PROD), False),
    Case(rules.dynamodb_deletion_protection, "dev, off", r(TABLE, {"deletionProtectionEnabled": False}, DEV), False),
    Case(rules.dynamodb_deletion_protection, "prod, off", r(TABLE, {"deletionProtectionEnabled": False}, PROD), True),
    # Logs
    Case(rules.log_retention, "30 days", r(LOGS, {"retentionInDays": 30.0}), False),
    Case(rules.log_retention, "unset", r(LOGS, {"name": "/aws/lambda/x"}), True),
    Case(rules.log_retention, "0 = forever", r(LOGS, {"retentionInDays": 0}), True),
    # S3 public access
    Case(rules.s3_public_access, "all four flags",
         s((BUCKET, "b", {"id": "b-id"}), (PAB, "b-pab", {"bucket": "b-id", **ALL_FLAGS})), False),
    Case(rules.s3_public_access, "account-level block",
         s((BUCKET, "b", {}), ("aws:s3/accountPublicAccessBlock:AccountPublicAccessBlock", "acct", ALL_FLAGS)),
         False),
    Case(rules.s3_public_access, "no block", s((BUCKET, "b", {"id": "b-id"})), True),
    Case(rules.s3_public_access, "one flag off", s((BUCKET, "b", {"id": "b-id"}),
         (PAB, "b-pab", {"bucket": "b-id", **ALL_FLAGS, "restrictPublicBuckets": False})), True),
    # IAM
    Case(rules.iam_least_privilege, "scoped",
         r(ROLE_POLICY, {"policy": doc(allow(["dynamodb:GetItem", "dynamodb:UpdateItem"], TABLE_ARN))}), False),
    Case(rules.iam_least_privilege, "x-ray on *",
         r(ROLE_POLICY, {"policy": doc(allow(["xray:PutTraceSegments", "XRay:PutTelemetryRecords"], "*"))}), False),
    Case(rules.iam_least_privilege, "metrics on *, as an object",
         r("aws:iam/policy:Policy", {"policy": {"Statement": allow("cloudwatch:PutMetricData", ["*"])}}), False),
    Case(rules.iam_least_privilege, "Deny may use wildcards",
         r(ROLE_POLICY, {"policy": doc({"Effect": "Deny", "Action": "*", "Resource": "*"})}), False),
    Case(rules.iam_least_privilege, "Action *", r(ROLE_POLICY, {"policy": doc(allow("*", TABLE_ARN))}), True),
    Case(rules.iam_least_privilege, "service:*", r(ROLE_POLICY, {"policy": doc(allow("s3:*", TABLE_ARN))}), True),
    Case(rules.iam_least_privilege, "Resource * for a scopable action",
         r("aws:iam/policy:Policy", {"policy": doc(allow(["xray:PutTraceSegments", "bedrock:InvokeModel"], "*"))}),
         True),
    Case(rules.iam_least_privilege, "NotAction",
         r(ROLE_POLICY, {"policy": doc({"Effect": "Allow", "NotAction": "iam:*", "Resource": TABLE_ARN})}), True),
    Case(rules.iam_least_privilege, "unparseable JSON", r(ROLE_POLICY, {"policy": "{not json"}), True),
    Case(rules.iam_least_privilege, "JSON but not an object", r(ROLE_POLICY, {"policy": "[]"}), True),
    Case(rules.iam_least_privilege, "no Statement", r(ROLE_POLICY, {"policy": '{"Version": "2012-10-17"}'}), True),
    Case(rules.iam_least_privilege, "missing policy", r(ROLE_POLICY, {"role": "r"}), True),
    Case(rules.iam_least_privilege, "role inline policy",
         r(rules.IAM_ROLE, {"inlinePolicies": [{"name": "p", "policy": doc(allow("dynamodb:*", "*"))}]}), True),
    # Lambda
    Case(rules.lambda_arm64, "arm64", r(FN, {"architectures": ["arm64"]}), False),
    Case(rules.lambda_arm64, "unset (x86_64)", r(FN, {"runtime": "python3.12"}), True),
    Case(rules.lambda_arm64, "x86_64", r(FN, {"architectures": ["x86_64"]}), True),
    Case(rules.lambda_reserved_concurrency, "prod, 5", r(FN, {"reservedConcurrentExecutions": 5.0}, PROD), False),
    Case(rules.lambda_reserved_concurrency, "dev, unset", r(FN, {}, DEV), False),
    Case(rules.lambda_reserved_concurrency, "prod, unset (fits a 10-execution account)", r(FN, {}, PROD), False),
    Case(rules.lambda_reserved_concurrency, "prod, -1 (unreserved)",
         r(FN, {"reservedConcurrentExecutions": -1}, PROD), False),
    Case(rules.lambda_reserved_concurrency, "prod, 0 (throttles everything)",
         r(FN, {"reservedConcurrentExecutions": 0}, PROD), True),
    Case(rules.lambda_reserved_concurrency, "dev, 0", r(FN, {"reservedConcurrentExecutions": 0}, DEV), False),
    Case(rules.lambda_reserved_concurrency, "prod, unset, required",
         r(FN, {}, {**PROD, "requireReservedConcurrency": True}), True),
    Case(rules.lambda_reserved_concurrency, "prod, -1, required",
         r(FN, {"reservedConcurrentExecutions": -1}, {**PROD, "requireReservedConcurrency": True}), True),
    Case(rules.lambda_reserved_concurrency, "prod, 5, required",
         r(FN, {"reservedConcurrentExecutions": 5}, {**PROD, "requireReservedConcurrency": True}), False),
    # Cognito
    Case(rules.cognito_mfa, "prod, optional TOTP",
         r(POOL, {"mfaConfiguration": "OPTIONAL", "softwareTokenMfaConfiguration": {"enabled": True}}, PROD), False),
    Case(rules.cognito_mfa, "dev, off", r(POOL, {"mfaConfiguration": "OFF"}, DEV), False),
    Case(rules.cognito_mfa, "prod, off", r(POOL, {"mfaConfiguration": "OFF"}, PROD), True),
    Case(rules.cognito_mfa, "prod, ON without TOTP", r(POOL, {"mfaConfiguration": "ON"}, PROD), True),
    # CloudFront
    Case(rules.cloudfront_https_only, "redirect and https-only",
         r(CF, distribution(ordered=[behavior("https-only", pathPattern="config.json")])), False),
    Case(rules.cloudfront_https_only, "default allows http", r(CF, distribution(default=behavior("allow-all"))), True),
    Case(rules.cloudfront_https_only, "an ordered behavior allows http",
         r(CF, distribution(ordered=[behavior("allow-all", pathPattern="img/*")])), True),
    Case(rules.cloudfront_https_only, "no default behavior", r(CF, {"origins": []}), True),
    Case(rules.cloudfront_s3_origin_access_control, "S3 REST endpoint with OAC", r(CF, distribution()), False),
    Case(rules.cloudfront_s3_origin_access_control, "custom (non-S3) origin without OAC",
         r(CF, distribution({"originId": "api", "domainName": "api.example.com",
                             "customOriginConfig": {"originProtocolPolicy": "https-only"}})), False),
    Case(rules.cloudfront_s3_origin_access_control, "OAC with an empty legacy OAI field",
         r(CF, distribution({"originId": "s3", "domainName": S3_REST, "originAccessControlId": "oac",
                             "s3OriginConfig": {"originAccessIdentity": ""}})), False),
    Case(rules.cloudfront_s3_origin_access_control, "S3 REST endpoint without OAC",
         r(CF, distribution({"originId": "s3", "domainName": S3_REST})), True),
    Case(rules.cloudfront_s3_origin_access_control, "legacy origin access identity",
         r(CF, distribution({"originId": "s3", "domainName": "b.s3.amazonaws.com", "s3OriginConfig": {
             "originAccessIdentity": "origin-access-identity/cloudfront/E127EXAMPLE51Z"}})), True),
    Case(rules.cloudfront_s3_origin_access_control, "public S3 website endpoint",
         r(CF, distribution({"originId": "site", "domainName": "b.s3-website-us-east-1.amazonaws.com",
                             "customOriginConfig": {"originProtocolPolicy": "http-only"}})), True),
    Case(rules.cloudfront_modern_tls, "ACM certificate, SNI, TLSv1.2_2021", r(CF, acm()), False),
    Case(rules.cloudfront_modern_tls, "ACM certificate, SNI, TLSv1.2_2019", r(CF, acm(version="TLSv1.2_2019")),
         False),
    Case(rules.cloudfront_modern_tls, "ACM certificate, SNI, TLSv1.2_2025", r(CF, acm(version="TLSv1.2_2025")),
         False),
    Case(rules.cloudfront_modern_tls, "IAM certificate, SNI, TLSv1.3_2025",
         r(CF, certificate(iamCertificateId="ASCACKCEVSQ6C2EXAMPLE", sslSupportMethod="sni-only",
                           minimumProtocolVersion="TLSv1.3_2025")), False),
    Case(rules.cloudfront_modern_tls, "default certificate (CloudFront fixes the protocol)",
         r(CF, {**distribution(), "viewerCertificate": {"cloudfrontDefaultCertificate": True,
                                                        "minimumProtocolVersion": "TLSv1"}}), False),
    Case(rules.cloudfront_modern_tls, "default certificate, empty certificate fields",
         r(CF, {**distribution(), "viewerCertificate": {"cloudfrontDefaultCertificate": True,
                                                        "acmCertificateArn": "", "iamCertificateId": ""}}), False),
    Case(rules.cloudfront_modern_tls, "no viewerCertificate", r(CF, distribution()), False),
    Case(rules.cloudfront_modern_tls, "other types ignored",
         r(RHP, {"viewerCertificate": {"acmCertificateArn": ACM_ARN}}), False),
    Case(rules.cloudfront_modern_tls, "TLSv1.2_2018", r(CF, acm(version="TLSv1.2_2018")), True,
         expect="minimumProtocolVersion must be TLSv1.2_2019 or newer"),
    Case(rules.cloudfront_modern_tls, "TLSv1.1_2016", r(CF, acm(version="TLSv1.1_2016")), True,
         expect="got 'TLSv1.1_2016'"),
    Case(rules.cloudfront_modern_tls, "TLSv1", r(CF, acm(version="TLSv1")), True, expect="got 'TLSv1'"),
    Case(rules.cloudfront_modern_tls, "SSLv3", r(CF, acm(version="SSLv3")), True, expect="got 'SSLv3'"),
    Case(rules.cloudfront_modern_tls, "protocol version unset (the provider's TLSv1)", r(CF, acm(version=None)), True,
         expect="got unset (TLSv1)"),
    Case(rules.cloudfront_modern_tls, "a dedicated IP (vip)", r(CF, acm(method="vip")), True,
         expect="sslSupportMethod must be 'sni-only'"),
    Case(rules.cloudfront_modern_tls, "static-ip", r(CF, acm(method="static-ip")), True, expect="got 'static-ip'"),
    Case(rules.cloudfront_modern_tls, "SSL support method unset", r(CF, acm(method=None)), True,
         expect="sslSupportMethod must be 'sni-only' with a custom certificate ("),
    Case(rules.cloudfront_modern_tls, "IAM certificate, TLSv1_2016",
         r(CF, certificate(iamCertificateId="ASCACKCEVSQ6C2EXAMPLE", sslSupportMethod="sni-only",
                           minimumProtocolVersion="TLSv1_2016")), True, expect="got 'TLSv1_2016'"),
    Case(rules.cloudfront_security_headers, "every behavior uses a policy of the stack",
         page(WITH_CONFIG, headers_policy()), False),
    Case(rules.cloudfront_security_headers, "behaviors may use different good policies",
         page(distribution(ordered=[behavior(headers="other-id", pathPattern="config.json")]),
              headers_policy(), headers_policy("other-id")), False),
    Case(rules.cloudfront_security_headers, "a weak policy nothing uses",
         page(WITH_CONFIG, headers_policy(), headers_policy("unused-id", strictTransportSecurity=None)), False),
    Case(rules.cloudfront_security_headers, "no distribution",
         s((RHP, "h", headers_policy(contentSecurityPolicy=None))), False),
    Case(rules.cloudfront_security_headers, "no policy", page(distribution(default=behavior(headers=None)),
                                                               headers_policy()), True,
         expect="defaultCacheBehavior.responseHeadersPolicyId is required"),
    Case(rules.cloudfront_security_headers, "empty policy id", page(distribution(default=behavior(headers="")),
                                                                     headers_policy()), True,
         expect="defaultCacheBehavior.responseHeadersPolicyId is required"),
    Case(rules.cloudfront_security_headers, "an AWS-managed policy, not in the stack",
         page(distribution(default=behavior(headers=MANAGED_SIMPLE_CORS)), headers_policy()), True,
         expect="not a response headers policy declared in this stack"),
    Case(rules.cloudfront_security_headers, "an id of no policy in the stack", page(distribution()), True,
         expect="('rhp-id') is not a response headers policy declared in this stack"),
    Case(rules.cloudfront_security_headers, "an ordered behavior without a policy",
         page(distribution(ordered=[behavior(headers=None, pathPattern="config.json")]), headers_policy()), True,
         expect="orderedCacheBehaviors[0] (config.json).responseHeadersPolicyId is required"),
    Case(rules.cloudfront_security_headers, "an ordered behavior with an AWS-managed policy",
         page(distribution(ordered=[behavior(headers=MANAGED_SIMPLE_CORS, pathPattern="api/*")]), headers_policy()),
         True, expect="orderedCacheBehaviors[0] (api/*).responseHeadersPolicyId"),
    Case(rules.cloudfront_security_headers, "policy without CSP",
         page(WITH_CONFIG, headers_policy(contentSecurityPolicy=None)), True,
         expect="contentSecurityPolicy needs"),
    Case(rules.cloudfront_security_headers, "policy with an empty CSP",
         page(WITH_CONFIG, headers_policy(contentSecurityPolicy={**CSP, "contentSecurityPolicy": " "})), True,
         expect="contentSecurityPolicy needs"),
    Case(rules.cloudfront_security_headers, "CSP not overriding the origin's",
         page(WITH_CONFIG, headers_policy(contentSecurityPolicy={**CSP, "override": False})), True,
         expect="contentSecurityPolicy needs"),
    Case(rules.cloudfront_security_headers, "policy without HSTS",
         page(WITH_CONFIG, headers_policy(strictTransportSecurity=None)), True,
         expect="strictTransportSecurity needs"),
    Case(rules.cloudfront_security_headers, "HSTS not overriding the origin's",
         page(WITH_CONFIG, headers_policy(strictTransportSecurity={**HSTS, "override": False})), True,
         expect="strictTransportSecurity needs"),
    Case(rules.cloudfront_security_headers, "HSTS max-age 0 (switches HSTS off)",
         page(WITH_CONFIG, headers_policy(strictTransportSecurity={**HSTS, "accessControlMaxAgeSec": 0})), True,
         expect="strictTransportSecurity needs"),
    Case(rules.cloudfront_security_headers, "policy without nosniff",
         page(WITH_CONFIG, headers_policy(contentTypeOptions=None)), True,
         expect="contentTypeOptions is required"),
    Case(rules.cloudfront_security_headers, "a CORS-only policy of the stack",
         page(WITH_CONFIG, {"id": "rhp-id", "corsConfig": {"originOverride": True}}), True,
         expect="contentSecurityPolicy needs"),
    Case(rules.cloudfront_security_headers, "the ordered behavior's policy lacks HSTS",
         page(distribution(ordered=[behavior(headers="weak-id", pathPattern="config.json")]),
              headers_policy(), headers_policy("weak-id", strictTransportSecurity=None)), True,
         expect="orderedCacheBehaviors[0] (config.json) uses response headers policy 'headers-1', whose "
                "securityHeadersConfig.strictTransportSecurity"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.rule.name}: {c.label}" for c in CASES])
def test_rule(case: Case) -> None:
    found = violations(case.rule, case.args())
    assert bool(found) is case.violates, found
    assert not case.expect or any(case.expect in message for message in found), found


def test_every_rule_has_a_passing_and_a_violating_case() -> None:
    names = [rule.name for rule in ALL_RULES]
    assert len(set(names)) == len(names)
    for rule in ALL_RULES:
        outcomes = {c.violates for c in CASES if c.rule is rule}
        assert outcomes == {True, False}, rule.name
    assert {c.rule.name for c in CASES} == set(names)


def test_kinds_of_rules() -> None:
    stack_rules = {rule.name for rule in ALL_RULES if isinstance(rule, pulumi_policy.StackValidationPolicy)}
    assert stack_rules == {"s3-encryption-at-rest", "s3-public-access-blocked", "cloudfront-security-headers"}
    assert all(isinstance(rule, pulumi_policy.ResourceValidationPolicy | pulumi_policy.StackValidationPolicy)
               for rule in ALL_RULES)


# --- Prod-ness ----------------------------------------------------------------------------------------------

def test_stack_comes_from_policy_config_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules.pulumi, "get_stack", lambda: "dev")
    assert rules.stack_name(resource_args(TABLE, {}, config=PROD)) == "prod"
    assert rules.is_prod(resource_args(TABLE, {}, config={"stack": "acme/ai-gateway/prod"}))
    assert not rules.is_prod(resource_args(TABLE, {}, config={"stack": "production-like-dev"}))


@pytest.mark.parametrize(("running", "violates"), [("prod", True), ("dev", False)])
def test_stack_falls_back_to_the_running_stack(monkeypatch: pytest.MonkeyPatch, running: str, violates: bool) -> None:
    # Under `pulumi preview --policy-pack`, pulumi-policy configures pulumi.runtime from PULUMI_STACK.
    monkeypatch.setattr(rules.pulumi, "get_stack", lambda: running)
    assert bool(violations(rules.dynamodb_pitr, resource_args(TABLE, {}))) is violates


# --- Preview-time unknowns and shapes -----------------------------------------------------------------------

def test_unknown_policy_document_is_left_to_pulumi_policy_not_reported() -> None:
    # pulumi-policy turns UnknownValueError into an advisory "can't run during preview"; `up` re-checks.
    args = resource_args(ROLE_POLICY, {"policy": UNKNOWN_STRING_VALUE})
    with pytest.raises(UnknownValueError):
        violations(rules.iam_least_privilege, args)


def test_bucket_pairs_by_property_dependency_when_its_id_is_unknown() -> None:
    bucket = policy_resource(BUCKET, "b", {"bucket": UNKNOWN_STRING_VALUE})
    deps = {"bucket": [bucket]}
    sse = policy_resource(SSE, "b-sse", {"bucket": UNKNOWN_STRING_VALUE, "rules": AES}, property_dependencies=deps)
    pab = policy_resource(PAB, "b-pab", {"bucket": UNKNOWN_STRING_VALUE, **ALL_FLAGS}, property_dependencies=deps)
    args = stack_args([bucket, sse, pab])
    assert violations(rules.s3_encryption, args) == []
    assert violations(rules.s3_public_access, args) == []
    assert len(violations(rules.s3_public_access, stack_args([bucket, sse]))) == 1


def test_cloudfront_rules_wait_for_ids_known_only_after_create() -> None:
    # In preview the OAC's id is unknown: set, not missing.
    props = distribution({"originId": "s3", "domainName": UNKNOWN_STRING_VALUE,
                          "originAccessControlId": UNKNOWN_STRING_VALUE},
                         default=behavior(headers=UNKNOWN_STRING_VALUE))
    args = resource_args(CF, props)
    assert violations(rules.cloudfront_s3_origin_access_control, args) == []
    unsigned = resource_args(CF, distribution({"originId": "s3", "domainName": UNKNOWN_STRING_VALUE}))
    with pytest.raises(UnknownValueError):  # an unknown domain without an OAC: left to `up`
        violations(rules.cloudfront_s3_origin_access_control, unsigned)


def test_modern_tls_reports_each_problem_and_names_the_distribution() -> None:
    found = violations(rules.cloudfront_modern_tls, resource_args(CF, acm("vip", "TLSv1.2_2018"), name="web-dist"))
    assert len(found) == 2, found
    assert all(m.startswith(f"{CF} 'web-dist': viewerCertificate.") for m in found)
    assert "got 'vip'" in found[0] and "got 'TLSv1.2_2018'" in found[1]
    assert all(v in found[1] for v in rules.MODERN_TLS_POLICIES)  # the message lists what would pass


def test_modern_tls_counts_a_certificate_not_known_yet_as_one() -> None:
    # In preview a certificate made by the same program has no ARN yet: it is still a custom certificate.
    pending = certificate(acmCertificateArn=UNKNOWN_STRING_VALUE, sslSupportMethod="sni-only",
                          minimumProtocolVersion="TLSv1.2_2021")
    assert violations(rules.cloudfront_modern_tls, resource_args(CF, pending)) == []
    old = {**pending, "viewerCertificate": {**pending["viewerCertificate"], "minimumProtocolVersion": "TLSv1"}}
    [message] = violations(rules.cloudfront_modern_tls, resource_args(CF, old))
    assert "got 'TLSv1'" in message
    unknown_version = {**pending, "viewerCertificate": {**pending["viewerCertificate"],
                                                        "minimumProtocolVersion": UNKNOWN_STRING_VALUE}}
    with pytest.raises(UnknownValueError):  # left to `up`, as pulumi-policy does with every unknown it meets
        violations(rules.cloudfront_modern_tls, resource_args(CF, unknown_version))


def _preview_page(policy: Any, deps: tuple[str, ...] = ("defaultCacheBehavior", "orderedCacheBehaviors")) -> Any:
    """A distribution whose behaviors' policy ids are unknown (preview), depending on `policy` through `deps`."""
    props = distribution(default=behavior(headers=UNKNOWN_STRING_VALUE),
                         ordered=[behavior(headers=UNKNOWN_STRING_VALUE, pathPattern="config.json")])
    page = policy_resource(CF, "page", props, property_dependencies={d: [policy] for d in deps})
    return stack_args([page, policy])


def test_security_headers_in_preview_pair_by_dependency_and_check_what_is_known() -> None:
    # In preview the headers policy's id is unknown, and so is its CSP (built from the API's endpoints): the
    # behaviors are tied to it by the dependencies Pulumi records; what is known of it is checked, the rest by `up`.
    csp_unknown = {**CSP, "contentSecurityPolicy": UNKNOWN_STRING_VALUE}
    policy = policy_resource(RHP, "page-headers", headers_policy(UNKNOWN_STRING_VALUE,
                                                                 contentSecurityPolicy=csp_unknown))
    assert violations(rules.cloudfront_security_headers, _preview_page(policy)) == []
    opaque = policy_resource(RHP, "page-headers", {"id": UNKNOWN_STRING_VALUE,
                                                   "securityHeadersConfig": UNKNOWN_STRING_VALUE})
    assert violations(rules.cloudfront_security_headers, _preview_page(opaque)) == []
    # An unknown id with no dependency on a policy of the stack is not known to be one: a violation, as an
    # unpaired bucket is for the S3 rules (it could be an AWS-managed policy looked up at run time).
    [message] = violations(rules.cloudfront_security_headers, _preview_page(policy, deps=("defaultCacheBehavior",)))
    assert "orderedCacheBehaviors[0] (config.json)" in message and "not known yet" in message
    # What is known of the policy is checked: no HSTS is a violation for each behavior using it.
    weak = policy_resource(RHP, "page-headers", headers_policy(UNKNOWN_STRING_VALUE, strictTransportSecurity=None))
    found = violations(rules.cloudfront_security_headers, _preview_page(weak))
    assert len(found) == 2 and all("strictTransportSecurity" in m and "'page-headers'" in m for m in found)


def test_security_headers_match_known_ids_by_value_not_by_dependency() -> None:
    # Once ids are known, a dependency on a good policy does not vouch for a behavior naming another id.
    good = policy_resource(RHP, "page-headers", headers_policy())
    props = distribution(ordered=[behavior(headers=MANAGED_SIMPLE_CORS, pathPattern="api/*")])
    page = policy_resource(CF, "page", props, property_dependencies={"defaultCacheBehavior": [good],
                                                                     "orderedCacheBehaviors": [good]})
    [message] = violations(rules.cloudfront_security_headers, stack_args([page, good]))
    assert "orderedCacheBehaviors[0] (api/*)" in message and MANAGED_SIMPLE_CORS in message
    assert "not a response headers policy declared in this stack" in message


def test_security_headers_messages_name_the_distribution_behavior_policy_and_fix() -> None:
    props = distribution(ordered=[behavior(headers="weak-id", pathPattern="config.json")])
    weak = headers_policy("weak-id", contentSecurityPolicy=None, contentTypeOptions=None)
    found = violations(rules.cloudfront_security_headers, page(props, headers_policy(), weak)())
    assert len(found) == 2, found
    assert all(m.startswith("CloudFront distribution 'page': orderedCacheBehaviors[0] (config.json) uses response "
                            "headers policy 'headers-1'") for m in found)
    assert any("contentSecurityPolicy" in m for m in found) and any("contentTypeOptions" in m for m in found)


def test_violation_messages_name_the_resource_and_the_fix() -> None:
    [message] = violations(rules.log_retention, resource_args(LOGS, {}, name="api-logs"))
    assert "api-logs" in message and "retentionInDays" in message
    found = violations(rules.iam_least_privilege, resource_args(ROLE_POLICY, {"policy": doc(allow("s3:*", "*"))}))
    assert any("s3:*" in m for m in found) and any('Resource "*"' in m for m in found)


def test_from_recorded_uses_mocked_outputs_so_buckets_pair_with_their_blocks() -> None:
    @dataclass
    class Recorded:  # the shape aigw.mocks records
        type: str
        name: str
        inputs: dict[str, Any]
        outputs: dict[str, Any]

    records = [Recorded(BUCKET, "b", {}, {"id": "b-id", "arn": "arn:aws:s3:::b"}),
               Recorded(PAB, "b-pab", {"bucket": "b-id", **ALL_FLAGS}, {"bucket": "b-id", **ALL_FLAGS, "id": "p"})]
    assert violations(rules.s3_public_access, stack_args(rules.from_recorded(records))) == []


def test_star_resource_allow_list_is_only_actions_without_resource_level_permissions() -> None:
    from parliament import iam_definition

    privileges = {f"{svc['prefix']}:{p['privilege']}".lower(): p["resource_types"]
                  for svc in iam_definition for p in svc["privileges"]}
    for action in rules.STAR_RESOURCE_ACTIONS:
        assert action in privileges, action
        assert {t["resource_type"] for t in privileges[action]} == {""}, action


# --- The pack entry point -------------------------------------------------------------------------------------

def test_main_constructs_one_policy_pack_with_all_rules_ast() -> None:
    source = (ROOT / "policy" / "__main__.py").read_text()
    calls = [n for n in ast.walk(ast.parse(source))
             if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "PolicyPack"]
    assert len(calls) == 1
    policies = {k.arg: k.value for k in calls[0].keywords}["policies"]
    assert "ALL_RULES" in ast.unparse(policies)
    for path in (ROOT / "policy").glob("*.py"):  # nowhere else
        assert path.name == "__main__.py" or "PolicyPack(" not in path.read_text(), path


def test_main_passes_every_rule_to_policy_pack(monkeypatch: pytest.MonkeyPatch) -> None:
    constructed: list[dict[str, Any]] = []
    monkeypatch.setattr(pulumi_policy, "PolicyPack", lambda **kwargs: constructed.append(kwargs))
    # As the analyzer runs it: the pack directory, as __main__.
    runpy.run_path(str(ROOT / "policy"), run_name="__main__")
    [pack] = constructed
    assert [p.name for p in pack["policies"]] == [p.name for p in ALL_RULES]
    assert pack["policies"] == ALL_RULES  # the very objects from policy.rules, not a second copy
    assert pack["enforcement_level"] is pulumi_policy.EnforcementLevel.MANDATORY


def test_pack_metadata() -> None:
    import yaml

    meta = yaml.safe_load((ROOT / "policy" / "PulumiPolicy.yaml").read_text())
    runtime = meta["runtime"]
    assert (runtime if isinstance(runtime, str) else runtime["name"]) == "python"
    assert meta["description"]
    requirements = (ROOT / "policy" / "requirements.txt").read_text()
    assert any(line.startswith("pulumi-policy>=") and ",<" in line for line in requirements.splitlines())
