"""Federation: accepts per second, node certificates per second, and the governance scan at 10k-100k peers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RunContext, median, module_available, python_env

NAME = "federation"
TITLE = "Federation"
DESCRIPTION = (
    "`fleet_mcp.federation.service.FederationService` on SQLite with the production key sealer (CA keys sealed "
    "by the local transit backend), each operation in its own committed unit of work. Accept = token check + "
    "cross-signing both ways + both trust bundles updated, between fresh account pairs (CAs created "
    "beforehand). Floors, same run: the same cryptography in memory (`fleet_mcp.federation.pki` and the token "
    "digest check, no database, no sealing). The governance scan runs in a subprocess (with a time limit) over "
    "one hub account's peers (70% active, 10% accepted, 10% proposed, 5% suspended, 5% revoked; each with "
    "two cross certificates and one advertised prefix); its floor is a bare `sqlite3` SELECT of the same peer "
    "and certificate rows."
)

GROWTH_TARGET = ("<=", 12.0)
HUB_DOMAIN = "hub.fed.bench"
PEER_DOMAIN = "peers.fed.bench"


async def _uow(app: Any, fn: Any) -> Any:
    async with app.sessionmaker() as s, s.begin():
        return await fn(s)


async def _accounts(app: Any, names: list[tuple[str, str]]) -> list[int]:
    from fleet_mcp.db.models import Account

    async with app.sessionmaker() as s, s.begin():
        rows = [Account(name=n, federation_domain=d) for n, d in names]
        s.add_all(rows)
        await s.flush()
        return [r.id for r in rows]


def _crypto_floor_accept(pairs: list[tuple[Any, Any]], tokens_: list[Any]) -> list[float]:
    """Token check + two cross-signatures + two bundle PEMs, in memory: the least an accept can cost."""
    from fleet_mcp.federation import pki, tokens

    times = []
    for (a, b), issued in zip(pairs, tokens_, strict=True):
        t0 = time.perf_counter()
        parsed = tokens.parse_token(issued.token)
        if not tokens.digest_matches(parsed, issued.public_id, issued.digest):
            raise RuntimeError("floor token check failed")
        c1 = pki.cross_sign_intermediate(signer_root_cert=a.root_cert, signer_root_key=a.root_key,
                                         peer_intermediate_cert=b.intermediate_cert, peer_domain="b.fed.bench")
        c2 = pki.cross_sign_intermediate(signer_root_cert=b.root_cert, signer_root_key=b.root_key,
                                         peer_intermediate_cert=a.intermediate_cert, peer_domain="a.fed.bench")
        pki.certs_to_pem([a.root_cert, c1])
        pki.certs_to_pem([b.root_cert, c2])
        times.append(time.perf_counter() - t0)
    return times


def _crypto_floor_node(ca: Any, n: int) -> list[float]:
    from fleet_mcp.federation import pki

    times = []
    for i in range(n):
        t0 = time.perf_counter()
        key = pki.generate_key()
        leaf = pki.issue_node_certificate(intermediate_cert=ca.intermediate_cert, intermediate_key=ca.intermediate_key,
                                          public_key=key.public_key(), dns_name=f"edge-{i}.a.fed.bench",
                                          federation_domain="a.fed.bench", account_name="a")
        pki.private_key_to_pem(key)
        pki.certs_to_pem([leaf, ca.intermediate_cert])
        times.append(time.perf_counter() - t0)
    return times


async def bench_accepts(ctx: RunContext, app: Any, svc: Any) -> None:
    from fleet_mcp.federation import pki, tokens

    m = ctx.reps(6, 40)
    ids = await _accounts(app, [(f"fa{i}", f"a{i}.fed.bench") for i in range(m)]
                          + [(f"fb{i}", f"b{i}.fed.bench") for i in range(m)])
    a_ids, b_ids = ids[:m], ids[m:]
    for acct in ids:  # CAs first: creating one is not part of an accept
        await _uow(app, lambda s, acct=acct: svc.ensure_ca(s, acct))
    proposals = []
    for i in range(m):
        p = await _uow(app, lambda s, i=i: svc.propose(s, account_id=a_ids[i], remote_account=f"fb{i}",
                                                       remote_prefix_advertisement=f"10.{i}.0.0/16", actor="bench"))
        proposals.append(p)
    times = []
    for i, p in enumerate(proposals):
        t0 = time.perf_counter()
        out = await _uow(app, lambda s, i=i, p=p: svc.accept(s, account_id=b_ids[i], peer_id=p.federation_peer.id,
                                                              acceptance_token=p.acceptance_token, actor="bench"))
        times.append(time.perf_counter() - t0)
        if out.federation_peer.status != "accepted":
            raise RuntimeError(f"accept ended in {out.federation_peer.status}")
    pairs = [(pki.create_account_ca(f"fa{i}"), pki.create_account_ca(f"fb{i}")) for i in range(m)]
    floor = _crypto_floor_accept(pairs, [tokens.new_token() for _ in range(m)])
    ctx.add("accepts", "accepts per second", 1 / median(times), "/s", floor=1 / median(floor),
            floor_label="same crypto in memory", ratio=median(floor) / median(times),
            note=f"{m} accepts between fresh account pairs; median {median(times) * 1e3:.1f} ms each")

    n = ctx.reps(20, 200)
    ntimes = []
    for i in range(n):
        t0 = time.perf_counter()
        await _uow(app, lambda s, i=i: svc.issue_node_certificate(s, account_id=a_ids[0], node_name=f"edge-{i}"))
        ntimes.append(time.perf_counter() - t0)
    nfloor = _crypto_floor_node(pairs[0][0], n)
    ctx.add("node_certs", "node certificates per second", 1 / median(ntimes), "/s", floor=1 / median(nfloor),
            floor_label="key + leaf in memory", ratio=median(nfloor) / median(ntimes),
            note=f"{n} certificates with server-generated keys; median {median(ntimes) * 1e3:.1f} ms each")


# -- governance scan --------------------------------------------------------------------------------------
_STATUS = ["active"] * 14 + ["accepted"] * 2 + ["proposed"] * 2 + ["suspended", "revoked"]


def _prefix(i: int) -> str:
    base = i * 16
    return f"10.{(base >> 16) & 255}.{(base >> 8) & 255}.{base & 255}/28"


async def seed_peers(app: Any, n: int) -> int:
    """A hub account with n peers (one remote account each) and two cross certificates per trusted peer."""
    from sqlalchemy import insert, select

    from fleet_mcp.db.models import Account
    from fleet_mcp.federation import pki
    from fleet_mcp.federation.models import FederationPeer, IssuedCertificate

    now = dt.datetime.now(dt.UTC)
    hub_ca, peer_ca = pki.create_account_ca("hub"), pki.create_account_ca("peer")
    by_hub = pki.cross_sign_intermediate(signer_root_cert=hub_ca.root_cert, signer_root_key=hub_ca.root_key,
                                         peer_intermediate_cert=peer_ca.intermediate_cert, peer_domain=PEER_DOMAIN)
    by_peer = pki.cross_sign_intermediate(signer_root_cert=peer_ca.root_cert, signer_root_key=peer_ca.root_key,
                                          peer_intermediate_cert=hub_ca.intermediate_cert, peer_domain=HUB_DOMAIN)
    pems = {c: pki.cert_to_pem(c) for c in (by_hub, by_peer)}
    async with app.sessionmaker() as s, s.begin():
        hub = Account(name=f"hub{n}", federation_domain=HUB_DOMAIN)
        s.add(hub)
        await s.flush()
        hub_id = hub.id
        chunk = 10_000
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            await s.execute(insert(Account), [{"name": f"p{n}-{i}", "federation_domain": PEER_DOMAIN,
                                               "created_at": now, "updated_at": now} for i in range(start, stop)])
            remote = dict((await s.execute(select(Account.name, Account.id).where(
                Account.name.in_([f"p{n}-{i}" for i in range(start, stop)])))).all())
            peers_rows = []
            for i in range(start, stop):
                st = _STATUS[i % len(_STATUS)]
                trusted = st in ("active", "accepted", "suspended", "revoked")
                peers_rows.append({
                    "local_account_id": hub_id if i % 2 == 0 else remote[f"p{n}-{i}"],
                    "remote_account_id": remote[f"p{n}-{i}"] if i % 2 == 0 else hub_id,
                    "status": st, "remote_prefix_advertisement": [_prefix(i)],
                    "token_id": f"t{n}x{i}" if st == "proposed" else None,
                    "token_digest": "0" * 64 if st == "proposed" else None,
                    "token_expires_at": now + dt.timedelta(hours=12) if st == "proposed" else None,
                    "failed_attempts": 0, "proposed_at": now - dt.timedelta(hours=2), "proposed_by": "bench",
                    "accepted_at": now - dt.timedelta(hours=1) if trusted else None,
                    "trusted_since": now - dt.timedelta(hours=1) if trusted else None,
                    "last_handshake_at": now - dt.timedelta(minutes=30) if st == "active" else None,
                    "revoked_at": now if st == "revoked" else None,
                    "local_cross_serial": f"{i:x}a" if trusted else None,
                    "remote_cross_serial": f"{i:x}b" if trusted else None,
                    "created_at": now, "updated_at": now,
                })
            await s.execute(insert(FederationPeer), peers_rows)
            peer_ids = dict((await s.execute(select(FederationPeer.remote_cross_serial, FederationPeer.id).where(
                FederationPeer.remote_cross_serial.in_([f"{i:x}b" for i in range(start, stop)])))).all())
            certs = []
            for i in range(start, stop):
                pid = peer_ids.get(f"{i:x}b")
                if pid is None:
                    continue
                # Suspending or revoking a peer withdraws its cross certificates from the bundles.
                rid, revoked = remote[f"p{n}-{i}"], _STATUS[i % len(_STATUS)] in ("revoked", "suspended")
                for signer, subject, cert, serial in ((hub_id, rid, by_hub, f"{i:x}a"), (rid, hub_id, by_peer,
                                                                                           f"{i:x}b")):
                    certs.append({"account_id": signer, "serial": serial, "kind": "cross",
                                  "subject": cert.subject.rfc4514_string(), "dns_name": None,
                                  "subject_account_id": subject, "peer_id": pid,
                                  "name_constraints": [PEER_DOMAIN if subject != hub_id else HUB_DOMAIN],
                                  "certificate_pem": pems[cert], "not_before": cert.not_valid_before_utc,
                                  "not_after": cert.not_valid_after_utc, "issued_at": now,
                                  "revoked_at": now if revoked else None})
            await s.execute(insert(IssuedCertificate), certs)
    return hub_id


def scan_floor(db: Path, hub_id: int, reps: int) -> float:
    """The rows the scan needs, fetched with a bare sqlite3 query."""
    times = []
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for _ in range(reps):
            t0 = time.perf_counter()
            conn.execute("SELECT * FROM federation_peers WHERE local_account_id = ? OR remote_account_id = ?",
                         (hub_id, hub_id)).fetchall()
            conn.execute("SELECT c.* FROM issued_certificates c JOIN federation_peers p ON p.id = c.peer_id "
                         "WHERE c.kind = 'cross' AND (p.local_account_id = ? OR p.remote_account_id = ?)",
                         (hub_id, hub_id)).fetchall()
            times.append(time.perf_counter() - t0)
    return median(times)


class _Limit(Exception):
    pass


def _on_alarm(_sig: int, _frame: Any) -> None:
    raise _Limit


async def _scan_child(url: str, account_id: int, reps: int, limit: float) -> None:
    from fleet_mcp.db import all_models  # noqa: F401
    from fleet_mcp.db.engine import create_engine, make_sessionmaker
    from fleet_mcp.federation.keys import MemoryKeySealer
    from fleet_mcp.federation.service import FederationService

    engine = create_engine(url)
    sm = make_sessionmaker(engine)
    svc = FederationService(MemoryKeySealer())  # the scan reads no keys
    times: list[float] = []
    # The limit counts scan time only (not this process's start-up): an alarm interrupts a scan past it.
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        for _ in range(reps):
            async with sm() as s:
                t0 = time.perf_counter()
                signal.setitimer(signal.ITIMER_REAL, limit)
                try:
                    out = await svc.scan(s, account_id=account_id)
                except _Limit:
                    if not times:
                        print(json.dumps({"timeout": limit}), flush=True)
                    return
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                times.append(time.perf_counter() - t0)
            # One line per repetition: a run stopped at its limit still reports the ones that finished.
            print(json.dumps({"times": times, "findings": out.finding_count, "summary": out.severity_summary}),
                  flush=True)
            if sum(times) > 30:  # long scans: one or two repetitions say enough
                break
    finally:
        await engine.dispose()


def run_scan(url: str, hub_id: int, reps: int, limit: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.federation", "--scan-child", url, str(hub_id), str(reps), str(limit)]
    timed_out, timeout = False, limit * reps + 120  # a safety net; the child stops itself at `limit`
    try:
        proc = subprocess.run(cmd, env=python_env(), capture_output=True, text=True, timeout=timeout)
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        timed_out, rc = True, 0
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = ""
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    if timed_out:
        return {"timeout": timeout}
    return {"error": ((err.strip().splitlines() or ["?"])[-1])[:300] + f" (exit {rc})"}


async def bench_scan(ctx: RunContext, app: Any) -> None:
    sizes = [1_000, 10_000] if ctx.quick else [1_000, 10_000, 100_000]
    # A bigger scan may stop once it is certainly past the growth target (13× the previous size's time);
    # the CI run caps it lower still.
    limit_first, cap = (20.0, 8.0) if ctx.quick else (180.0, 420.0)
    db = app.data_dir / "fleet.db"
    url = app.settings.effective_database_url
    results: dict[int, float] = {}
    timed_out: dict[int, float] = {}
    pts, fpts = [], []
    for i, n in enumerate(sizes):
        if i:
            prev = sizes[i - 1]
            if prev not in results:
                ctx.unavailable(f"scan.{n}", f"governance scan, {n:,} peers",
                                f"skipped: the {prev:,}-peer scan did not finish")
                break
            limit = min(cap, results[prev] * (GROWTH_TARGET[1] + 1))
        else:
            limit = limit_first
        t0 = time.perf_counter()
        hub_id = await seed_peers(app, n)
        seed_s = time.perf_counter() - t0
        reps = 1 if ctx.quick else (3 if n <= 10_000 else 2)
        floor = scan_floor(db, hub_id, 3)
        fpts.append((n, floor))
        res = await asyncio.to_thread(run_scan, url, hub_id, reps, limit)
        label = f"governance scan, {n:,} peers"
        if "timeout" in res:
            timed_out[n] = limit
            ctx.add(f"scan.{n}", label, None, "s", floor=floor, floor_label="bare SELECT of the rows",
                    note=f"stopped after {limit:.1f} s of scanning, unfinished; seeding took {seed_s:.0f} s",
                    size=n)
            continue
        if "error" in res:
            ctx.add(f"scan.{n}", label, None, "s", floor=floor, floor_label="bare SELECT of the rows",
                    note=f"failed: {res['error']}", size=n, errors=1)
            continue
        t = median(res["times"])
        results[n] = t
        pts.append((n, t))
        ctx.add(f"scan.{n}", label, t, "s", floor=floor, floor_label="bare SELECT of the rows", size=n,
                note=f"{res['findings']} findings {res['summary']}; seeding took {seed_s:.0f} s")
    # Growth over the last 10× step that was measured (or bounded from below by a stopped scan).
    steps = [(a, b) for a, b in zip(sizes, sizes[1:], strict=False)
             if a in results and (b in results or b in timed_out)]
    if steps:
        small, big = steps[-1]
        label = f"scan growth {big // 1000}k / {small // 1000}k peers"
        if big in results:
            g = results[big] / results[small]
            ctx.add("scan.growth", label, g, "x", ratio=g, target=GROWTH_TARGET, note=f"size ratio {big / small:g}")
        elif (g := timed_out[big] / results[small]) > GROWTH_TARGET[1]:
            ctx.add("scan.growth", f"{label} (lower bound)", g, "x", ratio=g, target=GROWTH_TARGET, met=False,
                    note=f"at least this: the {big:,}-peer scan was stopped unfinished after {g:.0f}× the "
                         f"{small:,}-peer time")
        else:
            ctx.unavailable("scan.growth", label, f"the {big:,}-peer scan was stopped after "
                            f"{timed_out[big]:.0f} s to keep this run short ({g:.1f}× the {small:,}-peer "
                            "time, unfinished)", target=GROWTH_TARGET)
    ctx.plot("Federation: governance scan against peers", "scan", pts, xlabel="peers")
    ctx.plot("Federation: governance scan against peers", "floor: bare SELECT", fpts, xlabel="peers")


async def run(ctx: RunContext) -> None:
    missing = module_available("fleet_mcp.federation.service") or module_available("fleet_mcp.vault.credentials")
    if missing:
        for name, label in (("accepts", "accepts per second"), ("node_certs", "node certificates per second"),
                            ("scan", "governance scan")):
            ctx.unavailable(name, label, missing)
        return
    from benchmarks.fleetapp import fleet_app
    from fleet_mcp.federation.config import FederationConfig
    from fleet_mcp.federation.service import FederationService
    from fleet_mcp.vault.credentials import CredentialKeySealer

    async with fleet_app(ctx.tmp) as app:
        svc = FederationService(CredentialKeySealer(app.transit), FederationConfig.from_settings(app.settings))
        await bench_accepts(ctx, app, svc)
        await bench_scan(ctx, app)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scan-child", nargs=4, metavar=("URL", "ACCOUNT_ID", "REPS", "LIMIT"))
    ns = p.parse_args()
    if not ns.scan_child:
        p.error("run the family with `python -m benchmarks --only federation`")
    url, account, reps, limit = ns.scan_child
    asyncio.run(_scan_child(url, int(account), int(reps), float(limit)))


if __name__ == "__main__":
    main()
