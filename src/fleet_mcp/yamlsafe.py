"""The one hardened YAML reader, for policy files and fleet.yaml alike.

The document is read as an event stream and turned into plain values by a small builder instead of PyYAML's
constructor, so the limits hold *while* parsing, iteratively (deep nesting cannot blow the stack):

- anchors, aliases (alias bombs) and merge keys (`<<`) are refused;
- explicit tags are refused (or, with `core_tags`, all but the core scalar/collection tags);
- duplicate keys are reported (PyYAML silently keeps the last), with the line of both occurrences;
- nesting depth and the number of keys are capped; a second document is refused;
- scalars become str/int/float/bool/None only: dates stay text, .inf/.nan are refused.

Mapping keys are taken as their literal text (`yes:` is the key "yes"), or, with `plain_keys=False`, must
resolve to a string (`1:` or `yes:` is refused; quote it). Size caps on the raw bytes are the caller's (each
caller words its own refusal), as are YAML syntax errors (`yaml.YAMLError` propagates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

try:  # libyaml: ~10x faster event stream; the pure-Python parser behaves the same.
    from yaml import CSafeLoader as FastLoader
except ImportError:  # pragma: no cover - libyaml is present in our builds
    from yaml import SafeLoader as FastLoader  # type: ignore[assignment]

Path = tuple[str | int, ...]

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_CORE_TAGS = {_STR, "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool",
              "tag:yaml.org,2002:null", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_RESOLVERS: dict[Any, list[tuple[str, Any]]] = Resolver.yaml_implicit_resolvers
_CONSTRUCTOR = SafeConstructor()
_CONSTRUCT = {
    "tag:yaml.org,2002:int": _CONSTRUCTOR.construct_yaml_int,
    "tag:yaml.org,2002:float": _CONSTRUCTOR.construct_yaml_float,
    "tag:yaml.org,2002:bool": _CONSTRUCTOR.construct_yaml_bool,
    "tag:yaml.org,2002:null": _CONSTRUCTOR.construct_yaml_null,
}


class YamlRefused(Exception):
    """A structural limit that stops parsing at once (the rest cannot be trusted).

    `code` says which (anchor, alias, merge, tag, key, depth, keys, documents, value), `detail` the offending
    anchor, tag or value, `line`/`column` are 1-based (None when not tied to a place); `reason` is the
    message without its place, and str() prefixes it with "line L, column C: "."""

    def __init__(self, code: str, reason: str, mark: Any = None, detail: str | None = None) -> None:
        self.code = code
        self.reason = reason
        self.detail = detail
        self.line = mark.line + 1 if mark is not None else None
        self.column = mark.column + 1 if mark is not None else None
        super().__init__(f"line {self.line}, column {self.column}: {reason}" if mark is not None else reason)


@dataclass(frozen=True)
class DuplicateKey:
    path: Path  # where the second occurrence is (its parent's path plus the key)
    line: int
    first_line: int


@dataclass
class Loaded:
    document: Any  # None for an empty stream
    duplicates: list[DuplicateKey] = field(default_factory=list)
    #: 1-based line of each key (and, with `item_lines`, each sequence item) down to `line_depth` levels.
    lines: dict[Path, int] = field(default_factory=dict)


class _Duplicate(str):
    """A second occurrence of a key: stored under a distinct object so the first one is kept."""

    __slots__ = ()

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


def strip_duplicates(value: Any) -> None:
    """Drop the second occurrences of keys that `load` kept apart, so the first one stands alone."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for k in [k for k in v if type(k) is _Duplicate]:
                del v[k]
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def _resolve(value: str) -> str | None:
    resolvers = _RESOLVERS.get(value[0] if value else "", ())
    for rtag, regexp in (*resolvers, *_RESOLVERS.get(None, ())):
        if regexp.match(value):
            return rtag
    return None


def _scalar(ev: Any, core_tags: bool) -> Any:
    tag = ev.tag
    value = ev.value
    if tag is None or tag == "!":
        if not ev.implicit[0]:
            return value  # quoted: always a string
        tag = _resolve(value)
        if tag is None or tag == _TIMESTAMP or tag not in _CONSTRUCT:
            return value  # dates stay text (JSON-ready); '=' / '<<' have no meaning as values
    elif not core_tags:
        raise YamlRefused("tag", f"explicit YAML tags are not allowed ({tag})", ev.start_mark, tag)
    elif tag not in _CORE_TAGS or tag.endswith(("map", "seq")):
        raise YamlRefused("tag", f"tag {tag!r} is not allowed", ev.start_mark, tag)
    elif tag == _STR:
        return value
    try:
        out = _CONSTRUCT[tag](ScalarNode(tag, value))
    except (ValueError, yaml.YAMLError):
        raise YamlRefused("value", f"{value[:40]!r} is not a valid {tag.rsplit(':', 1)[-1]}", ev.start_mark,
                          value[:40]) from None
    if isinstance(out, float) and not math.isfinite(out):
        raise YamlRefused("value", "non-finite numbers (.inf, .nan) are not allowed", ev.start_mark, value[:40])
    return out


