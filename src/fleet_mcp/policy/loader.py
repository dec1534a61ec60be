"""Turn a policy file into a `Policy`: strict YAML, the pydantic grammar, then checks against the catalog.

Every refusal is a `PolicyError` naming file, line and rule, e.g.
`policies/x.yaml:14: rule 'apply-force': tool glob 'system_gitops_aply_*' matches no tool`.
"""

from __future__ import annotations

import hashlib
import os
import types
import typing
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from pydantic import BaseModel, ValidationError

from fleet_mcp.policy.engine import RESERVED_RULE_NAMES, Policy, select_tools
from fleet_mcp.policy.errors import PolicyError, PolicyProblem
from fleet_mcp.policy.model import DEFAULT_APPROVERS, PolicyFile, ToolFacts
from fleet_mcp.policy.roles import ALL_PERMISSIONS, has_permission, permission_matches, role_table
from fleet_mcp.policy.yamlsafe import MAX_BYTES, Loc, read_yaml

APPROVE_PERMISSION = "system.approvals.decide"


def load_policy(
    source: str | os.PathLike[str], catalog: Mapping[str, ToolFacts], *, name: str | None = None
) -> Policy:
    """Load and validate a policy.

    `source` is a path (a `PathLike`, or a `str` without a newline) or YAML text (a `str` with a newline).
    `name` labels the policy in errors (default: the path as given, or "<policy>" for text).
    Raises PolicyError listing every problem found.
    """
    if isinstance(source, os.PathLike) or "\n" not in source:
        label = name or os.fspath(source)
        raw = read_policy_bytes(source, label)
        return parse_policy(decode_policy(raw, label), catalog, source=label)
    return parse_policy(source, catalog, source=name or "<policy>")


