"""Profiler findings for missed targets, keyed "family/figure" (or "family"), quoted in the report's closing note.

Written by hand from profiles (cProfile, and pyinstrument / py-spy from `pip install -e '.[profile]'`); update
them when a fix lands or a profile changes. A finding is only printed next to a target that the current run missed.
"""

from __future__ import annotations

_CALL = (
    "Cause (pyinstrument and cProfile of 300 in-process `Gate.call`s and of the SDK's in-memory client; py-spy "
    "of the stdio server): an in-process call now costs ~1.9 ms (read) and ~3.1 ms (write) against the echo "
    "floor, which touches no database. A read runs the tool's two queries in a deferred read transaction, "
    "then its audit append (head SELECT, INSERT, head UPDATE, COMMIT) in a group-committed write transaction; "
    "a write runs four statements and the audit's three in one BEGIN IMMEDIATE. SQLite itself takes 10–50 µs "
    "a statement: the rest is SQLAlchemy's execution path, ~100–200 µs a statement (compiled-cache lookup, "
    "parameter processing, greenlet switches, ORM row loading). Around the gate the MCP layer adds ~1 ms that "
    "the echo tool does not pay: the structured result is validated against the output model in the server "
    "and against the output schema (jsonschema) in the client, and serialised twice (text and structured). "
    "Applied this session, measured: SQLite statements run on the event loop instead of a worker thread "
    "(`fleet_mcp.db.sqlite_inline`; a hop cost ~0.2 ms and a statement took four), read-only tools read on a "
    "write-refusing engine, audit rows of reads and refusals are group-committed, unshared writes dropped "
    "their savepoint, hot statements are built once, self-contained output schemas (no $ref) — in-process "
    "read 12.1 → 1.9 ms, write 15.3 → 3.1 ms; full-run ratios stdio 8.3 → 3.1 (read) and 9.3 → 4.0 (write), HTTP 4.2 → 2.8 and 4.6 → 3.1. "
    "Next: take the hot paths off SQLAlchemy's execution layer (the audit append as prepared statements on "
    "the driver connection, read tools' lookups compiled once) — about 1 ms a call; 1.5× the floor needs a "
    "whole call within ~1 ms of a tool that touches no database."
)
_CONCURRENT = (
    "Cause: CPU per call. With the inline driver a write transaction no longer yields to the event loop "
    "between statements (before, each thread hop queued behind every ready task while the write lock was "
    "held), and reads no longer take the write lock at all — their audit rows are group-committed, many "
    "calls to one transaction. The server is now CPU-bound at the latency rows' 3–4 ms of Python per call, "
    "on 2 cores it shares with the load generator. Applied this session: 50 sessions went from 40 to 162 "
    "reads/s and from 42 to 123 writes/s (0.16× → 0.43× and 0.33× of an echo floor that measured 254 → 372/s). Next: the per-call reductions in "
    "the latency rows; beyond one core, several server processes on PostgreSQL."
)
_ROTATION_LOCAL = (
    "Cause (a step-timed 100k-row rotation): with the fixes below the remaining gap to the raw loop is "
    "SQLAlchemy's statement path around the page read and the compare-and-set `executemany`, and the GIL "
    "shared by the AES worker thread and the database work. Applied this session: one pass over the whole "
    "table in id order before the per-account pass (accounts' rows interleave by id, so per-account pages "
    "dirtied ~4× the pages per commit), the next page rewrapped while the previous commits, the job's "
    "progress UPDATE built once, pages read as plain tuples through the driver cursor, the key config kept "
    "per connection, SQLite statements run inline — 0.38× → 0.74× (100k) and 0.30× → 0.60× (1M)."
)
_ROTATION_PG = (
    "Cause (EXPLAIN of the batch statements): the compare-and-set `UPDATE … FROM unnest(…)` costs 24–30 ms per "
    "1,000 rows, most of it rewriting the credentials table's four indexes (`key_version` is one of them, so "
    "every rewrap moves an index entry); the floor's table has the same indexes, so what remains is the "
    "bookkeeping per batch. Applied this session: `ANALYZE` of a never-analyzed table before a rotation (a "
    "fresh table turned each compare-and-set into a whole-table hash join, 120–160 ms), lookups by primary "
    "key, the overlap and bookkeeping fixes listed for SQLite — 0.39× → 0.60×. At 10k rows (the quick run) "
    "the once-per-rotation work weighs more (pyinstrument: per-account finish 0.10 s — four accounts × ~8 "
    "statements — and rotate/plan/recheck ~0.1 s of a 1.05 s rotation). Next: finish all accounts in one "
    "transaction, a partial index instead of the plain `key_version` index, a HOT-friendly fillfactor."
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
        "Cause: OpenBao's rewrap requests (4 × 250 items, 12–15 ms each) are the critical path. Applied this "
        "session: up to four chunks in flight and the next page rewrapped while the previous one commits "
        "(0.57× → 1.26×)."
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
