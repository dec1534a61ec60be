"""The one place every `system_*` tool is declared: name, title, description, models, annotations,
permission and toolset. The MCP server, the policy catalog and the `tools/` contracts are built from it."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp_types import ToolAnnotations
from pydantic import BaseModel, ConfigDict

from fleet_mcp.schema_marks import unmarked_secrets

if TYPE_CHECKING:
    from fleet_mcp.context import ToolContext

TOOLSETS = ("fleet", "gitops", "federation", "vault", "approvals", "audit")

Handler = Callable[["ToolContext", Any], Awaitable[BaseModel]]
Summary = Callable[["ToolContext", Any], Awaitable[str]]
#: Slow outside work (a git fetch) done before the unit of work opens, so no database lock is held
#: while it runs: it gets a context whose session is read-only; the handler finds its result in
#: `ctx.prepared`.
Prepare = Callable[["ToolContext", Any], Awaitable[Any]]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    permission: str
    toolset: str
    read_only: bool
    destructive: bool
    idempotent: bool
    open_world: bool
    handler: Handler
    summary: Summary | None = None
    prepare: Prepare | None = None

    @property
    def annotations(self) -> ToolAnnotations:
        return ToolAnnotations(
            title=self.title,
            read_only_hint=self.read_only,
            destructive_hint=self.destructive,
            idempotent_hint=self.idempotent,
            open_world_hint=self.open_world,
        )

    def input_schema(self) -> dict[str, Any]:
        schema = inline_refs(self.input_model.model_json_schema())
        schema.setdefault("properties", {})
        schema["additionalProperties"] = False
        return schema

    def output_schema(self) -> dict[str, Any]:
        return inline_refs(self.output_model.model_json_schema())

    def contract(self) -> dict[str, Any]:
        """The published JSON contract of this tool (what `tools/<name>.json` holds)."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "annotations": {
                "readOnlyHint": self.read_only,
                "destructiveHint": self.destructive,
                "idempotentHint": self.idempotent,
                "openWorldHint": self.open_world,
            },
            "permission": self.permission,
            "toolset": self.toolset,
            "inputSchema": self.input_schema(),
            "outputSchema": self.output_schema(),
        }


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with every local `$ref` replaced by its definition (no `$defs` left). Some MCP clients
    do not resolve references, and validators check a self-contained schema several times faster; the
    tools' models are not recursive (a recursive one keeps its `$defs`)."""
    defs = schema.get("$defs", {})

    def walk(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [walk(v, seen) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.rsplit("/", 1)[-1]
            if name in seen:
                raise RecursionError(name)
            merged = {**walk(defs[name], (*seen, name)), **{k: walk(v, seen) for k, v in node.items() if k != "$ref"}}
            return merged
        return {k: walk(v, seen) for k, v in node.items() if k != "$defs"}

    try:
        return walk(schema, ())
    except RecursionError:
        return schema


# Base of tool input models: unknown arguments are refused (no docstring: it would enter every schema).
class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoArgs(Args):
    pass


REGISTRY: dict[str, ToolSpec] = {}


def tool(
    *,
    name: str,
    title: str,
    permission: str,
    toolset: str,
    read_only: bool = False,
    destructive: bool = False,
    idempotent: bool = False,
    open_world: bool = False,
    summary: Summary | None = None,
    prepare: Prepare | None = None,
) -> Callable[[Handler], Handler]:
    """Declare a tool. The handler's docstring is its description; its annotations give the models."""
    if not name.startswith("system_"):
        raise ValueError(f"tool names start with system_: {name}")
    if toolset not in TOOLSETS:
        raise ValueError(f"unknown toolset {toolset!r} for {name}")
    if read_only and destructive:
        raise ValueError(f"{name}: a read-only tool cannot be destructive")

    def register(fn: Handler) -> Handler:
        hints = typing.get_type_hints(fn)
        params = list(inspect.signature(fn).parameters)
        if len(params) != 2:
            raise TypeError(f"{name}: handler must take (ctx, args)")
        input_model = hints[params[1]]
        output_model = hints["return"]
        for m in (input_model, output_model):
            if not (isinstance(m, type) and issubclass(m, BaseModel)):
                raise TypeError(f"{name}: input and output must be pydantic models")
        if unmarked := unmarked_secrets(output_model, output_model.__name__):
            raise TypeError(f"{name}: result fields that look secret must be marked SECRET: {', '.join(unmarked)}")
        if input_model.model_config.get("extra") != "forbid":
            raise TypeError(f"{name}: input model {input_model.__name__} must set extra='forbid'")
        doc = inspect.cleandoc(fn.__doc__ or "")
        if not doc:
            raise TypeError(f"{name}: handler needs a docstring (it becomes the description)")
        if name in REGISTRY and REGISTRY[name].handler is not fn:
            raise ValueError(f"tool {name} declared twice")
        REGISTRY[name] = ToolSpec(
            name=name,
            title=title,
            description=doc,
            input_model=input_model,
            output_model=output_model,
            permission=permission,
            toolset=toolset,
            read_only=read_only,
            destructive=destructive,
            idempotent=idempotent,
            open_world=open_world,
            handler=fn,
            summary=summary,
            prepare=prepare,
        )
        return fn

    return register


def load_tools() -> dict[str, ToolSpec]:
    """Import every tool module (which registers its tools) and return the registry."""
    import fleet_mcp.tools  # noqa: F401

    return REGISTRY


def select(*, read_only_only: bool = False, toolsets: set[str] | None = None) -> list[ToolSpec]:
    specs = sorted(load_tools().values(), key=lambda s: s.name)
    if read_only_only:
        specs = [s for s in specs if s.read_only]
    if toolsets:
        unknown = toolsets - set(TOOLSETS)
        if unknown:
            raise ValueError(f"unknown toolsets: {', '.join(sorted(unknown))}; known: {', '.join(TOOLSETS)}")
        specs = [s for s in specs if s.toolset in toolsets]
    return specs


def catalog() -> dict[str, Any]:
    """Tool facts for the policy engine."""
    from fleet_mcp.policy.model import ToolFacts

    return {
        s.name: ToolFacts(
            name=s.name,
            permission=s.permission,
            toolset=s.toolset,
            read_only=s.read_only,
            destructive=s.destructive,
            idempotent=s.idempotent,
            arg_names=frozenset(s.input_model.model_fields),
        )
        for s in load_tools().values()
    }
