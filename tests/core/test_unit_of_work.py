"""The gate's units of work: a failure at commit is reported and audited, a read-only tool cannot write,
the group-committed audit keeps every handed-over row (even a cancelled caller's), and a call whose audit
row cannot be written withholds its result."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from sqlalchemy import func, select

from fleet_mcp import audit
from fleet_mcp.db.engine import create_engine
from fleet_mcp.db.models import Account, AuditEntry, Template
from fleet_mcp.gate import Gate
from fleet_mcp.registry import load_tools

pytestmark = pytest.mark.anyio


async def _count(app, model, *where) -> int:  # noqa: ANN001
    async with app.sessionmaker() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar_one()


async def _last_audit(app) -> AuditEntry:  # noqa: ANN001
    async with app.sessionmaker() as s:
        return (await s.execute(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1))).scalar_one()


async def test_failure_at_commit_rolls_back_and_is_audited(app) -> None:  # noqa: ANN001
    put = load_tools()["system_put_template"]

    async def put_then_break_commit(ctx: Any, args: Any) -> Any:
        out = await put.handler(ctx, args)
        # Not flushed: the unique violation surfaces only when the gate commits.
        ctx.session.add(Account(name=ctx.principal.account_name))
        return out

    spec = dataclasses.replace(put, handler=put_then_break_commit)
    outcome = await Gate(app).call(spec, app.stdio_caller, {"name": "web", "spec": {}})
    assert not outcome.ok
    assert outcome.data["error"]["code"] == "internal"
    assert await _count(app, Template) == 0
    row = await _last_audit(app)
    assert (row.tool, row.outcome) == ("system_put_template", "internal_error")
    assert row.detail["reference"] == outcome.data["error"]["reference"]


async def test_read_only_tool_cannot_write(app) -> None:  # noqa: ANN001
    listing = load_tools()["system_list_templates"]

    async def list_but_write(ctx: Any, args: Any) -> Any:
        ctx.session.add(Template(account_id=ctx.principal.account_id, name="sneaky", attributes={},
                                 fingerprint="x", revision=1, managed_by="manual"))
        await ctx.session.flush()
        return await listing.handler(ctx, args)

    spec = dataclasses.replace(listing, handler=list_but_write)
    outcome = await Gate(app).call(spec, app.stdio_caller, {})
    assert not outcome.ok and outcome.data["error"]["code"] == "internal"
    assert await _count(app, Template) == 0
    assert (await _last_audit(app)).outcome == "internal_error"


async def test_group_commit_keeps_a_cancelled_callers_row_and_its_followers(app) -> None:  # noqa: ANN001
    before = await _count(app, AuditEntry)
    writer = app.audit_writer

    def row(i: int) -> dict[str, Any]:
        return {"principal": "acme/p", "account": "acme", "tool": "t", "arguments": {"i": i},
                "decision": "allow", "outcome": "ok"}

    tasks = [asyncio.create_task(writer.append(**row(i))) for i in range(20)]
    await asyncio.sleep(0)  # all queued; the first holds the turn
    tasks[0].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[0], asyncio.CancelledError)
    seqs = [d for d in done[1:] if isinstance(d, int)]
    assert not [d for d in done[1:] if not isinstance(d, int)], done
    assert len(seqs) == 19 and len(set(seqs)) == 19
    # The cancelled caller's row is written without it: at the latest by the next turn, which writes
    # everything queued before it.
    await writer.append(**row(20))
    assert await _count(app, AuditEntry) == before + 21
    async with app.sessionmaker() as s:
        assert (await audit.verify(s)).ok


async def test_a_call_whose_audit_row_cannot_be_written_withholds_its_result(app, tmp_path) -> None:  # noqa: ANN001
    broken = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'audit.db'}")
    app.audit_writer, good = audit.AuditWriter(broken), app.audit_writer
    try:
        outcome = await Gate(app).call(load_tools()["system_list_templates"], app.stdio_caller, {})
    finally:
        app.audit_writer = good
        await broken.dispose()
    assert not outcome.ok
    assert outcome.data["error"]["code"] == "external_error"
    assert "audit log could not be written" in outcome.message
    assert "templates" not in outcome.data
