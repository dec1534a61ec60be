"""A real OpenID Connect provider (`oidc-provider` on Node, tests/oauth/provider.mjs) on loopback, a real
`fleet-mcp serve --transport http` configured against it, and a driver for the authorization code flow with
PKCE that answers the provider's login and consent steps with plain HTTP requests."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx2
from joserfc import jwt
from joserfc.jwk import ECKey

from tests import services
from tests.conftest import _free_port, cli_env, run_cli

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / ".cache" / "node" / "node_modules"
SCRIPT = Path(__file__).with_name("provider.mjs")
REDIRECT = "http://127.0.0.1:9/callback"
SCOPES = ["fleet:read", "fleet:write"]
ROLE_MAP = {"fleet-viewers": ["viewer"], "fleet-operators": ["operator"], "fleet-approvers": ["approver"],
            "fleet-admins": ["admin"]}
USERS = {
    "alice": {"password": "alice-pw", "claims": {"fleet_account": "acme", "groups": ["fleet-operators"],
                                                 "preferred_username": "alice"}},
    "bob": {"password": "bob-pw", "claims": {"fleet_account": "acme", "groups": ["fleet-approvers"],
                                             "preferred_username": "bob"}},
    "vera": {"password": "vera-pw", "claims": {"fleet_account": "acme", "groups": ["fleet-viewers"],
                                               "preferred_username": "vera"}},
    # A valid user of the identity provider that the mapping cannot place in any fleet account.
    "nadia": {"password": "nadia-pw", "claims": {"groups": ["fleet-operators"], "preferred_username": "nadia"}},
    "adam": {"password": "adam-pw", "claims": {"fleet_account": "acme", "groups": ["fleet-admins"],
                                               "preferred_username": "adam"}},
    # Claims the preferred_username of a static-token principal: must never take it over.
    "mallory": {"password": "mallory-pw", "claims": {"fleet_account": "acme", "groups": ["fleet-admins"],
                                                     "preferred_username": "ci-bot"}},
}
RS_SECRET = "introspection-secret-" + "x" * 24  # noqa: S105 - a throwaway test credential


def node_available() -> bool:
    return shutil.which("node") is not None and (NODE_MODULES / "oidc-provider").is_dir()


def require_node() -> None:
    if not node_available():
        services.missing("oidc-provider (Node)", "scripts/test installs it under .cache/node")


def new_key(kid: str) -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": kid, "alg": "ES256", "use": "sig"}, private=True)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


class OidcProvider:
    """Two issuers in one Node process: the trusted one, and another (for wrong-issuer tokens)."""

    def __init__(self, resource: str, other_resource: str) -> None:
        self.port, self.other_port = _free_port(), _free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.other_issuer = f"http://127.0.0.1:{self.other_port}"
        self.resource, self.other_resource = resource, other_resource
        self.keys = [new_key("key-1")]
        self.other_keys = [new_key("other-1")]
        self.dir = Path(tempfile.mkdtemp(prefix="fleet-oidc-"))
        (self.dir / "node_modules").symlink_to(NODE_MODULES)
        shutil.copy(SCRIPT, self.dir / "provider.mjs")
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def _config(self) -> dict[str, Any]:
        public = {"token_endpoint_auth_method": "none", "grant_types": ["authorization_code", "refresh_token"],
                  "response_types": ["code"], "redirect_uris": [REDIRECT]}
        return {
            "issuers": [
                {"issuer": self.issuer, "port": self.port, "keys": [k.as_dict(private=True) for k in self.keys]},
                {"issuer": self.other_issuer, "port": self.other_port,
                 "keys": [k.as_dict(private=True) for k in self.other_keys]},
            ],
            "clients": [
                {"client_id": "fleet-test", **public},
                {"client_id": "fleet-opaque", **public},
                {"client_id": "fleet-mcp-rs", "client_secret": RS_SECRET, "grant_types": ["authorization_code"],
                 "response_types": ["code"], "redirect_uris": [REDIRECT],
                 "token_endpoint_auth_method": "client_secret_basic"},
            ],
            "opaqueClients": ["fleet-opaque"],
            "scopes": SCOPES,
            "resources": {self.resource: {"scope": " ".join(SCOPES)},
                          self.other_resource: {"scope": " ".join(SCOPES)}},
            "users": USERS,
        }

    def start(self) -> None:
        cfg = self.dir / "config.json"
        cfg.write_text(json.dumps(self._config()))
        self.proc = subprocess.Popen(["node", str(self.dir / "provider.mjs"), str(cfg)], cwd=self.dir,
                                     stdout=subprocess.PIPE, stderr=open(self.dir / "node.log", "a"), text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the provider listens (or dies)
        if not line.startswith("ready"):
            self.proc.wait(10)
            raise RuntimeError(f"oidc-provider did not start: {line!r}\n{(self.dir / 'node.log').read_text()}")

    def stop_process(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def rotate(self) -> None:
        """Deploy a new signing key (first in the set, so new tokens use it) and keep the old one published."""
        self.stop_process()
        self.keys = [new_key(f"key-{len(self.keys) + 1}"), *self.keys]
        self.start()

    def close(self) -> None:
        self.stop_process()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the authorization code flow, answered over HTTP --------------------------------------------
    def complete_authorization(self, auth_url: str, user: str) -> dict[str, str]:
        """Follow an authorization request through login and consent; return the redirect's query."""
        password = USERS[user]["password"]
        with httpx2.Client(follow_redirects=False, timeout=30) as http:
            url = auth_url
            for _ in range(12):
                r = http.get(url)
                if r.status_code not in (302, 303):
                    raise AssertionError(f"authorization stopped at {url}: {r.status_code} {r.text[-1500:]}")
                location = urljoin(url, r.headers["location"])
                if location.startswith(REDIRECT):
                    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
                path = urlsplit(location).path
                if path.startswith("/interaction/"):
                    prompt = http.get(location).json()["prompt"]
                    if prompt == "login":
                        r = http.post(f"{location}/login", data={"login": user, "password": password})
                    else:
                        r = http.post(f"{location}/confirm", data={})
                    assert r.status_code in (302, 303), r.text
                    url = urljoin(location, r.headers["location"])
                else:
                    url = location
        raise AssertionError("authorization did not finish")

    def token(self, user: str, *, client_id: str = "fleet-test", scope: str = "fleet:read fleet:write",
              resource: str | None = None, issuer: str | None = None) -> dict[str, Any]:
        """A token response obtained through the real authorization endpoint and token endpoint."""
        issuer = issuer or self.issuer
        verifier, challenge = pkce()
        state = secrets.token_urlsafe(16)
        params = {"client_id": client_id, "response_type": "code", "redirect_uri": REDIRECT, "scope": scope,
                  "state": state, "code_challenge": challenge, "code_challenge_method": "S256",
                  "resource": resource or self.resource}
        if "offline_access" in scope:
            params["prompt"] = "consent"
        result = self.complete_authorization(f"{issuer}/auth?{urlencode(params)}", user)
        assert result["state"] == state and "code" in result, result
        r = httpx2.post(f"{issuer}/token", data={
            "grant_type": "authorization_code", "code": result["code"], "redirect_uri": REDIRECT,
            "client_id": client_id, "code_verifier": verifier, "resource": resource or self.resource}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def forge(self, claims: dict[str, Any], *, key: ECKey | None = None, header: dict[str, Any] | None = None) -> str:
        """A JWT signed with the provider's own current key (or `key`): for claims no provider would mint."""
        key = key or self.keys[0]
        now = int(time.time())
        payload = {"iss": self.issuer, "sub": "alice", "aud": self.resource, "iat": now, "exp": now + 300,
                   "scope": "fleet:read fleet:write", "client_id": "fleet-test", **USERS["alice"]["claims"]}
        payload.update(claims)
        return jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "at+jwt", **(header or {})}, payload, key)


