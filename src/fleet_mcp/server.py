"""Builds the MCP server from the registry: every tool is a thin adapter onto the gate."""

from __future__ import annotations

import contextvars
import hashlib
import inspect
import logging
import secrets
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    DeclinedElicitation,
    Elicit,
    ElicitationResult,
    MCPServer,
    RequestStateSecurity,
    Resolve,
)
from mcp.server.request_state import AESGCMRequestStateCodec
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel, Field

from fleet_mcp import __version__
from fleet_mcp.app import App
from fleet_mcp.errors import FleetError, Unauthenticated
from fleet_mcp.gate import CallOutcome, Gate
from fleet_mcp.principals import Caller
from fleet_mcp.registry import ToolSpec, select

log = logging.getLogger(__name__)

INSTRUCTIONS = """fleet-mcp runs fleet operations that must never happen by accident: GitOps reconciliation,
SD-WAN federation and Vault transit pepper rotation. Every call passes an intervention policy: it may run,
be denied (status "denied"), need your confirmation in the client (elicitation), or be queued for another
principal (status "approval_required" with an approval_id; check it with system_approvals_get)."""


class ApprovalForm(BaseModel):
    """What the human answers in the client."""

    approve: bool = Field(description="Run this operation now?")


class _NoQuestion(BaseModel):
    """The resolver's answer when the policy needs no question."""


def _caller_for(app: App, ctx: Context) -> Caller:
    headers = ctx.headers
    if headers is None:
        if app.stdio_caller is None:
            raise Unauthenticated("the server has no stdio principal configured")
        return app.stdio_caller
    from fleet_mcp.http import caller_from_headers

    return caller_from_headers(headers)


def _raw_arguments(ctx: Context, fallback: dict[str, Any]) -> dict[str, Any]:
    try:
        params = ctx.request_context.params
    except (AttributeError, ValueError, RuntimeError):
        params = None
    if isinstance(params, dict) and isinstance(params.get("arguments"), dict):
        return dict(params["arguments"])
    return fallback


def _can_elicit(ctx: Context) -> bool:
    caps = ctx.client_capabilities
    return bool(caps is not None and getattr(caps, "elicitation", None) is not None)


#: Digest of the sealed requestState this request carried (2026-07-28), set as the state is unsealed.
_sealed_instance: contextvars.ContextVar[str | None] = contextvars.ContextVar("fleet_mcp_sealed_state", default=None)


class _InstanceCodec:
    """The SDK's AES-GCM request-state codec, noting which sealed instance each request carried: every
    seal is fresh (random nonce), so one human answer is one instance, whatever the question's text."""

    def __init__(self, keys: list[bytes]) -> None:
        self._codec = AESGCMRequestStateCodec(keys)

    def seal(self, payload: bytes) -> str:
        return self._codec.seal(payload)

    def unseal(self, token: str) -> bytes:
        payload = self._codec.unseal(token)
        _sealed_instance.set(hashlib.sha256(token.encode()).hexdigest())
        return payload


def elicitation_key(instance: str, caller: Caller) -> str:
    """Identity of one human answer: the sealed state instance it rode on, for this caller."""
    return hashlib.sha256(f"{caller.qualified}\x00{instance}".encode()).hexdigest()[:32]


def _elicitation_key(ctx: Context, caller: Caller) -> str:
    """On 2026-07-28 the answer rides the sealed request_state, which a client could resend: single use
    binds to that sealed instance (and the caller), never to the question's text. Mid-call answers
    (2025-11-25) are never resent, so a random key suffices."""
    instance = _sealed_instance.get() if ctx.request_state else None
    return elicitation_key(instance or secrets.token_hex(16), caller)


def _bind_state_principal(rctx: Any) -> str | None:
    """Bind sealed request_state to the bearer token that asked (HTTP); stdio has one principal."""
    headers = getattr(getattr(rctx, "request", None), "headers", None)
    if not headers:
        return None
    from fleet_mcp.http import _bearer
    from fleet_mcp.principals import token_digest

    token = _bearer(headers)
    return token_digest(token) if token else "anonymous"


def to_result(outcome: CallOutcome) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=outcome.text())],
        structured_content=outcome.data,
        is_error=not outcome.ok,
    )


