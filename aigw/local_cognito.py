"""A local Cognito user pool on moto's server, and the token checks the gateway makes on its tokens.

`provision` mirrors what `components.identity.Identity` deploys (email usernames, the password policy, a public
client with SRP, password and refresh flows, one group per tier with its precedence), so the local gateway
signs users in exactly as the deployed one does. `JwtVerifier` checks the tokens as a resource server must:
RS256 only, key from the pool's JWKS, issuer, expiry, token use and client.

moto facts this relies on (moto 5.x, `moto/cognitoidp`):
- tokens carry `iss = https://cognito-idp.<region>.amazonaws.com/<pool id>`, whatever endpoint served them;
- the JWKS is served unsigned at `<endpoint>/<pool id>/.well-known/jwks.json`;
- every pool of every region signs with the same bundled RSA key (`kid` "dummy"), so on moto a token of
  another pool passes the signature check and only the issuer check rejects it (as it must on AWS too).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import string
import threading
import time
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.algorithms import RSAAlgorithm

from aigw.events_server import AuthError as EventsAuthError
from components.settings import StackSettings
from runtime.budgets import team_of
from runtime.errors import GatewayError

# As `components.identity`: Cognito accepts 6, the component never goes below 8 and defaults to 12.
PASSWORD_MIN_LENGTH = 12
EXPLICIT_AUTH_FLOWS = ("ALLOW_USER_SRP_AUTH", "ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH")
ACCESS_TOKEN_MINUTES = 60
ID_TOKEN_MINUTES = 60
REFRESH_TOKEN_DAYS = 30
DEMO_USERNAME = "demo@example.com"

# The symbols Cognito's password policy counts (and moto's check of it).
_PASSWORD_SYMBOLS = "^$*.[]{}()?\"!@#%&/\\,><':;|_~`=+-"
# Symbols that mean nothing to a shell, inside or outside quotes: the demo password is typed and pasted.
SHELL_SAFE_SYMBOLS = "-_.,+=@%:"
_MAX_TOKEN_CHARS = 16_384  # far above any Cognito token; bounds the work spent on junk
_MAX_JWKS_BYTES = 64 * 1024
_ACCEPTED_ALG = "RS256"
_TOKEN_USES = ("id", "access")


# -- errors


class AuthError(EventsAuthError, GatewayError):
    """A token (or sign-in) that does not authenticate anyone. `reason` is a short code, safe to return."""

    REASONS = frozenset({
        "malformed",  # not a compact JWS with JSON header and payload
        "unsupported_alg",  # anything but RS256: `none`, HS256 (key confusion), ...
        "unknown_key",  # `kid` not in the pool's JWKS, even after refetching it
        "bad_signature",
        "wrong_issuer",
        "expired",
        "not_yet_valid",
        "wrong_token_use",  # `token_use` is neither `id` nor `access`
        "wrong_client",  # `aud` (id token) / `client_id` (access token) is not this app client
        "jwks_unavailable",  # the pool's keys could not be fetched: not the caller's fault
        "bad_credentials",  # sign-in refused
        "challenge_required",  # sign-in needs another step (new password, MFA) this helper does not do
    })

    def __init__(self, reason: str) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown AuthError reason {reason!r}")
        super().__init__(f"unauthorized: {reason}")
        self.reason = reason


# -- the pool


@dataclass(frozen=True)
class LocalPool:
    user_pool_id: str
    client_id: str
    region: str
    endpoint: str  # moto's URL, e.g. http://127.0.0.1:5000
    issuer: str  # the `iss` moto puts in the pool's tokens
    jwks_url: str
    tiers: tuple[str, ...] = ()  # tier group names, strongest (lowest precedence) first


@dataclass(frozen=True)
class Tokens:
    id_token: str
    access_token: str
    refresh_token: str
    expires_in: int


def issuer_for(region: str, user_pool_id: str) -> str:
    """The issuer of a pool's tokens, on AWS and on moto alike (moto ignores its own endpoint here)."""
    return f"https://cognito-idp.{region}.amazonaws.com/{user_pool_id}"


