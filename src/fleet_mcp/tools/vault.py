"""Vault tools: the write-only credential store, pepper status, rotation jobs, verify, finalize and trim."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy import func, select

from fleet_mcp import principals
from fleet_mcp.context import ToolContext
from fleet_mcp.errors import Busy, ExternalError, PermissionDenied
from fleet_mcp.registry import NoArgs, tool
from fleet_mcp.vault import lease
from fleet_mcp.vault.credentials import CredentialStore
from fleet_mcp.vault.finalize import TRIM_WARNING, finalize, trim
from fleet_mcp.vault.models import Credential, RotationJob
from fleet_mcp.vault.rotation import RotationEngine
from fleet_mcp.vault.rotation_jobs import active_job, count_below, get_job, job_info, plan_job, scoped_info
from fleet_mcp.vault.schemas import CredentialInfo, RotationJobInfo
from fleet_mcp.vault.transit import TransitBackend

log = logging.getLogger(__name__)

VAULT: dict[str, Any] = {"toolset": "vault"}
UserKind = Literal["generic", "git_https", "git_ssh", "api_key", "password", "token"]
#: Vault metadata of every account; without it a caller sees its own account's only.
READ_ALL = "system.credentials.read_all"


def _sees_all(ctx: ToolContext) -> bool:
    return ctx.app.gate.has_permission(ctx.principal, READ_ALL)


def _scope(ctx: ToolContext) -> tuple[int, str] | None:
    """None when the caller may see every account; else its own (account id, name)."""
    return None if _sees_all(ctx) else (ctx.principal.account_id, ctx.principal.account_name)


def _view(ctx: ToolContext, info: RotationJobInfo) -> RotationJobInfo:
    scope = _scope(ctx)
    return info if scope is None else scoped_info(info, *scope)


def _transit(ctx: ToolContext) -> TransitBackend:
    if ctx.app.transit is None:
        raise ExternalError("no transit backend is configured", hint="set FLEET_MCP_TRANSIT (local or vault)")
    transit: TransitBackend = ctx.app.transit
    return transit


# -- models -----------------------------------------------------------------------------------------
class CredentialOut(BaseModel):
    id: int
    name: str
    kind: str
    key_version: int
    metadata: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, c: CredentialInfo) -> CredentialOut:
        return cls(
            id=c.id,
            name=c.name,
            kind=c.kind,
            key_version=c.key_version,
            metadata=c.metadata,
            created_at=c.created_at,
            updated_at=c.updated_at,
        )


class StoreArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        description="Credential name, unique in the account (letters, digits, . _ @ / : + -).",
        min_length=1,
        max_length=200,
    )
    kind: UserKind = Field(
        description="git_https: token/password (metadata.username); git_ssh: private key; "
        "api_key, password, token or generic."
    )
    secret: SecretStr = Field(
        description="The secret. Write-only: it is encrypted under the pepper and never returned, logged or audited.",
        max_length=65536,
    )
    metadata: dict[str, Any] | None = Field(
        default=None,
        description="Descriptive, non-secret fields (e.g. username, host). Secret-looking keys are refused.",
    )


class CredentialResult(BaseModel):
    credential: CredentialOut


@tool(
    name="system_vault_store_credential",
    title="Store a credential",
    permission="system.credentials.write",
    idempotent=True,
    open_world=True,
    **VAULT,
)
async def store_credential(ctx: ToolContext, args: StoreArgs) -> CredentialResult:
    """Create or replace a credential by name; the secret is encrypted under the transit pepper.

    The result carries metadata and the key version only — never the secret."""
    stored = await CredentialStore(_transit(ctx)).store(
        ctx.session,
        account_id=ctx.principal.account_id,
        name=args.name,
        kind=args.kind,
        secret=args.secret,
        metadata=args.metadata,
    )
    return CredentialResult(credential=CredentialOut.of(stored))


class ListArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: UserKind | None = Field(default=None, description="Only credentials of this kind.")


class ListOut(BaseModel):
    credentials: list[CredentialOut]
    count: int


@tool(
    name="system_vault_list_credentials",
    title="List credentials",
    permission="system.credentials.read",
    read_only=True,
    idempotent=True,
    **VAULT,
)
async def list_credentials(ctx: ToolContext, args: ListArgs) -> ListOut:
    """Credentials of this account: names, kinds, metadata and key versions (never secrets)."""
    rows = await CredentialStore(_transit(ctx)).list(ctx.session, account_id=ctx.principal.account_id, kind=args.kind)
    return ListOut(credentials=[CredentialOut.of(c) for c in rows], count=len(rows))


class NameArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Credential name.", min_length=1, max_length=200)


class DeletedOut(BaseModel):
    deleted: bool
    credential: CredentialOut


async def _delete_summary(ctx: ToolContext, args: NameArgs) -> str:
    c = await CredentialStore(_transit(ctx)).get(ctx.session, account_id=ctx.principal.account_id, name=args.name)
    return (
        f"Delete credential {c.name!r} ({c.kind}) of account {ctx.principal.account_name}; the secret is "
        "destroyed and anything referencing it (e.g. a git repository) stops authenticating."
    )


@tool(
    name="system_vault_delete_credential",
    title="Delete a credential",
    permission="system.credentials.write",
    destructive=True,
    summary=_delete_summary,
    **VAULT,
)
async def delete_credential(ctx: ToolContext, args: NameArgs) -> DeletedOut:
    """Delete a credential and its encrypted secret for good."""
    gone = await CredentialStore(_transit(ctx)).delete(ctx.session, account_id=ctx.principal.account_id, name=args.name)
    return DeletedOut(deleted=True, credential=CredentialOut.of(gone))


class PepperStatusOut(BaseModel):
    key_name: str
    backend: str
    latest_version: int
    min_decryption_version: int
    min_encryption_version: int
    min_available_version: int
    ciphertexts_by_version: dict[str, int]
    accounts_by_version: dict[str, int]
    total_ciphertexts: int
    below_latest: int
    active_job: RotationJobInfo | None


@tool(
    name="system_vault_get_pepper_status",
    title="Pepper (transit key) status",
    permission="system.credentials.read",
    read_only=True,
    idempotent=True,
    open_world=True,
    **VAULT,
)
async def get_pepper_status(ctx: ToolContext, args: NoArgs) -> PepperStatusOut:
    """Transit key versions and policy, ciphertexts per key version, accounts per key version, active job.

    Counts cover the caller's account (every account with system.credentials.read_all)."""
    scope = _scope(ctx)
    status = await CredentialStore(_transit(ctx)).pepper_status(
        ctx.session, account_id=None if scope is None else scope[0]
    )
    job = await active_job(ctx.session)
    return PepperStatusOut(**status.model_dump(), active_job=_view(ctx, job_info(job)) if job else None)


class RotateArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reencrypt_existing: bool = Field(
        default=True,
        description="Rewrap every stored ciphertext to the new version "
        "(otherwise only rotate the key; old ciphertexts stay on old versions).",
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Rows per committed batch "
        "(default: the rotation_batch_size setting). A crash loses at most one batch.",
    )
    wait: bool = Field(
        default=False,
        description="Run to the end in this call, streaming progress; otherwise "
        "return at once and follow the job with system_vault_get_rotation_job.",
    )


class RotateOut(BaseModel):
    job: RotationJobInfo
    latest_version: int
    waited: bool
    message: str


async def _rotate_summary(ctx: ToolContext, args: RotateArgs) -> str:
    key = await _transit(ctx).read_key(session=ctx.session)
    n = await count_below(ctx.session, key.latest_version + 1)
    accounts = (await ctx.session.execute(select(func.count(func.distinct(Credential.account_id))))).scalar_one()
    target = f"rotate transit key {key.name!r} from v{key.latest_version} to v{key.latest_version + 1}"
    if not args.reencrypt_existing:
        return f"Only {target}; {n} stored ciphertexts stay on older versions (no rewrap)."
    batch = args.batch_size or ctx.app.settings.rotation_batch_size
    return (
        f"{target[0].upper()}{target[1:]} and rewrap {n} ciphertexts across {accounts} accounts in batches "
        f"of {batch}; secrets stay readable throughout, older key versions stay until finalize."
    )


