"""Bearer-token verification: HS256 with a shared secret (local/dev), or Cognito's RS256 tokens against its JWKS.

``JWT_ALGORITHM=HS256`` (the default) checks tokens from :func:`mint_token`: a ``tenant`` (or ``custom:tenant``)
claim, scopes in ``scope`` (a space-separated string) or ``scopes`` (a list, one scope per element).

``JWT_ALGORITHM=RS256`` accepts the two tokens a Cognito user pool hands a signed-in user, and nothing else:

* Access tokens (``token_use == "access"``). They carry no ``aud``: the app client is ``client_id``, which must
  be one of ``JWT_CLIENT_IDS``. Scopes come from the space-separated ``scope`` claim. Cognito writes a resource
  server's custom scopes as ``{identifier}/{name}``; with ``JWT_RESOURCE_SERVER`` set to that identifier,
  ``https://api.mailpipe.example/campaigns:read`` grants ``campaigns:read``. Every other scope (``openid``,
  ``email``, ``aws.cognito.signin.user.admin``, another resource server's) is ignored. Access tokens hold no user
  attributes, so the tenant must be added by a pre token generation Lambda trigger with event version ``V2_0``
  or later (the first that can change access tokens; it needs the Essentials or Plus feature plan), as the
  claim ``tenant`` or ``custom:tenant``.
* ID tokens (``token_use == "id"``). ``aud`` is the app client id and must be one of ``JWT_CLIENT_IDS``.
  Scopes come from ``cognito:groups``: membership of a group named exactly like a scope (``campaigns:read``,
  ``campaigns:write``, ``admin``; Cognito allows ':' in group names) grants that scope; other groups are
  ignored. The tenant is the user attribute ``custom:tenant`` (or a trigger-added ``tenant``).

Both must be signed with RS256 by a key of the pool's JWKS (looked up by the header's ``kid``), carry the
pool's issuer ``https://cognito-idp.{region}.amazonaws.com/{userPoolId}`` and be unexpired. ``JWT_ISSUER`` or
``JWT_JWKS_URL`` is enough: Cognito serves the JWKS at ``{issuer}/.well-known/jwks.json``, so each is derived
from the other. ``JWT_AUDIENCE``, if set, counts as one more app client id.

Either way a principal only ever holds the project's own scopes (:data:`ALL_SCOPES`), so none contains a space
and the authorizer can pass them on space-separated.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import jwt

from chalicelib.errors import Forbidden, MailpipeError, Unauthorized
from chalicelib.settings import Settings

READ = "campaigns:read"
WRITE = "campaigns:write"
ADMIN = "admin"
ALL_SCOPES = (READ, WRITE, ADMIN)

JWKS_PATH = "/.well-known/jwks.json"


class KeySetUnavailable(MailpipeError):
    """The JWKS could not be read: an outage or misconfiguration on our side, not a bad token.

    The authorizer lets it escape, so API Gateway answers 500 rather than telling a valid caller its token is bad.
    """


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


class SigningKeys(Protocol):
    """Where RS256 verification finds the public key a token names in its ``kid`` header."""

    def key_for(self, kid: str) -> Any:
        """The public key for ``kid``; raise Unauthorized if there is none, KeySetUnavailable if unreadable."""
        ...


class JwksSigningKeys:
    """Signing keys read from a JWKS URL by PyJWKClient, the key set cached for ``lifespan_s``.

    An unknown ``kid`` (Cognito rotated its keys) refetches the set at most once per ``refresh_cooldown_s``, so
    tokens with made-up kids cannot turn every request into a JWKS fetch. Individual keys are deliberately not
    cached beyond the set (PyJWKClient's ``cache_keys`` never expires): a key withdrawn from the JWKS stops
    verifying within ``lifespan_s``.
    """

    def __init__(
        self, url: str, timeout_s: float = 2.0, lifespan_s: float = 300.0, refresh_cooldown_s: float = 30.0
    ) -> None:
        try:
            self._client = jwt.PyJWKClient(
                url,
                cache_keys=False,
                cache_jwk_set=True,
                lifespan=lifespan_s,
                timeout=timeout_s,
                cooldown_duration=refresh_cooldown_s,
            )
        except jwt.PyJWKClientError as exc:  # e.g. a URL that is not http(s)
            raise KeySetUnavailable(f"bad JWKS URL: {exc}") from exc

    def key_for(self, kid: str) -> Any:
        """The public key for ``kid``, fetching or refreshing the key set when needed."""
        try:
            # Read the (cached) set first, so a set that cannot be used at all is told apart from a token whose
            # kid is not in it: PyJWKClient raises the same exception type for both.
            self._client.get_signing_keys()
        except jwt.PyJWKClientConnectionError as exc:
            raise KeySetUnavailable(f"JWKS endpoint unreachable: {exc}") from exc
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, ValueError) as exc:  # ValueError: not JSON
            raise KeySetUnavailable(f"JWKS endpoint holds no usable signing key: {type(exc).__name__}") from exc
        try:
            return self._client.get_signing_key(kid).key
        except jwt.PyJWKClientConnectionError as exc:
            raise KeySetUnavailable(f"JWKS endpoint unreachable: {exc}") from exc
        except ValueError as exc:  # the refetch for an unknown kid answered something other than JSON
            raise KeySetUnavailable("JWKS endpoint did not answer JSON") from exc
        except (jwt.PyJWKClientError, jwt.PyJWKSetError) as exc:
            raise Unauthorized("invalid token: unknown signing key") from exc


@lru_cache(maxsize=4)
def jwks_signing_keys(url: str, timeout_s: float) -> JwksSigningKeys:
    """The key source for ``url``, one per warm container: the JWKS is fetched once, not on every request."""
    return JwksSigningKeys(url, timeout_s=timeout_s)


@dataclass(frozen=True)
class CognitoConfig:
    """What RS256 verification checks, resolved from settings."""

    issuer: str
    jwks_url: str
    client_ids: frozenset[str]
    resource_server: str
    jwks_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> CognitoConfig:
        """Derive the issuer from the JWKS URL or the other way round, and split the client ids."""
        issuer = settings.jwt_issuer.strip().rstrip("/")
        jwks_url = settings.jwt_jwks_url.strip()
        if not issuer and jwks_url.endswith(JWKS_PATH):
            issuer = jwks_url.removesuffix(JWKS_PATH)
        if not jwks_url and issuer:
            jwks_url = issuer + JWKS_PATH
        client_ids = {c.strip() for c in settings.jwt_client_ids.split(",")} | {settings.jwt_audience.strip()}
        client_ids.discard("")
        return cls(
            issuer=issuer,
            jwks_url=jwks_url,
            client_ids=frozenset(client_ids),
            resource_server=settings.jwt_resource_server.strip(),
            jwks_timeout_s=settings.jwt_jwks_timeout_s,
        )


def verify_token(token: str, settings: Settings, keys: SigningKeys | None = None) -> Principal:
    """Decode and verify a bearer token; raise Unauthorized if it does not hold.

    ``keys`` replaces the JWKS over HTTP (RS256 only); by default the configured JWKS URL is read, cached.
    Raises KeySetUnavailable when the JWKS cannot be read.
    """
    if not token:
        raise Unauthorized("missing token")
    algorithm = settings.jwt_algorithm.strip().upper() or "HS256"
    if algorithm == "RS256":
        return _verify_cognito(token, CognitoConfig.from_settings(settings), keys)
    if algorithm == "HS256":
        return _verify_hs256(token, settings)
    raise Unauthorized(f"unsupported JWT_ALGORITHM {settings.jwt_algorithm!r}")


def _verify_hs256(token: str, settings: Settings) -> Principal:
    if not settings.jwt_secret:
        raise Unauthorized("server has no JWT secret configured")
    kwargs: dict[str, Any] = {}
    if settings.jwt_audience:
        kwargs["audience"] = settings.jwt_audience
    if settings.jwt_issuer:
        kwargs["issuer"] = settings.jwt_issuer
    try:
        claims = jwt.decode(token, settings.jwt_secret, algorithms=["HS256"], options={"require": ["exp"]}, **kwargs)
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"invalid token: {type(exc).__name__}") from exc
    raw = claims.get("scope", claims.get("scopes", ""))
    # A string is space-separated (OAuth's "scope"); in a list each element is one scope, spaces and all.
    listed = raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else []
    return Principal(tenant=_tenant(claims), scopes=_known(listed), subject=str(claims.get("sub", "")))


def _verify_cognito(token: str, config: CognitoConfig, keys: SigningKeys | None) -> Principal:
    if not config.issuer:
        raise Unauthorized("server has no JWT issuer or JWKS URL configured")
    if not config.client_ids:
        raise Unauthorized("server has no app client ids configured")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"invalid token: {type(exc).__name__}") from exc
    # Pin the algorithm before looking up any key: "none" and HS256 tokens (signed with the public key as an
    # HMAC secret, the algorithm-confusion attack) are refused here, and never cost a JWKS fetch.
    if header.get("alg") != "RS256":
        raise Unauthorized("invalid token: algorithm must be RS256")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Unauthorized("invalid token: no kid")
    source = keys if keys is not None else jwks_signing_keys(config.jwks_url, config.jwks_timeout_s)
    key = source.key_for(kid)
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            issuer=config.issuer,
            # Cognito's access tokens have no "aud"; the app client is checked below, per token_use.
            options={"require": ["exp", "iat", "iss", "token_use"], "verify_aud": False},
        )
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"invalid token: {type(exc).__name__}") from exc
    token_use = claims.get("token_use")
    if token_use == "access":
        client = claims.get("client_id")
        scope = claims.get("scope")
        scopes = _resource_server_scopes(scope.split() if isinstance(scope, str) else [], config.resource_server)
    elif token_use == "id":
        client = claims.get("aud")
        groups = claims.get("cognito:groups")
        scopes = _known(groups if isinstance(groups, list) else [])
    else:
        raise Unauthorized("invalid token: token_use must be access or id")
    if not isinstance(client, str) or client not in config.client_ids:
        raise Unauthorized("invalid token: not issued to an allowed app client")
    return Principal(tenant=_tenant(claims), scopes=scopes, subject=str(claims.get("sub", "")))


def _resource_server_scopes(granted: list[str], resource_server: str) -> frozenset[str]:
    # Cognito names a custom scope "{resource server identifier}/{scope name}". Without an identifier configured,
    # bare names count (e.g. scopes a pre token generation trigger adds).
    prefix = f"{resource_server}/" if resource_server else ""
    return _known(s.removeprefix(prefix) for s in granted if s.startswith(prefix))


def _known(names: Iterable[object]) -> frozenset[str]:
    """The project's scopes among ``names``; anything else is someone else's scope, ignored."""
    return frozenset(n for n in names if isinstance(n, str) and n in ALL_SCOPES)


def _tenant(claims: dict[str, Any]) -> str:
    # Cognito writes user attributes as "custom:…"; a pre token generation trigger can add a plain "tenant".
    tenant = claims.get("tenant") or claims.get("custom:tenant")
    if not tenant or not isinstance(tenant, str):
        raise Unauthorized("token carries no tenant")
    return tenant


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
