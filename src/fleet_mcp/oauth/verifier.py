"""A bearer token -> verified claims, or a refusal that says why. JWTs are checked with joserfc against the
issuer's published keys: algorithm pinned by configuration (never `none`, never HS*), `kid` resolved in the
JWKS, signature, `iss` exact, `aud` containing this server's resource URI (RFC 8707), `exp` required, `nbf`
and `iat` with a small leeway. Tokens that are not JWTs go to RFC 7662 introspection when it is configured."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import OrderedDict
from typing import Any

import httpx2
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError
from joserfc.jws import JWSRegistry
from mcp.server.auth.provider import AccessToken

from fleet_mcp.errors import ExternalError
from fleet_mcp.oauth.config import OAuthConfig, canonical_resource
from fleet_mcp.oauth.jwks import JwksCache, fetch_json
from fleet_mcp.oauth.types import IdentityRefused, TokenRefused, VerifiedToken

__all__ = ["FleetTokenVerifier", "IdentityRefused", "TokenRefused", "VerifiedToken", "sdk_access_token"]

MAX_TOKEN_BYTES = 16 * 1024
#: Active introspection answers remembered at most (least recently used first out).
INTROSPECTION_CACHE_SIZE = 10_000


def sdk_access_token(verified: VerifiedToken, token: str) -> AccessToken:
    """The SDK's view of a verified token (session ownership keys on client_id, iss and sub)."""
    return AccessToken(token=token, client_id=verified.client_id, scopes=sorted(verified.scopes),
                       expires_at=verified.expires_at, subject=verified.subject, claims={"iss": verified.issuer},
                       resource=None)


def _b64json(part: str) -> Any:
    padded = part + "=" * (-len(part) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    raw = claims.get("scope", claims.get("scp"))
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list):
        return frozenset(str(s) for s in raw)
    return frozenset()


def _audience_ok(aud: Any, resource: str) -> bool:
    want = canonical_resource(resource)
    values = aud if isinstance(aud, list) else [aud]
    return any(isinstance(v, str) and canonical_resource(v) == want for v in values)


