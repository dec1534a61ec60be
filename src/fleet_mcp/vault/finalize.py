"""The last steps of a pepper rotation: finalize (raise min_decryption_version only when nothing old
remains) and trim (delete old key versions for good).

Both take the caller's session (and never commit). The local keyring, which lives in the same database,
applies its policy change inside that unit of work, so the change commits with the call's audit row and
never waits for a lock the caller already holds; Vault applies it on its side.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp.errors import Busy, Conflict, InvalidArgument
from fleet_mcp.vault.rotation_jobs import active_job, count_below
from fleet_mcp.vault.schemas import FinalizeResult, TrimResult
from fleet_mcp.vault.transit import TransitBackend

TRIM_WARNING = (
    "Trimming is irreversible: key versions below v{n} are deleted for good, and every backup, export or "
    "copy holding ciphertexts below v{n} becomes unreadable forever."
)


async def finalize(
    session: AsyncSession, transit: TransitBackend, *, min_decryption_version: int | None = None
) -> FinalizeResult:
    """Raise min_decryption_version (default: latest) only if no stored ciphertext remains below it."""
    job = await active_job(session)
    if job is not None:
        raise Busy(f"rotation job {job.id} is {job.status}; finalize after it has completed", job_id=job.id)
    key = await transit.read_key(session=session)
    target = key.latest_version if min_decryption_version is None else min_decryption_version
    if not 1 <= target <= key.latest_version:
        raise InvalidArgument(f"min_decryption_version must be between 1 and the latest version v{key.latest_version}")
    remaining = await count_below(session, target)
    base = {"previous_min_decryption_version": key.min_decryption_version, "latest_version": key.latest_version}
    if remaining:
        return FinalizeResult(
            min_decryption_version=key.min_decryption_version,
            refused=True,
            remaining_below=remaining,
            message=f"refused: {remaining} stored ciphertexts are still below v{target} and would become "
            "unreadable. Rewrap them (rotate, or resume the rotation job) or delete them, then retry.",
            **base,
        )
    if target <= key.min_decryption_version:
        return FinalizeResult(
            min_decryption_version=key.min_decryption_version,
            refused=False,
            remaining_below=0,
            message=f"min_decryption_version is already v{key.min_decryption_version}; nothing to do",
            **base,
        )
    info = await transit.set_min_versions(min_decryption=target, session=session)
    return FinalizeResult(
        min_decryption_version=info.min_decryption_version,
        refused=False,
        remaining_below=0,
        message=f"min_decryption_version raised to v{info.min_decryption_version}: older ciphertexts no longer "
        "decrypt. Until a trim, lowering it again restores them.",
        **base,
    )


async def trim(
    session: AsyncSession,
    transit: TransitBackend,
    *,
    min_available_version: int | None = None,
    backup_min_version: int | None = None,
) -> TrimResult:
    """Delete key versions below `min_available_version` (default: min_decryption_version). Irreversible.

    Refused while a stored ciphertext is below the trim point, and while a backup the operator declared
    (`backup_min_version`: the oldest key version a backup that may still be restored needs) would lose
    its key version."""
    key = await transit.read_key(session=session)
    n = key.min_decryption_version if min_available_version is None else min_available_version
    if backup_min_version is not None and n > backup_min_version:
        raise Conflict(
            f"cannot trim to v{n}: a declared backup still needs key version v{backup_min_version} "
            f"(FLEET_MCP_PEPPER_BACKUP_MIN_VERSION={backup_min_version}); trimming would make it unreadable forever",
            hint=f"trim to at most v{backup_min_version}, or raise FLEET_MCP_PEPPER_BACKUP_MIN_VERSION once the "
            "backups that need older versions have aged out",
            backup_min_version=backup_min_version,
        )
    if n > key.min_decryption_version:
        raise InvalidArgument(
            f"cannot trim to v{n}: min_decryption_version is v{key.min_decryption_version}",
            hint="finalize the rotation first (system_vault_finalize_pepper_rotation)",
        )
    if n <= key.min_available_version:
        raise InvalidArgument(
            f"versions below v{n} are already trimmed (min_available_version v{key.min_available_version})"
        )
    remaining = await count_below(session, n)
    if remaining:
        raise Conflict(
            f"{remaining} stored ciphertexts are below v{n}; trimming would destroy them",
            hint="rewrap them first",
            remaining_below=remaining,
        )
    if key.min_encryption_version < n:
        # Vault requires min_encryption_version >= the trim point; encryption always uses the latest anyway.
        await transit.set_min_versions(min_encryption=n, session=session)
    info = await transit.trim(n, session=session)
    return TrimResult(
        min_available_version=info.min_available_version,
        min_encryption_version=info.min_encryption_version,
        min_decryption_version=info.min_decryption_version,
        latest_version=info.latest_version,
        deleted_versions=list(range(max(key.min_available_version, 1), n)),
        warning=TRIM_WARNING.format(n=n),
    )
