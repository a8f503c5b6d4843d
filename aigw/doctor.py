"""`aigw doctor --stack S`: a read-only pre-flight of an AWS account before `pulumi up`.

Each check is a pure function from AWS's answers (or the error it raised) to a `Check`: pass, warn or fail, with
the fix. `run_checks` is the imperative shell: it makes the read-only calls through the clients it is given (boto3
clients on AWS, stubbed ones in the tests) and never lets one failing call stop the others.

Calls made (the IAM permissions doctor needs): sts:GetCallerIdentity, lambda:GetAccountSettings,
bedrock:GetFoundationModel, bedrock:GetFoundationModelAvailability, bedrock:GetInferenceProfile, appsync:ListApis,
iam:SimulatePrincipalPolicy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from components.models import load_catalog, split_profile

Status = Literal["pass", "warn", "fail"]

# Lambda refuses a reservation that leaves fewer than this many executions unreserved (PutFunctionConcurrency).
LAMBDA_MIN_UNRESERVED = 100
# New accounts often start with a 10-execution quota; below this a burst of chats queues behind one another.
LAMBDA_LOW_QUOTA = 100
LAMBDA_CONCURRENCY_QUOTA_CODE = "L-B99A9384"  # Service Quotas: Lambda "Concurrent executions"
# Cognito's own e-mail sender (the stacks configure no SES): its documented daily limit.
COGNITO_DEFAULT_EMAILS_PER_DAY = 50
COGNITO_EMAIL_SOURCE = "https://docs.aws.amazon.com/cognito/latest/developerguide/user-pool-email.html"

# What `pulumi up` creates, one representative action per kind of resource (a denied one fails the deploy).
DEPLOY_ACTIONS = (
    "appsync:CreateApi", "appsync:CreateChannelNamespace", "appsync:CreateDataSource",
    "lambda:CreateFunction", "lambda:PutFunctionEventInvokeConfig", "lambda:AddPermission",
    "iam:CreateRole", "iam:PutRolePolicy", "iam:PassRole",
    "dynamodb:CreateTable", "dynamodb:UpdateContinuousBackups",
    "cognito-idp:CreateUserPool", "cognito-idp:CreateUserPoolClient", "cognito-idp:CreateGroup",
    "logs:CreateLogGroup", "logs:PutRetentionPolicy", "logs:PutSubscriptionFilter",
    "sqs:CreateQueue", "cloudwatch:PutDashboard", "cloudwatch:PutMetricAlarm", "sns:CreateTopic", "kms:CreateKey",
    "firehose:CreateDeliveryStream", "s3:CreateBucket", "s3:PutBucketPolicy", "glue:CreateDatabase",
    "glue:CreateTable", "athena:CreateWorkGroup", "athena:CreateNamedQuery",
)  # fmt: skip
GUARDRAIL_ACTIONS = ("bedrock:CreateGuardrail", "bedrock:CreateGuardrailVersion")
WEB_APP_ACTIONS = ("cloudfront:CreateDistribution", "cloudfront:CreateOriginAccessControl",
                   "cloudfront:CreateResponseHeadersPolicy")  # fmt: skip

_ASSUMED_ROLE = re.compile(r"^arn:(?P<partition>[^:]+):sts::(?P<account>\d{12}):assumed-role/(?P<role>[^/]+)/.+$")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _error(err: Exception) -> tuple[str, str]:
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        return str(error.get("Code", "error")), str(error.get("Message", err))
    return type(err).__name__, str(err)


# ------------------------------------------------------------------------------------------- pure checks


def _not_read(name: str, err: Exception, permission: str, missing: str, missing_fix: str) -> Check:
    """A read that failed: the thing does not exist (fail, `missing`), or could not be read (warn)."""
    code, message = _error(err)
    if code in ("ResourceNotFoundException", "ValidationException"):
        return Check(name, "fail", f"{missing} ({code}: {message})", missing_fix)
    return Check(name, "warn", f"could not read it ({code}: {message})", f"grant {permission} to check")


def check_identity(caller: Mapping[str, Any] | Exception) -> Check:
    if isinstance(caller, Exception):
        code, message = _error(caller)
        return Check("credentials", "fail", f"{code}: {message}",
                     "configure credentials for the target account (aws configure sso, AWS_PROFILE=...)")
    return Check("credentials", "pass", f"account {caller['Account']} as {caller['Arn']}")


def check_concurrency(settings: Mapping[str, Any] | Exception, reserved_total: int) -> Check:
    name = "lambda concurrency"
    if isinstance(settings, Exception):
        code, message = _error(settings)
        return Check(name, "warn", f"could not read the account's Lambda settings ({code}: {message})",
                     "grant lambda:GetAccountSettings to check, or compare the quota by hand")
    limit = settings["AccountLimit"]
    quota, unreserved = int(limit["ConcurrentExecutions"]), int(limit["UnreservedConcurrentExecutions"])
    left = unreserved - reserved_total
    if reserved_total and left < LAMBDA_MIN_UNRESERVED:
        return Check(
            name, "fail",
            f"the stack reserves {reserved_total} executions; {unreserved} of the account's {quota} are unreserved, "
            f"and Lambda keeps at least {LAMBDA_MIN_UNRESERVED} unreserved: pulumi up would fail",
            "remove or lower functions.<name>.reservedConcurrency (pulumi config set --path ...), or request more "
            f"'Concurrent executions' in Service Quotas (quota code {LAMBDA_CONCURRENCY_QUOTA_CODE})",
        )  # fmt: skip
    if quota < LAMBDA_LOW_QUOTA:
        return Check(
            name, "warn",
            f"the account allows only {quota} concurrent executions: every streamed answer holds one for its whole "
            "length, so a few chats at once throttle the rest",
            f"request more 'Concurrent executions' in Service Quotas (quota code {LAMBDA_CONCURRENCY_QUOTA_CODE})",
        )  # fmt: skip
    return Check(name, "pass", f"{quota} concurrent executions, {unreserved} unreserved; the stack reserves "
                               f"{reserved_total}")  # fmt: skip


def check_lifecycle(model_id: str, answer: Mapping[str, Any] | Exception, *, now: datetime) -> Check:
    """GetFoundationModel's lifecycle: ACTIVE passes, LEGACY warns (new users of it are refused), past EOL fails."""
    base, _ = split_profile(model_id)
    name = f"model {model_id}: lifecycle"
    if isinstance(answer, Exception):
        return _not_read(name, answer, "bedrock:GetFoundationModel", f"{base} is not offered in this region",
                         "pick a model the region offers (aws bedrock list-foundation-models) or change aws:region")
    lifecycle = answer.get("modelDetails", {}).get("modelLifecycle", {})
    status = lifecycle.get("status")
    if status == "LEGACY":
        entry = load_catalog().entry(model_id)
        replacement = f" (the catalog's replacement: {entry.replacement})" if entry and entry.replacement else ""
        eol = lifecycle.get("endOfLifeTime")
        if isinstance(eol, datetime) and eol <= now:
            return Check(name, "fail", f"{base} reached its end of life on {eol:%Y-%m-%d}: every call is refused",
                         f"move the tiers to an Active model{replacement}")
        return Check(name, "warn", f"{base} is LEGACY{f', end of life {eol:%Y-%m-%d}' if eol else ''}: "
                                   "accounts that have not used it recently cannot start",
                     f"move the tiers to an Active model{replacement}")  # fmt: skip
    return Check(name, "pass", f"{base} is {status or 'ACTIVE'}")


