"""Verified claims -> who the caller is in the fleet: account, principal name and roles. Roles come from the
token on every call (a group removed at the identity provider is gone with the next token) and are never
written into the principal."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fleet_mcp.oauth.config import OAuthConfig
from fleet_mcp.oauth.types import IdentityRefused, VerifiedToken

#: Principal names from an identity provider may be e-mail addresses; still one line, bounded, lowercase.
_OAUTH_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@+-]{0,119}$")


@dataclass(frozen=True)
class MappedIdentity:
    account: str
    name: str
    roles: tuple[str, ...]


def _values(raw: Any) -> list[str]:
    if isinstance(raw, str):
        return raw.split()
    if isinstance(raw, list):
        return [v for v in raw if isinstance(v, str)]
    return []


def map_identity(token: VerifiedToken, config: OAuthConfig, known_roles: Iterable[str]) -> MappedIdentity:
    """Apply the configured mapping; refuses (IdentityRefused) with the reason when any part is missing."""
    claims = token.claims
    account = claims.get(config.account_claim)
    if account is None and config.default_account:
        account = config.default_account
    if not isinstance(account, str) or not account:
        raise IdentityRefused(
            f"the token maps to no fleet account: claim {config.account_claim!r} is missing",
            hint=f"have the identity provider add a {config.account_claim!r} claim, or set "
                 "FLEET_MCP_OAUTH_DEFAULT_ACCOUNT")
    name = None
    for claim in config.name_claims:
        value = claims.get(claim)
        if isinstance(value, str) and value:
            name = value.strip().lower()
            break
    if name is None or not _OAUTH_NAME_RE.match(name):
        raise IdentityRefused(
            f"the token maps to no valid principal name (claims tried: {', '.join(config.name_claims)})",
            hint="names are 1-120 lowercase letters, digits and . _ @ + -; set FLEET_MCP_OAUTH_NAME_CLAIMS")
    known = set(known_roles)
    roles: set[str] = set()
    for value in _values(claims.get(config.roles_claim)):
        if config.role_map:
            roles.update(r for r in config.role_map.get(value, []) if r in known)
        elif value in known:
            roles.add(value)
    if not roles:
        raise IdentityRefused(
            f"the token maps to no fleet role (claim {config.roles_claim!r})",
            hint="map the identity provider's groups to roles with FLEET_MCP_OAUTH_ROLE_MAP")
    return MappedIdentity(account=account, name=name, roles=tuple(sorted(roles)))
