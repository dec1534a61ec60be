"""Approval queue tools: list, get and decide approval requests."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet_mcp import approvals
from fleet_mcp.context import ToolContext
from fleet_mcp.registry import Args, tool
from fleet_mcp.schema_marks import SECRET


class ApprovalOut(BaseModel):
    id: str
    tool: str
    arguments: dict[str, Any]
    requested_by: str
    status: str
    rule: str
    approvers: list[str]
    min_approvals: int
    separation_of_duties: bool
    decisions: list[dict[str, Any]]
    decided_by: str | None
    reason: str | None
    summary: str | None
    created_at: str | None
    expires_at: str
    executed_at: str | None
    result: dict[str, Any] | None


class ListArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["pending", "executing", "executed", "failed", "refused", "rejected", "expired",
                    "cancelled"] | None = Field(
        default=None, description="Only requests in this status.")
    limit: int = Field(default=100, ge=1, le=500, description="Requests per page (newest first).")
    offset: int = Field(default=0, ge=0, le=1_000_000, description="Requests to skip (next_offset of the previous "
                        "page).")


class ListOut(BaseModel):
    approvals: list[ApprovalOut]
    count: int = Field(description="Requests in this page.")
    total: int = Field(description="Requests matching the filter in all.")
    next_offset: int | None = Field(description="Offset of the next page; null on the last page.")


@tool(name="system_approvals_list", title="List approval requests", permission="system.approvals.read",
      toolset="approvals", read_only=True, idempotent=True)
async def approvals_list(ctx: ToolContext, args: ListArgs) -> ListOut:
    """Approval requests of this account, newest first, a page at a time (arguments with secrets masked);
    `total` says how many match, `next_offset` where the next page starts."""
    rows, total = await approvals.list_requests(ctx.session, ctx.principal.account_id, args.status,
                                                limit=args.limit, offset=args.offset)
    end = args.offset + len(rows)
    return ListOut(approvals=[ApprovalOut(**approvals.to_dict(r)) for r in rows], count=len(rows), total=total,
                   next_offset=end if end < total else None)


class GetArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approval_id: str = Field(description="Approval request id (apr_…).", min_length=4, max_length=40)


class GetOut(BaseModel):
    approval: ApprovalOut


@tool(name="system_approvals_get", title="Get an approval request", permission="system.approvals.read",
      toolset="approvals", read_only=True, idempotent=True)
async def approvals_get(ctx: ToolContext, args: GetArgs) -> GetOut:
    """One approval request, with its decisions and, once executed, the operation's result."""
    req = await approvals.get(ctx.session, args.approval_id, ctx.principal.account_id)
    return GetOut(approval=ApprovalOut(**approvals.to_dict(req)))


class DecideArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approval_id: str = Field(description="Approval request id (apr_…).", min_length=4, max_length=40)
    decision: Literal["approve", "reject"] = Field(description="approve or reject.")
    reason: str = Field(description="Why; recorded in the audit log.", min_length=1, max_length=2000)


class DecideOut(BaseModel):
    approval: ApprovalOut
    executed: bool
    result: dict[str, Any] | None = None


@tool(name="system_approvals_decide", title="Decide an approval request", permission="system.approvals.decide",
      toolset="approvals")
async def approvals_decide(ctx: ToolContext, args: DecideArgs) -> DecideOut:
    """Approve or reject a pending request. When the required approvals are in, the operation runs once,
    as the requester, and its result is stored on the request."""
    req, ready = await approvals.decide(ctx.session, approval_id=args.approval_id, decider=ctx.principal,
                                        decision=args.decision, reason=args.reason)
    out = DecideOut(approval=ApprovalOut(**approvals.to_dict(req)), executed=False)
    if ready:
        approval_id, account_id = req.id, req.account_id

        async def execute(_: BaseModel) -> DecideOut:
            # The decision has committed: the operation runs in a unit of work of its own, as the requester.
            outcome = await ctx.app.gate.execute_approved(approval_id, account_id)
            assert ctx.app.read_sessionmaker is not None
            async with ctx.app.read_sessionmaker() as read:
                done = await approvals.get(read, approval_id, account_id)
                return DecideOut(approval=ApprovalOut(**approvals.to_dict(done)),
                                 executed=done.status in ("executed", "failed"), result=outcome.data)

        ctx.after_commit(execute)
    return out


class CollectArgs(Args):
    approval_id: str = Field(description="Approval request id (apr_…) of a request you made.", min_length=4,
                             max_length=40)


class CollectOut(BaseModel):
    approval_id: str
    tool: str
    secrets: dict[str, Any] = Field(
        description="The secret fields of the approved run's result (e.g. an acceptance token or a private key), "
        "in the result's shape. Returned once; deleted as they are returned.", json_schema_extra=SECRET)


@tool(name="system_approvals_collect_result", title="Collect the secrets of your approved request",
      permission="system.approvals.read", toolset="approvals")
async def approvals_collect_result(ctx: ToolContext, args: CollectArgs) -> CollectOut:
    """Collect, once, the secrets an approved run of your own request produced (its stored result shows them
    masked). Only the requester can collect them; the approver never sees them."""
    req = await approvals.get(ctx.session, args.approval_id, ctx.principal.account_id)
    secrets = await approvals.collect_result(ctx.session, ctx.app, args.approval_id, ctx.principal)
    return CollectOut(approval_id=req.id, tool=req.tool, secrets=secrets)


class CancelArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approval_id: str = Field(description="Approval request id (apr_…) you requested.", min_length=4, max_length=40)
    reason: str = Field(description="Why it is withdrawn; recorded on the request and in the audit log.",
                        min_length=1, max_length=2000)


class CancelOut(BaseModel):
    approval: ApprovalOut


@tool(name="system_approvals_cancel", title="Withdraw an approval request", permission="system.approvals.read",
      toolset="approvals")
async def approvals_cancel(ctx: ToolContext, args: CancelArgs) -> CancelOut:
    """Withdraw a pending approval request you made yourself: it becomes cancelled and never runs.

    Only the requester can withdraw a request (an approver rejects instead); decided, expired or executed
    requests cannot be withdrawn."""
    req = await approvals.cancel(ctx.session, approval_id=args.approval_id, caller=ctx.principal, reason=args.reason)
    return CancelOut(approval=ApprovalOut(**approvals.to_dict(req)))

