"""The Identity component under mocks: what it would create in Cognito, checked without AWS."""

from __future__ import annotations

import dataclasses
from typing import Any

import pulumi
import pulumi_aws as aws
import pytest

from aigw.mocks import RecordingMocks, run
from components.identity import FederationProvider, Identity, IdentityArgs

COMPONENT = ("ai-gateway:identity:Identity", "identity")
POOL = "aws:cognito/userPool:UserPool"
CLIENT = "aws:cognito/userPoolClient:UserPoolClient"
GROUP = "aws:cognito/userGroup:UserGroup"
IDP = "aws:cognito/identityProvider:IdentityProvider"
DOMAIN = "aws:cognito/userPoolDomain:UserPoolDomain"

TIERS = (("free", 30), ("pro", 20), ("enterprise", 10))
DEV = IdentityArgs(name="ai-gateway-dev", tiers=TIERS, mfa="OFF", deletion_protection=False)
PROD = IdentityArgs(name="ai-gateway-prod", tiers=TIERS, mfa="ON", deletion_protection=True, password_min_length=16,
                    access_token_minutes=15, id_token_minutes=15, refresh_token_days=7, tags={"env": "prod"})
GOOGLE = FederationProvider(name="Google", type="Google",
                            details={"client_id": "g", "client_secret": "s", "authorize_scopes": "openid email"})
CORP = FederationProvider(name="corp", type="SAML", details={"MetadataURL": "https://idp.example.com/metadata"},
                          attribute_mapping={"email": "http://schemas.xmlsoap.org/claims/EmailAddress"})
HOSTED = dataclasses.replace(DEV, federation=(GOOGLE, CORP), hosted_domain_prefix="aigw-dev-login",
                             callback_urls=("https://app.example.com/callback", "http://localhost:3000/cb"),
                             logout_urls=("https://app.example.com/",))


def deploy(args: IdentityArgs, outputs: dict[str, Any] | None = None) -> RecordingMocks:
    def program() -> pulumi.Output[Any]:
        identity = Identity("identity", args)
        values = {k: getattr(identity, k) for k in ("user_pool_id", "user_pool_arn", "client_id", "issuer")}
        values["hosted_domain"] = identity.hosted_domain
        sink = outputs if outputs is not None else {}
        return pulumi.Output.all(**values).apply(sink.update)

    return run(program, region="eu-west-1")


@pytest.mark.parametrize("args", [DEV, PROD, HOSTED], ids=["dev", "prod", "hosted"])
def test_every_child_is_parented_to_the_component(args: IdentityArgs) -> None:
    mocks = deploy(args)
    component = mocks.one(COMPONENT[0])
    assert component.name == "identity"
    children = [r for r in mocks.resources if r is not component]
    assert children
    assert all(r.parent == COMPONENT for r in children), [(r.type, r.parent) for r in children]


@pytest.mark.parametrize("args", [DEV, PROD], ids=["dev", "prod"])
def test_pool_follows_the_args(args: IdentityArgs) -> None:
    pool = deploy(args).one(POOL).inputs
    assert pool["name"] == args.name
    assert pool["usernameAttributes"] == ["email"]
    assert pool["usernameConfiguration"] == {"caseSensitive": False}
    assert pool["autoVerifiedAttributes"] == ["email"]
    assert pool["passwordPolicy"] == {
        "minimumLength": args.password_min_length,
        "requireUppercase": True,
        "requireLowercase": True,
        "requireNumbers": True,
        "requireSymbols": True,
        "temporaryPasswordValidityDays": 3,
    }
    assert pool["adminCreateUserConfig"] == {"allowAdminCreateUserOnly": True}
    assert pool["accountRecoverySetting"] == {"recoveryMechanisms": [{"name": "verified_email", "priority": 1}]}
    assert pool["mfaConfiguration"] == args.mfa
    assert pool["deletionProtection"] == ("ACTIVE" if args.deletion_protection else "INACTIVE")
    assert "smsConfiguration" not in pool and "userPoolAddOns" not in pool
    assert pool.get("tags", {}) == dict(args.tags)


def test_mfa_on_or_optional_enables_totp_only_off_does_not() -> None:
    assert "softwareTokenMfaConfiguration" not in deploy(DEV).one(POOL).inputs
    for mfa in ("ON", "OPTIONAL"):
        pool = deploy(dataclasses.replace(DEV, mfa=mfa)).one(POOL).inputs
        assert pool["mfaConfiguration"] == mfa
        assert pool["softwareTokenMfaConfiguration"] == {"enabled": True}


def test_self_signup_lets_users_register() -> None:
    pool = deploy(dataclasses.replace(DEV, self_signup=True)).one(POOL).inputs
    assert pool["adminCreateUserConfig"] == {"allowAdminCreateUserOnly": False}