def provision(client: Any, settings: StackSettings, *, name: str = "ai-gateway-dev") -> LocalPool:
    """Create the pool, its public client and one group per tier, as the deployed stack has them.

    `client` is a boto3 `cognito-idp` client whose `endpoint_url` is moto's server.
    """
    pool_args: dict[str, Any] = {
        "PoolName": name,
        "UsernameAttributes": ["email"],
        "UsernameConfiguration": {"CaseSensitive": False},
        "AutoVerifiedAttributes": ["email"],
        "UserAttributeUpdateSettings": {"AttributesRequireVerificationBeforeUpdate": ["email"]},
        "Policies": {
            "PasswordPolicy": {
                "MinimumLength": PASSWORD_MIN_LENGTH,
                "RequireUppercase": True,
                "RequireLowercase": True,
                "RequireNumbers": True,
                "RequireSymbols": True,
                "TemporaryPasswordValidityDays": 3,
            }
        },
        "AdminCreateUserConfig": {"AllowAdminCreateUserOnly": True},
        "MfaConfiguration": "OFF",  # set below, once TOTP is enabled (Cognito refuses ON/OPTIONAL without it)
        "AccountRecoverySetting": {"RecoveryMechanisms": [{"Name": "verified_email", "Priority": 1}]},
        "DeletionProtection": "ACTIVE" if settings.deletion_protection else "INACTIVE",
    }
    if settings.tags:
        pool_args["UserPoolTags"] = dict(settings.tags)
    user_pool_id = client.create_user_pool(**pool_args)["UserPool"]["Id"]
    if settings.mfa != "OFF":
        client.set_user_pool_mfa_config(
            UserPoolId=user_pool_id,
            SoftwareTokenMfaConfiguration={"Enabled": True},
            MfaConfiguration=settings.mfa,
        )

    client_id = client.create_user_pool_client(
        UserPoolId=user_pool_id,
        ClientName=f"{name}-client",
        GenerateSecret=False,  # public client: browsers and CLIs cannot keep a secret
        ExplicitAuthFlows=list(EXPLICIT_AUTH_FLOWS),
        AccessTokenValidity=ACCESS_TOKEN_MINUTES,
        IdTokenValidity=ID_TOKEN_MINUTES,
        RefreshTokenValidity=REFRESH_TOKEN_DAYS,
        TokenValidityUnits={"AccessToken": "minutes", "IdToken": "minutes", "RefreshToken": "days"},
        PreventUserExistenceErrors="ENABLED",
        EnableTokenRevocation=True,
    )["UserPoolClient"]["ClientId"]

    _ensure_tier_groups(client, user_pool_id, settings)
    return _local_pool(client, user_pool_id, client_id, settings)


def existing_pool(client: Any, settings: StackSettings, *, name: str, among: Collection[str]) -> LocalPool | None:
    """The pool `provision` made under `name`, one of the pool ids `among` (those restored from a snapshot), its
    tier groups brought in line with today's settings; None when there is none."""
    pools = client.list_user_pools(MaxResults=60)["UserPools"]
    user_pool_id = next((p["Id"] for p in pools if p["Name"] == name and p["Id"] in among), None)
    if user_pool_id is None:
        return None
    clients = client.list_user_pool_clients(UserPoolId=user_pool_id, MaxResults=60)["UserPoolClients"]
    client_id = next((c["ClientId"] for c in clients if c["ClientName"] == f"{name}-client"), None)
    if client_id is None:
        return None
    _ensure_tier_groups(client, user_pool_id, settings)
    return _local_pool(client, user_pool_id, client_id, settings)


def _ensure_tier_groups(client: Any, user_pool_id: str, settings: StackSettings) -> None:
    """One group per tier, with the tier's precedence (a tier added to the stack file since the last run too)."""
    groups = {g["GroupName"]: g for g in client.list_groups(UserPoolId=user_pool_id, Limit=60)["Groups"]}
    for tier in settings.tiers:
        args = {"GroupName": tier.name, "UserPoolId": user_pool_id, "Precedence": tier.precedence,
                "Description": f"ai-gateway tier {tier.name}"}
        if tier.name not in groups:
            client.create_group(**args)
        elif groups[tier.name].get("Precedence") != tier.precedence:
            client.update_group(**args)


