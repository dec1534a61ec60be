"""Shared fixtures: both databases (SQLite file, throwaway PostgreSQL), accounts, and the anyio backend."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fleet_mcp.db import all_models  # noqa: F401  (registers every table)
from fleet_mcp.db.base import Base
from fleet_mcp.db.engine import create_engine, make_sessionmaker
from fleet_mcp.db.models import Account
from tests import services


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-services", action="store_true", default=False,
        help="fail (instead of skip) any test whose real service (PostgreSQL, OpenBao, git, sshd, the MCP "
             "Inspector) is missing; scripts/test always sets it",
    )


def pytest_configure(config: pytest.Config) -> None:
    services.set_required(bool(config.getoption("--require-services")))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bindir() -> Path | None:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        if (Path(out) / "initdb").exists():
            return Path(out)
    except (OSError, subprocess.CalledProcessError):
        pass
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    """A throwaway PostgreSQL cluster in a temp dir, run as the postgres user when we are root."""

    def __init__(self) -> None:
        bindir = _pg_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="fleet-pg-"))
        self.port = _free_port()
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.sock.mkdir()
        self._as_user = os.geteuid() == 0
        if self._as_user:
            shutil.chown(self.dir, "postgres")
            shutil.chown(self.sock, "postgres")
        self._run(
            [str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync"]
        )
        opts = (
            f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run([str(bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"),
                   "-w", "start"])
        self.admin_url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, cmd: list[str]) -> None:
        if self._as_user:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd=self.dir)

    def url(self, db: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{db}"

    def psql(self, sql: str) -> None:
        self._run([str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                   "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql])

    def stop(self) -> None:
        try:
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        services.missing("PostgreSQL", str(exc))
    # One template database with every table; each test copies it (fast file copy).
    server.psql("CREATE DATABASE fleet_template")
    import anyio

    async def _create() -> None:
        engine = create_engine(server.url("fleet_template"))
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await engine.dispose()

    anyio.run(_create)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'fleet.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = "t_" + uuid.uuid4().hex[:12]
    for _ in range(20):
        try:
            server.psql(f"CREATE DATABASE {name} TEMPLATE fleet_template")
            break
        except subprocess.CalledProcessError:  # template busy for a moment after a previous copy
            time.sleep(0.1)
    else:
        raise RuntimeError("could not copy the template database")
    return server.url(name)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator:
    eng = create_engine(db_url)
    if db_url.startswith("sqlite"):
        async with eng.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
    yield eng
    await eng.dispose()


@pytest.fixture
def sessionmaker(engine):  # noqa: ANN001
    return make_sessionmaker(engine)


async def _make_account(sessionmaker, name: str, domain: str) -> Account:  # noqa: ANN001
    async with sessionmaker() as session, session.begin():
        acct = Account(name=name, federation_domain=domain)
        session.add(acct)
    return acct


@pytest.fixture
async def account(sessionmaker) -> Account:  # noqa: ANN001
    return await _make_account(sessionmaker, "acme", "acme.fleet.test")


@pytest.fixture
async def other_account(sessionmaker) -> Account:  # noqa: ANN001
    return await _make_account(sessionmaker, "globex", "globex.fleet.test")


# -- the application and MCP clients ------------------------------------------------------------------
from fleet_mcp.settings import Settings  # noqa: E402


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=db_url, allow_local_repos=True, scheduler=False,
        account="acme", principal="alice", roles="admin",
    )


@pytest.fixture
async def app(engine, settings: Settings):  # noqa: ANN001
    from fleet_mcp.app import App

    application = App(settings)
    await application.start(migrate_db=False)
    yield application
    await application.close()


@pytest.fixture
def mcp_server(app):  # noqa: ANN001
    from fleet_mcp.server import build_server

    return build_server(app)[0]


@pytest.fixture
async def client(mcp_server):  # noqa: ANN001
    from mcp import Client

    async with Client(mcp_server) as c:
        yield c


async def call_as(app, caller, tool: str, arguments: dict | None = None, **kw):  # noqa: ANN001
    """Call a tool through the gate in-process as `caller` (a principals.Caller)."""
    from fleet_mcp.gate import Gate
    from fleet_mcp.registry import load_tools

    return await Gate(app).call(load_tools()[tool], caller, arguments or {}, **kw)


async def make_caller(app, account: str, name: str, roles: tuple[str, ...]):  # noqa: ANN001
    from fleet_mcp import principals

    async with app.sessionmaker() as session, session.begin():
        acct = await principals.ensure_account(session, account)
        await principals.ensure_principal(session, acct, name, list(roles))
    return principals.Caller(name=name, account_id=acct.id, account_name=acct.name, roles=roles, via="test")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (no tables): for subprocesses that migrate on start."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = "f_" + uuid.uuid4().hex[:12]
    server.psql(f"CREATE DATABASE {name}")
    return server.url(name)


def cli_env(data_dir: Path, db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_MCP_")}
    env.update({"FLEET_MCP_DATA_DIR": str(data_dir), "FLEET_MCP_DATABASE_URL": db_url,
                "FLEET_MCP_LOG_LEVEL": "WARNING"})
    env.update(extra)
    return env


def run_cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    import sys

    proc = subprocess.run([sys.executable, "-m", "fleet_mcp", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"fleet-mcp {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


class HttpServer:
    def __init__(self, env: dict[str, str], *extra_args: str) -> None:
        import sys

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="fleet-http-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleet_mcp", "serve", "--transport", "http", "--port", str(self.port),
             *extra_args], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        import urllib.request

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {Path(self.log.name).read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("HTTP server did not become healthy")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def pg_db_url(postgres_server: PostgresServer) -> str:
    """A PostgreSQL database with every table (for tests that only make sense on PostgreSQL)."""
    name = "p_" + uuid.uuid4().hex[:12]
    postgres_server.psql(f"CREATE DATABASE {name} TEMPLATE fleet_template")
    return postgres_server.url(name)
