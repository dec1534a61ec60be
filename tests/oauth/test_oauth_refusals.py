"""Every refusal of the resource server, against the real provider and the real server: the HTTP status, the
WWW-Authenticate challenge (RFC 6750 §3 + RFC 9728 §5.1) and the reason. Tokens no honest provider would mint
(expired, wrong issuer, `alg: none`, HS256 with the public key) are forged with the provider's own signing key
or none, so only the property under test is wrong."""

from __future__ import annotations

import base64
import json
import time

import httpx2
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.oauth.conftest import OTHER_RESOURCE, Stack
from tests.oauth.oidc import new_key, post_mcp

pytestmark = pytest.mark.anyio


def _challenge(r: httpx2.Response, stack: Stack) -> str:
    value = r.headers.get("www-authenticate", "")
    assert value.startswith("Bearer "), value
    assert f'resource_metadata="{stack.server.url}/.well-known/oauth-protected-resource/mcp"' in value, value
    return value


def assert_invalid_token(stack: Stack, token: str, reason: str) -> None:
    r = post_mcp(stack.server.url, token)
    assert r.status_code == 401, (r.status_code, r.text)
    challenge = _challenge(r, stack)
    assert 'error="invalid_token"' in challenge
    assert reason in r.json()["error_description"], r.json()