def _local_pool(client: Any, user_pool_id: str, client_id: str, settings: StackSettings) -> LocalPool:
    region = client.meta.region_name
    endpoint = client.meta.endpoint_url.rstrip("/")
    return LocalPool(
        user_pool_id=user_pool_id,
        client_id=client_id,
        region=region,
        endpoint=endpoint,
        issuer=issuer_for(region, user_pool_id),
        jwks_url=f"{endpoint}/{user_pool_id}/.well-known/jwks.json",
        tiers=tuple(t.name for t in sorted(settings.tiers, key=lambda t: t.precedence)),
    )


# -- users


def add_user(
    client: Any, pool: LocalPool, username: str, password: str, *, tier: str | None = None, email: str | None = None
) -> str:
    """Create a confirmed user with a permanent password (and its tier group); returns its `sub`.

    The pool signs in by email, so `username` is the email address; `email`, if given, must be the same.
    """
    if email is not None and email.casefold() != username.casefold():
        raise ValueError("the pool's username is the email address: pass email=None or the same address")
    if tier is not None:
        _check_tier(pool, tier)
    user = client.admin_create_user(
        UserPoolId=pool.user_pool_id,
        Username=username,
        UserAttributes=[{"Name": "email", "Value": username}, {"Name": "email_verified", "Value": "true"}],
        MessageAction="SUPPRESS",
    )["User"]
    client.admin_set_user_password(UserPoolId=pool.user_pool_id, Username=username, Password=password,
                                   Permanent=True)
    if tier is not None:
        client.admin_add_user_to_group(UserPoolId=pool.user_pool_id, Username=username, GroupName=tier)
    attributes = {a["Name"]: a["Value"] for a in user.get("Attributes", [])}
    return attributes.get("sub") or user["Username"]


def set_tier(client: Any, pool: LocalPool, username: str, tier: str) -> None:
    """Put the user in `tier`'s group and out of every other tier group (other groups are left alone)."""
    _check_tier(pool, tier)
    current = {
        g["GroupName"]
        for g in client.admin_list_groups_for_user(UserPoolId=pool.user_pool_id, Username=username)["Groups"]
    }
    for other in current & set(pool.tiers) - {tier}:
        client.admin_remove_user_from_group(UserPoolId=pool.user_pool_id, Username=username, GroupName=other)
    if tier not in current:
        client.admin_add_user_to_group(UserPoolId=pool.user_pool_id, Username=username, GroupName=tier)


def list_users(client: Any, pool: LocalPool) -> list[dict[str, Any]]:
    """Every user as `{username, sub, tiers, team}`: `username` is the sign-in email, `tiers` strongest first,
    `team` the `team:<name>` group's name (or None)."""

    rank = {name: i for i, name in enumerate(pool.tiers)}
    users: list[dict[str, Any]] = []
    for page in client.get_paginator("list_users").paginate(UserPoolId=pool.user_pool_id):
        for user in page["Users"]:
            attributes = {a["Name"]: a["Value"] for a in user.get("Attributes", [])}
            groups = client.admin_list_groups_for_user(UserPoolId=pool.user_pool_id,
                                                       Username=user["Username"])["Groups"]
            tiers = sorted((g["GroupName"] for g in groups if g["GroupName"] in rank), key=rank.__getitem__)
            users.append({
                "username": attributes.get("email", user["Username"]),
                "sub": attributes.get("sub", user["Username"]),
                "tiers": tiers,
                "team": team_of([g["GroupName"] for g in groups]),
            })
    return users


def sign_in(client: Any, pool: LocalPool, username: str, password: str) -> Tokens:
    """USER_PASSWORD_AUTH; raises `AuthError` for refused credentials or a further challenge."""
    result = _initiate(client, pool, "USER_PASSWORD_AUTH", {"USERNAME": username, "PASSWORD": password})
    return _tokens(result, refresh_token=None)


def refresh(client: Any, pool: LocalPool, refresh_token: str) -> Tokens:
    """New id and access tokens from a refresh token (Cognito keeps the refresh token itself)."""
    result = _initiate(client, pool, "REFRESH_TOKEN_AUTH", {"REFRESH_TOKEN": refresh_token})
    return _tokens(result, refresh_token=refresh_token)


