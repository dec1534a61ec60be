"""OAuth settings checked once at start: a broken configuration stops the server with a clear message."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fleet_mcp.errors import InvalidArgument
from fleet_mcp.settings import Settings

WELL_KNOWN_PRM = "/.well-known/oauth-protected-resource"


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str, *, allow_http_loopback: bool) -> str:
    """An https URL, or http on a loopback host when explicitly allowed (tests); never anything else."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and allow_http_loopback and is_loopback_host(parts.hostname):
        return url
    raise InvalidArgument(
        f"{what} must be an https:// URL (got {url!r})",
        hint="http:// is accepted only for loopback hosts with FLEET_MCP_OAUTH_ALLOW_HTTP_LOOPBACK=true (tests)",
    )


def canonical_resource(url: str) -> str:
    """RFC 8707 form used for comparisons: lowercase scheme and host, no fragment, no trailing slash."""
    p = urlsplit(url)
    path = p.path.rstrip("/")
    query = f"?{p.query}" if p.query else ""
    return f"{p.scheme.lower()}://{p.netloc.lower()}{path}{query}"


def metadata_url(resource: str) -> str:
    """RFC 9728 §3.1: the well-known segment goes between the host and the resource's path."""
    p = urlsplit(resource)
    path = p.path.rstrip("/")
    return f"{p.scheme}://{p.netloc}{WELL_KNOWN_PRM}{path}"


@dataclass(frozen=True)
class OAuthConfig:
    issuer: str
    resource: str
    jwks_uri: str | None
    jwks_ttl: float
    algorithms: tuple[str, ...]
    leeway: int
    allow_http_loopback: bool
    introspection_url: str | None
    client_id: str | None
    client_secret: str | None = field(repr=False)
    read_scope: str
    write_scope: str
    account_claim: str
    default_account: str | None
    name_claims: tuple[str, ...]
    roles_claim: str
    role_map: dict[str, list[str]]
    introspection_cache_ttl: float = 30.0

    @property
    def metadata_url(self) -> str:
        return metadata_url(self.resource)

    @property
    def metadata_path(self) -> str:
        return urlsplit(self.metadata_url).path

    @property
    def scopes_supported(self) -> list[str]:
        return [s for s in (self.read_scope, self.write_scope) if s]

    @classmethod
    def from_settings(cls, s: Settings) -> OAuthConfig | None:
        """None when OAuth is off (no issuer); raises InvalidArgument naming the setting to fix."""
        if not s.oauth_issuer:
            return None
        loop = s.oauth_allow_http_loopback
        issuer = check_url(s.oauth_issuer, "FLEET_MCP_OAUTH_ISSUER", allow_http_loopback=loop)
        if not s.oauth_resource:
            raise InvalidArgument("FLEET_MCP_OAUTH_RESOURCE is required with FLEET_MCP_OAUTH_ISSUER",
                                  hint="set it to the URL clients use for /mcp, e.g. https://fleet.example.com/mcp")
        resource = s.oauth_resource
        rp = urlsplit(resource)
        if rp.scheme not in ("https", "http") or not rp.hostname or rp.fragment:
            raise InvalidArgument(f"FLEET_MCP_OAUTH_RESOURCE {resource!r} is not an absolute URL without fragment")
        if rp.scheme == "http" and not (loop and is_loopback_host(rp.hostname)):
            raise InvalidArgument("FLEET_MCP_OAUTH_RESOURCE must be https:// (http only on loopback in tests)")
        jwks = s.oauth_jwks_uri and check_url(s.oauth_jwks_uri, "FLEET_MCP_OAUTH_JWKS_URI", allow_http_loopback=loop)
        intro = s.oauth_introspection_url and check_url(s.oauth_introspection_url, "FLEET_MCP_OAUTH_INTROSPECTION_URL",
                                                         allow_http_loopback=loop)
        if intro and not (s.oauth_client_id and s.oauth_client_secret):
            raise InvalidArgument("introspection needs FLEET_MCP_OAUTH_CLIENT_ID and FLEET_MCP_OAUTH_CLIENT_SECRET")
        names = tuple(c.strip() for c in s.oauth_name_claims.split(",") if c.strip())
        if not names:
            raise InvalidArgument("FLEET_MCP_OAUTH_NAME_CLAIMS names no claim")
        return cls(
            issuer=issuer, resource=resource, jwks_uri=jwks or None, jwks_ttl=s.oauth_jwks_ttl,
            algorithms=tuple(a for a in s.oauth_algorithms.split(",") if a), leeway=s.oauth_leeway,
            allow_http_loopback=loop, introspection_url=intro or None, client_id=s.oauth_client_id,
            client_secret=s.oauth_client_secret.get_secret_value() if s.oauth_client_secret else None,
            read_scope=s.oauth_read_scope.strip(), write_scope=s.oauth_write_scope.strip(),
            account_claim=s.oauth_account_claim, default_account=s.oauth_default_account, name_claims=names,
            roles_claim=s.oauth_roles_claim, role_map=dict(s.oauth_role_map),
            introspection_cache_ttl=s.oauth_introspection_cache_ttl,
        )
