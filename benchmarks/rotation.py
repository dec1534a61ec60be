"""Pepper rotation: the rotation engine on SQLite, PostgreSQL and OpenBao against raw rewrap pipelines."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RunContext,
    median,
    mib,
    module_available,
    proc_rss,
    python_env,
    self_peak_rss,
    start_openbao,
    start_postgres,
)

NAME = "rotation"
TITLE = "Pepper rotation"

LOCAL_TARGET = (">=", 0.5)
VAULT_TARGET = (">=", 0.7)
RSS_TARGET = ("<=", 1.3)
ACCOUNTS = 4
SECRET_BYTES = 64
FLOOR_PAGE = 1000


DESCRIPTION = (
    f"Rotate the transit key and rewrap every stored credential ({SECRET_BYTES}-byte secrets over {ACCOUNTS} "
    "accounts) with "
    "`fleet_mcp.vault.rotation.RotationEngine` at the default batch size, in a fresh subprocess (its peak RSS is "
    "the kernel's `VmHWM` of that process: `getrusage` would include the parent's size, which Linux carries "
    "across fork + exec). Repetitions rotate again (v2 → v3 …), so each pass rewraps every row. Floors, "
    f"same run, same rows: raw `sqlite3` (or raw `asyncpg`) + AES-256-GCM — select a page of {FLOOR_PAGE:,} → "
    "rewrap (the next page on a worker thread while this one commits, as fleet-mcp does) → "
    "compare-and-set `UPDATE` → commit; for OpenBao, raw `hvac` with fleet-mcp's own shape (its batch size "
    "per page, the page's rewrap split into the same chunks sent side by side on separate connections, the "
    "next page rewrapped while the previous one commits) + the same compare-and-set updates. Rates are "
    "rewrapped rows per second; ratio = fleet-mcp ÷ floor. PostgreSQL "
    "repeats the smaller full-run size (the peak-RSS ratio is taken on SQLite, to keep the full run short)."
)


# -- fleet-mcp side ------------------------------------------------------------------------------------
def fleet_env(data_dir: Path, url: str, **extra: str) -> dict[str, str]:
    from benchmarks.mcpload import PERMISSIVE_POLICY

    policy = data_dir.parent / "bench-policy.yaml"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text(PERMISSIVE_POLICY)
    return {"FLEET_MCP_DATA_DIR": str(data_dir), "FLEET_MCP_DATABASE_URL": url, "FLEET_MCP_SCHEDULER": "false",
            "FLEET_MCP_LOG_LEVEL": "WARNING", "FLEET_MCP_POLICY": str(policy), **extra}


async def seed_fleet(env: dict[str, str], tmp: Path, n: int) -> None:
    """n credentials (v1 ciphertexts from the app's own transit backend) over ACCOUNTS accounts."""
    from sqlalchemy import insert

    from benchmarks.fleetapp import fleet_app
    from fleet_mcp import principals
    from fleet_mcp.db.base import utcnow
    from fleet_mcp.vault.models import Credential
    from fleet_mcp.vault.transit import ciphertext_version

    kw = {k.removeprefix("FLEET_MCP_").lower(): v for k, v in env.items()
          if k not in ("FLEET_MCP_DATA_DIR", "FLEET_MCP_DATABASE_URL", "FLEET_MCP_SCHEDULER", "FLEET_MCP_LOG_LEVEL",
                       "FLEET_MCP_POLICY")}
    async with fleet_app(tmp, database_url=env["FLEET_MCP_DATABASE_URL"], **kw) as app:
        assert Path(env["FLEET_MCP_DATA_DIR"]) == app.data_dir
        async with app.sessionmaker() as s, s.begin():
            ids = [(await principals.ensure_account(s, f"rot{a}")).id for a in range(ACCOUNTS)]
        now, chunk = utcnow(), 10_000
        for start in range(0, n, chunk):
            count = min(chunk, n - start)
            cts = await app.transit.encrypt_batch([secrets.token_bytes(SECRET_BYTES) for _ in range(count)])
            rows = [{"account_id": ids[(start + i) % ACCOUNTS], "name": f"cred-{start + i:07d}", "kind": "generic",
                     "internal": False, "ciphertext": ct, "key_version": ciphertext_version(ct), "meta": {},
                     "created_at": now, "updated_at": now} for i, ct in enumerate(cts)]
            async with app.sessionmaker() as s, s.begin():
                await s.execute(insert(Credential), rows)


async def _child_main(reps: int) -> dict[str, Any]:
    """In the subprocess: start the app from FLEET_MCP_* and run `reps` rotations with the engine."""
    from fleet_mcp.app import App
    from fleet_mcp.settings import Settings
    from fleet_mcp.vault.rotation import RotationEngine

    app = App(Settings())
    await app.start(migrate_db=False)
    try:
        engine = RotationEngine(app.sessionmaker, app.transit, batch_size=app.settings.rotation_batch_size)
        times, infos = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            info = await engine.start(started_by="bench")
            times.append(time.perf_counter() - t0)
            infos.append({"status": info.status, "rewrapped": info.rewrapped, "failed": info.failed,
                          "batches": info.batches, "batch_size": info.batch_size, "to_version": info.to_version})
    finally:
        await app.close()
    # VmHWM is this process's own peak. getrusage's ru_maxrss is kept across fork + exec on Linux, so a child
    # started by a big parent reports at least the parent's size; it is recorded for reference only.
    return {"times": times, "runs": infos, "peak_rss": proc_rss(os.getpid())[1], "ru_maxrss": self_peak_rss()}


def run_child(env: dict[str, str], reps: int, timeout: float = 1500) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.rotation", "--child", "--reps", str(reps)],
                          env=python_env(**env), capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"rotation subprocess failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return json.loads(lines[-1])


# -- floors ----------------------------------------------------------------------------------------------
def _vault_ct(version: int, raw: bytes) -> str:
    return f"vault:v{version}:{base64.b64encode(raw).decode()}"


class AesFloor:
    """The least a local rotation can cost: AES-256-GCM keys by version and `vault:vN:` parsing."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aes = AESGCM
        self.keys = {1: AESGCM(AESGCM.generate_key(bit_length=256))}

    def encrypt(self, pt: bytes, version: int) -> str:
        nonce = os.urandom(12)
        return _vault_ct(version, nonce + self.keys[version].encrypt(nonce, pt, None))

    def rotate(self) -> int:
        v = max(self.keys) + 1
        self.keys[v] = self._aes(self._aes.generate_key(bit_length=256))
        return v

    def rewrap(self, ct: str, to: int) -> str:
        _, ver, body = ct.split(":", 2)
        raw = base64.b64decode(body)
        pt = self.keys[int(ver[1:])].decrypt(raw[:12], raw[12:], None)
        nonce = os.urandom(12)
        return _vault_ct(to, nonce + self.keys[to].encrypt(nonce, pt, None))


_FLOOR_DDL = ("CREATE TABLE creds (id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL, name TEXT NOT NULL, "
              "ciphertext TEXT NOT NULL, key_version INTEGER NOT NULL)")


def sqlite_floor_seed(path: Path, n: int, make_ct: Any) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(_FLOOR_DDL)
    conn.execute("CREATE INDEX ix_creds_v ON creds (account_id, key_version)")
    for start in range(0, n, 10_000):
        cts = make_ct([secrets.token_bytes(SECRET_BYTES) for _ in range(min(10_000, n - start))])
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO creds (id, account_id, name, ciphertext, key_version) VALUES (?,?,?,?,1)",
                         [(start + i + 1, (start + i) % ACCOUNTS, f"cred-{start + i:07d}", ct)
                          for i, ct in enumerate(cts)])
        conn.execute("COMMIT")
    return conn


def sqlite_floor_pass(conn: sqlite3.Connection, to: int, rewrap_page: Any, page: int) -> tuple[float, int]:
    """select page → rewrap → compare-and-set update → commit, until no row is below `to`; pipelined like
    fleet-mcp: the next page is rewrapped on a worker thread while the previous one commits."""
    from concurrent.futures import ThreadPoolExecutor

    select_page = "SELECT id, ciphertext FROM creds WHERE key_version < ? AND id > ? ORDER BY id LIMIT ?"
    t0, done = time.perf_counter(), 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="floor-rewrap") as pool:
        cur = conn.execute(select_page, (to, 0, page)).fetchall()
        work = pool.submit(rewrap_page, [r[1] for r in cur]) if cur else None
        while cur:
            assert work is not None
            news = work.result()
            nxt = conn.execute(select_page, (to, cur[-1][0], page)).fetchall()
            work = pool.submit(rewrap_page, [r[1] for r in nxt]) if nxt else None
            conn.execute("BEGIN IMMEDIATE")
            c = conn.executemany("UPDATE creds SET ciphertext = ?, key_version = ? WHERE id = ? AND ciphertext = ?",
                                 [(new, to, r[0], r[1]) for r, new in zip(cur, news, strict=True)])
            done += c.rowcount
            conn.execute("COMMIT")
            cur = nxt
    return time.perf_counter() - t0, done


def local_sqlite_floor(tmp: Path, n: int, reps: int) -> tuple[list[float], int]:
    aes = AesFloor()
    conn = sqlite_floor_seed(tmp / f"floor-{n}.db", n, lambda pts: [aes.encrypt(p, 1) for p in pts])
    times = []
    try:
        for _ in range(reps):
            to = aes.rotate()
            secs, done = sqlite_floor_pass(conn, to, lambda cts, to=to: [aes.rewrap(c, to) for c in cts], FLOOR_PAGE)
            if done != n:
                raise RuntimeError(f"floor rewrapped {done} of {n}")
            times.append(secs)
    finally:
        conn.close()
    return times, n


async def local_pg_floor(dsn: str, n: int, reps: int) -> list[float]:
    import asyncpg

    aes = AesFloor()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_FLOOR_DDL.replace("INTEGER PRIMARY KEY", "BIGINT PRIMARY KEY"))
        await conn.execute("CREATE INDEX ix_creds_v ON creds (account_id, key_version)")
        for start in range(0, n, 10_000):
            count = min(10_000, n - start)
            await conn.copy_records_to_table("creds", records=[
                (start + i + 1, (start + i) % ACCOUNTS, f"cred-{start + i:07d}",
                 aes.encrypt(secrets.token_bytes(SECRET_BYTES), 1), 1) for i in range(count)])
        await conn.execute("ANALYZE creds")
        times = []
        for _ in range(reps):
            to = aes.rotate()
            t0, done = time.perf_counter(), 0
            sel = ("SELECT id, ciphertext FROM creds WHERE key_version < $1 AND id > $2 ORDER BY id LIMIT $3")

            def rewrap(rows: list[Any], to: int = to) -> list[str]:
                return [aes.rewrap(r["ciphertext"], to) for r in rows]

            # Pipelined like fleet-mcp: the next page is rewrapped on a worker thread while this one commits.
            cur = await conn.fetch(sel, to, 0, FLOOR_PAGE)
            work = asyncio.ensure_future(asyncio.to_thread(rewrap, cur)) if cur else None
            while cur:
                assert work is not None
                news = await work
                nxt = await conn.fetch(sel, to, cur[-1]["id"], FLOOR_PAGE)
                work = asyncio.ensure_future(asyncio.to_thread(rewrap, nxt)) if nxt else None
                async with conn.transaction():
                    res = await conn.fetch(
                        "UPDATE creds c SET ciphertext = u.new, key_version = $4 FROM unnest($1::bigint[], "
                        "$2::text[], $3::text[]) AS u(id, old, new) WHERE c.id = u.id AND c.ciphertext = u.old "
                        "RETURNING c.id", [r["id"] for r in cur], [r["ciphertext"] for r in cur], news, to)
                done += len(res)
                cur = nxt
            if done != n:
                raise RuntimeError(f"floor rewrapped {done} of {n}")
            times.append(time.perf_counter() - t0)
        return times
    finally:
        await conn.close()


def vault_floor(tmp: Path, make_client: Any, n: int, reps: int, *, page: int, chunk: int, parallel: int
                ) -> list[float]:
    """Raw hvac, shaped like fleet-mcp's rotation: pages of `page` rows (fleet-mcp's batch size), each page's
    rewrap sent as chunks of `chunk` items, `parallel` requests side by side on their own connections, and the
    next page rewrapped while the previous page's compare-and-set commits."""
    from concurrent.futures import Future, ThreadPoolExecutor

    local = threading.local()
    shape = {"chunk": chunk}

    def client() -> Any:
        if not hasattr(local, "client"):
            local.client = make_client()
        return local.client

    key = f"floor-{uuid.uuid4().hex[:8]}"
    make_client().secrets.transit.create_key(key)
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="vault-floor")

    def post(action: str, items: list[dict[str, str]]) -> list[dict[str, Any]]:
        try:
            resp = client().adapter.post(f"/v1/transit/{action}/{key}", json={"batch_input": items})
        except Exception as exc:
            if "high complexity" not in str(exc) or len(items) == 1:
                raise
            half = len(items) // 2  # as fleet-mcp does: halve a chunk the server finds too complex
            shape["chunk"] = min(shape["chunk"], half)
            return post(action, items[:half]) + post(action, items[half:])
        results = resp["data"]["batch_results"]
        bad = [r for r in results if r.get("error")]
        if bad:
            raise RuntimeError(f"{action} failed: {bad[0]['error']}")
        return results

    def submit(action: str, items: list[dict[str, str]]) -> list[Future[list[dict[str, Any]]]]:
        size = shape["chunk"]
        return [pool.submit(post, action, items[i:i + size]) for i in range(0, len(items), size)]

    def gather(futures: list[Future[list[dict[str, Any]]]]) -> list[str]:
        return [r["ciphertext"] for f in futures for r in f.result()]

    def encrypt(pts: list[bytes]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(pts), page):
            out += gather(submit("encrypt", [{"plaintext": base64.b64encode(p).decode()} for p in pts[i:i + page]]))
        return out

    conn = sqlite_floor_seed(tmp / f"vault-floor-{n}.db", n, encrypt)
    select_page = "SELECT id, ciphertext FROM creds WHERE key_version < ? AND id > ? ORDER BY id LIMIT ?"
    times = []
    try:
        for _ in range(reps):
            make_client().secrets.transit.rotate_key(key)
            to = int(make_client().secrets.transit.read_key(key)["data"]["latest_version"])
            t0, done = time.perf_counter(), 0
            cur = conn.execute(select_page, (to, 0, page)).fetchall()
            work = submit("rewrap", [{"ciphertext": r[1]} for r in cur]) if cur else []
            while cur:
                news = gather(work)
                nxt = conn.execute(select_page, (to, cur[-1][0], page)).fetchall()
                work = submit("rewrap", [{"ciphertext": r[1]} for r in nxt]) if nxt else []
                conn.execute("BEGIN IMMEDIATE")
                c = conn.executemany("UPDATE creds SET ciphertext = ?, key_version = ? WHERE id = ? AND ciphertext = ?",
                                     [(new, to, r[0], r[1]) for r, new in zip(cur, news, strict=True)])
                done += c.rowcount
                conn.execute("COMMIT")
                cur = nxt
            if done != n:
                raise RuntimeError(f"floor rewrapped {done} of {n}")
            times.append(time.perf_counter() - t0)
    finally:
        conn.close()
        pool.shutdown(wait=True)
    return times