def seed_demo_user(
    client: Any, pool: LocalPool, settings: StackSettings, *, username: str = DEMO_USERNAME,
    password: str | None = None, reset_tier: bool = True,
) -> tuple[str, str]:
    """A user in the default tier with `password` (default: a fresh strong one, with only shell-safe symbols);
    an existing one is given that password and, with `reset_tier`, put back in the default tier (a restored
    pool keeps the tier an operator gave the demo user)."""
    password = password or generate_password(symbols=SHELL_SAFE_SYMBOLS)
    try:
        add_user(client, pool, username, password, tier=settings.default_tier)
    except client.exceptions.UsernameExistsException:
        client.admin_set_user_password(UserPoolId=pool.user_pool_id, Username=username, Password=password,
                                       Permanent=True)
        if reset_tier:
            set_tier(client, pool, username, settings.default_tier)
    return username, password


def generate_password(length: int = 24, *, symbols: str = _PASSWORD_SYMBOLS) -> str:
    """A random password meeting the pool's policy (upper, lower, digit, symbol, >= the minimum length)."""
    if length < PASSWORD_MIN_LENGTH:
        raise ValueError(f"password length must be at least {PASSWORD_MIN_LENGTH}")
    classes = (string.ascii_uppercase, string.ascii_lowercase, string.digits, symbols)
    alphabet = "".join(classes)
    chars = [secrets.choice(c) for c in classes] + [secrets.choice(alphabet) for _ in range(length - len(classes))]
    secrets.SystemRandom().shuffle(chars)
    return "".join(chars)


def _check_tier(pool: LocalPool, tier: str) -> None:
    if tier not in pool.tiers:
        raise ValueError(f"{tier!r} is not one of the tiers {list(pool.tiers)}")


def _initiate(client: Any, pool: LocalPool, flow: str, parameters: dict[str, str]) -> dict[str, Any]:
    refused = (client.exceptions.NotAuthorizedException, client.exceptions.UserNotFoundException)
    try:
        result = client.initiate_auth(ClientId=pool.client_id, AuthFlow=flow, AuthParameters=parameters)
    except refused:
        raise AuthError("bad_credentials") from None
    if "AuthenticationResult" not in result:
        raise AuthError("challenge_required")
    return result["AuthenticationResult"]


def _tokens(result: Mapping[str, Any], *, refresh_token: str | None) -> Tokens:
    return Tokens(
        id_token=result["IdToken"],
        access_token=result["AccessToken"],
        refresh_token=result.get("RefreshToken") or refresh_token or "",
        expires_in=int(result["ExpiresIn"]),
    )


# -- token verification


