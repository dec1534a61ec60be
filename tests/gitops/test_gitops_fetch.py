"""Fetching fleet.yaml from real git repositories: local, HTTPS with credentials, and a server that hangs."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from fleet_mcp.errors import ExternalError, InvalidArgument, NotFound
from fleet_mcp.gitops.fetch import GitCredential, _credential_env, cache_path, fetch_fleet_file
from tests.gitops.gitops_helpers import FleetRepo
from tests.gitops.gitops_servers import GitHTTPSServer, HangingServer


def _fetch(repo_url: str, cache: Path, branch: str = "main", prefix: str = "", **kw):  # noqa: ANN202
    kw.setdefault("allow_local", True)
    kw.setdefault("timeout", 20.0)
    return fetch_fleet_file(repo_url, branch, prefix, cache_dir=cache, **kw)


def test_fetch_reads_blob_at_commit_without_checkout(fleet_repo: FleetRepo, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = fleet_repo.git("rev-parse", "HEAD")
    got = _fetch(fleet_repo.url, cache)
    assert got.commit == first
    assert got.content == (fleet_repo.path / "fleet.yaml").read_bytes()
    bare = cache_path(cache, fleet_repo.url)
    assert (bare / "HEAD").exists() and not (bare / "fleet.yaml").exists()  # bare: no work tree
    assert (bare / "shallow").exists()  # depth 1

    second = fleet_repo.commit({"fleet.yaml": "templates: {}\n"})
    again = _fetch("file://" + fleet_repo.url, cache)
    assert (again.commit, again.content) == (second, b"templates: {}\n")


def test_fetch_under_path_prefix_and_branch(fleet_repo: FleetRepo, tmp_path: Path) -> None:
    fleet_repo.git("checkout", "-q", "-b", "prod")
    sha = fleet_repo.commit({"fleets/eu/fleet.yaml": "modules: {}\n"})
    got = _fetch(fleet_repo.url, tmp_path / "c", branch="prod", prefix="fleets/eu")
    assert (got.commit, got.path, got.content) == (sha, "fleets/eu/fleet.yaml", b"modules: {}\n")


def test_symlinked_fleet_yaml_refused(fleet_repo: FleetRepo, tmp_path: Path) -> None:
    (tmp_path / "outside.yaml").write_text("templates: {}\n")
    (fleet_repo.path / "linked").mkdir()
    os.symlink(str(tmp_path / "outside.yaml"), fleet_repo.path / "linked" / "fleet.yaml")
    os.symlink("linked", fleet_repo.path / "via-dir")
    fleet_repo.commit()
    with pytest.raises(InvalidArgument, match="linked/fleet.yaml is a symbolic link"):
        _fetch(fleet_repo.url, tmp_path / "c", prefix="linked")
    with pytest.raises(InvalidArgument, match="via-dir is a symbolic link"):
        _fetch(fleet_repo.url, tmp_path / "c", prefix="via-dir")


def test_missing_file_branch_and_repository(fleet_repo: FleetRepo, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    with pytest.raises(NotFound, match="nowhere/fleet.yaml not found"):
        _fetch(fleet_repo.url, cache, prefix="nowhere")
    with pytest.raises(NotFound, match="branch 'release' does not exist"):
        _fetch(fleet_repo.url, cache, branch="release")
    with pytest.raises(NotFound, match="repository not found"):
        _fetch(str(tmp_path / "no-such-repo"), cache)


def test_oversized_blob_refused_before_reading(fleet_repo: FleetRepo, tmp_path: Path) -> None:
    fleet_repo.commit({"fleet.yaml": "# x\n" * (2 * 1024 * 1024 // 4)})
    with pytest.raises(InvalidArgument, match="limit is 1048576 bytes"):
        _fetch(fleet_repo.url, tmp_path / "c")


def test_hostile_urls_never_reach_git(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for url in (f"ext::sh -c touch% {marker}", f"--upload-pack=touch {marker}", f"ext::sh -c touch {marker}"):
        with pytest.raises(InvalidArgument):
            _fetch(url, tmp_path / "c")
    with pytest.raises(InvalidArgument, match="disabled"):
        _fetch(str(tmp_path), tmp_path / "c", allow_local=False)
    assert not marker.exists()
    assert not (tmp_path / "c").exists()  # refused before the cache was even created


def test_hanging_server_times_out(tmp_path: Path) -> None:
    with HangingServer() as server, pytest.raises(ExternalError, match="timed out after 1.5 s"):
        _fetch(f"https://127.0.0.1:{server.port}/fleet.git", tmp_path / "c", timeout=1.5)
    # The whole git process group was killed: no helper of ours still talks to that port.
    ps = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout
    alive = [line for line in ps.splitlines() if f"127.0.0.1:{server.port}" in line and not line.startswith("Z")]
    assert alive == []


def _cred_snapshot(cache: Path) -> dict[str, object]:
    tmp_root = cache / "tmp"
    files = {}
    for d in tmp_root.iterdir():
        files["dir_mode"] = stat.S_IMODE(d.stat().st_mode)
        for f in d.iterdir():
            files[f.name] = stat.S_IMODE(f.stat().st_mode)
    ps = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
    return {"files": files, "ps": ps}


@pytest.fixture
def https_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fleet_repo: FleetRepo):  # noqa: ANN201
    root = tmp_path / "served"
    root.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(fleet_repo.path), str(root / "fleet.git")], check=True)
    cache = tmp_path / "cache"
    server = GitHTTPSServer(root, tmp_path, username="deploy", password="s3cret-T0ken",
                            on_auth=lambda: _cred_snapshot(cache))
    monkeypatch.setenv("GIT_SSL_CAINFO", str(server.cert_file))
    with server:
        yield server, cache


def test_https_credential_reaches_git_only_through_private_files(https_server, fleet_repo: FleetRepo) -> None:
    server, cache = https_server
    cred = GitCredential(kind="git_https", host=server.netloc, username="deploy", password="s3cret-T0ken")
    assert "s3cret" not in repr(cred)
    got = _fetch(server.url("fleet.git"), cache, credential=cred)
    assert got.commit == fleet_repo.git("rev-parse", "HEAD")
    assert "deploy:s3cret-T0ken" in server.seen_auth
    # While git ran: secrets in 0600 files, the askpass script 0700, in a 0700 directory ...
    files = server.snapshots[-1]["files"]
    assert files == {"dir_mode": 0o700, "username": 0o600, "password": 0o600, "askpass.sh": 0o700}
    # ... and never on any command line.
    assert "s3cret-T0ken" not in server.snapshots[-1]["ps"]
    # Afterwards the directory is gone.
    assert list((cache / "tmp").iterdir()) == []


def test_https_wrong_or_missing_credential(https_server) -> None:
    server, cache = https_server
    bad = GitCredential(kind="git_https", host=server.netloc, username="deploy", password="wrong")
    with pytest.raises(ExternalError, match="authentication failed"):
        _fetch(server.url("fleet.git"), cache, credential=bad)
    with pytest.raises(ExternalError, match="authentication failed"):
        _fetch(server.url("fleet.git"), cache)
    with pytest.raises(InvalidArgument, match="git_https"):
        _fetch(server.url("fleet.git"), cache, credential=GitCredential(kind="git_ssh", private_key="k"))
    # A credential bound to no host, or to another one, never reaches git.
    for host in (None, "127.0.0.2", "127.0.0.1"):
        stray = GitCredential(kind="git_https", host=host, username="deploy", password="s3cret-T0ken")
        with pytest.raises(InvalidArgument, match="host"):
            _fetch(server.url("fleet.git"), cache, credential=stray)
    assert list((cache / "tmp").iterdir()) == [] and "deploy:s3cret-T0ken" not in server.seen_auth


def test_ssh_key_is_a_0600_file_removed_after_use(tmp_path: Path) -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"
    cred = GitCredential(kind="git_ssh", private_key=key)
    assert "b3Bl" not in repr(cred)
    with _credential_env(cred, tmp_path) as env:
        command = env["GIT_SSH_COMMAND"]
        assert "b3Bl" not in command
        key_file = Path(command.split(" -i ", 1)[1].split()[0])
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
        assert key_file.read_text() == key + "\n"
        assert "IdentitiesOnly=yes" in command and "BatchMode=yes" in command
    assert not key_file.exists() and not key_file.parent.exists()


def test_credentials_must_be_complete() -> None:
    with pytest.raises(ValueError, match="username and a password"):
        GitCredential(kind="git_https", username="x")
    with pytest.raises(ValueError, match="private_key"):
        GitCredential(kind="git_ssh")
