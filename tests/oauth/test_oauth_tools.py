"""The operator's side: `fleet-mcp auth check`, opaque tokens through RFC 7662 introspection, the MCP
Inspector CLI with a token from the provider, and JWKS rotation at the provider."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import services
from tests.oauth.conftest import OTHER_RESOURCE, Stack
from tests.oauth.oidc import ROOT, new_key, post_mcp


def _auth_check(stack: Stack, token: str | None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "fleet_mcp", "auth", "check"] + (["-"] if token is not None else [])
    return subprocess.run(args, env=stack.env, input=(token or "") + "\n", capture_output=True, text=True,
                          timeout=120)


def test_auth_check_prints_metadata_and_judges_a_pasted_token(stack: Stack) -> None:
    out = _auth_check(stack, None)
    assert out.returncode == 0, out.stderr
    assert f'"resource": "{stack.resource}"' in out.stdout
    assert f"{stack.provider.issuer}/jwks" in out.stdout and "key-" in out.stdout
    token = stack.provider.token("alice")["access_token"]
    out = _auth_check(stack, token)
    assert out.returncode == 0 and "accepted: acme/alice with roles operator" in out.stdout, out.stdout
    assert token not in out.stdout + out.stderr  # the token itself is never echoed
    other = stack.provider.token("alice", resource=OTHER_RESOURCE)["access_token"]
    out = _auth_check(stack, other)
    assert out.returncode == 1 and "refused:" in out.stdout and "audience" in out.stdout, out.stdout
    out = _auth_check(stack, stack.provider.token("nadia")["access_token"])
    assert out.returncode == 1 and "no fleet account" in out.stdout


def test_opaque_tokens_are_checked_by_introspection(stack: Stack) -> None:
    token = stack.provider.token("vera", client_id="fleet-opaque", scope="fleet:read")["access_token"]
    assert token.count(".") == 0  # opaque
    assert post_mcp(stack.server.url, token).status_code == 200
    other = stack.provider.token("vera", client_id="fleet-opaque", resource=OTHER_RESOURCE)["access_token"]
    r = post_mcp(stack.server.url, other)
    assert r.status_code == 401 and "audience" in r.json()["error_description"]


def _kid(token: str) -> str:
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"]


def test_signing_key_rotation_is_picked_up_on_the_unknown_kid(stack: Stack) -> None:
    before = stack.provider.token("alice")["access_token"]
    assert post_mcp(stack.server.url, before).status_code == 200  # the server now holds the current JWKS
    stack.provider.rotate()
    after = stack.provider.token("alice")["access_token"]
    assert _kid(after) != _kid(before)
    assert post_mcp(stack.server.url, after).status_code == 200  # unknown kid -> JWKS refreshed -> accepted
    assert post_mcp(stack.server.url, before).status_code == 200  # the old key is still published
    r = post_mcp(stack.server.url, stack.provider.forge({}, key=new_key("never-published")))
    assert r.status_code == 401


def _inspector() -> str | None:
    path = os.environ.get("FLEET_MCP_TEST_INSPECTOR") or str(ROOT / ".cache/node/node_modules/.bin/mcp-inspector")
    return path if Path(path).exists() else shutil.which("mcp-inspector")


def test_inspector_cli_connects_with_a_token_from_the_provider(stack: Stack) -> None:
    inspector = _inspector()
    if inspector is None:
        services.missing("the MCP Inspector CLI", "scripts/test installs it under .cache/node")
    token = stack.provider.token("alice")["access_token"]
    base = [inspector, "--cli", stack.mcp_url, "--transport", "http", "--header", f"Authorization: Bearer {token}"]
    proc = subprocess.run([*base, "--method", "tools/list"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {t["name"] for t in json.loads(proc.stdout)["tools"]}
    assert "system_put_template" in names
    proc = subprocess.run([*base, "--method", "tools/call", "--tool-name", "system_list_templates"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run([inspector, "--cli", stack.mcp_url, "--transport", "http", "--method", "tools/list"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0  # no token, no tools


@pytest.mark.anyio
async def test_introspection_answers_are_reused_briefly_refusals_never(stack: Stack,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """One opaque token on every request of a session costs one introspection per cache lifetime, not one per
    request; a refused token is asked again each time; the cache holds a digest, never the token; a lifetime
    of 0 asks every time. Against the real provider's RFC 7662 endpoint."""
    from fleet_mcp.oauth.config import OAuthConfig
    from fleet_mcp.oauth.verifier import FleetTokenVerifier, TokenRefused
    from fleet_mcp.settings import Settings

    for k, v in stack.env.items():
        if k.startswith("FLEET_MCP_"):
            monkeypatch.setenv(k, v)
    token = stack.provider.token("vera", client_id="fleet-opaque", scope="fleet:read")["access_token"]
    other = stack.provider.token("vera", client_id="fleet-opaque", resource=OTHER_RESOURCE)["access_token"]
    for ttl, asks in ((30.0, 1), (0.0, 3)):
        cfg = OAuthConfig.from_settings(Settings(oauth_introspection_cache_ttl=ttl))
        assert cfg is not None
        verifier = FleetTokenVerifier(cfg)
        try:
            subjects = {(await verifier.verify(token)).subject for _ in range(3)}
            assert subjects == {"vera"} and verifier.introspection_requests == asks
            before = verifier.introspection_requests
            for _ in range(2):
                with pytest.raises(TokenRefused, match="audience"):
                    await verifier.verify(other)
            assert verifier.introspection_requests == before + 2
            assert all(token.encode() not in key and len(key) == 32 for key in verifier._introspected)
        finally:
            await verifier.close()