# -- the family ------------------------------------------------------------------------------------------
async def _measure(ctx: RunContext, tag: str, label: str, env: dict[str, str], n: int, reps: int,
                   floor_times: list[float], floor_label: str, target: tuple[str, float]) -> dict[str, Any]:
    work = ctx.tmp / f"{tag}-{n}"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    await seed_fleet(env, work, n)
    seed_s = time.perf_counter() - t0
    child = await asyncio.to_thread(run_child, env, reps)
    rewrapped = [r["rewrapped"] for r in child["runs"]]
    statuses = {r["status"] for r in child["runs"]}
    rate = n / median(child["times"])
    floor_rate = n / median(floor_times)
    batch = child["runs"][0]["batch_size"]
    note = (f"{reps} pass(es), batch {batch}, statuses {', '.join(sorted(statuses))}, rewrapped {rewrapped}; "
            f"seeding took {seed_s:.0f} s (not timed)")
    # The smallest quick size only anchors the RSS ratio; judging the rate needs a few thousand rows.
    ctx.add(f"{tag}.{n}", f"{label}, {n:,} credentials", rate, "rows/s", floor=floor_rate, floor_label=floor_label,
            target=target if n >= 5_000 else None, note=note, size=n, seconds=median(child["times"]),
            floor_seconds=median(floor_times))
    ctx.add(f"{tag}.{n}.rss", f"{label}, {n:,} credentials: peak RSS of the rotating process",
            mib(child["peak_rss"]), "MiB", size=n)
    return {"seconds": median(child["times"]), "floor_seconds": median(floor_times), "peak_rss": child["peak_rss"]}


