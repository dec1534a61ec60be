"""The issuer's signing keys: discovered from its metadata, fetched over HTTPS, cached for a TTL, refreshed
when a token names an unknown `kid` — bounded so that a stream of forged kids cannot make us hammer the
issuer (single flight, a refresh budget per minute, unknown kids remembered until the next scheduled fetch)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx2
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from fleet_mcp.errors import ExternalError
from fleet_mcp.oauth.config import OAuthConfig, check_url

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 256 * 1024
MAX_KEYS = 50
#: On-demand refreshes (unknown kid) allowed per rolling minute; scheduled (TTL) refreshes are not counted.
REFRESH_BUDGET_PER_MINUTE = 6
TIMEOUT = httpx2.Timeout(10.0)


async def fetch_json(client: httpx2.AsyncClient, url: str, *, what: str, **kw: Any) -> dict[str, Any]:
    """GET (or POST with `data=`) a JSON object; bounded size, no redirects, errors say which document."""
    method = "POST" if "data" in kw else "GET"
    try:
        async with client.stream(method, url, timeout=TIMEOUT, follow_redirects=False,
                                 headers={"Accept": "application/json"}, **kw) as r:
            if r.status_code != 200:
                raise ExternalError(f"{what} at {url} answered HTTP {r.status_code}", url=url)
            body = b""
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ExternalError(f"{what} at {url} is larger than {MAX_DOCUMENT_BYTES} bytes", url=url)
    except httpx2.HTTPError as exc:
        raise ExternalError(f"{what} at {url} could not be fetched: {type(exc).__name__}", url=url) from exc
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ExternalError(f"{what} at {url} is not JSON", url=url) from exc
    if not isinstance(doc, dict):
        raise ExternalError(f"{what} at {url} is not a JSON object", url=url)
    return doc


async def discover_metadata(client: httpx2.AsyncClient, config: OAuthConfig) -> dict[str, Any]:
    """Authorization server metadata: OpenID discovery, then RFC 8414; its `issuer` must be ours exactly."""
    base = config.issuer.rstrip("/")
    from urllib.parse import urlsplit

    p = urlsplit(base)
    origin, path = f"{p.scheme}://{p.netloc}", p.path
    candidates = [f"{base}/.well-known/openid-configuration", f"{origin}/.well-known/oauth-authorization-server{path}"]
    errors: list[str] = []
    for url in candidates:
        try:
            doc = await fetch_json(client, url, what="authorization server metadata")
        except ExternalError as exc:
            errors.append(exc.message)
            continue
        if doc.get("issuer") != config.issuer:
            raise ExternalError(f"metadata at {url} names issuer {doc.get('issuer')!r}, not {config.issuer!r}",
                                hint="FLEET_MCP_OAUTH_ISSUER must equal the issuer's own identifier exactly")
        return doc
    raise ExternalError("no authorization server metadata found: " + "; ".join(errors),
                        hint="check FLEET_MCP_OAUTH_ISSUER")


class JwksCache:
    """Keys by kid; `get(kid)` refreshes at most as the budget allows."""

    def __init__(self, config: OAuthConfig, client: httpx2.AsyncClient | None = None) -> None:
        self.config = config
        self._client = client
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._jwks_uri: str | None = config.jwks_uri
        self._lock = asyncio.Lock()
        self._refreshes: list[float] = []
        self._unknown: dict[str, float] = {}  # kid -> when a refresh last failed to find it
        self.fetch_count = 0

    @property
    def client(self) -> httpx2.AsyncClient:
        if self._client is None:
            self._client = httpx2.AsyncClient(follow_redirects=False, trust_env=False)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def jwks_uri(self) -> str:
        if self._jwks_uri is None:
            meta = await discover_metadata(self.client, self.config)
            uri = meta.get("jwks_uri")
            if not isinstance(uri, str):
                raise ExternalError("the issuer's metadata has no jwks_uri", hint="set FLEET_MCP_OAUTH_JWKS_URI")
            self._jwks_uri = check_url(uri, "the issuer's jwks_uri", allow_http_loopback=self.config.allow_http_loopback)
        return self._jwks_uri

    async def _fetch(self) -> None:
        uri = await self.jwks_uri()
        doc = await fetch_json(self.client, uri, what="JWKS")
        raw = doc.get("keys")
        if not isinstance(raw, list):
            raise ExternalError(f"JWKS at {uri} has no keys array")
        keys: dict[str, Any] = {}
        for item in raw[:MAX_KEYS]:
            if not isinstance(item, dict) or item.get("use", "sig") != "sig" or not isinstance(item.get("kid"), str):
                continue
            if any(k in item for k in ("d", "p", "q", "k")):  # private or symmetric material: never trust it
                continue
            try:
                keys[item["kid"]] = KeySet.import_key_set({"keys": [item]}).keys[0]
            except (JoseError, ValueError, TypeError):
                log.warning("skipping an unusable key %r in the JWKS", item.get("kid"))
        self._keys = keys
        self._fetched_at = time.monotonic()
        self._unknown.clear()
        self.fetch_count += 1

    def _stale(self) -> bool:
        return self._fetched_at is None or time.monotonic() - self._fetched_at > self.config.jwks_ttl

    async def get(self, kid: str | None) -> Any | None:
        """The public key for `kid` (None when the issuer does not publish it, even after a refresh)."""
        async with self._lock:
            if self._stale():
                await self._fetch()
            key = self._key(kid)
            if key is not None:
                return key
            # Unknown kid: maybe the issuer rotated. Refresh once, within the budget; a kid that a refresh
            # already failed to find waits for the next scheduled fetch.
            now = time.monotonic()
            self._refreshes = [t for t in self._refreshes if now - t < 60]
            if kid in self._unknown or len(self._refreshes) >= REFRESH_BUDGET_PER_MINUTE:
                return None
            self._refreshes.append(now)
            await self._fetch()
            key = self._key(kid)
            if key is None and kid is not None:
                if len(self._unknown) > 1000:
                    self._unknown.clear()
                self._unknown[kid] = now
            return key

    def _key(self, kid: str | None) -> Any | None:
        if kid is None:
            # A token without kid is accepted only when the issuer publishes exactly one key.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)
