"""Broken policy files are refused with the file, the line and the rule."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from fleet_mcp.policy import PolicyError, ToolFacts, load_policy
from fleet_mcp.policy.yamlsafe import MAX_BYTES

NAME = "policies/x.yaml"


def refused(text: str, catalog: dict[str, ToolFacts]) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_policy(textwrap.dedent(text).lstrip("\n"), catalog, name=NAME)
    return info.value


def test_the_documented_example(catalog: dict[str, ToolFacts]) -> None:
    err = refused(
        """
        version: 1
        default: deny
        rules:
          - name: reads
            match:
              read_only: true
            decision: auto_approve
          - name: apply
            match: {tools: [system_gitops_apply_proposal]}
            decision: require_approval
          - name: apply-force
            match:
              tools:
                - system_gitops_aply_*
              args: {force: true}
            decision: require_approval
        """,
        catalog,
    )
    assert (
        str(err) == "policies/x.yaml:14: rule 'apply-force': tool glob 'system_gitops_aply_*' matches no tool"
    )
    assert (err.file, err.line, err.rule) == (NAME, 14, "apply-force")


RULE = """
version: 1
rules:
  - name: first
    match: {read_only: true}
    decision: auto_approve
"""

APPROVAL = RULE + "  - name: s\n    match: {}\n    decision: require_approval\n    approval:\n"

CASES = [
    # (id, text, line, rule, fragment)
    (
        "unknown-top-level-key",
        "version: 1\ndefualt: deny\n",
        2,
        None,
        "unknown key 'defualt' (allowed: version,",
    ),
    ("unknown-rule-key", RULE + "    decisoin: deny\n", 6, "first", "unknown key 'decisoin'"),
    (
        "unknown-match-key",
        RULE + "  - name: second\n    match:\n      toolz: [x]\n    decision: deny\n",
        8,
        "second",
        "unknown key 'toolz' (allowed: tools, read_only",
    ),
    (
        "unknown-approval-key",
        RULE + "  - name: s\n    match: {}\n    decision: require_approval\n    approval: {quorum: 2}\n",
        9,
        "s",
        "unknown key 'quorum' (allowed: mode, approvers",
    ),
    (
        "bad-decision",
        RULE + "  - name: s\n    match: {}\n    decision: allow\n",
        8,
        "s",
        "decision: input should be 'auto_approve', 'require_approval' or 'deny', not 'allow'",
    ),
    ("bad-default", "version: 1\ndefault: allow\n", 2, None, "default: input should be"),
    ("yaml-error", RULE + "  - name: s\n   match: {}\n", 7, None, "YAML error"),
    (
        "yaml-unclosed-flow",
        RULE + "  - name: s\n    match: {tools: [x\n    decision: deny\n",
        None,
        None,
        "YAML error",
    ),
    ("duplicate-key", RULE + "    decision: deny\n", 6, None, "duplicate key 'decision' (first at line 5)"),
    (
        "anchor",
        "version: 1\nrules:\n  - name: a\n    match: &m {}\n    decision: deny\n",
        4,
        None,
        "anchors are not allowed (&m)",
    ),
    (
        "alias",
        "version: 1\nx: 1\nrules:\n  - name: a\n    match: *m\n    decision: deny\n",
        5,
        None,
        "aliases are not allowed (*m)",
    ),
    (
        "merge-key",
        RULE + "  - name: s\n    <<: {decision: deny}\n    match: {}\n",
        7,
        None,
        "merge keys (<<) are not allowed",
    ),
    ("explicit-tag", "version: !!python/object:os.system 1\n", 1, None, "explicit YAML tags are not allowed"),
    (
        "non-string-key",
        RULE + "  - name: s\n    match: {args: {1: true}}\n    decision: deny\n",
        7,
        None,
        "key '1' must be a string",
    ),
    ("two-documents", "version: 1\n---\nversion: 1\n", 2, None, "expected a single document"),
    ("not-a-mapping", "- version: 1\n", 1, None, "the policy must be a mapping"),
    ("missing-version", "rules: []\n", 1, None, "missing required key 'version'"),
    ("wrong-version", "version: 2\n", 1, None, "version: input should be 1, not 2"),
    ("missing-match", RULE + "  - name: s\n    decision: deny\n", 6, "s", "missing required key 'match'"),
    ("missing-name", RULE + "  - match: {}\n    decision: deny\n", 6, "#2", "missing required key 'name'"),
    (
        "bad-rule-name",
        RULE + "  - name: 'two words'\n    match: {}\n    decision: deny\n",
        6,
        "two words",
        "name: string should match pattern",
    ),
    (
        "unknown-tool",
        RULE + "  - name: s\n    match:\n      tools:\n        - system_nope\n    decision: deny\n",
        9,
        "s",
        "tool glob 'system_nope' matches no tool",
    ),
    (
        "unknown-toolset",
        RULE + "  - name: s\n    match: {toolsets: [gitop]}\n    decision: deny\n",
        7,
        "s",
        "toolset 'gitop' has no tools (known: approvals, audit, federation, fleet, gitops, vault)",
    ),
    (
        "args-key-no-tool-has",
        RULE
        + "  - name: s\n    match:\n      tools: [system_gitops_apply_*]\n      args:\n        forse: true\n"
        "    decision: deny\n",
        10,
        "s",
        "argument 'forse' exists on none of the matched tools",
    ),
    (
        "args-value-list",
        RULE + "  - name: s\n    match: {args: {force: [true]}}\n    decision: deny\n",
        7,
        "s",
        "match.args.force: an argument value must be a string, number, boolean or null",
    ),
    (
        "empty-tools",
        RULE + "  - name: s\n    match: {tools: []}\n    decision: deny\n",
        7,
        "s",
        "match.tools: must not be empty",
    ),
    (
        "dead-rule",
        RULE + "  - name: s\n    match:\n      read_only: true\n      destructive: true\n"
        "    decision: deny\n",
        7,
        "s",
        "the match conditions together select no tool",
    ),
    (
        "duplicate-rule-name",
        RULE + "  - name: first\n    match: {}\n    decision: deny\n",
        6,
        "first",
        "duplicate rule name (also rule #1)",
    ),
    (
        "reserved-rule-name",
        RULE + "  - name: default\n    match: {}\n    decision: deny\n",
        6,
        "default",
        "the rule name 'default' is reserved",
    ),
    (
        "approval-without-require",
        RULE + "  - name: s\n    match: {}\n    decision: deny\n    approval: {}\n",
        6,
        "s",
        "'approval' is only allowed with decision require_approval, not deny",
    ),
    (
        "expiry-too-long",
        APPROVAL + "      expires_in: 8d\n",
        10,
        "s",
        "approval.expires_in: a duration can be at most 7d",
    ),
    (
        "expiry-malformed",
        APPROVAL + "      expires_in: 3600\n",
        10,
        "s",
        "a duration is written like '30m', '24h' or '7d', not 3600",
    ),
    (
        "zero-approvals",
        APPROVAL + "      min_approvals: 0\n",
        10,
        "s",
        "approval.min_approvals: input should be greater than or equal to 1",
    ),
    (
        "elicit-with-sod",
        APPROVAL + "      mode: elicit\n      separation_of_duties: true\n",
        9,
        "s",
        "mode 'elicit' asks the caller's own human",
    ),
    (
        "unknown-approver",
        APPROVAL + "      approvers:\n        - admin\n        - approvers\n",
        12,
        "s",
        "unknown approver role 'approvers'",
    ),
    (
        "approvers-cannot-decide",
        APPROVAL + "      approvers: [viewer]\n",
        10,
        "s",
        "none of the approver roles has system.approvals.decide",
    ),
    (
        "default-approvers-cannot-decide",
        "version: 1\ndefault: require_approval\nroles:\n  approver: ['*.read']\n  admin: ['*.read']\n",
        2,
        None,
        "none of the default approvers has system.approvals.decide",
    ),
    (
        "implicit-approvers-cannot-decide",
        "version: 1\nroles:\n  approver: ['*.read']\n  admin: ['*.read']\nrules:\n  - name: s\n"
        "    match: {}\n    decision: require_approval\n",
        8,
        "s",
        "none of the approver roles has system.approvals.decide",
    ),
    (
        "role-pattern-matches-nothing",
        "version: 1\nroles:\n  auditor:\n    - system.audti.read\n",
        4,
        None,
        "role 'auditor': permission pattern 'system.audti.read' matches no permission",
    ),
    (
        "role-pattern-malformed",
        "version: 1\nroles:\n  auditor: ['System Audit']\n",
        3,
        None,
        "is not a permission pattern",
    ),
    (
        "strict-bool",
        RULE + "  - name: s\n    match: {read_only: 'yes'}\n    decision: deny\n",
        7,
        "s",
        "match.read_only: input should be a valid boolean",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "rule", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_broken_policy_is_refused_with_location(
    catalog: dict[str, ToolFacts], text: str, line: int | None, rule: str | None, fragment: str
) -> None:
    err = refused(text, catalog)
    first = err.problems[0]
    assert fragment in first.message, str(err)
    assert first.file == NAME
    if line is not None:
        assert first.line == line, str(err)
        prefix = f"{NAME}:{line}: " + (f"rule '{rule}': " if rule else "")
        assert str(err).startswith(prefix), str(err)
    else:
        assert first.line is not None
    assert first.rule == rule
    assert err.code == "invalid_policy"


def test_every_problem_is_reported_in_line_order(catalog: dict[str, ToolFacts]) -> None:
    err = refused(
        """
        version: 1
        rules:
          - name: a
            match: {tools: [system_nope]}
            decision: deny
          - name: b
            match: {}
            decision: maybe
          - name: c
            match: {toolz: []}
            decision: deny
        """,
        catalog,
    )
    # grammar errors first (the catalog is only consulted once the grammar holds)
    assert [(p.line, p.rule) for p in err.problems] == [(8, "b"), (10, "c")]
    assert str(err).count("\n") == 1


def test_refused_from_a_file_names_the_path(tmp_path: Path, catalog: dict[str, ToolFacts]) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("version: 1\nrules:\n  - name: a\n    match: {tools: [nope]}\n    decision: deny\n")
    for source in (path, str(path)):
        with pytest.raises(PolicyError) as info:
            load_policy(source, catalog)
        assert str(info.value) == f"{path}:4: rule 'a': tool glob 'nope' matches no tool"


def test_unreadable_undecodable_and_oversized_files(tmp_path: Path, catalog: dict[str, ToolFacts]) -> None:
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path / "missing.yaml", catalog)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"version: 1\ndescription: caf\xe9\n")
    with pytest.raises(PolicyError) as info:
        load_policy(bad, catalog)
    assert info.value.line == 2 and "not valid UTF-8" in str(info.value)
    big = tmp_path / "big.yaml"
    big.write_text("version: 1\n" + "#" * MAX_BYTES + "\n")
    with pytest.raises(PolicyError, match="larger than"):
        load_policy(big, catalog)
    with pytest.raises(PolicyError, match="the policy file is empty"):
        load_policy("\n# nothing\n", catalog)


def test_deep_nesting_is_refused_without_recursion(catalog: dict[str, ToolFacts]) -> None:
    err = refused("version: 1\nx: " + "[" * 5000 + "]" * 5000 + "\n", catalog)
    assert "nesting deeper than" in str(err) and err.line == 2


def test_args_key_check_skips_tools_with_unknown_arguments(catalog: dict[str, ToolFacts]) -> None:
    """A catalog entry without known argument names (arg_names=None) accepts any `args` key."""
    trim = catalog["system_vault_trim_pepper_key"]
    catalog = {**catalog, trim.name: dataclasses.replace(trim, arg_names=None)}
    policy = load_policy(
        "version: 1\nrules:\n  - name: t\n"
        "    match: {tools: [system_vault_trim_pepper_key], args: {keep: 2}}\n    decision: deny\n",
        catalog,
    )
    assert policy.decide("system_vault_trim_pepper_key", {"keep": 2}).rule == "t"
