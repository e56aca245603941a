"""Cognito sign-in end to end: a real RS256 JWKS served over HTTP, read by the real PyJWKClient.

A Cognito user pool stands behind two URLs: its issuer and, under it, ``/.well-known/jwks.json``. Here a
threaded ``http.server`` on a free loopback port plays the JWKS, the test holds the private keys, and tokens
are signed with exactly the headers (``kid``, ``alg``) and claims Cognito writes into access and ID tokens,
plus the ``tenant`` claim a pre token generation trigger adds. The issuer stays Cognito's URL shape; only the
JWKS URL points at loopback (``JWT_JWKS_URL`` beside ``JWT_ISSUER``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from chalicelib.auth import ADMIN, READ, WRITE, JwksSigningKeys, KeySetUnavailable, Principal, verify_token
from chalicelib.errors import Unauthorized
from chalicelib.settings import Settings

pytestmark = pytest.mark.integration

REGION = "eu-west-1"
CLIENT = "7d2nd8m4rq5jc1ikg2v8g1k3a0"
RESOURCE_SERVER = "https://api.mailpipe.example"


@dataclass(frozen=True)
class SigningKey:
    """One key pair of the pool, as Cognito would publish it under ``kid``."""

    kid: str
    private: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))

    def jwk(self) -> dict[str, Any]:
        jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {"alg": "RS256", "e": jwk["e"], "kid": self.kid, "kty": "RSA", "n": jwk["n"], "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


# Key generation is the slow part; these are shared, each test publishes the ones it needs.
KEY_A = SigningKey(kid="kid-a-" + uuid.uuid4().hex)
KEY_B = SigningKey(kid="kid-b-" + uuid.uuid4().hex)
ROGUE = SigningKey(kid=KEY_A.kid)  # same kid as KEY_A, different key: a forgery


class JwksServer:
    """A user pool's JWKS endpoint on a free loopback port: serves what the test publishes, counts fetches."""

    def __init__(self) -> None:
        # A fresh pool id per server, so no URL (and no cached key source) is ever shared between tests.
        self.pool_id = f"{REGION}_{secrets.token_hex(5)}"
        self.issuer = f"https://cognito-idp.{REGION}.amazonaws.com/{self.pool_id}"
        self.keys: list[SigningKey] = []
        self.body: bytes | None = None  # overrides the JWKS document when set
        self.fetches = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path != f"/{server.pool_id}/.well-known/jwks.json":
                    self.send_error(404)
                    return
                with server._lock:
                    server.fetches += 1
                    body = server.body or json.dumps({"keys": [k.jwk() for k in server.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/{self.pool_id}/.well-known/jwks.json"

    def publish(self, *keys: SigningKey) -> None:
        with self._lock:
            self.keys = list(keys)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def pool() -> Iterator[JwksServer]:
    server = JwksServer()
    server.publish(KEY_A)
    try:
        yield server
    finally:
        server.stop()


def settings_for(pool: JwksServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        jwt_algorithm="RS256",
        jwt_issuer=pool.issuer,
        jwt_jwks_url=pool.url,
        jwt_client_ids=f"another-client,{CLIENT}",
        jwt_resource_server=RESOURCE_SERVER,
        jwt_jwks_timeout_s=2.0,
    )
    values.update(overrides)
    return Settings(**values)


def access_claims(issuer: str, **overrides: Any) -> dict[str, Any]:
    """The claims of a Cognito access token (authorization code grant), plus the trigger's ``tenant``."""
    now = int(time.time())
    claims = {
        "sub": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "cognito:groups": ["campaigns:read"],
        "iss": issuer,
        "version": 2,
        "client_id": CLIENT,
        "origin_jti": str(uuid.uuid4()),
        "event_id": str(uuid.uuid4()),
        "token_use": "access",
        "scope": f"openid {RESOURCE_SERVER}/{READ} {RESOURCE_SERVER}/{WRITE} email aws.cognito.signin.user.admin",
        "auth_time": now,
        "exp": now + 3600,
        "iat": now,
        "jti": str(uuid.uuid4()),
        "username": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "tenant": "acme",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def id_claims(issuer: str, **overrides: Any) -> dict[str, Any]:
    """The claims of a Cognito ID token with a ``custom:tenant`` user attribute."""
    now = int(time.time())
    claims = {
        "sub": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "cognito:groups": [READ, ADMIN, "support"],
        "email_verified": True,
        "iss": issuer,
        "cognito:username": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "origin_jti": str(uuid.uuid4()),
        "aud": CLIENT,
        "event_id": str(uuid.uuid4()),
        "token_use": "id",
        "auth_time": now,
        "exp": now + 3600,
        "iat": now,
        "jti": str(uuid.uuid4()),
        "email": "ada@globex.example",
        "custom:tenant": "globex",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def sign(claims: dict[str, Any], key: SigningKey = KEY_A) -> str:
    # Cognito's header is {"kid": …, "alg": "RS256"}: no "typ".
    return jwt.encode(claims, key.private, algorithm="RS256", headers={"kid": key.kid, "typ": None})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def header_of(token: str) -> dict[str, Any]:
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))


def test_tokens_carry_cognitos_header() -> None:
    assert header_of(sign({"exp": 1})) == {"kid": KEY_A.kid, "alg": "RS256"}


def test_access_token_verifies_through_the_jwks_over_http_and_the_key_set_is_fetched_once(pool: JwksServer) -> None:
    settings = settings_for(pool)

    first = verify_token(sign(access_claims(pool.issuer)), settings)
    second = verify_token(
        sign(access_claims(pool.issuer, tenant="initech", scope=f"{RESOURCE_SERVER}/{ADMIN}")), settings
    )

    assert first == Principal(
        tenant="acme", scopes=frozenset({READ, WRITE}), subject="aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    )
    assert (second.tenant, second.scopes) == ("initech", frozenset({ADMIN}))
    assert pool.fetches == 1  # cached for the warm container


def test_id_token_verifies_with_groups_as_scopes_and_custom_tenant(pool: JwksServer) -> None:
    principal = verify_token(sign(id_claims(pool.issuer)), settings_for(pool))

    assert (principal.tenant, principal.scopes) == ("globex", frozenset({READ, ADMIN}))


def test_issuer_alone_is_enough_when_the_jwks_is_under_it(pool: JwksServer) -> None:
    issuer = pool.url.removesuffix("/.well-known/jwks.json")
    settings = settings_for(pool, jwt_issuer=issuer, jwt_jwks_url="")

    assert verify_token(sign(access_claims(issuer)), settings).tenant == "acme"


def test_a_rotated_key_is_fetched_when_a_token_names_it(pool: JwksServer) -> None:
    settings = settings_for(pool)
    keys = JwksSigningKeys(pool.url, refresh_cooldown_s=0)
    assert verify_token(sign(access_claims(pool.issuer)), settings, keys=keys).tenant == "acme"

    pool.publish(KEY_A, KEY_B)  # Cognito adds the next key

    assert (
        verify_token(sign(access_claims(pool.issuer, tenant="initech"), KEY_B), settings, keys=keys).tenant == "initech"
    )
    assert verify_token(sign(access_claims(pool.issuer)), settings, keys=keys).tenant == "acme"
    assert pool.fetches == 2


def test_unknown_kids_cannot_make_every_request_fetch_the_jwks(pool: JwksServer) -> None:
    settings = settings_for(pool)
    verify_token(sign(access_claims(pool.issuer)), settings)

    for _ in range(20):
        stranger = SigningKey(kid="kid-" + uuid.uuid4().hex, private=KEY_B.private)
        with pytest.raises(Unauthorized, match="unknown signing key"):
            verify_token(sign(access_claims(pool.issuer), stranger), settings)

    assert pool.fetches == 1  # within the refresh cooldown, unknown kids are refused from the cached set


def test_a_key_withdrawn_from_the_jwks_stops_verifying(pool: JwksServer) -> None:
    settings = settings_for(pool)
    keys = JwksSigningKeys(pool.url, lifespan_s=0.2, refresh_cooldown_s=0)
    token = sign(access_claims(pool.issuer))
    assert verify_token(token, settings, keys=keys).tenant == "acme"

    pool.publish(KEY_B)

    deadline = time.monotonic() + 10
    while True:
        try:
            verify_token(token, settings, keys=keys)
        except Unauthorized as exc:
            assert "unknown signing key" in str(exc)
            break
        assert time.monotonic() < deadline, "the withdrawn key still verifies"
        time.sleep(0.05)


def hs256_keyed_with_public_key(claims: dict[str, Any]) -> str:
    """The algorithm-confusion forgery: HMAC keyed with the public key anyone can read from the JWKS."""
    signing_input = (
        f"{b64url(json.dumps({'kid': KEY_A.kid, 'alg': 'HS256'}).encode())}.{b64url(json.dumps(claims).encode())}"
    )
    return f"{signing_input}.{b64url(hmac.new(KEY_A.public_pem(), signing_input.encode(), hashlib.sha256).digest())}"


def cognito_refresh_token() -> str:
    """What Cognito hands out as a refresh token: an encrypted JWT (JWE, five parts), opaque to clients."""
    header = b64url(json.dumps({"cty": "JWT", "enc": "A256GCM", "alg": "RSA-OAEP"}).encode())
    return ".".join([header, *(b64url(secrets.token_bytes(n)) for n in (256, 12, 400, 16))])


REJECTED: dict[str, tuple[Callable[[str], str], str]] = {
    # case: (token for the pool's issuer, why it is refused)
    "refresh token": (lambda iss: cognito_refresh_token(), "DecodeError"),
    "token_use refresh": (lambda iss: sign(access_claims(iss, token_use="refresh")), "token_use"),
    "token_use missing": (lambda iss: sign(access_claims(iss, token_use=None)), "MissingRequiredClaimError"),
    "access token for another client": (
        lambda iss: sign(access_claims(iss, client_id="someone-elses-client")),
        "app client",
    ),
    "ID token for another audience": (lambda iss: sign(id_claims(iss, aud="someone-elses-client")), "app client"),
    "another pool": (
        lambda iss: sign(access_claims(iss, iss=f"https://cognito-idp.{REGION}.amazonaws.com/{REGION}_Other")),
        "InvalidIssuerError",
    ),
    "expired": (lambda iss: sign(access_claims(iss, exp=int(time.time()) - 1)), "ExpiredSignatureError"),
    "bad signature": (lambda iss: sign(access_claims(iss), ROGUE), "InvalidSignatureError"),
    "alg none": (
        lambda iss: jwt.encode(access_claims(iss), None, algorithm="none", headers={"kid": KEY_A.kid}),
        "must be RS256",
    ),
    "HS256 keyed with the public key": (lambda iss: hs256_keyed_with_public_key(access_claims(iss)), "must be RS256"),
    "kid not in the JWKS": (lambda iss: sign(access_claims(iss), KEY_B), "unknown signing key"),
    "access token without tenant": (lambda iss: sign(access_claims(iss, tenant=None)), "no tenant"),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_rejected_tokens(pool: JwksServer, case: str) -> None:
    settings = settings_for(pool)
    assert verify_token(sign(access_claims(pool.issuer)), settings).tenant == "acme"  # the pool itself works
    make, reason = REJECTED[case]

    with pytest.raises(Unauthorized, match=reason):
        verify_token(make(pool.issuer), settings)


def test_a_jwks_that_never_answers_fails_within_the_timeout() -> None:
    # A listening socket nobody accepts from: the connection opens, the answer never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/{REGION}_silent/.well-known/jwks.json"
        settings = Settings(jwt_algorithm="RS256", jwt_jwks_url=url, jwt_client_ids=CLIENT, jwt_jwks_timeout_s=0.5)
        token = sign(access_claims(url.removesuffix("/.well-known/jwks.json")))

        started = time.monotonic()
        with pytest.raises(KeySetUnavailable):
            verify_token(token, settings)

        assert time.monotonic() - started < 5


def test_a_jwks_endpoint_that_is_down_is_not_the_callers_fault() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    issuer = f"http://127.0.0.1:{port}/{REGION}_down"

    with pytest.raises(KeySetUnavailable):
        verify_token(
            sign(access_claims(issuer)), Settings(jwt_algorithm="RS256", jwt_issuer=issuer, jwt_client_ids=CLIENT)
        )


def test_a_jwks_that_is_not_json_is_not_the_callers_fault(pool: JwksServer) -> None:
    pool.body = b"<html>maintenance</html>"

    with pytest.raises(KeySetUnavailable):
        verify_token(sign(access_claims(pool.issuer)), settings_for(pool))
