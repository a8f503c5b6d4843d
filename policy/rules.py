"""The guardrails, as plain `pulumi_policy` policy objects (`ALL_RULES`) — importable without starting a server.

Every rule is a module-level `validate(args, report_violation)` function wrapped in a
`ResourceValidationPolicy` or `StackValidationPolicy`. They read what Pulumi sends the analyzer: `args.props`
are the resource's inputs with camelCase keys (`serverSideEncryption`, `retentionInDays`, ...), exactly the
shape `aigw.mocks` records, wrapped by pulumi-policy in read-only `Mapping`/`Sequence` proxies (so nothing here
assumes `dict`/`list`). During `pulumi preview` an input that depends on another resource's output is unknown;
reading it raises `UnknownValueError`, which pulumi-policy turns into an advisory "can't run during preview"
note — `pulumi up` runs the same rules with known values (CI runs the pack on both).

Prod-only rules (PITR, deletion protection, Lambda reserved concurrency, Cognito MFA) decide "is this prod?"
with `stack_name(args)`: the policy config key `stack` when one is given (`--policy-pack-config`, tests), else
`pulumi.get_stack()`. The second works under `pulumi preview/up --policy-pack` because the CLI starts the
analyzer with `PULUMI_STACK` set and pulumi-policy configures `pulumi.runtime` from it before every
validation; it does *not* work in a unit test, where `pulumi.get_stack()` is whatever the last
`set_mocks` left behind (or the placeholder "stack") — so tests always pass `{"stack": ...}` explicitly.

Log groups: `retentionInDays` is required everywhere. CloudWatch Logs always encrypts log data at rest with
AWS-managed keys, so a KMS key is required only when the `cloudwatch-log-group-kms` policy is configured with
`{"requireKms": true}`; a `kmsKeyId` that is set must be a KMS key ARN (the only form CloudWatch Logs accepts).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pulumi
from pulumi_policy import (
    PolicyConfigSchema,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError, unknown_checking_proxy

# --- Resource types (pulumi-aws 7.x tokens; the deprecated V2 aliases are checked the same way) -------------

DYNAMODB_TABLE = "aws:dynamodb/table:Table"
S3_BUCKETS = frozenset({"aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2"})
S3_SSE_CONFIGS = frozenset({
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
    "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2",
})
S3_PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
S3_ACCOUNT_PUBLIC_ACCESS_BLOCK = "aws:s3/accountPublicAccessBlock:AccountPublicAccessBlock"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
FIREHOSE = "aws:kinesis/firehoseDeliveryStream:FirehoseDeliveryStream"
LAMBDA_FUNCTION = "aws:lambda/function:Function"
USER_POOL = "aws:cognito/userPool:UserPool"
IAM_POLICY_DOCUMENTS = frozenset({  # resources whose `policy` input is an identity-based policy document
    "aws:iam/rolePolicy:RolePolicy",
    "aws:iam/policy:Policy",
    "aws:iam/userPolicy:UserPolicy",
    "aws:iam/groupPolicy:GroupPolicy",
})
IAM_ROLE = "aws:iam/role:Role"  # its `inlinePolicies[].policy` are checked too (not `assumeRolePolicy`)
CLOUDFRONT_DISTRIBUTION = "aws:cloudfront/distribution:Distribution"
RESPONSE_HEADERS_POLICY = "aws:cloudfront/responseHeadersPolicy:ResponseHeadersPolicy"

PROD_STACKS = frozenset({"prod"})
PUBLIC_ACCESS_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
S3_SSE_ALGORITHMS = frozenset({"AES256", "aws:kms", "aws:kms:dsse"})

# Actions AWS only authorises against `Resource: "*"` (no resource-level permissions in the Service
# Authorization Reference; tests/policy check each against parliament's copy of it). Only what this gateway's
# functions need: X-Ray tracing from Lambda (`tracing_config`, Powertools Tracer — the same four actions as the
# AWS-managed AWSXRayDaemonWriteAccess policy) and custom CloudWatch metrics. Scope PutMetricData with a
# `cloudwatch:namespace` condition. Add an action here only with the same justification.
HTTPS_VIEWER_POLICIES = frozenset({"redirect-to-https", "https-only"})
# CloudFront security policies (ViewerCertificate.MinimumProtocolVersion) of TLS 1.2 or later with forward-secret
# ciphers only: TLSv1.2_2019 dropped 2018's CBC-SHA ones, 2021 keeps only AEAD (GCM, ChaCha20), 2025 tightens
# further and TLSv1.3_2025 is TLS 1.3 alone. SSLv3, TLSv1, TLSv1_2016, TLSv1.1_2016 and TLSv1.2_2018 are not.
# tests/infra/test_aws_names.py sorts every value of botocore's enum into this set or the legacy one, so a policy
# AWS adds later is a test failure to decide on, not silently refused or accepted.
MODERN_TLS_POLICIES = frozenset({"TLSv1.2_2019", "TLSv1.2_2021", "TLSv1.2_2025", "TLSv1.3_2025"})
SNI_ONLY = "sni-only"
# S3 origin domains: the REST endpoint (`b.s3.amazonaws.com`, `b.s3.<region>.amazonaws.com`, legacy
# `b.s3-<region>.amazonaws.com`, dual-stack) and the website endpoint (`b.s3-website-<region>...` or
# `b.s3-website.<region>...`), which serves a *public* bucket over plain HTTP and cannot use origin access control.
_S3_WEBSITE_DOMAIN = re.compile(r"\.s3-website[.-][a-z0-9-]+\.amazonaws\.com(\.cn)?$", re.IGNORECASE)
_S3_REST_DOMAIN = re.compile(r"\.s3([.-][a-z0-9-]+)*\.amazonaws\.com(\.cn)?$", re.IGNORECASE)

STAR_RESOURCE_ACTIONS = frozenset(a.lower() for a in (
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    "cloudwatch:PutMetricData",
))

STACK_CONFIG = PolicyConfigSchema(properties={
    "stack": {"type": "string", "description": "Stack name to judge prod-ness by; defaults to the running stack."},
})

RESERVED_CONCURRENCY_CONFIG = PolicyConfigSchema(properties={
    **STACK_CONFIG.properties,
    "requireReservedConcurrency": {
        "type": "boolean", "default": False,
        "description": "Require every prod function to reserve concurrency (needs an account quota above 100 + total).",
    },
})

_UNKNOWN = object()  # a value that is not known yet (preview); see `_known`


# --- Helpers ----------------------------------------------------------------------------------------------

def stack_name(args: ResourceValidationArgs | StackValidationArgs) -> str:
    """The stack being checked: policy config `stack` if given, else the stack the CLI is running."""
    configured = (args.get_config() or {}).get("stack")
    return str(configured) if configured else pulumi.get_stack()


def is_prod(args: ResourceValidationArgs | StackValidationArgs) -> bool:
    return stack_name(args).rsplit("/", 1)[-1] in PROD_STACKS  # accept `org/project/prod` too


def _get(obj: Any, *path: str) -> Any:
    """`obj[path[0]][path[1]]...`, or None when a step is missing or not a mapping. Unknowns propagate."""
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _known(obj: Any, *path: str) -> Any:
    """Like `_get`, but an unknown (preview-time) value comes back as `_UNKNOWN` instead of raising."""
    try:
        return _get(obj, *path)
    except UnknownValueError:
        return _UNKNOWN


def _as_list(value: Any) -> list[Any]:
    """IAM-style "one or many": None -> [], a scalar or object -> [it], a sequence -> its items."""
    if value is None:
        return []
    if isinstance(value, str | Mapping) or not isinstance(value, Sequence):
        return [value]
    return list(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _report(args: ResourceValidationArgs, report_violation: ReportViolation, message: str) -> None:
    report_violation(f"{args.resource_type} '{args.name}': {message}", args.urn or None)


def _resource_policy(name: str, description: str, validate: Any, **kwargs: Any) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(name=name, description=description, validate=validate, **kwargs)


# --- Encryption at rest -----------------------------------------------------------------------------------

def validate_dynamodb_encryption(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != DYNAMODB_TABLE:
        return
    if _get(args.props, "serverSideEncryption", "enabled") is not True:
        _report(args, report_violation, "set serverSideEncryption.enabled = true (KMS encryption at rest)")


def validate_log_group_kms(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != LOG_GROUP:
        return
    key = _get(args.props, "kmsKeyId")
    if key is None or key == "":
        if (args.get_config() or {}).get("requireKms") is True:
            _report(args, report_violation, "kmsKeyId is required (policy config requireKms = true)")
        return
    if not (isinstance(key, str) and key.startswith("arn:") and ":kms:" in key):
        _report(args, report_violation, f"kmsKeyId must be a KMS key ARN, got {key!r}")


def validate_firehose_encryption(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != FIREHOSE:
        return
    if _get(args.props, "kinesisSourceConfiguration") is not None:
        return  # Firehose rejects SSE on stream-sourced delivery streams; the source stream's encryption applies
    sse = _get(args.props, "serverSideEncryption")
    if _get(sse, "enabled") is not True:
        _report(args, report_violation, "set serverSideEncryption.enabled = true")
    elif _get(sse, "keyType") == "CUSTOMER_MANAGED_CMK" and not _get(sse, "keyArn"):
        _report(args, report_violation, "serverSideEncryption.keyType CUSTOMER_MANAGED_CMK needs keyArn")


def _bucket_level_sse(props: Any) -> Any:
    """True/False for a bucket's own encryption config, `_UNKNOWN` if it can't be read yet. Handles the v7
    `serverSideEncryptionConfiguration: {rule: {...}}` and the v6 `serverSideEncryptionConfigurations: [{rules}]`."""
    rules: list[Any] = []
    for key in ("serverSideEncryptionConfiguration", "serverSideEncryptionConfigurations"):
        for config in _as_list(_known(props, key)):
            if config is _UNKNOWN:
                return _UNKNOWN
            rules += _as_list(_known(config, "rule")) + _as_list(_known(config, "rules"))
    return _sse_rules_ok(rules)


def _sse_rules_ok(rules: Any) -> Any:
    if rules is _UNKNOWN:
        return _UNKNOWN
    algorithms = [_known(rule, "applyServerSideEncryptionByDefault", "sseAlgorithm") for rule in _as_list(rules)]
    if _UNKNOWN in algorithms:
        return _UNKNOWN
    return bool(algorithms) and any(a in S3_SSE_ALGORITHMS for a in algorithms)


def _targets(resource: PolicyResource, bucket: PolicyResource) -> bool:
    """Does a bucket-scoped resource (SSE config, public access block) point at `bucket`? By the dependency
    Pulumi recorded for its `bucket` input (works in preview, when the id is unknown), else by value."""
    deps = (resource.property_dependencies or {}).get("bucket") or []
    if any(dep.urn == bucket.urn for dep in deps):
        return True
    target = _known(resource.props, "bucket")
    identities = {_known(bucket.props, "bucket"), _known(bucket.props, "id")}
    return isinstance(target, str) and target in identities


def validate_s3_encryption(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    configs = [r for r in args.resources if r.resource_type in S3_SSE_CONFIGS]
    for config in configs:
        if _sse_rules_ok(_known(config.props, "rules")) is False:
            report_violation(f"S3 encryption config '{config.name}': needs a rule with applyServerSideEncryption"
                             f"ByDefault.sseAlgorithm in {sorted(S3_SSE_ALGORITHMS)}", config.urn)
    for bucket in (r for r in args.resources if r.resource_type in S3_BUCKETS):
        if _bucket_level_sse(bucket.props) is not False:
            continue  # encrypted by its own config (or not knowable until `up`)
        if not any(_targets(c, bucket) for c in configs):
            report_violation(f"S3 bucket '{bucket.name}': no server-side encryption configuration (add an "
                             "aws.s3.BucketServerSideEncryptionConfiguration for it)", bucket.urn)


# --- Durability and protection in prod --------------------------------------------------------------------

def validate_dynamodb_pitr(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != DYNAMODB_TABLE or not is_prod(args):
        return
    if _get(args.props, "pointInTimeRecovery", "enabled") is not True:
        _report(args, report_violation, "prod tables need pointInTimeRecovery.enabled = true")


def validate_dynamodb_deletion_protection(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != DYNAMODB_TABLE or not is_prod(args):
        return
    if _get(args.props, "deletionProtectionEnabled") is not True:
        _report(args, report_violation, "prod tables need deletionProtectionEnabled = true")


# --- Logs -------------------------------------------------------------------------------------------------

def validate_log_retention(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != LOG_GROUP:
        return
    days = _get(args.props, "retentionInDays")
    if not (_is_number(days) and days > 0):
        _report(args, report_violation, f"set retentionInDays (> 0; unset or 0 keeps logs forever), got {days!r}")


# --- S3 public access -------------------------------------------------------------------------------------

def _flags_off(resource: PolicyResource) -> list[str]:
    """Public-access flags not set to true (unknown flags are left to `up`, when they are known)."""
    return [f for f in PUBLIC_ACCESS_FLAGS if _known(resource.props, f) not in (True, _UNKNOWN)]


def validate_s3_public_access(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    blocks = [r for r in args.resources if r.resource_type == S3_PUBLIC_ACCESS_BLOCK]
    account_blocks = [r for r in args.resources if r.resource_type == S3_ACCOUNT_PUBLIC_ACCESS_BLOCK]
    for block in blocks + account_blocks:
        if off := _flags_off(block):
            report_violation(f"public access block '{block.name}': set {', '.join(off)} to true", block.urn)
    if any(not _flags_off(a) for a in account_blocks):
        return  # the account-wide block covers every bucket
    for bucket in (r for r in args.resources if r.resource_type in S3_BUCKETS):
        if not any(_targets(b, bucket) for b in blocks):
            report_violation(f"S3 bucket '{bucket.name}': no aws.s3.BucketPublicAccessBlock with all four flags "
                             "true", bucket.urn)


# --- IAM --------------------------------------------------------------------------------------------------

def _load_policy_document(raw: Any) -> tuple[list[Mapping[str, Any]], str | None]:
    """(statements, None) or ([], why it is not a usable policy document). JSON text or an object."""
    if isinstance(raw, str):
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as e:
            return [], f"policy is not valid JSON ({e})"
    else:
        doc = raw
    if not isinstance(doc, Mapping):
        return [], f"policy document must be a JSON object, got {type(doc).__name__}"
    statements = doc.get("Statement")
    if isinstance(statements, Mapping):
        statements = [statements]
    if isinstance(statements, str) or not isinstance(statements, Sequence) or not statements:
        return [], "policy document has no Statement list"
    if not all(isinstance(s, Mapping) for s in statements):
        return [], "every Statement must be an object"
    return list(statements), None


def policy_document_problems(raw: Any) -> list[str]:
    """Everything wrong with an identity-based policy document, as messages; [] when it passes."""
    statements, error = _load_policy_document(raw)
    if error:
        return [error]
    problems = []
    for i, s in enumerate(statements):
        where = f"Statement[{i}]" + (f" ({s['Sid']})" if isinstance(s.get("Sid"), str) else "")
        effect = s.get("Effect")
        if effect not in ("Allow", "Deny"):
            problems.append(f"{where}: Effect must be Allow or Deny, got {effect!r}")
            continue
        if effect == "Deny":
            continue  # wildcards only narrow what a Deny removes
        if "NotAction" in s:
            problems.append(f"{where}: Allow with NotAction grants every other action")
        if "NotResource" in s:
            problems.append(f"{where}: Allow with NotResource grants every other resource")
        actions = _as_list(s.get("Action"))
        if not all(isinstance(a, str) for a in actions):
            problems.append(f"{where}: Action entries must be strings")
            continue
        if wild := [a for a in actions if a == "*" or a.endswith(":*")]:
            problems.append(f"{where}: wildcard actions {wild}; list the actions needed")
        resources = _as_list(s.get("Resource"))
        if "*" in resources:
            if not actions:
                problems.append(f"{where}: Resource \"*\"")
            elif broad := [a for a in actions if a.lower() not in STAR_RESOURCE_ACTIONS]:
                problems.append(f"{where}: Resource \"*\" for {broad}; scope to ARNs (only "
                                f"{sorted(STAR_RESOURCE_ACTIONS)} may use \"*\")")
        elif not resources and "NotResource" not in s:
            problems.append(f"{where}: no Resource")
    return problems


def validate_iam_least_privilege(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type in IAM_POLICY_DOCUMENTS:
        documents = [("policy", _get(args.props, "policy"))]
    elif args.resource_type == IAM_ROLE:
        documents = [(f"inlinePolicies[{i}]", _get(p, "policy"))
                     for i, p in enumerate(_as_list(_get(args.props, "inlinePolicies")))]
    else:
        return
    for where, raw in documents:
        for problem in policy_document_problems(raw):
            _report(args, report_violation, f"{where}: {problem}")


# --- Lambda -----------------------------------------------------------------------------------------------

def validate_lambda_arm64(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != LAMBDA_FUNCTION:
        return
    architectures = _as_list(_get(args.props, "architectures"))
    if architectures != ["arm64"]:
        _report(args, report_violation, f"architectures must be [\"arm64\"] (unset means x86_64), got {architectures}")


def validate_lambda_reserved_concurrency(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Prod: a reservation of 0 throttles every invoke; with `requireReservedConcurrency` every function reserves.

    Unset is the default: Lambda keeps at least 100 executions unreserved, so an account at the new-account quota
    (10) cannot reserve at all and `pulumi up` would fail there. `aigw doctor` checks a stack's total against the
    account. Teams whose quota allows it turn the requirement on in the pack's config.
    """
    if args.resource_type != LAMBDA_FUNCTION or not is_prod(args):
        return
    reserved = _get(args.props, "reservedConcurrentExecutions")
    if reserved is None or (_is_number(reserved) and reserved < 0):  # -1 is the provider's "unreserved"
        if (args.get_config() or {}).get("requireReservedConcurrency") is True:
            _report(args, report_violation, f"prod functions need reservedConcurrentExecutions > 0, got {reserved!r}")
        return
    if not (_is_number(reserved) and reserved > 0):
        _report(args, report_violation, f"reservedConcurrentExecutions {reserved!r} throttles every invocation")