@tool(
    name="system_rotate_vault_transit_pepper",
    title="Rotate the transit pepper",
    permission="system.fleet.autonomy",
    destructive=True,
    open_world=True,
    summary=_rotate_summary,
    **VAULT,
)
async def rotate_pepper(ctx: ToolContext, args: RotateArgs) -> RotateOut:
    """Rotate the transit key and rewrap every ciphertext of every account to the new version, in batches.

    The job is crash-safe and resumable; a second rotation while one is active is refused. With wait=true
    progress is streamed; otherwise poll system_vault_get_rotation_job."""
    transit = _transit(ctx)
    batch = args.batch_size or ctx.app.settings.rotation_batch_size
    # Planned in this call's unit of work (committed with its audit row); run only after that commit, each
    # of its steps a unit of work of its own.
    job = await plan_job(
        ctx.session,
        transit,
        started_by=ctx.principal.qualified,
        batch_size=batch,
        reencrypt_existing=args.reencrypt_existing,
        approval_id=ctx.approval_id,
    )
    await ctx.session.flush()
    planned = _view(ctx, job_info(job))
    latest = (await transit.read_key(session=ctx.session)).latest_version
    engine = RotationEngine(ctx.app, transit, batch_size=batch)
    if args.wait:
        ctx.after_commit(_run_to_end(ctx, engine, planned.id))
        message = f"rotation job {planned.id} is planned; it runs once this call commits"
    else:
        ctx.after_commit(_launch(engine, planned.id))
        message = (
            f"rotation job {planned.id} runs in the background once this call commits; "
            "follow it with system_vault_get_rotation_job"
        )
    return RotateOut(job=planned, latest_version=latest, waited=False, message=message)


def _launch(engine: RotationEngine, job_id: int) -> Any:
    async def hook(result: BaseModel) -> BaseModel | None:
        try:
            engine.launch(job_id)
        except Exception:  # a hook never raises: the job stays pending, and the scheduler picks it up
            log.exception("could not launch rotation job %s", job_id)
        return None

    return hook


def _run_to_end(ctx: ToolContext, engine: RotationEngine, job_id: int) -> Any:
    report = ctx.progress  # captured now: the hook runs after the call's unit of work is gone

    async def hook(result: BaseModel) -> BaseModel | None:
        assert isinstance(result, RotateOut)
        try:
            info = await engine.launch(job_id, progress=report)  # awaited: this call returns at the job's end
            if info is None:
                raise RuntimeError("the job did not run here (see the server log)")
            latest = (await engine.transit.read_key()).latest_version
        except Exception as exc:  # a hook never raises: say what happened in the result
            what = getattr(exc, "message", None) or type(exc).__name__
            log.warning("rotation job %s did not run to the end in the call: %s", job_id, what)
            return result.model_copy(
                update={
                    "message": f"rotation job {job_id} was planned but did not run in this call ({what}); "
                    f"resume it with system_vault_resume_rotation_job (job_id={job_id})"
                }
            )
        message = f"rotation job {info.id} is {info.status}"
        if info.status == "paused" and info.error:
            message = f"{message}: {info.error}"
        return RotateOut(job=_view(ctx, info), latest_version=latest, waited=True, message=message)

    return hook


class JobArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_id: int = Field(description="Rotation job id.", ge=1)


class JobOut(BaseModel):
    job: RotationJobInfo


@tool(
    name="system_vault_get_rotation_job",
    title="Get a rotation job",
    permission="system.credentials.read",
    read_only=True,
    idempotent=True,
    **VAULT,
)
async def get_rotation_job(ctx: ToolContext, args: JobArgs) -> JobOut:
    """A rotation job: status, progress, per-account counts, errors (per failed row) and the resume cursor.

    Only the caller's account's part of it (every account with system.credentials.read_all)."""
    return JobOut(job=await get_job(ctx.session, args.job_id, account=_scope(ctx)))


class ResumeOut(BaseModel):
    job: RotationJobInfo
    message: str


@tool(
    name="system_vault_resume_rotation_job",
    title="Resume a rotation job",
    permission="system.fleet.autonomy",
    idempotent=True,
    open_world=True,
    **VAULT,
)
async def resume_rotation_job(ctx: ToolContext, args: JobArgs) -> ResumeOut:
    """Continue a paused, pending or abandoned rotation job from its cursor, in the background."""
    engine = RotationEngine(ctx.app, _transit(ctx), batch_size=ctx.app.settings.rotation_batch_size)
    job = await ctx.session.get(RotationJob, args.job_id)
    engine.check_resumable(args.job_id, job)
    if lease.running_here(args.job_id):
        raise Busy(f"rotation job {args.job_id} is already running in this server", job_id=args.job_id)
    ctx.after_commit(_launch(engine, args.job_id))
    return ResumeOut(
        job=await get_job(ctx.session, args.job_id, account=_scope(ctx)),
        message=f"rotation job {args.job_id} resumes in the background from its cursor once this call commits",
    )


class VerifyArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account: str | None = Field(
        default=None,
        description="Only this account (by name); default: your own account, or every account with "
        "system.credentials.read_all (needed to name another account).",
        max_length=120,
    )


class VerifyFailureOut(BaseModel):
    name: str
    account_id: int
    key_version: int
    error: str


class VerifyOut(BaseModel):
    checked: int
    ok: int
    failed: int
    failures: list[VerifyFailureOut]


