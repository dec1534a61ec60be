"""What each console page shows, gathered through tool calls only (no service or table access)."""

from __future__ import annotations

import datetime as dt
import functools
from typing import TYPE_CHECKING, Any

from fleet_mcp.registry import ToolSpec

if TYPE_CHECKING:
    from fleet_mcp.console.app import Calls
    from fleet_mcp.gate import CallOutcome

AUDIT_FILTERS = ("principal", "tool", "decision", "approval_id", "since")
LIVE_GET = {"template": "system_get_template", "module": "system_get_module",
            "provider_config": "system_get_provider_config"}
LARGE = 160  # characters of a value shown before "show all"
SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}


@functools.lru_cache(maxsize=4096)
def _parse_text(value: str) -> dt.datetime | None:
    try:
        out = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return out if out.tzinfo else out.replace(tzinfo=dt.UTC)


def _parse(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    return _parse_text(str(value)) if value else None


def when(value: Any) -> str:
    t = _parse(value)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else "—"


def age(value: Any) -> str:
    t = _parse(value)
    if t is None:
        return "—"
    seconds = int((dt.datetime.now(dt.UTC) - t).total_seconds())
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            text = f"{seconds // size}{unit}"
            break
    else:
        text = f"{seconds}s"
    return f"in {text}" if future else f"{text} ago"


def form_arguments(spec: ToolSpec, form: Any) -> dict[str, Any]:
    """A form's fields as tool arguments: only the tool's own argument names, blanks left out (the gate
    validates and converts them like any client's)."""
    out: dict[str, Any] = {}
    for name, field in spec.input_model.model_fields.items():
        values = [v for v in form.getlist(name) if isinstance(v, str)]
        if not values or values[-1].strip() == "":
            continue
        value = values[-1]
        if field.annotation is bool or str(field.annotation) in ("bool | None", "typing.Optional[bool]"):
            out[name] = value in ("true", "on", "1", "yes")
        else:
            out[name] = value
    return out


def typed_confirmation_problem(spec: ToolSpec, form: Any) -> str | None:
    """Revoking a federation peer is confirmed by typing the peer's name (the remote account's)."""
    expected = form.get("_expect")
    if spec.name != "system_sdwan_revoke_federation_peer" or expected is None:
        return None
    if str(form.get("_typed", "")).strip() != str(expected):
        return f"Type the peer's name ({expected}) exactly to confirm the revocation; nothing was run."
    return None


def _job_id(data: Any) -> int | None:
    job = data.get("job") if isinstance(data, dict) else None
    return job.get("id") if isinstance(job, dict) else None


def result_view(spec: ToolSpec, outcome: CallOutcome) -> dict[str, Any]:
    """What a result page highlights: a token shown once, an approval id, a job to follow."""
    data = outcome.data if isinstance(outcome.data, dict) else {}
    shown: dict[str, Any] = {}
    if outcome.ok and "acceptance_token" in data:
        shown["token"] = data["acceptance_token"]
        shown["token_expires_at"] = data.get("acceptance_token_expires_at")
    if outcome.ok and data.get("peering_token"):
        shown["peering_token"] = data["peering_token"]  # for another instance: the acceptance token is inside it
    if outcome.ok and isinstance(data.get("directions"), list):
        shown["handshake"] = data
    if data.get("status") == "approval_required":
        shown["approval_id"] = data.get("approval_id")
    job_id = _job_id(data) or _job_id(data.get("result")) or _job_id((data.get("approval") or {}).get("result"))
    if job_id:
        shown["job_id"] = job_id
    body = {k: v for k, v in data.items() if k not in ("acceptance_token", "peering_token")}
    shown["body"] = body
    return shown


# -- pages ---------------------------------------------------------------------------------------------
async def inbox(calls: Calls, page: int) -> dict[str, Any]:
    from fleet_mcp.console.app import PAGE_SIZE

    me = calls.caller
    page = max(1, page)
    listed = await calls.get("system_approvals_list", status="pending", limit=PAGE_SIZE,
                             offset=(page - 1) * PAGE_SIZE)
    pages = max(1, -(-listed["total"] // PAGE_SIZE))
    if page > pages:  # past the end (the queue shrank): show the last page
        page = pages
        listed = await calls.get("system_approvals_list", status="pending", limit=PAGE_SIZE,
                                 offset=(page - 1) * PAGE_SIZE)
    pending = listed["approvals"]
    can_decide = calls.may("system_approvals_decide")
    rows = []
    for a in pending:
        approvals_in = sum(1 for d in a["decisions"] if d.get("decision") == "approve")
        mine = a["requested_by"] == me.qualified
        decided = any(d.get("by") == me.qualified for d in a["decisions"])
        rows.append({**a, "approvals_in": approvals_in, "mine": mine,
                     "may_decide": can_decide and not mine and not decided and bool(set(me.roles) & set(a["approvers"])),
                     "may_withdraw": mine and calls.may("system_approvals_cancel")})
    shown, pager = rows, {"page": page, "pages": pages, "total": listed["total"]}
    proposals: list[dict[str, Any]] = []
    if calls.may("system_gitops_list_proposals"):
        proposals = (await calls.get("system_gitops_list_proposals", status="pending"))["proposals"]
    return {"approvals": shown, "pager": pager, "proposals": proposals[:50], "proposal_count": len(proposals)}


async def approval(calls: Calls, approval_id: str) -> dict[str, Any]:
    a = (await calls.get("system_approvals_get", approval_id=approval_id))["approval"]
    trail: list[dict[str, Any]] = []
    if calls.may("system_audit_query"):
        trail = (await calls.get("system_audit_query", approval_id=approval_id, limit=100))["entries"]
    me = calls.caller
    mine = a["requested_by"] == me.qualified
    pending = a["status"] == "pending"
    decided = any(d.get("by") == me.qualified for d in a["decisions"])
    return {"a": a, "trail": trail, "mine": mine,
            "may_decide": pending and not mine and not decided and calls.may("system_approvals_decide")
            and bool(set(me.roles) & set(a["approvers"])),
            "may_withdraw": pending and mine and calls.may("system_approvals_cancel")}


async def gitops(calls: Calls) -> dict[str, Any]:
    repos = (await calls.get("system_gitops_list_repositories"))["repositories"]
    return {"repos": repos, "may_register": calls.may("system_gitops_register_repository"),
            "may_sync": calls.may("system_gitops_sync_repository")}


async def repository(calls: Calls, rid: int) -> dict[str, Any]:
    data = await calls.get("system_gitops_get_repository", repository_id=rid)
    runs = (await calls.get("system_gitops_list_sync_runs", repository_id=rid, limit=50))["sync_runs"]
    return {"repo": data["repository"], "runs": runs, "may_sync": calls.may("system_gitops_sync_repository",
                                                                             repository_id=rid)}


async def drift(calls: Calls, rid: int) -> dict[str, Any]:
    repo = (await calls.get("system_gitops_get_repository", repository_id=rid))["repository"]
    report = await calls.get("system_gitops_get_drift_report", repository_id=rid)
    return {"repo": repo, "report": report, "may_suppress": calls.may("system_gitops_suppress_drift"),
            "may_sync": calls.may("system_gitops_sync_repository", repository_id=rid)}


async def sync_run(calls: Calls, sid: int) -> dict[str, Any]:
    run = (await calls.get("system_gitops_get_sync_run", sync_run_id=sid))["sync_run"]
    proposals = (await calls.get("system_gitops_list_proposals", sync_run_id=sid))["proposals"]
    pending = [p for p in proposals if p["status"] == "pending"]
    return {"run": run, "proposals": proposals, "pending": len(pending),
            "may_apply": bool(pending) and calls.may("system_gitops_apply_sync_run", sync_run_id=sid)}


def _value(v: Any) -> dict[str, Any]:
    import json

    text = "(absent)" if v is None else (v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str))
    return {"text": text, "large": len(text) > LARGE, "head": text[:LARGE]}


async def proposal(calls: Calls, pid: int, collapsed: bool) -> dict[str, Any]:
    p = (await calls.get("system_gitops_get_proposal", proposal_id=pid))["proposal"]
    fields = [{"path": f["path"], "live": _value(f.get("live")), "desired": _value(f.get("desired"))}
              for f in p["fields"]]
    live_fingerprint = None
    tool = LIVE_GET.get(p["kind"])
    if tool is not None and calls.may(tool):
        try:
            live_fingerprint = (await calls.get(tool, name=p["name"]))["item"]["fingerprint"]
        except Exception:  # noqa: BLE001 - absent (a create) or unreadable: no fingerprint to compare
            live_fingerprint = None
    stale = p["status"] == "stale" or bool(p["conflict"]) or (
        p["status"] == "pending" and live_fingerprint != p["base_fingerprint"] and tool is not None)
    pending = p["status"] == "pending"
    return {"p": p, "fields": fields, "collapsed": collapsed, "stale": stale, "live_fingerprint": live_fingerprint,
            "may_apply": pending and calls.may("system_gitops_apply_proposal", proposal_id=pid),
            "may_reject": pending and calls.may("system_gitops_reject_proposal", proposal_id=pid, reason="x"),
            "may_apply_run": pending and calls.may("system_gitops_apply_sync_run", sync_run_id=p["sync_run_id"])}


async def federation(calls: Calls) -> dict[str, Any]:
    peers = (await calls.get("system_sdwan_list_federation_peers"))["federation_peers"]
    by_status: dict[str, list[dict[str, Any]]] = {}
    for peer in peers:
        by_status.setdefault(peer["status"], []).append(peer)
    order = ["proposed", "accepted", "active", "suspended", "revoked"]
    groups = [(s, by_status[s]) for s in order if s in by_status]
    incoming = [p for p in peers if p["status"] == "proposed" and p["remote_account"] == calls.caller.account_name
                and not p.get("remote_instance")]
    scan = await calls.get("system_sdwan_federation_scan")
    findings = sorted(scan["findings"], key=lambda f: SEVERITY_ORDER.get(f["severity"], 9))
    return {"groups": groups, "incoming": incoming, "findings": findings, "severity": scan["severity_summary"],
            "may_propose": calls.may("system_sdwan_propose_federation_peer"),
            "may_accept": calls.may("system_sdwan_accept_federation_peer"),
            "may_accept_remote": calls.may("system_sdwan_accept_remote_federation_peer")}


async def peer(calls: Calls, fid: int) -> dict[str, Any]:
    p = (await calls.get("system_sdwan_get_federation_peer", federation_peer_id=fid))["federation_peer"]
    me = calls.caller.account_name
    other = p["remote_account"] if p["local_account"] == me else p["local_account"]
    t = set(p["allowed_transitions"])
    manage = calls.may("system_sdwan_verify_federation_handshake", federation_peer_id=fid)
    remote = p.get("remote_instance") or {}
    # Only a side that holds a suspension can lift it (the other side's, e.g. another instance's, stays).
    holds = me in p.get("suspended_by", []) or not p.get("suspended_by")
    return {"peer": p, "other": other,
            "may_refresh": bool(remote.get("remote_peer_id")) and p["status"] != "revoked"
            and calls.may("system_sdwan_refresh_federation_peer", federation_peer_id=fid),
            "may_regenerate": bool(remote) and p["status"] == "proposed" and remote.get("role") == "proposer"
            and calls.may("system_sdwan_regenerate_acceptance_token", federation_peer_id=fid),
            "may_accept": p["status"] == "proposed" and p["remote_account"] == me
            and calls.may("system_sdwan_accept_federation_peer"),
            # Suspended and revoked peers are checked too: their handshake is expected to fail.
            "may_handshake": manage and p["status"] != "proposed",
            "may_suspend": "suspended" in t and calls.may("system_sdwan_suspend_federation_peer"),
            "may_resume": p["status"] == "suspended" and holds and calls.may("system_sdwan_resume_federation_peer"),
            "may_revoke": "revoked" in t and calls.may("system_sdwan_revoke_federation_peer")}


async def vault(calls: Calls) -> dict[str, Any]:
    status = await calls.get("system_vault_get_pepper_status")
    creds = (await calls.get("system_vault_list_credentials"))["credentials"]
    total = max(1, status["total_ciphertexts"])
    bars = [{"version": v, "count": n, "of": total} for v, n in sorted(status["ciphertexts_by_version"].items(),
                                                                       key=lambda kv: int(kv[0]))]
    return {"status": status, "bars": bars, "credentials": creds, "job": status.get("active_job"),
            "may_rotate": calls.may("system_rotate_vault_transit_pepper"),
            "may_finalize": calls.may("system_vault_finalize_pepper_rotation"),
            "may_trim": calls.may("system_vault_trim_pepper_key")}


def job_numbers(job: dict[str, Any]) -> dict[str, Any]:
    total, done = job["total"], job["rewrapped"] + job["failed"] + job["skipped"]
    percent = 100 if job["status"].startswith("completed") else (int(done * 100 / total) if total else 0)
    started = _parse(job.get("started_at"))
    rate = eta = None
    if started is not None:
        end = _parse(job.get("finished_at")) or dt.datetime.now(dt.UTC)
        elapsed = max((end - started).total_seconds(), 1e-3)
        rate = done / elapsed
        if rate > 0 and not job.get("finished_at"):
            eta = int((total - done) / rate)
    return {"percent": min(percent, 100), "done": done, "rate": rate, "eta": eta,
            "running": job["status"] in ("pending", "running")}


async def job(calls: Calls, jid: int) -> dict[str, Any]:
    j = (await calls.get("system_vault_get_rotation_job", job_id=jid))["job"]
    return {"job": j, "n": job_numbers(j), "may_finalize": calls.may("system_vault_finalize_pepper_rotation"),
            "may_resume": calls.may("system_vault_resume_rotation_job", job_id=jid)}


async def audit_log(calls: Calls, filters: dict[str, str | None], page: int) -> dict[str, Any]:
    from fleet_mcp.console.app import PAGE_SIZE, paginate

    limit = min(1000, page * PAGE_SIZE + 1)
    args = {k: filters[k] for k in ("principal", "tool", "approval_id", "since")}
    entries = (await calls.get("system_audit_query", limit=limit, **args))["entries"]
    if filters.get("decision"):
        entries = [e for e in entries if e["decision"] == filters["decision"]]
    more = len(entries) >= limit
    shown, pager = paginate(entries, page)
    pager["more"] = more
    verify = await calls.get("system_audit_verify")
    return {"entries": shown, "pager": pager, "filters": filters, "verify": verify,
            "query": {k: v for k, v in filters.items() if v}}


async def events(calls: Calls, kind: str | None, page: int) -> dict[str, Any]:
    from fleet_mcp.console.app import PAGE_SIZE, paginate

    rows = (await calls.get("system_recent_signals", kind=kind, limit=min(1000, page * PAGE_SIZE)))["events"]
    shown, pager = paginate(rows, page)
    return {"events": shown, "pager": pager, "kind": kind or ""}

