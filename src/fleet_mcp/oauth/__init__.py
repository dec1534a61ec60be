"""OAuth 2.1 for HTTP: fleet-mcp as a protected resource (RFC 9728) in front of any standard authorization server.

    types       a verified token and the two refusals (no MCP imports: mapping and identities use them)
    config      the settings, checked once: issuer, canonical resource URI, algorithms, scopes, claim mapping
    jwks        the issuer's signing keys: fetched over HTTPS, cached, refreshed on an unknown `kid`, bounded
    verifier    a bearer token -> verified claims (JWT via joserfc, or RFC 7662 introspection), or a refusal
    mapping     verified claims -> account, principal name and roles (roles live in the token, never stored)
    identities  (issuer, subject, account) -> a principal, created on first use with its audit row
    resource    the HTTP side: metadata document, WWW-Authenticate challenges, the scope a request needs
    guard       the ASGI step in front of /mcp that puts these together (called by `fleet_mcp.http`)
    check       `fleet-mcp auth check`

Static fleet tokens and OAuth access tokens both end in the same `principals.Caller`.
"""

from fleet_mcp.oauth.config import OAuthConfig
from fleet_mcp.oauth.types import IdentityRefused, TokenRefused, VerifiedToken

__all__ = ["IdentityRefused", "OAuthConfig", "TokenRefused", "VerifiedToken"]
