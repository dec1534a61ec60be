"""Strict YAML reading for policy files: plain data plus the line of every key and item.

The parsing and its limits are `fleet_mcp.yamlsafe`'s (shared with fleet.yaml): anchors, aliases, explicit
tags, merge keys, duplicate and non-string keys, several documents, over-deep input and too many keys are
refused. Here: the size cap, and every refusal worded as a PolicyError with its line.
"""

from __future__ import annotations

from typing import Any

import yaml

from fleet_mcp import yamlsafe
from fleet_mcp.policy.errors import PolicyError

Loc = tuple[str | int, ...]

MAX_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000


def _line(mark: Any) -> int | None:
    return mark.line + 1 if mark is not None else None


def _refusal(exc: yamlsafe.YamlRefused) -> str:
    """The policy's wording of a structural refusal."""
    if exc.code == "anchor":
        return f"anchors are not allowed (&{exc.detail})"
    if exc.code == "alias":
        return f"aliases are not allowed (*{exc.detail})"
    if exc.code == "documents":
        return "expected a single document"
    if exc.code == "keys":
        return f"too many YAML keys (limit {MAX_NODES})"
    return exc.reason


def read_yaml(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    """Parse one YAML document into plain data and a map from data location to 1-based line."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise PolicyError.single(source, f"the policy file is larger than {MAX_BYTES} bytes")
    try:
        # The pure-Python parser: its syntax errors carry the marks the policy messages point at.
        loaded = yamlsafe.load(text, max_depth=MAX_DEPTH, max_keys=MAX_NODES, item_lines=True, plain_keys=False,
                               core_tags=False, fast=False)
    except yamlsafe.YamlRefused as exc:
        raise PolicyError.single(source, _refusal(exc), line=exc.line) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = exc.problem or exc.context or "malformed YAML"
        if exc.context and exc.problem:
            detail = f"{exc.problem} ({exc.context})"
        raise PolicyError.single(source, f"YAML error: {detail}", line=_line(mark)) from None
    except yaml.YAMLError as exc:
        raise PolicyError.single(source, f"YAML error: {exc}") from None
    if loaded.duplicates:
        d = loaded.duplicates[0]
        raise PolicyError.single(source, f"duplicate key '{d.path[-1]}' (first at line {d.first_line})", line=d.line)
    if loaded.document is None:
        raise PolicyError.single(source, "the policy file is empty")
    return loaded.document, loaded.lines
