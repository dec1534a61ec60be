"""The published contracts: `tools/<name>.json` per tool and `docs/API.md`, both generated from the registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleet_mcp.registry import TOOLSETS, ToolSpec, select

API_DOC = "API.md"


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
    return problems
