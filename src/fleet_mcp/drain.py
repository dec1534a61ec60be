"""Health and graceful shutdown of the HTTP server: `/livez`, `/readyz`, and draining on SIGTERM.

`/livez` answers 200 whenever the event loop runs this handler (the process is not wedged): restart on it.
`/readyz` answers 200 only when the database answers `SELECT 1` within `READY_DB_TIMEOUT` seconds and the
process is not draining; otherwise 503 with a JSON reason (`database_unreachable`, `draining`): route on it.
`/healthz` is `/readyz` (kept for existing probes).

SIGTERM (uvicorn's own signal handling, extended in `DrainingServer`): the process

1. starts draining: `/readyz` answers 503 `draining`, a new MCP session is refused with 503 and
   `Retry-After`, a new tool call on an open session is refused as busy with `retry_after` (and its audit
   row); the listener stays open so a load balancer sees the 503;
2. waits for the calls in flight to end (each commits or rolls back with its audit row) and for background
   jobs to stop at their next batch boundary (a rotation releases its lease there: another replica takes it
   over at its next takeover tick), at most `FLEET_MCP_DRAIN_TIMEOUT` seconds;
3. ends the open event streams (GET /mcp) and lets uvicorn shut down: the listener closes, the responses
   still being sent finish (within what is left of the drain timeout, at least one second);
4. exits 0: cleanly once the server has shut down, or, if something cannot stop (a call blocked in a worker
   thread until its own I/O timeout), `EXIT_MARGIN` seconds after the grace period, its transaction rolled
   back by the database when the connection goes. A second SIGTERM, or SIGINT, stops at once (uvicorn's
   default).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

import anyio
import uvicorn
from sqlalchemy import text
from starlette.types import Message, Receive, Send

from fleet_mcp import __version__

if TYPE_CHECKING:
    from fleet_mcp.app import App

log = logging.getLogger(__name__)

#: Seconds `/readyz` waits for the database's answer to `SELECT 1`.
READY_DB_TIMEOUT = 2.0
#: Seconds after the drain timeout (and uvicorn's grace period) at which the process exits regardless.
EXIT_MARGIN = 5.0
#: Seconds a client refused while draining is told to wait before retrying (elsewhere).
DRAIN_RETRY_AFTER = 1


#: Seconds a client is told to wait when the database cannot be reached to check its token.
DATABASE_RETRY_AFTER = 2


async def respond_unavailable(send: Send, reason: str, message: str, retry_after: int) -> None:
    """503 + Retry-After for a request refused before the gate (nothing ran; the same request can be sent
    again, to this or another replica). The body is a JSON-RPC error, which MCP clients surface as the call's
    error (a bare HTTP status reaches an agent only as "Server returned an error response"); `data` carries
    the machine-readable reason and wait."""
    payload = json.dumps({"jsonrpc": "2.0", "id": None, "error": {
        "code": -32000, "message": f"unavailable: {message}; nothing was run; retry after {retry_after} s",
        "data": {"code": reason, "retry_after_s": retry_after}}}).encode()
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
        (b"retry-after", str(retry_after).encode())]})
    await send({"type": "http.response.body", "body": payload})


async def respond_database_unreachable(send: Send) -> None:
    """The bearer token could not be checked: the database is unreachable."""
    await respond_unavailable(send, "unavailable", "the database cannot be reached to check the bearer token",
                              DATABASE_RETRY_AFTER)


async def readiness(fleet: App) -> tuple[int, dict[str, Any]]:
    """(status code, body) of `/readyz`."""
    if fleet.draining:
        return 503, {"status": "unavailable", "reason": "draining"}
    assert fleet.read_sessionmaker is not None
    try:
        with anyio.fail_after(READY_DB_TIMEOUT):
            async with fleet.read_sessionmaker() as session:
                await session.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - whatever failed, the database did not answer
        log.debug("readiness: the database did not answer", exc_info=True)
        return 503, {"status": "unavailable", "reason": "database_unreachable"}
    return 200, {"status": "ok", "version": __version__}


def until_drained(receive: Receive, drained: asyncio.Event) -> Receive:
    """`receive` for a long-lived event stream: reports a disconnect once the drain is over, so the stream
    ends and the server can shut down without waiting for the client to go away."""

    async def wrapped() -> Message:
        if drained.is_set():
            return {"type": "http.disconnect"}
        get = asyncio.ensure_future(receive())
        stop = asyncio.ensure_future(drained.wait())
        try:
            done, _ = await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (get, stop):
                if not t.done():
                    t.cancel()
        if get in done:
            return get.result()
        return {"type": "http.disconnect"}

    return wrapped


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose first SIGTERM drains (see the module) instead of stopping at once."""

    def __init__(self, config: uvicorn.Config, fleet: App, drain_timeout: float) -> None:
        super().__init__(config)
        self.fleet = fleet
        self.drain_timeout = drain_timeout
        self._term_requested = False
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self._term_requested and not self.should_exit:
            # Not recorded as a captured signal: after draining the process exits 0 instead of re-raising it.
            self._term_requested = True
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._term_requested and self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain(), name="drain")
        return await super().on_tick(counter)

    async def _drain(self) -> None:
        fleet = self.fleet
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        fleet.begin_drain()
        log.warning("SIGTERM: draining (%d call(s) in flight, %d background job(s); at most %g s)",
                    fleet.admission.in_flight, fleet.background_jobs, self.drain_timeout)
        with anyio.move_on_after(self.drain_timeout):
            while fleet.admission.in_flight or fleet.background_jobs:
                await fleet.admission.wait_idle()
                await fleet.drain()  # background jobs stop at their next batch boundary
        if fleet.admission.in_flight or fleet.background_jobs:
            log.warning("drain timeout: %d call(s) and %d background job(s) still running are cancelled",
                        fleet.admission.in_flight, fleet.background_jobs)
        grace = max(1, int(deadline - loop.time()) + 1)
        self.config.timeout_graceful_shutdown = grace
        fleet.drained.set()
        self.should_exit = True
        # The bound holds even when a cancelled call cannot stop at once (a worker thread blocked in I/O
        # until its own timeout): past the grace period and a margin, the process exits anyway.
        watchdog = threading.Timer(grace + EXIT_MARGIN, _exit_now)
        watchdog.daemon = True
        watchdog.start()


def _exit_now() -> None:
    log.warning("shutdown did not finish within the drain timeout and %g s: exiting now", EXIT_MARGIN)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)