def check_access(model_id: str, answer: Mapping[str, Any] | Exception) -> Check:
    """GetFoundationModelAvailability: the account's agreement, authorization, entitlement and region for a model."""
    base, _ = split_profile(model_id)
    name = f"model {model_id}: access"
    if isinstance(answer, Exception):
        code, message = _error(answer)
        return Check(name, "warn", f"could not read {base}'s availability ({code}: {message})",
                     "grant bedrock:GetFoundationModelAvailability to check")
    problems, fixes = [], []
    if answer.get("regionAvailability") != "AVAILABLE":
        problems.append("not available in this region")
        fixes.append("use an inference profile that routes to a region offering it, or change aws:region")
    agreement = answer.get("agreementAvailability", {})
    if agreement.get("status") != "AVAILABLE":
        problems.append(f"agreement {agreement.get('status')}"
                        + (f" ({agreement['errorMessage']})" if agreement.get("errorMessage") else ""))
        fixes.append("for Anthropic, submit the use-case form (Bedrock console, Model catalog, the model); then make "
                     "the first call as a principal allowed aws-marketplace:Subscribe and "
                     "aws-marketplace:ViewSubscriptions, which creates the Marketplace subscription")
    if answer.get("entitlementAvailability") != "AVAILABLE":
        problems.append("no entitlement (no Marketplace subscription yet)")
        fixes.append("invoke the model once as a principal allowed aws-marketplace:Subscribe (see docs/deploy.md)")
    if answer.get("authorizationStatus") != "AUTHORIZED":
        problems.append("not authorized for this account")
        fixes.append("check SCPs and IAM for bedrock:InvokeModel* on the model, and the account's model access")
    if problems:
        pending = agreement.get("status") == "PENDING" and len(problems) == 1
        return Check(name, "warn" if pending else "fail", f"{base}: " + "; ".join(problems),
                     "; ".join(dict.fromkeys(fixes)))
    return Check(name, "pass", f"{base}: agreement, entitlement, authorization and region all available")


