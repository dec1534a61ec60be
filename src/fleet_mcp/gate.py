"""The one gate every tool call passes: caller → arguments → permission → policy → approval → one unit
of work with its audit row → shaped result. No tool checks policy itself."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from fleet_mcp import audit
from fleet_mcp.context import ProgressFn, ToolContext
from fleet_mcp.errors import FleetError, InvalidArgument, PermissionDenied
from fleet_mcp.principals import Caller
from fleet_mcp.registry import ToolSpec

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from fleet_mcp.app import App
    from fleet_mcp.policy.model import ApprovalSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """What the gate will do with a call before anything runs."""

    action: str  # "allow" | "deny" | "elicit" | "queue"
    rule: str
    reason: str
    decision: str  # the policy's word: auto_approve | require_approval | deny | permission
    approval: ApprovalSpec | None = None
    permission: str | None = None


@dataclass
class CallOutcome:
    ok: bool
    data: dict[str, Any]
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        if self.ok:
            return json.dumps(self.data, default=str)
        return self.message


INT64 = (-(2**63), 2**63 - 1)


def unsafe_values(value: Any, path: str = "") -> list[str]:
    """Values no database column can hold, found before any model sees them: integers outside 64 bits and
    NUL characters (PostgreSQL text refuses them). Reported by path, never by value."""
    where = path or "(arguments)"
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [] if INT64[0] <= value <= INT64[1] else [f"{where}: integer out of range (64-bit)"]
    if isinstance(value, str):
        return [f"{where}: NUL characters are not allowed"] if "\x00" in value else []
    if isinstance(value, dict):
        out: list[str] = []
        for k, v in value.items():
            key = str(k)
            if "\x00" in key:
                if path:  # top-level unknown names are refused (and named) by the input model
                    out.append(f"{where}: NUL characters are not allowed in keys")
                continue
            out += unsafe_values(v, f"{path}.{key}" if path else key)
        return out
    if isinstance(value, list | tuple):
        out = []
        for i, v in enumerate(value):
            out += unsafe_values(v, f"{path}.{i}" if path else str(i))
        return out
    return []


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(arguments)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _row(spec: ToolSpec, caller: Caller, args: BaseModel | dict[str, Any], t0: float, *, decision: str,
         outcome: str, detail: dict[str, Any] | None = None, approval_id: str | None = None) -> dict[str, Any]:
    """The audit fields of one call (arguments are masked by the audit module)."""
    arguments = args.model_dump(mode="python") if isinstance(args, BaseModel) else dict(args)
    return {"principal": caller.qualified, "account": caller.account_name, "tool": spec.name, "arguments": arguments,
            "decision": decision, "outcome": outcome, "detail": detail, "approval_id": approval_id,
            "duration_ms": (time.perf_counter() - t0) * 1000}


async def _record(session: AsyncSession, spec: ToolSpec, caller: Caller, args: BaseModel | dict[str, Any], t0: float,
                  **kw: Any) -> None:
    """The audit row of one call, in the given transaction (it commits or rolls back with the call's work)."""
    await audit.append(session, **_row(spec, caller, args, t0, **kw))


async def _invoke(spec: ToolSpec, ctx: ToolContext, args: BaseModel) -> dict[str, Any]:
    result = await spec.handler(ctx, args)
    if not isinstance(result, spec.output_model):
        raise TypeError(f"{spec.name} returned {type(result).__name__}")
    return result.model_dump(mode="json")


async def _attempt(spec: ToolSpec, ctx: ToolContext, args: BaseModel) -> tuple[CallOutcome, str, dict[str, Any], bool]:
    """Run the handler: its outcome, the audit row's outcome and detail, and whether its changes stay (on
    success, and for a refusal that must leave a trace such as a failed-accept counter or a stale mark)."""
    try:
        data = await _invoke(spec, ctx, args)
    except Exception as exc:  # noqa: BLE001 - shaped by _failure
        outcome, state, detail = _failure(spec, exc, ctx.call_id)
        return outcome, state, detail, getattr(exc, "keep_changes", False)
    return CallOutcome(True, data, ""), "ok", {"call_id": ctx.call_id}, True


def _failure(spec: ToolSpec, exc: Exception, call_id: str) -> tuple[CallOutcome, str, dict[str, Any]]:
    """The result and audit outcome of a handler that raised: a domain error says what to do; anything
    else is a bug, reported by reference with details only in the log."""
    if isinstance(exc, FleetError):
        err = exc.to_dict()
        return CallOutcome(False, {"status": "error", "error": err}, str(exc)), "error", {"call_id": call_id,
                                                                                          "error": err}
    ref = uuid.uuid4().hex[:12]
    log.error("internal error in %s (reference %s)", spec.name, ref, exc_info=exc)
    outcome = CallOutcome(
        False, {"status": "error", "error": {"code": "internal", "reference": ref}},
        f"Internal error in {spec.name} (reference {ref}); nothing was changed. "
        "Report the reference to the operator; details are in the server log.",
    )
    return outcome, "internal_error", {"call_id": call_id, "reference": ref}


class Gate:
    def __init__(self, app: App) -> None:
        self.app = app

    # -- decisions -------------------------------------------------------------------------------
    def permissions(self, caller: Caller) -> frozenset[str]:
        from fleet_mcp.policy.roles import permissions_for

        policy = self.app.policy.current
        return permissions_for(caller.roles, getattr(policy, "roles", None) or {})

    def has_permission(self, caller: Caller, permission: str) -> bool:
        from fleet_mcp.policy.roles import has_permission

        return has_permission(self.permissions(caller), permission)

    def evaluate(self, spec: ToolSpec, caller: Caller, args: BaseModel, *, can_elicit: bool) -> Verdict:
        """Permission first, then the policy; never allows by fallback."""
        if not self.has_permission(caller, spec.permission):
            return Verdict("deny", "permission", f"principal lacks permission {spec.permission}", "permission",
                           permission=spec.permission)
        policy = self.app.policy.current
        try:
            d = policy.decide(spec.name, args.model_dump(mode="json"))
        except Exception:  # a broken policy must fail closed
            log.exception("policy evaluation failed for %s", spec.name)
            return Verdict("deny", "policy-error", "the policy could not be evaluated", "deny")
        if d.decision == "auto_approve":
            return Verdict("allow", d.rule, d.reason, d.decision)
        if d.decision != "require_approval":
            return Verdict("deny", d.rule, d.reason, d.decision)
        from fleet_mcp.policy.model import ApprovalSpec

        spec_a = d.approval or ApprovalSpec()
        if spec_a.allows_elicitation and can_elicit and not self.app.stateless_http:
            return Verdict("elicit", d.rule, d.reason, d.decision, approval=spec_a)
        if spec_a.allows_queue:
            return Verdict("queue", d.rule, d.reason, d.decision, approval=spec_a)
        return Verdict("deny", d.rule, "approval by elicitation is required but this client cannot be asked",
                       d.decision, approval=spec_a)

    def parse(self, spec: ToolSpec, raw: dict[str, Any]) -> BaseModel:
        return spec.input_model.model_validate(raw)

    async def summary(self, spec: ToolSpec, caller: Caller, args: BaseModel) -> str:
        if spec.summary is None:
            return ""
        assert self.app.read_sessionmaker is not None
        try:
            async with self.app.read_sessionmaker() as session:  # never committed
                ctx = ToolContext(self.app, session, caller, call_id="summary")
                return await spec.summary(ctx, args)
        except FleetError as exc:
            return f"(effect unknown: {exc.message})"
        except Exception:
            log.exception("summary of %s failed", spec.name)
            return "(effect could not be summarised)"

    def elicitation_message(self, spec: ToolSpec, args: BaseModel, verdict: Verdict, summary: str) -> str:
        masked = audit.mask(args.model_dump(mode="python"))
        lines = [
            f"Approve {spec.name} ({spec.title})?",
            f"Policy rule: {verdict.rule}.",
            f"Arguments: {json.dumps(masked, sort_keys=True, default=str)}",
            f"Arguments digest: {audit.arguments_digest(args.model_dump(mode='python'))[:16]}",
        ]
        if summary:
            lines.append(f"Effect: {summary}")
        return "\n".join(lines)

    # -- the call --------------------------------------------------------------------------------
    async def call(self, spec: ToolSpec, caller: Caller, raw_args: dict[str, Any], **kw: Any) -> CallOutcome:
        """Run one call through the gate; nothing unexpected ever escapes as a traceback."""
        try:
            return await self._call(spec, caller, raw_args, **kw)
        except FleetError as exc:
            return CallOutcome(False, {"status": "error", "error": exc.to_dict()}, str(exc))
        except Exception:
            ref = uuid.uuid4().hex[:12]
            log.exception("internal error in the gate for %s (reference %s)", spec.name, ref)
            return CallOutcome(False, {"status": "error", "error": {"code": "internal", "reference": ref}},
                               f"Internal error in {spec.name} (reference {ref}); nothing was changed. "
                               "Details are in the server log.")

    async def _call(
        self,
        spec: ToolSpec,
        caller: Caller,
        raw_args: dict[str, Any],
        *,
        can_elicit: bool = False,
        elicited: str | None = None,
        progress: ProgressFn | None = None,
        elicitation_key: str | None = None,
    ) -> CallOutcome:
        """Run one call through the gate. `elicited` is "accept" | "decline" | "cancel" when the human
        was already asked in the client; `elicitation_key` identifies that answer (single use)."""
        t0 = time.perf_counter()
        try:
            problems = unsafe_values(raw_args)
            if problems:
                raise InvalidArgument("; ".join(problems))
            args = self.parse(spec, raw_args)
        except (ValidationError, InvalidArgument) as exc:
            detail: Any = format_validation_error(exc) if isinstance(exc, ValidationError) else exc.message
            msg = f"Invalid arguments for {spec.name}: {detail}"
            await self._audit_only(spec, caller, raw_args, t0, decision="invalid", outcome="invalid_arguments",
                                   detail={"error": msg})
            return CallOutcome(False, {"status": "invalid_arguments", "error": msg}, msg + ". Fix them and retry.")
        verdict = self.evaluate(spec, caller, args, can_elicit=can_elicit or elicited is not None)

        if verdict.action == "deny":
            detail = {"rule": verdict.rule, "reason": verdict.reason}
            await self._audit_only(spec, caller, args, t0, decision="deny", outcome="denied", detail=detail)
            data = {"status": "denied", "rule": verdict.rule, "reason": verdict.reason}
            if verdict.permission:
                data["permission"] = verdict.permission
                msg = (f"Permission denied: {spec.name} needs permission {verdict.permission}; "
                       f"principal {caller.qualified} has roles {', '.join(caller.roles) or '(none)'}.")
            else:
                msg = f"Denied by policy rule {verdict.rule!r}: {verdict.reason}"
            return CallOutcome(False, data, msg)

        decision = verdict.decision
        if verdict.action == "elicit":
            if elicited in ("decline", "cancel"):
                await self._audit_only(spec, caller, args, t0, decision="require_approval", outcome="declined",
                                       detail={"rule": verdict.rule, "elicitation": elicited})
                return CallOutcome(False, {"status": "declined", "rule": verdict.rule},
                                   f"The operator {elicited}d {spec.name}; nothing was run.")
            if elicited != "accept":
                # Capability vanished between rounds: queue rather than run unasked.
                verdict = Verdict("queue", verdict.rule, verdict.reason, verdict.decision, verdict.approval)
            else:
                decision = "approved_by_elicitation"

        if verdict.action == "queue":
            return await self._queue(spec, caller, args, verdict, t0)

        if decision == "approved_by_elicitation":
            return await self._run_elicited(spec, caller, args, verdict, t0, progress,
                                            elicitation_key or uuid.uuid4().hex)
        return await self._run(spec, caller, args, decision=decision, t0=t0, progress=progress)

    async def _run_elicited(self, spec: ToolSpec, caller: Caller, args: BaseModel, verdict: Verdict, t0: float,
                            progress: ProgressFn | None, key: str) -> CallOutcome:
        """An answer given in the client becomes an approval record, used once, in the run's transaction."""
        from fleet_mcp import approvals

        assert self.app.sessionmaker is not None
        async with self.app.sessionmaker() as session, session.begin():
            try:
                req = await approvals.record_elicited(session, key=key, tool=spec.name, caller=caller,
                                                      arguments=args, rule=verdict.rule)
            except FleetError as exc:
                await _record(session, spec, caller, args, t0, decision="require_approval",
                              outcome="replay_refused", detail={"error": exc.to_dict()})
                return CallOutcome(False, {"status": "denied", "rule": verdict.rule, "reason": exc.message},
                                   f"{exc.message} Call the tool again to be asked again.")
            outcome = await self._run(spec, caller, args, decision="approved_by_elicitation", t0=t0,
                                      progress=progress, session=session, approval_id=req.id)
            await approvals.finish_elicited(session, req, outcome.ok, outcome.data if outcome.ok else
                                            {"error": outcome.message})
            return outcome

    async def _run(
        self,
        spec: ToolSpec,
        caller: Caller,
        args: BaseModel,
        *,
        decision: str,
        t0: float,
        progress: ProgressFn | None = None,
        session: AsyncSession | None = None,
        approval_id: str | None = None,
    ) -> CallOutcome:
        """Run the handler in one unit of work with its audit row. A read-only tool reads on the read-only
        engine (it never takes SQLite's write lock) and its row is group-committed; a writing tool's row
        commits with its changes; a failed call's row commits alone after the rollback."""
        prepared = None
        if spec.prepare is not None:
            # An optimisation only: when it fails, the handler does the work inside the unit of work and
            # reports any error there (with its audit row).
            try:
                prepared = await spec.prepare(self.app, caller, args)
            except Exception:  # noqa: BLE001
                log.warning("prepare step of %s failed; the handler will do the work itself", spec.name,
                            exc_info=True)
        call_id = uuid.uuid4().hex[:16]
        audit_kw = {"decision": decision, "approval_id": approval_id}
        if session is not None:
            return await self._run_shared(spec, caller, args, t0, call_id, progress, session, prepared, audit_kw)
        if spec.read_only:
            assert self.app.read_sessionmaker is not None
            async with self.app.read_sessionmaker() as read:  # never committed; the engine refuses writes
                ctx = ToolContext(self.app, read, caller, call_id, approval_id=approval_id, prepared=prepared,
                                  _progress=progress)
                outcome, state, detail, _ = await _attempt(spec, ctx, args)
            await self._audit_only(spec, caller, args, t0, outcome=state, detail=detail, **audit_kw)
            return outcome

        assert self.app.sessionmaker is not None
        own = self.app.sessionmaker()
        try:
            await own.begin()
            ctx = ToolContext(self.app, own, caller, call_id, approval_id=approval_id, prepared=prepared,
                              _progress=progress)
            outcome, state, detail, keep = await _attempt(spec, ctx, args)
            if keep:
                try:
                    await _record(own, spec, caller, args, t0, outcome=state, detail=detail, **audit_kw)
                    await own.commit()
                    return outcome
                except Exception as exc:  # noqa: BLE001 - a constraint or connection failure at commit
                    outcome, state, detail = _failure(spec, exc, call_id)
            await own.rollback()
        finally:
            await own.close()
        await self._audit_only(spec, caller, args, t0, outcome=state, detail=detail, **audit_kw)
        return outcome

    async def _run_shared(self, spec: ToolSpec, caller: Caller, args: BaseModel, t0: float, call_id: str,
                          progress: ProgressFn | None, session: AsyncSession, prepared: Any,
                          audit_kw: dict[str, Any]) -> CallOutcome:
        """Inside a unit of work that is not the call's own (an approval's): the handler's changes live in a
        savepoint, so a failure undoes them and leaves the owner's work and the audit row in place."""
        ctx = ToolContext(self.app, session, caller, call_id, approval_id=audit_kw["approval_id"],
                          prepared=prepared, shared_unit_of_work=True, _progress=progress)
        savepoint = await session.begin_nested()
        try:
            outcome, state, detail, keep = await _attempt(spec, ctx, args)
        except BaseException:
            await savepoint.rollback()
            raise
        await (savepoint.commit() if keep else savepoint.rollback())
        await _record(session, spec, caller, args, t0, outcome=state, detail=detail, **audit_kw)
        return outcome

    async def _audit_only(self, spec: ToolSpec, caller: Caller, args: BaseModel | dict[str, Any], t0: float,
                          **kw: Any) -> None:
        """The audit row of a call that wrote nothing, group-committed; returns once it is durable."""
        assert self.app.audit_writer is not None
        await self.app.audit_writer.append(**_row(spec, caller, args, t0, **kw))

    async def _queue(self, spec: ToolSpec, caller: Caller, args: BaseModel, verdict: Verdict, t0: float) -> CallOutcome:
        from fleet_mcp import approvals

        summary = await self.summary(spec, caller, args)
        assert self.app.sessionmaker is not None
        assert verdict.approval is not None  # a "queue" verdict carries its approval spec
        async with self.app.sessionmaker() as session, session.begin():
            req = await approvals.create_request(
                session, self.app, tool=spec.name, caller=caller, arguments=args, rule=verdict.rule,
                spec=verdict.approval, summary=summary,
            )
            await _record(session, spec, caller, args, t0, decision="require_approval",
                          outcome="approval_required", detail={"rule": verdict.rule}, approval_id=req.id)
        data = {"status": "approval_required", "rule": verdict.rule, "approval_id": req.id,
                "expires_at": req.expires_at.isoformat(), "approvers": list(req.approvers),
                "min_approvals": req.min_approvals, "separation_of_duties": req.separation_of_duties}
        who = "another principal" if req.separation_of_duties else "an approver"
        msg = (f"{spec.name} needs approval (policy rule {verdict.rule!r}). Approval request {req.id} is queued; "
               f"{who} with role {' or '.join(req.approvers)} decides with system_approvals_decide "
               f"or `fleet-mcp approvals approve {req.id}`. It expires at {req.expires_at.isoformat()}.")
        return CallOutcome(False, data, msg)

    # -- approved execution ----------------------------------------------------------------------
    async def execute_approved(self, session: AsyncSession, req: Any, requester: Caller, raw_args: dict[str, Any]
                               ) -> CallOutcome:
        """Run an approved request once, as the requester, inside the decider's unit of work."""
        from fleet_mcp.registry import load_tools

        spec = load_tools()[req.tool]
        t0 = time.perf_counter()
        args = self.parse(spec, raw_args)
        if audit.arguments_digest(args.model_dump(mode="python")) != req.args_digest:
            raise PermissionDenied("the stored arguments do not match the approved digest; refusing to execute",
                                   approval_id=req.id)
        if not self.has_permission(requester, spec.permission):
            return CallOutcome(False, {"status": "denied", "permission": spec.permission},
                               f"The requester no longer has permission {spec.permission}.")
        return await self._run(spec, requester, args, decision="approved", t0=t0, session=session,
                               approval_id=req.id)
