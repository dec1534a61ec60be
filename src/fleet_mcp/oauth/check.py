"""`fleet-mcp auth check`: what a client will discover, and whether one pasted token would be accepted (and as
whom) or refused (and why). Reads only: it creates no principal."""

from __future__ import annotations

import json
from typing import Any, TextIO

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleet_mcp.db.models import Account
from fleet_mcp.errors import ExternalError
from fleet_mcp.oauth.config import OAuthConfig
from fleet_mcp.oauth.jwks import discover_metadata, fetch_json
from fleet_mcp.oauth.mapping import map_identity
from fleet_mcp.oauth.resource import metadata_document
from fleet_mcp.oauth.verifier import FleetTokenVerifier, IdentityRefused, TokenRefused

_AS_FIELDS = ("issuer", "authorization_endpoint", "token_endpoint", "registration_endpoint", "jwks_uri",
              "introspection_endpoint", "code_challenge_methods_supported", "scopes_supported")


async def run_check(config: OAuthConfig, token: str | None, known_roles: Any,
                    read: async_sessionmaker[AsyncSession], out: TextIO) -> int:
    verifier = FleetTokenVerifier(config)
    try:
        print(f"protected resource metadata ({config.metadata_url}):", file=out)
        print(json.dumps(metadata_document(config), indent=2), file=out)
        try:
            meta = await discover_metadata(verifier.jwks.client, config)
            print("authorization server metadata:", file=out)
            print(json.dumps({k: meta[k] for k in _AS_FIELDS if k in meta}, indent=2), file=out)
            if "S256" not in (meta.get("code_challenge_methods_supported") or []):
                print("warning: the issuer does not advertise PKCE S256; MCP clients will refuse it", file=out)
            jwks_uri = await verifier.jwks.jwks_uri()
            keys = (await fetch_json(verifier.jwks.client, jwks_uri, what="JWKS")).get("keys", [])
            print("signing keys: " + ", ".join(f"{k.get('kid')} ({k.get('kty')} {k.get('alg', '?')})" for k in keys
                                               if isinstance(k, dict)), file=out)
        except ExternalError as exc:
            print(f"discovery failed: {exc}", file=out)
            return 2
        if token is None:
            return 0
        try:
            verified = await verifier.verify(token)
            ident = map_identity(verified, config, known_roles)
        except (TokenRefused, IdentityRefused) as exc:
            print(f"refused: {exc}", file=out)
            return 1
        async with read() as session:
            exists = (await session.execute(select(Account.id).where(Account.name == ident.account))).first()
        if exists is None:
            print(f"refused: the token names account {ident.account!r}, which does not exist", file=out)
            return 1
        print(f"accepted: {ident.account}/{ident.name} with roles {', '.join(ident.roles)}; scopes "
              f"{' '.join(sorted(verified.scopes)) or '(none)'}; subject {verified.subject} via {verified.via}; "
              f"expires at {verified.expires_at}", file=out)
        return 0
    finally:
        await verifier.close()
