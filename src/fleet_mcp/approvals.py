"""The approval queue: requests bound to tool + requester + argument digest, decided by other principals,
executed exactly once on the requester's behalf."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel
from sqlalchemy import func, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp import audit
from fleet_mcp.db.base import utcnow
from fleet_mcp.db.models import Account, ApprovalRequest
from fleet_mcp.errors import Conflict, InvalidArgument, NotFound, PermissionDenied
from fleet_mcp.principals import Caller

if TYPE_CHECKING:
    from fleet_mcp.app import App
    from fleet_mcp.policy.model import ApprovalSpec



async def _seal(session: AsyncSession, app: App, account_id: int, approval_id: str, args: BaseModel) -> str:
    """Keep the exact arguments (secrets included) encrypted under the pepper, as a rotatable credential."""
    plaintext = json.dumps(audit._reveal(args.model_dump(mode="python")), default=str).encode()
    from fleet_mcp.vault import credentials as vault_credentials

    assert app.transit is not None
    cred_id = await vault_credentials.seal(
        session, app.transit, account_id, f"approval:{approval_id}", "approval_arguments", plaintext
    )
    return f"credential:{cred_id}"


async def _unseal(session: AsyncSession, app: App, sealed: str) -> dict[str, Any]:
    from fleet_mcp.vault import credentials as vault_credentials

    cred_id = int(sealed.split(":", 1)[1])
    assert app.transit is not None
    return json.loads(await vault_credentials.unseal(session, app.transit, cred_id))


async def _discard_sealed(session: AsyncSession, sealed: str) -> None:
    from fleet_mcp.vault import credentials as vault_credentials

    await vault_credentials.discard(session, int(sealed.split(":", 1)[1]))


async def create_request(
    session: AsyncSession, app: App, *, tool: str, caller: Caller, arguments: BaseModel, rule: str, spec: ApprovalSpec,
    summary: str,
) -> ApprovalRequest:
    approval_id = "apr_" + secrets.token_hex(8)
    ttl = min(spec.expires_in_seconds, 7 * 86400)
    raw = arguments.model_dump(mode="python")
    req = ApprovalRequest(
        id=approval_id,
        account_id=caller.account_id,
        tool=tool,
        arguments_masked=audit.mask(raw),
        arguments_sealed="",
        args_digest=audit.arguments_digest(raw),
        requested_by=caller.qualified,
        requester_roles=list(caller.roles),
        requester_token=caller.token_label,
        rule=rule,
        approvers=list(spec.approvers),
        min_approvals=spec.min_approvals,
        separation_of_duties=spec.separation_of_duties,
        summary=summary or None,
        expires_at=utcnow() + dt.timedelta(seconds=ttl),
    )
    session.add(req)
    await session.flush()
    req.arguments_sealed = await _seal(session, app, caller.account_id, approval_id, arguments)
    await session.flush()
    return req


def elicited_id(key: str) -> str:
    """The id of the approval record of one answer given in the client."""
    return "eli_" + key[:32]


async def record_elicited(
    session: AsyncSession, *, key: str, tool: str, caller: Caller, arguments: BaseModel, rule: str
) -> ApprovalRequest:
    """Record an approval the human gave in the client; a second use of the same answer is refused."""
    approval_id = elicited_id(key)
    if await session.get(ApprovalRequest, approval_id) is not None:
        raise Conflict("this approval was already used once; approvals given in the client are single-use",
                       hint="call the tool again to be asked again", approval_id=approval_id)
    raw = arguments.model_dump(mode="python")
    now = utcnow()
    req = ApprovalRequest(
        id=approval_id, account_id=caller.account_id, tool=tool, arguments_masked=audit.mask(raw),
        arguments_sealed="", args_digest=audit.arguments_digest(raw), requested_by=caller.qualified,
        requester_roles=list(caller.roles), rule=rule, approvers=["(the human at the client)"], min_approvals=1,
        separation_of_duties=False, status="executing", decided_by=caller.qualified,
        decisions=[{"by": caller.qualified, "decision": "approve", "reason": "approved in the client",
                    "at": now.isoformat(), "via": "elicitation"}],
        expires_at=now,
    )
    session.add(req)
    try:
        await session.flush()
    except IntegrityError as exc:  # the same answer used concurrently: the other use won
        raise Conflict("this approval was already used once; approvals given in the client are single-use",
                       hint="call the tool again to be asked again", approval_id=approval_id) from exc
    return req


async def finish_elicited(session: AsyncSession, key: str, ok: bool, result: dict[str, Any]) -> None:
    req = await session.get(ApprovalRequest, elicited_id(key))
    assert req is not None, "recorded in this unit of work"
    req.status = "executed" if ok else "failed"
    req.executed_at = utcnow()
    req.result = audit.mask(result)
    await session.flush()


async def get(session: AsyncSession, approval_id: str, account_id: int, *, lock: bool = False) -> ApprovalRequest:
    stmt = select(ApprovalRequest).where(ApprovalRequest.id == approval_id, ApprovalRequest.account_id == account_id)
    if lock:
        stmt = stmt.with_for_update()
    req = (await session.execute(stmt)).scalar_one_or_none()
    if req is None:
        raise NotFound(f"approval request {approval_id!r} does not exist in this account",
                       hint="list them with system_approvals_list", approval_id=approval_id)
    return req


async def list_requests(session: AsyncSession, account_id: int, status: str | None = None, *,
                        limit: int = 100, offset: int = 0) -> tuple[list[ApprovalRequest], int]:
    """One page of requests, newest first, and how many match in all; `status` is the status `to_dict` shows
    (a pending request past its expiry is expired even before the scheduler's sweep records it — listing never
    writes)."""
    where = [ApprovalRequest.account_id == account_id]
    now = utcnow()
    overdue = (ApprovalRequest.status == "pending") & (ApprovalRequest.expires_at <= now)
    if status == "pending":
        where += [ApprovalRequest.status == "pending", ApprovalRequest.expires_at > now]
    elif status == "expired":
        where.append((ApprovalRequest.status == "expired") | overdue)
    elif status:
        where.append(ApprovalRequest.status == status)
    total = int(await session.scalar(select(func.count()).select_from(ApprovalRequest).where(*where)) or 0)
    stmt = (select(ApprovalRequest).where(*where)
            .order_by(ApprovalRequest.created_at.desc(), ApprovalRequest.id.desc()).limit(limit).offset(offset))
    return list((await session.execute(stmt)).scalars().all()), total


def shown_status(req: ApprovalRequest, now: dt.datetime | None = None) -> str:
    """The status to show: a pending request past its expiry can no longer be decided, so it is expired."""
    if req.status == "pending" and req.expires_at <= (now or utcnow()):
        return "expired"
    return req.status


async def sweep_expired(session: AsyncSession, now: dt.datetime | None = None) -> int:
    now = now or utcnow()
    expired = (await session.execute(
        select(ApprovalRequest).where(ApprovalRequest.status == "pending", ApprovalRequest.expires_at <= now)
        .with_for_update()
    )).scalars().all()
    for req in expired:
        req.status = "expired"
        if req.arguments_sealed:
            await _discard_sealed(session, req.arguments_sealed)
            req.arguments_sealed = ""
        await audit.append(session, principal="system/scheduler", account="-", tool="approval.expire",
                           arguments={"approval_id": req.id}, decision="expire", outcome="expired",
                           approval_id=req.id)
    await session.flush()
    return len(expired)


async def requester_caller_of(session: AsyncSession, req: ApprovalRequest) -> Caller:
    """The requester as they asked: their account and the roles they held when they asked."""
    account_name = (await session.execute(select(Account.name).where(Account.id == req.account_id))).scalar_one()
    name = req.requested_by.split("/", 1)[1] if "/" in req.requested_by else req.requested_by
    return Caller(name=name, account_id=req.account_id, account_name=account_name,
                  roles=tuple(req.requester_roles), via="approval")


async def requester_token_revoked(session: AsyncSession, req: ApprovalRequest) -> bool:
    """Whether the bearer token the request was made with has been revoked (or deleted) since."""
    if not req.requester_token:
        return False
    from fleet_mcp.db.models import ApiToken

    revoked = (await session.execute(
        select(ApiToken.revoked_at).where(ApiToken.label == req.requester_token))).one_or_none()
    return revoked is None or revoked[0] is not None


async def unseal_arguments(session: AsyncSession, app: App, req: ApprovalRequest) -> dict[str, Any]:
    """The exact arguments the requester sent (secrets included), to execute on their behalf."""
    if not req.arguments_sealed:
        raise Conflict(f"approval request {req.id} no longer holds its arguments", approval_id=req.id)
    return await _unseal(session, app, req.arguments_sealed)


async def decide(
    session: AsyncSession, *, approval_id: str, decider: Caller, decision: str, reason: str,
) -> tuple[ApprovalRequest, bool]:
    """Record one decision. Returns the request and whether it is now claimed for execution (the required
    approvals are in): the caller executes it once this unit of work has committed
    (`Gate.execute_approved`), never inside it."""
    if decision not in ("approve", "reject"):
        raise InvalidArgument("decision must be 'approve' or 'reject'")
    req = await get(session, approval_id, decider.account_id, lock=True)
    if req.status != "pending":
        raise Conflict(f"approval request {approval_id} is {req.status}; only pending requests can be decided",
                       approval_id=approval_id, status=req.status)
    if req.expires_at <= utcnow():
        raise Conflict(f"approval request {approval_id} expired at {req.expires_at.isoformat()}",
                       hint="ask the requester to call the tool again", approval_id=approval_id)
    if not set(decider.roles) & set(req.approvers):
        raise PermissionDenied(
            f"{decider.qualified} cannot decide {approval_id}: approvers need one of the roles "
            f"{', '.join(req.approvers)}", approval_id=approval_id)
    if req.separation_of_duties and decider.qualified == req.requested_by:
        raise PermissionDenied(
            f"separation of duties: {decider.qualified} requested {approval_id} and cannot approve it",
            hint="another principal with an approver role must decide", approval_id=approval_id)
    if any(d["by"] == decider.qualified for d in req.decisions):
        raise Conflict(f"{decider.qualified} already decided {approval_id}", approval_id=approval_id)
    entry = {"by": decider.qualified, "decision": decision, "reason": reason, "at": utcnow().isoformat()}
    req.decisions = [*req.decisions, entry]
    await audit.append(session, principal=decider.qualified, account=decider.account_name,
                       tool="approval.decide", arguments={"approval_id": approval_id, "decision": decision,
                                                          "reason": reason},
                       decision=decision, outcome="recorded", approval_id=approval_id)
    if decision == "reject":
        req.status = "rejected"
        req.decided_by = decider.qualified
        req.reason = reason
        await _discard_sealed(session, req.arguments_sealed)
        req.arguments_sealed = ""
        await session.flush()
        return req, False
    approvals_in = sum(1 for d in req.decisions if d["decision"] == "approve")
    if approvals_in < req.min_approvals:
        await session.flush()
        return req, False
    # Claim: only one decider ever moves a request from pending to executing.
    claimed = await session.execute(
        update(ApprovalRequest).where(ApprovalRequest.id == req.id, ApprovalRequest.status == "pending")
        .values(status="executing", decided_by=decider.qualified, reason=reason)
        .execution_options(synchronize_session=False)
    )
    if cast(CursorResult[Any], claimed).rowcount != 1:
        raise Conflict(f"approval request {approval_id} was decided concurrently", approval_id=approval_id)
    await session.refresh(req)
    return req, True


async def begin_execution(session: AsyncSession, approval_id: str) -> None:
    """In the operation's own unit of work: move the request from executing to executed, or refuse (it ran,
    or is running, elsewhere). Rolled back with the operation when it fails."""
    moved = await session.execute(
        update(ApprovalRequest).where(ApprovalRequest.id == approval_id, ApprovalRequest.status == "executing")
        .values(status="executed", executed_at=utcnow()).execution_options(synchronize_session=False)
    )
    if cast(CursorResult[Any], moved).rowcount != 1:
        raise Conflict(f"approval request {approval_id} is not waiting to execute; an approval runs once",
                       approval_id=approval_id)


async def finish_execution(session: AsyncSession, app: App, approval_id: str, ok: bool, result: dict[str, Any],
                           secrets: dict[str, Any] | None = None) -> None:
    """Store the outcome on the request and drop its sealed arguments. With the operation's changes (after
    `begin_execution`), or alone after they rolled back (the request is then still executing). Secrets the
    run produced (already masked in `result`) are sealed for the requester, who collects them once."""
    req = (await session.execute(
        select(ApprovalRequest).where(ApprovalRequest.id == approval_id).with_for_update()
    )).scalar_one()
    if req.status not in ("executing", "executed"):
        return
    req.status = "executed" if ok else "failed"
    req.executed_at = req.executed_at or utcnow()
    req.result = audit.mask(result)
    if req.arguments_sealed:
        await _discard_sealed(session, req.arguments_sealed)
        req.arguments_sealed = ""
    if secrets:
        from fleet_mcp.vault import credentials as vault_credentials

        assert app.transit is not None
        await vault_credentials.seal(session, app.transit, req.account_id, _result_name(req.id), RESULT_KIND,
                                     json.dumps(secrets).encode())
        req.result = {**req.result, "secrets_for_requester": "collect once with system_approvals_collect_result"}
    await session.flush()


RESULT_KIND = "approval_result"


def _result_name(approval_id: str) -> str:
    return f"approval-result:{approval_id}"


async def collect_result(session: AsyncSession, app: App, approval_id: str, caller: Caller) -> dict[str, Any]:
    """The secrets an approved run produced, to the requester only, once: they are deleted as they are
    returned."""
    from fleet_mcp.vault import credentials as vault_credentials
    from fleet_mcp.vault.models import Credential

    req = await get(session, approval_id, caller.account_id, lock=True)
    if req.requested_by != caller.qualified:
        raise PermissionDenied(f"only the requester ({req.requested_by}) can collect the result of {approval_id}",
                               approval_id=approval_id)
    row = (await session.execute(
        select(Credential.id).where(Credential.account_id == req.account_id,
                                    Credential.name == _result_name(req.id), Credential.kind == RESULT_KIND)
    )).scalar_one_or_none()
    if row is None:
        raise NotFound(f"approval request {approval_id} holds no secrets to collect (none were produced, or they "
                       "were collected already)", approval_id=approval_id)
    assert app.transit is not None
    secrets = json.loads(await vault_credentials.unseal(session, app.transit, row))
    await vault_credentials.discard(session, row)
    result = dict(req.result or {})
    result["secrets_for_requester"] = f"collected by {caller.qualified} at {utcnow().isoformat()}"
    req.result = result
    await session.flush()
    return dict(secrets)


async def refuse_execution(session: AsyncSession, approval_id: str, reason: str) -> None:
    """The requester's standing or the current policy no longer allows the approved operation: record it as
    refused (it never runs)."""
    req = (await session.execute(
        select(ApprovalRequest).where(ApprovalRequest.id == approval_id).with_for_update()
    )).scalar_one()
    if req.status != "executing":
        return
    req.status = "refused"
    req.result = {"error": f"not executed: {reason}"}
    if req.arguments_sealed:
        await _discard_sealed(session, req.arguments_sealed)
        req.arguments_sealed = ""
    await session.flush()


async def sweep_interrupted(session: AsyncSession, older_than: dt.timedelta = dt.timedelta(minutes=10),
                            now: dt.datetime | None = None) -> int:
    """Requests claimed for execution whose run never committed (the process stopped between the decision
    and the run): nothing of them ran, since the run moves them to executed in its own transaction. They
    are recorded as failed, never run late."""
    now = now or utcnow()
    stuck = (await session.execute(
        select(ApprovalRequest).where(ApprovalRequest.status == "executing",
                                      ApprovalRequest.updated_at <= now - older_than)
        .with_for_update()
    )).scalars().all()
    for req in stuck:
        req.status = "failed"
        req.result = {"error": "interrupted before it ran (the server stopped); nothing was executed. "
                               "Ask the requester to call the tool again."}
        if req.arguments_sealed:
            await _discard_sealed(session, req.arguments_sealed)
            req.arguments_sealed = ""
        await audit.append(session, principal="system/scheduler", account="-", tool="approval.interrupted",
                           arguments={"approval_id": req.id}, decision="expire", outcome="failed",
                           approval_id=req.id)
    await session.flush()
    return len(stuck)


def to_dict(req: ApprovalRequest) -> dict[str, Any]:
    return {
        "id": req.id,
        "tool": req.tool,
        "arguments": req.arguments_masked,
        "requested_by": req.requested_by,
        "status": shown_status(req),
        "rule": req.rule,
        "approvers": req.approvers,
        "min_approvals": req.min_approvals,
        "separation_of_duties": req.separation_of_duties,
        "decisions": req.decisions,
        "decided_by": req.decided_by,
        "reason": req.reason,
        "summary": req.summary,
        "created_at": req.created_at.isoformat() if req.created_at else None,
        "expires_at": req.expires_at.isoformat(),
        "executed_at": req.executed_at.isoformat() if req.executed_at else None,
        "result": req.result,
    }


async def cancel(session: AsyncSession, *, approval_id: str, caller: Caller, reason: str) -> ApprovalRequest:
    """Withdraw a pending request: only its requester may, and nothing of it ever runs afterwards."""
    req = await get(session, approval_id, caller.account_id, lock=True)
    if req.requested_by != caller.qualified:
        raise PermissionDenied(
            f"{caller.qualified} did not request {approval_id}; only its requester ({req.requested_by}) can "
            "withdraw it", hint="an approver rejects it with system_approvals_decide instead",
            approval_id=approval_id)
    status = shown_status(req)
    if status != "pending":
        raise Conflict(f"approval request {approval_id} is {status}; only pending requests can be withdrawn",
                       approval_id=approval_id, status=status)
    claimed = await session.execute(
        update(ApprovalRequest).where(ApprovalRequest.id == req.id, ApprovalRequest.status == "pending")
        .values(status="cancelled", decided_by=caller.qualified, reason=reason)
        .execution_options(synchronize_session=False)
    )
    if cast(CursorResult[Any], claimed).rowcount != 1:
        raise Conflict(f"approval request {approval_id} was decided concurrently", approval_id=approval_id)
    await session.refresh(req)
    req.decisions = [*req.decisions, {"by": caller.qualified, "decision": "cancel", "reason": reason,
                                      "at": utcnow().isoformat()}]
    if req.arguments_sealed:
        await _discard_sealed(session, req.arguments_sealed)
        req.arguments_sealed = ""
    await session.flush()
    return req
