"""PolicyHolder: start refuses a broken file; reloads validate first and keep the old policy on error."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import anyio
import pytest

from fleet_mcp.policy import PolicyError, PolicyHolder, ReloadResult, ToolFacts, install_sighup_reload

TOOL = "system_gitops_delete_repository"
DENY = (
    "version: 1\nrules:\n  - name: no-delete\n    match: {tools: [system_gitops_delete_repository]}\n"
    "    decision: deny\n"
)
ALLOW = DENY.replace("no-delete", "go-delete").replace("decision: deny", "decision: auto_approve")
BROKEN = DENY.replace("system_gitops_delete_repository", "system_gitops_delete_repo")


def write(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    write(path, DENY)
    return path


def test_a_broken_file_at_start_is_refused(tmp_path: Path, catalog: dict[str, ToolFacts]) -> None:
    path = tmp_path / "policy.yaml"
    write(path, BROKEN)
    with pytest.raises(PolicyError) as info:
        PolicyHolder(path, catalog)
    assert info.value.line == 4 and info.value.rule == "no-delete"
    with pytest.raises(PolicyError, match="cannot read"):
        PolicyHolder(tmp_path / "missing.yaml", catalog)


def test_reload_keeps_the_old_policy_on_error(policy_file: Path, catalog: dict[str, ToolFacts]) -> None:
    seen: list[ReloadResult] = []
    holder = PolicyHolder(policy_file, catalog, on_reload=seen.append)
    old = holder.current
    assert holder.policy is old and old.decide(TOOL).decision == "deny"

    write(policy_file, BROKEN)
    result = holder.reload()
    assert not result.ok and not result.changed and result.policy is old
    assert result.error is not None and "matches no tool" in str(result.error)
    assert holder.current is old and holder.last_error is result.error
    assert holder.current.decide(TOOL).decision == "deny"

    policy_file.unlink()
    assert holder.reload().error is not None and holder.current is old

    write(policy_file, ALLOW)
    result = holder.reload()
    assert result.ok and result.changed and holder.current is result.policy is not old
    assert holder.current.decide(TOOL).rule == "go-delete" and holder.last_error is None
    assert [(r.changed, r.ok) for r in seen] == [(False, False), (False, False), (True, True)]

    same = holder.reload()
    assert same.ok and not same.changed


def test_reload_if_changed(policy_file: Path, catalog: dict[str, ToolFacts]) -> None:
    seen: list[ReloadResult] = []
    holder = PolicyHolder(policy_file, catalog, on_reload=seen.append)
    old = holder.current
    assert not holder.reload_if_changed().changed and holder.current is old

    # touched, same content: no reload
    long_ago = 1_600_000_000 * 10**9
    os.utime(policy_file, ns=(long_ago, long_ago))
    r = holder.reload_if_changed()
    assert r.ok and not r.changed and holder.current is old

    # same size and same mtime, new content: still seen
    renamed = DENY.replace("no-delete", "xo-delete")
    assert len(renamed) == len(DENY)
    write(policy_file, renamed)
    os.utime(policy_file, ns=(long_ago, long_ago))
    r = holder.reload_if_changed()
    assert r.changed and holder.current.decide(TOOL).rule == "xo-delete"
    current = holder.current

    # broken: refused once (logged, callback), then quietly reported while unchanged
    write(policy_file, BROKEN)
    first = holder.reload_if_changed()
    again = holder.reload_if_changed()
    assert first.error is not None and again.error is not None
    assert holder.current is current
    assert [r.ok for r in seen] == [True, False]

    # deleted: refused, old policy stays
    policy_file.unlink()
    assert holder.reload_if_changed().error is not None and holder.current is current

    # fixed: installed
    write(policy_file, DENY)
    r = holder.reload_if_changed()
    assert r.ok and r.changed and holder.current.decide(TOOL).rule == "no-delete"
    assert holder.last_error is None


def test_broken_policy_is_logged(policy_file: Path, catalog: dict[str, ToolFacts], caplog) -> None:
    holder = PolicyHolder(policy_file, catalog)
    write(policy_file, BROKEN)
    with caplog.at_level("ERROR", logger="fleet_mcp.policy"):
        holder.reload()
    assert "keeping the previous policy" in caplog.text and f"{policy_file}:4" in caplog.text


@pytest.mark.anyio
async def test_sighup_reloads_on_the_event_loop(policy_file: Path, catalog: dict[str, ToolFacts]) -> None:
    done = anyio.Event()
    results: list[ReloadResult] = []

    def on_reload(r: ReloadResult) -> None:
        results.append(r)
        done.set()

    holder = PolicyHolder(policy_file, catalog, on_reload=on_reload)
    uninstall = install_sighup_reload(holder)
    try:
        write(policy_file, ALLOW)
        os.kill(os.getpid(), signal.SIGHUP)
        with anyio.fail_after(10):
            await done.wait()
    finally:
        uninstall()
    assert results[0].changed and holder.current.decide(TOOL).rule == "go-delete"


def test_sighup_reloads_without_an_event_loop(policy_file: Path, catalog: dict[str, ToolFacts]) -> None:
    done = threading.Event()
    holder = PolicyHolder(policy_file, catalog, on_reload=lambda r: done.set())
    before = signal.getsignal(signal.SIGHUP)
    uninstall = install_sighup_reload(holder)
    try:
        write(policy_file, BROKEN)
        os.kill(os.getpid(), signal.SIGHUP)
        assert done.wait(10)
    finally:
        uninstall()
    assert signal.getsignal(signal.SIGHUP) == before
    assert holder.last_error is not None and holder.current.decide(TOOL).rule == "no-delete"
