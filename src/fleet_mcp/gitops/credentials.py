"""Turn a stored credential (vault credential store) into the GitCredential a fetch needs.

Conventions: a `git_https` credential's secret is the password or access token and its metadata
`username` names the user (default "git"); a `git_ssh` credential's secret is the private key
(OpenSSH or PEM) and metadata `username` is optional (the URL's user wins).

Every git credential is bound to one host: its metadata `host` (`github.com`, `git.example:8443`)
is required, and its kind fixes the scheme (git_https → https://, git_ssh → ssh). The fetch refuses
to run git with it for a URL on any other host (`fetch.check_credential_host`), and register/update
refuse to pair a URL with a credential bound elsewhere (`check_pairing`), so an operator who may
register repositories cannot send a stored token to a server of their choosing.
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.errors import InvalidArgument, NotFound
from fleet_mcp.gitops.fetch import GitCredential, check_credential_host
from fleet_mcp.gitops.options import CredentialResolver
from fleet_mcp.gitops.urls import parse_bound_host, validate_repo_url

GIT_KINDS = ("git_https", "git_ssh")


class CredentialSource(Protocol):
    """The part of the vault CredentialStore used here."""

    async def get(self, session: AsyncSession, *, account_id: int, name: str) -> Any: ...

    async def get_plaintext(self, session: AsyncSession, account_id: int, name: str) -> bytes: ...


async def git_credential(session: AsyncSession, store: CredentialSource, account_id: int, name: str) -> GitCredential:
    info = await store.get(session, account_id=account_id, name=name)
    if info.kind not in GIT_KINDS:
        raise InvalidArgument(
            f"credential {name!r} is of kind {info.kind}; git needs git_https or git_ssh",
            hint="store the git credential with kind git_https (token, metadata.username) or git_ssh (private key)",
            credential=name,
        )
    host = bound_host(info, name)
    secret = (await store.get_plaintext(session, account_id, name)).decode("utf-8")
    username = (info.metadata or {}).get("username")
    if info.kind == "git_https":
        return GitCredential(kind="git_https", name=name, host=host, username=username or "git", password=secret)
    return GitCredential(kind="git_ssh", name=name, host=host, username=username, private_key=secret)


def bound_host(info: Any, name: str) -> str:
    """The normalised host a stored git credential is bound to (its metadata `host`); refused when absent."""
    transport = "https" if info.kind == "git_https" else "ssh"
    raw = (info.metadata or {}).get("host")
    if raw is None:
        raise InvalidArgument(
            f"credential {name!r} has no metadata.host: git credentials are bound to the host they are for",
            hint="store it again with metadata.host set to the git server's host name (e.g. github.com)",
            credential=name,
        )
    try:
        return parse_bound_host(raw, transport)
    except InvalidArgument as exc:
        raise InvalidArgument(f"credential {name!r}: {exc.message}", hint=exc.hint, credential=name) from None


async def check_pairing(
    session: AsyncSession, store: CredentialSource, account_id: int, name: str, repo_url: str, *, allow_local: bool
) -> None:
    """Refuse to pair `repo_url` with credential `name` unless it is a git credential of the URL's
    scheme, bound to the URL's host. Reads metadata only (the secret is never decrypted here)."""
    parsed = validate_repo_url(repo_url, allow_local=allow_local)
    try:
        info = await store.get(session, account_id=account_id, name=name)
    except NotFound:
        raise NotFound(
            f"no credential named {name!r} in this account",
            hint=f"store it first with system_vault_store_credential (kind git_https or git_ssh, "
            f"metadata.host={parsed.host or '<git host>'})",
            credential=name,
        ) from None
    if info.kind not in GIT_KINDS:
        raise InvalidArgument(
            f"credential {name!r} is of kind {info.kind}; git needs git_https or git_ssh",
            hint="store the git credential with kind git_https (token, metadata.username) or git_ssh (private key)",
            credential=name,
        )
    if parsed.transport == "local":
        return
    wanted = "git_https" if parsed.transport == "https" else "git_ssh"
    if info.kind != wanted:
        raise InvalidArgument(
            f"credential {name!r} is of kind {info.kind}, but the repository URL uses {parsed.transport}",
            hint=f"pair this URL with a {wanted} credential",
            credential=name,
        )
    check_credential_host(GitCredential.model_construct(kind=info.kind, name=name, host=bound_host(info, name)),
                          parsed)


def store_resolver(session: AsyncSession, store: CredentialSource, account_id: int) -> CredentialResolver:
    async def resolve(name: str) -> GitCredential:
        return await git_credential(session, store, account_id, name)

    return resolve
