"""Bearer tokens: HS256 minting and verification, Cognito's RS256 access and ID tokens, scopes, the header.

The RS256 tests sign with keys made here and hand verify_token a dictionary of public keys in place of the
JWKS over HTTP (tests/integration/test_cognito_auth.py covers that part).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from chalicelib.api import principal_from
from chalicelib.auth import (
    ADMIN,
    READ,
    WRITE,
    CognitoConfig,
    KeySetUnavailable,
    Principal,
    bearer_token,
    mint_token,
    verify_token,
)
from chalicelib.errors import Forbidden, Unauthorized
from chalicelib.settings import Settings

pytestmark = pytest.mark.unit

SECRET = "unit-test-secret-0123456789abcdef0123456789"  # ≥32 bytes, as HS256 wants
SETTINGS = Settings(jwt_secret=SECRET)


def signed(claims: dict, secret: str = SECRET) -> str:
    """A token with exactly these claims."""
    return jwt.encode(claims, secret, algorithm="HS256")


def later(seconds: int = 600) -> int:
    return int(time.time()) + seconds


def test_minted_token_verifies_to_tenant_and_scopes() -> None:
    principal = verify_token(mint_token(SETTINGS, "acme", (READ, WRITE)), SETTINGS)

    assert principal == Principal(tenant="acme", scopes=frozenset({READ, WRITE}), subject="dev:acme")


def test_minted_token_with_issuer_and_audience_round_trips() -> None:
    settings = Settings(jwt_secret=SECRET, jwt_issuer="https://auth.example.com", jwt_audience="mailpipe")

    principal = verify_token(mint_token(settings, "acme", (ADMIN,)), settings)

    assert principal.tenant == "acme"
    assert principal.scopes == frozenset({ADMIN})


def test_token_for_another_audience_is_unauthorized() -> None:
    minted = mint_token(Settings(jwt_secret=SECRET, jwt_audience="other-app"), "acme")

    with pytest.raises(Unauthorized):
        verify_token(minted, Settings(jwt_secret=SECRET, jwt_audience="mailpipe"))


def test_expired_token_is_unauthorized() -> None:
    with pytest.raises(Unauthorized, match="ExpiredSignatureError"):
        verify_token(mint_token(SETTINGS, "acme", ttl_s=-60), SETTINGS)


def test_token_signed_with_another_secret_is_unauthorized() -> None:
    other = Settings(jwt_secret="another-secret-0123456789abcdef0123456789")

    with pytest.raises(Unauthorized, match="InvalidSignatureError"):
        verify_token(mint_token(other, "acme"), SETTINGS)


@pytest.mark.parametrize("tenant_claims", [{}, {"tenant": ""}, {"tenant": 42}, {"tenant": ["acme"]}])
def test_token_without_a_string_tenant_is_unauthorized(tenant_claims: dict) -> None:
    token = signed({"scope": READ, "exp": later(), **tenant_claims})

    with pytest.raises(Unauthorized, match="no tenant"):
        verify_token(token, SETTINGS)


def test_cognito_custom_tenant_claim_is_accepted() -> None:
    principal = verify_token(signed({"custom:tenant": "globex", "scopes": [READ], "exp": later()}), SETTINGS)

    assert principal.tenant == "globex"
    assert principal.scopes == frozenset({READ})


def test_token_without_exp_is_unauthorized() -> None:
    with pytest.raises(Unauthorized):
        verify_token(signed({"tenant": "acme", "scope": READ}), SETTINGS)


@pytest.mark.parametrize("garbage", ["", "not-a-token", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.", "Bearer x"])
def test_garbage_is_unauthorized(garbage: str) -> None:
    with pytest.raises(Unauthorized):
        verify_token(garbage, SETTINGS)


def test_unsigned_alg_none_token_is_unauthorized() -> None:
    token = jwt.encode({"tenant": "acme", "scope": ADMIN, "exp": later()}, key=None, algorithm="none")

    with pytest.raises(Unauthorized):
        verify_token(token, SETTINGS)


def test_server_without_a_secret_refuses_every_token() -> None:
    with pytest.raises(Unauthorized, match="no JWT secret"):
        verify_token(mint_token(SETTINGS, "acme"), Settings(jwt_secret=""))


def test_token_without_scope_claim_has_no_scopes() -> None:
    assert verify_token(signed({"tenant": "acme", "exp": later()}), SETTINGS).scopes == frozenset()


def test_require_passes_for_a_held_scope() -> None:
    principal = Principal(tenant="acme", scopes=frozenset({READ}))

    assert principal.require(READ) is None


def test_require_raises_forbidden_for_a_missing_scope() -> None:
    principal = Principal(tenant="acme", scopes=frozenset({READ}))

    with pytest.raises(Forbidden, match=WRITE):
        principal.require(WRITE)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc.def.ghi", "abc.def.ghi"),
        ("BEARER abc", "abc"),
        ("  Bearer    abc  ", "abc"),
        ("Basic dXNlcjpwYXNz", ""),
        ("Bearer", ""),
        ("Bearer ", ""),
        ("abc.def.ghi", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_bearer_token_parsing(header: str | None, token: str) -> None:
    assert bearer_token(header) == token


# --- scopes given as a list --------------------------------------------------------------------------------------


def test_each_element_of_a_scope_list_is_one_scope() -> None:
    # "campaigns:read admin" as one element is one (unknown) scope, not two: it must not grant admin.
    principal = verify_token(
        signed({"tenant": "acme", "scopes": [READ, "campaigns:read admin"], "exp": later()}), SETTINGS
    )

    assert principal.scopes == frozenset({READ})


def test_scopes_survive_the_authorizer_context_round_trip() -> None:
    principal = verify_token(signed({"tenant": "acme", "scopes": ["campaigns:read admin"], "exp": later()}), SETTINGS)
    # app.py's token_authorizer passes scopes space-joined; api.principal_from splits them again.
    request = SimpleNamespace(
        context={"authorizer": {"tenant": principal.tenant, "scopes": " ".join(principal.scopes)}}
    )

    assert principal_from(request).scopes == frozenset()


def test_unknown_scopes_are_dropped_from_a_scope_string() -> None:
    principal = verify_token(signed({"tenant": "acme", "scope": f"openid {WRITE} profile", "exp": later()}), SETTINGS)

    assert principal.scopes == frozenset({WRITE})


def test_an_unsupported_algorithm_setting_refuses_every_token() -> None:
    with pytest.raises(Unauthorized, match="unsupported"):
        verify_token(mint_token(SETTINGS, "acme"), Settings(jwt_secret=SECRET, jwt_algorithm="ES256"))


# --- Cognito (RS256) ---------------------------------------------------------------------------------------------

REGION = "eu-west-1"
POOL = "eu-west-1_AbCdEf123"
ISSUER = f"https://cognito-idp.{REGION}.amazonaws.com/{POOL}"
CLIENT = "7d2nd8m4rq5jc1ikg2v8g1k3a0"
OTHER_CLIENT = "3q9rrm2gq0u6v1dl9bb8lqq0ns"
RESOURCE_SERVER = "https://api.mailpipe.example"
KID = "kid-current"
COGNITO = Settings(
    jwt_algorithm="RS256",
    jwt_issuer=ISSUER,
    jwt_client_ids=f"{OTHER_CLIENT}, {CLIENT}",
    jwt_resource_server=RESOURCE_SERVER,
)


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


PRIVATE_KEY = new_key()
ROGUE_KEY = new_key()


class FakeKeys:
    """The JWKS as a dictionary; records each kid asked for."""

    def __init__(self, keys: dict[str, Any]) -> None:
        self.keys = keys
        self.asked: list[str] = []

    def key_for(self, kid: str) -> Any:
        self.asked.append(kid)
        if kid not in self.keys:
            raise Unauthorized("invalid token: unknown signing key")
        return self.keys[kid]


class UnreachableKeys:
    """A JWKS endpoint that is down."""

    def key_for(self, kid: str) -> Any:
        raise KeySetUnavailable("JWKS endpoint unreachable")


def fake_keys() -> FakeKeys:
    return FakeKeys({KID: PRIVATE_KEY.public_key()})


def cognito_token(claims: dict, key: rsa.RSAPrivateKey = PRIVATE_KEY, kid: str | None = KID) -> str:
    headers = {"typ": None} if kid is None else {"kid": kid, "typ": None}  # Cognito's header is only kid and alg
    return jwt.encode(claims, key, algorithm="RS256", headers=headers)


def access_claims(**overrides: object) -> dict:
    now = int(time.time())
    claims = {
        "sub": "11111111-2222-3333-4444-555555555555",
        "iss": ISSUER,
        "client_id": CLIENT,
        "token_use": "access",
        "scope": f"openid {RESOURCE_SERVER}/{READ} {RESOURCE_SERVER}/{WRITE} aws.cognito.signin.user.admin",
        "tenant": "acme",
        "auth_time": now,
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def id_claims(**overrides: object) -> dict:
    now = int(time.time())
    claims = {
        "sub": "11111111-2222-3333-4444-555555555555",
        "iss": ISSUER,
        "aud": CLIENT,
        "token_use": "id",
        "cognito:groups": [READ, ADMIN, "support-staff"],
        "custom:tenant": "globex",
        "auth_time": now,
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def verify_cognito(token: str, settings: Settings = COGNITO, keys: Any = None) -> Principal:
    return verify_token(token, settings, keys=keys if keys is not None else fake_keys())


def test_access_token_maps_resource_server_scopes_and_ignores_the_rest() -> None:
    principal = verify_cognito(cognito_token(access_claims()))

    assert principal == Principal(
        tenant="acme", scopes=frozenset({READ, WRITE}), subject="11111111-2222-3333-4444-555555555555"
    )


def test_access_token_tenant_may_be_custom_tenant() -> None:
    principal = verify_cognito(cognito_token(access_claims(tenant=None, **{"custom:tenant": "initech"})))

    assert principal.tenant == "initech"


def test_access_token_scopes_of_another_resource_server_or_bare_names_grant_nothing() -> None:
    scope = f"https://other.example/{ADMIN} {ADMIN} {RESOURCE_SERVER}{ADMIN} {RESOURCE_SERVER}/{READ}"

    assert verify_cognito(cognito_token(access_claims(scope=scope))).scopes == frozenset({READ})


def test_without_a_resource_server_setting_only_bare_scope_names_count() -> None:
    settings = Settings(jwt_algorithm="RS256", jwt_issuer=ISSUER, jwt_client_ids=CLIENT)
    token = cognito_token(access_claims(scope=f"{ADMIN} {RESOURCE_SERVER}/{READ}"))

    assert verify_cognito(token, settings).scopes == frozenset({ADMIN})


@pytest.mark.parametrize("scope", [None, [f"{RESOURCE_SERVER}/{READ}"], 7])
def test_access_token_scope_that_is_not_a_string_grants_nothing(scope: object) -> None:
    claims = access_claims()
    claims.pop("scope")
    if scope is not None:
        claims["scope"] = scope

    assert verify_cognito(cognito_token(claims)).scopes == frozenset()


def test_access_token_without_a_tenant_claim_is_unauthorized() -> None:
    # What a pool without the pre token generation trigger issues.
    with pytest.raises(Unauthorized, match="no tenant"):
        verify_cognito(cognito_token(access_claims(tenant=None)))


@pytest.mark.parametrize("client_id", ["someone-elses-client", "", None, [CLIENT]])
def test_access_token_for_another_app_client_is_unauthorized(client_id: object) -> None:
    with pytest.raises(Unauthorized, match="app client"):
        verify_cognito(cognito_token(access_claims(client_id=client_id)))


def test_access_token_client_is_checked_by_client_id_not_aud() -> None:
    with pytest.raises(Unauthorized, match="app client"):
        verify_cognito(cognito_token(access_claims(client_id=None, aud=CLIENT)))


def test_id_token_maps_groups_named_like_scopes_and_reads_custom_tenant() -> None:
    principal = verify_cognito(cognito_token(id_claims()))

    assert (principal.tenant, principal.scopes) == ("globex", frozenset({READ, ADMIN}))


@pytest.mark.parametrize("groups", [["campaigns-write", "Admin", f"{READ} {ADMIN}"], "admin", None])
def test_id_token_groups_that_are_not_exactly_scopes_grant_nothing(groups: object) -> None:
    principal = verify_cognito(cognito_token(id_claims(**{"cognito:groups": groups})))

    assert principal.scopes == frozenset()


def test_id_token_scope_claim_grants_nothing() -> None:
    principal = verify_cognito(cognito_token(id_claims(scope=f"{RESOURCE_SERVER}/{ADMIN}", **{"cognito:groups": []})))

    assert principal.scopes == frozenset()


@pytest.mark.parametrize("aud", ["someone-elses-client", [CLIENT], None])
def test_id_token_for_another_audience_is_unauthorized(aud: object) -> None:
    with pytest.raises(Unauthorized, match="app client"):
        verify_cognito(cognito_token(id_claims(aud=aud)))


def test_id_token_client_is_checked_by_aud_not_client_id() -> None:
    with pytest.raises(Unauthorized, match="app client"):
        verify_cognito(cognito_token(id_claims(aud="someone-elses-client", client_id=CLIENT)))


def test_id_token_without_custom_tenant_is_unauthorized() -> None:
    with pytest.raises(Unauthorized, match="no tenant"):
        verify_cognito(cognito_token(id_claims(**{"custom:tenant": None})))


@pytest.mark.parametrize("token_use", ["refresh", "Access", "", None])
def test_token_use_other_than_access_or_id_is_unauthorized(token_use: str | None) -> None:
    with pytest.raises(Unauthorized):
        verify_cognito(cognito_token(access_claims(token_use=token_use)))


@pytest.mark.parametrize(
    "iss",
    [
        f"https://cognito-idp.{REGION}.amazonaws.com/{REGION}_SomeOtherPool",
        f"https://cognito-idp.us-east-1.amazonaws.com/{POOL}",
        ISSUER + "/",
        None,
    ],
)
def test_token_from_another_issuer_is_unauthorized(iss: str | None) -> None:
    with pytest.raises(Unauthorized):
        verify_cognito(cognito_token(access_claims(iss=iss)))


def test_expired_cognito_token_is_unauthorized() -> None:
    with pytest.raises(Unauthorized, match="ExpiredSignatureError"):
        verify_cognito(cognito_token(access_claims(exp=int(time.time()) - 60)))


def test_cognito_token_signed_by_another_key_under_a_known_kid_is_unauthorized() -> None:
    with pytest.raises(Unauthorized, match="InvalidSignatureError"):
        verify_cognito(cognito_token(access_claims(), key=ROGUE_KEY))


@pytest.mark.parametrize("kid", ["kid-nobody-published", None])
def test_cognito_token_with_an_unknown_or_missing_kid_is_unauthorized(kid: str | None) -> None:
    with pytest.raises(Unauthorized):
        verify_cognito(cognito_token(access_claims(), kid=kid))


def test_unsigned_token_is_refused_before_any_key_lookup() -> None:
    keys = fake_keys()
    token = jwt.encode(access_claims(), key=None, algorithm="none", headers={"kid": KID})

    with pytest.raises(Unauthorized, match="RS256"):
        verify_cognito(token, keys=keys)
    assert keys.asked == []


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_signed_with_the_public_key(claims: dict) -> str:
    """The algorithm-confusion forgery: HMAC keyed with the RSA public key that anyone can read from the JWKS."""
    public_pem = PRIVATE_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64url(json.dumps({'alg': 'HS256', 'kid': KID}).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def test_hs256_token_keyed_with_the_public_key_is_refused_when_rs256_is_configured() -> None:
    keys = fake_keys()

    with pytest.raises(Unauthorized, match="RS256"):
        verify_cognito(hs256_signed_with_the_public_key(access_claims()), keys=keys)
    assert keys.asked == []


def test_minted_dev_token_is_refused_when_rs256_is_configured() -> None:
    settings = Settings(jwt_algorithm="RS256", jwt_issuer=ISSUER, jwt_client_ids=CLIENT, jwt_secret=SECRET)

    with pytest.raises(Unauthorized):
        verify_cognito(mint_token(settings, "acme", (ADMIN,)), settings)


def test_an_unreachable_jwks_is_not_the_callers_fault() -> None:
    with pytest.raises(KeySetUnavailable):
        verify_cognito(cognito_token(access_claims()), keys=UnreachableKeys())


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        (Settings(jwt_algorithm="RS256", jwt_client_ids=CLIENT), "issuer"),
        (Settings(jwt_algorithm="RS256", jwt_issuer=ISSUER), "app client"),
        (Settings(jwt_algorithm="RS256", jwt_issuer=ISSUER, jwt_client_ids=" , "), "app client"),
    ],
)
def test_rs256_without_issuer_or_client_ids_refuses_every_token(settings: Settings, reason: str) -> None:
    with pytest.raises(Unauthorized, match=reason):
        verify_cognito(cognito_token(access_claims()), settings)


def test_issuer_and_jwks_url_are_derived_from_each_other() -> None:
    jwks_url = f"{ISSUER}/.well-known/jwks.json"

    from_issuer = CognitoConfig.from_settings(Settings(jwt_issuer=ISSUER + "/"))
    from_jwks = CognitoConfig.from_settings(Settings(jwt_jwks_url=jwks_url))

    assert (from_issuer.issuer, from_issuer.jwks_url) == (ISSUER, jwks_url)
    assert (from_jwks.issuer, from_jwks.jwks_url) == (ISSUER, jwks_url)


def test_an_explicit_jwks_url_is_kept_beside_the_issuer() -> None:
    config = CognitoConfig.from_settings(Settings(jwt_issuer=ISSUER, jwt_jwks_url="http://127.0.0.1:9/keys"))

    assert (config.issuer, config.jwks_url) == (ISSUER, "http://127.0.0.1:9/keys")


def test_client_ids_are_comma_separated_and_the_audience_counts_as_one() -> None:
    config = CognitoConfig.from_settings(Settings(jwt_client_ids=f" {CLIENT},,{OTHER_CLIENT} ", jwt_audience="legacy"))

    assert config.client_ids == frozenset({CLIENT, OTHER_CLIENT, "legacy"})


def test_issuer_derived_from_the_jwks_url_is_enforced() -> None:
    settings = Settings(jwt_algorithm="RS256", jwt_jwks_url=f"{ISSUER}/.well-known/jwks.json", jwt_client_ids=CLIENT)
    elsewhere = f"https://cognito-idp.{REGION}.amazonaws.com/{REGION}_SomeOtherPool"

    assert verify_cognito(cognito_token(access_claims()), settings).tenant == "acme"
    with pytest.raises(Unauthorized, match="InvalidIssuerError"):
        verify_cognito(cognito_token(access_claims(iss=elsewhere)), settings)
