"""Built-in roles and the permission patterns they grant; a pattern's `*` matches any run of characters."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from types import MappingProxyType

ALL_PERMISSIONS: tuple[str, ...] = (
    "system.gitops.read",
    "system.gitops.write",
    "system.gitops.sync",
    "system.gitops.apply",
    "system.fleet.read",
    "system.fleet.write",
    "system.fleet.autonomy",
    "sdwan.federation.read",
    "sdwan.federation.manage",
    "system.credentials.read",
    "system.credentials.write",
    # Vault metadata of every account (pepper counts, rotation progress and failures, verify): admin only
    # (its "*"); "*.read" does not match it.
    "system.credentials.read_all",
    "system.approvals.read",
    "system.approvals.decide",
    "system.audit.read",
    # How many audit rows every account has (the chain is one): admin only, like credentials.read_all.
    "system.audit.read_all",
)

BUILTIN_ROLES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "viewer": frozenset({"*.read"}),
        "operator": frozenset(
            {
                "*.read",
                "system.gitops.write",
                "system.gitops.sync",
                "system.gitops.apply",
                "system.fleet.write",
                "system.credentials.write",
                "sdwan.federation.manage",
            }
        ),
        "approver": frozenset({"*.read", "system.approvals.decide"}),
        "admin": frozenset({"*"}),
    }
)

PERMISSION_PATTERN = re.compile(r"^[a-z0-9_*]+(\.[a-z0-9_*]+)*$")
ROLE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


@lru_cache(maxsize=512)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$")


def permission_matches(pattern: str, permission: str) -> bool:
    """True when `permission` (a concrete permission string) is granted by `pattern`."""
    if "*" in permission:  # a permission to check is always concrete; a glob here is a bug
        return False
    return _compiled(pattern).match(permission) is not None


def role_table(overrides: Mapping[str, Iterable[str]] | None = None) -> dict[str, frozenset[str]]:
    """The built-in roles with a policy's `roles` section laid over them (an override replaces a role)."""
    table = dict(BUILTIN_ROLES)
    for role, patterns in (overrides or {}).items():
        table[role] = frozenset(patterns)
    return table


def permissions_for(
    roles: Iterable[str], overrides: Mapping[str, Iterable[str]] | None = None
) -> frozenset[str]:
    """The permission patterns granted by `roles`; unknown roles grant nothing."""
    table = role_table(overrides)
    granted: set[str] = set()
    for role in roles:
        granted |= table.get(role, frozenset())
    return frozenset(granted)


def has_permission(perms: Iterable[str], needed: str) -> bool:
    """True when any pattern in `perms` grants the concrete permission `needed`."""
    return any(permission_matches(p, needed) for p in perms)


def expand(perms: Iterable[str], universe: Iterable[str] = ALL_PERMISSIONS) -> frozenset[str]:
    """The concrete permissions of `universe` that `perms` grant (for display)."""
    patterns = tuple(perms)
    return frozenset(p for p in universe if has_permission(patterns, p))
