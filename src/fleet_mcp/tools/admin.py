"""Audit and policy tools: query and verify the audit chain, explain a policy decision."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleet_mcp import audit
from fleet_mcp.context import ToolContext
from fleet_mcp.errors import InvalidArgument
from fleet_mcp.registry import NoArgs, load_tools, tool


class AuditQueryArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool: str | None = Field(default=None, description="Only entries for this tool.", max_length=120)
    principal: str | None = Field(default=None, description="Only entries of this principal ('account/name').",
                                  max_length=250)
    since: dt.datetime | None = Field(default=None, description="Only entries at or after this ISO time.")
    approval_id: str | None = Field(default=None, description="Only entries linked to this approval request.",
                                    max_length=40)
    limit: int = Field(default=100, ge=1, le=1000, description="Newest entries to return.")


class AuditEntryOut(BaseModel):
    seq: int
    at: str
    principal: str
    account: str
    tool: str
    args_digest: str
    arguments: dict[str, Any]
    decision: str
    outcome: str
    detail: dict[str, Any] | None
    approval_id: str | None
    duration_ms: float
    prev_hash: str
    hash: str


class AuditQueryOut(BaseModel):
    entries: list[AuditEntryOut]
    count: int


@tool(name="system_audit_query", title="Query the audit log", permission="system.audit.read", toolset="audit",
      read_only=True, idempotent=True)
async def audit_query(ctx: ToolContext, args: AuditQueryArgs) -> AuditQueryOut:
    """Audit entries of this account, newest first (arguments with secrets masked)."""
    since = args.since
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    rows = await audit.query(ctx.session, tool=args.tool, principal=args.principal,
                             account=ctx.principal.account_name, since=since, approval_id=args.approval_id,
                             limit=args.limit)
    return AuditQueryOut(entries=[AuditEntryOut(**audit.entry_dict(r)) for r in rows], count=len(rows))


class AuditVerifyOut(BaseModel):
    ok: bool
    entries_checked: int
    first_bad_seq: int | None
    problem: str | None = None


@tool(name="system_audit_verify", title="Verify the audit chain", permission="system.audit.read", toolset="audit",
      read_only=True, idempotent=True)
async def audit_verify(ctx: ToolContext, args: NoArgs) -> AuditVerifyOut:
    """Recompute the hash chain; report the first edited, deleted, inserted or reordered row.

    The whole chain is checked (it is one chain for every account); entries_checked counts the caller's
    account's rows, or every row with system.audit.read_all."""
    r = await audit.verify(ctx.session)
    checked = r.entries_checked
    if not ctx.app.gate.has_permission(ctx.principal, "system.audit.read_all"):
        checked = await audit.count_rows(ctx.session, account=ctx.principal.account_name)
    return AuditVerifyOut(ok=r.ok, entries_checked=checked, first_bad_seq=r.first_bad_seq, problem=r.problem)


class ExplainArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool: str = Field(description="Tool name to explain, e.g. system_gitops_apply_proposal.", max_length=120)
    arguments: dict[str, Any] = Field(default_factory=dict, description="Arguments the call would carry.")


class ExplainOut(BaseModel):
    tool: str
    decision: str
    rule: str
    reason: str
    approval_mode: str | None = None
    approval: dict[str, Any] | None = None
    permission: str | None = None
    caller_has_permission: bool | None = None
    considered: list[dict[str, Any]] = Field(default_factory=list)


@tool(name="system_policy_explain", title="Explain a policy decision", permission="system.audit.read",
      toolset="audit", read_only=True, idempotent=True)
async def policy_explain(ctx: ToolContext, args: ExplainArgs) -> ExplainOut:
    """Which policy rule decides a call to TOOL with these arguments, and why (nothing runs)."""
    from fleet_mcp.policy.roles import has_permission, permissions_for

    tools = load_tools()
    if args.tool not in tools:
        raise InvalidArgument(f"unknown tool {args.tool!r}", hint="list tools with tools/list")
    policy = ctx.app.policy.current
    explained = policy.explain(args.tool, args.arguments)
    decision = explained.decision
    approval = decision.approval.model_dump(mode="json") if decision.approval is not None else None
    perm = tools[args.tool].permission
    perms = permissions_for(ctx.principal.roles, getattr(policy, "roles", None) or {})
    return ExplainOut(
        tool=args.tool, decision=decision.decision, rule=decision.rule, reason=decision.reason,
        approval_mode=approval.get("mode") if approval else None, approval=approval, permission=perm,
        caller_has_permission=has_permission(perms, perm),
        considered=[t.model_dump(mode="json") for t in explained.rules],
    )
