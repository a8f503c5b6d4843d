"""The policy pack over what the real program creates for each stack: clean as is, and it bites when broken."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from aigw.mocks import Recorded
from policy.rules import evaluate
from tests.infra.test_program import CERTIFICATE_ARN, STACKS, program, program_with_domain


def violations(stack: str, resources: list[Recorded]) -> list[tuple[str, str, str]]:
    return evaluate(stack, resources)


@pytest.mark.parametrize("stack", STACKS)
def test_the_program_passes_every_rule(stack: str) -> None:
    assert violations(stack, program(stack).resources) == []


# Resource rules read a resource's inputs, stack rules its outputs (`from_recorded`), which the mocks echo from
# the inputs: a break is made in both, as a real program change would.


def mutate(resources: list[Recorded], type_: str, **inputs: Any) -> list[Recorded]:
    return [dataclasses.replace(r, inputs={**r.inputs, **inputs}, outputs={**r.outputs, **inputs})
            if r.type == type_ else r for r in resources]


@pytest.mark.parametrize(
    ("type_", "inputs", "rule"),
    [
        ("aws:dynamodb/table:Table", {"deletionProtectionEnabled": False}, "dynamodb-deletion-protection-prod"),
        ("aws:dynamodb/table:Table", {"pointInTimeRecovery": {"enabled": False}}, "dynamodb-pitr-prod"),
        ("aws:lambda/function:Function", {"architectures": ["x86_64"]}, "lambda-arm64"),
        ("aws:lambda/function:Function", {"reservedConcurrentExecutions": 0}, "lambda-reserved-concurrency-prod"),
        ("aws:cognito/userPool:UserPool", {"mfaConfiguration": "OFF"}, "cognito-mfa-prod"),
        ("aws:cloudwatch/logGroup:LogGroup", {"retentionInDays": None}, "cloudwatch-log-retention"),
        ("aws:iam/rolePolicy:RolePolicy",
         {"policy": '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'},
         "iam-no-wildcards"),
    ],
)
def test_breaking_the_prod_program_is_caught(type_: str, inputs: dict[str, Any], rule: str) -> None:
    broken = mutate(program("prod").resources, type_, **inputs)
    assert rule in {name for name, _, _ in violations("prod", broken)}


def mutate_nested(resources: list[Recorded], type_: str, change: Any) -> list[Recorded]:
    return [dataclasses.replace(r, inputs=change(copy.deepcopy(r.inputs)), outputs=change(copy.deepcopy(r.outputs)))
            if r.type == type_ else r for r in resources]


DISTRIBUTION = "aws:cloudfront/distribution:Distribution"
HEADERS_POLICY = "aws:cloudfront/responseHeadersPolicy:ResponseHeadersPolicy"
MANAGED_SIMPLE_CORS = "60669652-455b-4ae9-85a4-c4c02393f86c"  # an AWS-managed policy: no CSP, no HSTS


def _allow_http(inputs: dict[str, Any]) -> dict[str, Any]:
    inputs["orderedCacheBehaviors"][0]["viewerProtocolPolicy"] = "allow-all"
    return inputs


def _unsigned_origin(inputs: dict[str, Any]) -> dict[str, Any]:
    inputs["origins"][0].pop("originAccessControlId")
    return inputs


def _legacy_oai(inputs: dict[str, Any]) -> dict[str, Any]:
    inputs["origins"][0]["s3OriginConfig"] = {"originAccessIdentity": "origin-access-identity/cloudfront/E1EXAMPLE"}
    return inputs


def _no_headers(inputs: dict[str, Any]) -> dict[str, Any]:
    inputs["defaultCacheBehavior"].pop("responseHeadersPolicyId")
    return inputs


def _config_json_without_headers(inputs: dict[str, Any]) -> dict[str, Any]:
    inputs["orderedCacheBehaviors"][0].pop("responseHeadersPolicyId")
    return inputs


def _managed_headers(inputs: dict[str, Any]) -> dict[str, Any]:
    inputs["defaultCacheBehavior"]["responseHeadersPolicyId"] = MANAGED_SIMPLE_CORS
    return inputs


def _no_csp(inputs: dict[str, Any]) -> dict[str, Any]:
    inputs["securityHeadersConfig"].pop("contentSecurityPolicy")
    return inputs


def _no_hsts(inputs: dict[str, Any]) -> dict[str, Any]:
    inputs["securityHeadersConfig"].pop("strictTransportSecurity")
    return inputs


def _hsts_not_overriding(inputs: dict[str, Any]) -> dict[str, Any]:
    inputs["securityHeadersConfig"]["strictTransportSecurity"]["override"] = False
    return inputs


def _no_nosniff(inputs: dict[str, Any]) -> dict[str, Any]:
    inputs["securityHeadersConfig"].pop("contentTypeOptions")
    return inputs


@pytest.mark.parametrize(
    ("type_", "change", "rule"),
    [
        (DISTRIBUTION, _allow_http, "cloudfront-https-only"),
        (DISTRIBUTION, _unsigned_origin, "cloudfront-s3-origin-access-control"),
        (DISTRIBUTION, _legacy_oai, "cloudfront-s3-origin-access-control"),
        (DISTRIBUTION, _no_headers, "cloudfront-security-headers"),
        (DISTRIBUTION, _config_json_without_headers, "cloudfront-security-headers"),
        (DISTRIBUTION, _managed_headers, "cloudfront-security-headers"),
        (HEADERS_POLICY, _no_csp, "cloudfront-security-headers"),
        (HEADERS_POLICY, _no_hsts, "cloudfront-security-headers"),
        (HEADERS_POLICY, _hsts_not_overriding, "cloudfront-security-headers"),
        (HEADERS_POLICY, _no_nosniff, "cloudfront-security-headers"),
    ],
    ids=["http-allowed", "no-oac", "legacy-oai", "no-headers-policy", "config-json-without-headers-policy",
         "managed-headers-policy", "policy-without-csp", "policy-without-hsts", "hsts-not-overriding",
         "policy-without-nosniff"],
)
def test_breaking_the_dev_web_page_is_caught(type_: str, change: Any, rule: str) -> None:
    resources = program("dev").resources
    assert any(r.type == type_ for r in resources)
    broken = mutate_nested(resources, type_, change)
    assert rule in {name for name, _, _ in violations("dev", broken)}


def test_the_dev_page_needs_its_headers_policy_in_the_stack() -> None:
    # The distribution still names the policy's id, but no such policy is declared: nothing vouches for its headers.
    resources = [r for r in program("dev").resources if r.type != HEADERS_POLICY]
    found = [message for name, _, message in violations("dev", resources) if name == "cloudfront-security-headers"]
    assert len(found) == 2, found  # the default behavior and config.json's
    assert all("not a response headers policy declared in this stack" in m for m in found)


@pytest.mark.parametrize(
    ("type_", "rule"),
    [
        ("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "s3-public-access-blocked"),
        ("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
         "s3-encryption-at-rest"),
    ],
)
def test_the_web_bucket_needs_its_block_and_encryption(type_: str, rule: str) -> None:
    # Drop only the web bucket's own resource: the S3 rules must notice that one bucket.
    resources = [r for r in program("dev").resources if not (r.type == type_ and r.name.startswith("web-"))]
    found = [(name, where) for name, where, _ in violations("dev", resources) if name == rule]
    assert found and all("web-bucket" in where for _, where in found)


# --- The page on the team's own domain (`webApp.domainName` + `webApp.certificateArn`) ----------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_the_program_on_its_own_domain_passes_every_rule(stack: str) -> None:
    resources = program_with_domain(stack).resources
    [distribution] = [r for r in resources if r.type == DISTRIBUTION]
    assert distribution.inputs["viewerCertificate"]["acmCertificateArn"] == CERTIFICATE_ARN  # a custom certificate
    assert violations(stack, resources) == []


def _viewer(**changes: Any) -> Any:
    def change(inputs: dict[str, Any]) -> dict[str, Any]:
        for key, value in changes.items():
            if value is None:
                inputs["viewerCertificate"].pop(key)
            else:
                inputs["viewerCertificate"][key] = value
        return inputs

    return change


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_viewer(minimumProtocolVersion="TLSv1.2_2018"), "got 'TLSv1.2_2018'"),
        (_viewer(minimumProtocolVersion="TLSv1"), "got 'TLSv1'"),
        (_viewer(minimumProtocolVersion=None), "got unset (TLSv1)"),
        (_viewer(sslSupportMethod="vip"), "sslSupportMethod must be 'sni-only'"),
    ],
    ids=["tls-1.2-2018", "tls-1.0", "protocol-unset", "dedicated-ip"],
)
def test_old_tls_on_the_own_domain_is_caught(change: Any, expected: str) -> None:
    broken = mutate_nested(program_with_domain("dev").resources, DISTRIBUTION, change)
    found = [(name, message) for name, _, message in violations("dev", broken)]
    assert [name for name, _ in found] == ["cloudfront-modern-tls"], found  # that rule, and only it
    assert expected in found[0][1]


def test_the_default_certificate_is_not_judged_by_its_protocol_version() -> None:
    # Without a domain CloudFront fixes the *.cloudfront.net certificate's protocol: nothing to choose or check.
    resources = program("dev").resources
    [distribution] = [r for r in resources if r.type == DISTRIBUTION]
    assert distribution.inputs["viewerCertificate"] == {"cloudfrontDefaultCertificate": True}
    broken = mutate_nested(resources, DISTRIBUTION, lambda i: {**i, "viewerCertificate": {
        "cloudfrontDefaultCertificate": True, "minimumProtocolVersion": "TLSv1"}})
    assert violations("dev", broken) == []