def _signature_params(spec: ToolSpec) -> list[inspect.Parameter]:
    """Permissive parameters: the SDK passes arguments through untouched and the gate validates them
    once against the registry's model (the SDK's own errors would echo input values, secrets included,
    and would bypass the audit). The published schema is the registry's, set after registration."""
    return [
        inspect.Parameter(fname, inspect.Parameter.KEYWORD_ONLY, annotation=Any, default=None)
        for fname in spec.input_model.model_fields
    ]


def _make_tool(app: App, gate: Gate, spec: ToolSpec) -> Any:
    """One adapter per tool: a resolver that may ask the human, and a body that calls the gate."""

    async def ask(ctx: Context, **kwargs: Any) -> Any:
        if not _can_elicit(ctx) or app.stateless_http:
            return _NoQuestion()  # nobody to ask: the gate queues or denies, never elicits
        try:
            caller = _caller_for(app, ctx)
            args = gate.parse(spec, _raw_arguments(ctx, kwargs))
        except (FleetError, ValueError):
            return _NoQuestion()  # the body reports it
        verdict = gate.evaluate(spec, caller, args, can_elicit=_can_elicit(ctx))
        if verdict.action != "elicit":
            return _NoQuestion()
        summary = await gate.summary(spec, caller, args)
        return Elicit(gate.elicitation_message(spec, args, verdict, summary), ApprovalForm)

    ask.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context), *_signature_params(spec)]
    )
    ask.__annotations__ = {p.name: p.annotation for p in ask.__signature__.parameters.values()}  # type: ignore[attr-defined]
    ask.__name__ = f"ask_{spec.name}"

    async def body(ctx: Context, approval: Any = None, **kwargs: Any) -> CallToolResult:
        try:
            caller = _caller_for(app, ctx)
        except FleetError as exc:
            return to_result(CallOutcome(False, {"status": "denied", "error": exc.to_dict()}, str(exc)))
        elicited: str | None = None
        if isinstance(approval, AcceptedElicitation) and isinstance(approval.data, ApprovalForm):
            elicited = "accept" if approval.data.approve else "decline"
        elif isinstance(approval, DeclinedElicitation):
            elicited = "decline"
        elif approval is not None and not isinstance(approval, AcceptedElicitation):
            elicited = "cancel"

        async def progress(done: float, total: float | None, message: str | None) -> None:
            await ctx.report_progress(done, total, message)

        outcome = await gate.call(
            spec, caller, _raw_arguments(ctx, kwargs), can_elicit=_can_elicit(ctx), elicited=elicited,
            progress=progress, elicitation_key=_elicitation_key(ctx, caller) if elicited == "accept" else None,
        )
        return to_result(outcome)

    body.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context),
            inspect.Parameter(
                "approval", inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[ElicitationResult[ApprovalForm], Resolve(ask)],
            ),
            *_signature_params(spec),
        ],
        return_annotation=Annotated[CallToolResult, spec.output_model],
    )
    body.__annotations__ = {p.name: p.annotation for p in body.__signature__.parameters.values()}  # type: ignore[attr-defined]
    body.__annotations__["return"] = body.__signature__.return_annotation  # type: ignore[attr-defined]
    body.__name__ = spec.name
    body.__doc__ = spec.description
    return body


def build_server(
    app: App, *, read_only: bool = False, toolsets: set[str] | None = None
) -> tuple[MCPServer, Gate]:
    gate = app.gate
    server = MCPServer(
        name="fleet-mcp", title="fleet-mcp", version=__version__, instructions=INSTRUCTIONS,
        log_level=app.settings.log_level.upper(),  # type: ignore[arg-type]
        request_state_security=RequestStateSecurity(codec=_InstanceCodec(app.request_state_keys()),
                                                    bind_principal=_bind_state_principal, ttl=600.0,
                                                    audience="fleet-mcp"),
    )
    for spec in select(read_only_only=read_only, toolsets=toolsets):
        server.add_tool(_make_tool(app, gate, spec), name=spec.name, title=spec.title,
                        description=spec.description, annotations=spec.annotations)
        # Publish the registry's own schemas (unknown arguments are refused by the gate; no $refs).
        registered = server._tool_manager.get_tool(spec.name)
        if registered is not None:
            registered.parameters = spec.input_schema()
            registered.fn_metadata.output_schema = spec.output_schema()
    from fleet_mcp.resources import register_resources

    register_resources(server, app, gate)
    return server, gate


# -- stdio with request limits ------------------------------------------------------------------------------
#: The largest JSON-RPC message accepted on stdin, as over HTTP (the SDK's request body limit, 4 MiB).
MAX_STDIO_MESSAGE_BYTES = 4 * 1024 * 1024
_DISCARD_CHUNK = 64 * 1024