def _rss_ratio(ctx: RunContext, tag: str, label: str, res: dict[int, dict[str, Any]]) -> None:
    if len(res) < 2:
        return
    lo, hi = min(res), max(res)
    r = res[hi]["peak_rss"] / res[lo]["peak_rss"]
    ctx.add(f"{tag}.rss_ratio", f"{label}: peak RSS at {hi:,} ÷ at {lo:,}", r, "x", ratio=r, target=RSS_TARGET,
            note=f"{mib(res[hi]['peak_rss']):.0f} MiB vs {mib(res[lo]['peak_rss']):.0f} MiB")


async def run(ctx: RunContext) -> None:
    missing = module_available("fleet_mcp.vault.rotation") or module_available("fleet_mcp.vault.transit")
    if missing:
        ctx.unavailable("local", "local backend on SQLite", missing, target=LOCAL_TARGET)
        ctx.unavailable("vault", "OpenBao backend", missing, target=VAULT_TARGET)
        ctx.unavailable("pg", "local backend on PostgreSQL", missing, target=LOCAL_TARGET)
        return
    sizes = [20_000] if ctx.quick else [100_000, 1_000_000]
    ctx.facts.update(accounts=ACCOUNTS, secret_bytes=SECRET_BYTES, floor_page=FLOOR_PAGE)

    # Local backend on SQLite.
    res: dict[int, dict[str, Any]] = {}
    for n in sizes:
        reps = 1 if n >= 1_000_000 else ctx.reps(1, 3)
        floor_times, _ = await asyncio.to_thread(local_sqlite_floor, ctx.tmp, n, reps)
        data = ctx.tmp / f"sqlite-{n}" / "app-data"
        env = fleet_env(data, f"sqlite+aiosqlite:///{data / 'fleet.db'}")
        res[n] = await _measure(ctx, "sqlite", "local backend on SQLite", env, n, reps, floor_times,
                                "raw sqlite3 + AES-GCM", LOCAL_TARGET)
    _rss_ratio(ctx, "sqlite", "local backend on SQLite", res)
    ctx.plot("Pepper rotation: seconds against credentials", "SQLite, fleet-mcp",
             [(n, r["seconds"]) for n, r in res.items()], xlabel="credentials")
    ctx.plot("Pepper rotation: seconds against credentials", "SQLite, floor",
             [(n, r["floor_seconds"]) for n, r in res.items()], xlabel="credentials")

    # OpenBao backend (SQLite database).
    n_bao = 5_000 if ctx.quick else 100_000
    try:
        bao = start_openbao()
    except RuntimeError as exc:
        ctx.unavailable("vault", f"OpenBao backend, {n_bao:,} credentials", str(exc), target=VAULT_TARGET)
    else:
        try:
            reps = ctx.reps(1, 2)
            from fleet_mcp.settings import Settings
            from fleet_mcp.vault.transit.factory import build_transit

            # The floor uses fleet-mcp's own shape, read from the backend the app builds from the same
            # settings: its page (batch) size, request chunk size and requests in flight.
            app_settings = Settings(transit="vault", vault_addr=bao.addr, vault_token=bao.token)
            shape: Any = build_transit(app_settings, None)  # type: ignore[arg-type]
            page, chunk, parallel = app_settings.rotation_batch_size, shape.batch_size, shape.parallel
            await shape.close()
            ctx.facts.update(vault_page=page, vault_chunk=chunk, vault_parallel=parallel)
            floor_times = await asyncio.to_thread(vault_floor, ctx.tmp, bao.client, n_bao, reps, page=page,
                                                  chunk=chunk, parallel=parallel)
            data = ctx.tmp / f"vault-{n_bao}" / "app-data"
            env = fleet_env(data, f"sqlite+aiosqlite:///{data / 'fleet.db'}", FLEET_MCP_TRANSIT="vault",
                            FLEET_MCP_VAULT_ADDR=bao.addr, FLEET_MCP_VAULT_TOKEN=bao.token,
                            FLEET_MCP_PEPPER_KEY=f"pepper-{uuid.uuid4().hex[:8]}")
            await _measure(ctx, "vault", "OpenBao backend (SQLite)", env, n_bao, reps, floor_times,
                           "raw hvac, same pages, chunks and pipelining + CAS", VAULT_TARGET)
        finally:
            bao.cleanup()

    # Local backend on PostgreSQL.
    pg_sizes = [10_000] if ctx.quick else [100_000]
    try:
        pg = start_postgres()
    except RuntimeError as exc:
        ctx.unavailable("pg", "local backend on PostgreSQL", str(exc), target=LOCAL_TARGET)
        return
    try:
        pres: dict[int, dict[str, Any]] = {}
        for n in pg_sizes:
            reps = ctx.reps(1, 2)
            pg.psql(f"CREATE DATABASE floor_{n}")
            pg.psql(f"CREATE DATABASE fleet_{n}")
            floor_times = await local_pg_floor(pg.url(f"floor_{n}").replace("+asyncpg", ""), n, reps)
            data = ctx.tmp / f"pg-{n}" / "app-data"
            env = fleet_env(data, pg.url(f"fleet_{n}"))
            pres[n] = await _measure(ctx, "pg", "local backend on PostgreSQL", env, n, reps, floor_times,
                                     "raw asyncpg + AES-GCM", LOCAL_TARGET)
        _rss_ratio(ctx, "pg", "local backend on PostgreSQL", pres)
        ctx.plot("Pepper rotation: seconds against credentials", "PostgreSQL, fleet-mcp",
                 [(n, r["seconds"]) for n, r in pres.items()], xlabel="credentials")
        ctx.plot("Pepper rotation: seconds against credentials", "PostgreSQL, floor",
                 [(n, r["floor_seconds"]) for n, r in pres.items()], xlabel="credentials")
    finally:
        with contextlib.suppress(Exception):
            pg.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true")
    p.add_argument("--reps", type=int, default=1)
    ns = p.parse_args()
    if not ns.child:
        p.error("run the family with `python -m benchmarks --only rotation`")
    import logging

    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(asyncio.run(_child_main(ns.reps))), flush=True)


if __name__ == "__main__":
    main()
