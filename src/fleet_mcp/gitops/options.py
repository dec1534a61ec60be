"""The GitOps knobs a service call needs, taken once from Settings (services never read the environment)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet_mcp.gitops.fetch import DEFAULT_TIMEOUT, GitCredential

#: Resolves a stored credential name to its secret parts (the vault's credential store, later).
CredentialResolver = Callable[[str], Awaitable[GitCredential]]

#: A sync claim older than this is considered abandoned (a crashed replica) and may be taken over.
DEFAULT_CLAIM_TTL = 900.0


@dataclass(frozen=True)
class GitOpsOptions:
    cache_dir: Path
    allow_local_repos: bool = False
    git_timeout: float = DEFAULT_TIMEOUT
    max_proposals_per_sync: int = 25
    claim_ttl: float = DEFAULT_CLAIM_TTL

    @classmethod
    def from_settings(cls, settings: Any) -> GitOpsOptions:
        return cls(
            cache_dir=settings.git_cache_dir,
            allow_local_repos=settings.allow_local_repos,
            git_timeout=settings.git_timeout,
            max_proposals_per_sync=settings.max_proposals_per_sync,
        )
