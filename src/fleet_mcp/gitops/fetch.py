"""Fetch a branch into a bare cache per repository and read fleet.yaml from the fetched commit (no checkout).

Blocking: call it from a worker thread (`anyio.to_thread.run_sync`). Git runs with a hard timeout
(its whole process group is killed), no prompts, no system/global config, no submodules, a
protocol allow-list and `transfer.fsckObjects`. Credentials reach git only through files in a
private temporary directory (an askpass script reading 0600 files, or an ssh key file with mode
0600) that is removed afterwards — never through the URL, argv or environment values.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import git
from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

from fleet_mcp.errors import ExternalError, InvalidArgument, NotFound
from fleet_mcp.gitops.fleetfile import MAX_BYTES
from fleet_mcp.gitops.urls import (
    RepoURL,
    fleet_file_path,
    validate_branch,
    validate_path_prefix,
    validate_repo_url,
)

DEFAULT_TIMEOUT = 60.0
_SYMLINK_MODE = 0o120000
_TREE_MODE = 0o040000
_SUBMODULE_MODE = 0o160000
_FATAL = re.compile(r"^(fatal|error|remote):\s*(.*)$", re.MULTILINE)


class GitCredential(BaseModel):
    """A stored git credential, resolved by the caller: username+password (https) or a private key (ssh)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["git_https", "git_ssh"]
    #: The stored credential's name (for messages) and the `host[:port]` it is bound to: git is run
    #: with it only for a repository URL on exactly that host (`urls.host_key`).
    name: str | None = None
    host: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    private_key: SecretStr | None = None

    @model_validator(mode="after")
    def _complete(self) -> GitCredential:
        if self.kind == "git_https" and (not self.username or self.password is None):
            raise ValueError("a git_https credential needs a username and a password (or token)")
        if self.kind == "git_ssh" and self.private_key is None:
            raise ValueError("a git_ssh credential needs a private_key")
        for v in (self.username,):
            if v is not None and re.search(r"[\x00-\x1f\x7f]", v):
                raise ValueError("the username contains control characters")
        return self


@dataclass(frozen=True)
class FetchResult:
    """The fetched commit and the bytes of fleet.yaml at that commit."""

    commit: str
    path: str
    content: bytes


def cache_path(cache_dir: Path, repo_url: str) -> Path:
    """The bare cache of one repository URL (a hash, so the URL never becomes a path)."""
    return cache_dir / hashlib.sha256(repo_url.encode()).hexdigest()[:32]


def fetch_fleet_file(
    repo_url: str,
    branch: str,
    path_prefix: str,
    *,
    cache_dir: Path,
    allow_local: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    credential: GitCredential | None = None,
) -> FetchResult:
    """Fetch `branch` (depth 1) into the cache and return the commit and fleet.yaml under `path_prefix`."""
    parsed = validate_repo_url(repo_url, allow_local=allow_local)
    validate_branch(branch)
    prefix = validate_path_prefix(path_prefix)
    if credential is not None:
        if parsed.transport == "https" and credential.kind != "git_https":
            raise InvalidArgument("an https repository needs a git_https credential (username and password/token)")
        if parsed.transport == "ssh" and credential.kind != "git_ssh":
            raise InvalidArgument("an ssh repository needs a git_ssh credential (private key)")
        check_credential_host(credential, parsed)
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    bare = cache_path(cache_dir, parsed.url)
    deadline = time.monotonic() + timeout
    with _locked(bare.with_suffix(".lock"), deadline, timeout):
        if not (bare / "HEAD").exists():
            shutil.rmtree(bare, ignore_errors=True)
            _run_git(
                ["init", "--bare", "--quiet", "--template=", str(bare)],
                cwd=cache_dir,
                env=_base_env(cache_dir, allow_local),
                deadline=deadline,
                timeout=timeout,
                what="git init",
            )
        ref = f"refs/fleet/heads/{branch}"
        with _credential_env(credential, cache_dir) as cred_env:
            env = {**_base_env(cache_dir, allow_local), **cred_env}
            _run_git(
                [
                    "-c",
                    "core.hooksPath=/dev/null",
                    "-c",
                    "credential.helper=",
                    "-c",
                    "transfer.fsckObjects=true",
                    "-c",
                    "fetch.recurseSubmodules=false",
                    "-c",
                    "protocol.version=2",
                    "-c",
                    "http.followRedirects=false",
                    "fetch",
                    "--quiet",
                    "--depth=1",
                    "--no-tags",
                    "--no-recurse-submodules",
                    "--force",
                    "--no-write-fetch-head",
                    "--",
                    parsed.url,
                    f"+refs/heads/{branch}:{ref}",
                ],
                cwd=bare,
                env=env,
                deadline=deadline,
                timeout=timeout,
                what="git fetch",
                branch=branch,
            )
        return _read_blob(bare, ref, fleet_file_path(prefix))


