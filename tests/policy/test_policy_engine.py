"""Deciding calls: first match wins, argument matching, defaults, approval specs, explanations."""

from __future__ import annotations

import textwrap
from datetime import timedelta

import pytest

from fleet_mcp.policy import ApprovalSpec, Policy, ToolFacts, argument_equals, load_policy
from fleet_mcp.policy.model import format_duration, parse_duration

APPLY = "system_gitops_apply_proposal"


def policy(text: str, catalog: dict[str, ToolFacts]) -> Policy:
    return load_policy(textwrap.dedent(text).lstrip("\n"), catalog, name="t.yaml")


def test_first_matching_rule_wins(catalog: dict[str, ToolFacts]) -> None:
    narrow_first = """
        version: 1
        rules:
          - name: narrow
            match: {tools: [system_gitops_apply_*]}
            decision: deny
          - name: broad
            match: {toolsets: [gitops]}
            decision: auto_approve
        """
    p = policy(narrow_first, catalog)
    assert (p.decide(APPLY, {}).rule, p.decide(APPLY, {}).decision) == ("narrow", "deny")
    assert p.decide("system_gitops_sync_repository", {}).rule == "broad"
    swapped = policy(
        """
        version: 1
        rules:
          - name: broad
            match: {toolsets: [gitops]}
            decision: auto_approve
          - name: narrow
            match: {tools: [system_gitops_apply_*]}
            decision: deny
        """,
        catalog,
    )
    assert (swapped.decide(APPLY, {}).rule, swapped.decide(APPLY, {}).decision) == ("broad", "auto_approve")
    trace = swapped.explain(APPLY, {})
    assert [(t.rule, t.matched, t.decisive) for t in trace.rules] == [
        ("broad", True, True),
        ("narrow", True, False),
    ]


def test_unmatched_calls_get_the_default(catalog: dict[str, ToolFacts]) -> None:
    for default in ("deny", "auto_approve", "require_approval"):
        p = policy(f"version: 1\ndefault: {default}\n", catalog)
        d = p.decide(APPLY, {"force": True})
        assert (d.decision, d.rule) == (default, "default")
        assert (d.approval is not None) is (default == "require_approval")
    assert policy("version: 1\n", catalog).default == "deny"


def test_unknown_tools_are_denied_whatever_the_rules(catalog: dict[str, ToolFacts]) -> None:
    p = policy(
        "version: 1\ndefault: auto_approve\nrules:\n  - {name: all, match: {}, decision: auto_approve}\n",
        catalog,
    )
    assert p.decide(APPLY, {}).decision == "auto_approve"
    for tool in ("system_gitops_apply_proposal_v2", "", "*", "SYSTEM_GITOPS_APPLY_PROPOSAL"):
        d = p.decide(tool, {})
        assert (d.decision, d.rule, d.approval) == ("deny", "unknown-tool", None)
    assert not p.explain("nope").known_tool


def test_annotation_and_toolset_matching(catalog: dict[str, ToolFacts]) -> None:
    p = policy(
        """
        version: 1
        rules:
          - name: destructive-vault
            match: {toolsets: [vault], destructive: true}
            decision: deny
          - name: idempotent
            match: {idempotent: true, read_only: false}
            decision: auto_approve
        """,
        catalog,
    )
    assert p.decide("system_vault_delete_credential").rule == "destructive-vault"
    assert p.decide("system_delete_template").rule == "default"
    assert p.decide("system_vault_store_credential").rule == "idempotent"
    assert p.decide("system_vault_list_credentials").rule == "default"


FORCE = """
version: 1
rules:
  - name: forced
    match: {tools: [system_gitops_apply_*], args: {force: true}}
    decision: deny
  - name: apply
    match: {tools: [system_gitops_apply_*]}
    decision: require_approval
"""


@pytest.mark.parametrize(
    ("arguments", "rule"),
    [
        ({"proposal_id": 1, "force": True}, "forced"),
        ({"proposal_id": 1, "force": False}, "apply"),
        ({"proposal_id": 1}, "apply"),  # not given: never matches (the gate passes validated args)
        (None, "apply"),
        # coerced the way the tool's own model would read them
        ({"force": "true"}, "forced"),
        ({"force": 1}, "forced"),
        ({"force": "false"}, "apply"),
        ({"force": 2}, "apply"),
        ({"force": None}, "apply"),
        ({"force": [True]}, "apply"),
    ],
)
def test_args_matching(catalog: dict[str, ToolFacts], arguments: dict | None, rule: str) -> None:
    assert policy(FORCE, catalog).decide(APPLY, arguments).rule == rule


@pytest.mark.parametrize(
    ("expected", "actual", "equal"),
    [
        (True, True, True),
        (True, "yes", True),
        (False, 0, True),
        (1, 1, True),
        (1, "1", True),
        (1, 1.5, False),
        (1.5, 1.5, True),
        ("main", "main", True),
        ("1", 1, False),
        (None, None, True),
        (None, 0, False),
        (0, None, False),
        ("x", {"x": 1}, False),
    ],
)
def test_argument_equality(expected: object, actual: object, equal: bool) -> None:
    assert argument_equals(expected, actual) is equal


def test_empty_match_matches_every_tool(catalog: dict[str, ToolFacts]) -> None:
    p = policy("version: 1\nrules:\n  - {name: everything, match: {}, decision: require_approval}\n", catalog)
    assert {p.decide(t).rule for t in catalog} == {"everything"}
    assert p.explain(APPLY).rules[0].reasons == ["empty match: every tool"]