def _b64(value: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_a_real_token_is_accepted(stack: Stack) -> None:
    """The control for the refusals below: the same request with an honest token succeeds."""
    token = stack.provider.token("alice")["access_token"]
    assert post_mcp(stack.server.url, token).status_code == 200


def test_no_token(stack: Stack) -> None:
    r = post_mcp(stack.server.url, None)
    assert r.status_code == 401 and "error=" not in _challenge(r, stack)


def test_token_for_another_audience(stack: Stack) -> None:
    """A real token the provider minted for another resource (RFC 8707) is not for us."""
    token = stack.provider.token("alice", resource=OTHER_RESOURCE)["access_token"]
    assert_invalid_token(stack, token, "audience")


def test_expired_token(stack: Stack) -> None:
    now = int(time.time())
    assert_invalid_token(stack, stack.provider.forge({"iat": now - 7200, "exp": now - 3600}), "expired")


def test_expired_within_leeway_is_accepted(stack: Stack) -> None:
    now = int(time.time())
    assert post_mcp(stack.server.url, stack.provider.forge({"exp": now - 5})).status_code == 200


def test_not_yet_valid_token(stack: Stack) -> None:
    now = int(time.time())
    assert_invalid_token(stack, stack.provider.forge({"nbf": now + 3600}), "invalid claim")


def test_token_from_another_issuer(stack: Stack) -> None:
    """A real token from another (real) issuer: its key is not our issuer's."""
    token = stack.provider.token("alice", issuer=stack.provider.other_issuer)["access_token"]
    assert_invalid_token(stack, token, "not published by the issuer")


def test_wrong_issuer_claim_with_a_trusted_key(stack: Stack) -> None:
    assert_invalid_token(stack, stack.provider.forge({"iss": stack.provider.other_issuer}), "issued by")


def test_alg_none(stack: Stack) -> None:
    claims = {"iss": stack.provider.issuer, "sub": "alice", "aud": stack.resource, "exp": int(time.time()) + 300,
              "scope": "fleet:read fleet:write", "fleet_account": "acme", "groups": ["fleet-admins"]}
    token = f"{_b64({'alg': 'none', 'typ': 'at+jwt', 'kid': 'key-1'})}.{_b64(claims)}."
    assert_invalid_token(stack, token, "algorithm 'none' is not accepted")


def test_hs256_signed_with_the_public_key(stack: Stack) -> None:
    """Algorithm confusion: the issuer's public key used as an HMAC secret."""
    public = json.dumps(stack.provider.keys[0].as_dict(private=False)).encode()
    now = int(time.time())
    token = jwt.encode({"alg": "HS256", "kid": stack.provider.keys[0].kid},
                       {"iss": stack.provider.issuer, "sub": "alice", "aud": stack.resource, "exp": now + 300},
                       OctKey.import_key(public))
    assert_invalid_token(stack, token, "algorithm 'HS256' is not accepted")


def test_unknown_signing_key(stack: Stack) -> None:
    stranger = new_key("stranger")
    assert_invalid_token(stack, stack.provider.forge({}, key=stranger), "not published by the issuer")
    # Asked again, still refused (the unknown kid is remembered; no refresh storm against the issuer).
    assert_invalid_token(stack, stack.provider.forge({}, key=stranger), "not published by the issuer")


def test_tampered_signature(stack: Stack) -> None:
    head, payload, sig = stack.provider.forge({}).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["fleet-admins"]
    assert_invalid_token(stack, f"{head}.{_b64(claims)}.{sig}", "signature")


def test_garbage_opaque_token_is_inactive(stack: Stack) -> None:
    assert_invalid_token(stack, "not-a-token-the-provider-issued", "inactive")


async def test_missing_scope_for_a_write(stack: Stack) -> None:
    """A token with only fleet:read reads, but a write tool call is refused with 403 insufficient_scope naming
    the scope to ask for (the SDK client's step-up reads it)."""
    token = stack.provider.token("alice", scope="fleet:read")["access_token"]
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    async with Client(streamable_http_client(stack.mcp_url, http_client=http)) as c:
        r = await c.call_tool("system_list_templates", {})
        assert not r.is_error, r.content
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "system_put_template", "arguments": {"name": "x", "spec": {}}}}
    r = post_mcp(stack.server.url, token, call)
    assert r.status_code == 403, r.text
    challenge = _challenge(r, stack)
    assert 'error="insufficient_scope"' in challenge and 'scope="fleet:read fleet:write"' in challenge
    # Nothing ran: the template does not exist.
    async with Client(streamable_http_client(stack.mcp_url, http_client=httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {token}"}, timeout=30))) as c:
        r = await c.call_tool("system_get_template", {"name": "x"})
        assert r.is_error and r.structured_content["error"]["code"] == "not_found"


def test_no_read_scope(stack: Stack) -> None:
    r = post_mcp(stack.server.url, stack.provider.forge({"scope": "openid"}))
    assert r.status_code == 403 and 'error="insufficient_scope"' in _challenge(r, stack)


def test_claims_that_map_to_no_account(stack: Stack) -> None:
    token = stack.provider.token("nadia")["access_token"]
    r = post_mcp(stack.server.url, token)
    assert r.status_code == 403, r.text
    assert 'error="access_denied"' in _challenge(r, stack)
    assert "no fleet account" in r.json()["error_description"]


def test_claims_that_map_to_no_role(stack: Stack) -> None:
    r = post_mcp(stack.server.url, stack.provider.forge({"sub": "gina", "preferred_username": "gina",
                                                          "groups": ["marketing"]}))
    assert r.status_code == 403 and "no fleet role" in r.json()["error_description"]


def test_account_that_does_not_exist(stack: Stack) -> None:
    r = post_mcp(stack.server.url, stack.provider.forge({"sub": "hank", "preferred_username": "hank",
                                                          "fleet_account": "initech"}))
    assert r.status_code == 403 and "does not exist" in r.json()["error_description"]


def test_a_subject_cannot_take_over_an_existing_principal_name(stack: Stack) -> None:
    """mallory's preferred_username is ci-bot, the static-token principal: refused, never merged."""
    token = stack.provider.token("mallory")["access_token"]
    r = post_mcp(stack.server.url, token)
    assert r.status_code == 403 and "belongs to someone else" in r.json()["error_description"]
    # ...and the same holds between two subjects: once alice is bound, another subject named alice is refused.
    assert post_mcp(stack.server.url, stack.provider.token("alice")["access_token"]).status_code == 200
    r = post_mcp(stack.server.url, stack.provider.forge({"sub": "alice-impostor", "preferred_username": "alice"}))
    assert r.status_code == 403 and "belongs to someone else" in r.json()["error_description"]


def test_hostile_values_never_split_the_challenge_header(stack: Stack) -> None:
    """A refusal echoes the token's kid; CR/LF or quotes in it stay inside one quoted header value."""
    hostile = 'x"\r\nSet-Cookie: pwned=1'
    token = f"{_b64({'alg': 'ES256', 'kid': hostile})}.{_b64({'sub': 'a'})}.c2ln"
    r = post_mcp(stack.server.url, token)
    assert r.status_code == 401 and "set-cookie" not in r.headers
    challenge = _challenge(r, stack)
    assert "\r" not in challenge and "\n" not in challenge and '\\"' in challenge
