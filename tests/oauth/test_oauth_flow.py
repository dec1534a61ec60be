"""The MCP SDK client's OAuth provider against a real `fleet-mcp serve --transport http` fronted by a real
OpenID Connect provider: discovery from the 401, dynamic registration, authorization code + PKCE + resource,
token, tool calls as the mapped principal, refresh, and the policy's separation of duties between two people."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from tests.oauth.conftest import Stack
from tests.oauth.oidc import REDIRECT, post_mcp

pytestmark = pytest.mark.anyio


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class Person:
    """A user at the identity provider's login page, answering for the SDK client's redirect."""

    def __init__(self, stack: Stack, user: str) -> None:
        self.stack, self.user = stack, user
        self.authorization_urls: list[str] = []
        self._result: dict[str, str] = {}

    async def redirect(self, url: str) -> None:
        self.authorization_urls.append(url)
        self._result = await anyio.to_thread.run_sync(self.stack.provider.complete_authorization, url, self.user)

    async def callback(self) -> AuthorizationCodeResult:
        r = self._result
        assert "code" in r, f"the authorization server refused: {r}"
        return AuthorizationCodeResult(code=r["code"], state=r.get("state"), iss=r.get("iss"))


def oauth_client(stack: Stack, user: str, mode: str = "auto") -> tuple[Client, OAuthClientProvider, Person]:
    person = Person(stack, user)
    auth = OAuthClientProvider(
        server_url=stack.mcp_url,
        client_metadata=OAuthClientMetadata(
            client_name="fleet-mcp tests", redirect_uris=[REDIRECT], grant_types=["authorization_code", "refresh_token"],
            response_types=["code"], token_endpoint_auth_method="none"),
        storage=MemoryStorage(), redirect_handler=person.redirect, callback_handler=person.callback)
    http = httpx2.AsyncClient(auth=auth, timeout=30)
    return Client(streamable_http_client(stack.mcp_url, http_client=http), mode=mode), auth, person


def test_unauthenticated_request_points_to_the_metadata(stack: Stack) -> None:
    r = post_mcp(stack.server.url, None)
    assert r.status_code == 401
    challenge = r.headers["www-authenticate"]
    metadata_url = f"{stack.server.url}/.well-known/oauth-protected-resource/mcp"
    assert challenge.startswith("Bearer ") and f'resource_metadata="{metadata_url}"' in challenge
    assert 'scope="fleet:read fleet:write"' in challenge and "error=" not in challenge  # RFC 6750 §3.1: no error without a token
    prm = httpx2.get(metadata_url, timeout=10).json()
    assert prm["resource"] == stack.resource
    assert prm["authorization_servers"] == [stack.provider.issuer]
    assert prm["scopes_supported"] == ["fleet:read", "fleet:write"]
    assert prm["bearer_methods_supported"] == ["header"]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_sdk_client_authorizes_calls_as_the_mapped_principal_and_refreshes(stack: Stack, mode: str) -> None:
    client, auth, person = oauth_client(stack, "alice", mode)
    async with client as c:
        r = await c.call_tool("system_put_template", {"name": f"edge-{mode}", "spec": {"node_platform": "linux"}})
        assert not r.is_error, r.content
        # The authorization request carried PKCE (S256) and the RFC 8707 resource parameter.
        query = parse_qs(urlsplit(person.authorization_urls[0]).query)
        assert query["code_challenge_method"] == ["S256"] and query["resource"] == [stack.resource]
        assert "fleet:write" in query["scope"][0].split()
        r = await c.call_tool("system_audit_query", {"tool": "system_put_template"})
        assert not r.is_error, r.content
        entry = r.structured_content["entries"][0]
        assert entry["principal"] == "acme/alice" and entry["outcome"] == "ok"
        first = auth.context.current_tokens
        assert first is not None and first.refresh_token
        # The client's clock passes the token's expiry: its next request refreshes instead of re-authorizing,
        # and the session (bound to issuer, subject and client) carries on with the new token.
        auth.context.token_expiry_time = time.time() - 1
        r = await c.call_tool("system_get_template", {"name": f"edge-{mode}"})
        assert not r.is_error, r.content
        second = auth.context.current_tokens
        assert second is not None and second.access_token != first.access_token
        assert len(person.authorization_urls) == 1  # refreshed, not re-authorized
    # The principal was created on first use, audited once, with no roles stored (they come from the token).
    async with oauth_client(stack, "alice", mode)[0] as c:
        r = await c.call_tool("system_audit_query", {"tool": "oauth.principal_created"})
        created = [e for e in r.structured_content["entries"] if e["principal"] == "acme/alice"]
        assert len(created) == 1 and created[0]["decision"] == "first_use"


async def test_roles_come_from_the_token_and_the_policy_is_unchanged(stack: Stack) -> None:
    """vera's groups make her a viewer: she reads but cannot write, whatever scopes her client holds."""
    async with oauth_client(stack, "vera")[0] as c:
        r = await c.call_tool("system_list_templates", {})
        assert not r.is_error, r.content
        r = await c.call_tool("system_put_template", {"name": "vera-web", "spec": {}})
        assert r.is_error and r.structured_content["permission"] == "system.fleet.write"


