"""Replicas started at once on an empty PostgreSQL database all migrate it (each `serve` runs the migrations on
start): one applies them, the others wait for it and find the schema at head — none fails on "relation already
exists" or a duplicate alembic_version row."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from tests.conftest import PostgresServer, cli_env


def test_replicas_migrating_one_empty_database_at_once_all_succeed(postgres_server: PostgresServer,
                                                                  tmp_path: Path) -> None:
    name = "m_" + uuid.uuid4().hex[:12]
    postgres_server.psql(f"CREATE DATABASE {name}")
    url = postgres_server.url(name)
    procs = [subprocess.Popen([sys.executable, "-m", "fleet_mcp", "db", "upgrade"],
                              env=cli_env(tmp_path / f"data{i}", url), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    results = [(p.wait(timeout=180), p.stderr.read() if p.stderr else "") for p in procs]
    assert [code for code, _ in results] == [0, 0, 0, 0], [err[-800:] for _, err in results]
    from fleet_mcp.db import migrate

    out = subprocess.run([str(postgres_server.bindir / "psql"), "-h", "127.0.0.1", "-p", str(postgres_server.port),
                          "-U", "postgres", "-d", name, "-tAc", "SELECT version_num FROM alembic_version"],
                         capture_output=True, text=True, check=True).stdout
    assert sorted(out.split()) == sorted(migrate.current_heads())
