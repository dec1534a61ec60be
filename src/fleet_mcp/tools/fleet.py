"""Live fleet state tools: list, get, put, delete templates/modules/provider configs; assign modules."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleet_mcp import events, live
from fleet_mcp.context import ToolContext
from fleet_mcp.fleet.spec import ModuleSpec, ProviderConfigSpec, TemplateSpec
from fleet_mcp.registry import NoArgs, tool

FLEET: dict[str, Any] = {"toolset": "fleet"}


class Item(BaseModel):
    kind: str
    name: str
    spec: dict[str, Any]
    revision: int
    fingerprint: str
    managed_by: str
    drift_suppressed_until: str | None = None
    created_at: str | None = None
    updated_at: str | None = None


class NameArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Name of the resource.", min_length=1, max_length=257)


class ItemsOut(BaseModel):
    items: list[Item]
    count: int


class ItemOut(BaseModel):
    item: Item


class DeletedOut(BaseModel):
    deleted: bool
    kind: str
    name: str


KIND_LABEL = {"template": "template", "module": "module", "provider_config": "provider config",
              "assignment": "assignment"}
SPEC_MODEL: dict[str, type[BaseModel]] = {"template": TemplateSpec, "module": ModuleSpec,
                                          "provider_config": ProviderConfigSpec}


def _declare_kind(kind: str) -> None:
    label = KIND_LABEL[kind]

    async def list_items(ctx: ToolContext, args: NoArgs) -> ItemsOut:
        rows = await live.list_resources(ctx.session, ctx.principal.account_id, kind)
        return ItemsOut(items=[Item(**live.to_item(kind, r)) for r in rows], count=len(rows))

    list_items.__doc__ = f"List live {label}s with revision, fingerprint and managed_by."
    list_items.__annotations__ = {"ctx": ToolContext, "args": NoArgs, "return": ItemsOut}
    tool(name=f"system_list_{kind}s", title=f"List {label}s", permission="system.fleet.read", read_only=True,
         idempotent=True, **FLEET)(list_items)

    if kind == "assignment":
        return
    spec_model = SPEC_MODEL[kind]

    async def get_item(ctx: ToolContext, args: NameArgs) -> ItemOut:
        row = await live.get(ctx.session, ctx.principal.account_id, kind, args.name)
        return ItemOut(item=Item(**live.to_item(kind, row)))

    get_item.__doc__ = f"Get one live {label} by name."
    get_item.__annotations__ = {"ctx": ToolContext, "args": NameArgs, "return": ItemOut}
    tool(name=f"system_get_{kind}", title=f"Get a {label}", permission="system.fleet.read", read_only=True,
         idempotent=True, **FLEET)(get_item)

    put_args = type(
        f"Put{spec_model.__name__}Args",
        (BaseModel,),
        {
            "__annotations__": {"name": str, "spec": spec_model},
            "model_config": ConfigDict(extra="forbid"),
            "name": Field(description=f"Name of the {label}.", min_length=1, max_length=128),
            "spec": Field(description=f"The {label}'s attributes, as in fleet.yaml."),
            "__module__": __name__,
        },
    )

    async def put_item(ctx: ToolContext, args: Any) -> ItemOut:
        row, changed = await live.put(ctx.session, ctx.principal.account_id, kind, args.name, args.spec)
        if changed:
            await ctx.emit(f"fleet.{kind}.changed", payload={"name": args.name, "revision": row.revision})
        return ItemOut(item=Item(**live.to_item(kind, row)))

    put_item.__doc__ = (f"Create or replace a live {label} (manual edit). Unchanged attributes keep the revision; "
                        "GitOps proposals based on an older fingerprint become stale.")
    put_item.__annotations__ = {"ctx": ToolContext, "args": put_args, "return": ItemOut}
    tool(name=f"system_put_{kind}", title=f"Put a {label}", permission="system.fleet.write", idempotent=True,
         **FLEET)(put_item)

    async def delete_item(ctx: ToolContext, args: NameArgs) -> DeletedOut:
        await live.delete(ctx.session, ctx.principal.account_id, kind, args.name)
        await ctx.emit(f"fleet.{kind}.deleted", severity="low", payload={"name": args.name})
        return DeletedOut(deleted=True, kind=kind, name=args.name)

    delete_item.__doc__ = f"Delete a live {label}. Refused while assignments still use it."
    delete_item.__annotations__ = {"ctx": ToolContext, "args": NameArgs, "return": DeletedOut}
    tool(name=f"system_delete_{kind}", title=f"Delete a {label}", permission="system.fleet.write",
         destructive=True, **FLEET)(delete_item)


for _kind in ("template", "module", "provider_config", "assignment"):
    _declare_kind(_kind)


class AssignArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template: str = Field(description="Template name.", min_length=1, max_length=128)
    module: str = Field(description="Module name.", min_length=1, max_length=128)
    enabled: bool = Field(default=True, description="Whether the assignment is active.")
    priority: int | None = Field(default=None, description="Ordering priority; default 0.")
    config: dict[str, Any] | None = Field(default=None, description="Assignment-specific configuration map.")


class UnassignArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template: str = Field(description="Template name.", min_length=1, max_length=128)
    module: str = Field(description="Module name.", min_length=1, max_length=128)


class AssignmentOut(BaseModel):
    assignment: Item


@tool(name="system_assign_module_to_template", title="Assign a module to a template",
      permission="system.fleet.write", idempotent=True, **FLEET)
async def assign_module(ctx: ToolContext, args: AssignArgs) -> AssignmentOut:
    """Assign a module to a template (creates or replaces the assignment "<template>:<module>")."""
    name = live.assignment_key(args.template, args.module)
    spec: dict[str, Any] = {"enabled": args.enabled}
    if args.priority is not None:
        spec["priority"] = args.priority
    if args.config is not None:
        spec["config"] = args.config
    row, changed = await live.put(ctx.session, ctx.principal.account_id, "assignment", name, spec)
    if changed:
        await ctx.emit("fleet.assignment.changed", payload={"name": name, "revision": row.revision})
    return AssignmentOut(assignment=Item(**live.to_item("assignment", row)))


@tool(name="system_unassign_module_from_template", title="Unassign a module from a template",
      permission="system.fleet.write", destructive=True, **FLEET)
async def unassign_module(ctx: ToolContext, args: UnassignArgs) -> DeletedOut:
    """Remove the assignment of a module to a template."""
    name = live.assignment_key(args.template, args.module)
    await live.delete(ctx.session, ctx.principal.account_id, "assignment", name)
    await ctx.emit("fleet.assignment.deleted", severity="low", payload={"name": name})
    return DeletedOut(deleted=True, kind="assignment", name=name)


class SignalsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str | None = Field(default=None, description="Only events of this kind (`*` wildcards allowed).",
                             max_length=80)
    limit: int = Field(default=50, ge=1, le=1000, description="Most recent events to return.")


class EventOut(BaseModel):
    id: int
    kind: str
    severity: str
    payload: dict[str, Any]
    correlation_id: str | None
    created_at: str


class SignalsOut(BaseModel):
    events: list[EventOut]
    count: int


@tool(name="system_recent_signals", title="Recent fleet signals", permission="system.fleet.read", read_only=True,
      idempotent=True, **FLEET)
async def recent_signals(ctx: ToolContext, args: SignalsArgs) -> SignalsOut:
    """Recent fleet events (drift detected/resolved, failed accepts, rotations, changes), newest first."""
    rows = await events.recent(ctx.session, account_id=ctx.principal.account_id, kind=args.kind, limit=args.limit)
    out = [EventOut(id=e.id, kind=e.kind, severity=e.severity, payload=e.payload, correlation_id=e.correlation_id,
                    created_at=e.created_at.isoformat()) for e in rows]
    return SignalsOut(events=out, count=len(out))
