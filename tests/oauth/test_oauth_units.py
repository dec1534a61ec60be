"""The OAuth pieces one at a time: settings that must stop the server, the claims mapping, the JWKS cache's
bounds (against the real provider), and first use of an identity under concurrency on both databases."""

from __future__ import annotations

import json
import time

import anyio
import pytest
from sqlalchemy import func, select

from fleet_mcp.db.models import AuditEntry, Principal
from fleet_mcp.errors import ExternalError, InvalidArgument
from fleet_mcp.oauth import jwks as jwks_module
from fleet_mcp.oauth.config import OAuthConfig
from fleet_mcp.oauth.identities import resolve_caller
from fleet_mcp.oauth.jwks import JwksCache
from fleet_mcp.oauth.mapping import map_identity
from fleet_mcp.oauth.models import OAuthIdentity
from fleet_mcp.oauth.verifier import FleetTokenVerifier, IdentityRefused, TokenRefused, VerifiedToken
from fleet_mcp.policy.roles import BUILTIN_ROLES
from fleet_mcp.settings import Settings
from tests.oauth.conftest import Stack
from tests.oauth.oidc import ROLE_MAP, new_key

pytestmark = pytest.mark.anyio


def _settings(**kw: object) -> Settings:
    base: dict[str, object] = {"oauth_issuer": "https://id.example.com", "oauth_resource": "https://fleet.example.com/mcp"}
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


def test_oauth_is_off_without_an_issuer() -> None:
    assert OAuthConfig.from_settings(Settings()) is None


