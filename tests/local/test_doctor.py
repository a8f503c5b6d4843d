"""`aigw doctor`: every check's pass, warn and fail path, against real boto3 clients answered by botocore's Stubber.

The Stubber checks each stubbed answer against the service's model, so these tests also prove the field names the
checks read (modelLifecycle, agreementAvailability, AccountLimit, EvaluationResults, ...) are AWS's. Each client
must have been asked exactly what was stubbed, in order (`assert_no_pending_responses`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber
from typer.testing import CliRunner

from aigw import doctor
from aigw.cli import app
from components.models import split_profile
from components.settings import StackSettings, stack_file_values

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
ACCOUNT = "123456789012"
NOW = datetime(2026, 12, 5, tzinfo=UTC)
USER_ARN = f"arn:aws:iam::{ACCOUNT}:user/deployer"


def stack(name: str = "dev", **overrides: Any) -> StackSettings:
    return StackSettings.from_values({**stack_file_values(ROOT / f"Pulumi.{name}.yaml"), **overrides})


def active(model: str) -> dict[str, Any]:
    base, _ = split_profile(model)
    return {"modelDetails": {"modelArn": f"arn:aws:bedrock:{REGION}::foundation-model/{base}", "modelId": base,
                             "modelLifecycle": {"status": "ACTIVE"}}}


def available(model: str) -> dict[str, Any]:
    return {"modelId": split_profile(model)[0], "agreementAvailability": {"status": "AVAILABLE"},
            "authorizationStatus": "AUTHORIZED", "entitlementAvailability": "AVAILABLE",
            "regionAvailability": "AVAILABLE"}


def profile(model: str, status: str = "ACTIVE") -> dict[str, Any]:
    return {"inferenceProfileName": model, "inferenceProfileArn": f"arn:aws:bedrock:{REGION}:{ACCOUNT}:"
            f"inference-profile/{model}", "inferenceProfileId": model, "status": status, "type": "SYSTEM_DEFINED",
            "models": [{"modelArn": f"arn:aws:bedrock:{r}::foundation-model/x"} for r in ("us-east-1", "us-west-2")]}


Answer = dict[str, Any] | tuple[str, str]  # a response, or (error code, message) for a client error


@dataclass
class Account:
    """What a stubbed AWS account answers; every field defaults to a healthy account."""

    caller: Answer = field(default_factory=lambda: {"UserId": "AIDAEXAMPLE", "Account": ACCOUNT, "Arn": USER_ARN})
    concurrency: Answer = field(default_factory=lambda: {"AccountLimit": {
        "ConcurrentExecutions": 1000, "UnreservedConcurrentExecutions": 1000}})
    lifecycle: dict[str, Answer] = field(default_factory=dict)  # by model as configured; default ACTIVE
    access: dict[str, Answer] = field(default_factory=dict)  # default all AVAILABLE
    profiles: dict[str, Answer] = field(default_factory=dict)  # default ACTIVE
    appsync: Answer = field(default_factory=lambda: {"apis": []})
    denied: tuple[str, ...] = ()
    simulation: Answer | None = None  # overrides `denied`


class Stubs:
    """A client factory for `run_checks` whose clients answer from an `Account`, in the order doctor asks."""

    def __init__(self, account: Account, settings: StackSettings, *, expected_source: str | None = None) -> None:
        session = boto3.session.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                                        region_name=REGION)
        self.clients = {name: session.client(name) for name in ("sts", "lambda", "bedrock", "appsync", "iam")}
        self.stubbers = {name: Stubber(client) for name, client in self.clients.items()}
        self._add(account, settings, expected_source or _caller_arn(account))
        for stubber in self.stubbers.values():
            stubber.activate()

    def __call__(self, service: str) -> Any:
        return self.clients[service]

    def _add(self, account: Account, settings: StackSettings, source: str) -> None:
        self._answer("sts", "get_caller_identity", account.caller, {})
        if isinstance(account.caller, tuple):
            return
        self._answer("lambda", "get_account_settings", account.concurrency, {})
        for model in settings.model_ids:
            base, geo = split_profile(model)
            self._answer("bedrock", "get_foundation_model", account.lifecycle.get(model, active(model)),
                         {"modelIdentifier": base})
            self._answer("bedrock", "get_foundation_model_availability", account.access.get(model, available(model)),
                         {"modelId": base})
            if geo is not None:
                self._answer("bedrock", "get_inference_profile", account.profiles.get(model, profile(model)),
                             {"inferenceProfileIdentifier": model})
        self._answer("appsync", "list_apis", account.appsync, {"maxResults": 1})
        actions = doctor.deploy_actions(settings)
        simulation = account.simulation or {"EvaluationResults": [
            {"EvalActionName": a, "EvalDecision": "implicitDeny" if a in account.denied else "allowed"}
            for a in actions], "IsTruncated": False}
        self._answer("iam", "simulate_principal_policy", simulation,
                     {"PolicySourceArn": source, "ActionNames": actions})

    def _answer(self, service: str, method: str, answer: Answer, params: dict[str, Any]) -> None:
        if isinstance(answer, tuple):
            code, message = answer
            self.stubbers[service].add_client_error(method, service_error_code=code, service_message=message,
                                                    http_status_code=400, expected_params=params)
        else:
            self.stubbers[service].add_response(method, answer, params)

    def assert_all_asked(self) -> None:
        for stubber in self.stubbers.values():
            stubber.assert_no_pending_responses()


def _caller_arn(account: Account) -> str:
    return account.caller["Arn"] if isinstance(account.caller, dict) else USER_ARN


def run(account: Account, settings: StackSettings | None = None, *, expected_users: int = 50,
        expected_source: str | None = None) -> dict[str, doctor.Check]:
    settings = settings or stack()
    stubs = Stubs(account, settings, expected_source=expected_source)
    checks = doctor.run_checks(settings, stubs, expected_users=expected_users, now=NOW)
    stubs.assert_all_asked()
    by_name = {c.name: c for c in checks}
    assert len(by_name) == len(checks)  # names are unique: a table row each
    return by_name


HAIKU = "us.anthropic.claude-haiku-5-5"
NOVA = "amazon.nova-lite-v1:0"


@pytest.fixture
def runner() -> Iterator[CliRunner]:
    yield CliRunner()


# -- a healthy account


def test_a_healthy_account_passes_every_check_and_exits_zero() -> None:
    checks = run(Account())
    assert {c.status for c in checks.values()} == {"pass"}, [c for c in checks.values() if c.status != "pass"]
    assert set(checks) == {
        "credentials", "lambda concurrency", "appsync events", "cognito email", "deploy permissions",
        f"model {NOVA}: lifecycle", f"model {NOVA}: access",
        f"model {HAIKU}: lifecycle", f"model {HAIKU}: access", f"model {HAIKU}: inference profile",
    }
    assert doctor.exit_code(checks.values()) == 0
    assert ACCOUNT in checks["credentials"].detail


def test_prod_checks_its_own_models_and_guardrail_permissions() -> None:
    settings = stack("prod")
    checks = run(Account(), settings)
    assert {f"model {m}: lifecycle" for m in settings.model_ids} <= set(checks)
    assert "bedrock:CreateGuardrail" in doctor.deploy_actions(settings)
    assert "bedrock:CreateGuardrail" not in doctor.deploy_actions(stack("dev"))  # dev has no guardrail


# -- credentials


def test_no_credentials_fail_at_once_and_nothing_else_is_asked() -> None:
    checks = run(Account(caller=("ExpiredToken", "The security token included in the request is expired")))
    assert list(checks) == ["credentials"]
    assert checks["credentials"].status == "fail" and "ExpiredToken" in checks["credentials"].detail
    assert "aws configure sso" in checks["credentials"].fix


# -- Lambda concurrency


def limits(quota: int, unreserved: int) -> dict[str, Any]:
    return {"AccountLimit": {"ConcurrentExecutions": quota, "UnreservedConcurrentExecutions": unreserved}}


def reserving(worker: int) -> StackSettings:
    sized = stack().functions.worker.model_dump(by_alias=True, exclude_none=True)
    return stack(functions={"worker": {**sized, "reservedConcurrency": worker}})


def test_reservations_that_leave_under_100_unreserved_fail_with_the_quota_to_raise() -> None:
    settings = reserving(50)
    assert settings.reserved_concurrency_total >= 50
    check = run(Account(concurrency=limits(1000, 120)), settings)["lambda concurrency"]
    assert check.status == "fail" and "pulumi up would fail" in check.detail
    assert "L-B99A9384" in check.fix and "reservedConcurrency" in check.fix


def test_reservations_that_leave_100_unreserved_pass() -> None:
    settings = reserving(50)
    unreserved = 100 + settings.reserved_concurrency_total
    assert run(Account(concurrency=limits(1000, unreserved)), settings)["lambda concurrency"].status == "pass"


def test_a_new_accounts_10_execution_quota_warns_and_any_reservation_fails() -> None:
    assert stack().reserved_concurrency_total == 0
    check = run(Account(concurrency=limits(10, 10)))["lambda concurrency"]
    assert check.status == "warn" and "only 10 concurrent executions" in check.detail and "L-B99A9384" in check.fix
    assert run(Account(concurrency=limits(10, 10)), reserving(5))["lambda concurrency"].status == "fail"


def test_unreadable_lambda_settings_warn() -> None:
    check = run(Account(concurrency=("AccessDeniedException", "not authorized")))["lambda concurrency"]
    assert check.status == "warn" and "lambda:GetAccountSettings" in check.fix


# -- model lifecycle


def legacy(model: str, eol: datetime) -> dict[str, Any]:
    answer = active(model)
    answer["modelDetails"]["modelLifecycle"] = {"status": "LEGACY", "endOfLifeTime": eol}
    return answer


def test_a_legacy_model_warns_before_its_end_of_life_and_fails_after_naming_the_replacement() -> None:
    # AWS's answer rules, not the catalog's: a model can turn Legacy after the catalog was taken.
    before = run(Account(lifecycle={HAIKU: legacy(HAIKU, datetime(2027, 1, 1, tzinfo=UTC))}))
    check = before[f"model {HAIKU}: lifecycle"]
    assert check.status == "warn" and "LEGACY, end of life 2027-01-01" in check.detail
    assert "move the tiers to an Active model" in check.fix
    old = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
    after = doctor.check_lifecycle(old, legacy(old, datetime(2026, 6, 19, tzinfo=UTC)), now=NOW)
    assert after.status == "fail" and "2026-06-19" in after.detail and "anthropic.claude-haiku-5-5" in after.fix


def test_a_model_the_region_does_not_offer_fails_and_an_unreadable_one_warns() -> None:
    missing = run(Account(lifecycle={NOVA: ("ResourceNotFoundException", "Could not find model")}))
    assert missing[f"model {NOVA}: lifecycle"].status == "fail"
    assert "list-foundation-models" in missing[f"model {NOVA}: lifecycle"].fix
    denied = run(Account(lifecycle={NOVA: ("AccessDeniedException", "no")}))[f"model {NOVA}: lifecycle"]
    assert denied.status == "warn" and "bedrock:GetFoundationModel" in denied.fix


# -- model access (Marketplace agreement, entitlement, authorization, region)


def access(model: str, **changes: Any) -> dict[str, Any]:
    return {**available(model), **changes}


def test_an_anthropic_model_without_its_agreement_fails_with_the_use_case_form_and_marketplace_steps() -> None:
    answer = access(HAIKU, agreementAvailability={"status": "NOT_AVAILABLE", "errorMessage": "use case not submitted"},
                    entitlementAvailability="NOT_AVAILABLE")
    check = run(Account(access={HAIKU: answer}))[f"model {HAIKU}: access"]
    assert check.status == "fail"
    assert "agreement NOT_AVAILABLE (use case not submitted)" in check.detail and "no entitlement" in check.detail
    assert "use-case form" in check.fix and "aws-marketplace:Subscribe" in check.fix
    assert "aws-marketplace:ViewSubscriptions" in check.fix


def test_an_agreement_still_pending_only_warns() -> None:
    check = run(Account(access={HAIKU: access(HAIKU, agreementAvailability={"status": "PENDING"})}))
    assert check[f"model {HAIKU}: access"].status == "warn"


@pytest.mark.parametrize(("changes", "says", "fix"), [
    ({"authorizationStatus": "NOT_AUTHORIZED"}, "not authorized", "SCPs"),
    ({"regionAvailability": "NOT_AVAILABLE"}, "not available in this region", "inference profile"),
    ({"entitlementAvailability": "NOT_AVAILABLE"}, "no entitlement", "aws-marketplace:Subscribe"),
    ({"agreementAvailability": {"status": "ERROR", "errorMessage": "payment"}}, "agreement ERROR (payment)",
     "use-case form"),
])  # fmt: skip
def test_each_access_problem_fails_with_its_fix(changes: dict[str, Any], says: str, fix: str) -> None:
    check = run(Account(access={NOVA: access(NOVA, **changes)}))[f"model {NOVA}: access"]
    assert check.status == "fail" and says in check.detail and fix in check.fix


def test_unreadable_availability_warns() -> None:
    check = run(Account(access={NOVA: ("AccessDeniedException", "no")}))[f"model {NOVA}: access"]
    assert check.status == "warn" and "GetFoundationModelAvailability" in check.fix


# -- inference profiles


def test_a_missing_inference_profile_fails() -> None:
    check = run(Account(profiles={HAIKU: ("ResourceNotFoundException", "no such profile")}))
    assert check[f"model {HAIKU}: inference profile"].status == "fail"
    assert "list-inference-profiles" in check[f"model {HAIKU}: inference profile"].fix


def test_an_unreadable_inference_profile_warns() -> None:
    check = run(Account(profiles={HAIKU: ("AccessDeniedException", "no")}))[f"model {HAIKU}: inference profile"]
    assert check.status == "warn" and "bedrock:GetInferenceProfile" in check.fix


# -- AppSync Events


def test_appsync_events_unreachable_in_the_region_fails_and_unreadable_warns() -> None:
    gone = doctor.check_appsync_events("xx-none-1", EndpointConnectionError(endpoint_url="https://appsync.xx"))
    assert gone.status == "fail" and "xx-none-1" in gone.detail and "aws:region" in gone.fix
    unknown = run(Account(appsync=("UnrecognizedClientException", "no such service")))["appsync events"]
    assert unknown.status == "fail"
    denied = run(Account(appsync=("AccessDeniedException", "no")))["appsync events"]
    assert denied.status == "warn" and "appsync:ListApis" in denied.fix


def test_an_endpoint_that_cannot_be_reached_is_a_result_not_a_crash() -> None:
    def unreachable(service: str) -> Any:
        raise AssertionError("not called")

    class Sts:
        def get_caller_identity(self) -> Any:
            raise EndpointConnectionError(endpoint_url="https://sts.example")

    checks = doctor.run_checks(stack(), lambda service: Sts() if service == "sts" else unreachable(service),
                               expected_users=1, now=NOW)
    assert [(c.name, c.status) for c in checks] == [("credentials", "fail")]


# -- Cognito e-mail


def test_more_users_than_cognitos_daily_email_limit_warns_with_ses_as_the_fix() -> None:
    assert run(Account(), expected_users=50)["cognito email"].status == "pass"
    check = run(Account(), expected_users=51)["cognito email"]
    assert check.status == "warn" and "51 expected users" in check.detail and "SES" in check.fix


# -- deploy permissions


def test_denied_deploy_actions_fail_and_are_named() -> None:
    check = run(Account(denied=("iam:PassRole", "appsync:CreateApi")))["deploy permissions"]
    assert check.status == "fail" and "2 actions" in check.detail
    assert "appsync:CreateApi, iam:PassRole" in check.detail


def test_an_assumed_role_is_simulated_as_its_role_and_warns_that_a_path_may_differ() -> None:
    session = f"arn:aws:sts::{ACCOUNT}:assumed-role/deploy/ci-run-42"
    caller = {"UserId": "AROAEXAMPLE:ci-run-42", "Account": ACCOUNT, "Arn": session}
    check = run(Account(caller=caller), expected_source=f"arn:aws:iam::{ACCOUNT}:role/deploy")["deploy permissions"]
    assert check.status == "warn" and "without its path" in check.detail
    assert doctor.policy_source_arn(f"arn:aws-cn:sts::{ACCOUNT}:assumed-role/r/s") == (
        f"arn:aws-cn:iam::{ACCOUNT}:role/r", False)
    assert doctor.policy_source_arn(USER_ARN) == (USER_ARN, True)


def test_a_caller_that_may_not_simulate_warns() -> None:
    check = run(Account(simulation=("AccessDenied", "not authorized to SimulatePrincipalPolicy")))
    assert check["deploy permissions"].status == "warn" and "iam:SimulatePrincipalPolicy" in check[
        "deploy permissions"].fix


# -- the command


@pytest.fixture
def stubbed_cli(monkeypatch: pytest.MonkeyPatch) -> Any:
    def use(account: Account, stack_name: str = "dev") -> None:
        stubs = Stubs(account, stack(stack_name))
        monkeypatch.setattr(doctor, "boto3_clients", lambda region, profile=None: stubs)

    return use


def test_the_command_prints_every_check_as_json_and_exits_zero_on_warnings(runner: CliRunner, stubbed_cli: Any
                                                                           ) -> None:
    stubbed_cli(Account(concurrency=limits(10, 10)))
    result = runner.invoke(app, ["doctor", "--stack", "dev", "--json"])
    assert result.exit_code == 0, result.output
    checks = json.loads(result.stdout)
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in checks)
    assert {c["name"]: c["status"] for c in checks}["lambda concurrency"] == "warn"


def test_the_command_exits_one_on_a_failure_and_shows_the_fix_in_its_table(runner: CliRunner, stubbed_cli: Any
                                                                           ) -> None:
    stubbed_cli(Account(access={HAIKU: access(HAIKU, agreementAvailability={"status": "NOT_AVAILABLE"})}))
    result = runner.invoke(app, ["doctor", "--stack", "dev"], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "aigw doctor: stack dev, us-east-1" in result.stdout
    assert "fail" in result.stdout and "use-case form" in result.stdout


def test_the_region_option_overrides_the_stacks(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def clients(region: str, profile: str | None = None) -> Any:
        asked.append(region)
        return lambda service: (_ for _ in ()).throw(EndpointConnectionError(endpoint_url="https://x"))

    monkeypatch.setattr(doctor, "boto3_clients", clients)
    result = runner.invoke(app, ["doctor", "--stack", "prod", "--region", "eu-west-1", "--json"])
    assert asked == ["eu-west-1"] and result.exit_code == 1
    assert json.loads(result.stdout)[0]["status"] == "fail"


def test_the_guide_lists_exactly_the_permissions_doctor_uses() -> None:
    settings = stack()
    stubs = Stubs(Account(), settings)
    used: set[str] = set()
    for name, client in stubs.clients.items():
        client.meta.events.register(
            "before-parameter-build", lambda model, name=name, **_: used.add(f"{name}:{model.name}"))
    doctor.run_checks(settings, stubs, expected_users=1, now=NOW)
    guide = (ROOT / "docs" / "doctor.md").read_text()
    block = guide.split("## Permissions doctor needs", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert set(json.loads(block)["Action"]) == used
    assert set(doctor.__doc__.split("Calls made", 1)[1].replace("\n", " ").split(": ", 1)[1].rstrip(". ").split(", ")
               ) == used  # fmt: skip