def load(text: str | bytes, *, max_depth: int, max_keys: int, line_depth: int | None = None,
         item_lines: bool = False, plain_keys: bool = True, core_tags: bool = True, fast: bool = True) -> Loaded:
    """Build plain values from one YAML document under the limits; see the module docstring.

    `line_depth` bounds how deep key lines are recorded (None: everywhere); `fast` uses libyaml when present
    (its syntax-error messages differ slightly from the pure-Python parser's)."""
    loader = (FastLoader if fast else yaml.SafeLoader)(text)
    out = Loaded(None)
    lines = out.lines
    try:
        get = loader.get_event
        ev = get()  # StreamStart
        ev = get()
        if isinstance(ev, yaml.StreamEndEvent):
            return out
        # ev is DocumentStart
        root: Any = None
        # Frames: [container, is_mapping, path, pending key (mappings), {key: line} seen (mappings)]
        stack: list[list[Any]] = []
        keys = 0
        started = False

        def attach(value: Any, mark: Any) -> None:
            nonlocal root
            if not stack:
                root = value
                return
            frame = stack[-1]
            if frame[1]:
                frame[0][frame[3]] = value
                frame[3] = None
            else:
                if item_lines and (line_depth is None or len(frame[2]) < line_depth):
                    lines.setdefault((*frame[2], len(frame[0])), mark.line + 1)
                frame[0].append(value)

        while True:
            ev = get()
            cls = type(ev)
            if not started and cls is not yaml.DocumentEndEvent:
                started = True
                lines.setdefault((), ev.start_mark.line + 1)
            if cls is yaml.ScalarEvent:
                if ev.anchor is not None:
                    raise YamlRefused("anchor", "YAML anchors and aliases are not allowed", ev.start_mark, ev.anchor)
                if stack and stack[-1][1] and stack[-1][3] is None:
                    frame = stack[-1]
                    key = ev.value
                    if ev.tag not in (None, "!", _STR):
                        if not core_tags:
                            raise YamlRefused("tag", f"explicit YAML tags are not allowed ({ev.tag})",
                                              ev.start_mark, ev.tag)
                        raise YamlRefused("key", "mapping keys must be plain strings", ev.start_mark, key)
                    if ev.tag is None and ev.implicit[0]:
                        resolved = _resolve(key)
                        if resolved == _MERGE:
                            raise YamlRefused("merge", "merge keys (<<) are not allowed", ev.start_mark, key)
                        if not plain_keys and resolved not in (None, _STR):
                            raise YamlRefused("key", f"key {key!r} must be a string (quote it)", ev.start_mark, key)
                    keys += 1
                    if keys > max_keys:
                        raise YamlRefused("keys", f"more than {max_keys} keys", None, str(max_keys))
                    if key in frame[4]:
                        out.duplicates.append(DuplicateKey((*frame[2], key), ev.start_mark.line + 1,
                                                           frame[4][key] + 1))
                        key = _Duplicate(key)
                    else:
                        frame[4][key] = ev.start_mark.line
                        if line_depth is None or len(frame[2]) < line_depth:
                            lines.setdefault((*frame[2], key), ev.start_mark.line + 1)
                    frame[3] = key
                else:
                    attach(_scalar(ev, core_tags), ev.start_mark)
            elif cls is yaml.MappingStartEvent or cls is yaml.SequenceStartEvent:
                if ev.anchor is not None:
                    raise YamlRefused("anchor", "YAML anchors and aliases are not allowed", ev.start_mark, ev.anchor)
                if ev.tag not in (None, "!", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq") or (
                        ev.tag not in (None, "!") and not core_tags):
                    raise YamlRefused("tag", f"tag {ev.tag!r} is not allowed" if core_tags else
                                      f"explicit YAML tags are not allowed ({ev.tag})", ev.start_mark, ev.tag)
                if stack and stack[-1][1] and stack[-1][3] is None:
                    raise YamlRefused("key", "mapping keys must be plain strings", ev.start_mark)
                if len(stack) >= max_depth:
                    raise YamlRefused("depth", f"nesting deeper than {max_depth} levels", ev.start_mark,
                                      str(max_depth))
                if stack:
                    parent = stack[-1]
                    path = (*parent[2], str(parent[3])) if parent[1] else (*parent[2], len(parent[0]))
                else:
                    path = ()
                is_map = cls is yaml.MappingStartEvent
                container: Any = {} if is_map else []
                attach(container, ev.start_mark)
                stack.append([container, is_map, path, None, {} if is_map else None])
            elif cls is yaml.MappingEndEvent or cls is yaml.SequenceEndEvent:
                stack.pop()
            elif cls is yaml.AliasEvent:
                raise YamlRefused("alias", "YAML anchors and aliases are not allowed", ev.start_mark, ev.anchor)
            elif cls is yaml.DocumentEndEvent:
                nxt = get()
                if not isinstance(nxt, yaml.StreamEndEvent):
                    raise YamlRefused("documents", "more than one YAML document", nxt.start_mark)
                out.document = root
                return out
            else:  # pragma: no cover - the parser emits nothing else inside a document
                raise YamlRefused("event", f"unexpected YAML event {cls.__name__}")
    finally:
        loader.dispose()
