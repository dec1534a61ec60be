"""The published contracts: `tools/<name>.json` per tool and `docs/API.md`, both generated from the registry, and
`docs/SETTINGS.md`, generated from the Settings model (every setting documented, checked like the tools)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleet_mcp.registry import TOOLSETS, ToolSpec, select

API_DOC = "API.md"
SETTINGS_DOC = "SETTINGS.md"


def render() -> dict[str, str]:
    return {f"{s.name}.json": json.dumps(s.contract(), indent=2, sort_keys=True) + "\n" for s in select()}


def _type_of(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if schema.get("type") == "object" and "title" in schema and "properties" in schema:
        return str(schema["title"])  # an inlined model keeps its name as title
    if "anyOf" in schema:
        return " | ".join(_type_of(s, defs) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    t = schema.get("type", "any")
    if t == "array":
        return f"{_type_of(schema.get('items', {}), defs)}[]"
    return str(t)


def _arguments(spec: ToolSpec) -> list[str]:
    schema = spec.input_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    rows = []
    for name, prop in schema.get("properties", {}).items():
        default = "" if name in required else f" (default `{json.dumps(prop.get('default'))}`)"
        secret = " **write-only secret**" if prop.get("format") == "password" or prop.get("writeOnly") else ""
        rows.append(f"| `{name}` | {_type_of(prop, defs)} | {'yes' if name in required else 'no'}{default} | "
                    f"{prop.get('description', '').replace('|', '/')}{secret} |")
    return rows


def render_markdown() -> str:
    lines = ["# fleet-mcp tool reference", "",
             "Generated from the registry by `fleet-mcp tools export`; do not edit by hand. The JSON contract of "
             "each tool (with full input and output schemas) is in `tools/<name>.json`.", "",
             "Annotations: RO read-only, D destructive, I idempotent, OW open world.", ""]
    specs = select()
    for toolset in TOOLSETS:
        group = [s for s in specs if s.toolset == toolset]
        if not group:
            continue
        lines += [f"## {toolset}", ""]
        for s in group:
            ann = [a for a, on in (("RO", s.read_only), ("D", s.destructive), ("I", s.idempotent),
                                   ("OW", s.open_world)) if on]
            lines += [f"### `{s.name}` — {s.title}", "", s.description, "",
                      f"Permission `{s.permission}` · annotations {', '.join(ann) or 'none'}", ""]
            args = _arguments(s)
            if args:
                lines += ["| argument | type | required | description |", "|---|---|---|---|", *args, ""]
            else:
                lines += ["No arguments.", ""]
            out = s.output_schema().get("properties", {})
            lines += ["Result fields: " + ", ".join(f"`{k}`" for k in out), ""]
    return "\n".join(lines).rstrip() + "\n"


def _settings_default(name: str, field: Any) -> str:
    from pydantic import SecretStr

    from fleet_mcp.settings import PACKAGE_DIR

    if name == "data_dir":
        return "the platform's user data dir (`~/.local/share/fleet-mcp` on Linux)"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is None:
        return "—"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Path):
        try:
            return f"`fleet_mcp/{value.relative_to(PACKAGE_DIR)}` (shipped)"
        except ValueError:
            return f"`{value}`"
    return f"`{json.dumps(value)}`" if not isinstance(value, str) else (f"`{value}`" if value else "`\"\"`")


def _type_name(tp: Any) -> str:
    """A stable, readable name for a settings annotation (the same on every Python and pydantic version)."""
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " or ".join(f"`{a}`" for a in args)
    if tp is type(None):
        return "none"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(tp, "__name__", str(tp))


def _settings_bounds(field: Any) -> str:
    parts = []
    for m in field.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(m, attr, None)
            if v is not None:
                parts.append(f"{sym} {v:,}" if isinstance(v, int) else f"{sym} {v}")
    return ", ".join(parts)


def render_settings_markdown() -> str:
    from pydantic import AliasChoices

    from fleet_mcp.settings import Settings

    lines = ["# fleet-mcp settings", "",
             "Generated from `fleet_mcp.settings.Settings` by `fleet-mcp tools export`; do not edit by hand. Every "
             "setting is an environment variable (prefix `FLEET_MCP_`); secrets are never shown, logged or echoed "
             "in errors.", "",
             "| variable | type | default | bounds | what it does |", "|---|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        names = [f"FLEET_MCP_{name.upper()}"]
        if isinstance(field.validation_alias, AliasChoices):
            names = [str(c) for c in field.validation_alias.choices]
        ann = _type_name(field.annotation)
        desc = (field.description or "").replace("|", "/").replace("\n", " ")
        lines.append(f"| {' or '.join(f'`{n}`' for n in names)} | {ann} | "
                     f"{_settings_default(name, field)} | {_settings_bounds(field)} | {desc} |")
    return "\n".join(lines) + "\n"


def write_contracts(out: Path, docs: Path | None = None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    files = render()
    for old in out.glob("system_*.json"):
        if old.name not in files:
            old.unlink()
    for name, text in files.items():
        (out / name).write_text(text)
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
        (docs / API_DOC).write_text(render_markdown())
        (docs / SETTINGS_DOC).write_text(render_settings_markdown())
    return len(files)


def check_contracts(out: Path, docs: Path | None = None) -> list[str]:
    files = render()
    problems = []
    for name, text in files.items():
        path = out / name
        if not path.exists():
            problems.append(f"missing: {path}")
        elif path.read_text() != text:
            problems.append(f"stale: {path}")
    for old in out.glob("system_*.json") if out.exists() else []:
        if old.name not in files:
            problems.append(f"no such tool any more: {old}")
    if docs is not None:
        api = docs / API_DOC
        if not api.exists() or api.read_text() != render_markdown():
            problems.append(f"stale: {api}")
        settings_doc = docs / SETTINGS_DOC
        if not settings_doc.exists() or settings_doc.read_text() != render_settings_markdown():
            problems.append(f"stale: {settings_doc}")
    return problems
