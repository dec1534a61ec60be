"""A stored git credential reaches only the host it was stored for (threat: an operator who may
register and sync repositories — both auto-approved — points a URL at a server of their own).

Real parts: two `git http-backend` servers on different loopback addresses (127.0.0.1 and
127.0.0.2) behind HTTPS, each recording every Authorization header it receives; the SDK client on
the shipped policy; the vault credential store on the app's transit backend.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import update

from fleet_mcp.gitops.models import GitOpsRepository
from fleet_mcp.vault.credentials import CredentialStore
from tests.gitops.gitops_helpers import FleetRepo
from tests.gitops.gitops_servers import GitHTTPSServer, self_signed

pytestmark = pytest.mark.anyio

TOKEN = "ghp-Bound-Token-777"


def _ok(r) -> dict:  # noqa: ANN001
    assert not r.is_error, r.content
    return r.structured_content


def _error(r) -> str:  # noqa: ANN001
    assert r.is_error, r.structured_content
    return r.content[0].text


@pytest.fixture
def servers(tmp_path: Path, fleet_repo: FleetRepo, monkeypatch) -> Iterator[tuple[GitHTTPSServer, ...]]:  # noqa: ANN001
    """(trusted, other, bouncer): the host the credential is for, a different host that serves the same
    repository and accepts the same token, and a server on the trusted address that redirects to `other`."""
    served = tmp_path / "served"
    served.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(fleet_repo.path), str(served / "fleet.git")], check=True)
    certs = tmp_path / "certs"
    certs.mkdir()
    cert = self_signed(certs, ("127.0.0.1", "127.0.0.2"))
    monkeypatch.setenv("GIT_SSL_CAINFO", str(cert[0]))
    trusted = GitHTTPSServer(served, tmp_path, username="deploy", password=TOKEN, cert=cert)
    other = GitHTTPSServer(served, tmp_path, username="deploy", password=TOKEN, host="127.0.0.2", cert=cert)
    with trusted, other:
        bouncer = GitHTTPSServer(served, tmp_path, username="deploy", password=TOKEN, cert=cert,
                                 redirect_to=f"https://{other.netloc}")
        with bouncer:
            yield trusted, other, bouncer


async def _store(app, name: str, host: str | None) -> None:  # noqa: ANN001
    metadata = {"username": "deploy", **({"host": host} if host is not None else {})}
    async with app.sessionmaker() as s, s.begin():
        await CredentialStore(app.transit).store(s, account_id=app.stdio_caller.account_id, name=name,
                                                 kind="git_https", secret=SecretStr(TOKEN), metadata=metadata)


async def _repo_count(client) -> int:  # noqa: ANN001
    return _ok(await client.call_tool("system_gitops_list_repositories", {}))["count"]


async def test_credential_is_sent_only_to_its_host(client, app, servers) -> None:  # noqa: ANN001
    trusted, other, _ = servers
    await _store(app, "github", trusted.netloc)

    # The legitimate pairing works and the trusted host gets the token.
    repo = _ok(await client.call_tool("system_gitops_register_repository", {
        "name": "fleet", "repo_url": trusted.url("fleet.git"), "credential": "github"}))["repository"]
    run = _ok(await client.call_tool("system_gitops_sync_repository", {"repository_id": repo["id"]}))["sync_run"]
    assert run["status"] == "success" and f"deploy:{TOKEN}" in trusted.seen_auth

    # Pairing the credential with another host is refused at registration, saying what to do.
    text = _error(await client.call_tool("system_gitops_register_repository", {
        "name": "evil", "repo_url": other.url("fleet.git"), "credential": "github"}))
    assert f"bound to host {trusted.netloc}" in text and f"repository is on {other.netloc}" in text
    assert f"store a credential for {other.netloc}" in text.lower() and TOKEN not in text
    assert await _repo_count(client) == 1

    # ... and at update, when the URL was registered without one.
    evil = _ok(await client.call_tool("system_gitops_register_repository", {
        "name": "evil", "repo_url": other.url("fleet.git")}))["repository"]
    text = _error(await client.call_tool("system_gitops_update_repository", {
        "repository_id": evil["id"], "credential": "github"}))
    assert f"bound to host {trusted.netloc}" in text
    got = _ok(await client.call_tool("system_gitops_get_repository", {"repository_id": evil["id"]}))["repository"]
    assert got["credential"] is None

    # A pairing that already exists (stored before hosts were bound) is refused when git would run:
    # the sync records a failed run and the other host never hears the token.
    async with app.sessionmaker() as s, s.begin():
        await s.execute(update(GitOpsRepository).where(GitOpsRepository.id == evil["id"]).values(credential="github"))
    run = _ok(await client.call_tool("system_gitops_sync_repository", {"repository_id": evil["id"]}))["sync_run"]
    assert (run["status"], run["stage"]) == ("failed", "fetch") and f"bound to host {trusted.netloc}" in run["error"]
    text = _error(await client.call_tool("system_gitops_get_drift_report", {"repository_id": evil["id"]}))
    assert f"bound to host {trusted.netloc}" in text
    assert other.seen_auth == [] and TOKEN not in json.dumps(run)


async def test_same_address_other_port_is_another_host(client, app, servers) -> None:  # noqa: ANN001
    trusted, _, bouncer = servers
    await _store(app, "github", trusted.netloc)
    text = _error(await client.call_tool("system_gitops_register_repository", {
        "name": "evil", "repo_url": bouncer.url("fleet.git"), "credential": "github"}))
    assert f"bound to host {trusted.netloc}" in text and f"repository is on {bouncer.netloc}" in text


async def test_a_redirect_to_another_host_never_carries_the_credential(client, app, servers) -> None:  # noqa: ANN001
    _, other, bouncer = servers
    # The credential is bound to the bouncer's host, which redirects git to `other`.
    await _store(app, "bouncer", bouncer.netloc)
    repo = _ok(await client.call_tool("system_gitops_register_repository", {
        "name": "bounced", "repo_url": bouncer.url("fleet.git"), "credential": "bouncer"}))["repository"]
    run = _ok(await client.call_tool("system_gitops_sync_repository", {"repository_id": repo["id"]}))["sync_run"]
    assert (run["status"], run["stage"]) == ("failed", "fetch") and bouncer.requests, run
    assert "redirect" in run["error"], run["error"]
    assert other.seen_auth == [] and TOKEN not in json.dumps(run)


async def test_a_git_credential_without_a_host_is_refused(client, app, servers) -> None:  # noqa: ANN001
    trusted, _, _ = servers
    await _store(app, "legacy", None)
    text = _error(await client.call_tool("system_gitops_register_repository", {
        "name": "fleet", "repo_url": trusted.url("fleet.git"), "credential": "legacy"}))
    assert "no metadata.host" in text and "metadata.host" in text
    await _store(app, "weird", "https://127.0.0.1/x")
    text = _error(await client.call_tool("system_gitops_register_repository", {
        "name": "fleet", "repo_url": trusted.url("fleet.git"), "credential": "weird"}))
    assert "bare host[:port]" in text
    text = _error(await client.call_tool("system_gitops_register_repository", {
        "name": "fleet", "repo_url": trusted.url("fleet.git"), "credential": "missing"}))
    assert "no credential named 'missing'" in text and f"metadata.host={trusted.netloc}" in text
    assert await _repo_count(client) == 0 and trusted.seen_auth == []
