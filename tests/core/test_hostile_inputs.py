"""Hostile arguments against every registered tool: wrong types, unknown keys, missing required ones, oversized
strings, nested garbage and out-of-range integers are refused with an error that names the argument, never a
traceback or an internal error, and change nothing but the audit log. Generic over the registry, so tools
added later are covered without touching this file."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from mcp import Client
from mcp_types import CallToolResult
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select

from fleet_mcp.app import App
from fleet_mcp.audit import is_secret_key
from fleet_mcp.db import all_models
from fleet_mcp.db.base import Base
from fleet_mcp.db.engine import create_engine
from fleet_mcp.db.models import AuditEntry
from fleet_mcp.registry import ToolSpec, load_tools
from fleet_mcp.server import build_server
from fleet_mcp.settings import Settings
from tests.conftest import PostgresServer, call_as

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]
ALLOW_ALL = ROOT / "fixtures" / "policies" / "allow-all.yaml"
TOOLS = load_tools()
AUDIT_TABLES = frozenset({"audit_log", "audit_head"})
SECRET_MARK = "s3cr3t-MARK-7f1c"


# -- one server per database for the whole module -------------------------------------------------------------
# Nothing here may change state, so every case shares one application and one in-memory client per database
# (a fresh app per tool would cost more than the cases themselves); each case checks its own before/after.
@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Server:
    app: App
    client: Client
    baselines: dict[str, dict[str, int]] = field(default_factory=dict)  # row counts before a tool's cases


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def hostile_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """SQLite and PostgreSQL: PostgreSQL refuses what SQLite stores (NUL characters in JSON, integers beyond
    64 bits), which is exactly where an unvalidated argument turns into a crash."""
    tmp = tmp_path_factory.mktemp("hostile")
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp / 'fleet.db'}", tmp
    pg: PostgresServer = request.getfixturevalue("postgres_server")
    name = "h_" + uuid.uuid4().hex[:12]
    pg.psql(f"CREATE DATABASE {name} TEMPLATE fleet_template")
    return pg.url(name), tmp


@pytest.fixture(scope="module")
async def server(hostile_db: tuple[str, Path]) -> AsyncIterator[Server]:
    url, tmp = hostile_db
    if url.startswith("sqlite"):
        engine = create_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await engine.dispose()
    # Nothing is denied or queued: an invalid argument set can only be stopped by validation itself.
    settings = Settings(data_dir=tmp / "data", database_url=url, scheduler=False, account="acme",
                        principal="alice", roles="admin", policy=ALLOW_ALL)
    app = App(settings)
    await app.start(migrate_db=False)
    # Thousands of invalid calls from one principal are the point here, not the invalid-call budget
    # (tests/core/test_identity.py covers that).
    from fleet_mcp.ratelimit import InvalidCallLimiter

    app.audit_writer.limiter = InvalidCallLimiter(burst=10**9, per_second=10**9)
    try:
        async with Client(build_server(app)[0]) as client:
            yield Server(app, client)
    finally:
        await app.close()


# -- schema reading ---------------------------------------------------------------------------------------------
@cache
def _schema(name: str) -> dict[str, Any]:
    return TOOLS[name].input_schema()


def _alternatives(schema: dict[str, Any], prop: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON schema alternatives a property accepts, with local $refs resolved."""
    out = []
    for alt in prop.get("anyOf", prop.get("oneOf", [prop])):
        while "$ref" in alt:
            alt = schema.get("$defs", {})[alt["$ref"].rsplit("/", 1)[-1]]
        out.append(alt)
    return out


@cache
def _string_limits(name: str) -> dict[str, int | None]:
    """String-typed properties and their maxLength (None: unbounded)."""
    schema = _schema(name)
    limits: dict[str, int | None] = {}
    for prop_name, prop in schema["properties"].items():
        for alt in _alternatives(schema, prop):
            if alt.get("type") == "string" and "enum" not in alt and "const" not in alt:
                limits[prop_name] = alt.get("maxLength")
    return limits


def _integer_props(name: str) -> list[str]:
    schema = _schema(name)
    return [p for p, prop in schema["properties"].items()
            if any(alt.get("type") == "integer" for alt in _alternatives(schema, prop))]


def _secret_props(name: str) -> list[str]:
    """Secret-named string arguments (the audit log's rule for what to mask)."""
    return [p for p in _string_limits(name) if is_secret_key(p)]


def _errors_at(model: type[BaseModel], args: dict[str, Any], key: str) -> bool:
    """Whether the tool's own input model refuses `args` because of `key` (the oracle of invalidity)."""
    try:
        model.model_validate(args)
    except ValidationError as exc:
        return any(err["loc"][:1] == (key,) for err in exc.errors())
    return False


