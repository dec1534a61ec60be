"""The one gate every tool call passes: caller → arguments → permission → policy → approval → one unit
of work with its audit row → shaped result. No tool checks policy itself."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from fleet_mcp import audit
from fleet_mcp.context import ProgressFn, ToolContext
from fleet_mcp.errors import (
    UNAVAILABLE_HINT,
    Busy,
    Conflict,
    FleetError,
    InvalidArgument,
    Unavailable,
    database_unreachable,
    value_out_of_range,
)
from fleet_mcp.principals import Caller
from fleet_mcp.registry import ToolSpec
from fleet_mcp.schema_marks import split_secrets

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


async def _invoke(spec: ToolSpec, ctx: ToolContext, args: BaseModel) -> BaseModel:
    result = await spec.handler(ctx, args)
    if not isinstance(result, spec.output_model):
        raise TypeError(f"{spec.name} returned {type(result).__name__}")
    return result


@dataclass
class _Attempt:
    """What running a handler gave: the result model (on success) or the shaped failure, the audit row's
    outcome and detail, and whether the unit of work's changes stay (on success, and for a refusal that
    must leave a trace such as a failed-accept counter or a stale mark)."""

    outcome: CallOutcome
    state: str
    detail: dict[str, Any]
    keep: bool
    result: BaseModel | None = None
    committed: bool = False


async def _attempt(spec: ToolSpec, ctx: ToolContext, args: BaseModel) -> _Attempt:
    try:
        result = await _invoke(spec, ctx, args)
    except Exception as exc:  # noqa: BLE001 - shaped by _failure
        outcome, state, detail = _failure(spec, exc, ctx.call_id)
        return _Attempt(outcome, state, detail, getattr(exc, "keep_changes", False))
    return _Attempt(CallOutcome(True, result.model_dump(mode="json"), ""), "ok", {"call_id": ctx.call_id}, True,
                    result)


def _stored_result(spec: ToolSpec, outcome: CallOutcome) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What an approval request keeps of its run's outcome: the result with its secret fields masked (by
    the result model's marks), and those secrets apart (for the requester only), or the error."""
    if not outcome.ok:
        return {"error": outcome.message, **outcome.data}, None
    public, secrets = split_secrets(spec.output_model, outcome.data)
    return public, secrets


#: Steps an approval adds to the call's own unit of work: `before` claims the approval (raising a FleetError
#: refuses the call, nothing runs), `after` records the outcome with the call's changes, `failed` records a
#: failure in a unit of work of its own after the call's work rolled back.
StepFn = Callable[["AsyncSession"], Awaitable[None]]
ResultFn = Callable[["AsyncSession", CallOutcome], Awaitable[None]]


@dataclass(frozen=True)
class ApprovalSteps:
    before: StepFn
    after: ResultFn
    failed: ResultFn
    #: How the audit row of a call whose approval could not be claimed reads.
    refused_decision: str = "approved"
    refused_outcome: str = "refused"


