"""Identity: the Cognito user pool that signs the gateway's users in and tells it their tier.

Tiers are Cognito groups: the `cognito:groups` claim of the tokens carries them to the runtime, which picks the
strongest (lowest precedence) one. The app client is public (browsers, CLIs: no secret), and the hosted UI with
federation is opt-in so a plain stack is only a pool, a client and its groups.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

import pulumi
import pulumi_aws as aws

ProviderType = Literal["OIDC", "SAML", "Google", "Facebook", "LoginWithAmazon", "SignInWithApple"]
Mfa = Literal["OFF", "OPTIONAL", "ON"]

# Cognito's limits (UpdateUserPoolClient / CreateUserPool API reference).
_PASSWORD_LENGTH = (8, 99)  # Cognito accepts 6; we never go below 8
_ID_ACCESS_MINUTES = (5, 24 * 60)
_REFRESH_DAYS = (1, 3650)
_EXPLICIT_AUTH_FLOWS = ("ALLOW_USER_SRP_AUTH", "ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH")
_OAUTH_SCOPES = ("openid", "email", "profile")

# provider_details keys Cognito rejects the provider without; SAML needs one of two metadata keys instead.
_REQUIRED_DETAILS: dict[str, tuple[str, ...]] = {
    "OIDC": ("client_id", "oidc_issuer", "authorize_scopes"),
    "Google": ("client_id", "client_secret", "authorize_scopes"),
    "Facebook": ("client_id", "client_secret", "authorize_scopes"),
    "LoginWithAmazon": ("client_id", "client_secret", "authorize_scopes"),
    "SignInWithApple": ("client_id", "team_id", "key_id", "private_key", "authorize_scopes"),
}
_SAML_METADATA = ("MetadataURL", "MetadataFile")

# Prefix domains live under amazoncognito.com: DNS label rules, and AWS reserves these words.
_DOMAIN_PREFIX = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_RESERVED_IN_DOMAIN = ("aws", "amazon", "cognito")


def _default_attribute_mapping() -> dict[str, str]:
    return {"email": "email"}


@dataclass(frozen=True)
class FederationProvider:
    """An external identity provider users may sign in with through the hosted UI."""

    name: str  # provider name as Cognito and the client's supported providers know it
    type: ProviderType
    details: Mapping[str, str]  # Cognito provider_details (client_id, authorize_scopes, MetadataURL, ...)
    attribute_mapping: Mapping[str, str] = field(default_factory=_default_attribute_mapping)

    def __post_init__(self) -> None:
        if not 1 <= len(self.name) <= 32 or self.name.upper() == "COGNITO":
            raise ValueError(f"federation provider name must be 1-32 characters and not COGNITO, got {self.name!r}")
        if self.type not in get_args(ProviderType):
            raise ValueError(f"federation provider {self.name!r}: type must be one of "
                             f"{get_args(ProviderType)}, got {self.type!r}")
        if self.type == "SAML":
            if not any(self.details.get(k) for k in _SAML_METADATA):
                raise ValueError(f"SAML provider {self.name!r} needs details {' or '.join(_SAML_METADATA)}")
        else:
            missing = [k for k in _REQUIRED_DETAILS[self.type] if not self.details.get(k)]
            if missing:
                raise ValueError(f"{self.type} provider {self.name!r} is missing details {missing}")
        if "email" not in self.attribute_mapping:
            raise ValueError(f"federation provider {self.name!r} must map the email attribute: it is the username")


@dataclass(frozen=True)
class IdentityArgs:
    """Typed settings for `Identity`; validated here so a bad stack config fails before any resource exists."""

    name: str  # physical-name prefix, e.g. "ai-gateway-dev"
    tiers: tuple[tuple[str, int], ...]  # (Cognito group name, precedence); lower precedence wins
    mfa: Mfa  # TOTP (software token) only: no SMS, so no SNS role
    deletion_protection: bool
    password_min_length: int = 12
    access_token_minutes: int = 60
    id_token_minutes: int = 60
    refresh_token_days: int = 30
    self_signup: bool = False
    federation: tuple[FederationProvider, ...] = ()
    hosted_domain_prefix: str | None = None  # <prefix>.auth.<region>.amazoncognito.com
    callback_urls: tuple[str, ...] = ()  # turns on the OAuth code flow on the client
    logout_urls: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("identity name must not be empty")
        if self.mfa not in get_args(Mfa):
            raise ValueError(f"mfa must be one of {get_args(Mfa)}, got {self.mfa!r}")
        _in_range("password_min_length", self.password_min_length, *_PASSWORD_LENGTH)
        _in_range("access_token_minutes", self.access_token_minutes, *_ID_ACCESS_MINUTES)
        _in_range("id_token_minutes", self.id_token_minutes, *_ID_ACCESS_MINUTES)
        _in_range("refresh_token_days", self.refresh_token_days, *_REFRESH_DAYS)
        self._validate_tiers()
        self._validate_hosted_ui()

    def _validate_tiers(self) -> None:
        if not self.tiers:
            raise ValueError("at least one tier is required (the runtime resolves every user to a tier)")
        names = [name for name, _ in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        for name, precedence in self.tiers:
            if not name or len(name) > 128 or any(c.isspace() for c in name):
                raise ValueError(f"tier name must be 1-128 characters without whitespace, got {name!r}")
            if isinstance(precedence, bool) or not isinstance(precedence, int) or precedence < 0:
                raise ValueError(f"tier {name!r}: precedence must be an integer >= 0, got {precedence!r}")

    def _validate_hosted_ui(self) -> None:
        provider_names = [p.name for p in self.federation]
        if len(set(provider_names)) != len(provider_names):
            raise ValueError(f"federation provider names must be unique, got {provider_names}")
        if self.federation and not self.callback_urls:
            raise ValueError("federation needs callback_urls: federated sign-in only works through the OAuth flow")
        if self.logout_urls and not self.callback_urls:
            raise ValueError("logout_urls need callback_urls: they only apply to the OAuth flow")
        if self.callback_urls and self.hosted_domain_prefix is None:
            raise ValueError("callback_urls need hosted_domain_prefix: the OAuth endpoints live on the domain")
        for url in (*self.callback_urls, *self.logout_urls):
            if not (url.startswith("https://") or re.match(r"^http://localhost(?::\d+)?(?:/|$)", url)):
                raise ValueError(f"callback/logout URL must be https (http only for localhost), got {url!r}")
        prefix = self.hosted_domain_prefix
        if prefix is not None and (
            not _DOMAIN_PREFIX.match(prefix) or any(word in prefix for word in _RESERVED_IN_DOMAIN)
        ):
            raise ValueError(f"hosted_domain_prefix must be a lowercase DNS label (a-z, 0-9, -) without "
                             f"{_RESERVED_IN_DOMAIN}, got {prefix!r}")


def _in_range(what: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an integer in [{low}, {high}], got {value!r}")


class Identity(pulumi.ComponentResource):
    """Cognito user pool, public app client, one group per tier, optional federation and hosted UI domain.

    Threat protection (user pool add-ons / advanced security) is deliberately left off: it is billed per MAU
    on the Plus tier. Emails go through Cognito's default sender (no SES to set up; low daily quota).
    """

    user_pool_id: pulumi.Output[str]
    user_pool_arn: pulumi.Output[str]
    client_id: pulumi.Output[str]
    issuer: pulumi.Output[str]
    hosted_domain: pulumi.Output[str] | None

    def __init__(self, name: str, args: IdentityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ai-gateway:identity:Identity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)

        pool = aws.cognito.UserPool(
            f"{name}-pool",
            name=args.name,
            username_attributes=["email"],  # sign in with the email address; no separate username
            username_configuration={"case_sensitive": False},
            auto_verified_attributes=["email"],
            # Keep the old, verified email active until the new one is verified: it is the username.
            user_attribute_update_settings={"attributes_require_verification_before_updates": ["email"]},
            password_policy={
                "minimum_length": args.password_min_length,
                "require_uppercase": True,
                "require_lowercase": True,
                "require_numbers": True,
                "require_symbols": True,
                "temporary_password_validity_days": 3,
            },
            admin_create_user_config={"allow_admin_create_user_only": not args.self_signup},
            mfa_configuration=args.mfa,
            software_token_mfa_configuration={"enabled": True} if args.mfa != "OFF" else None,
            account_recovery_setting={"recovery_mechanisms": [{"name": "verified_email", "priority": 1}]},
            deletion_protection="ACTIVE" if args.deletion_protection else "INACTIVE",
            tags=tags,
            opts=child,
        )

        providers = [
            aws.cognito.IdentityProvider(
                f"{name}-idp-{p.name}",
                user_pool_id=pool.id,
                provider_name=p.name,
                provider_type=p.type,
                provider_details=dict(p.details),
                attribute_mapping=dict(p.attribute_mapping),
                opts=child,
            )
            for p in args.federation
        ]

        domain = (
            aws.cognito.UserPoolDomain(f"{name}-domain", domain=args.hosted_domain_prefix, user_pool_id=pool.id,
                                       opts=child)
            if args.hosted_domain_prefix is not None
            else None
        )

        oauth = bool(args.callback_urls)  # the OAuth code flow (hosted UI, federation) is opt-in

        client = aws.cognito.UserPoolClient(
            f"{name}-client",
            name=f"{args.name}-client",
            user_pool_id=pool.id,
            generate_secret=False,  # public client: browsers and CLIs cannot keep a secret
            explicit_auth_flows=list(_EXPLICIT_AUTH_FLOWS),
            access_token_validity=args.access_token_minutes,
            id_token_validity=args.id_token_minutes,
            refresh_token_validity=args.refresh_token_days,
            token_validity_units={"access_token": "minutes", "id_token": "minutes", "refresh_token": "days"},
            prevent_user_existence_errors="ENABLED",
            enable_token_revocation=True,
            allowed_oauth_flows_user_pool_client=True if oauth else None,
            allowed_oauth_flows=["code"] if oauth else None,
            allowed_oauth_scopes=list(_OAUTH_SCOPES) if oauth else None,
            callback_urls=list(args.callback_urls) if oauth else None,
            logout_urls=list(args.logout_urls) if args.logout_urls else None,
            supported_identity_providers=["COGNITO", *(p.name for p in args.federation)] if oauth else None,
            # A client naming a provider that does not exist yet is rejected.
            opts=pulumi.ResourceOptions(parent=self, depends_on=providers),
        )

        for tier, precedence in args.tiers:
            aws.cognito.UserGroup(
                f"{name}-group-{tier}",
                name=tier,
                user_pool_id=pool.id,
                precedence=precedence,
                description=f"ai-gateway tier {tier}",
                opts=child,
            )

        # The pool's own region (arn:aws:cognito-idp:<region>:...): right even with a per-resource region or
        # provider override, and no invoke needed.
        region = pool.arn.apply(lambda arn: arn.split(":")[3])
        self.user_pool_id = pool.id
        self.user_pool_arn = pool.arn
        self.client_id = client.id
        self.issuer = pulumi.Output.concat("https://cognito-idp.", region, ".amazonaws.com/", pool.id)
        self.hosted_domain = (
            pulumi.Output.concat(domain.domain, ".auth.", region, ".amazoncognito.com") if domain is not None else None
        )
        self.register_outputs({
            "user_pool_id": self.user_pool_id,
            "user_pool_arn": self.user_pool_arn,
            "client_id": self.client_id,
            "issuer": self.issuer,
            "hosted_domain": self.hosted_domain,
        })
