"""Issue 15 (3): PostgreSQL stopped mid-service: each call fails with a clear, retryable error and changes
nothing (never a change without its audit row); once the database is back the same process serves again
without a restart, and the audit chain is whole."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from fleet_mcp.app import App
from fleet_mcp.db.models import Template
from fleet_mcp.settings import Settings
from tests.conftest import PostgresServer, call_as, make_caller

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


def _pg_ctl(server: PostgresServer, *args: str) -> None:
    server._run([str(server.bindir / "pg_ctl"), "-D", str(server.data), *args])


async def test_a_call_during_a_database_outage_is_retryable_and_changes_nothing(tmp_path) -> None:  # noqa: ANN001
    try:
        server = PostgresServer()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL could not start: {exc}")
    try:
        server.psql("CREATE DATABASE outage")
        app = App(Settings(data_dir=tmp_path / "data", database_url=server.url("outage"), scheduler=False))
        await app.start()
        try:
            alice = await make_caller(app, "acme", "alice", ("admin",))
            assert (await call_as(app, alice, "system_put_template", {"name": "before", "spec": {}})).ok
            _pg_ctl(server, "-m", "fast", "-w", "stop")
            for tool, args in (("system_put_template", {"name": "during", "spec": {}}),
                               ("system_list_templates", {})):
                out = await call_as(app, alice, tool, args)
                assert not out.ok, out.data
                assert out.data["error"]["code"] in ("unavailable", "external_error"), out.data
                assert "retry" in out.message.lower() and "Traceback" not in out.message, out.message
            opts = (f"-p {server.port} -k {server.sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                    "-c max_connections=200")
            _pg_ctl(server, "-o", opts, "-l", str(server.dir / "log"), "-w", "start")
            after = await call_as(app, alice, "system_put_template", {"name": "after", "spec": {}})
            assert after.ok, after.message
            async with app.read_sessionmaker() as read:
                names = set((await read.execute(select(Template.name))).scalars())
                assert (await read.execute(select(func.count()).select_from(Template))).scalar_one() == 2
            assert names == {"before", "after"}
            verified = await call_as(app, alice, "system_audit_verify", {})
            assert verified.ok and verified.data["ok"], verified.data
        finally:
            await app.close()
    finally:
        server.stop()