def check_profile(profile_id: str, answer: Mapping[str, Any] | Exception) -> Check:
    name = f"model {profile_id}: inference profile"
    if isinstance(answer, Exception):
        return _not_read(name, answer, "bedrock:GetInferenceProfile", f"no inference profile {profile_id} in this "
                         "region", "use a profile the region offers (aws bedrock list-inference-profiles) or the "
                         "bare model id")
    status = answer.get("status")
    if status != "ACTIVE":
        return Check(name, "fail", f"{profile_id} is {status}", "use an ACTIVE inference profile")
    return Check(name, "pass", f"{profile_id} is ACTIVE ({len(answer.get('models', []))} destination models)")


def check_appsync_events(region: str, answer: Mapping[str, Any] | Exception) -> Check:
    name = "appsync events"
    if isinstance(answer, Exception):
        code, message = _error(answer)
        if code in ("AccessDeniedException", "UnauthorizedException"):
            return Check(name, "warn", f"could not list Event APIs ({code}: {message})", "grant appsync:ListApis")
        return Check(name, "fail", f"AppSync Events is not reachable in {region} ({code}: {message})",
                     "deploy to a region where AWS AppSync Events is offered (aws:region)")
    return Check(name, "pass", f"AppSync Events answers in {region} ({len(answer.get('apis', []))} Event APIs so far)")


def check_cognito_email(expected_users: int) -> Check:
    # Every new user gets an invitation (and resets send more): the daily limit caps onboarding speed.
    name = "cognito email"
    if expected_users > COGNITO_DEFAULT_EMAILS_PER_DAY:
        return Check(
            name, "warn",
            f"{expected_users} expected users, but Cognito's own sender delivers about "
            f"{COGNITO_DEFAULT_EMAILS_PER_DAY} e-mails a day per account ({COGNITO_EMAIL_SOURCE})",
            "configure Amazon SES as the user pool's e-mail sender before onboarding that many, or add users in "
            "batches below the limit",
        )  # fmt: skip
    return Check(name, "pass", f"{expected_users} expected users fit Cognito's default e-mail limit "
                               f"({COGNITO_DEFAULT_EMAILS_PER_DAY} a day)")  # fmt: skip