@pytest.mark.parametrize("args", [DEV, PROD], ids=["dev", "prod"])
def test_client_is_public_with_exactly_the_three_flows(args: IdentityArgs) -> None:
    client = deploy(args).one(CLIENT).inputs
    assert client["generateSecret"] is False
    assert sorted(client["explicitAuthFlows"]) == sorted(
        ["ALLOW_USER_SRP_AUTH", "ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]
    )
    assert client["accessTokenValidity"] == args.access_token_minutes
    assert client["idTokenValidity"] == args.id_token_minutes
    assert client["refreshTokenValidity"] == args.refresh_token_days
    assert client["tokenValidityUnits"] == {"accessToken": "minutes", "idToken": "minutes", "refreshToken": "days"}
    assert client["preventUserExistenceErrors"] == "ENABLED"
    assert client["enableTokenRevocation"] is True
    assert client["userPoolId"] == "identity-pool-id"
    for oauth_only in ("allowedOauthFlows", "allowedOauthFlowsUserPoolClient", "callbackUrls",
                       "supportedIdentityProviders"):
        assert oauth_only not in client


@pytest.mark.parametrize("args", [DEV, PROD], ids=["dev", "prod"])
def test_one_group_per_tier_with_its_precedence(args: IdentityArgs) -> None:
    groups = deploy(args).of_type(GROUP)
    assert sorted((g.inputs["name"], g.inputs["precedence"]) for g in groups) == sorted(args.tiers)
    assert all(g.inputs["userPoolId"] == "identity-pool-id" for g in groups)


def test_federation_providers_and_code_flow_on_the_client() -> None:
    mocks = deploy(HOSTED)
    providers = {p.inputs["providerName"]: p.inputs for p in mocks.of_type(IDP)}
    assert providers.keys() == {"Google", "corp"}
    assert providers["Google"]["providerType"] == "Google"
    assert providers["Google"]["providerDetails"] == dict(GOOGLE.details)
    assert providers["Google"]["attributeMapping"] == {"email": "email"}
    assert providers["corp"]["providerType"] == "SAML"
    assert providers["corp"]["attributeMapping"] == dict(CORP.attribute_mapping)
    client = mocks.one(CLIENT).inputs
    assert client["supportedIdentityProviders"] == ["COGNITO", "Google", "corp"]
    assert client["allowedOauthFlows"] == ["code"]
    assert client["allowedOauthFlowsUserPoolClient"] is True
    assert set(client["allowedOauthScopes"]) == {"openid", "email", "profile"}
    assert client["callbackUrls"] == list(HOSTED.callback_urls)
    assert client["logoutUrls"] == list(HOSTED.logout_urls)


def test_client_depends_on_the_identity_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[pulumi.ResourceOptions | None] = []
    original = aws.cognito.UserPoolClient

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("opts"))
        return original(*args, **kwargs)

    monkeypatch.setattr(aws.cognito, "UserPoolClient", recording)
    deploy(HOSTED)
    [opts] = seen
    assert opts is not None and opts.depends_on is not None
    assert sorted(r._name for r in opts.depends_on) == ["identity-idp-Google", "identity-idp-corp"]


def test_hosted_domain_only_when_asked() -> None:
    assert deploy(DEV).of_type(DOMAIN) == []
    domain = deploy(HOSTED).one(DOMAIN).inputs
    assert domain == {"domain": "aigw-dev-login", "userPoolId": "identity-pool-id"}


def test_outputs() -> None:
    plain: dict[str, Any] = {}
    deploy(DEV, plain)
    assert plain == {
        "user_pool_id": "identity-pool-id",
        "user_pool_arn": "arn:aws:cognito-idp:eu-west-1:123456789012:userpool/eu-west-1_ai-gateway-dev",
        "client_id": "identity-client-id",
        "issuer": "https://cognito-idp.eu-west-1.amazonaws.com/identity-pool-id",
        "hosted_domain": None,
    }
    hosted: dict[str, Any] = {}
    deploy(HOSTED, hosted)
    assert hosted["hosted_domain"] == "aigw-dev-login.auth.eu-west-1.amazoncognito.com"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"password_min_length": 7}, "password_min_length"),
        ({"password_min_length": 100}, "password_min_length"),
        ({"access_token_minutes": 4}, "access_token_minutes"),
        ({"access_token_minutes": 1441}, "access_token_minutes"),
        ({"id_token_minutes": 0}, "id_token_minutes"),
        ({"refresh_token_days": 0}, "refresh_token_days"),
        ({"refresh_token_days": 3651}, "refresh_token_days"),
        ({"mfa": "SMS"}, "mfa"),
        ({"tiers": ()}, "at least one tier"),
        ({"tiers": (("free", 1), ("free", 2))}, "unique"),
        ({"tiers": (("free", -1),)}, "precedence"),
        ({"tiers": (("free tier", 1),)}, "tier name"),
        ({"federation": (GOOGLE,)}, "callback_urls"),
        ({"callback_urls": ("https://app.example.com/cb",)}, "hosted_domain_prefix"),
        ({"callback_urls": ("http://app.example.com/cb",), "hosted_domain_prefix": "x"}, "https"),
        ({"logout_urls": ("https://app.example.com/",)}, "logout_urls"),
        ({"hosted_domain_prefix": "My_Domain"}, "hosted_domain_prefix"),
        ({"hosted_domain_prefix": "aws-login"}, "hosted_domain_prefix"),
        ({"federation": (GOOGLE, GOOGLE), "callback_urls": ("https://a.example.com/",),
          "hosted_domain_prefix": "x"}, "unique"),
    ],
)
def test_invalid_args_raise_before_any_resource(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(DEV, **changes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "COGNITO", "type": "OIDC", "details": {}}, "COGNITO"),
        ({"name": "x" * 33, "type": "OIDC", "details": {}}, "1-32"),
        ({"name": "idp", "type": "LDAP", "details": {}}, "type"),
        ({"name": "idp", "type": "OIDC", "details": {"client_id": "c"}}, "oidc_issuer"),
        ({"name": "corp", "type": "SAML", "details": {}}, "MetadataURL"),
        ({"name": "Google", "type": "Google", "details": dict(GOOGLE.details), "attribute_mapping": {}}, "email"),
    ],
)
def test_invalid_federation_provider_raises(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FederationProvider(**kwargs)


def test_invalid_args_create_nothing() -> None:
    def program() -> None:
        Identity("identity", dataclasses.replace(DEV, refresh_token_days=0))

    with pytest.raises(ValueError, match="refresh_token_days"):
        run(program)
