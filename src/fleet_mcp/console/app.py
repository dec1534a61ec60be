"""The console's ASGI app: sign-in, CSRF, security headers, pages and the one action endpoint.

Pages read through tools and the action endpoint turns a submitted form into one `Gate.call` as the
signed-in principal. When the policy says "ask the human", the page shows the confirmation an MCP client
would show (effect, masked arguments, digest) and only the person's answer runs the call.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import secrets
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from fleet_mcp import audit
from fleet_mcp.console import views
from fleet_mcp.console.sessions import COOKIE, SessionStore, SignedIn, csrf_ok
from fleet_mcp.errors import Unauthenticated
from fleet_mcp.principals import Caller
from fleet_mcp.registry import ToolSpec, load_tools

if TYPE_CHECKING:
    from fleet_mcp.app import App
    from fleet_mcp.gate import CallOutcome, Gate

log = logging.getLogger(__name__)

PREFIX = "/ui"
PAGE_SIZE = 50
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make Chromium send "Origin: null"
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
PRE_COOKIE = "fleet_console_login"
# Characters that reorder or hide text (bidi overrides, isolates, marks, zero-width): shown as visible
# markers so a name cannot pose as another.
_INVISIBLE = {c: f"[U+{c:04X}]" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F,
                                          0x061C, 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF)}
_INVISIBLE.update({c: f"[U+{c:04X}]" for c in range(0x00, 0x20) if c not in (0x09, 0x0A, 0x0D)})
_HAS_INVISIBLE = re.compile("[" + "".join(re.escape(chr(c)) for c in _INVISIBLE) + "]")


def inert(value: Any) -> Any:
    """Jinja's finalize: every printed string shows its direction and control characters as markers
    (autoescaping then makes it HTML-inert)."""
    if isinstance(value, str) and not isinstance(value, Markup) and _HAS_INVISIBLE.search(value):
        return value.translate(_INVISIBLE)  # (Markup is a macro's output, escaped already)
    return value


def _files(folder: str) -> Any:
    return resources.files("fleet_mcp.console").joinpath(folder)


class CallRefused(Exception):
    """A page's read was refused or failed; the page shows the gate's message."""

    def __init__(self, tool: str, outcome: CallOutcome) -> None:
        super().__init__(outcome.message)
        self.tool = tool
        self.outcome = outcome


@dataclass
class Calls:
    """The signed-in principal's view of the registry: reads, and whether an action may be offered."""

    console: Console
    caller: Caller

    async def get(self, tool: str, /, **args: Any) -> dict[str, Any]:
        outcome = await self.console.gate.call(self.console.tools[tool], self.caller,
                                               {k: v for k, v in args.items() if v is not None})
        if not outcome.ok:
            raise CallRefused(tool, outcome)
        return outcome.data

    def may(self, tool: str, /, **args: Any) -> bool:
        """Offer a button only when the gate would not refuse it outright (permission, then policy)."""
        spec = self.console.tools.get(tool)
        gate = self.console.gate
        if spec is None or not gate.has_permission(self.caller, spec.permission):
            return False
        try:
            parsed = spec.input_model.model_validate(args)
        except ValidationError:
            return True  # the permission holds; the policy is asked again when the form is sent
        return gate.evaluate(spec, self.caller, parsed, can_elicit=True).action != "deny"


