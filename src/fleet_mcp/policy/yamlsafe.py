"""Strict YAML reading for policy files: plain data plus the line of every key and item.

Refuses anchors, aliases, explicit tags, merge keys, duplicate and non-string keys, several documents,
oversized or over-deep input (alias bombs are cheap to write and explode later; PyYAML silently keeps the
last of two duplicate keys).
"""

from __future__ import annotations

from typing import Any

import yaml

from fleet_mcp.policy.errors import PolicyError

Loc = tuple[str | int, ...]

MAX_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _line(mark: Any) -> int | None:
    return mark.line + 1 if mark is not None else None


def _precheck(text: str, source: str) -> None:
    """Walk the event stream (iteratively: deep nesting cannot blow the stack here)."""
    depth = 0
    nodes = 0
    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(ev, yaml.AliasEvent):
            raise PolicyError.single(
                source, f"aliases are not allowed (*{ev.anchor})", line=_line(ev.start_mark)
            )
        if isinstance(ev, yaml.NodeEvent):
            if ev.anchor is not None:
                raise PolicyError.single(
                    source, f"anchors are not allowed (&{ev.anchor})", line=_line(ev.start_mark)
                )
            tag = getattr(ev, "tag", None)
            if tag is not None:
                raise PolicyError.single(
                    source, f"explicit YAML tags are not allowed ({tag})", line=_line(ev.start_mark)
                )
            nodes += 1
            if nodes > MAX_NODES:
                raise PolicyError.single(
                    source, f"too many YAML nodes (limit {MAX_NODES})", line=_line(ev.start_mark)
                )
        if isinstance(ev, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise PolicyError.single(
                    source, f"nesting deeper than {MAX_DEPTH} levels", line=_line(ev.start_mark)
                )
        elif isinstance(ev, yaml.CollectionEndEvent):
            depth -= 1


def _convert(node: yaml.Node, loc: Loc, lines: dict[Loc, int], loader: yaml.SafeLoader, source: str) -> Any:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise PolicyError.single(source, "mapping keys must be plain strings", line=line)
            if key_node.tag == _MERGE_TAG:
                raise PolicyError.single(source, "merge keys (<<) are not allowed", line=line)
            key = loader.construct_object(key_node)
            if not isinstance(key, str):
                raise PolicyError.single(
                    source, f"key {key_node.value!r} must be a string (quote it)", line=line
                )
            if key in first:
                raise PolicyError.single(
                    source, f"duplicate key '{key}' (first at line {first[key]})", line=line
                )
            first[key] = line
            lines[(*loc, key)] = line
            out[key] = _convert(value_node, (*loc, key), lines, loader, source)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*loc, i), lines, loader, source) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def read_yaml(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    """Parse one YAML document into plain data and a map from data location to 1-based line."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise PolicyError.single(source, f"the policy file is larger than {MAX_BYTES} bytes")
    lines: dict[Loc, int] = {}
    try:
        _precheck(text, source)
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                raise PolicyError.single(source, "the policy file is empty")
            data = _convert(root, (), lines, loader, source)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = exc.problem or exc.context or "malformed YAML"
        if exc.context and exc.problem:
            detail = f"{exc.problem} ({exc.context})"
        raise PolicyError.single(source, f"YAML error: {detail}", line=_line(mark)) from None
    except yaml.YAMLError as exc:
        raise PolicyError.single(source, f"YAML error: {exc}") from None
    return data, lines
