"""The local Cognito pool on moto's real server, and the verifier the gateway puts in front of its tokens."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

import boto3
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from moto.utilities.utils import load_resource

from aigw.local_cognito import (
    AuthError,
    JwtVerifier,
    LocalPool,
    add_user,
    generate_password,
    identity_from_claims,
    list_users,
    provision,
    refresh,
    seed_demo_user,
    set_tier,
    sign_in,
)
from components.settings import StackSettings

pytestmark = pytest.mark.moto

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Correct-Horse-9-Battery"


@pytest.fixture(scope="module")
def settings() -> StackSettings:
    return StackSettings.from_stack_file(ROOT / "Pulumi.dev.yaml")


@pytest.fixture(scope="module")
def idp(moto_endpoint: str) -> Any:
    return boto3.client("cognito-idp", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture(scope="module")
def pool(idp: Any, settings: StackSettings) -> LocalPool:
    return provision(idp, settings)


@pytest.fixture(scope="module")
def verifier(pool: LocalPool) -> JwtVerifier:
    return JwtVerifier(pool.jwks_url, pool.issuer, pool.client_id)


def _email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.com"


@pytest.fixture
def user(idp: Any, pool: LocalPool) -> tuple[str, str]:
    """(email, sub) of a fresh user in the `free` tier."""
    email = _email()
    return email, add_user(idp, pool, email, PASSWORD, tier="free")


@pytest.fixture
def tokens(idp: Any, pool: LocalPool, user: tuple[str, str]) -> Any:
    return sign_in(idp, pool, user[0], PASSWORD)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    decode = lambda s: json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))  # noqa: E731
    return decode(header), decode(payload), signature


def _reason(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(AuthError) as caught:
        verifier.verify(token)
    assert str(caught.value) == f"unauthorized: {caught.value.reason}"
    return caught.value.reason


def _moto_private_key() -> Any:
    """The key moto signs every pool's tokens with: lets a test forge tokens moto's JWKS vouches for."""
    return jwt.algorithms.RSAAlgorithm.from_jwk(load_resource("cognitoidp/resources/jwks-private.json"))


# -- the pool


def test_provision_mirrors_the_component(idp: Any, pool: LocalPool, settings: StackSettings) -> None:
    groups = {g["GroupName"]: g["Precedence"] for g in idp.list_groups(UserPoolId=pool.user_pool_id)["Groups"]}
    assert groups == {t.name: t.precedence for t in settings.tiers} == {"free": 20, "pro": 10}
    assert pool.tiers == ("pro", "free")  # strongest first

    described = idp.describe_user_pool(UserPoolId=pool.user_pool_id)["UserPool"]
    assert described["UsernameAttributes"] == ["email"]
    policy = described["Policies"]["PasswordPolicy"]
    assert policy["MinimumLength"] == 12 and policy["RequireSymbols"] and policy["RequireUppercase"]
    assert described["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True
    mfa = idp.get_user_pool_mfa_config(UserPoolId=pool.user_pool_id)
    assert mfa["MfaConfiguration"] == settings.mfa == "OPTIONAL"
    assert mfa["SoftwareTokenMfaConfiguration"] == {"Enabled": True}

    app = idp.describe_user_pool_client(UserPoolId=pool.user_pool_id, ClientId=pool.client_id)["UserPoolClient"]
    assert "ClientSecret" not in app
    assert set(app["ExplicitAuthFlows"]) == {
        "ALLOW_USER_SRP_AUTH", "ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"
    }

    assert pool.region == "us-east-1"
    assert pool.issuer == f"https://cognito-idp.us-east-1.amazonaws.com/{pool.user_pool_id}"
    assert pool.jwks_url == f"{pool.endpoint}/{pool.user_pool_id}/.well-known/jwks.json"


def test_users_tiers_and_listing(idp: Any, pool: LocalPool, verifier: JwtVerifier) -> None:
    email = _email()
    sub = add_user(idp, pool, email, PASSWORD, tier="free")
    listed = {u["username"]: u for u in list_users(idp, pool)}
    assert listed[email] == {"username": email, "sub": sub, "tiers": ["free"], "team": None}
    idp.create_group(GroupName="team:platform", UserPoolId=pool.user_pool_id)
    idp.admin_add_user_to_group(UserPoolId=pool.user_pool_id, Username=email, GroupName="team:platform")
    listed = {u["username"]: u for u in list_users(idp, pool)}
    assert listed[email]["team"] == "platform" and listed[email]["tiers"] == ["free"]  # a team is not a tier
    idp.delete_group(GroupName="team:platform", UserPoolId=pool.user_pool_id)

    set_tier(idp, pool, email, "pro")
    assert {u["username"]: u for u in list_users(idp, pool)}[email]["tiers"] == ["pro"]
    claims = verifier.verify(sign_in(idp, pool, email, PASSWORD).id_token)
    assert identity_from_claims(claims)["groups"] == ["pro"]

    with pytest.raises(ValueError, match="not one of the tiers"):
        set_tier(idp, pool, email, "platinum")
    with pytest.raises(ValueError, match="email"):
        add_user(idp, pool, _email(), PASSWORD, email="someone-else@example.com")


def test_user_without_tier_has_no_groups_claim(idp: Any, pool: LocalPool, verifier: JwtVerifier) -> None:
    email = _email()
    add_user(idp, pool, email, PASSWORD)
    identity = identity_from_claims(verifier.verify(sign_in(idp, pool, email, PASSWORD).access_token))
    assert identity["groups"] is None


def test_sign_in_refusals(idp: Any, pool: LocalPool, user: tuple[str, str]) -> None:
    with pytest.raises(AuthError) as caught:
        sign_in(idp, pool, user[0], PASSWORD + "x")
    assert caught.value.reason == "bad_credentials"


def test_seed_demo_user(idp: Any, pool: LocalPool, settings: StackSettings, verifier: JwtVerifier) -> None:
    username, password = seed_demo_user(idp, pool, settings)
    again, password2 = seed_demo_user(idp, pool, settings)  # idempotent: same user, fresh password
    assert again == username and password2 != password
    tokens = sign_in(idp, pool, username, password2)
    assert identity_from_claims(verifier.verify(tokens.id_token))["groups"] == [settings.default_tier]
    assert len(password) >= 12 and len({generate_password() for _ in range(20)}) == 20


# -- valid tokens


def test_tokens_verify_and_name_the_user(
    verifier: JwtVerifier, tokens: Any, user: tuple[str, str], pool: LocalPool
) -> None:
    email, sub = user
    assert tokens.expires_in > 0 and tokens.refresh_token

    id_identity = identity_from_claims(verifier.verify(tokens.id_token))
    assert id_identity["sub"] == sub
    assert id_identity["username"] == sub  # email-username pools: cognito:username is the user's GUID
    assert id_identity["claims"]["email"] == email
    assert id_identity["groups"] == ["free"]

    access_identity = identity_from_claims(verifier.verify(tokens.access_token))
    assert access_identity["sub"] == sub and access_identity["username"] == sub
    assert access_identity["groups"] == ["free"]
    assert access_identity["claims"]["client_id"] == pool.client_id


def test_refresh_gives_tokens_that_verify(idp: Any, pool: LocalPool, verifier: JwtVerifier, tokens: Any) -> None:
    renewed = refresh(idp, pool, tokens.refresh_token)
    assert renewed.refresh_token == tokens.refresh_token
    assert verifier.verify(renewed.access_token)["token_use"] == "access"
    assert verifier.verify(renewed.id_token)["token_use"] == "id"


# -- refused tokens


@pytest.mark.parametrize("junk", ["", "abc", "a.b", "a.b.c.d", "!!!.e30.x", "e30", "W10.e30.", 42, None])
def test_malformed(verifier: JwtVerifier, junk: Any) -> None:
    assert _reason(verifier, junk) == "malformed"


def test_tampered_payload(verifier: JwtVerifier, tokens: Any) -> None:
    header, _, signature = tokens.access_token.split(".")
    claims = _segments(tokens.access_token)[1]
    claims["cognito:groups"] = ["pro"]
    forged = f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
    assert _reason(verifier, forged) == "bad_signature"


def test_alg_none(verifier: JwtVerifier, tokens: Any) -> None:
    claims = _segments(tokens.id_token)[1]
    for alg in ("none", "None", "NONE"):
        header = _b64(json.dumps({"alg": alg, "kid": "dummy", "typ": "JWT"}).encode())
        assert _reason(verifier, f"{header}.{_b64(json.dumps(claims).encode())}.") == "unsupported_alg"


def test_hs256_key_confusion(verifier: JwtVerifier, tokens: Any) -> None:
    """HS256 with the RSA *public* key as the HMAC secret: a naive `decode(key=public_pem)` would accept it."""
    public = _moto_private_key().public_key()
    claims = _segments(tokens.id_token)[1]
    header = _b64(json.dumps({"alg": "HS256", "kid": "dummy", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    for secret in (
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
    ):
        signature = _b64(hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest())
        assert _reason(verifier, f"{header}.{body}.{signature}") == "unsupported_alg"


def test_other_rsa_key_same_kid(verifier: JwtVerifier, tokens: Any) -> None:
    claims = _segments(tokens.id_token)[1]
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, impostor, algorithm="RS256", headers={"kid": "dummy"})
    assert _reason(verifier, forged) == "bad_signature"


def test_unknown_kid_refetches_once(pool: LocalPool, tokens: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = JwtVerifier(pool.jwks_url, pool.issuer, pool.client_id, refetch_interval_s=0)
    fetches: list[int] = []
    fetch = verifier._fetch
    monkeypatch.setattr(verifier, "_fetch", lambda: fetches.append(1) or fetch())
    verifier.verify(tokens.id_token)
    verifier.verify(tokens.access_token)
    assert len(fetches) == 1  # cached
    forged = jwt.encode(_segments(tokens.id_token)[1], _moto_private_key(), algorithm="RS256",
                        headers={"kid": "rotated"})
    assert _reason(verifier, forged) == "unknown_key"
    assert len(fetches) == 2  # one refetch for the unknown kid, then refused


def test_token_from_another_pool(idp: Any, settings: StackSettings, verifier: JwtVerifier) -> None:
    other = provision(idp, settings, name="ai-gateway-other")
    email = _email()
    add_user(idp, other, email, PASSWORD, tier="pro")
    foreign = sign_in(idp, other, email, PASSWORD)
    # moto signs every pool with the same key: only the issuer tells them apart (as a verifier must check).
    assert _reason(verifier, foreign.id_token) == "wrong_issuer"
    assert _reason(verifier, foreign.access_token) == "wrong_issuer"


def test_token_for_another_client(idp: Any, pool: LocalPool, verifier: JwtVerifier, user: tuple[str, str]) -> None:
    other_client = idp.create_user_pool_client(
        UserPoolId=pool.user_pool_id, ClientName="another-app", ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH"]
    )["UserPoolClient"]["ClientId"]
    elsewhere = dataclasses.replace(pool, client_id=other_client)
    foreign = sign_in(idp, elsewhere, user[0], PASSWORD)
    assert _reason(verifier, foreign.id_token) == "wrong_client"  # aud
    assert _reason(verifier, foreign.access_token) == "wrong_client"  # client_id


def test_expired(pool: LocalPool, tokens: Any) -> None:
    exp = _segments(tokens.access_token)[1]["exp"]
    late = JwtVerifier(pool.jwks_url, pool.issuer, pool.client_id, clock=lambda: exp + 1)
    assert _reason(late, tokens.access_token) == "expired"
    assert _reason(late, tokens.id_token) == "expired"
    lenient = JwtVerifier(pool.jwks_url, pool.issuer, pool.client_id, clock=lambda: exp + 1, leeway_s=5)
    assert lenient.verify(tokens.access_token)["sub"]


@pytest.mark.parametrize("token_use", ["refresh", None, "ID"])
def test_wrong_token_use(verifier: JwtVerifier, tokens: Any, token_use: str | None) -> None:
    claims = _segments(tokens.id_token)[1]
    claims["token_use"] = token_use
    forged = jwt.encode(claims, _moto_private_key(), algorithm="RS256", headers={"kid": "dummy"})
    assert _reason(verifier, forged) == "wrong_token_use"


def test_missing_exp_is_refused(verifier: JwtVerifier, tokens: Any) -> None:
    claims = _segments(tokens.id_token)[1]
    del claims["exp"]
    forged = jwt.encode(claims, _moto_private_key(), algorithm="RS256", headers={"kid": "dummy"})
    assert _reason(verifier, forged) == "malformed"


def test_jwks_unreachable() -> None:
    dead = JwtVerifier("http://127.0.0.1:9/none/.well-known/jwks.json", "iss", "client", timeout_s=1)
    header = _b64(json.dumps({"alg": "RS256", "kid": "dummy"}).encode())
    assert _reason(dead, f"{header}.e30.c2ln") == "jwks_unavailable"


def test_verifier_refuses_non_http_jwks_url() -> None:
    with pytest.raises(ValueError, match="http"):
        JwtVerifier("file:///etc/passwd", "iss", "client")

