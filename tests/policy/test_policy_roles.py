"""Built-in roles, overrides and permission globs."""

from __future__ import annotations

import pytest

from fleet_mcp.policy.roles import ALL_PERMISSIONS, BUILTIN_ROLES, expand, has_permission, permissions_for

READS = {p for p in ALL_PERMISSIONS if p.endswith(".read")}


def granted(roles: list[str], overrides: dict[str, list[str]] | None = None) -> set[str]:
    perms = permissions_for(roles, overrides)
    return {p for p in ALL_PERMISSIONS if has_permission(perms, p)}


def test_builtin_roles() -> None:
    assert set(BUILTIN_ROLES) == {"viewer", "operator", "approver", "admin"}
    assert granted(["viewer"]) == READS
    assert granted(["approver"]) == READS | {"system.approvals.decide"}
    assert granted(["operator"]) == READS | {
        "system.gitops.write",
        "system.gitops.sync",
        "system.gitops.apply",
        "system.fleet.write",
        "system.credentials.write",
        "sdwan.federation.manage",
    }
    assert granted(["admin"]) == set(ALL_PERMISSIONS)
    assert has_permission(permissions_for(["admin"]), "system.something.new")


def test_operator_cannot_rotate_or_approve() -> None:
    perms = permissions_for(["operator"])
    assert not has_permission(perms, "system.fleet.autonomy")
    assert not has_permission(perms, "system.approvals.decide")


def test_roles_combine_and_unknown_roles_grant_nothing() -> None:
    assert granted(["viewer", "approver"]) == READS | {"system.approvals.decide"}
    assert granted(["no-such-role"]) == set()
    assert granted([]) == set()


def test_overrides_replace_and_add_roles() -> None:
    overrides = {"operator": ["system.gitops.*"], "auditor": ["system.audit.read"]}
    assert granted(["operator"], overrides) == {p for p in ALL_PERMISSIONS if p.startswith("system.gitops.")}
    assert granted(["auditor"], overrides) == {"system.audit.read"}
    assert granted(["viewer"], overrides) == READS  # untouched built-ins stay


@pytest.mark.parametrize(
    ("pattern", "permission", "expected"),
    [
        ("system.*.read", "system.gitops.read", True),
        ("system.*.read", "sdwan.federation.read", False),
        ("*.read", "sdwan.federation.read", True),
        ("system.gitops.*", "system.gitops.apply", True),
        ("system.gitops.*", "system.gitopsx.apply", False),
        ("system.gitops.read", "system.gitops.readx", False),
        ("*", "anything.at.all", True),
        ("*", "system.*", False),  # the permission to check is concrete; a glob there never passes
    ],
)
def test_permission_globs(pattern: str, permission: str, expected: bool) -> None:
    assert has_permission([pattern], permission) is expected


def test_expand_lists_concrete_permissions() -> None:
    assert expand(["system.fleet.*"]) == {"system.fleet.read", "system.fleet.write", "system.fleet.autonomy"}