_CANDIDATES: list[Any] = ["web", "apr_0123456789abcdef", "a reason", 1, 60, 3600, True, 1.5, {},
                          {"variety": "role"}, {"provider": "aws"}, "2030-01-01T00:00:00Z", []]


@cache
def _valid_base(name: str) -> tuple[tuple[str, Any], ...]:
    spec, schema = TOOLS[name], _schema(name)
    base: dict[str, Any] = {}
    for prop in schema.get("required", []):
        enums = [v for alt in _alternatives(schema, schema["properties"][prop]) for v in alt.get("enum", [])]
        for value in [*enums, *_CANDIDATES]:
            if not _errors_at(spec.input_model, {**base, prop: value}, prop):
                base[prop] = value
                break
    return tuple(base.items())


def valid_base(spec: ToolSpec) -> dict[str, Any]:
    """Schema-valid values for the required arguments, so each hostile set is wrong in one place only."""
    return dict(_valid_base(spec.name))


# -- hostile values ---------------------------------------------------------------------------------------------
TEXT = st.text(st.characters(codec="utf-8"), max_size=16)  # any character JSON can carry, NUL included
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
GARBAGE = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                       max_leaves=8)
KEYS = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
# Hypothesis draws a tool-independent plan (outside the event loop: a draw that overruns inside an async test
# stops anyio's test runner), and the test maps it onto the tool's own schema.
PLANS = st.fixed_dictionaries({"kind": st.integers(0, 4), "prop": st.integers(0, 63), "key": KEYS,
                               "value": GARBAGE, "over": st.integers(1, 5000), "via_mcp": st.booleans()})


def hostile_arguments(spec: ToolSpec, plan: dict[str, Any]) -> tuple[dict[str, Any], str, str] | None:
    """(arguments, the argument that is wrong, how): a valid base with exactly one thing broken; None when the
    plan happens to give arguments the tool's model accepts."""
    schema = _schema(spec.name)
    props = sorted(schema["properties"])
    required = sorted(schema.get("required", []))
    bounded = {k: v for k, v in _string_limits(spec.name).items() if v is not None}
    kinds = ["unknown_key"] + (["wrong_type", "nested_garbage"] if props else [])
    kinds += (["missing_required"] if required else []) + (["oversized_string"] if bounded else [])
    kind = kinds[plan["kind"] % len(kinds)]
    args = valid_base(spec)
    if kind == "unknown_key":
        key = plan["key"]
        if key in schema["properties"]:
            return None
        args[key] = plan["value"]
    elif kind == "missing_required":
        key = required[plan["prop"] % len(required)]
        args.pop(key, None)
    elif kind == "oversized_string":
        key = sorted(bounded)[plan["prop"] % len(bounded)]
        size = bounded[key] + plan["over"]
        args[key] = (SECRET_MARK + "x" * size)[:size]
    else:
        key = props[plan["prop"] % len(props)]
        value = plan["value"]
        args[key] = value if kind == "wrong_type" else [{plan["key"]: [value, {"": value}]}, value]
    return (args, key, kind) if _errors_at(spec.input_model, args, key) else None


# -- what a clear refusal looks like ------------------------------------------------------------------------------
def _text(r: CallToolResult) -> str:
    return "\n".join(getattr(part, "text", "") for part in r.content)


def assert_clear_refusal(text: str, key: str) -> None:
    assert "Traceback" not in text and 'File "' not in text, text
    assert "Internal error" not in text, text
    # The argument is named as a location: "key: ...", "key.sub: ...", or on its own line (pydantic's layout).
    named = re.search(rf"(^|[\s;:,]){re.escape(key)}([.:\[,]|[ \t]*$)", text, re.MULTILINE)
    assert named, f"the error does not name {key!r}: {text}"


@cache
def _snapshot_statement() -> tuple[Any, tuple[str, ...]]:
    tables = [t for t in all_models.metadata.sorted_tables if t.name not in AUDIT_TABLES]
    stmt = select(select(func.max(AuditEntry.seq)).scalar_subquery(),
                  *[select(func.count()).select_from(t).scalar_subquery() for t in tables])
    return stmt, tuple(t.name for t in tables)


async def _snapshot(app: App) -> tuple[dict[str, int], int]:
    """Row counts of every table but the audit log's, and the audit log's last seq, in one round trip."""
    stmt, names = _snapshot_statement()
    assert app.sessionmaker is not None
    async with app.sessionmaker() as session:
        last, *counts = (await session.execute(stmt)).one()
    return dict(zip(names, counts, strict=True)), last or 0