class FleetTokenVerifier:
    """Implements the SDK's `TokenVerifier` protocol (`verify_token`) and, for fleet-mcp's own middleware,
    `verify`, which raises with the reason instead of returning None."""

    def __init__(self, config: OAuthConfig, jwks: JwksCache | None = None) -> None:
        self.config = config
        self.jwks = jwks or JwksCache(config)
        self._registry = JWSRegistry(algorithms=list(config.algorithms))
        # SHA-256 of an opaque token -> (monotonic deadline, its verified claims): the token itself is not kept.
        self._introspected: OrderedDict[bytes, tuple[float, VerifiedToken]] = OrderedDict()
        self.introspection_requests = 0

    async def close(self) -> None:
        await self.jwks.close()

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            return sdk_access_token(await self.verify(token), token)
        except (TokenRefused, ExternalError):
            return None

    async def verify(self, token: str) -> VerifiedToken:
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRefused("the bearer token is too large")
        if looks_like_jwt(token):
            return await self._verify_jwt(token)
        if self.config.introspection_url:
            return await self._introspect(token)
        raise TokenRefused("the bearer token is not a JWT and no introspection endpoint is configured")

    # -- JWT ---------------------------------------------------------------------------------------
    async def _verify_jwt(self, token: str) -> VerifiedToken:
        cfg = self.config
        try:
            header = _b64json(token.split(".", 1)[0])
        except (ValueError, UnicodeError) as exc:
            raise TokenRefused("the token's JOSE header is not valid JSON") from exc
        if not isinstance(header, dict):
            raise TokenRefused("the token's JOSE header is not an object")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in cfg.algorithms:
            raise TokenRefused(f"algorithm {alg!r} is not accepted (accepted: {', '.join(cfg.algorithms)})")
        if "crit" in header or "jku" in header or "x5u" in header or "jwk" in header:
            raise TokenRefused("the token's header carries key material or critical extensions, refused")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRefused("the token's kid is not a string")
        key = await self.jwks.get(kid)
        if key is None:
            raise TokenRefused(f"signing key {kid!r} is not published by the issuer (even after a JWKS refresh)")
        key_alg = getattr(key, "alg", None) or key.as_dict().get("alg")
        if key_alg and key_alg != alg:
            raise TokenRefused(f"the token uses {alg} but key {kid!r} is for {key_alg}")
        try:
            decoded = jwt.decode(token, key, algorithms=[alg], registry=self._registry)
        except JoseError as exc:
            raise TokenRefused(f"signature check failed ({exc.error})") from exc
        except (ValueError, TypeError) as exc:
            raise TokenRefused("the token is malformed") from exc
        claims = dict(decoded.claims)
        registry = jwt.JWTClaimsRegistry(
            leeway=cfg.leeway, iss={"essential": True, "value": cfg.issuer}, exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError as exc:
            raise TokenRefused("the token has expired") from exc
        except MissingClaimError as exc:
            raise TokenRefused(f"the token lacks required claim(s): {exc.description}") from exc
        except InvalidClaimError as exc:
            if exc.claim == "iss":
                raise TokenRefused(f"the token was issued by {claims.get('iss')!r}, not {cfg.issuer!r}") from exc
            raise TokenRefused(f"invalid claim: {exc.description}") from exc
        if not _audience_ok(claims.get("aud"), cfg.resource):
            raise TokenRefused(f"the token's audience {claims.get('aud')!r} is not this server ({cfg.resource})")
        return self._verified(claims, via="jwt")

    def _verified(self, claims: dict[str, Any], *, via: str) -> VerifiedToken:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise TokenRefused("the token has no subject")
        client_id = claims.get("client_id") or claims.get("azp") or ""
        exp = claims.get("exp")
        return VerifiedToken(issuer=self.config.issuer, subject=sub, client_id=str(client_id),
                             scopes=_scopes(claims), expires_at=int(exp) if isinstance(exp, int | float) else None,
                             claims=claims, via=via)

    # -- RFC 7662 ------------------------------------------------------------------------------------
    async def _introspect(self, token: str) -> VerifiedToken:
        """Ask the authorization server, or reuse its 'active' answer for the same token for up to
        `introspection_cache_ttl` seconds (never past the token's exp). Refusals are never remembered."""
        key = hashlib.sha256(token.encode()).digest()
        hit = self._introspected.get(key)
        if hit is not None:
            if hit[0] > time.monotonic():
                self._introspected.move_to_end(key)
                return hit[1]
            del self._introspected[key]
        verified = await self._ask_introspection(token)
        ttl = min(self.config.introspection_cache_ttl,
                  (verified.expires_at - time.time()) if verified.expires_at is not None else 0.0)
        if ttl > 0:
            self._introspected[key] = (time.monotonic() + ttl, verified)
            while len(self._introspected) > INTROSPECTION_CACHE_SIZE:
                self._introspected.popitem(last=False)
        return verified

    async def _ask_introspection(self, token: str) -> VerifiedToken:
        cfg = self.config
        assert cfg.introspection_url and cfg.client_id and cfg.client_secret
        self.introspection_requests += 1
        doc = await fetch_json(self.jwks.client, cfg.introspection_url, what="token introspection",
                               data={"token": token, "token_type_hint": "access_token"},
                               auth=httpx2.BasicAuth(cfg.client_id, cfg.client_secret))
        if doc.get("active") is not True:
            raise TokenRefused("the authorization server reports the token inactive (expired, revoked or unknown)")
        if "iss" in doc and doc["iss"] != cfg.issuer:
            raise TokenRefused(f"the token was issued by {doc['iss']!r}, not {cfg.issuer!r}")
        if not _audience_ok(doc.get("aud"), cfg.resource):
            raise TokenRefused(f"the token's audience {doc.get('aud')!r} is not this server ({cfg.resource})")
        exp = doc.get("exp")
        if not isinstance(exp, int | float) or exp < time.time() - cfg.leeway:
            raise TokenRefused("the token has expired")
        return self._verified(doc, via="introspection")