def oauth_env(data_dir: Path, db_url: str, provider: OidcProvider, resource: str, **extra: str) -> dict[str, str]:
    return cli_env(data_dir, db_url, FLEET_MCP_OAUTH_ISSUER=provider.issuer, FLEET_MCP_OAUTH_RESOURCE=resource,
                   FLEET_MCP_OAUTH_ALLOW_HTTP_LOOPBACK="true", FLEET_MCP_OAUTH_ROLE_MAP=json.dumps(ROLE_MAP),
                   **extra)


class FleetServer:
    """`fleet-mcp serve --transport http` on a port chosen before start (the resource URI names it)."""

    def __init__(self, env: dict[str, str], port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = Path(tempfile.mkstemp(prefix="fleet-oauth-http-", suffix=".log")[1])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleet_mcp", "serve", "--transport", "http", "--port", str(port)],
            env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)  # polling a port that is not open yet; nothing to wait on
        raise RuntimeError("HTTP server did not become healthy")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.unlink(missing_ok=True)


def post_mcp(url: str, token: str | None, body: dict[str, Any] | None = None) -> httpx2.Response:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    msg = body or {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "probe", "version": "0"}}}
    return httpx2.post(url + "/mcp", headers=headers, json=msg, timeout=30)


def setup_accounts(env: dict[str, str]) -> None:
    run_cli(env, "db", "upgrade")
    run_cli(env, "account", "create", "acme")


__all__ = ["OidcProvider", "FleetServer", "oauth_env", "post_mcp", "require_node", "setup_accounts"]