def read_policy_bytes(path: str | os.PathLike[str], label: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise PolicyError.single(label, f"cannot read the policy file: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise PolicyError.single(label, f"the policy file is larger than {MAX_BYTES} bytes")
    return raw


def decode_policy(raw: bytes, label: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PolicyError.single(label, "the policy file is not valid UTF-8", line=line) from None


def parse_policy(text: str, catalog: Mapping[str, ToolFacts], *, source: str = "<policy>") -> Policy:
    """Validate YAML text as a policy for `catalog`."""
    data, lines = read_yaml(text, source)
    try:
        file = PolicyFile.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(_validation_problems(exc, data, lines, source)) from None
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return compile_policy(file, catalog, source=source, digest=digest, lines=lines)


def compile_policy(
    file: PolicyFile,
    catalog: Mapping[str, ToolFacts],
    *,
    source: str = "<policy>",
    digest: str = "",
    lines: Mapping[Loc, int] | None = None,
) -> Policy:
    """Check a validated PolicyFile against the catalog and bind it; raises PolicyError."""
    lines = lines or {}
    for key, facts in catalog.items():
        if key != facts.name:
            raise ValueError(f"catalog key {key!r} names tool {facts.name!r}")
    found = catalog_problems(file, catalog)
    if found:
        names = [r.name for r in file.rules]
        raise PolicyError(
            sorted(
                (_problem(loc, msg, lines, source, names) for loc, msg in found),
                key=lambda p: p.line or 0,
            )
        )
    rule_lines = [lines.get(("rules", i)) for i in range(len(file.rules))]
    return Policy(file, catalog, source=source, digest=digest, rule_lines=rule_lines)


def catalog_problems(file: PolicyFile, catalog: Mapping[str, ToolFacts]) -> list[tuple[Loc, str]]:
    """Everything the grammar alone cannot see: names that match nothing, dead rules, unknown roles."""
    out: list[tuple[Loc, str]] = []
    known_permissions = set(ALL_PERMISSIONS) | {f.permission for f in catalog.values()}
    for role, patterns in file.roles.items():
        for j, pattern in enumerate(patterns):
            if not any(permission_matches(pattern, p) for p in known_permissions):
                out.append(
                    (
                        ("roles", role, j),
                        f"role '{role}': permission pattern '{pattern}' matches no permission",
                    )
                )
    roles = role_table(file.roles)
    if file.default == "require_approval" and not any(
        has_permission(roles.get(r, ()), APPROVE_PERMISSION) for r in DEFAULT_APPROVERS
    ):
        out.append((("default",), f"none of the default approvers has {APPROVE_PERMISSION}"))
    toolsets = {f.toolset for f in catalog.values()}
    seen: dict[str, int] = {}
    for i, rule in enumerate(file.rules):
        at: Loc = ("rules", i)
        if rule.name in RESERVED_RULE_NAMES:
            out.append(((*at, "name"), f"the rule name '{rule.name}' is reserved"))
        if rule.name in seen:
            out.append(((*at, "name"), f"duplicate rule name (also rule #{seen[rule.name] + 1})"))
        seen.setdefault(rule.name, i)
        m = rule.match
        broken = False
        for j, glob in enumerate(m.tools or []):
            if not any(fnmatchcase(name, glob) for name in catalog):
                out.append(((*at, "match", "tools", j), f"tool glob '{glob}' matches no tool"))
                broken = True
        for j, toolset in enumerate(m.toolsets or []):
            if toolset not in toolsets:
                out.append(
                    (
                        (*at, "match", "toolsets", j),
                        f"toolset '{toolset}' has no tools (known: {', '.join(sorted(toolsets))})",
                    )
                )
                broken = True
        selected = select_tools(m, catalog)
        if not broken and not selected:
            out.append(((*at, "match"), "the match conditions together select no tool"))
        for key in m.args or {}:
            arg_sets = [catalog[t].arg_names for t in selected]
            if arg_sets and all(s is not None for s in arg_sets) and not any(key in s for s in arg_sets if s):
                out.append(
                    ((*at, "match", "args", key), f"argument '{key}' exists on none of the matched tools")
                )
        approval = rule.approval
        for j, role in enumerate(approval.approvers if approval else []):
            if role not in roles:
                out.append(
                    (
                        (*at, "approval", "approvers", j),
                        f"unknown approver role '{role}' (known: {', '.join(sorted(roles))})",
                    )
                )
        spec = rule.effective_approval
        if (
            spec is not None
            and spec.allows_queue
            and not any(has_permission(roles.get(r, ()), APPROVE_PERMISSION) for r in spec.approvers)
        ):
            where: Loc = (*at, "approval", "approvers") if approval is not None else (*at, "decision")
            out.append(
                (
                    where,
                    f"none of the approver roles has {APPROVE_PERMISSION}: "
                    "no one could approve a queued request",
                )
            )
    return out


# -- mapping pydantic errors back to lines -------------------------------------------------------------------


def _problem(
    loc: Loc, message: str, lines: Mapping[Loc, int], source: str, rule_names: list[Any]
) -> PolicyProblem:
    line = None
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            line = lines[loc[:n]]
            break
    rule = None
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int) and loc[1] < len(rule_names):
        name = rule_names[loc[1]]
        rule = name if isinstance(name, str) and name else f"#{loc[1] + 1}"
    return PolicyProblem(source, line, rule, message)


def _field(loc: Loc, strip_rule: bool) -> str:
    parts = loc[2:] if strip_rule else loc
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        else:
            return tp


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The grammar model found at `loc`, following field annotations down from PolicyFile."""
    current: Any = PolicyFile
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if part not in current.model_fields:
                return None
            current = current.model_fields[str(part)].annotation
            continue
        origin = typing.get_origin(current)
        if origin is list and isinstance(part, int):
            current = typing.get_args(current)[0]
        elif origin is dict and isinstance(part, str):
            current = typing.get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _short(value: Any) -> str | None:
    if value is None or isinstance(value, bool | int | float | str):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return None


def _validation_problems(
    exc: ValidationError, data: Any, lines: Mapping[Loc, int], source: str
) -> list[PolicyProblem]:
    rules = data.get("rules") if isinstance(data, dict) else None
    names = [r.get("name") if isinstance(r, dict) else None for r in rules] if isinstance(rules, list) else []
    problems: dict[tuple[int | None, str], PolicyProblem] = {}
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        in_rule = len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int)
        field = _field(loc, in_rule)
        kind = err["type"]
        msg = str(err["msg"])
        if not loc and kind in ("model_type", "model_attributes_type", "dict_type"):
            message = "the policy must be a mapping with version, default and rules"
        elif kind == "extra_forbidden":
            model = _model_at(loc[:-1])
            allowed = f" (allowed: {', '.join(model.model_fields)})" if model else ""
            message = f"unknown key '{loc[-1]}'{allowed}"
            field = ""
        elif kind == "too_short":
            message = "must not be empty"
            if len(loc) >= 2 and loc[-2] == "match":
                message += " (leave the key out to match everything)"
        elif kind == "missing":
            message = f"missing required key '{loc[-1]}'"
            field = ""
        else:
            msg = msg.removeprefix("Value error, ")
            msg = msg[:1].lower() + msg[1:]
            shown = _short(err.get("input"))
            if kind.startswith("literal_error") and shown is not None:
                msg += f", not {shown}"
            message = msg
        if field and kind != "extra_forbidden":
            message = f"{field}: {message}"
        p = _problem(loc, message, lines, source, names)
        problems.setdefault((p.line, str(p)), p)
    return sorted(problems.values(), key=lambda p: p.line or 0)