class JwtVerifier:
    """Verifies Cognito id and access tokens of one pool and app client.

    Only RS256 is accepted, whatever the token's header claims, and only with an RSA key from the pool's
    JWKS: `alg: none` and HS256 signed with the public key (key confusion) are refused before any key is used.
    The JWKS is fetched over HTTP once and cached; an unknown `kid` refetches it (key rotation), at most once
    per `refetch_interval_s` so junk tokens cannot make the verifier hammer the JWKS endpoint.
    """

    def __init__(
        self,
        jwks_url: str,
        issuer: str,
        client_id: str,
        *,
        clock: Callable[[], float] = time.time,
        leeway_s: float = 0,
        timeout_s: float = 5.0,
        refetch_interval_s: float = 10.0,
    ) -> None:
        if not jwks_url.startswith(("https://", "http://")):
            raise ValueError(f"jwks_url must be an http(s) URL, got {jwks_url!r}")
        self.jwks_url, self.issuer, self.client_id = jwks_url, issuer, client_id
        self._clock, self._leeway = clock, leeway_s
        self._timeout, self._refetch_interval = timeout_s, refetch_interval_s
        self._keys: dict[str, Any] | None = None
        self._fetched_at = float("-inf")  # time.monotonic() of the last fetch
        self._lock = threading.Lock()

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims if it is a valid id or access token of this pool and client; else `AuthError`."""
        header = _header(token)
        if header.get("alg") != _ACCEPTED_ALG:
            raise AuthError("unsupported_alg")
        if "crit" in header:  # no extension is understood here, so none may be critical
            raise AuthError("malformed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("unknown_key")
        key = self._key(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[_ACCEPTED_ALG],
                options={
                    "verify_signature": True,
                    # Claims are checked below, against the injectable clock and with reasons of our own.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "require": [],
                },
            )
        except jwt.InvalidSignatureError:
            raise AuthError("bad_signature") from None
        except jwt.InvalidTokenError:
            raise AuthError("malformed") from None
        if not isinstance(claims, dict):
            raise AuthError("malformed")
        self._check_claims(claims)
        return claims

    def _check_claims(self, claims: dict[str, Any]) -> None:
        if claims.get("iss") != self.issuer:
            raise AuthError("wrong_issuer")
        now = self._clock()
        exp = claims.get("exp")
        if not _is_number(exp):
            raise AuthError("malformed")
        if now >= exp + self._leeway:
            raise AuthError("expired")
        nbf = claims.get("nbf")
        if nbf is not None and (not _is_number(nbf) or now + self._leeway < nbf):
            raise AuthError("not_yet_valid")
        token_use = claims.get("token_use")
        if token_use not in _TOKEN_USES:
            raise AuthError("wrong_token_use")
        client = claims.get("aud") if token_use == "id" else claims.get("client_id")
        if not isinstance(client, str) or client != self.client_id:
            raise AuthError("wrong_client")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise AuthError("malformed")

    def _key(self, kid: str) -> Any:
        with self._lock:
            keys = self._keys
            if keys is None or (kid not in keys and time.monotonic() - self._fetched_at >= self._refetch_interval):
                keys = self._keys = self._fetch()
            key = keys.get(kid)
        if key is None:
            raise AuthError("unknown_key")
        return key

    def _fetch(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(self.jwks_url, timeout=self._timeout) as response:  # http(s): __init__
                body = response.read(_MAX_JWKS_BYTES + 1)
            if len(body) > _MAX_JWKS_BYTES:
                raise ValueError("JWKS too large")
            document = json.loads(body)
        except (OSError, ValueError):  # urllib.error.URLError is an OSError; JSONDecodeError a ValueError
            raise AuthError("jwks_unavailable") from None
        finally:
            self._fetched_at = time.monotonic()
        keys: dict[str, Any] = {}
        for jwk in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig":
                continue
            if jwk.get("alg", _ACCEPTED_ALG) != _ACCEPTED_ALG or not isinstance(jwk.get("kid"), str):
                continue
            try:
                keys[jwk["kid"]] = RSAAlgorithm.from_jwk(jwk)
            except (jwt.InvalidKeyError, ValueError, KeyError, TypeError):
                continue  # one unusable key does not make the others unusable
        return keys


def identity_from_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    """Who a verified token names: `sub`, `username`, `groups` (list, or None without groups), `claims`."""
    username_claim = "cognito:username" if claims.get("token_use") == "id" else "username"
    groups = claims.get("cognito:groups")
    return {
        "sub": claims.get("sub"),
        "username": claims.get(username_claim),
        "groups": [g for g in groups if isinstance(g, str)] if isinstance(groups, list) else None,
        "claims": dict(claims),
    }


def _header(token: object) -> dict[str, Any]:
    if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS or token.count(".") != 2:
        raise AuthError("malformed")
    encoded = token.split(".", 1)[0]
    try:
        header = json.loads(_b64url_decode(encoded))
    except (ValueError, binascii.Error):
        raise AuthError("malformed") from None
    if not isinstance(header, dict):
        raise AuthError("malformed")
    return header


def _b64url_decode(segment: str) -> bytes:
    if not segment or any(c not in _B64URL for c in segment):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


_B64URL = frozenset(string.ascii_letters + string.digits + "-_")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


__all__ = [
    "AuthError",
    "JwtVerifier",
    "LocalPool",
    "Tokens",
    "add_user",
    "generate_password",
    "identity_from_claims",
    "issuer_for",
    "list_users",
    "provision",
    "refresh",
    "seed_demo_user",
    "set_tier",
    "sign_in",
]
