"""The shipped policy files load and decide every registered tool as documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleet_mcp.policy import Policy, PolicyError, ToolFacts, load_policy
from fleet_mcp.registry import catalog as registry_catalog
from fleet_mcp.registry import load_tools
from tests.policy.catalog_data import (
    EXPECTED,
    FORCE_TOOLS,
    ROWS,
    Row,
    build_catalog,
    default_arguments,
    facts,
)

SHIPPED = ("default.yaml", "read-only.yaml", "strict.yaml")
Shipped = dict[str, Policy]


@pytest.fixture(scope="module")
def shipped(policies_dir: Path, catalog: dict[str, ToolFacts]) -> Shipped:
    return {name: load_policy(policies_dir / name, catalog) for name in SHIPPED}


def test_the_shipped_files_are_exactly_these(policies_dir: Path) -> None:
    assert sorted(p.name for p in policies_dir.glob("*.yaml")) == sorted(SHIPPED)
    assert (policies_dir / "README.md").is_file()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_file_loads_with_default_deny(shipped: Shipped, name: str) -> None:
    policy = shipped[name]
    assert policy.default == "deny"
    assert policy.source.endswith(name)
    assert len(policy.digest) == 64
    assert all(rule.line is not None for rule in policy.rules)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_default_policy_matches_tools_md(shipped: Shipped, row: Row) -> None:
    d = shipped["default.yaml"].decide(row.name, default_arguments(row))
    assert d.decision == row.default, d.reason
    assert d.rule != "default", "every registered tool is named by a rule, none falls to the default"
    if d.decision == "require_approval":
        assert d.approval is not None
        assert d.approval.separation_of_duties is row.sod
        if row.sod:
            assert d.approval.mode == "queue" and not d.approval.allows_elicitation
    else:
        assert d.approval is None


@pytest.mark.parametrize("tool", FORCE_TOOLS)
def test_default_policy_forced_apply_needs_a_second_person(shipped: Shipped, tool: str) -> None:
    policy = shipped["default.yaml"]
    plain = policy.decide(tool, {"force": False})
    forced = policy.decide(tool, {"force": True})
    assert (plain.rule, plain.decision) == ("apply", "require_approval")
    assert plain.approval is not None and not plain.approval.separation_of_duties
    assert plain.approval.allows_elicitation
    assert (forced.rule, forced.decision) == ("forced-apply", "require_approval")
    assert forced.approval is not None and forced.approval.separation_of_duties
    assert forced.approval.mode == "queue"


def test_default_policy_denies_unnamed_and_unknown_tools(
    policies_dir: Path, catalog: dict[str, ToolFacts]
) -> None:
    new_tool = facts(
        Row("system_vault_export_everything", "vault", "system.credentials.read", "", (), "deny")
    )
    policy = load_policy(policies_dir / "default.yaml", {**catalog, new_tool.name: new_tool})
    d = policy.decide(new_tool.name, {})
    assert (d.decision, d.rule) == ("deny", "default")
    unknown = policy.decide("system_not_a_tool", {})
    assert (unknown.decision, unknown.rule) == ("deny", "unknown-tool")


def test_default_policy_refuses_a_catalog_without_a_named_tool(policies_dir: Path) -> None:
    """A rule naming a tool that does not exist is an error (here: before the vault tool is registered)."""
    catalog = build_catalog(tuple(r for r in ROWS if r.name != "system_vault_trim_pepper_key"))
    with pytest.raises(PolicyError) as info:
        load_policy(policies_dir / "default.yaml", catalog)
    assert info.value.rule == "pepper-rotation"
    assert "tool glob 'system_vault_trim_pepper_key' matches no tool" in str(info.value)
    text = (policies_dir / "default.yaml").read_text().splitlines()
    assert "system_vault_trim_pepper_key" in text[info.value.line - 1]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_read_only_policy(shipped: Shipped, row: Row) -> None:
    for args in (default_arguments(row), {"force": True}):
        d = shipped["read-only.yaml"].decide(row.name, args)
        assert d.decision == ("auto_approve" if row.flags == "RO" else "deny")


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_strict_policy(shipped: Shipped, row: Row) -> None:
    d = shipped["strict.yaml"].decide(row.name, default_arguments(row))
    if row.flags == "RO" or row.name in ("system_approvals_decide", "system_approvals_cancel",
                                         "system_approvals_collect_result"):
        assert d.decision == "auto_approve"
        return
    assert d.decision == "require_approval"
    assert d.approval is not None
    assert d.approval.separation_of_duties and d.approval.mode == "queue"
    assert not d.approval.allows_elicitation and d.approval.allows_queue


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_rule_decides_something(shipped: Shipped, name: str) -> None:
    """No rule is dead or fully shadowed by an earlier one."""
    policy = shipped[name]
    deciding = {
        policy.decide(r.name, args).rule for r in ROWS for args in (default_arguments(r), {"force": True})
    }
    assert {r.name for r in policy.rules} <= deciding


def test_readme_examples_are_valid_policies(policies_dir: Path, catalog: dict[str, ToolFacts]) -> None:
    text = (policies_dir / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3
    for block in blocks:
        load_policy(block, catalog, name="README.md")


def test_catalog_is_the_registry_catalog_exactly() -> None:
    """The policy tests run against the real tool facts: the same tools, permissions, annotations, arguments."""
    assert build_catalog() == registry_catalog()


def test_expected_decisions_name_every_tool() -> None:
    """The hand-kept table of default.yaml's expected decisions names exactly the registry's tools: a new tool
    needs its expected decision written down, a removed tool must leave the table."""
    assert set(EXPECTED) == set(load_tools())
    for row in ROWS:
        assert set(row.flags.split()) <= {"RO", "D", "I"}
        assert not {"RO", "D"} <= set(row.flags.split())
