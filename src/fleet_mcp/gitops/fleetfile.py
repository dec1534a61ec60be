"""Parse fleet.yaml bytes into a validated DesiredState, reporting every problem at once with dotted paths.

The YAML is read by `fleet_mcp.yamlsafe` (the hardened reader policy files use too): an event stream
(libyaml when available) turned into plain values by a small builder instead of PyYAML's
constructor, so the limits hold *while* parsing: anchors, merge keys and
aliases (alias bombs), explicit tags (`!!python/...`), duplicate keys (PyYAML silently keeps the
last), excessive depth or key count and multiple documents are refused before anything grows.
Mapping keys are taken as their literal text (`yes:` is the key "yes", never True).

Assignments may only reference templates and modules defined in the same file: the file is the
whole desired state, so a template that exists only live would be deleted by the same sync.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from fleet_mcp import yamlsafe
from fleet_mcp.errors import InvalidArgument
from fleet_mcp.fleet.spec import (
    KIND_BY_SECTION,
    KINDS,
    SECTION_BY_KIND,
    AssignmentSpec,
    FleetSection,
    ModuleSpec,
    ProviderConfigSpec,
    TemplateSpec,
    dump_attributes,
    error_lines,
    fingerprint,
    format_loc,
    name_error,
)

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 16
MAX_KEYS = 200_000
MAX_ERRORS_IN_MESSAGE = 50

@dataclass
class DesiredState:
    """What fleet.yaml asks for: kind → name → canonical attributes, plus the `fleet:` section."""

    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {k: {} for k in KINDS})
    fleet: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for kind in KINDS:
            self.resources.setdefault(kind, {})

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.resources.values())

    def is_empty(self) -> bool:
        return self.count == 0

    def items(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for kind in KINDS:
            for name, attrs in self.resources[kind].items():
                yield kind, name, attrs

    def to_json(self) -> dict[str, Any]:
        return {"resources": self.resources, "fleet": self.fleet}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DesiredState:
        return cls(resources={k: dict(v) for k, v in data.get("resources", {}).items()}, fleet=data.get("fleet"))

    def digest(self) -> str:
        return fingerprint(self.to_json())


class _FleetFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    templates: dict[str, TemplateSpec] = {}
    modules: dict[str, ModuleSpec] = {}
    assignments: dict[str, AssignmentSpec] = {}
    provider_configs: dict[str, ProviderConfigSpec] = {}
    fleet: FleetSection | None = None

    @field_validator("templates", "modules", "assignments", "provider_configs", mode="before")
    @classmethod
    def _empty_section(cls, v: Any) -> Any:
        # "templates:" with nothing under it is an empty section, not a type error.
        return {} if v is None else v


class FleetFileError(InvalidArgument):
    """fleet.yaml is not acceptable; `errors` lists every problem as "path: message"."""


def _fail(errors: list[str], *, hint: str) -> FleetFileError:
    shown = errors[:MAX_ERRORS_IN_MESSAGE]
    more = len(errors) - len(shown)
    message = f"fleet.yaml has {len(errors)} error{'s' if len(errors) != 1 else ''}: " + "; ".join(shown)
    if more:
        message += f"; … and {more} more"
    return FleetFileError(message, hint=hint, errors=errors)


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


_HINT = "fix every listed path in fleet.yaml (see docs/runbooks/gitops.md for the schema) and push again"


def parse_fleet_file(data: bytes | str) -> DesiredState:
    """Parse and validate fleet.yaml into a DesiredState; FleetFileError lists every problem at once."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > MAX_BYTES:
        raise FleetFileError(
            f"fleet.yaml is {len(raw)} bytes; the limit is {MAX_BYTES} bytes (1 MiB)",
            hint="split the fleet across repositories or path prefixes",
            size=len(raw),
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FleetFileError(f"fleet.yaml is not valid UTF-8 (byte {exc.start})", hint="save it as UTF-8") from None
    try:
        loaded = yamlsafe.load(text, max_depth=MAX_DEPTH, max_keys=MAX_KEYS, line_depth=3)
    except yamlsafe.YamlRefused as exc:
        raise FleetFileError(f"fleet.yaml refused: {exc}", hint=_HINT, errors=[str(exc)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f" at {_where(mark)}" if mark is not None else ""
        msg = f"fleet.yaml is not valid YAML{where}: {problem}"
        raise FleetFileError(msg, hint=_HINT, errors=[msg]) from None

    doc, lines = loaded.document, loaded.lines
    errors = [f"{format_loc(d.path)}: duplicate key (line {d.line}, first at line {d.first_line})"
              for d in loaded.duplicates]
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise _fail(
            [
                "(root): the document must be a mapping with templates, modules, assignments, "
                "provider_configs and fleet sections"
            ],
            hint=_HINT,
        )
    # Duplicate keys were kept apart; drop them so validation sees the first occurrence only.
    yamlsafe.strip_duplicates(doc)

    model: _FleetFile | None = None
    try:
        model = _FleetFile.model_validate(doc)
    except ValidationError as exc:
        for line, err in zip(error_lines(exc), exc.errors(include_url=False), strict=True):
            errors.append(_with_line(line, err["loc"], lines))

    # Names and references are checked on whatever parsed, so they are reported with the rest.
    for section, kind in KIND_BY_SECTION.items():
        entries = doc.get(section)
        if isinstance(entries, dict):
            for name in entries:
                problem = name_error(kind, name)
                if problem:
                    errors.append(
                        _with_line(f"{format_loc((section, name))}: invalid name: {problem}", (section, name), lines)
                    )
    templates = doc.get("templates") if isinstance(doc.get("templates"), dict) else {}
    modules = doc.get("modules") if isinstance(doc.get("modules"), dict) else {}
    assignments = doc.get("assignments")
    if isinstance(assignments, dict):
        for name in assignments:
            if name_error("assignment", name):
                continue
            template, module = name.split(":", 1)
            loc = ("assignments", name)
            if template not in templates:
                errors.append(
                    _with_line(f"{format_loc(loc)}: template {template!r} is not defined in this file", loc, lines)
                )
            if module not in modules:
                errors.append(
                    _with_line(f"{format_loc(loc)}: module {module!r} is not defined in this file", loc, lines)
                )
    fleet = doc.get("fleet")
    if isinstance(fleet, dict):
        default = fleet.get("default_template")
        if isinstance(default, str) and default not in templates:
            loc = ("fleet", "default_template")
            errors.append(
                _with_line(f"{format_loc(loc)}: template {default!r} is not defined in this file", loc, lines)
            )

    if errors or model is None:
        raise _fail(errors, hint=_HINT)

    resources: dict[str, dict[str, dict[str, Any]]] = {}
    for kind in KINDS:
        section: dict[str, Any] = getattr(model, SECTION_BY_KIND[kind])
        resources[kind] = {name: dump_attributes(spec) for name, spec in section.items()}
    return DesiredState(resources=resources, fleet=dump_attributes(model.fleet) if model.fleet else None)


def _with_line(line: str, loc: tuple[Any, ...], lines: Mapping[tuple[str, ...], int]) -> str:
    for n in range(min(len(loc), 3), 0, -1):
        at = lines.get(tuple(str(p) for p in loc[:n]))
        if at is not None:
            return f"{line} (line {at})"
    return line
