"""Turn a stored credential (vault credential store) into the GitCredential a fetch needs.

Conventions: a `git_https` credential's secret is the password or access token and its metadata
`username` names the user (default "git"); a `git_ssh` credential's secret is the private key
(OpenSSH or PEM) and metadata `username` is optional (the URL's user wins).
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.errors import InvalidArgument
from fleet_mcp.gitops.fetch import GitCredential
from fleet_mcp.gitops.options import CredentialResolver

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
    secret = (await store.get_plaintext(session, account_id, name)).decode("utf-8")
    username = (info.metadata or {}).get("username")
    if info.kind == "git_https":
        return GitCredential(kind="git_https", username=username or "git", password=secret)
    return GitCredential(kind="git_ssh", username=username, private_key=secret)


def store_resolver(session: AsyncSession, store: CredentialSource, account_id: int) -> CredentialResolver:
    async def resolve(name: str) -> GitCredential:
        return await git_credential(session, store, account_id, name)

    return resolve
