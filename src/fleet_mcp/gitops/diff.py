"""Plan, purely: compare desired state with live state and produce an ordered ChangeSet (no I/O, no clock)."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fleet_mcp.fleet.spec import KINDS, MASK, fingerprint, is_secret_key, looks_like_secret_value
from fleet_mcp.gitops.fleetfile import DesiredState

Action = Literal["create", "update", "delete"]
Risk = Literal["low", "medium", "high"]
ACTIONS: tuple[Action, ...] = ("create", "update", "delete")

# Creates and updates go parents-first; deletes go children-first (an assignment needs its
# template and module, so it is created after them and deleted before them).
UPSERT_ORDER = {"provider_config": 0, "template": 1, "module": 2, "assignment": 3}
DELETE_ORDER = {"assignment": 0, "module": 1, "template": 2, "provider_config": 3}
RISK_BY_ACTION: dict[str, Risk] = {"create": "low", "update": "medium", "delete": "high"}

_MISSING = object()
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class LiveResource:
    """A live resource as the diff sees it (built from a database row or a golden fixture)."""

    kind: str
    name: str
    attributes: dict[str, Any]
    fingerprint: str
    revision: int = 1
    managed_by: str = "manual"


@dataclass(frozen=True)
class FieldChange:
    """One changed leaf: its dotted path and the (masked) live and desired values."""

    path: str
    live: Any
    desired: Any

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "live": self.live, "desired": self.desired}


@dataclass(frozen=True)
class Change:
    """What must happen to one resource to make live equal desired."""

    kind: str
    name: str
    action: Action
    fields: tuple[FieldChange, ...]
    desired: dict[str, Any] | None
    base_fingerprint: str | None
    desired_fingerprint: str | None

    @property
    def risk(self) -> Risk:
        return RISK_BY_ACTION[self.action]

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)

    def to_json(self, *, fingerprints: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "risk": self.risk,
            "fields": [f.to_json() for f in self.fields],
        }
        if fingerprints:
            out["base_fingerprint"] = self.base_fingerprint
            out["desired_fingerprint"] = self.desired_fingerprint
        return out


@dataclass(frozen=True)
class SuppressedChange:
    """A change that would be made but the resource's drift is suppressed (listed, never proposed)."""

    kind: str
    name: str
    action: Action
    until: dt.datetime | None
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "until": self.until.isoformat() if self.until else None,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Suppression:
    until: dt.datetime | None = None
    reason: str | None = None

    def active(self, now: dt.datetime) -> bool:
        return self.until is None or self.until > now


@dataclass(frozen=True)
class ChangeSet:
    changes: tuple[Change, ...]
    suppressed: tuple[SuppressedChange, ...]
    is_total_delete: bool
    live_count: int
    desired_count: int

    @property
    def diff_count(self) -> int:
        return len(self.changes)

    @property
    def drift(self) -> bool:
        return bool(self.changes)

    @property
    def summary(self) -> dict[str, Any]:
        by_kind: dict[str, dict[str, int]] = {}
        by_action = dict.fromkeys(ACTIONS, 0)
        for c in self.changes:
            by_kind.setdefault(c.kind, {}).setdefault(c.action, 0)
            by_kind[c.kind][c.action] += 1
            by_action[c.action] += 1
        ordered = {k: by_kind[k] for k in KINDS if k in by_kind}
        return {
            "by_kind": ordered,
            "by_action": by_action,
            "total": len(self.changes),
            "suppressed": len(self.suppressed),
        }

    @property
    def severity(self) -> str:
        """high when anything would be deleted or more than 10 resources differ, else medium; info if none."""
        if not self.changes:
            return "info"
        if any(c.action == "delete" for c in self.changes) or len(self.changes) > 10:
            return "high"
        return "medium"

    def to_json(self, *, fingerprints: bool = True) -> dict[str, Any]:
        return {
            "diff_count": self.diff_count,
            "is_total_delete": self.is_total_delete,
            "summary": self.summary,
            "changes": [c.to_json(fingerprints=fingerprints) for c in self.changes],
            "suppressed": [s.to_json() for s in self.suppressed],
        }