async def _audit_after(app: App, seq: int) -> list[AuditEntry]:
    assert app.sessionmaker is not None
    async with app.sessionmaker() as session:
        stmt = select(AuditEntry).where(AuditEntry.seq > seq).order_by(AuditEntry.seq)
        return list((await session.execute(stmt)).scalars().all())


# -- the property -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tool", sorted(TOOLS))
@hsettings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=PLANS)
async def test_invalid_arguments_are_refused_clearly_and_change_nothing(server: Server, tool: str, plan) -> None:  # noqa: ANN001
    """Each example goes either the MCP way (as a client sends it) or straight into the gate; the row counts
    of every table but the audit log's must stay what they were before this tool's first example."""
    spec = TOOLS[tool]
    case = hostile_arguments(spec, plan)
    assume(case is not None)
    assert case is not None
    args, key, kind = case
    app = server.app
    counts, seq = await _snapshot(app)
    baseline = server.baselines.setdefault(tool, counts)

    if plan["via_mcp"]:
        r = await server.client.call_tool(tool, args)
        assert r.is_error, (kind, key, r.structured_content)
        assert_clear_refusal(_text(r), key)
    else:
        out = await call_as(app, app.stdio_caller, tool, args)
        assert not out.ok and out.data["status"] == "invalid_arguments", (kind, key, out.message)
        assert_clear_refusal(out.message, key)

    after, _ = await _snapshot(app)
    assert after == baseline, (kind, key)
    new = await _audit_after(app, seq)
    assert all(e.tool == tool and e.outcome == "invalid_arguments" for e in new), [(e.tool, e.outcome) for e in new]
    if not plan["via_mcp"]:
        assert len(new) == 1


# -- single cases the property cannot express ----------------------------------------------------------------------
_SECRET_CASES = [(name, prop) for name in sorted(TOOLS) for prop in _secret_props(name)]


@pytest.mark.parametrize(("tool", "prop"), _SECRET_CASES)
async def test_refusals_never_echo_a_secret_argument(server: Server, tool: str, prop: str) -> None:
    """A mistyped or oversized secret is refused without repeating it (messages never contain secrets)."""
    spec, app = TOOLS[tool], server.app
    seq = (await _snapshot(app))[1]
    for value in (SECRET_MARK + "x" * 70_000, [SECRET_MARK], {"value": SECRET_MARK}):
        args = {**valid_base(spec), prop: value}
        r = await server.client.call_tool(tool, args)
        assert r.is_error
        assert SECRET_MARK not in _text(r) and SECRET_MARK not in str(r.structured_content), (value, _text(r))
        out = await call_as(app, app.stdio_caller, tool, args)
        assert not out.ok and SECRET_MARK not in out.message and SECRET_MARK not in str(out.data)
    assert all(SECRET_MARK not in str(e.arguments) for e in await _audit_after(app, seq))


_INT_CASES = [(name, prop) for name in sorted(TOOLS) for prop in _integer_props(name)]


@pytest.mark.parametrize(("tool", "prop"), _INT_CASES)
async def test_integers_beyond_64_bits_are_refused_by_name(server: Server, tool: str, prop: str) -> None:
    """JSON integers are unbounded; the databases are not. An id of 2**63 is a bad argument, not a crash."""
    spec = TOOLS[tool]
    before = (await _snapshot(server.app))[0]
    for value in (2**63, 2**64 + 1):
        args = {**valid_base(spec), prop: value}
        r = await server.client.call_tool(tool, args)
        assert r.is_error, (value, r.structured_content)
        assert_clear_refusal(_text(r), prop)
    assert (await _snapshot(server.app))[0] == before


async def test_invalid_calls_over_mcp_are_audited(server: Server) -> None:
    """Every call lands in the audit log, including one refused for its arguments before anything ran."""
    seq = (await _snapshot(server.app))[1]
    for args in ({"name": 5, "spec": {}}, {"spec": {}}, {"name": "web", "spec": {}, "surprise": 1}):
        r = await server.client.call_tool("system_put_template", args)
        assert r.is_error
    new = await _audit_after(server.app, seq)
    assert [(e.tool, e.outcome) for e in new] == [("system_put_template", "invalid_arguments")] * 3


_STRING_CASES = [(name, prop) for name in sorted(TOOLS) for prop in _string_limits(name)]


@pytest.mark.parametrize(("tool", "prop"), _STRING_CASES)
async def test_nul_characters_never_crash(server: Server, tool: str, prop: str) -> None:
    """JSON strings may carry NUL, which PostgreSQL text cannot: such an argument is handled or refused, never
    an internal error. (The rest of the call is valid, so a tool may legitimately succeed here.)"""
    r = await server.client.call_tool(tool, {**valid_base(TOOLS[tool]), prop: "a\x00b"})
    text = _text(r)
    assert "Traceback" not in text and "Internal error" not in text, text
