"""A loaded policy: decides each call (first matching rule wins, unknown tools are denied), explains why."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from fleet_mcp.policy.model import ApprovalSpec, Decision, DecisionKind, Match, PolicyFile, Rule, ToolFacts
from fleet_mcp.policy.roles import permissions_for, role_table

DEFAULT_RULE = "default"
UNKNOWN_TOOL_RULE = "unknown-tool"
RESERVED_RULE_NAMES = frozenset({DEFAULT_RULE, UNKNOWN_TOOL_RULE})

# An argument is compared after coercing it the way pydantic's lax mode would for the rule value's type,
# so `force: true` also catches `"force": "true"` or `1`, which the tool itself would read as True.
_ADAPTERS: dict[type, TypeAdapter[Any]] = {t: TypeAdapter(t) for t in (bool, int, float, str)}


def argument_equals(expected: Any, actual: Any) -> bool:
    """Whether a call's argument value equals a rule's `args` value."""
    if expected is None:
        return actual is None
    if actual is None:
        return False
    try:
        coerced = _ADAPTERS[type(expected)].validate_python(actual)
    except (KeyError, ValidationError):
        return False
    return bool(coerced == expected)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def facts_mismatches(match: Match, facts: ToolFacts) -> list[str]:
    """Why `facts` fails the non-argument conditions of `match` (empty: it passes them)."""
    out = []
    if match.tools is not None and not any(fnmatchcase(facts.name, g) for g in match.tools):
        n = len(match.tools)
        globs = ", ".join(match.tools) if n <= 4 else f"the rule's {n} tool globs"
        out.append(f"tool name matches none of {globs}")
    for attr, word in (
        ("read_only", "read-only"),
        ("destructive", "destructive"),
        ("idempotent", "idempotent"),
    ):
        wanted = getattr(match, attr)
        if wanted is not None and getattr(facts, attr) != wanted:
            out.append(f"tool is {'' if getattr(facts, attr) else 'not '}{word}")
    if match.toolsets is not None and facts.toolset not in match.toolsets:
        out.append(f"toolset {facts.toolset} is not in {', '.join(match.toolsets)}")
    return out


def args_mismatches(args: Mapping[str, Any] | None, arguments: Mapping[str, Any]) -> list[str]:
    """Why `arguments` fail the rule's `args` (never echoing the caller's values, which may be secret)."""
    out = []
    for key, expected in (args or {}).items():
        if key not in arguments:
            out.append(f"argument {key} not given (rule wants {_show(expected)})")
        elif not argument_equals(expected, arguments[key]):
            out.append(f"argument {key} is not {_show(expected)}")
    return out


def select_tools(match: Match, catalog: Mapping[str, ToolFacts]) -> frozenset[str]:
    """The catalog tools whose facts pass `match` (arguments aside)."""
    return frozenset(name for name, facts in catalog.items() if not facts_mismatches(match, facts))


@dataclass(frozen=True)
class CompiledRule:
    index: int
    rule: Rule
    line: int | None
    tools: frozenset[str]  # catalog tools passing the rule's non-argument conditions

    @property
    def name(self) -> str:
        return self.rule.name


class RuleTrace(BaseModel):
    """How one rule fared for one call."""

    model_config = ConfigDict(frozen=True)

    rule: str
    line: int | None
    decision: DecisionKind
    matched: bool
    decisive: bool  # the first matching rule: the one that decides
    reasons: list[str]


class Explanation(BaseModel):
    """`Policy.explain`'s answer: the decision plus every rule's verdict."""

    model_config = ConfigDict(frozen=True)

    tool: str
    known_tool: bool
    facts: ToolFacts | None
    decision: Decision
    default: DecisionKind
    rules: list[RuleTrace]
    policy_source: str
    policy_digest: str

    def render(self) -> str:
        d = self.decision
        lines = [f"{self.tool}: {d.decision} (rule {d.rule}) - {d.reason}"]
        if d.approval is not None:
            a = d.approval
            lines.append(
                f"  approval: mode {a.mode}, approvers {', '.join(a.approvers)}, "
                f"min_approvals {a.min_approvals}, "
                f"separation_of_duties {'yes' if a.separation_of_duties else 'no'}, "
                f"expires_in {a.model_dump(mode='json')['expires_in']}"
            )
        if self.facts is not None:
            f = self.facts
            flags = [n for n in ("read_only", "destructive", "idempotent") if getattr(f, n)] or ["-"]
            lines.append(f"  tool: permission {f.permission}, toolset {f.toolset}, {' '.join(flags)}")
        lines.append(f"  policy: {self.policy_source} (default {self.default})")
        for i, t in enumerate(self.rules, 1):
            state = (
                "DECIDES"
                if t.decisive
                else ("matches, but an earlier rule decides" if t.matched else "no match")
            )
            where = f" (line {t.line})" if t.line is not None else ""
            lines.append(f"  {i}. {t.rule}{where} -> {t.decision}: {state}; {'; '.join(t.reasons)}")
        return "\n".join(lines)


class Policy:
    """An immutable, validated policy bound to a tool catalog. Build it with `load_policy`."""

    def __init__(
        self,
        file: PolicyFile,
        catalog: Mapping[str, ToolFacts],
        *,
        source: str = "<policy>",
        digest: str = "",
        rule_lines: Sequence[int | None] | None = None,
    ) -> None:
        self.file = file
        self.catalog: Mapping[str, ToolFacts] = MappingProxyType(dict(catalog))
        self.source = source
        self.digest = digest
        lines = list(rule_lines or [])
        lines += [None] * (len(file.rules) - len(lines))
        self.rules: tuple[CompiledRule, ...] = tuple(
            CompiledRule(i, r, lines[i], select_tools(r.match, self.catalog))
            for i, r in enumerate(file.rules)
        )
        self.roles: Mapping[str, frozenset[str]] = MappingProxyType(
            {role: frozenset(p) for role, p in file.roles.items()}
        )
        self._default = self._decision(None)
        self._decisions = tuple(self._decision(r) for r in self.rules)

    @property
    def default(self) -> DecisionKind:
        return self.file.default

    def role_table(self) -> dict[str, frozenset[str]]:
        """Every role this policy knows (built-ins overridden by the file's `roles`) → permission patterns."""
        return role_table(self.roles)

    def permissions_for(self, roles: Sequence[str]) -> frozenset[str]:
        return permissions_for(roles, self.roles)

    def _decision(self, rule: CompiledRule | None) -> Decision:
        if rule is None:
            kind = self.file.default
            approval = ApprovalSpec() if kind == "require_approval" else None
            return Decision(
                decision=kind,
                rule=DEFAULT_RULE,
                approval=approval,
                reason=f"no rule matched; the policy default is {kind}",
            )
        reason = f"rule '{rule.name}' matched"
        if rule.rule.description:
            reason += f": {rule.rule.description.strip()}"
        return Decision(
            decision=rule.rule.decision, rule=rule.name, approval=rule.rule.effective_approval, reason=reason
        )

    @staticmethod
    def _unknown(tool: str) -> Decision:
        shown = tool if len(tool) <= 100 else tool[:100] + "..."
        return Decision(
            decision="deny",
            rule=UNKNOWN_TOOL_RULE,
            approval=None,
            reason=f"tool {shown!r} is not in the catalog; unknown tools are denied",
        )

    def decide(self, tool: str, arguments: Mapping[str, Any] | None = None) -> Decision:
        """The decision for calling `tool` with `arguments`.

        Pass the arguments as validated by the tool's input model, defaults filled (`model_dump()`), so a rule
        on `force: true` sees `force` even when the caller left it out.
        """
        if tool not in self.catalog:
            return self._unknown(tool)
        args = arguments if isinstance(arguments, Mapping) else {}
        for rule in self.rules:
            if tool in rule.tools and not args_mismatches(rule.rule.match.args, args):
                return self._decisions[rule.index]
        return self._default

    def explain(self, tool: str, arguments: Mapping[str, Any] | None = None) -> Explanation:
        """Like `decide`, plus how every rule fared and why."""
        facts = self.catalog.get(tool)
        args = arguments if isinstance(arguments, Mapping) else {}
        traces: list[RuleTrace] = []
        decided: CompiledRule | None = None
        for rule in self.rules:
            m = rule.rule.match
            if facts is None:
                reasons = ["tool is not in the catalog"]
            else:
                reasons = facts_mismatches(m, facts) + args_mismatches(m.args, args)
            matched = facts is not None and not reasons
            if matched:
                reasons = _why_matched(m, facts)  # type: ignore[arg-type]
            decisive = matched and decided is None
            if decisive:
                decided = rule
            traces.append(
                RuleTrace(
                    rule=rule.name,
                    line=rule.line,
                    decision=rule.rule.decision,
                    matched=matched,
                    decisive=decisive,
                    reasons=reasons,
                )
            )
        decision = self._unknown(tool) if facts is None else self._decision(decided)
        return Explanation(
            tool=tool,
            known_tool=facts is not None,
            facts=facts,
            decision=decision,
            default=self.file.default,
            rules=traces,
            policy_source=self.source,
            policy_digest=self.digest,
        )

    def __repr__(self) -> str:
        return f"Policy(source={self.source!r}, rules={len(self.rules)}, default={self.file.default!r})"


def _why_matched(match: Match, facts: ToolFacts) -> list[str]:
    out = []
    if match.tools is not None:
        glob = next(g for g in match.tools if fnmatchcase(facts.name, g))
        out.append(f"tool name matches {glob}")
    for attr, word in (
        ("read_only", "read-only"),
        ("destructive", "destructive"),
        ("idempotent", "idempotent"),
    ):
        wanted = getattr(match, attr)
        if wanted is not None:
            out.append(f"tool is {'' if wanted else 'not '}{word}")
    if match.toolsets is not None:
        out.append(f"toolset {facts.toolset}")
    for key, expected in (match.args or {}).items():
        out.append(f"argument {key} is {_show(expected)}")
    return out or ["empty match: every tool"]
