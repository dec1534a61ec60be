"""PolicyHolder: the policy in force, replaced only by a new file that validates (SIGHUP or file change)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fleet_mcp.policy.engine import Policy
from fleet_mcp.policy.errors import PolicyError
from fleet_mcp.policy.loader import decode_policy, parse_policy, read_policy_bytes
from fleet_mcp.policy.model import ToolFacts

log = logging.getLogger("fleet_mcp.policy")

# A file modified this recently may be modified again within the same mtime tick with the same size,
# so while it is this young the content hash is checked on every poll (git's "racy clean" problem).
_RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class ReloadResult:
    """What a reload did: `changed` when a different policy is now in force; `error` when it was refused."""

    changed: bool
    error: PolicyError | None
    policy: Policy

    @property
    def ok(self) -> bool:
        return self.error is None


_Signature = tuple[int, int, int, int, int]


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class PolicyHolder:
    """Holds the current policy for `path`; a broken file at start raises PolicyError (refuse to start)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        catalog: Mapping[str, ToolFacts],
        *,
        on_reload: Callable[[ReloadResult], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.label = os.fspath(path)
        self.catalog: Mapping[str, ToolFacts] = dict(catalog)
        self.on_reload = on_reload
        self.last_error: PolicyError | None = None
        self._lock = threading.Lock()
        st, raw = self._read()
        self._current = parse_policy(decode_policy(raw, self.label), self.catalog, source=self.label)
        self._seen(st, raw)
        self._bad_hash: str | None = None

    @property
    def current(self) -> Policy:
        return self._current

    policy = current

    def _read(self) -> tuple[os.stat_result, bytes]:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise PolicyError.single(
                self.label, f"cannot read the policy file: {exc.strerror or exc}"
            ) from None
        return st, read_policy_bytes(self.path, self.label)

    def _stamp(self, st: os.stat_result) -> None:
        self._sig = _signature(st)
        self._racy = time.time_ns() - st.st_mtime_ns < _RACY_NS

    def _seen(self, st: os.stat_result, raw: bytes) -> None:
        self._stamp(st)
        self._hash = hashlib.sha256(raw).hexdigest()

    def reload(self) -> ReloadResult:
        """Re-read and validate the file; install it only when valid, otherwise keep the old policy."""
        with self._lock:
            try:
                st, raw = self._read()
            except PolicyError as exc:
                return self._refused(exc, None)
            return self._install(st, raw)

    def reload_if_changed(self) -> ReloadResult:
        """Reload when the file changed (stat signature, then content hash); cheap enough to poll."""
        with self._lock:
            try:
                st = os.stat(self.path)
            except OSError as exc:
                err = PolicyError.single(self.label, f"cannot read the policy file: {exc.strerror or exc}")
                return self._refused(err, None, quiet=self._same_error(err))
            sig = _signature(st)
            if sig == self._sig and not self._racy:
                return ReloadResult(False, self.last_error, self._current)
            try:
                st, raw = self._read()
            except PolicyError as exc:
                return self._refused(exc, None, quiet=self._same_error(exc))
            digest = hashlib.sha256(raw).hexdigest()
            if digest == self._hash:
                self._seen(st, raw)
                self.last_error = self._bad_hash = None
                return ReloadResult(False, None, self._current)
            if digest == self._bad_hash:  # already refused; do not log it on every poll
                self._stamp(st)
                return ReloadResult(False, self.last_error, self._current)
            return self._install(st, raw)

    def _same_error(self, err: PolicyError) -> bool:
        return self.last_error is not None and str(self.last_error) == str(err)

    def _install(self, st: os.stat_result, raw: bytes) -> ReloadResult:
        digest = hashlib.sha256(raw).hexdigest()
        try:
            new = parse_policy(decode_policy(raw, self.label), self.catalog, source=self.label)
        except PolicyError as exc:
            self._stamp(st)
            return self._refused(exc, digest)
        changed = new.digest != self._current.digest
        self._current = new
        self._seen(st, raw)
        self._bad_hash = None
        self.last_error = None
        if changed:
            log.info(
                "policy reloaded from %s (sha256 %s, %d rules)", self.label, new.digest[:12], len(new.rules)
            )
        return self._notify(ReloadResult(changed, None, new), changed)

    def _refused(self, err: PolicyError, digest: str | None, *, quiet: bool = False) -> ReloadResult:
        self.last_error = err
        if digest is not None:
            self._bad_hash = digest
        if not quiet:
            log.error("policy reload refused, keeping the previous policy:\n%s", err)
        return self._notify(ReloadResult(False, err, self._current), not quiet)

    def _notify(self, result: ReloadResult, notify: bool) -> ReloadResult:
        if notify and self.on_reload is not None:
            try:
                self.on_reload(result)
            except Exception:
                log.exception("policy on_reload callback failed")
        return result


def install_sighup_reload(
    holder: PolicyHolder, *, loop: asyncio.AbstractEventLoop | None = None
) -> Callable[[], None]:
    """Reload `holder` on SIGHUP; returns a function that removes the handler.

    Inside a running asyncio loop (or with `loop`) the reload runs on the loop; otherwise a plain signal
    handler starts it on a short-lived thread (a handler must not wait on the holder's lock). Must be called
    from the main thread. A no-op where SIGHUP does not exist (Windows).
    """
    sighup = getattr(signal, "SIGHUP", None)
    if sighup is None:
        return lambda: None
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
    if loop is not None:
        bound = loop
        bound.add_signal_handler(sighup, holder.reload)

        def remove() -> None:
            bound.remove_signal_handler(sighup)

        return remove

    def handler(signum: int, frame: object) -> None:
        threading.Thread(target=holder.reload, name="policy-reload", daemon=True).start()

    previous = signal.signal(sighup, handler)

    def restore() -> None:
        signal.signal(sighup, previous)

    return restore