# --- Cognito ----------------------------------------------------------------------------------------------

def validate_cognito_mfa(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != USER_POOL or not is_prod(args):
        return
    mfa = _get(args.props, "mfaConfiguration")
    if mfa not in ("ON", "OPTIONAL"):
        _report(args, report_violation, f"mfaConfiguration must be ON or OPTIONAL in prod, got {mfa!r}")
    if _get(args.props, "softwareTokenMfaConfiguration", "enabled") is not True:
        _report(args, report_violation, "prod user pools need softwareTokenMfaConfiguration.enabled = true")


# --- CloudFront -------------------------------------------------------------------------------------------

def _cache_behaviors(props: Any) -> list[tuple[str, str, Any]]:
    """(input, where, behavior) for the default cache behavior and every ordered one; `input` is the
    distribution's top-level input it sits in (what Pulumi records property dependencies by)."""
    behaviors = [("defaultCacheBehavior", "defaultCacheBehavior", _get(props, "defaultCacheBehavior"))]
    for i, behavior in enumerate(_as_list(_get(props, "orderedCacheBehaviors"))):
        pattern = _known(behavior, "pathPattern")
        label = f" ({pattern})" if isinstance(pattern, str) else ""
        behaviors.append(("orderedCacheBehaviors", f"orderedCacheBehaviors[{i}]{label}", behavior))
    return behaviors


def validate_cloudfront_https_only(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != CLOUDFRONT_DISTRIBUTION:
        return
    for _, where, behavior in _cache_behaviors(args.props):
        policy = _get(behavior, "viewerProtocolPolicy")
        if policy not in HTTPS_VIEWER_POLICIES:
            _report(args, report_violation, f"{where}.viewerProtocolPolicy must be one of "
                                            f"{sorted(HTTPS_VIEWER_POLICIES)}, got {policy!r}")


def validate_cloudfront_s3_origin_access_control(args: ResourceValidationArgs,
                                                 report_violation: ReportViolation) -> None:
    if args.resource_type != CLOUDFRONT_DISTRIBUTION:
        return
    for i, origin in enumerate(_as_list(_get(args.props, "origins"))):
        where = f"origins[{i}]"
        oai = _known(origin, "s3OriginConfig", "originAccessIdentity")
        if oai is _UNKNOWN or (isinstance(oai, str) and oai):
            _report(args, report_violation, f"{where} uses a legacy origin access identity; use an origin access "
                                            "control (originAccessControlId) instead")
            continue
        oac = _known(origin, "originAccessControlId")
        domain = _known(origin, "domainName")
        if isinstance(domain, str) and _S3_WEBSITE_DOMAIN.search(domain):
            _report(args, report_violation, f"{where} is an S3 website endpoint ({domain}): that bucket must be "
                                            "public; use the bucket's REST endpoint with an origin access control")
            continue
        if oac is _UNKNOWN or (isinstance(oac, str) and oac):
            continue  # signed by an origin access control (its id is unknown until the OAC exists)
        if domain is _UNKNOWN:
            domain = _get(origin, "domainName")  # raises: pulumi-policy reports "can't run during preview"
        s3 = _get(origin, "s3OriginConfig") is not None or (isinstance(domain, str) and _S3_REST_DOMAIN.search(domain))
        if s3:
            _report(args, report_violation, f"{where} reads an S3 bucket without originAccessControlId: the bucket "
                                            "would have to be public")


def _set(value: Any) -> bool:
    """A certificate reference that is given: a non-empty string, or not known yet (preview)."""
    return value is _UNKNOWN or (isinstance(value, str) and value != "")


def validate_cloudfront_modern_tls(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """A distribution with its own certificate (ACM or IAM) must serve it with SNI and a modern security policy.

    With the default ``*.cloudfront.net`` certificate CloudFront fixes the protocol itself (and ignores
    minimumProtocolVersion), so there is nothing to choose and nothing to check. A certificate ARN that is not
    known yet (preview: a certificate of the same program) still counts as one."""
    if args.resource_type != CLOUDFRONT_DISTRIBUTION:
        return
    certificate = _get(args.props, "viewerCertificate")
    if not (_set(_known(certificate, "acmCertificateArn")) or _set(_known(certificate, "iamCertificateId"))):
        return
    method = _get(certificate, "sslSupportMethod")
    if method != SNI_ONLY:
        _report(args, report_violation, f"viewerCertificate.sslSupportMethod must be {SNI_ONLY!r} with a custom "
                                        f"certificate ('vip' and 'static-ip' are dedicated IPs for clients without "
                                        f"SNI, billed monthly), got {method!r}")
    version = _get(certificate, "minimumProtocolVersion")
    if version not in MODERN_TLS_POLICIES:
        shown = "unset (TLSv1)" if version is None else repr(version)  # the provider's default is TLSv1
        _report(args, report_violation, f"viewerCertificate.minimumProtocolVersion must be TLSv1.2_2019 or newer, "
                                        f"one of {sorted(MODERN_TLS_POLICIES)}, got {shown}")


def _headers_policy_problems(policy: PolicyResource) -> list[str]:
    """What a response headers policy lacks of Content-Security-Policy and Strict-Transport-Security (each
    overriding the origin's) and X-Content-Type-Options: nosniff. A value not known yet (preview: the CSP is built
    from other resources' outputs) is left to `up`, as the S3 rules leave their unknown settings."""
    config = _known(policy.props, "securityHeadersConfig")
    if config is _UNKNOWN:
        return []
    problems = []
    csp = _known(config, "contentSecurityPolicy")
    if csp is not _UNKNOWN:
        value, override = _known(csp, "contentSecurityPolicy"), _known(csp, "override")
        if not (value is _UNKNOWN or (isinstance(value, str) and value.strip())) or override not in (True, _UNKNOWN):
            problems.append("securityHeadersConfig.contentSecurityPolicy needs a contentSecurityPolicy and "
                            "override = true")
    hsts = _known(config, "strictTransportSecurity")
    if hsts is not _UNKNOWN:
        age, override = _known(hsts, "accessControlMaxAgeSec"), _known(hsts, "override")
        if not (age is _UNKNOWN or (_is_number(age) and age > 0)) or override not in (True, _UNKNOWN):
            problems.append("securityHeadersConfig.strictTransportSecurity needs accessControlMaxAgeSec > 0 and "
                            "override = true")
    nosniff = _known(config, "contentTypeOptions")
    if not (nosniff is _UNKNOWN or isinstance(nosniff, Mapping)):
        problems.append("securityHeadersConfig.contentTypeOptions is required (X-Content-Type-Options: nosniff)")
    return problems


def _uses(distribution: PolicyResource, prop: str, ref: Any, policy: PolicyResource) -> bool:
    """Does a cache behavior whose `responseHeadersPolicyId` is `ref` (in the distribution's input `prop`) use
    `policy`? By value when both ids are known; else (preview) by the dependency Pulumi recorded for `prop`. The
    dependency is per input, so in preview every policy `orderedCacheBehaviors` depends on counts as used by each
    ordered behavior (and each must pass)."""
    policy_id = _known(policy.props, "id")
    if ref is not _UNKNOWN and isinstance(policy_id, str) and policy_id:
        return policy_id == ref
    deps = (distribution.property_dependencies or {}).get(prop) or []
    return any(dep.urn == policy.urn for dep in deps)


def validate_cloudfront_security_headers(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    """Every cache behavior (default and ordered) of every distribution must use a response headers policy
    declared in this stack that passes `_headers_policy_problems`.

    A policy not declared here (an AWS-managed one, say, or one of another stack) cannot be checked and is a
    violation. So is an id that is unknown (preview) and does not come from a policy in this stack by a recorded
    dependency — the S3 rules' convention (`_targets`): a reference that cannot be tied to a resource of the stack
    counts as missing. A policy it is tied to is then checked as far as its values are known."""
    policies = [r for r in args.resources if r.resource_type == RESPONSE_HEADERS_POLICY]
    for distribution in (r for r in args.resources if r.resource_type == CLOUDFRONT_DISTRIBUTION):
        def report(message: str, distribution: PolicyResource = distribution) -> None:
            report_violation(f"CloudFront distribution '{distribution.name}': {message}", distribution.urn)

        for prop, where, behavior in _cache_behaviors(distribution.props):
            ref = _known(behavior, "responseHeadersPolicyId")
            if ref is not _UNKNOWN and not (isinstance(ref, str) and ref):
                report(f"{where}.responseHeadersPolicyId is required (a response headers policy of this stack "
                       "with CSP, HSTS and nosniff)")
                continue
            used = [p for p in policies if _uses(distribution, prop, ref, p)]
            if not used:
                shown = "not known yet" if ref is _UNKNOWN else repr(ref)
                report(f"{where}.responseHeadersPolicyId ({shown}) is not a response headers policy declared in "
                       "this stack (an AWS-managed or outside policy cannot be checked for CSP, HSTS and nosniff)")
            for policy in used:
                for problem in _headers_policy_problems(policy):
                    report(f"{where} uses response headers policy '{policy.name}', whose {problem}")


# --- The rules --------------------------------------------------------------------------------------------

dynamodb_encryption = _resource_policy(
    "dynamodb-encryption-at-rest", "DynamoDB tables must enable KMS server-side encryption.",
    validate_dynamodb_encryption)
s3_encryption = StackValidationPolicy(
    name="s3-encryption-at-rest",
    description="S3 buckets must have default encryption, on the bucket or by a BucketServerSideEncryption"
                "Configuration.",
    validate=validate_s3_encryption)
log_group_kms = _resource_policy(
    "cloudwatch-log-group-kms",
    "CloudWatch log group KMS keys must be key ARNs; a key is required when configured with requireKms.",
    validate_log_group_kms,
    config_schema=PolicyConfigSchema(properties={"requireKms": {"type": "boolean"}}))
firehose_encryption = _resource_policy(
    "firehose-encryption-at-rest", "Firehose delivery streams must enable server-side encryption.",
    validate_firehose_encryption)
dynamodb_pitr = _resource_policy(
    "dynamodb-pitr-prod", "DynamoDB tables in prod must enable point-in-time recovery.",
    validate_dynamodb_pitr, config_schema=STACK_CONFIG)
dynamodb_deletion_protection = _resource_policy(
    "dynamodb-deletion-protection-prod", "DynamoDB tables in prod must enable deletion protection.",
    validate_dynamodb_deletion_protection, config_schema=STACK_CONFIG)
log_retention = _resource_policy(
    "cloudwatch-log-retention", "CloudWatch log groups must set a retention period.", validate_log_retention)
s3_public_access = StackValidationPolicy(
    name="s3-public-access-blocked",
    description="Every S3 bucket must have a public access block with all four flags true.",
    validate=validate_s3_public_access)
iam_least_privilege = _resource_policy(
    "iam-no-wildcards",
    "IAM policies must not allow '*' or 'service:*' actions, nor Resource '*' outside the documented "
    "allow-list.",
    validate_iam_least_privilege)
lambda_arm64 = _resource_policy(
    "lambda-arm64", "Lambda functions must run on arm64 (Graviton).", validate_lambda_arm64)
lambda_reserved_concurrency = _resource_policy(
    "lambda-reserved-concurrency-prod",
    "Lambda functions in prod never reserve 0; with requireReservedConcurrency they must reserve (> 0).",
    validate_lambda_reserved_concurrency, config_schema=RESERVED_CONCURRENCY_CONFIG)
cognito_mfa = _resource_policy(
    "cognito-mfa-prod", "Cognito user pools in prod must offer or require TOTP (software token) MFA.",
    validate_cognito_mfa, config_schema=STACK_CONFIG)
cloudfront_https_only = _resource_policy(
    "cloudfront-https-only",
    "CloudFront cache behaviors must redirect viewers to HTTPS or accept HTTPS only.",
    validate_cloudfront_https_only)
cloudfront_s3_origin_access_control = _resource_policy(
    "cloudfront-s3-origin-access-control",
    "CloudFront S3 origins must use an origin access control (no legacy OAI, no public website endpoint).",
    validate_cloudfront_s3_origin_access_control)
cloudfront_modern_tls = _resource_policy(
    "cloudfront-modern-tls",
    "CloudFront distributions with a custom certificate must use SNI and a security policy of TLSv1.2_2019 or "
    "newer (the default *.cloudfront.net certificate passes: CloudFront fixes its protocol).",
    validate_cloudfront_modern_tls)
cloudfront_security_headers = StackValidationPolicy(
    name="cloudfront-security-headers",
    description="Every CloudFront cache behavior (default and ordered) must use a response headers policy of this "
                "stack that sends Content-Security-Policy and Strict-Transport-Security (overriding the origin's) "
                "and X-Content-Type-Options: nosniff.",
    validate=validate_cloudfront_security_headers)

ALL_RULES: list[ResourceValidationPolicy | StackValidationPolicy] = [
    dynamodb_encryption,
    s3_encryption,
    log_group_kms,
    firehose_encryption,
    dynamodb_pitr,
    dynamodb_deletion_protection,
    log_retention,
    s3_public_access,
    iam_least_privilege,
    lambda_arm64,
    lambda_reserved_concurrency,
    cognito_mfa,
    cloudfront_https_only,
    cloudfront_s3_origin_access_control,
    cloudfront_modern_tls,
    cloudfront_security_headers,
]


# --- Building args outside the analyzer (tests, and the program-level tests over `aigw.mocks` captures) ----

def _urn(resource_type: str, name: str) -> str:
    return f"urn:pulumi:test::ai-gateway::{resource_type}::{name}"


def _options() -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None)


def resource_args(resource_type: str, props: Mapping[str, Any], *, name: str = "resource",
                  config: Mapping[str, Any] | None = None) -> ResourceValidationArgs:
    """A real `ResourceValidationArgs`, with props wrapped the way the analyzer wraps them."""
    return ResourceValidationArgs(resource_type, unknown_checking_proxy(dict(props)), _urn(resource_type, name), name,
                                  _options(), None, dict(config) if config else None)


def policy_resource(resource_type: str, name: str, props: Mapping[str, Any], *,
                    property_dependencies: Mapping[str, list[PolicyResource]] | None = None) -> PolicyResource:
    return PolicyResource(resource_type, unknown_checking_proxy(dict(props)), _urn(resource_type, name), name,
                          _options(), None, None, [], dict(property_dependencies or {}))


def stack_args(resources: Iterable[PolicyResource], *, config: Mapping[str, Any] | None = None) -> StackValidationArgs:
    return StackValidationArgs(list(resources), dict(config) if config else None)


def from_recorded(records: Iterable[Any]) -> list[PolicyResource]:
    """`PolicyResource`s from `aigw.mocks.Recorded` (anything with `.type`, `.name`, `.inputs`, `.outputs`).
    Stack rules see a resource's *outputs* during `pulumi up`, so those are used: they hold the mocked `id`
    that a bucket-scoped resource's `bucket` input refers to."""
    return [policy_resource(r.type, r.name, getattr(r, "outputs", None) or r.inputs) for r in records]


def evaluate(stack: str, records: Iterable[Any]) -> list[tuple[str, str, str]]:
    """Every rule of the pack over `aigw.mocks.Recorded`s of one stack: (rule, resource or urn, message) per
    violation. What `pulumi preview --policy-pack policy` would report, offline (`aigw plan`, the tests)."""
    records = list(records)
    config = {"stack": stack}
    found: list[tuple[str, str, str]] = []
    for rule in ALL_RULES:
        if isinstance(rule, ResourceValidationPolicy):
            for r in records:
                rule.validate(
                    resource_args(r.type, r.inputs, name=r.name, config=config),
                    lambda message, urn=None, rule=rule, r=r: found.append((rule.name, r.name, message)),
                )
        else:
            rule.validate(
                stack_args(from_recorded(records), config=config),
                lambda message, urn=None, rule=rule: found.append((rule.name, urn or "", message)),
            )
    return found