def test_approval_defaults_and_serialisation(catalog: dict[str, ToolFacts]) -> None:
    p = policy(
        """
        version: 1
        rules:
          - name: plain
            match: {tools: [system_delete_*]}
            decision: require_approval
          - name: two
            match: {tools: [system_gitops_delete_repository]}
            decision: require_approval
            approval: {mode: queue, approvers: [admin], min_approvals: 2, expires_in: 1h30m}
        """,
        catalog,
    )
    plain = p.decide("system_delete_module").approval
    assert plain == ApprovalSpec()
    assert (plain.mode, plain.approvers, plain.min_approvals, plain.separation_of_duties) == (
        "elicit_or_queue",
        ("approver", "admin"),
        1,
        False,
    )
    assert plain.expires_in == timedelta(hours=24) and plain.allows_elicitation and plain.allows_queue
    two = p.decide("system_gitops_delete_repository").approval
    assert two is not None and two.needs_second_person and not two.allows_elicitation
    assert two.expires_in_seconds == 5400
    dumped = p.decide("system_gitops_delete_repository").model_dump(mode="json")
    assert dumped["approval"]["expires_in"] == "1h30m"
    assert dumped["rule"] == "two" and dumped["decision"] == "require_approval"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("24h", 86400), ("7d", 604800), ("1h30m", 5400), ("45s", 45), ("1d12h", 129600)],
)
def test_durations(text: str, seconds: int) -> None:
    td = parse_duration(text)
    assert td.total_seconds() == seconds
    assert parse_duration(format_duration(td)) == td


@pytest.mark.parametrize("text", ["", "0m", "8d", "169h", "1w", "h", "-1h", "1.5h", "24 h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_explain_says_why(catalog: dict[str, ToolFacts]) -> None:
    p = policy(
        """
        version: 1
        rules:
          - name: reads
            description: Reads are harmless.
            match: {read_only: true}
            decision: auto_approve
          - name: forced
            match: {tools: [system_gitops_apply_*], args: {force: true}}
            decision: require_approval
            approval: {mode: queue, separation_of_duties: true}
          - name: apply
            match: {tools: [system_gitops_apply_*]}
            decision: require_approval
        """,
        catalog,
    )
    ex = p.explain(APPLY, {"proposal_id": 7, "force": True})
    assert ex.known_tool and ex.facts == catalog[APPLY]
    assert ex.decision == p.decide(APPLY, {"proposal_id": 7, "force": True})
    reads, forced, apply = ex.rules
    assert (reads.matched, reads.reasons, reads.line) == (False, ["tool is not read-only"], 3)
    assert forced.decisive and forced.reasons == [
        "tool name matches system_gitops_apply_*",
        "argument force is true",
    ]
    assert apply.matched and not apply.decisive
    not_forced = p.explain(APPLY, {"proposal_id": 7, "force": False}).rules[1]
    assert not not_forced.matched and not_forced.reasons == ["argument force is not true"]
    assert p.explain(APPLY, {}).rules[1].reasons == ["argument force not given (rule wants true)"]
    text = ex.render()
    assert "require_approval (rule forced)" in text and "separation_of_duties yes" in text
    assert "DECIDES" in text and "t.yaml" in text
    assert p.decide("system_audit_verify").reason == "rule 'reads' matched: Reads are harmless."


def test_explain_never_echoes_argument_values(catalog: dict[str, ToolFacts]) -> None:
    p = policy(
        "version: 1\nrules:\n  - name: s\n    match: {tools: [system_vault_store_credential], "
        "args: {kind: token}}\n    decision: deny\n",
        catalog,
    )
    ex = p.explain("system_vault_store_credential", {"kind": "password", "secret": "hunter2-secret"})
    assert "hunter2" not in ex.model_dump_json() and "password" not in ex.render()


def test_roles_section_overrides_builtins(catalog: dict[str, ToolFacts]) -> None:
    p = policy(
        """
        version: 1
        roles:
          operator: ["system.gitops.read", "system.gitops.sync"]
          auditor: ["system.audit.read", "system.approvals.*"]
        rules:
          - name: x
            match: {tools: [system_gitops_delete_repository]}
            decision: require_approval
            approval: {approvers: [auditor]}
        """,
        catalog,
    )
    assert p.roles == {
        "operator": frozenset({"system.gitops.read", "system.gitops.sync"}),
        "auditor": frozenset({"system.audit.read", "system.approvals.*"}),
    }
    assert p.permissions_for(["operator"]) == {"system.gitops.read", "system.gitops.sync"}
    assert p.permissions_for(["viewer"]) == {"*.read"}
    assert set(p.role_table()) == {"viewer", "operator", "approver", "admin", "auditor"}


def test_policy_is_bound_to_a_snapshot_of_the_catalog(catalog: dict[str, ToolFacts]) -> None:
    mine = dict(catalog)
    p = policy("version: 1\nrules:\n  - {name: all, match: {}, decision: auto_approve}\n", mine)
    extra = ToolFacts("system_extra", "system.audit.read", "audit", True, False, True)
    mine[extra.name] = extra
    assert p.decide(extra.name).rule == "unknown-tool"
    with pytest.raises(TypeError):
        p.catalog[extra.name] = extra  # type: ignore[index]