def check_credential_host(credential: GitCredential, parsed: RepoURL) -> None:
    """Refuse to hand a credential to any host but the one it was stored for (no secret in the message)."""
    if parsed.transport == "local":
        return  # git asks no credential for a local path; nothing leaves the machine
    label = repr(credential.name) if credential.name else "the stored credential"
    if credential.host is None:
        raise InvalidArgument(
            f"credential {label} is not bound to a host",
            hint="store it again with metadata.host set to the git server's host (e.g. github.com)",
            credential=credential.name,
        )
    if credential.host != parsed.host:
        raise InvalidArgument(
            f"credential {label} is bound to host {credential.host}, but the repository is on {parsed.host}; "
            "a credential is only ever sent to the host it was stored for",
            hint=f"store a credential for {parsed.host} (system_vault_store_credential with "
            f"metadata.host={parsed.host}) and pass its name as `credential`",
            credential=credential.name,
            host=parsed.host,
        )


def _read_blob(bare: Path, ref: str, path: str) -> FetchResult:
    repo = git.Repo(bare)
    try:
        commit = repo.commit(ref)
        node: object = commit.tree
        parts = path.split("/")
        for i, part in enumerate(parts):
            if not isinstance(node, git.Tree):
                raise NotFound(
                    f"{path} not found at commit {commit.hexsha[:12]}: {'/'.join(parts[:i])} is not a folder",
                    hint="check path_prefix",
                    path=path,
                    revision=commit.hexsha,
                )
            # `join` compares the raw entry names exactly and builds only the matching entry. Iterating
            # the tree would build every entry, and a submodule entry (a gitlink) raises on `.name` in a
            # bare cache with no .gitmodules: a gitlink anywhere before fleet.yaml broke every sync.
            try:
                entry = node.join(part)
            except KeyError:
                entry = None
            if entry is None:
                raise NotFound(
                    f"{path} not found at commit {commit.hexsha[:12]}",
                    hint="commit a fleet.yaml there or fix path_prefix",
                    path=path,
                    revision=commit.hexsha,
                )
            if entry.mode == _SYMLINK_MODE:
                raise InvalidArgument(
                    f"{'/'.join(parts[: i + 1])} is a symbolic link; symlinks are refused",
                    hint="commit fleet.yaml (and its folders) as regular files",
                    path=path,
                    revision=commit.hexsha,
                )
            if entry.mode == _SUBMODULE_MODE:
                raise InvalidArgument(
                    f"{'/'.join(parts[: i + 1])} is a submodule; submodules are not followed",
                    hint="commit fleet.yaml in this repository itself, or point path_prefix at a regular folder",
                    path=path,
                    revision=commit.hexsha,
                )
            node = entry
        if not isinstance(node, git.Blob):
            raise InvalidArgument(f"{path} is a folder, not a file", path=path, revision=commit.hexsha)
        if node.size > MAX_BYTES:
            raise InvalidArgument(
                f"{path} is {node.size} bytes; the limit is {MAX_BYTES} bytes (1 MiB)",
                hint="split the fleet across repositories or path prefixes",
                path=path,
                revision=commit.hexsha,
            )
        return FetchResult(commit=commit.hexsha, path=path, content=node.data_stream.read())
    except (ValueError, git.BadName, git.BadObject) as exc:
        raise ExternalError(
            f"the fetched branch could not be read from the cache ({type(exc).__name__})",
            hint="sync again; if it persists delete the git cache",
        ) from None
    finally:
        repo.close()


def _base_env(cache_dir: Path, allow_local: bool) -> dict[str, str]:
    return {
        "GIT_TERMINAL_PROMPT": "0",
        "GCM_INTERACTIVE": "never",
        "SSH_ASKPASS_REQUIRE": "never",
        "GIT_ASKPASS": shutil.which("false") or "/bin/false",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_COUNT": "0",
        "GIT_CONFIG_PARAMETERS": "",
        "GIT_ALLOW_PROTOCOL": "https:ssh:file" if allow_local else "https:ssh",
        "GIT_PROTOCOL_FROM_USER": "0",
        "GIT_SSH_COMMAND": _ssh_command(cache_dir, None),
        "GIT_SSH_VARIANT": "ssh",
    }


def _ssh_command(cache_dir: Path, key_file: Path | None) -> str:
    # StrictHostKeyChecking=yes: only hosts pinned in our own known_hosts are trusted (never on first use: a
    # first contact through a man in the middle would pin the attacker and hand it the deploy key's use).
    args = [
        "ssh",
        "-F",
        os.devnull,
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={cache_dir / 'known_hosts'}",
        "-o",
        "ConnectTimeout=20",
    ]
    if key_file is not None:
        args += ["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i", str(key_file)]
    return shlex.join(args)