def diff(
    desired: DesiredState,
    live: Mapping[str, Mapping[str, LiveResource]] | Iterable[LiveResource],
    suppressed: Mapping[tuple[str, str], Suppression] | None = None,
    now: dt.datetime | None = None,
) -> ChangeSet:
    """Compare `desired` with `live`; suppressions active at `now` move a change to `suppressed`.

    `now` is only needed when some suppression has an expiry (the function reads no clock).
    """
    live_map = _index(live)
    suppressed = suppressed or {}
    upserts: list[Change] = []
    deletes: list[Change] = []
    held: list[SuppressedChange] = []

    for kind in KINDS:
        want = desired.resources.get(kind, {})
        have = live_map.get(kind, {})
        for name in sorted(want.keys() | have.keys()):
            d_attrs = want.get(name)
            current = have.get(name)
            change = _compare(kind, name, d_attrs, current)
            if change is None:
                continue
            sup = suppressed.get((kind, name))
            if sup is not None and current is not None and _is_active(sup, now):
                held.append(SuppressedChange(kind, name, change.action, sup.until, sup.reason))
                continue
            (deletes if change.action == "delete" else upserts).append(change)

    upserts.sort(key=lambda c: (UPSERT_ORDER[c.kind], c.name))
    deletes.sort(key=lambda c: (DELETE_ORDER[c.kind], c.name))
    live_count = sum(len(v) for v in live_map.values())
    held.sort(key=lambda s: (KINDS.index(s.kind), s.name))
    return ChangeSet(
        changes=tuple(upserts + deletes),
        suppressed=tuple(held),
        is_total_delete=desired.is_empty() and live_count > 0,
        live_count=live_count,
        desired_count=desired.count,
    )


def _is_active(sup: Suppression, now: dt.datetime | None) -> bool:
    if sup.until is None:
        return True
    if now is None:
        raise ValueError("diff() needs `now` when a suppression has an expiry")
    return sup.active(now)


def _index(
    live: Mapping[str, Mapping[str, LiveResource]] | Iterable[LiveResource],
) -> dict[str, dict[str, LiveResource]]:
    if isinstance(live, Mapping):
        return {k: dict(v) for k, v in live.items()}
    out: dict[str, dict[str, LiveResource]] = {k: {} for k in KINDS}
    for r in live:
        out.setdefault(r.kind, {})[r.name] = r
    return out


def _compare(kind: str, name: str, desired: dict[str, Any] | None, live: LiveResource | None) -> Change | None:
    if desired is None and live is None:
        return None
    if live is None:
        assert desired is not None
        fields = tuple(FieldChange(p, None, v) for p, v in _leaves(desired) if not _empty(v))
        return Change(kind, name, "create", fields, desired, None, fingerprint(desired))
    if desired is None:
        fields = tuple(FieldChange(p, v, None) for p, v in _leaves(live.attributes) if not _empty(v))
        return Change(kind, name, "delete", fields, None, live.fingerprint, None)
    desired_fp = fingerprint(desired)
    if desired_fp == live.fingerprint:
        return None
    fields = tuple(_field_changes(live.attributes, desired))
    if not fields:  # stored fingerprint was stale but the attributes agree
        return None
    return Change(kind, name, "update", fields, desired, live.fingerprint, desired_fp)


def _empty(v: Any) -> bool:
    return v is None or v == {} or v == []


def _key_path(prefix: str, key: str) -> str:
    if _PLAIN_KEY.fullmatch(key):
        return f"{prefix}.{key}" if prefix else key
    return f"{prefix}[{json.dumps(key)}]"


def _leaves(d: Mapping[str, Any], prefix: str = "", secret: bool = False) -> Iterator[tuple[str, Any]]:
    """(path, masked value) of every leaf; a non-empty map is descended, anything else is a leaf."""
    for k in d:
        v = d[k]
        path = _key_path(prefix, str(k))
        under_secret = secret or is_secret_key(str(k))
        if isinstance(v, dict) and v:
            yield from _leaves(v, path, under_secret)
        else:
            yield path, _mask(v, under_secret)


def _field_changes(
    live: Mapping[str, Any], desired: Mapping[str, Any], prefix: str = "", secret: bool = False
) -> Iterator[FieldChange]:
    for k in _ordered_union(live, desired):
        lv = live.get(k, _MISSING)
        dv = desired.get(k, _MISSING)
        path = _key_path(prefix, str(k))
        under_secret = secret or is_secret_key(str(k))
        if isinstance(lv, dict) and isinstance(dv, dict):
            yield from _field_changes(lv, dv, path, under_secret)
        elif _canon(lv) != _canon(dv):
            lv = None if lv is _MISSING else lv
            dv = None if dv is _MISSING else dv
            yield FieldChange(path, _mask(lv, under_secret), _mask(dv, under_secret))


def _canon(v: Any) -> str:
    return "<missing>" if v is _MISSING else json.dumps(v, sort_keys=True, separators=(",", ":"))


def _ordered_union(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    seen = list(a)
    seen.extend(k for k in b if k not in a)
    return seen


def _mask(value: Any, secret: bool) -> Any:
    """Hide values under secret-looking keys and private-key-looking strings, at any depth."""
    if value is None:
        return None
    if secret or looks_like_secret_value(value):
        return MASK
    if isinstance(value, dict):
        return {k: _mask(v, is_secret_key(str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, False) for v in value]
    return value
