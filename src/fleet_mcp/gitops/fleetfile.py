"""Parse fleet.yaml bytes into a validated DesiredState, reporting every problem at once with dotted paths.

The YAML is read as an event stream (libyaml when available) and turned into plain values by our
own small builder instead of PyYAML's constructor, so the limits hold *while* parsing: anchors and
aliases (alias bombs), explicit tags (`!!python/...`), duplicate keys (PyYAML silently keeps the
last), excessive depth or key count and multiple documents are refused before anything grows.
Mapping keys are taken as their literal text (`yes:` is the key "yes", never True).

Assignments may only reference templates and modules defined in the same file: the file is the
whole desired state, so a template that exists only live would be deleted by the same sync.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from yaml.constructor import SafeConstructor
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

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

try:  # libyaml: ~10x faster event stream; the pure-Python parser behaves the same.
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - libyaml is present in our builds
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 16
MAX_KEYS = 200_000
MAX_ERRORS_IN_MESSAGE = 50

_STR = "tag:yaml.org,2002:str"
_ALLOWED_TAGS = {
    _STR,
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_RESOLVERS: dict[Any, list[tuple[str, Any]]] = Resolver.yaml_implicit_resolvers
_CONSTRUCTOR = SafeConstructor()
_CONSTRUCT = {
    "tag:yaml.org,2002:int": _CONSTRUCTOR.construct_yaml_int,
    "tag:yaml.org,2002:float": _CONSTRUCTOR.construct_yaml_float,
    "tag:yaml.org,2002:bool": _CONSTRUCTOR.construct_yaml_bool,
    "tag:yaml.org,2002:null": _CONSTRUCTOR.construct_yaml_null,
}


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


class _Limit(Exception):
    """A structural limit that stops parsing at once (the rest cannot be trusted)."""


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _scalar(ev: Any) -> Any:
    tag = ev.tag
    value = ev.value
    if tag is None or tag == "!":
        if not ev.implicit[0]:
            return value  # quoted: always a string
        resolvers = _RESOLVERS.get(value[0] if value else "", ())
        for rtag, regexp in (*resolvers, *_RESOLVERS.get(None, ())):
            if regexp.match(value):
                tag = rtag
                break
        else:
            return value
        if tag == _TIMESTAMP or tag not in _CONSTRUCT:
            return value  # dates stay text (JSON-ready); '=' / '<<' have no meaning here
    elif tag not in _ALLOWED_TAGS or tag.endswith(("map", "seq")):
        raise _Limit(f"{_where(ev.start_mark)}: tag {tag!r} is not allowed")
    elif tag == _STR:
        return value
    try:
        out = _CONSTRUCT[tag](ScalarNode(tag, value))
    except (ValueError, yaml.YAMLError):
        raise _Limit(f"{_where(ev.start_mark)}: {value[:40]!r} is not a valid {tag.rsplit(':', 1)[-1]}") from None
    if isinstance(out, float) and not math.isfinite(out):
        raise _Limit(f"{_where(ev.start_mark)}: non-finite numbers (.inf, .nan) are not allowed")
    return out


def _load(data: bytes | str) -> tuple[Any, list[str], dict[tuple[str, ...], int]]:
    """Build plain values from the YAML event stream under our limits.

    Returns the document (None when empty), the recoverable errors (duplicate keys) and the line of
    each key down to field level, to point schema errors at lines.
    """
    loader = _Loader(data)
    errors: list[str] = []
    lines: dict[tuple[str, ...], int] = {}
    try:
        get = loader.get_event
        ev: Any = get()  # StreamStart
        ev = get()
        if isinstance(ev, yaml.StreamEndEvent):
            return None, errors, lines
        # ev is DocumentStart
        root: Any = None
        # Frames: [container, is_mapping, path, pending key (mappings), {key: line} seen (mappings)]
        stack: list[list[Any]] = []
        keys = 0

        def attach(value: Any) -> None:
            nonlocal root
            if not stack:
                root = value
                return
            frame = stack[-1]
            if frame[1]:
                frame[0][frame[3]] = value
                frame[3] = None
            else:
                frame[0].append(value)

        while True:
            ev = get()
            cls = type(ev)
            if cls is yaml.ScalarEvent:
                if ev.anchor is not None:
                    raise _Limit(f"{_where(ev.start_mark)}: YAML anchors and aliases are not allowed")
                if stack and stack[-1][1] and stack[-1][3] is None:
                    frame = stack[-1]
                    if ev.tag not in (None, "!", _STR):
                        raise _Limit(f"{_where(ev.start_mark)}: mapping keys must be plain strings")
                    key = ev.value
                    keys += 1
                    if keys > MAX_KEYS:
                        raise _Limit(f"more than {MAX_KEYS} keys")
                    if key in frame[4]:
                        errors.append(
                            f"{format_loc((*frame[2], key))}: duplicate key (line {ev.start_mark.line + 1}, "
                            f"first at line {frame[4][key] + 1})"
                        )
                        key = _Duplicate(key)
                    else:
                        frame[4][key] = ev.start_mark.line
                        if len(frame[2]) < 3:
                            lines.setdefault((*frame[2], key), ev.start_mark.line + 1)
                    frame[3] = key
                else:
                    attach(_scalar(ev))
            elif cls is yaml.MappingStartEvent or cls is yaml.SequenceStartEvent:
                if ev.anchor is not None:
                    raise _Limit(f"{_where(ev.start_mark)}: YAML anchors and aliases are not allowed")
                if ev.tag not in (None, "!", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"):
                    raise _Limit(f"{_where(ev.start_mark)}: tag {ev.tag!r} is not allowed")
                if stack and stack[-1][1] and stack[-1][3] is None:
                    raise _Limit(f"{_where(ev.start_mark)}: mapping keys must be plain strings")
                if len(stack) >= MAX_DEPTH:
                    raise _Limit(f"{_where(ev.start_mark)}: nesting deeper than {MAX_DEPTH} levels")
                if stack:
                    parent = stack[-1]
                    path = (*parent[2], str(parent[3])) if parent[1] else (*parent[2], len(parent[0]))
                else:
                    path = ()
                is_map = cls is yaml.MappingStartEvent
                container: Any = {} if is_map else []
                attach(container)
                stack.append([container, is_map, path, None, {} if is_map else None])
            elif cls is yaml.MappingEndEvent or cls is yaml.SequenceEndEvent:
                stack.pop()
            elif cls is yaml.AliasEvent:
                raise _Limit(f"{_where(ev.start_mark)}: YAML anchors and aliases are not allowed")
            elif cls is yaml.DocumentEndEvent:
                nxt: Any = get()
                if not isinstance(nxt, yaml.StreamEndEvent):
                    raise _Limit(f"{_where(nxt.start_mark)}: more than one YAML document")
                return root, errors, lines
            else:  # pragma: no cover - the parser emits nothing else inside a document
                raise _Limit(f"unexpected YAML event {cls.__name__}")
    finally:
        loader.dispose()


class _Duplicate(str):
    """A second occurrence of a key: stored under a distinct object so the first one is kept."""

    __slots__ = ()

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


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
        doc, errors, lines = _load(text)
    except _Limit as exc:
        raise FleetFileError(f"fleet.yaml refused: {exc}", hint=_HINT, errors=[str(exc)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f" at {_where(mark)}" if mark is not None else ""
        msg = f"fleet.yaml is not valid YAML{where}: {problem}"
        raise FleetFileError(msg, hint=_HINT, errors=[msg]) from None

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
    _strip_duplicates(doc)

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
    templates = doc["templates"] if isinstance(doc.get("templates"), dict) else {}
    modules = doc["modules"] if isinstance(doc.get("modules"), dict) else {}
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
        specs: dict[str, Any] = getattr(model, SECTION_BY_KIND[kind])
        resources[kind] = {name: dump_attributes(spec) for name, spec in specs.items()}
    return DesiredState(resources=resources, fleet=dump_attributes(model.fleet) if model.fleet else None)


def _strip_duplicates(node: Any) -> None:
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            for k in [k for k in cur if isinstance(k, _Duplicate)]:
                del cur[k]
            stack.extend(v for v in cur.values() if isinstance(v, dict | list))
        elif isinstance(cur, list):
            stack.extend(v for v in cur if isinstance(v, dict | list))


def _with_line(line: str, loc: tuple[Any, ...], lines: Mapping[tuple[str, ...], int]) -> str:
    for n in range(min(len(loc), 3), 0, -1):
        at = lines.get(tuple(str(p) for p in loc[:n]))
        if at is not None:
            return f"{line} (line {at})"
    return line