@pytest.mark.parametrize("kw, words", [
    ({"oauth_issuer": "http://id.example.com"}, "https://"),
    ({"oauth_issuer": "http://127.0.0.1:9000"}, "loopback"),  # loopback, but not allowed explicitly
    ({"oauth_resource": None}, "FLEET_MCP_OAUTH_RESOURCE is required"),
    ({"oauth_resource": "http://fleet.example.com/mcp"}, "https://"),
    ({"oauth_jwks_uri": "http://keys.example.com/jwks"}, "https://"),
    ({"oauth_introspection_url": "https://id.example.com/introspect"}, "CLIENT_ID"),
])
def test_unsafe_oauth_settings_stop_the_server(kw: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        OAuthConfig.from_settings(_settings(**kw))
    assert words in str(err.value)


@pytest.mark.parametrize("algs", ["none", "RS256,HS256", "hs512", ""])
def test_symmetric_or_none_algorithms_are_refused_in_settings(algs: str) -> None:
    with pytest.raises(ValueError, match="asymmetric"):
        _settings(oauth_algorithms=algs)


def test_role_map_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_MCP_OAUTH_ROLE_MAP", json.dumps({"ops": "operator", "leads": ["approver", "viewer"]}))
    assert Settings().oauth_role_map == {"ops": ["operator"], "leads": ["approver", "viewer"]}


def _token(**claims: object) -> VerifiedToken:
    base: dict[str, object] = {"sub": "u-1", "fleet_account": "acme", "preferred_username": "Alice@Example.com",
                               "groups": ["fleet-operators", "unrelated"]}
    base.update(claims)
    return VerifiedToken(issuer="https://id.example.com", subject=str(base["sub"]), client_id="c", scopes=frozenset(),
                         expires_at=None, claims={k: v for k, v in base.items() if v is not None})


def test_mapping_takes_account_name_and_roles_from_claims() -> None:
    cfg = OAuthConfig.from_settings(_settings(oauth_role_map=ROLE_MAP))
    assert cfg is not None
    ident = map_identity(_token(), cfg, BUILTIN_ROLES)
    assert (ident.account, ident.name, ident.roles) == ("acme", "alice@example.com", ("operator",))


def test_mapping_from_scopes_without_a_role_map() -> None:
    cfg = OAuthConfig.from_settings(_settings(oauth_roles_claim="scope", oauth_name_claims="sub"))
    assert cfg is not None
    ident = map_identity(_token(scope="openid viewer approver fleet:read"), cfg, BUILTIN_ROLES)
    assert ident.name == "u-1" and ident.roles == ("approver", "viewer")


def test_mapping_refusals_say_what_is_missing() -> None:
    cfg = OAuthConfig.from_settings(_settings(oauth_role_map=ROLE_MAP))
    assert cfg is not None
    with pytest.raises(IdentityRefused, match="no fleet account"):
        map_identity(_token(fleet_account=None), cfg, BUILTIN_ROLES)
    with pytest.raises(IdentityRefused, match="no fleet role"):
        map_identity(_token(groups=["marketing"]), cfg, BUILTIN_ROLES)
    with pytest.raises(IdentityRefused, match="principal name"):
        map_identity(_token(preferred_username="../admin"), cfg, BUILTIN_ROLES)
    # A role the policy does not know is ignored, not invented.
    custom = OAuthConfig.from_settings(_settings(oauth_role_map={"x": ["superuser"]}))
    assert custom is not None
    with pytest.raises(IdentityRefused, match="no fleet role"):
        map_identity(_token(groups=["x"]), custom, BUILTIN_ROLES)
    defaulted = OAuthConfig.from_settings(_settings(oauth_role_map=ROLE_MAP, oauth_default_account="acme"))
    assert defaulted is not None
    assert map_identity(_token(fleet_account=None), defaulted, BUILTIN_ROLES).account == "acme"


def _live_config(stack: Stack) -> OAuthConfig:
    cfg = OAuthConfig.from_settings(Settings(oauth_issuer=stack.provider.issuer, oauth_resource=stack.resource,
                                             oauth_allow_http_loopback=True, oauth_role_map=ROLE_MAP))
    assert cfg is not None
    return cfg


async def test_jwks_cache_refreshes_within_bounds(stack: Stack) -> None:
    cache = JwksCache(_live_config(stack))
    try:
        kid = stack.provider.keys[0].kid
        assert await cache.get(kid) is not None and cache.fetch_count == 1
        assert await cache.get(kid) is not None and cache.fetch_count == 1  # cached
        assert await cache.get("forged-1") is None and cache.fetch_count == 2  # one refresh for an unknown kid
        assert await cache.get("forged-1") is None and cache.fetch_count == 2  # remembered: no second refresh
        for i in range(jwks_module.REFRESH_BUDGET_PER_MINUTE + 5):
            await cache.get(f"storm-{i}")
        assert cache.fetch_count == 1 + jwks_module.REFRESH_BUDGET_PER_MINUTE  # the budget caps the storm
    finally:
        await cache.close()


async def test_issuer_unreachable_is_an_outage_not_a_refusal() -> None:
    cfg = OAuthConfig.from_settings(Settings(oauth_issuer="http://127.0.0.1:9", oauth_resource="http://127.0.0.1:1/mcp",
                                             oauth_allow_http_loopback=True))
    assert cfg is not None
    verifier = FleetTokenVerifier(cfg)
    try:
        from joserfc import jwt

        key = new_key("k")
        token = jwt.encode({"alg": "ES256", "kid": "k"}, {"sub": "a", "exp": int(time.time()) + 60}, key)
        with pytest.raises(ExternalError):
            await verifier.verify(token)
        assert await verifier.verify_token(token) is None  # the SDK protocol: None, never an exception
        with pytest.raises(TokenRefused, match="not a JWT"):
            await verifier.verify("opaque-but-no-introspection")
        with pytest.raises(TokenRefused, match="too large"):  # before any parsing (uvicorn caps headers anyway)
            await verifier.verify("a" * 20_000 + ".b.c")
    finally:
        await verifier.close()


async def test_first_use_binds_once_under_concurrency(sessionmaker, account) -> None:  # noqa: ANN001
    cfg = OAuthConfig.from_settings(_settings(oauth_role_map=ROLE_MAP))
    assert cfg is not None
    token = _token()
    ident = map_identity(token, cfg, BUILTIN_ROLES)
    callers = []

    async def one() -> None:
        callers.append(await resolve_caller(sessionmaker, sessionmaker, token, ident))

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(one)
    assert {c.qualified for c in callers} == {"acme/alice@example.com"}
    assert all(c.roles == ("operator",) and c.via == "oauth" for c in callers)
    async with sessionmaker() as session:
        assert (await session.execute(select(func.count()).select_from(OAuthIdentity))).scalar_one() == 1
        stored = (await session.execute(select(Principal).where(Principal.name == "alice@example.com"))).scalar_one()
        assert stored.roles == []  # roles come from each token, never stored
        created = (await session.execute(select(func.count()).select_from(AuditEntry)
                                         .where(AuditEntry.tool == "oauth.principal_created"))).scalar_one()
        assert created == 1
    # A disabled principal stops at its next request.
    async with sessionmaker() as session, session.begin():
        (await session.execute(select(Principal).where(Principal.name == "alice@example.com"))).scalar_one().disabled = True
    with pytest.raises(IdentityRefused, match="disabled"):
        await resolve_caller(sessionmaker, sessionmaker, token, ident)


def test_the_identity_side_imports_no_mcp_code() -> None:
    """Claims mapping and principal binding are service code: they must not depend on the MCP SDK."""
    import subprocess
    import sys

    code = ("import sys, fleet_mcp.oauth.identities, fleet_mcp.oauth.mapping; "
            "print([m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_serve_refuses_unsafe_oauth_settings_with_one_clear_line(tmp_path) -> None:  # noqa: ANN001
    from tests.conftest import cli_env, run_cli

    env = cli_env(tmp_path / "data", f"sqlite+aiosqlite:///{tmp_path / 'f.db'}",
                  FLEET_MCP_OAUTH_ISSUER="http://id.example.com", FLEET_MCP_OAUTH_RESOURCE="https://fleet.example/mcp")
    out = run_cli(env, "serve", "--transport", "http", "--port", "1", check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "error: FLEET_MCP_OAUTH_ISSUER must be an https:// URL" in out.stderr
