"""Rotation jobs running in the background of this process: which ones (to wait for one), and following
them from a short-lived process such as the CLI, which must not exit while a job it started is pending."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

from fleet_mcp.vault.progress import ProgressFn
from fleet_mcp.vault.schemas import RotationJobInfo

Run = asyncio.Task[RotationJobInfo | None]

_tasks: set[asyncio.Task[Any]] = set()  # strong references to background runs
#: Every job launched in this process and still running, by id.
_launched: dict[int, Run] = {}
#: Jobs launched while a short-lived caller follows them, to wait for at its end.
_followed: list[tuple[int, Run]] = []
#: Progress for jobs launched in the background from this context (a CLI that follows what it starts).
_follow: ContextVar[ProgressFn | None] = ContextVar("fleet_rotation_follow", default=None)


def follower() -> ProgressFn | None:
    return _follow.get()


def register(job_id: int, task: Run, *, followed: bool) -> None:
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    _launched[job_id] = task
    task.add_done_callback(lambda t: _launched.pop(job_id) if _launched.get(job_id) is t else None)
    if followed:
        _followed.append((job_id, task))


async def wait_for_launched(job_id: int) -> RotationJobInfo | None:
    """Wait for the end of a job launched in this process (None if none runs here)."""
    task = _launched.get(job_id)
    return None if task is None else await task


@contextmanager
def follow_background_jobs(progress: ProgressFn | None) -> Iterator[None]:
    """Jobs launched in the background inside this block report to `progress` (a short-lived process such
    as the CLI, which then waits for them with `finish_background_jobs`)."""
    token = _follow.set(progress)
    try:
        yield
    finally:
        _follow.reset(token)


async def finish_background_jobs(say: Callable[[str], None]) -> list[RotationJobInfo]:
    """Wait for every job launched while following (`follow_background_jobs`), saying so: a process about to
    exit would otherwise leave them pending. Returns their final states."""
    out: list[RotationJobInfo] = []
    while _followed:
        job_id, task = _followed.pop(0)
        say(
            f"rotation job {job_id} was started by this command: it runs here, in this process, until it ends "
            "(interrupting pauses it; a running server or system_vault_resume_rotation_job resumes it)"
        )
        info = await task
        if info is None:
            say(f"rotation job {job_id} did not run here (see the log); check system_vault_get_rotation_job")
            continue
        out.append(info)
        error = f" ({info.error})" if info.error else ""
        say(f"\nrotation job {job_id} {info.status}: {info.rewrapped} rewrapped, {info.failed} failed{error}")
    return out


def text_progress(stream: TextIO, width: int = 40) -> ProgressFn:
    """A one-line progress bar on `stream` (a terminal's stderr)."""

    async def bar(done: float, total: float | None, message: str | None) -> None:
        frac = (done / total) if total else 0.0
        filled = int(width * frac)
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {int(done)}/{int(total or 0)} {message or ''}"[:120])
        stream.flush()

    return bar


