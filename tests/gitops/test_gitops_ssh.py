"""Git over SSH against a real `sshd` on loopback: a repository registered with an `ssh://` URL and a stored
`git_ssh` credential syncs through the MCP client, the key reaches ssh only as a private file, and the
server's host key is checked against the pinned one."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import services
from tests.gitops.gitops_helpers import BASE_FLEET, FleetRepo

pytestmark = pytest.mark.anyio

SSHD = "/usr/sbin/sshd"


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


class SSHServer:
    """sshd -D -e as root with its own config, host key and authorized key in a temp dir, on a free port.
    Readiness is its "Server listening" log line, not a poll."""

    def __init__(self, user_pubkey: str) -> None:
        sshd = shutil.which("sshd") or (SSHD if Path(SSHD).exists() else None)
        if sshd is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
            services.missing("sshd (openssh-server) and ssh", "apt-get install openssh-server openssh-client")
        if os.geteuid() != 0:
            services.missing("sshd", "the SSH test runs sshd as root (scripts/test runs as root in CI)")
        self.dir = Path(tempfile.mkdtemp(prefix="fleet-sshd-"))
        os.chmod(self.dir, 0o700)
        self.host_key = self.dir / "host_ed25519"
        self.host_pub = _keygen(self.host_key, "fleet-test-host")
        (self.dir / "authorized_keys").write_text(f"restrict {user_pubkey}\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.user = "root"
        config = self.dir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\nPidFile {self.dir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\nAllowUsers {self.user}\n"
            "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel VERBOSE\n"
            "PrintMotd no\nAcceptEnv none\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.log: list[str] = []
        self._listening = threading.Event()
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if not self._listening.wait(30):
            self.stop()
            raise RuntimeError(f"sshd did not start: {self.log[-5:]}")

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip())
            if "Server listening on" in line:
                self._listening.set()
        self._listening.set()  # exited: wake the waiter, which then reports the log

    def known_hosts_line(self, pub: str | None = None) -> str:
        key_type, key_b64 = (pub or self.host_pub).split()[:2]
        return f"[127.0.0.1]:{self.port} {key_type} {key_b64}\n"

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def db_url(tmp_path: Path) -> str:  # SQLite only: the transport is what is under test here
    return f"sqlite+aiosqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture
def deploy_key(tmp_path: Path) -> tuple[str, str]:
    if shutil.which("ssh-keygen") is None:
        services.missing("ssh-keygen (openssh-client)", "apt-get install openssh-client")
    key = tmp_path / "keys" / "deploy"
    key.parent.mkdir()
    pub = _keygen(key, "fleet-deploy")
    return key.read_text(), pub


@pytest.fixture
def sshd(deploy_key: tuple[str, str]) -> Iterator[SSHServer]:
    server = SSHServer(deploy_key[1])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def served_repo(tmp_path: Path) -> tuple[FleetRepo, Path]:
    src = FleetRepo(tmp_path / "fleet-src")
    src.commit({"fleet.yaml": BASE_FLEET}, "initial fleet")
    bare = tmp_path / "served" / "fleet.git"
    bare.parent.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(src.path), str(bare)], check=True)
    return src, bare


def _pin(app, line: str) -> None:  # noqa: ANN001
    """Pin the server's host key where fetches look for known hosts (the GitOps cache's known_hosts)."""
    cache = app.settings.git_cache_dir
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    (cache / "known_hosts").write_text(line)


async def _register_and_sync(client, url: str, private_key: str) -> dict:  # noqa: ANN001
    from urllib.parse import urlsplit

    where = urlsplit(url)  # git credentials are bound to the host (and port) they are for
    stored = await client.call_tool("system_vault_store_credential",
                                    {"name": "deploy-key", "kind": "git_ssh", "secret": private_key,
                                     "metadata": {"host": f"{where.hostname}:{where.port}"}})
    assert not stored.is_error, stored.content
    assert private_key not in str(stored.structured_content)
    reg = await client.call_tool("system_gitops_register_repository",
                                 {"name": "fleet-ssh", "repo_url": url, "branch": "main", "credential": "deploy-key"})
    assert not reg.is_error, reg.content
    rid = reg.structured_content["repository"]["id"]
    synced = await client.call_tool("system_gitops_sync_repository", {"repository_id": rid})
    assert not synced.is_error, synced.content
    return synced.structured_content["sync_run"]


async def test_ssh_repository_syncs_with_a_stored_key_and_a_pinned_host_key(
    app, client, sshd: SSHServer, served_repo: tuple[FleetRepo, Path], deploy_key: tuple[str, str]  # noqa: ANN001
) -> None:
    src, bare = served_repo
    _pin(app, sshd.known_hosts_line())
    run = await _register_and_sync(client, sshd.url(bare), deploy_key[0])
    assert run["status"] == "success", run
    assert run["revision"] == src.git("rev-parse", "HEAD")
    assert run["diff_count"] > 0 and run["proposal_ids"]
    # The server saw our key (and only public-key authentication is enabled there).
    fingerprint = subprocess.run(["ssh-keygen", "-lf", "-"], input=deploy_key[1], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    assert any("Accepted publickey for root" in ln and fingerprint in ln for ln in sshd.log), sshd.log[-10:]
    # The key file existed only for the fetch.
    assert list((app.settings.git_cache_dir / "tmp").iterdir()) == []


async def test_ssh_fetch_refuses_a_host_key_other_than_the_pinned_one(
    app, client, sshd: SSHServer, served_repo: tuple[FleetRepo, Path], deploy_key: tuple[str, str],  # noqa: ANN001
    tmp_path: Path,
) -> None:
    _, bare = served_repo
    impostor = _keygen(tmp_path / "keys" / "impostor", "impostor")
    _pin(app, sshd.known_hosts_line(impostor))
    run = await _register_and_sync(client, sshd.url(bare), deploy_key[0])
    assert run["status"] == "failed" and run["stage"] == "fetch", run
    assert "host key is not pinned, or does not match" in run["error"], run
    assert deploy_key[0] not in str(run)
    # ssh gave up before authenticating: the server never saw the key.
    assert not any("Accepted publickey" in ln for ln in sshd.log), sshd.log[-10:]


async def test_ssh_fetch_refuses_a_host_that_was_never_pinned(
    app, client, sshd: SSHServer, served_repo: tuple[FleetRepo, Path], deploy_key: tuple[str, str]  # noqa: ANN001
) -> None:
    _, bare = served_repo
    run = await _register_and_sync(client, sshd.url(bare), deploy_key[0])
    assert run["status"] == "failed" and run["stage"] == "fetch", run
    assert "host key is not pinned, or does not match" in run["error"], run
    assert not (app.settings.git_cache_dir / "known_hosts").exists() or \
        (app.settings.git_cache_dir / "known_hosts").read_text().strip() == ""  # nothing was pinned by contact
    assert not any("Accepted publickey" in ln for ln in sshd.log), sshd.log[-10:]
