"""Bearer-token verification: HS256 with a shared secret, or RS256 against a JWKS (Cognito)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import jwt

from chalicelib.errors import Forbidden, Unauthorized
from chalicelib.settings import Settings

READ = "campaigns:read"
WRITE = "campaigns:write"
ADMIN = "admin"
ALL_SCOPES = (READ, WRITE, ADMIN)


@dataclass(frozen=True)
class Principal:
    """Who is calling: their tenant and what they may do."""

    tenant: str
    scopes: frozenset[str]
    subject: str = ""

    def require(self, scope: str) -> None:
        """Raise Forbidden unless the principal holds ``scope``."""
        if scope not in self.scopes:
            raise Forbidden(f"missing scope {scope}")


@lru_cache(maxsize=4)
def _jwks_client(url: str) -> jwt.PyJWKClient:
    # Cached per warm container: the JWKS is fetched once and its keys reused.
    return jwt.PyJWKClient(url, cache_keys=True)


def _scopes(claims: dict) -> frozenset[str]:
    raw = claims.get("scope", claims.get("scopes", ""))
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list):
        return frozenset(str(s) for s in raw)
    return frozenset()


def verify_token(token: str, settings: Settings) -> Principal:
    """Decode and verify a bearer token; raise Unauthorized if it does not hold."""
    if not token:
        raise Unauthorized("missing token")
    options = {"require": ["exp"]}
    kwargs: dict = {}
    if settings.jwt_audience:
        kwargs["audience"] = settings.jwt_audience
    if settings.jwt_issuer:
        kwargs["issuer"] = settings.jwt_issuer
    try:
        if settings.jwt_algorithm == "RS256":
            key = _jwks_client(settings.jwt_jwks_url).get_signing_key_from_jwt(token).key
            claims = jwt.decode(token, key, algorithms=["RS256"], options=options, **kwargs)
        else:
            if not settings.jwt_secret:
                raise Unauthorized("server has no JWT secret configured")
            claims = jwt.decode(token, settings.jwt_secret, algorithms=["HS256"], options=options, **kwargs)
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"invalid token: {type(exc).__name__}") from exc
    # Cognito puts custom claims under "custom:"; accept both spellings.
    tenant = claims.get("tenant") or claims.get("custom:tenant")
    if not tenant or not isinstance(tenant, str):
        raise Unauthorized("token carries no tenant")
    return Principal(tenant=tenant, scopes=_scopes(claims), subject=str(claims.get("sub", "")))


def bearer_token(header: str | None) -> str:
    """The token from an ``Authorization: Bearer …`` header, or ``""``."""
    if not header:
        return ""
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def mint_token(settings: Settings, tenant: str, scopes: tuple[str, ...] = (READ, WRITE), ttl_s: int = 86_400) -> str:
    """An HS256 token for local and dev use (``python -m infra.local token``)."""
    now = int(time.time())
    claims = {"tenant": tenant, "scope": " ".join(scopes), "sub": f"dev:{tenant}", "iat": now, "exp": now + ttl_s}
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")
