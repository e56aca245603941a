"""Bearer tokens: HS256 minting and verification, scopes, and the Authorization header."""

from __future__ import annotations

import time

import jwt
import pytest

from chalicelib.auth import ADMIN, READ, WRITE, Principal, bearer_token, mint_token, verify_token
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
