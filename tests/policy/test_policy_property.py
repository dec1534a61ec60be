"""Property: with `default: deny`, a call that no rule matches is never allowed, whatever the rules."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet_mcp.policy import argument_equals, load_policy
from tests.policy.catalog_data import build_catalog

CATALOG = build_catalog()
NAMES = sorted(CATALOG)
TOOLSETS = sorted({f.toolset for f in CATALOG.values()})
ARG_NAMES = sorted({a for f in CATALOG.values() for a in (f.arg_names or ())} | {"unknown_arg"})
# Values whose Python equality agrees with the engine's lax comparison (checked below).
VALUES: list[Any] = [True, False, 0, 1, 2, "a", "b", None]
DECISIONS = ["auto_approve", "require_approval", "deny"]


@st.composite
def rules(draw: st.DrawFn, index: int) -> dict[str, Any]:
    """A valid rule: built around one catalog tool so that it always selects at least that tool."""
    seed = CATALOG[draw(st.sampled_from(NAMES))]
    match: dict[str, Any] = {}
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(seed.name)))
        glob = draw(st.sampled_from([seed.name, seed.name[:cut] + "*", "*" + seed.name[cut:], "*"]))
        match["tools"] = [glob, *draw(st.lists(st.sampled_from(NAMES), max_size=2))]
    for attr in ("read_only", "destructive", "idempotent"):
        if draw(st.booleans()):
            match[attr] = getattr(seed, attr)
    if draw(st.booleans()):
        match["toolsets"] = [seed.toolset, *draw(st.lists(st.sampled_from(TOOLSETS), max_size=1))]
    if seed.arg_names and draw(st.booleans()):
        keys = draw(st.lists(st.sampled_from(sorted(seed.arg_names)), min_size=1, max_size=2, unique=True))
        match["args"] = {k: draw(st.sampled_from(VALUES)) for k in keys}
    return {"name": f"r{index}", "match": match, "decision": draw(st.sampled_from(DECISIONS))}


rule_lists = st.integers(0, 8).flatmap(lambda n: st.tuples(*(rules(i) for i in range(n))))
tools = st.one_of(st.sampled_from(NAMES), st.text("abcdefghijklmnopqrstuvwxyz_*?", max_size=40))
arguments = st.dictionaries(st.sampled_from(ARG_NAMES), st.sampled_from(VALUES), max_size=4)


def first_match(
    rule_set: tuple[dict[str, Any], ...], tool: str, args: dict[str, Any]
) -> dict[str, Any] | None:
    """An independent, naive reading of the grammar."""
    facts = CATALOG[tool]
    for rule in rule_set:
        m = rule["match"]
        if "tools" in m and not any(fnmatchcase(tool, g) for g in m["tools"]):
            continue
        if any(
            attr in m and m[attr] != getattr(facts, attr)
            for attr in ("read_only", "destructive", "idempotent")
        ):
            continue
        if "toolsets" in m and facts.toolset not in m["toolsets"]:
            continue
        if any(
            k not in args or args[k] != v or (args[k] is None) != (v is None)
            for k, v in m.get("args", {}).items()
        ):
            continue
        return rule
    return None


def test_value_pool_equality_agrees_with_the_engine() -> None:
    for expected in VALUES:
        for actual in VALUES:
            naive = expected == actual and (expected is None) == (actual is None)
            assert argument_equals(expected, actual) is naive, (expected, actual)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule_set=rule_lists, calls=st.lists(st.tuples(tools, arguments), min_size=1, max_size=10))
def test_unmatched_calls_are_never_allowed(
    rule_set: tuple[dict[str, Any], ...], calls: list[tuple[str, dict[str, Any]]]
) -> None:
    text = yaml.safe_dump({"version": 1, "default": "deny", "rules": list(rule_set)}, sort_keys=False)
    policy = load_policy(text + "\n", CATALOG, name="generated.yaml")
    for tool, args in calls:
        d = policy.decide(tool, args)
        assert d == policy.explain(tool, args).decision
        if tool not in CATALOG:
            assert (d.decision, d.rule) == ("deny", "unknown-tool")
            continue
        winner = first_match(rule_set, tool, args)
        if winner is None:
            assert (d.decision, d.rule) == ("deny", "default"), (tool, args, d)
        else:
            assert (d.decision, d.rule) == (winner["decision"], winner["name"]), (tool, args, d)
        if d.decision == "auto_approve":
            assert winner is not None and winner["decision"] == "auto_approve"
