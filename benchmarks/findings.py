"""Profiler findings for missed targets, keyed "family/figure" (or "family"), quoted in the report's closing note.

Written by hand from cProfile runs (py-spy and pyinstrument are not installed here); update them when a fix
lands or a profile changes. A finding is only printed next to a target that the current run missed.
"""

from __future__ import annotations

_CALL = (
    "Cause (cProfile of 200 in-process `Gate.call`s of system_gitops_get_repository, and of the HTTP server "
    "under load): a call costs ~20 ms here, almost all of it waiting in `epoll` for aiosqlite's worker thread — "
    "the tool's two queries (repository, then its recent sync runs) ≈ 10 ms and `audit.append` ≈ 8 ms "
    "(SELECT the chain head FOR UPDATE, INSERT the entry, UPDATE the head, flush) plus the commit; every "
    "statement is a hop to the database thread (1–2 ms each on this machine); `system_put_template` swaps the "
    "reads for a SELECT + UPDATE of the live row and an event row. Python CPU per call is small. "
    "The echo floor touches no database, so 1.5× leaves room for about one round trip. Fix: fewer round trips "
    "per call — keep the audit head in memory per process behind an asyncio.Lock and append with one "
    "conditional statement (`… WHERE seq = :expected`, so another process still cannot fork the chain), fold "
    "each read tool's queries into one SELECT, and run a short SQLite unit of work as one `run_sync` on its "
    "connection instead of one thread hop per statement."
)
_CONCURRENT = (
    "Cause: the concurrent ratio tracks the sequential one (per-call database round trips, see the latency "
    "rows): with 8–50 sessions the server's event loop is mostly idle in `epoll` (4.6 s of an 8.5 s profiled "
    "load) waiting on database threads. Every call appends an audit row, so every call is a SQLite write "
    "transaction (BEGIN IMMEDIATE); waiting writers sleep in SQLite's busy handler (back-off up to 100 ms per "
    "try), which was the source of a ~1.6 s p99 at 8 sessions. Applied: SQLite transactions of one process "
    "now queue on an asyncio.Lock before BEGIN IMMEDIATE (8-session p99 1.6 s → 0.3 s) and token checks use "
    "deferred read transactions. What remains is throughput: one writer at ~40 calls/s, so 50 sessions queue "
    "(p99 ≈ 50 / 40 s). Fix: the round-trip reductions above; on PostgreSQL calls run in parallel."
)
_ROTATION_LOCAL = (
    "Cause (cProfile of a 20k-credential rotation): the AES work is ~0.1 s of ~3.4 s; the rest is waiting on "
    "the database thread for the per-batch bookkeeping — each batch of 250 reads a page, re-reads the key "
    "config (`LocalTransit._config`), runs the compare-and-set `executemany`, saves the job (an UPDATE with the "
    "JSON `account_progress`) and appends an audit row (3 statements), then commits; the floor runs 3 statements "
    "per 1,000 rows. The same rotation at batch 1,000 took 1.9 s instead of 3.9 s. Applied: batches now "
    "default to 1,000 rows (Vault requests stay chunked at ≤ 250), which doubled throughput (0.15× → 0.3–0.4×). "
    "Still to do: cache the key config in LocalTransit until a ciphertext names an unknown version, and save "
    "job progress with the audit row every few batches rather than every batch."
)
_ROTATION_PG = (
    "Cause: the per-batch bookkeeping described for SQLite, here as asyncpg round trips through SQLAlchemy; "
    "the compare-and-set itself is the same single `UPDATE … FROM unnest(…)` the floor uses, so batch size "
    "(250 against the floor's 1,000) and the statements around it make the difference. Fix: as for SQLite."
)

FINDINGS: dict[str, str] = {
    "toolcalls/stdio.read.median": _CALL,
    "toolcalls/http.read.median": _CALL,
    "toolcalls/stdio.write.median": _CALL,
    "toolcalls/http.write.median": _CALL,
    "toolcalls/http.concurrent.read.throughput": _CONCURRENT,
    "toolcalls/http.concurrent.write.throughput": _CONCURRENT,
    "toolcalls": _CALL,
    "gitops/apply.1000": (
        "Cause (cProfile, before the batching change): per proposal one `SELECT … FOR UPDATE` (`_locked_row`), "
        "a second SELECT inside `put_resource` (the row was not passed on) and one flush with a single-row "
        "INSERT — about 3,000 database round trips for 1,000 proposals (58× the floor then). Fix: lock and read "
        "each kind's targets with one `WHERE name IN (…)`, pass the rows on, and insert the creates in bulk."
    ),
    "gitops": (
        "Cause (cProfile of the drift sensor tick): an unchanged tick still reads (kind, name, fingerprint) of "
        "every in-scope live row to compute the live digest, so it grows with the fleet. Fix: keep a per-account "
        "live-state revision counter bumped by every write and compare that instead."
    ),
    "rotation/sqlite.20000": _ROTATION_LOCAL,
    "rotation/sqlite.100000": _ROTATION_LOCAL,
    "rotation/sqlite.1000000": _ROTATION_LOCAL,
    "rotation/pg.10000": _ROTATION_PG,
    "rotation/pg.100000": _ROTATION_PG,
    "rotation": (
        "Cause: the same per-batch bookkeeping as the local backend (job save + audit row + commit per batch of "
        "250) on top of the OpenBao request, done strictly one after the other. Fix: fewer statements per "
        "batch (see the local rows) and overlap the next batch's rewrap request with the current batch's commit."
    ),
    "federation/scan.growth": (
        "Cause (cProfile of a 1,000-peer scan, 15 s): 13 s are in `governance._overlaps` — "
        "`scan_peers` compares every pair of live peers of the same proposer (`for a …: for b in live[i+1:]`) "
        "and re-parses both prefix lists with `ipaddress.ip_network` for every pair (124,750 pairs, 249,500 "
        "parses): O(n²). Fix: parse each peer's prefixes once, sort them per proposer and IP version by "
        "network address and sweep with the running highest broadcast address — O(n log n), still reporting "
        "every overlapping pair."
    ),
    "federation": (
        "Cause: see the scan growth row — the prefix-overlap check in `governance.scan_peers` is quadratic."
    ),
}
