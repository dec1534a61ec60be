"""The HTTP side of the protected resource: its RFC 9728 metadata document, the WWW-Authenticate challenges
(RFC 6750 §3, with `resource_metadata` per RFC 9728 §5.1), and the scopes one JSON-RPC request needs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mcp.shared.auth import ProtectedResourceMetadata

from fleet_mcp.oauth.config import OAuthConfig


def metadata_document(config: OAuthConfig) -> dict[str, Any]:
    prm = ProtectedResourceMetadata.model_validate({
        "resource": config.resource,
        "authorization_servers": [config.issuer],
        "scopes_supported": config.scopes_supported or None,
        "bearer_methods_supported": ["header"],
        "resource_name": "fleet-mcp",
    })
    doc = prm.model_dump(mode="json", exclude_none=True)
    # pydantic renders URLs canonically; the issuer and resource must stay byte-identical to the configuration
    # (issuer comparison is exact, RFC 8414 §3.3).
    doc["resource"] = config.resource
    doc["authorization_servers"] = [config.issuer]
    return doc


def _quote(value: str) -> str:
    """A quoted-string for a header: printable ASCII only (reasons can echo a token's own values, and a CR/LF
    from a forged `kid` must never split the header), quotes and backslashes escaped."""
    printable = "".join(c if " " <= c <= "~" else "?" for c in value)
    return printable.replace("\\", "\\\\").replace('"', '\\"')


def challenge(config: OAuthConfig, *, error: str | None = None, description: str | None = None,
              scope: str | None = None) -> str:
    """`Bearer resource_metadata="…"[, scope="…"][, error="…", error_description="…"]`."""
    parts = []
    if error:
        parts.append(f'error="{_quote(error)}"')
    if description:
        parts.append(f'error_description="{_quote(description[:300])}"')
    if scope:
        parts.append(f'scope="{_quote(scope)}"')
    parts.append(f'resource_metadata="{_quote(config.metadata_url)}"')
    return "Bearer " + ", ".join(parts)


def _messages(body: bytes) -> list[Mapping[str, Any]]:
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    items = doc if isinstance(doc, list) else [doc]
    return [m for m in items if isinstance(m, Mapping)]


def missing_scopes(config: OAuthConfig, granted: frozenset[str], body: bytes | None,
                   read_only_tools: Mapping[str, bool]) -> list[str]:
    """Scopes this request needs that the token lacks: the read scope for anything, the write scope for a
    `tools/call` of a tool that is not read-only. Unknown tools need only the read scope (the MCP layer
    answers them with an error)."""
    needed = [config.read_scope] if config.read_scope else []
    if config.write_scope and body:
        for msg in _messages(body):
            params = msg.get("params")
            if msg.get("method") == "tools/call" and isinstance(params, Mapping):
                name = params.get("name")
                if isinstance(name, str) and read_only_tools.get(name) is False:
                    needed.append(config.write_scope)
                    break
    return [s for s in dict.fromkeys(needed) if s not in granted]