@tool(
    name="system_vault_verify_credentials",
    title="Verify that every secret decrypts",
    permission="system.credentials.read",
    read_only=True,
    idempotent=True,
    open_world=True,
    **VAULT,
)
async def verify_credentials(ctx: ToolContext, args: VerifyArgs) -> VerifyOut:
    """Decrypt every stored secret (of one account, or all) and count failures; no secret is returned.

    Without system.credentials.read_all only the caller's own account can be verified (the default)."""
    scope = _scope(ctx)
    account_id = None if scope is None else scope[0]
    if args.account is not None:
        if scope is not None and args.account != scope[1]:
            raise PermissionDenied(
                f"verifying account {args.account!r} needs the permission {READ_ALL}",
                hint=f"omit `account` to verify your own account ({scope[1]})",
            )
        account_id = (await principals.get_account(ctx.session, args.account)).id
    report = await CredentialStore(_transit(ctx)).verify(ctx.session, account_id=account_id)
    return VerifyOut(
        checked=report.checked,
        ok=report.ok,
        failed=report.failed,
        failures=[
            VerifyFailureOut(name=f.name, account_id=f.account_id, key_version=f.key_version, error=f.error)
            for f in report.failures
        ],
    )


class FinalizeArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_decryption_version: int | None = Field(
        default=None, ge=1, description="Raise min_decryption_version to this (default: the latest version)."
    )


class FinalizeOut(BaseModel):
    min_decryption_version: int
    previous_min_decryption_version: int
    latest_version: int
    refused: bool
    remaining_below: int
    message: str


async def _finalize_summary(ctx: ToolContext, args: FinalizeArgs) -> str:
    key = await _transit(ctx).read_key()
    target = args.min_decryption_version or key.latest_version
    remaining = await count_below(ctx.session, target)
    verdict = (
        f"refused unless they are gone: {remaining} ciphertexts are still below v{target}"
        if remaining
        else "no stored ciphertext is below it"
    )
    return (
        f"Raise min_decryption_version of {key.name!r} from v{key.min_decryption_version} to v{target}: "
        f"ciphertexts below v{target} (e.g. in old backups) stop decrypting; {verdict}."
    )


@tool(
    name="system_vault_finalize_pepper_rotation",
    title="Finalize a pepper rotation",
    permission="system.fleet.autonomy",
    destructive=True,
    open_world=True,
    summary=_finalize_summary,
    **VAULT,
)
async def finalize_rotation(ctx: ToolContext, args: FinalizeArgs) -> FinalizeOut:
    """Raise the key's min_decryption_version, only if zero stored ciphertexts remain below it.

    Otherwise nothing changes: the result says refused and how many ciphertexts remain below."""
    r = await finalize(ctx.session, _transit(ctx), min_decryption_version=args.min_decryption_version)
    return FinalizeOut(**r.model_dump())


class TrimArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_available_version: int | None = Field(
        default=None, ge=1, description="Delete key versions below this (default: the current min_decryption_version)."
    )


class TrimOut(BaseModel):
    min_available_version: int
    min_encryption_version: int
    min_decryption_version: int
    latest_version: int
    deleted_versions: list[int]
    warning: str


async def _trim_summary(ctx: ToolContext, args: TrimArgs) -> str:
    key = await _transit(ctx).read_key()
    n = args.min_available_version or key.min_decryption_version
    text = f"IRREVERSIBLE: delete versions below v{n} of transit key {key.name!r} forever. " + TRIM_WARNING.format(n=n)
    backup = ctx.app.settings.pepper_backup_min_version
    if backup is None:
        return f"{text} No backup is declared (FLEET_MCP_PEPPER_BACKUP_MIN_VERSION): check your oldest backup first."
    if n > backup:
        return f"{text} It will be refused: a declared backup still needs v{backup}."
    return f"{text} Declared backups need v{backup} or later: they stay readable."


@tool(
    name="system_vault_trim_pepper_key",
    title="Trim old pepper key versions",
    permission="system.fleet.autonomy",
    destructive=True,
    open_world=True,
    summary=_trim_summary,
    **VAULT,
)
async def trim_pepper_key(ctx: ToolContext, args: TrimArgs) -> TrimOut:
    """Delete transit key versions below min_available_version for good (after finalize). Irreversible:
    backups holding older ciphertexts become unreadable."""
    r = await trim(
        ctx.session,
        _transit(ctx),
        min_available_version=args.min_available_version,
        backup_min_version=ctx.app.settings.pepper_backup_min_version,
    )
    return TrimOut(**r.model_dump())