def _rpc_error(code: int, message: str, msg_id: Any = None) -> Any:
    import mcp_types as types
    from mcp.shared.message import SessionMessage

    return SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=msg_id,
                                             error=types.ErrorData(code=code, message=message)))


class _BoundedStdin:
    """The lines of stdin for the SDK's stdio transport, each at most `limit` bytes and each a well-formed
    JSON-RPC message. A line that is too long is discarded as it streams in (never held whole) and answered
    with -32600; a line that is not JSON (bad syntax, nesting deeper than the parser allows) with -32700;
    JSON that is not a JSON-RPC message with -32600. The SDK would drop all of these without a reply."""

    def __init__(self, raw: Any, limit: int = MAX_STDIO_MESSAGE_BYTES) -> None:
        self._raw = raw
        self._limit = limit
        self._ready = anyio.Event()
        self._reply: Any = None

    def attach(self, write_stream: Any) -> None:
        """Where refusals go: the transport's own write stream, so they never interleave with replies."""
        self._reply = write_stream
        self._ready.set()

    def __aiter__(self) -> _BoundedStdin:
        return self

    def _read_line(self) -> tuple[bytes, bool]:
        """One line (without its size ever exceeding the limit in memory) and whether it was too long."""
        line = self._raw.readline(self._limit + 1)
        if len(line) <= self._limit or line.endswith(b"\n"):
            return line, False
        while True:  # discard the rest of the oversized line
            chunk = self._raw.readline(_DISCARD_CHUNK)
            if not chunk or chunk.endswith(b"\n"):
                return b"", True

    async def __anext__(self) -> str:
        import mcp_types as types
        from pydantic import ValidationError

        while True:
            raw, too_long = await anyio.to_thread.run_sync(self._read_line, abandon_on_cancel=True)
            if too_long:
                await self._refuse(-32600, f"message larger than {self._limit} bytes; nothing was read from it")
                continue
            if not raw:
                raise StopAsyncIteration
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            try:
                types.jsonrpc_message_adapter.validate_json(line, by_name=False)
            except ValidationError as exc:
                if any(e["type"] == "json_invalid" for e in exc.errors(include_url=False, include_input=False)):
                    await self._refuse(-32700, "parse error: not valid JSON, or nested too deeply")
                else:
                    await self._refuse(-32600, "invalid request: not a JSON-RPC 2.0 message", _request_id(line))
                continue
            except Exception:  # noqa: BLE001 - whatever the parser raises, the client gets an answer
                await self._refuse(-32700, "parse error")
                continue
            return line

    async def _refuse(self, code: int, message: str, msg_id: Any = None) -> None:
        log.warning("stdio: refused a message (%s)", message)
        await self._ready.wait()
        await self._reply.send(_rpc_error(code, message, msg_id))


def _request_id(line: str) -> Any:
    import json

    try:
        value = json.loads(line)
    except Exception:  # noqa: BLE001
        return None
    msg_id = value.get("id") if isinstance(value, dict) else None
    return msg_id if isinstance(msg_id, str | int) and not isinstance(msg_id, bool) else None


def _claim_stdin() -> tuple[Any, Any]:
    """stdin's binary stream, with fd 0 diverted to the null device while we serve (as the SDK does, so
    child processes read EOF instead of stealing protocol bytes); returns (stream, restore)."""
    import sys

    try:
        from mcp.server.stdio import _claim_fd, _open_stdin_diversion

        return _claim_fd(0, sys.stdin, "rb", _open_stdin_diversion)
    except ImportError:  # pragma: no cover - the SDK moved its helpers; serve fd 0 in place
        return sys.stdin.buffer, None


async def run_stdio(server: MCPServer, *, limit: int = MAX_STDIO_MESSAGE_BYTES) -> None:
    """`server.run_stdio_async()` with request limits and an answer for every malformed line."""
    from mcp.server.stdio import stdio_server

    raw, restore = _claim_stdin()
    stdin = _BoundedStdin(raw, limit)
    try:
        async with stdio_server(stdin=stdin) as (read_stream, write_stream):  # type: ignore[arg-type]
            stdin.attach(write_stream)
            low = server._lowlevel_server
            await low.run(read_stream, write_stream, low.create_initialization_options())
    finally:
        if restore is not None:
            restore()
