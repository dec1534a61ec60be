"""Issue 15: every tool's published input schema, fuzzed through the real gate on SQLite and PostgreSQL.
Any generated argument set gives a result or a clear error, never an internal error; a failed call changes
nothing; each call leaves exactly one audit row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from fleet_mcp.db.base import Base
from fleet_mcp.db.models import AuditEntry
from fleet_mcp.policy.watcher import PolicyHolder
from fleet_mcp.registry import catalog, load_tools
from tests.conftest import call_as, make_caller

pytestmark = pytest.mark.anyio
ALLOW_ALL = Path(__file__).resolve().parents[2] / "fixtures" / "policies" / "allow-all.yaml"
TOOLS = sorted(load_tools())
#: Refusals that leave a trace by design (a failed acceptance is counted toward the lockout, and signalled).
TRACES = {"system_sdwan_accept_federation_peer": {"federation_accept_failures", "fleet_events"}}


async def _state(app) -> dict[str, int]:  # noqa: ANN001
    """Row counts of every table but the audit log: what a failed call must leave as it was."""
    counts = {}
    async with app.read_sessionmaker() as read:
        for table in Base.metadata.sorted_tables:
            if table.name in ("audit_log", "audit_head", "alembic_version"):
                continue
            counts[table.name] = (await read.execute(select(func.count()).select_from(table))).scalar_one()
    return counts


async def _audit_rows(app, tool: str) -> int:  # noqa: ANN001
    """The call's own rows (a job it launched audits its batches as `background` work)."""
    async with app.read_sessionmaker() as read:
        return (await read.execute(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.tool == tool, AuditEntry.decision != "background"))).scalar_one()


def _from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values for a (self-contained) JSON schema: in range most of the time, hostile at the edges — text with
    control, RTL and astral characters, huge and negative numbers, unknown keys are left to other tests."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([_from_schema(s) for s in schema[key]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([_from_schema({**schema, "type": k}) for k in kind])
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.one_of(st.integers(schema.get("minimum"), schema.get("maximum")), st.integers())
    if kind == "number":
        return st.one_of(st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False),
                         st.floats(allow_nan=True))
    if kind == "string":
        if schema.get("format") == "date-time":
            return st.one_of(st.datetimes().map(lambda d: d.isoformat()), st.text(max_size=20))
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 64), 64))
    if kind == "array":
        return st.lists(_from_schema(schema.get("items", {})), max_size=4)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        fixed = {k: _from_schema(v) for k, v in props.items() if k in required}
        optional = {k: _from_schema(v) for k, v in props.items() if k not in required}
        base = st.fixed_dictionaries(fixed, optional=optional)
        if schema.get("additionalProperties") not in (None, False) or not props:
            extra = st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=8), st.integers()), max_size=3)
            return st.tuples(base, extra).map(lambda pair: {**pair[1], **pair[0]})
        return base
    return st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=16))


def _arguments(tool: str) -> st.SearchStrategy[dict[str, Any]]:
    return _from_schema(load_tools()[tool].input_schema())


@pytest.mark.parametrize("tool", TOOLS)
async def test_generated_arguments_never_give_an_internal_error(app, tool: str, db_url: str) -> None:  # noqa: ANN001
    app.policy = PolicyHolder(ALLOW_ALL, catalog())
    admin = await make_caller(app, "acme", "alice", ("admin",))
    examples = 12 if db_url.startswith("sqlite") else 4
    seen: list[dict[str, Any]] = []

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(_arguments(tool))
    def collect(args: dict[str, Any]) -> None:
        seen.append(args)

    collect()
    for args in seen:
        before, rows = await _state(app), await _audit_rows(app, tool)
        out = await call_as(app, admin, tool, args)
        await app.drain()  # what the call launched after its commit (a rotation job) is part of it
        error = out.data.get("error")
        assert not (isinstance(error, dict) and error.get("code") == "internal"), (tool, args, out.message)
        assert "Traceback" not in out.message
        if not out.ok:
            assert out.message, (tool, args)
            after = await _state(app)
            changed = {t for t in after if after[t] != before[t]} - TRACES.get(tool, set())
            assert not changed, f"{tool} failed and changed {sorted(changed)}: {args}"
        added = await _audit_rows(app, tool) - rows
        assert added == 1, (tool, args, added)
