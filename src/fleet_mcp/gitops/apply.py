"""Apply proposals all-or-nothing with refuse-on-conflict; reject proposals.

Apply is one transaction owned by the caller. Targets are locked and every live fingerprint is
compared with the proposal's base first: any mismatch (without force) marks those proposals
`stale` and changes nothing else. The changes themselves run inside a SAVEPOINT: if any of them
fails (a database constraint, a dangling assignment) the savepoint is rolled back, so no live
resource changes, while the proposals' `failed` marking is written in the outer transaction and
commits with the caller's unit of work.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer
from sqlalchemy.orm.attributes import set_committed_value

from fleet_mcp import events
from fleet_mcp.db.base import utcnow
from fleet_mcp.db.models import Assignment
from fleet_mcp.errors import Conflict, FleetError, InvalidArgument, NotFound
from fleet_mcp.fleet.spec import fingerprint, split_assignment_name
from fleet_mcp.fleet.store import MODEL_BY_KIND, bump_generation, gitops_owner, new_row, set_attributes
from fleet_mcp.gitops.diff import DELETE_ORDER, UPSERT_ORDER
from fleet_mcp.gitops.models import GitOpsProposal, GitOpsSyncRun

MAX_REASON = 2000
_CHUNK = 500


@dataclass
class ApplyResult:
    """Outcome of one apply: everything applied, or nothing (stale conflict or failure)."""

    applied: bool
    conflict: bool
    error: str | None
    proposals: list[GitOpsProposal]

    @property
    def results(self) -> list[dict[str, Any]]:
        return [{"proposal_id": p.id, "status": p.status, "error": p.error} for p in self.proposals]


async def get_proposal(
    session: AsyncSession, *, account_id: int, proposal_id: int, for_update: bool = False
) -> GitOpsProposal:
    stmt = select(GitOpsProposal).where(GitOpsProposal.id == proposal_id, GitOpsProposal.account_id == account_id)
    if for_update:
        # Waits for a concurrent apply of the same proposal and then reads its committed status.
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    p = (await session.execute(stmt)).scalar_one_or_none()
    if p is None:
        raise NotFound(
            f"proposal {proposal_id} does not exist",
            hint="list them with system_gitops_list_proposals",
            proposal_id=proposal_id,
        )
    return p


async def get_sync_run(session: AsyncSession, *, account_id: int, sync_run_id: int) -> GitOpsSyncRun:
    stmt = select(GitOpsSyncRun).where(GitOpsSyncRun.id == sync_run_id, GitOpsSyncRun.account_id == account_id)
    run = (await session.execute(stmt)).scalar_one_or_none()
    if run is None:
        raise NotFound(
            f"sync run {sync_run_id} does not exist",
            hint="list them with system_gitops_list_sync_runs",
            sync_run_id=sync_run_id,
        )
    return run


def _applicable(force: bool) -> tuple[str, ...]:
    # A stale proposal may be applied only by force (its base no longer matches by definition).
    return ("pending", "stale") if force else ("pending",)


async def apply_proposal(
    session: AsyncSession,
    *,
    account_id: int,
    proposal_id: int,
    force: bool = False,
    applied_by: str | None = None,
    now: dt.datetime | None = None,
) -> ApplyResult:
    """Apply one proposal. Conflict if it is not pending (or stale, with force).

    The proposal row is locked first: on PostgreSQL a concurrent apply of the same proposal waits
    here and then sees it applied (without the lock both read `pending`, the second hit the
    first's new row as a duplicate key and marked an applied proposal `failed`)."""
    p = await get_proposal(session, account_id=account_id, proposal_id=proposal_id, for_update=True)
    if p.status == "applied":
        raise Conflict(f"proposal {p.id} was already applied", hint="nothing to do; sync again for new changes",
                       proposal_id=p.id, status=p.status)
    if p.status not in _applicable(force):
        hint = (
            "apply it with force=true (needs approval), or sync again for a fresh proposal"
            if p.status == "stale"
            else "only pending proposals can be applied; sync again to get new ones"
        )
        raise Conflict(f"proposal {p.id} is {p.status}", hint=hint, proposal_id=p.id, status=p.status)
    return await _apply(session, account_id, [p], force=force, applied_by=applied_by, now=now or utcnow())


async def apply_sync_run(
    session: AsyncSession,
    *,
    account_id: int,
    sync_run_id: int,
    force: bool = False,
    applied_by: str | None = None,
    now: dt.datetime | None = None,
) -> ApplyResult:
    """Apply every pending proposal of a sync run in dependency order, all or nothing."""
    run = await get_sync_run(session, account_id=account_id, sync_run_id=sync_run_id)
    ids = [int(i) for i in run.proposal_ids or []]
    proposals: list[GitOpsProposal] = []
    if ids:
        # `fields` (the review diff) is not needed to apply; skipping it halves the load of a big run.
        # Locked in id order (no deadlock between two applies): a concurrent apply of the same run
        # waits here, and PostgreSQL then re-checks the status filter on the committed rows.
        stmt = (
            select(GitOpsProposal)
            .options(defer(GitOpsProposal.fields))
            .where(
                GitOpsProposal.id.in_(ids),
                GitOpsProposal.account_id == account_id,
                GitOpsProposal.status.in_(_applicable(force)),
            )
            .order_by(GitOpsProposal.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        proposals = list((await session.execute(stmt)).scalars().all())
    if not proposals:
        statuses = set(
            (await session.execute(select(GitOpsProposal.status).where(GitOpsProposal.id.in_(ids)))).scalars()
        ) if ids else set()
        if statuses == {"applied"}:
            raise Conflict(f"sync run {run.id} was already applied", hint="nothing to do; sync again for new changes",
                           sync_run_id=run.id)
        raise Conflict(
            f"sync run {run.id} has no {'pending or stale' if force else 'pending'} proposals",
            hint="sync again to open proposals, or list them with system_gitops_list_proposals",
            sync_run_id=run.id,
        )
    return await _apply(session, account_id, proposals, force=force, applied_by=applied_by, now=now or utcnow())


def _order_key(p: GitOpsProposal) -> tuple[int, int, str]:
    if p.action == "delete":
        return (1, DELETE_ORDER[p.kind], p.name)
    return (0, UPSERT_ORDER[p.kind], p.name)


async def _locked_rows(
    session: AsyncSession, account_id: int, proposals: list[GitOpsProposal]
) -> dict[tuple[str, str], Any]:
    """The live rows the proposals target, locked (FOR UPDATE; SQLite's write lock is already held)."""
    names: dict[str, list[str]] = {}
    for p in proposals:
        names.setdefault(p.kind, []).append(p.name)
    rows: dict[tuple[str, str], Any] = {}
    for kind, wanted in names.items():
        model = MODEL_BY_KIND[kind]
        found: Any
        for i in range(0, len(wanted), _CHUNK):
            stmt = (
                select(model)
                .where(model.account_id == account_id, model.name.in_(wanted[i : i + _CHUNK]))
                .with_for_update()
            )
            for found in (await session.execute(stmt)).scalars():
                rows[(kind, found.name)] = found
    return rows


class _Rollback(Exception):
    """Raised to roll a diagnostic savepoint back."""


async def _apply(
    session: AsyncSession,
    account_id: int,
    proposals: list[GitOpsProposal],
    *,
    force: bool,
    applied_by: str | None,
    now: dt.datetime,
) -> ApplyResult:
    ordered = sorted(proposals, key=_order_key)
    keys = [(p.kind, p.name) for p in ordered]
    if len(set(keys)) != len(keys):
        raise Conflict("two proposals target the same resource", hint="apply them one at a time")

    rows = await _locked_rows(session, account_id, ordered)
    if not force:
        stale = [p for p in ordered if _live_fp(rows.get((p.kind, p.name))) != p.base_fingerprint]
        if stale:
            for p in stale:
                p.status = "stale"
                p.conflict = True
                p.error = _stale_reason(p, rows.get((p.kind, p.name)))
            await session.flush()
            first = stale[0]
            return ApplyResult(
                applied=False,
                conflict=True,
                error=f"{len(stale)} of {len(ordered)} proposal(s) are stale: {first.error}",
                proposals=ordered,
            )

    culprit: GitOpsProposal | None = None
    reason: str | None = None
    try:
        # Fast path: every change staged in memory, one flush (batched statements), one savepoint.
        async with session.begin_nested():
            inserts: dict[str, list[dict[str, Any]]] = {}
            for p in ordered:
                await _stage(session, account_id, p, rows.get((p.kind, p.name)), inserts)
            await session.flush()
            for kind, values in inserts.items():
                # Core executemany: the ORM would insert row by row to read back each new id.
                await session.execute(insert(MODEL_BY_KIND[kind]), values)
            await _check_references(session, account_id, ordered)
    except FleetError as exc:
        reason = str(exc)
        culprit = next((p for p in ordered if p.id == exc.subject.get("proposal_id")), None)
    except SQLAlchemyError as exc:
        reason = _db_reason(exc)
        culprit, reason = await _find_culprit(session, account_id, ordered, reason)

    if reason is not None:
        for p in ordered:
            p.status = "failed"
            p.conflict = False
            p.forced = force
            p.decided_by = applied_by
            if culprit is None or p is culprit:
                p.error = reason
            else:
                p.error = (
                    f"not applied: the batch was rolled back because proposal {culprit.id} "
                    f"({culprit.kind} {culprit.name}) failed"
                )
        await session.flush()
        return ApplyResult(applied=False, conflict=False, error=reason, proposals=ordered)

    await bump_generation(session, account_id)
    # Every proposal gets the same values: one UPDATE, then the loaded objects are told, not dirtied.
    applied: dict[str, Any] = {
        "status": "applied",
        "applied_at": now,
        "decided_by": applied_by,
        "forced": force,
        "error": None,
        "conflict": False,
        "updated_at": now,
    }
    ids = [p.id for p in ordered]
    for i in range(0, len(ids), _CHUNK):
        await session.execute(
            update(GitOpsProposal)
            .where(GitOpsProposal.id.in_(ids[i : i + _CHUNK]))
            .values(**applied)
            .execution_options(synchronize_session=False)
        )
    for p in ordered:
        for key, value in applied.items():
            set_committed_value(p, key, value)
    await events.emit(
        session,
        account_id=account_id,
        kind="gitops.applied",
        payload={
            "proposal_ids": [p.id for p in ordered],
            "repository_ids": sorted({p.repository_id for p in ordered}),
            "forced": force,
            "count": len(ordered),
        },
    )
    return ApplyResult(applied=True, conflict=False, error=None, proposals=ordered)


async def _find_culprit(
    session: AsyncSession, account_id: int, ordered: list[GitOpsProposal], reason: str
) -> tuple[GitOpsProposal | None, str]:
    """Replay the batch one change at a time in a savepoint that is always rolled back, to name the
    change the database refused (the fast path's single flush cannot say which one it was)."""
    found: tuple[GitOpsProposal | None, str] = (None, reason)
    try:
        async with session.begin_nested():
            rows = await _locked_rows(session, account_id, ordered)
            for p in ordered:
                try:
                    async with session.begin_nested():
                        await _stage(session, account_id, p, rows.get((p.kind, p.name)))
                        await session.flush()
                except SQLAlchemyError as exc:
                    found = (p, _db_reason(exc))
                    break
            raise _Rollback
    except _Rollback:
        pass
    return found


def _live_fp(row: Any | None) -> str | None:
    return None if row is None else row.fingerprint


def _stale_reason(p: GitOpsProposal, row: Any | None) -> str:
    if row is None:
        now_is = "it no longer exists"
    elif p.base_fingerprint is None:
        now_is = f"it was created meanwhile (revision {row.revision}, managed_by {row.managed_by})"
    else:
        now_is = f"it is now at revision {row.revision} (managed_by {row.managed_by})"
    return (
        f"live {p.kind} {p.name!r} changed since proposal {p.id} was made: {now_is}; sync again for a fresh "
        "proposal, or apply with force=true (needs approval)"
    )


def _db_reason(exc: SQLAlchemyError) -> str:
    # Never the statement or its parameters: only the database's own one-line message.
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return f"database refused the change: {line[:300]}"


async def _stage(
    session: AsyncSession,
    account_id: int,
    p: GitOpsProposal,
    row: Any | None,
    inserts: dict[str, list[dict[str, Any]]] | None = None,
) -> None:
    """Put one change into the session (no flush): replace attributes or delete; a new row goes to
    `inserts` (bulk-inserted by the caller) or, without it, into the session."""
    owner = gitops_owner(p.repository_id)
    if p.action == "delete":
        if row is not None:
            await session.delete(row)
        return
    if p.desired is None:
        raise InvalidArgument(f"proposal {p.id} has no desired attributes", proposal_id=p.id)
    if row is not None:
        set_attributes(row, dict(p.desired), owner)
    elif inserts is None:
        session.add(new_row(p.kind, account_id, p.name, dict(p.desired), owner))
    else:
        attrs = dict(p.desired)
        now = utcnow()
        inserts.setdefault(p.kind, []).append(
            {
                "account_id": account_id,
                "name": p.name,
                "attributes": attrs,
                "fingerprint": fingerprint(attrs),
                "revision": 1,
                "managed_by": owner,
                "created_at": now,
                "updated_at": now,
            }
        )


async def _check_references(session: AsyncSession, account_id: int, proposals: list[GitOpsProposal]) -> None:
    """After the batch: assignments point at existing templates/modules, deletions leave none dangling."""
    touched_assignments = [p for p in proposals if p.kind == "assignment" and p.action != "delete"]
    deleted_parents = [p for p in proposals if p.kind in ("template", "module") and p.action == "delete"]
    if not touched_assignments and not deleted_parents:
        return
    names: dict[str, set[str]] = {}
    for kind in ("template", "module"):
        model = MODEL_BY_KIND[kind]
        names[kind] = set((await session.execute(select(model.name).where(model.account_id == account_id))).scalars())
    for p in touched_assignments:
        template, module = split_assignment_name(p.name)
        for kind, target in (("template", template), ("module", module)):
            if target not in names[kind]:
                raise Conflict(
                    f"assignment {p.name!r} needs {kind} {target!r}, which does not exist",
                    hint=f"apply the {kind}'s proposal first, or apply the whole sync run",
                    proposal_id=p.id,
                )
    if deleted_parents:
        assignments = await session.execute(select(Assignment.name).where(Assignment.account_id == account_id))
        for aname in assignments.scalars():
            template, module = split_assignment_name(aname)
            for p in deleted_parents:
                if (p.kind == "template" and p.name == template) or (p.kind == "module" and p.name == module):
                    raise Conflict(
                        f"{p.kind} {p.name!r} is still used by assignment {aname!r}",
                        hint="delete the assignment first (apply the whole sync run)",
                        proposal_id=p.id,
                    )


async def reject_proposal(
    session: AsyncSession,
    *,
    account_id: int,
    proposal_id: int,
    reason: str,
    decided_by: str | None = None,
) -> GitOpsProposal:
    """Reject a pending (or stale) proposal with a reason; it will not be applied."""
    if not reason or not reason.strip():
        raise InvalidArgument("a reason is required to reject a proposal", hint="say why, for the audit trail")
    if len(reason) > MAX_REASON:
        raise InvalidArgument(f"the reason is longer than {MAX_REASON} characters")
    # Locked like an apply: a reject racing an apply's commit waits and then sees it applied.
    p = await get_proposal(session, account_id=account_id, proposal_id=proposal_id, for_update=True)
    if p.status not in ("pending", "stale"):
        raise Conflict(
            f"proposal {p.id} is {p.status}",
            hint="only pending or stale proposals can be rejected",
            proposal_id=p.id,
            status=p.status,
        )
    p.status = "rejected"
    p.reason = reason.strip()
    p.decided_by = decided_by
    await session.flush()
    return p