def policy_source_arn(caller_arn: str) -> tuple[str, bool]:
    """The IAM ARN to simulate for the caller: an assumed-role session becomes its role (True if exact).

    A role with a path cannot be recovered from its session ARN; then the path-less guess is returned with False.
    """
    match = _ASSUMED_ROLE.match(caller_arn)
    if not match:
        return caller_arn, True
    return f"arn:{match['partition']}:iam::{match['account']}:role/{match['role']}", False


def check_permissions(evaluations: Iterable[Mapping[str, Any]] | Exception, *, exact: bool) -> Check:
    name = "deploy permissions"
    if isinstance(evaluations, Exception):
        code, message = _error(evaluations)
        return Check(name, "warn", f"could not simulate the caller's policies ({code}: {message})",
                     "grant iam:SimulatePrincipalPolicy to check, or run `pulumi preview` to find denials")
    denied = sorted(e["EvalActionName"] for e in evaluations if e.get("EvalDecision") != "allowed")
    if denied:
        return Check(name, "fail", f"{len(denied)} actions pulumi up needs are denied: {', '.join(denied)}",
                     "deploy with a role allowed these actions (docs/deploy.md lists the CI roles)")
    note = "" if exact else " (simulated for the role without its path: a role with a path may differ)"
    return Check(name, "pass" if exact else "warn", f"every action pulumi up needs is allowed{note}",
                 "" if exact else "run again as the role itself, or confirm with `pulumi preview`")


# ----------------------------------------------------------------------------------------------- shell


class ClientFactory(Protocol):
    def __call__(self, service: str) -> Any: ...


def deploy_actions(settings: Any) -> list[str]:
    actions = list(DEPLOY_ACTIONS)
    if settings.guardrail.enabled:
        actions += GUARDRAIL_ACTIONS
    if settings.web_app.enabled:
        actions += WEB_APP_ACTIONS
    return actions


def _call(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except (ClientError, BotoCoreError) as err:
        return err


def run_checks(
    settings: Any, client: ClientFactory, *, expected_users: int, now: datetime | None = None
) -> list[Check]:
    """Every check for `settings` (a `StackSettings`), calling AWS only through `client(service)`."""
    now = now or datetime.now(UTC)
    checks: list[Check] = []
    caller = _call(lambda: client("sts").get_caller_identity())
    checks.append(check_identity(caller))
    if isinstance(caller, Exception):
        return checks  # nothing else can answer without credentials
    account = _call(lambda: client("lambda").get_account_settings())
    checks.append(check_concurrency(account, settings.reserved_concurrency_total))
    bedrock = client("bedrock")
    for model in settings.model_ids:
        base, geo = split_profile(model)
        checks.append(check_lifecycle(model, _call(lambda base=base: bedrock.get_foundation_model(
            modelIdentifier=base)), now=now))  # fmt: skip
        checks.append(check_access(model, _call(lambda base=base: bedrock.get_foundation_model_availability(
            modelId=base))))  # fmt: skip
        if geo is not None:
            checks.append(check_profile(model, _call(lambda model=model: bedrock.get_inference_profile(
                inferenceProfileIdentifier=model))))  # fmt: skip
    checks.append(check_appsync_events(settings.region, _call(lambda: client("appsync").list_apis(maxResults=1))))
    checks.append(check_cognito_email(expected_users))
    source, exact = policy_source_arn(caller["Arn"])
    simulated = _call(lambda: client("iam").simulate_principal_policy(
        PolicySourceArn=source, ActionNames=deploy_actions(settings)))  # fmt: skip
    evaluations = simulated if isinstance(simulated, Exception) else simulated.get("EvaluationResults", [])
    checks.append(check_permissions(evaluations, exact=exact))
    return checks


def boto3_clients(region: str, profile: str | None = None) -> ClientFactory:
    import boto3

    session = boto3.session.Session(profile_name=profile, region_name=region)
    return lambda service: session.client(service)  # type: ignore[no-any-return]


def exit_code(checks: Iterable[Check]) -> int:
    return 1 if any(c.status == "fail" for c in checks) else 0