async def test_separation_of_duties_needs_another_subject(stack: Stack) -> None:
    """Pepper rotation needs a second person: adam (admin) asks, adam cannot approve, bob (approver) can."""
    async with oauth_client(stack, "adam")[0] as adam:
        r = await adam.call_tool("system_rotate_vault_transit_pepper", {})
        assert r.structured_content["status"] == "approval_required", r.content
        approval_id = r.structured_content["approval_id"]
        r = await adam.call_tool("system_approvals_decide", {"approval_id": approval_id, "decision": "approve",
                                                             "reason": "self-approval must fail"})
        assert r.is_error and "separation of duties" in r.structured_content["error"]["message"], r.content
    async with oauth_client(stack, "bob")[0] as bob:
        r = await bob.call_tool("system_approvals_decide", {"approval_id": approval_id, "decision": "approve",
                                                            "reason": "reviewed"})
        assert not r.is_error, r.content
        r = await bob.call_tool("system_approvals_get", {"approval_id": approval_id})
        data: dict[str, Any] = r.structured_content["approval"]
        assert data["requested_by"] == "acme/adam" and data["separation_of_duties"] is True
        assert [d["by"] for d in data["decisions"]] == ["acme/bob"]


async def test_static_tokens_still_work_beside_oauth(stack: Stack) -> None:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {stack.static_token}"}, timeout=30)
    async with Client(streamable_http_client(stack.mcp_url, http_client=http)) as c:
        r = await c.call_tool("system_put_template", {"name": "from-ci", "spec": {}})
        assert not r.is_error, r.content
        r = await c.call_tool("system_audit_query", {"tool": "system_put_template"})
        assert r.structured_content["entries"][0]["principal"] == "acme/ci-bot"


def test_a_session_belongs_to_the_subject_that_opened_it(stack: Stack) -> None:
    alice = stack.provider.token("alice")["access_token"]
    r = post_mcp(stack.server.url, alice)
    assert r.status_code == 200
    session_id = r.headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "mcp-session-id": session_id, "mcp-protocol-version": "2025-11-25"}
    bob = stack.provider.token("bob")["access_token"]
    r = httpx2.post(stack.mcp_url, json=ping, headers={**headers, "Authorization": f"Bearer {bob}"}, timeout=30)
    assert r.status_code == 404
    # A fresh token of the same subject (as after a refresh) keeps the session.
    again = stack.provider.token("alice")["access_token"]
    r = httpx2.post(stack.mcp_url, json=ping, headers={**headers, "Authorization": f"Bearer {again}"}, timeout=30)
    assert r.status_code == 200, r.text
