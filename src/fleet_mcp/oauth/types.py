"""What a verified token is, and the two ways it is refused; no MCP imports (the identity side uses these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fleet_mcp.errors import PermissionDenied, Unauthenticated


class TokenRefused(Unauthenticated):
    """The token is not a valid access token for this resource (HTTP 401, error="invalid_token")."""

    code = "invalid_token"


class IdentityRefused(PermissionDenied):
    """The token is valid but maps to no usable fleet identity (HTTP 403)."""

    code = "access_denied"


@dataclass(frozen=True)
class VerifiedToken:
    issuer: str
    subject: str
    client_id: str
    scopes: frozenset[str]
    expires_at: int | None
    claims: dict[str, Any] = field(repr=False)
    via: str = "jwt"  # "jwt" | "introspection"