def paginate(items: list[Any], page: int, size: int = PAGE_SIZE) -> tuple[list[Any], dict[str, Any]]:
    pages = max(1, -(-len(items) // size))
    page = min(max(1, page), pages)
    return items[(page - 1) * size: page * size], {"page": page, "pages": pages, "total": len(items)}


def _int(value: str | None, default: int = 1) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


class Console:
    def __init__(self, app: App, gate: Gate, allowed_hosts: set[str] | None = None) -> None:
        self.app = app
        self.gate = gate
        self.tools: dict[str, ToolSpec] = load_tools()
        self.store = SessionStore(app)
        self.allowed_hosts = allowed_hosts
        self.env = Environment(loader=FileSystemLoader(str(_files("templates"))),
                               autoescape=select_autoescape(["html"], default=True), finalize=inert,
                               trim_blocks=True, lstrip_blocks=True)
        self.env.filters["pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)
        self.env.filters["short"] = lambda v, n=12: (str(v)[:n] if v else "")
        self.env.filters["when"] = views.when
        self.env.filters["age"] = views.age
        self.env.globals["prefix"] = PREFIX
        self.static = {name: _files("static").joinpath(name).read_bytes()
                       for name in ("htmx.min.js", "console.css", "console.js")}

    # -- plumbing --------------------------------------------------------------------------------
    def render(self, name: str, http_status: int = 200, /, **ctx: Any) -> HTMLResponse:
        return HTMLResponse(self.env.get_template(name).render(**ctx), status_code=http_status)

    async def signed_in(self, request: Request) -> SignedIn | None:
        return await self.store.resolve(request.cookies.get(COOKIE))

    def page(self, request: Request, who: SignedIn, name: str, http_status: int = 200, /, **ctx: Any
             ) -> HTMLResponse:
        return self.render(name, http_status, me=who.caller, csrf=who.csrf, path=request.url.path,
                           section=name.split("_")[0].split(".")[0], **ctx)

    def _cookie(self, response: Response, request: Request, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path=PREFIX + "/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")

    def _same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:  # not every client sends it; the CSRF token still has to match
            return True
        return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"

    async def _guard(self, request: Request) -> tuple[SignedIn | None, Response | None]:
        """A signed-in principal, or the response to send instead (sign-in page, CSRF refusal)."""
        who = await self.signed_in(request)
        if who is None:
            login = f"{PREFIX}/login?" + urlencode({"next": request.url.path})
            if request.headers.get("hx-request"):
                # A live refresh must not swap the sign-in page into a fragment: htmx navigates instead.
                return None, Response(status_code=200, headers={"HX-Redirect": f"{PREFIX}/login"})
            if request.method == "GET":
                return None, RedirectResponse(login, 303)
            resp = self.render("login.html", 401, error="Your session ended (signed out, expired, or its token "
                               "was revoked). Sign in again.", login_csrf="", next=f"{PREFIX}/")
            resp.delete_cookie(COOKIE, path=PREFIX + "/")
            return None, resp
        if request.method == "POST":
            form = await request.form()
            presented = form.get("csrf") or request.headers.get("x-csrf-token")
            if not self._same_origin(request) or not csrf_ok(who.secret, presented if isinstance(presented, str)
                                                             else None):
                return None, self.render("error.html", 403, title="Request refused",
                                         message="This form was not sent from the console page that showed it "
                                                 "(missing or wrong CSRF token). Nothing was run; reload the "
                                                 "page and try again.", me=who.caller, csrf=who.csrf)
        return who, None

    # -- sign-in ---------------------------------------------------------------------------------
    async def login_form(self, request: Request) -> Response:
        token = secrets.token_urlsafe(24)
        resp = self.render("login.html", login_csrf=token, next=request.query_params.get("next", f"{PREFIX}/"))
        self._cookie(resp, request, PRE_COOKIE, token, 3600)
        return resp

    async def login(self, request: Request) -> Response:
        form = await request.form()
        pre = request.cookies.get(PRE_COOKIE)
        if not self._same_origin(request) or not pre or not secrets.compare_digest(pre, str(form.get("csrf", ""))):
            return self.render("login.html", 403, error="The sign-in form expired; try again.", login_csrf="",
                               next=f"{PREFIX}/")
        token = str(form.get("token", "")).strip()
        try:
            secret, _caller = await self.store.sign_in_with_token(token)
        except Unauthenticated as exc:
            return self.render("login.html", 401, error=f"Sign-in refused: {exc.message}.", login_csrf=pre,
                               next=f"{PREFIX}/")
        return self._signed_in_response(request, secret, str(form.get("next", "")))

    def _signed_in_response(self, request: Request, secret: str, nxt: str) -> Response:
        target = nxt if nxt.startswith(PREFIX + "/") and "//" not in nxt and "\\" not in nxt else f"{PREFIX}/"
        resp = RedirectResponse(target, 303)
        self._cookie(resp, request, COOKIE, secret, int(dt.timedelta(hours=8).total_seconds()))
        resp.delete_cookie(PRE_COOKIE, path=PREFIX + "/")
        return resp

    async def link_form(self, request: Request) -> Response:
        # A GET never uses the link (mail scanners and previews fetch links); the person presses the button.
        return self.render("link.html", code=request.query_params.get("code", ""))

    async def link(self, request: Request) -> Response:
        form = await request.form()
        if not self._same_origin(request):
            return self.render("link.html", 403, code="", error="Refused: not sent from this page.")
        try:
            secret, _caller = await self.store.redeem_link(str(form.get("code", "")))
        except Unauthenticated as exc:
            return self.render("link.html", 401, code="", error=str(exc))
        return self._signed_in_response(request, secret, f"{PREFIX}/")

    async def logout(self, request: Request) -> Response:
        who, refused = await self._guard(request)
        if refused is not None:
            return refused
        assert who is not None
        await self.store.sign_out(who.secret)
        resp = RedirectResponse(f"{PREFIX}/login", 303)
        resp.delete_cookie(COOKIE, path=PREFIX + "/")
        return resp

    # -- pages -----------------------------------------------------------------------------------
    def view(fn: Any) -> Any:  # noqa: N805 - a decorator over the class's page methods
        async def wrapper(self: Console, request: Request) -> Response:
            who, refused = await self._guard(request)
            if refused is not None:
                return refused
            assert who is not None
            calls = Calls(self, who.caller)
            try:
                name, ctx = await fn(self, request, calls)
            except CallRefused as exc:
                status = 403 if exc.outcome.data.get("status") == "denied" else (
                    404 if (exc.outcome.data.get("error") or {}).get("code") == "not_found" else 400)
                return self.page(request, who, "error.html", status, title=f"{exc.tool} refused",
                                 message=exc.outcome.message)
            except Exception:
                ref = secrets.token_hex(6)
                log.exception("console page %s failed (reference %s)", request.url.path, ref)
                return self.page(request, who, "error.html", 500, title="Internal error",
                                 message=f"This page could not be shown (reference {ref}); details are in the "
                                         "server log.")
            if name.startswith("fragment_"):
                return self.render(name, me=who.caller, csrf=who.csrf, **ctx)
            return self.page(request, who, name, **ctx)

        wrapper.__name__ = fn.__name__
        return wrapper

    @view
    async def inbox(self, request: Request, calls: Calls) -> tuple[str, dict[str, Any]]:
        ctx = await views.inbox(calls, _int(request.query_params.get("page")))
        return ("fragment_inbox.html" if request.url.path.endswith("/fragment") else "inbox.html"), ctx

    @view
    async def approval(self, request: Request, calls: Calls) -> tuple[str, dict[str, Any]]:
        return "approval.html", await views.approval(calls, request.path_params["approval_id"])

    @view
    async def gitops(self, request: Request, calls: Calls) -> tuple[str, dict[str, Any]]:
        return "gitops.html", await views.gitops(calls)

    @view
    async def repository(self, request: Request, calls: Calls) -> tuple[str, dict[str, Any]]:
        return "gitops_repository.html", await views.repository(calls, request.path_params["rid"])

    @view
    async def drift(self, request: Request, calls: Calls) -> tuple[str, dict[str, Any]]:
        return "gitops_drift.html", await views.drift(calls, request.path_params["rid"])

    @view
    async def sync_run(self, request: Request, calls: Calls) -> tuple[str, dict[str, Any]]:
        return "gitops_run.html", await views.sync_run(calls, request.path_params["sid"])

    @view
    async def proposal(self, request: Request, calls: Calls) -> tuple[str, dict[str, Any]]:
        collapsed = request.query_params.get("collapsed") == "1"
        return "gitops_proposal.html", await views.proposal(calls, request.path_params["pid"], collapsed)

    @view
    async def federation(self, request: Request, calls: Calls) -> tuple[str, dict[str, Any]]:
        return "federation.html", await views.federation(calls)

    @view
    async def peer(self, request: Request, calls: Calls) -> tuple[str, dict[str, Any]]:
        return "federation_peer.html", await views.peer(calls, request.path_params["fid"])

    @view
    async def vault(self, request: Request, calls: Calls) -> tuple[str, dict[str, Any]]:
        return "vault.html", await views.vault(calls)

    @view
    async def job(self, request: Request, calls: Calls) -> tuple[str, dict[str, Any]]:
        ctx = await views.job(calls, request.path_params["jid"])
        return ("fragment_job.html" if request.url.path.endswith("/fragment") else "vault_job.html"), ctx

    @view
    async def audit_page(self, request: Request, calls: Calls) -> tuple[str, dict[str, Any]]:
        q = request.query_params
        return "audit.html", await views.audit_log(calls, {k: q.get(k) or None for k in views.AUDIT_FILTERS},
                                                   _int(q.get("page")))

    @view
    async def events(self, request: Request, calls: Calls) -> tuple[str, dict[str, Any]]:
        return "events.html", await views.events(calls, request.query_params.get("kind") or None,
                                                 _int(request.query_params.get("page")))

    # -- the action endpoint ---------------------------------------------------------------------
    async def act(self, request: Request) -> Response:
        """One form = one tool call through the gate, after the human's confirmation when policy asks."""
        who, refused = await self._guard(request)
        if refused is not None:
            return refused
        assert who is not None
        spec = self.tools.get(request.path_params["tool"])
        if spec is None:
            return self.page(request, who, "error.html", 404, title="Unknown tool",
                             message="There is no such tool; nothing was run.")
        form = await request.form()
        nxt = str(form.get("_next") or f"{PREFIX}/")
        if not nxt.startswith(PREFIX + "/") or "//" in nxt:
            nxt = f"{PREFIX}/"
        raw = views.form_arguments(spec, form)
        answer = str(form.get("_confirm", ""))
        problem = views.typed_confirmation_problem(spec, form)
        if problem:
            return self.page(request, who, "error.html", 400, title="Not confirmed", message=problem, next=nxt)
        caller = who.caller
        if answer == "":
            try:
                parsed = spec.input_model.model_validate(raw)
            except ValidationError:
                parsed = None  # the gate reports (and audits) what is wrong
            if parsed is not None:
                verdict = self.gate.evaluate(spec, caller, parsed, can_elicit=not self.app.stateless_http)
                if verdict.action == "elicit":
                    return await self._confirmation(request, who, spec, parsed, verdict, form, nxt)
            outcome = await self.gate.call(spec, caller, raw)
        elif answer == "accept":
            parsed_ok = self._digest_matches(spec, raw, str(form.get("_digest", "")))
            if not parsed_ok:
                return self.page(request, who, "error.html", 409, title="Arguments changed",
                                 message="The arguments are not the ones you confirmed; nothing was run.", next=nxt)
            key = str(form.get("_nonce", ""))[:64] or secrets.token_hex(16)
            outcome = await self.gate.call(spec, caller, raw, can_elicit=True, elicited="accept",
                                           elicitation_key=key)
        elif answer == "queue":
            outcome = await self.gate.call(spec, caller, raw, can_elicit=False)
        elif answer == "decline":
            outcome = await self.gate.call(spec, caller, raw, can_elicit=True, elicited="decline")
        else:
            return self.page(request, who, "error.html", 400, title="Unknown answer",
                             message="Answer accept, queue or decline; nothing was run.", next=nxt)
        said = outcome.data.get("status") if isinstance(outcome.data, dict) else None
        status = 200 if outcome.ok or said in ("approval_required", "declined") else \
            {"denied": 403, "invalid_arguments": 400}.get(str(said), 409)
        return self.page(request, who, "result.html", status, spec=spec, outcome=outcome, next=nxt,
                         shown=views.result_view(spec, outcome))

    def _digest_matches(self, spec: ToolSpec, raw: dict[str, Any], presented: str) -> bool:
        try:
            parsed = spec.input_model.model_validate(raw)
        except ValidationError:
            return False
        return secrets.compare_digest(audit.arguments_digest(parsed.model_dump(mode="python")), presented)

    async def _confirmation(self, request: Request, who: SignedIn, spec: ToolSpec, parsed: BaseModel, verdict: Any,
                            form: Any, nxt: str) -> Response:
        summary = await self.gate.summary(spec, who.caller, parsed)
        message = self.gate.elicitation_message(spec, parsed, verdict, summary)
        hidden = [(k, v) for k, v in form.multi_items() if k in spec.input_model.model_fields]
        return self.page(request, who, "confirm.html", spec=spec, verdict=verdict, summary=summary, message=message,
                         masked=audit.mask(parsed.model_dump(mode="python")),
                         digest=audit.arguments_digest(parsed.model_dump(mode="python")),
                         can_queue=bool(verdict.approval is not None and verdict.approval.allows_queue),
                         hidden=hidden, nonce=secrets.token_hex(16), next=nxt)

    # -- static ----------------------------------------------------------------------------------
    async def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = self.static.get(name)
        if body is None:
            return Response("not found", 404, media_type="text/plain")
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return Response(body, media_type=kind, headers={"cache-control": "public, max-age=3600"})

    async def root(self, request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/", 308)

    def routes(self) -> list[Route]:
        p = PREFIX
        return [
            Route(p, self.root), Route(f"{p}/", self.inbox), Route(f"{p}/inbox/fragment", self.inbox),
            Route(f"{p}/login", self.login_form, methods=["GET"]), Route(f"{p}/login", self.login, methods=["POST"]),
            Route(f"{p}/login/link", self.link_form, methods=["GET"]),
            Route(f"{p}/login/link", self.link, methods=["POST"]),
            Route(f"{p}/logout", self.logout, methods=["POST"]),
            Route(f"{p}/approvals/{{approval_id}}", self.approval),
            Route(f"{p}/gitops", self.gitops), Route(f"{p}/gitops/repositories/{{rid:int}}", self.repository),
            Route(f"{p}/gitops/repositories/{{rid:int}}/drift", self.drift),
            Route(f"{p}/gitops/runs/{{sid:int}}", self.sync_run),
            Route(f"{p}/gitops/proposals/{{pid:int}}", self.proposal),
            Route(f"{p}/federation", self.federation), Route(f"{p}/federation/peers/{{fid:int}}", self.peer),
            Route(f"{p}/vault", self.vault), Route(f"{p}/vault/jobs/{{jid:int}}", self.job),
            Route(f"{p}/vault/jobs/{{jid:int}}/fragment", self.job),
            Route(f"{p}/audit", self.audit_page), Route(f"{p}/events", self.events),
            Route(f"{p}/call/{{tool}}", self.act, methods=["POST"]),
            Route(f"{p}/static/{{name}}", self.static_file),
        ]


class SecurityHeaders:
    """Every console response: CSP without inline scripts, no framing, no sniffing, no caching of pages;
    requests for an unknown Host are refused (DNS rebinding)."""

    def __init__(self, app: ASGIApp, allowed_hosts: set[str] | None) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.allowed_hosts is not None:
            host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")
            if host not in self.allowed_hosts:
                body = b"unknown Host header"
                await send({"type": "http.response.start", "status": 421,
                            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"19")]})
                await send({"type": "http.response.body", "body": body})
                return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                message = {**message, "headers": headers + [(k, v) for k, v in SECURITY_HEADERS if k not in present]}
            await send(message)

        await self.app(scope, receive, with_headers)


def build_console(app: App, gate: Gate, allowed_hosts: set[str] | None = None) -> ASGIApp:
    console = Console(app, gate, allowed_hosts)
    return SecurityHeaders(Starlette(routes=console.routes()), allowed_hosts)


class WithConsole:
    """Routes /ui and /ui/… to the console and everything else (MCP, health, lifespan) to the main app."""

    def __init__(self, main: ASGIApp, console: ASGIApp) -> None:
        self.main = main
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == PREFIX or path.startswith(PREFIX + "/"):
            await self.console(scope, receive, send)
        else:
            await self.main(scope, receive, send)
