"""One real identity provider and one real fleet-mcp HTTP server for the OAuth tests (starting them is the slow
part); each test uses its own users or tokens, so the order of tests does not matter."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import _free_port, run_cli
from tests.oauth.oidc import RS_SECRET, FleetServer, OidcProvider, oauth_env, require_node, setup_accounts

OTHER_RESOURCE = "https://other.example.test/mcp"


@dataclass
class Stack:
    provider: OidcProvider
    server: FleetServer
    env: dict[str, str]
    resource: str
    static_token: str
    data: Path

    @property
    def mcp_url(self) -> str:
        return self.server.url + "/mcp"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_node()
    tmp = tmp_path_factory.mktemp("oauth")
    port = _free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    provider = OidcProvider(resource, OTHER_RESOURCE)
    server = None
    try:
        env = oauth_env(tmp / "data", f"sqlite+aiosqlite:///{tmp / 'fleet.db'}", provider, resource,
                        FLEET_MCP_OAUTH_INTROSPECTION_URL=f"{provider.issuer}/token/introspection",
                        FLEET_MCP_OAUTH_CLIENT_ID="fleet-mcp-rs", FLEET_MCP_OAUTH_CLIENT_SECRET=RS_SECRET)
        setup_accounts(env)
        static = run_cli(env, "token", "create", "--account", "acme", "--name", "ci-bot", "--role", "operator"
                         ).stdout.strip().splitlines()[-1]
        server = FleetServer(env, port)
        yield Stack(provider, server, env, resource, static, tmp)
    finally:
        if server is not None:
            server.stop()
        provider.close()