def _failure(spec: ToolSpec, exc: Exception, call_id: str) -> tuple[CallOutcome, str, dict[str, Any]]:
    """The result and audit outcome of a handler that raised: a domain error says what to do; anything
    else is a bug, reported by reference with details only in the log."""
    if not isinstance(exc, FleetError) and value_out_of_range(exc):
        exc = InvalidArgument("a number in the arguments is out of range for what it names (ids and counts are "
                              "32-bit)", hint="check the ids: list them with the matching list tool")
    if not isinstance(exc, FleetError) and database_unreachable(exc):
        exc = Unavailable(f"the database could not be reached during {spec.name}; nothing was changed",
                          hint=UNAVAILABLE_HINT)
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
            f"Arguments digest: {audit.short_digest(audit.arguments_digest(args.model_dump(mode='python')))}",
        ]
        if summary:
            lines.append(f"Effect: {summary}")
        return "\n".join(lines)

    # -- the call --------------------------------------------------------------------------------
    async def call(self, spec: ToolSpec, caller: Caller, raw_args: dict[str, Any], **kw: Any) -> CallOutcome:
        """Run one call through the gate; nothing unexpected ever escapes as a traceback. A process or
        principal at its concurrency limit is answered busy at once (with its audit row)."""
        t0 = time.perf_counter()
        try:
            with self.app.admission.admit(caller.qualified):
                return await self._call(spec, caller, raw_args, **kw)
        except Busy as exc:
            if exc.subject.get("retry_after") is None:
                return CallOutcome(False, {"status": "error", "error": exc.to_dict()}, str(exc))
            await self._audit_only(spec, caller, raw_args, t0, decision="busy", outcome="busy",
                                   detail={"error": exc.message})
            return CallOutcome(False, {"status": "busy", "retry_after": exc.subject["retry_after"],
                                       "error": exc.to_dict()}, f"{exc.message}; {exc.hint}. Nothing was run.")
        except FleetError as exc:
            return CallOutcome(False, {"status": "error", "error": exc.to_dict()}, str(exc))
        except Exception as exc:
            if database_unreachable(exc):
                err = Unavailable(f"the database could not be reached during {spec.name}; nothing was changed",
                                  hint=UNAVAILABLE_HINT)
                log.warning("database unreachable during %s: %s", spec.name, type(exc).__name__)
                return CallOutcome(False, {"status": "error", "error": err.to_dict()}, str(err))
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
        """An answer given in the client becomes an approval record, used once, in the run's own unit of
        work; a run that fails still consumes the answer (recorded on its own after the rollback)."""
        from fleet_mcp import approvals

        async def claim(session: AsyncSession) -> None:
            await approvals.record_elicited(session, key=key, tool=spec.name, caller=caller, arguments=args,
                                            rule=verdict.rule)

        async def done(session: AsyncSession, outcome: CallOutcome) -> None:
            # The result goes back to the human who answered; its secrets are stored nowhere.
            await approvals.finish_elicited(session, key, outcome.ok, _stored_result(spec, outcome)[0])

        async def failed(session: AsyncSession, outcome: CallOutcome) -> None:
            await approvals.record_elicited(session, key=key, tool=spec.name, caller=caller, arguments=args,
                                            rule=verdict.rule)
            await approvals.finish_elicited(session, key, False, _stored_result(spec, outcome)[0])

        return await self._run(spec, caller, args, decision="approved_by_elicitation", t0=t0, progress=progress,
                               approval_id=approvals.elicited_id(key),
                               steps=ApprovalSteps(claim, done, failed, "require_approval", "replay_refused"),
                               refusal_rule=verdict.rule)

    async def _prepare(self, spec: ToolSpec, caller: Caller, args: BaseModel, approval_id: str | None) -> Any:
        """The tool's slow outside work (a git fetch), on a read-only session, before any write transaction
        opens. An optimisation only: when it fails, the handler does the work inside the unit of work and
        reports any error there (with its audit row)."""
        if spec.prepare is None:
            return None
        assert self.app.read_sessionmaker is not None
        try:
            async with self.app.read_sessionmaker() as read:  # never committed; the engine refuses writes
                ctx = ToolContext(self.app, read, caller, "prepare", approval_id=approval_id)
                return await spec.prepare(ctx, args)
        except Exception:  # noqa: BLE001
            log.warning("prepare step of %s failed; the handler will do the work itself", spec.name, exc_info=True)
            return None

    async def _run(
        self,
        spec: ToolSpec,
        caller: Caller,
        args: BaseModel,
        *,
        decision: str,
        t0: float,
        progress: ProgressFn | None = None,
        approval_id: str | None = None,
        steps: ApprovalSteps | None = None,
        refusal_rule: str = "approval",
    ) -> CallOutcome:
        """Run the handler in its own unit of work with its audit row, then the after-commit hooks it set.
        A read-only tool reads on the read-only engine (it never takes SQLite's write lock) and its row is
        group-committed; a writing tool's row commits with its changes; a failed call's row commits alone
        after the rollback. Nothing here runs inside another unit of work."""
        prepared = await self._prepare(spec, caller, args, approval_id)
        call_id = uuid.uuid4().hex[:16]
        audit_kw: dict[str, Any] = {"decision": decision, "approval_id": approval_id}
        if spec.read_only and steps is None:
            assert self.app.read_sessionmaker is not None
            async with self.app.read_sessionmaker() as read:  # never committed; the engine refuses writes
                ctx = ToolContext(self.app, read, caller, call_id, approval_id=approval_id, prepared=prepared,
                                  _progress=progress)
                attempt = await _attempt(spec, ctx, args)
            await self._audit_only(spec, caller, args, t0, outcome=attempt.state, detail=attempt.detail, **audit_kw)
            return attempt.outcome

        assert self.app.sessionmaker is not None
        committed = False
        refused: FleetError | None = None
        async with self.app.write_lock.hold(), self.app.sessionmaker() as own:
            await own.begin()
            ctx = ToolContext(self.app, own, caller, call_id, approval_id=approval_id, prepared=prepared,
                              _progress=progress)
            if steps is not None:
                try:
                    await steps.before(own)
                except FleetError as exc:
                    refused = exc
            if refused is not None:
                await own.rollback()
            else:
                attempt = await self._attempt_and_commit(spec, ctx, args, own, t0, steps, audit_kw)
                committed = attempt.committed
        # The write lock is released from here on: rows written below may need it (group commit).
        if refused is not None:  # the approval could not be claimed: nothing ran
            assert steps is not None
            await self._audit_only(spec, caller, args, t0, decision=steps.refused_decision,
                                   outcome=steps.refused_outcome, detail={"error": refused.to_dict()},
                                   approval_id=approval_id)
            return CallOutcome(False, {"status": "denied", "rule": refusal_rule, "reason": refused.message},
                               f"{refused.message} Nothing was run.")
        if committed:
            return await self._after_commit(spec, ctx, attempt)
        if steps is not None:
            async with self.app.unit_of_work() as uow:
                await steps.failed(uow.session, attempt.outcome)
                await _record(uow.session, spec, caller, args, t0, outcome=attempt.state, detail=attempt.detail,
                              **audit_kw)
        else:
            await self._audit_only(spec, caller, args, t0, outcome=attempt.state, detail=attempt.detail, **audit_kw)
        return attempt.outcome

    async def _attempt_and_commit(self, spec: ToolSpec, ctx: ToolContext, args: BaseModel, own: AsyncSession,
                                  t0: float, steps: ApprovalSteps | None, audit_kw: dict[str, Any]) -> _Attempt:
        """Run the handler in the open unit of work; keep its changes with their audit row and commit, or roll
        everything back (the failure's row is then written by the caller, once the lock is released)."""
        attempt = await _attempt(spec, ctx, args)
        if attempt.keep:
            try:
                if steps is not None:
                    await steps.after(own, attempt.outcome)
                await _record(own, spec, ctx.principal, args, t0, outcome=attempt.state, detail=attempt.detail,
                              **audit_kw)
                await own.commit()
                attempt.committed = True
                return attempt
            except Exception as exc:  # noqa: BLE001 - a constraint or connection failure at commit
                outcome, state, detail = _failure(spec, exc, ctx.call_id)
                attempt = _Attempt(outcome, state, detail, False)
        await own.rollback()
        return attempt

    async def _after_commit(self, spec: ToolSpec, ctx: ToolContext, attempt: _Attempt) -> CallOutcome:
        """Run the hooks the handler set, in order, on the committed result. A hook must not raise; one that
        does is logged by reference and the committed result stands (its changes are in, with their row)."""
        result = attempt.result
        if result is None or not ctx._after_commit:
            return attempt.outcome
        for hook in ctx._after_commit:
            try:
                replaced = await hook(result)
            except Exception:  # noqa: BLE001
                ref = uuid.uuid4().hex[:12]
                log.exception("after-commit step of %s failed (reference %s); its changes were committed",
                              spec.name, ref)
                continue
            if replaced is not None:
                result = replaced
        return CallOutcome(True, result.model_dump(mode="json"), "")

    async def _audit_only(self, spec: ToolSpec, caller: Caller, args: BaseModel | dict[str, Any], t0: float,
                          **kw: Any) -> None:
        """The audit row of a call that wrote nothing, group-committed; returns once it is durable."""
        assert self.app.audit_writer is not None
        await self.app.audit_writer.append(**_row(spec, caller, args, t0, **kw))

    async def _queue(self, spec: ToolSpec, caller: Caller, args: BaseModel, verdict: Verdict, t0: float) -> CallOutcome:
        from fleet_mcp import approvals

        summary = await self.summary(spec, caller, args)
        assert verdict.approval is not None  # a "queue" verdict carries its approval spec
        async with self.app.unit_of_work() as uow:
            req = await approvals.create_request(
                uow.session, self.app, tool=spec.name, caller=caller, arguments=args, rule=verdict.rule,
                spec=verdict.approval, summary=summary,
            )
            await _record(uow.session, spec, caller, args, t0, decision="require_approval",
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
    async def execute_approved(self, approval_id: str, account_id: int) -> CallOutcome:
        """Run a request whose approvals are in, once, as the requester, in a unit of work of its own: the
        decision has committed before this starts (so nothing here waits on the decider's locks), and the
        request moves from `executing` to `executed` in the same transaction as the operation's changes.
        The requester's standing and the current policy are checked again first: a request the policy now
        denies, or whose requester lost the permission, is refused and recorded so."""
        from fleet_mcp import approvals
        from fleet_mcp.registry import load_tools

        t0 = time.perf_counter()
        assert self.app.read_sessionmaker is not None
        try:
            async with self.app.read_sessionmaker() as read:
                req = await approvals.get(read, approval_id, account_id)
                if req.status != "executing":
                    raise Conflict(f"approval request {approval_id} is {req.status}; it can run only once",
                                   approval_id=approval_id)
                requester = await approvals.requester_caller_of(read, req)
                token_revoked = await approvals.requester_token_revoked(read, req)
                raw = await approvals.unseal_arguments(read, self.app, req)
            spec = load_tools()[req.tool]
            args = self.parse(spec, raw)
        except FleetError as exc:
            return CallOutcome(False, {"status": "error", "error": exc.to_dict()}, str(exc))
        reason = ""
        verdict = self.evaluate(spec, requester, args, can_elicit=False)
        if not audit.digest_matches(args.model_dump(mode="python"), req.args_digest):
            reason = "the stored arguments do not match the approved digest"
        elif token_revoked:
            reason = f"the token the requester asked with ({req.requester_token}) was revoked"
        elif verdict.action == "deny":
            reason = (f"the requester no longer has permission {verdict.permission}" if verdict.permission
                      else f"the policy now denies {spec.name} (rule {verdict.rule!r}: {verdict.reason})")
        if reason:
            async with self.app.unit_of_work() as uow:
                await approvals.refuse_execution(uow.session, req.id, reason)
                await _record(uow.session, spec, requester, args, t0, decision="deny", outcome="refused_at_execution",
                              detail={"rule": verdict.rule, "reason": reason}, approval_id=req.id)
            data: dict[str, Any] = {"status": "denied", "rule": verdict.rule, "reason": reason}
            if verdict.permission:
                data["permission"] = verdict.permission
            return CallOutcome(False, data, f"Approval request {req.id} was not executed: {reason}.")

        async def claim(session: AsyncSession) -> None:
            await approvals.begin_execution(session, req.id)

        async def done(session: AsyncSession, outcome: CallOutcome) -> None:
            public, secrets = _stored_result(spec, outcome)
            await approvals.finish_execution(session, self.app, req.id, outcome.ok, public, secrets)

        async def failed(session: AsyncSession, outcome: CallOutcome) -> None:
            await approvals.finish_execution(session, self.app, req.id, False, _stored_result(spec, outcome)[0])

        outcome = await self._run(spec, requester, args, decision="approved", t0=t0, approval_id=req.id,
                                  steps=ApprovalSteps(claim, done, failed), refusal_rule=req.rule)
        # Whoever triggered the run (an approver) sees the result with its secrets masked: they are the
        # requester's, collected once with system_approvals_collect_result.
        public, secrets = _stored_result(spec, outcome) if outcome.ok else (outcome.data, None)
        if secrets is not None:
            return CallOutcome(True, public, "")
        return outcome
