"""Registered GitOps repositories: register, read, update and delete (services; the caller commits)."""

from __future__ import annotations

import re
from typing import Any, cast

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.db.base import utcnow
from fleet_mcp.errors import Conflict, InvalidArgument, NotFound
from fleet_mcp.fleet.store import MANUAL, MODEL_BY_KIND, bump_generation, gitops_owner
from fleet_mcp.gitops.credentials import CredentialSource, check_pairing
from fleet_mcp.gitops.models import GitOpsProposal, GitOpsRepository, GitOpsSyncRun
from fleet_mcp.gitops.urls import validate_branch, validate_path_prefix, validate_repo_url

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")
_CREDENTIAL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@/:+-]{0,199}$")  # the vault's credential names


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid repository name {name!r}",
            hint="use 1-120 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def _check_credential(name: str | None) -> str | None:
    if name is None or name == "":
        return None
    if not _CREDENTIAL_RE.fullmatch(name):
        raise InvalidArgument(
            "invalid credential name",
            hint="pass the *name* of a stored credential (system_vault_list_credentials), never a secret",
        )
    return name


async def register_repository(
    session: AsyncSession,
    *,
    account_id: int,
    name: str,
    repo_url: str,
    branch: str = "main",
    path_prefix: str = "",
    credential: str | None = None,
    auto_apply: bool = False,
    enabled: bool = True,
    allow_empty: bool = False,
    allow_local: bool = False,
    credentials: CredentialSource | None = None,
) -> GitOpsRepository:
    """Register a repository (URL, branch, prefix and credential name validated; names unique per account).

    With `credentials` (the vault's store), a named credential must be a git credential bound to the
    URL's host (`credentials.check_pairing`); the fetch checks the binding again before git runs."""
    _check_name(name)
    url = validate_repo_url(repo_url, allow_local=allow_local).url
    branch = validate_branch(branch)
    prefix = validate_path_prefix(path_prefix)
    credential = _check_credential(credential)
    if credential is not None and credentials is not None:
        await check_pairing(session, credentials, account_id, credential, url, allow_local=allow_local)
    existing = (
        await session.execute(
            select(GitOpsRepository.id).where(GitOpsRepository.account_id == account_id, GitOpsRepository.name == name)
        )
    ).scalar_one_or_none()
    if existing is not None:
        raise Conflict(
            f"a repository named {name!r} is already registered",
            hint="pick another name or update the existing one",
            repository_id=existing,
        )
    repo = GitOpsRepository(
        account_id=account_id,
        name=name,
        repo_url=url,
        branch=branch,
        path_prefix=prefix,
        credential=credential,
        auto_apply=auto_apply,
        enabled=enabled,
        allow_empty=allow_empty,
        last_status="never",
    )
    session.add(repo)
    await session.flush()
    return repo


async def list_repositories(session: AsyncSession, *, account_id: int) -> list[GitOpsRepository]:
    stmt = select(GitOpsRepository).where(GitOpsRepository.account_id == account_id).order_by(GitOpsRepository.id)
    return list((await session.execute(stmt)).scalars().all())


async def list_enabled_repositories(session: AsyncSession) -> list[GitOpsRepository]:
    """Every enabled repository of every account (the scheduler's drift sensor and auto-sync loop)."""
    stmt = select(GitOpsRepository).where(GitOpsRepository.enabled.is_(True)).order_by(GitOpsRepository.id)
    return list((await session.execute(stmt)).scalars().all())


# Built once: composing the expression costs more than running it on SQLite.
_GET = select(GitOpsRepository).where(GitOpsRepository.id == bindparam("id"),
                                      GitOpsRepository.account_id == bindparam("account_id"))
_GET_FOR_UPDATE = _GET.with_for_update()


async def get_repository(
    session: AsyncSession, *, account_id: int, repository_id: int, for_update: bool = False
) -> GitOpsRepository:
    stmt = _GET_FOR_UPDATE if for_update else _GET
    repo = (await session.execute(stmt, {"id": repository_id, "account_id": account_id})).scalar_one_or_none()
    if repo is None:
        raise NotFound(
            f"repository {repository_id} does not exist",
            hint="list them with system_gitops_list_repositories",
            repository_id=repository_id,
        )
    return repo


async def update_repository(
    session: AsyncSession,
    *,
    account_id: int,
    repository_id: int,
    branch: str | None = None,
    path_prefix: str | None = None,
    credential: str | None | _Unset = UNSET,
    auto_apply: bool | None = None,
    enabled: bool | None = None,
    allow_empty: bool | None = None,
    credentials: CredentialSource | None = None,
) -> GitOpsRepository:
    """Change settings; a changed branch or prefix forgets the fetched state and supersedes pending proposals.

    `credential=None` or `""` removes the credential; leave it UNSET to keep it. A new credential is
    checked against the repository's host like at registration (when `credentials` is given).
    """
    repo = await get_repository(session, account_id=account_id, repository_id=repository_id)
    source_changed = False
    if branch is not None and branch != repo.branch:
        repo.branch = validate_branch(branch)
        source_changed = True
    if path_prefix is not None:
        prefix = validate_path_prefix(path_prefix)
        if prefix != repo.path_prefix:
            repo.path_prefix = prefix
            source_changed = True
    if not isinstance(credential, _Unset):
        new = _check_credential(credential)
        if new is not None and credentials is not None:
            # The stored URL was validated when it was registered: only its host matters here.
            await check_pairing(session, credentials, account_id, new, repo.repo_url, allow_local=True)
        repo.credential = new
    if auto_apply is not None:
        repo.auto_apply = auto_apply
    if enabled is not None:
        repo.enabled = enabled
    if allow_empty is not None:
        repo.allow_empty = allow_empty
    if source_changed:
        repo.desired_state = None
        repo.desired_revision = None
        repo.drift_checked_revision = None
        repo.last_live_digest = None
        repo.last_live_generation = None
        await session.execute(
            update(GitOpsProposal)
            .where(GitOpsProposal.repository_id == repo.id, GitOpsProposal.status == "pending")
            .values(
                status="superseded",
                reason="the repository's branch or path_prefix changed",
                updated_at=utcnow(),
            )
        )
    await session.flush()
    return repo


async def delete_repository(session: AsyncSession, *, account_id: int, repository_id: int) -> dict[str, int]:
    """Delete a repository with its sync runs and proposals; resources it managed become manual."""
    repo = await get_repository(session, account_id=account_id, repository_id=repository_id)
    owner = gitops_owner(repo.id)
    released = 0
    for model in MODEL_BY_KIND.values():
        res = cast(CursorResult[Any], await session.execute(
            update(model).where(model.account_id == account_id, model.managed_by == owner).values(managed_by=MANUAL)
        ))
        released += res.rowcount or 0
    if released:
        await bump_generation(session, account_id)
    proposals = cast(CursorResult[Any], await session.execute(
        delete(GitOpsProposal).where(GitOpsProposal.repository_id == repo.id)))
    runs = cast(CursorResult[Any], await session.execute(
        delete(GitOpsSyncRun).where(GitOpsSyncRun.repository_id == repo.id)))
    await session.delete(repo)
    await session.flush()
    return {
        "proposals_deleted": proposals.rowcount or 0,
        "sync_runs_deleted": runs.rowcount or 0,
        "resources_released": released,
    }