@contextlib.contextmanager
def _credential_env(credential: GitCredential | None, cache_dir: Path) -> Iterator[dict[str, str]]:
    """Write the credential to 0600 files in a private temp dir for the duration of one git call."""
    if credential is None:
        yield {}
        return
    tmp_root = cache_dir / "tmp"
    tmp_root.mkdir(mode=0o700, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="cred-", dir=tmp_root))
    try:
        os.chmod(tmp, 0o700)
        if credential.kind == "git_https":
            assert credential.username is not None and credential.password is not None
            _write_private(tmp / "username", credential.username)
            _write_private(tmp / "password", credential.password.get_secret_value())
            script = tmp / "askpass.sh"
            script.write_text(
                "#!/bin/sh\n"
                f'case "$1" in\n  Username*) exec cat {shlex.quote(str(tmp / "username"))} ;;\n'
                f"  *) exec cat {shlex.quote(str(tmp / 'password'))} ;;\nesac\n"
            )
            os.chmod(script, 0o700)
            yield {"GIT_ASKPASS": str(script)}
        else:
            assert credential.private_key is not None
            key = credential.private_key.get_secret_value()
            key_file = tmp / "id_key"
            _write_private(key_file, key if key.endswith("\n") else key + "\n")
            yield {"GIT_SSH_COMMAND": _ssh_command(cache_dir, key_file)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


@contextlib.contextmanager
def _locked(lock_file: Path, deadline: float, timeout: float) -> Iterator[None]:
    """One git operation per cache at a time (several repositories may share a URL)."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ExternalError(
                        f"git cache busy for more than {timeout:g} s",
                        hint="another fetch of this repository is running; retry",
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def _run_git(
    args: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    deadline: float,
    timeout: float,
    what: str,
    branch: str | None = None,
) -> str:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ExternalError(f"{what} timed out after {timeout:g} s", hint="check the repository URL and network")
    # Own process group, so a timeout kills git *and* its transport helpers (git-remote-https, ssh).
    handle = git.Git(str(cwd)).execute(
        ["git", *args],
        as_process=True,
        env=env,
        with_extended_output=True,
        start_new_session=True,
    )
    proc = handle.proc
    assert proc is not None
    try:
        _, err = proc.communicate(timeout=remaining)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise ExternalError(
            f"{what} timed out after {timeout:g} s and was stopped",
            hint="the git server did not answer in time; check the URL, network and FLEET_MCP_GIT_TIMEOUT",
            timeout=timeout,
        ) from None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stray helpers of a finished git
    if proc.returncode != 0:
        raise _classify(err.decode("utf-8", "replace"), what=what, branch=branch)
    return ""


def _classify(stderr: str, *, what: str, branch: str | None) -> Exception:
    lines = [m.group(2).strip() for m in _FATAL.finditer(stderr)] or [stderr.strip()]
    detail = "; ".join(x for x in lines if x)[:400] or "no output"
    low = stderr.lower()
    if re.search(r"returned error: 30[12378]\b", low):
        return ExternalError(
            f"{what}: the server answered with a redirect, and redirects are not followed "
            "(a stored credential must never reach another host)",
            hint="register the URL the server redirects to (with a credential stored for that host)",
        )
    if "host key verification failed" in low or "no ecdsa host key is known" in low \
            or re.search(r"no \S+ host key is known", low):
        return ExternalError(
            f"{what}: the SSH server's host key is not pinned, or does not match the pinned key",
            hint="pin the host: add its known_hosts line to <data dir>/git-cache/known_hosts, taken from a "
                 "trusted channel (e.g. `ssh-keyscan -p PORT HOST`, checked against the fingerprint the server's "
                 "owner publishes); if the key changed on purpose, replace the old line",
        )
    if "couldn't find remote ref" in low:
        return NotFound(
            f"branch {branch!r} does not exist in the repository", hint="check the branch name", branch=branch
        )
    if (
        "does not appear to be a git repository" in low
        or "repository not found" in low
        or re.search(r"repository '.*' not found", low)
        or ("not found" in low and "http" in low)
    ):
        return NotFound(f"repository not found ({detail})", hint="check repo_url (and that the credential can see it)")
    if (
        "authentication failed" in low
        or "could not read username" in low
        or "could not read password" in low
        or "permission denied" in low
        or "terminal prompts disabled" in low
    ):
        return ExternalError(
            f"{what}: authentication failed ({detail})",
            hint="check the stored credential named by the repository's `credential`",
        )
    return ExternalError(f"{what} failed: {detail}", hint="check repo_url, branch and network")
