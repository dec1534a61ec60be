"""The policy gate end to end: every decision x client with/without elicitation x transport (in memory, a real
stdio subprocess, HTTP stateful and stateless with real tokens) x protocol era. Whether a call ran is read
from the live fleet state and the audit log, never from the result alone; nothing is allowed by fallback."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, ElicitResult, ErrorData, InputRequiredResult

from fleet_mcp.server import build_server
from tests.conftest import HttpServer, PostgresServer, call_as, cli_env, make_caller, run_cli

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "fixtures" / "policies" / "policy-matrix.yaml"
ERAS = ["auto", "legacy"]
CAPABLE = [pytest.param(True, id="elicitation"), pytest.param(False, id="no-elicitation")]


# -- the person at the client and small client helpers ------------------------------------------------------
class Human:
    """Answers elicitations from a script and remembers every question it was asked."""

    def __init__(self) -> None:
        self.script: list[tuple[str, bool]] = []
        self.asked: list[str] = []

    def will(self, action: str, approve: bool = True) -> None:
        self.script.append((action, approve))

    async def __call__(self, _ctx: Any, params: Any) -> ElicitResult:
        self.asked.append(params.message)
        if not self.script:  # an unexpected question is declined; the test sees it in `asked`
            return ElicitResult(action="decline")
        action, approve = self.script.pop(0)
        return ElicitResult(action=action, content={"approve": approve} if action == "accept" else None)


def _text(r: CallToolResult) -> str:
    return " ".join(getattr(part, "text", "") for part in r.content)


async def _ok(c: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    r = await c.call_tool(tool, args)
    assert not r.is_error, f"{tool}: {_text(r)}"
    return r.structured_content


async def _exists(c: Client, kind: str, name: str) -> bool:
    if kind == "assignment":
        return any(i["name"] == name for i in (await _ok(c, "system_list_assignments", {}))["items"])
    r = await c.call_tool(f"system_get_{kind}", {"name": name})
    if not r.is_error:
        return True
    assert r.structured_content["error"]["code"] == "not_found", _text(r)
    return False


async def _audit(c: Client, tool: str, **match: Any) -> list[dict[str, Any]]:
    """Audit entries of `tool` (read through the server) whose arguments include `match`, oldest first."""
    entries = (await _ok(c, "system_audit_query", {"tool": tool, "limit": 1000}))["entries"]
    return [e for e in reversed(entries) if all(e["arguments"].get(k) == v for k, v in match.items())]


async def _outcomes(c: Client, tool: str, **match: Any) -> list[str]:
    return [e["outcome"] for e in await _audit(c, tool, **match)]


def _status(r: CallToolResult) -> str | None:
    return (r.structured_content or {}).get("status")


# -- the scenario every transport runs ----------------------------------------------------------------------
async def exercise(c: Client, human: Human | None, tag: str, *, elicits: bool) -> dict[str, str]:
    """Each decision once through `c`. `elicits`: the server may ask this client's human. Returns the ids
    of the approval requests it queued, by resource kind."""
    t, m, p, dt, dm = (f"{x}-{tag}" for x in ("t", "m", "p", "dt", "dm"))
    for kind, name, spec in (("template", t, {}), ("template", dt, {}), ("module", m, {"variety": "role"}),
                             ("module", dm, {"variety": "role"}), ("provider_config", p, {"provider": "aws"})):
        await _ok(c, f"system_put_{kind}", {"name": name, "spec": spec})
    await _ok(c, "system_assign_module_to_template", {"template": t, "module": m})
    assert await _exists(c, "template", t)
    assert await _outcomes(c, "system_put_template", name=t) == ["ok"]  # auto_approve ran, once

    # deny: nothing runs and nobody is asked.
    r = await c.call_tool("system_unassign_module_from_template", {"template": t, "module": m})
    assert r.is_error and _status(r) == "denied" and r.structured_content["rule"] == "deny-unassign", _text(r)
    assert await _exists(c, "assignment", f"{t}:{m}")
    assert await _outcomes(c, "system_unassign_module_from_template", template=t) == ["denied"]

    # No rule matches `enabled: false`: the default (deny) decides; nothing is allowed by fallback.
    r = await c.call_tool("system_assign_module_to_template", {"template": t, "module": m, "enabled": False})
    assert r.is_error and _status(r) == "denied" and r.structured_content["rule"] == "default", _text(r)
    items = (await _ok(c, "system_list_assignments", {}))["items"]
    assert [i["spec"]["enabled"] for i in items if i["name"] == f"{t}:{m}"] == [True]
    assert await _outcomes(c, "system_assign_module_to_template", template=t, enabled=False) == ["denied"]
    assert human is None or human.asked == []

    # require_approval, mode elicit: asked when possible, otherwise denied (never queued, never run).
    if elicits:
        assert human is not None
        human.will("decline")
        r = await c.call_tool("system_delete_module", {"name": dm})
        assert r.is_error and _status(r) == "declined", _text(r)
        assert await _exists(c, "module", dm)
        human.will("accept")
        r = await c.call_tool("system_delete_module", {"name": dm})
        assert not r.is_error, _text(r)
        assert not await _exists(c, "module", dm)
        assert await _outcomes(c, "system_delete_module", name=dm) == ["declined", "ok"]
        assert len(human.asked) == 2 and all("system_delete_module" in q and dm in q for q in human.asked)
    else:
        r = await c.call_tool("system_delete_module", {"name": dm})
        assert r.is_error and _status(r) == "denied", _text(r)
        assert r.structured_content["rule"] == "delete-module-elicit-only"
        assert await _exists(c, "module", dm)
        assert await _outcomes(c, "system_delete_module", name=dm) == ["denied"]

    ids: dict[str, str] = {}
    # require_approval, mode elicit_or_queue: decline/cancel run nothing, accept runs once; else queued.
    if elicits:
        assert human is not None
        before = len(human.asked)
        for action, approve in (("decline", True), ("cancel", True), ("accept", False)):
            human.will(action, approve)
            r = await c.call_tool("system_delete_template", {"name": dt})
            assert r.is_error and _status(r) == "declined", (action, _text(r))
            assert await _exists(c, "template", dt)
        human.will("accept")
        r = await c.call_tool("system_delete_template", {"name": dt})
        assert not r.is_error, _text(r)
        assert r.structured_content == {"deleted": True, "kind": "template", "name": dt}
        assert not await _exists(c, "template", dt)
        questions = human.asked[before:]
        assert len(questions) == 4 and all("system_delete_template" in q and dt in q for q in questions)
        rows = await _audit(c, "system_delete_template", name=dt)
        assert [e["outcome"] for e in rows] == ["declined", "declined", "declined", "ok"]
        assert [e["detail"]["elicitation"] for e in rows[:3]] == ["decline", "cancel", "decline"]
        assert rows[3]["decision"] == "approved_by_elicitation"
    else:
        r = await c.call_tool("system_delete_template", {"name": dt})
        assert r.is_error and _status(r) == "approval_required", _text(r)
        assert r.structured_content["rule"] == "delete-template-elicit-or-queue"
        ids["template"] = r.structured_content["approval_id"]
        assert ids["template"].startswith("apr_") and ids["template"] in _text(r)
        assert await _exists(c, "template", dt)
        rows = await _audit(c, "system_delete_template", name=dt)
        assert [(e["outcome"], e["approval_id"]) for e in rows] == [("approval_required", ids["template"])]

    # require_approval, mode queue (separation of duties): queued even when the human could be asked.
    asked = len(human.asked) if human else 0
    r = await c.call_tool("system_delete_provider_config", {"name": p})
    assert r.is_error and _status(r) == "approval_required", _text(r)
    sc = r.structured_content
    assert sc["rule"] == "delete-provider-config-queue" and sc["separation_of_duties"] is True
    assert sc["approvers"] == ["approver"]
    ids["provider_config"] = sc["approval_id"]
    assert await _exists(c, "provider_config", p)
    assert await _outcomes(c, "system_delete_provider_config", name=p) == ["approval_required"]
    assert (len(human.asked) if human else 0) == asked
    assert human is None or human.script == []
    return ids


Decide = Callable[[str], Awaitable[None]]


async def approved_once(c: Client, kind: str, name: str, aid: str, decide: Decide, requester: str) -> None:
    """A second principal approves `aid`: the queued deletion runs exactly once, as the requester, and a
    second decision never runs it again."""
    tool = f"system_delete_{kind}"
    await decide(aid)
    assert not await _exists(c, kind, name)
    rows = await _audit(c, tool, name=name)
    assert [e["outcome"] for e in rows] == ["approval_required", "ok"]
    assert rows[1]["approval_id"] == aid and rows[1]["decision"] == "approved"
    assert rows[1]["principal"] == requester
    got = (await _ok(c, "system_approvals_get", {"approval_id": aid}))["approval"]
    assert got["status"] == "executed" and got["result"] == {"deleted": True, "kind": kind, "name": name}


# -- in memory ----------------------------------------------------------------------------------------------
@pytest.fixture
def policy_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The matrix policy; parametrize with "copy" for an editable copy (reload tests)."""
    if getattr(request, "param", None) == "copy":
        return Path(shutil.copy(POLICY, tmp_path / "policy.yaml"))
    return POLICY


@pytest.fixture
def settings(settings, policy_path: Path):  # noqa: ANN001
    return settings.model_copy(update={"policy": policy_path})


@pytest.mark.parametrize("capable", CAPABLE)
@pytest.mark.parametrize("mode", ERAS)
async def test_in_memory(app, mode: str, capable: bool) -> None:  # noqa: ANN001
    server, _ = build_server(app)
    human = Human() if capable else None
    ben = await make_caller(app, "acme", "ben", ("approver",))

    async def decide(aid: str) -> None:
        out = await call_as(app, ben, "system_approvals_decide",
                            {"approval_id": aid, "decision": "approve", "reason": "change 42"})
        assert out.ok and out.data["executed"], out.message
        again = await call_as(app, ben, "system_approvals_decide",
                              {"approval_id": aid, "decision": "approve", "reason": "once more"})
        assert not again.ok and "executed" in again.message

    async with Client(server, elicitation_callback=human, mode=mode) as c:
        ids = await exercise(c, human, "mem", elicits=capable)
        await approved_once(c, "provider_config", "p-mem", ids["provider_config"], decide, "acme/alice")
        if not capable:
            await approved_once(c, "template", "dt-mem", ids["template"], decide, "acme/alice")


async def test_queued_approval_runs_only_its_own_arguments(app) -> None:  # noqa: ANN001
    """Replay with changed arguments is refused: an approval executes exactly the arguments it was asked
    for, and a call with other arguments needs (and gets) a new approval."""
    olga = await make_caller(app, "acme", "olga", ("operator",))
    ben = await make_caller(app, "acme", "ben", ("approver",))
    for name in ("aws", "gcp"):
        out = await call_as(app, olga, "system_put_provider_config", {"name": name, "spec": {"provider": name}})
        assert out.ok, out.message
    first = await call_as(app, olga, "system_delete_provider_config", {"name": "aws"})
    other = await call_as(app, olga, "system_delete_provider_config", {"name": "gcp"})
    assert first.data["status"] == other.data["status"] == "approval_required"
    assert first.data["approval_id"] != other.data["approval_id"]

    done = await call_as(app, ben, "system_approvals_decide",
                         {"approval_id": first.data["approval_id"], "decision": "approve", "reason": "aws only"})
    assert done.ok and done.data["result"] == {"deleted": True, "kind": "provider_config", "name": "aws"}
    names = {i["name"] for i in (await call_as(app, olga, "system_list_provider_configs")).data["items"]}
    assert names == {"gcp"}
    # The other request is untouched, and the used approval cannot be spent again.
    pending = await call_as(app, olga, "system_approvals_get", {"approval_id": other.data["approval_id"]})
    assert pending.data["approval"]["status"] == "pending"
    replay = await call_as(app, ben, "system_approvals_decide",
                           {"approval_id": first.data["approval_id"], "decision": "approve", "reason": "gcp?"})
    assert not replay.ok and replay.data["error"]["code"] == "conflict"
    # Calling again with other arguments is a new request, not a reuse of the executed one.
    again = await call_as(app, olga, "system_delete_provider_config", {"name": "gcp"})
    assert again.data["status"] == "approval_required"
    assert again.data["approval_id"] not in (first.data["approval_id"], other.data["approval_id"])
    names = {i["name"] for i in (await call_as(app, olga, "system_list_provider_configs")).data["items"]}
    assert names == {"gcp"}
    audit = await call_as(app, olga, "system_audit_query", {"tool": "system_delete_provider_config"})
    ran = [(e["arguments"]["name"], e["approval_id"]) for e in audit.data["entries"] if e["outcome"] == "ok"]
    assert ran == [("aws", first.data["approval_id"])]


async def test_elicited_answer_never_runs_other_arguments(app) -> None:  # noqa: ANN001
    """2026-07-28: the human's answer rides request_state. Resending it with changed arguments must not run
    the changed call: the sealed state is refused, and a bare answer only makes the server ask again."""
    server, _ = build_server(app)
    human = Human()
    async with Client(server, elicitation_callback=human) as c:
        for name in ("shown", "swapped"):
            await _ok(c, "system_put_template", {"name": name, "spec": {}})
        first = await c.session.call_tool("system_delete_template", {"name": "shown"}, allow_input_required=True)
        assert isinstance(first, InputRequiredResult)
        [question] = first.input_requests.values()
        assert "shown" in question.params.message and "swapped" not in question.params.message
        yes = {k: ElicitResult(action="accept", content={"approve": True}) for k in first.input_requests}
        with pytest.raises(MCPError, match="requestState"):
            await c.session.call_tool("system_delete_template", {"name": "swapped"}, input_responses=yes,
                                      request_state=first.request_state, allow_input_required=True)
        bare = await c.session.call_tool("system_delete_template", {"name": "swapped"}, input_responses=yes,
                                         allow_input_required=True)
        assert isinstance(bare, InputRequiredResult), bare
        [again] = bare.input_requests.values()
        assert "swapped" in again.params.message
        assert await _exists(c, "template", "swapped") and await _exists(c, "template", "shown")
        assert await _outcomes(c, "system_delete_template") == []
        # The answer still approves exactly what it was given for.
        r = await c.session.call_tool("system_delete_template", {"name": "shown"}, input_responses=yes,
                                      request_state=first.request_state)
        assert not r.is_error, _text(r)
        assert not await _exists(c, "template", "shown") and await _exists(c, "template", "swapped")
        assert await _outcomes(c, "system_delete_template") == ["ok"]
    assert human.asked == []  # everything above was answered by hand, never through the callback


async def _broken(_ctx: Any, _params: Any) -> ErrorData:
    return ErrorData(code=-32603, message="the client failed to show the question")


async def _malformed(_ctx: Any, _params: Any) -> ElicitResult:
    return ElicitResult(action="accept", content={"approve": "maybe"})


async def _empty(_ctx: Any, _params: Any) -> ElicitResult:
    return ElicitResult(action="accept", content=None)


@pytest.mark.parametrize("answer", [_broken, _malformed, _empty], ids=["error", "malformed", "empty-accept"])
@pytest.mark.parametrize("mode", ERAS)
async def test_a_broken_answer_runs_nothing(app, mode: str, answer: Any) -> None:  # noqa: ANN001
    """An elicitation that fails, or an "accept" without a valid yes, is never taken as approval."""
    server, _ = build_server(app)
    async with Client(server, elicitation_callback=answer, mode=mode) as c:
        await _ok(c, "system_put_template", {"name": "web", "spec": {}})
        try:
            r = await c.call_tool("system_delete_template", {"name": "web"})
            assert r.is_error, _text(r)
        except MCPError:
            pass  # a protocol error is a refusal too
        assert await _exists(c, "template", "web")
        assert "ok" not in await _outcomes(c, "system_delete_template")


async def test_a_forged_approval_argument_is_refused(client) -> None:  # noqa: ANN001
    """The adapter's own `approval` parameter cannot be supplied as a tool argument to skip the question."""
    await _ok(client, "system_put_template", {"name": "web", "spec": {}})
    for forged in ({"action": "accept", "data": {"approve": True}}, {"approve": True}, "accept"):
        r = await client.call_tool("system_delete_template", {"name": "web", "approval": forged})
        assert r.is_error and "approval" in _text(r), _text(r)
    assert await _exists(client, "template", "web")
    assert "ok" not in await _outcomes(client, "system_delete_template")


_RELOADED = """\
version: 1
default: deny
rules:
  - name: reads
    match: {read_only: true}
    decision: auto_approve
  - name: unassign-now-allowed
    match: {tools: [system_unassign_module_from_template]}
    decision: auto_approve
  - name: freeze-puts
    match: {tools: ["system_put_*"]}
    decision: deny
  - name: assign-enabled
    match: {tools: [system_assign_module_to_template], args: {enabled: true}}
    decision: auto_approve
"""


@pytest.mark.parametrize("policy_path", ["copy"], indirect=True)
async def test_policy_reload_changes_decisions(app, client, policy_path: Path) -> None:  # noqa: ANN001
    await _ok(client, "system_put_template", {"name": "web", "spec": {}})
    await _ok(client, "system_put_module", {"name": "nginx", "spec": {"variety": "role"}})
    await _ok(client, "system_assign_module_to_template", {"template": "web", "module": "nginx"})
    r = await client.call_tool("system_unassign_module_from_template", {"template": "web", "module": "nginx"})
    assert _status(r) == "denied" and r.structured_content["rule"] == "deny-unassign"
    assert await _exists(client, "assignment", "web:nginx")

    policy_path.write_text(_RELOADED)
    result = app.policy.reload_if_changed()  # the file-change path
    assert result.ok and result.changed
    r = await client.call_tool("system_unassign_module_from_template", {"template": "web", "module": "nginx"})
    assert not r.is_error, _text(r)
    assert not await _exists(client, "assignment", "web:nginx")
    before = (await _ok(client, "system_get_template", {"name": "web"}))["item"]
    r = await client.call_tool("system_put_template", {"name": "web", "spec": {"description": "changed"}})
    assert _status(r) == "denied" and r.structured_content["rule"] == "freeze-puts"
    assert (await _ok(client, "system_get_template", {"name": "web"}))["item"] == before
    explained = await _ok(client, "system_policy_explain", {"tool": "system_put_module", "arguments": {}})
    assert explained["decision"] == "deny" and explained["rule"] == "freeze-puts"

    # A broken file is refused with its name and line; the policy in force stays.
    policy_path.write_text(_RELOADED.replace("decision: deny", "decision: deny\n    surprise: 1"))
    refused = app.policy.reload()
    assert not refused.ok and str(policy_path) in str(refused.error) and "surprise" in str(refused.error)
    r = await client.call_tool("system_put_template", {"name": "web", "spec": {"description": "changed"}})
    assert _status(r) == "denied" and r.structured_content["rule"] == "freeze-puts"
    await _ok(client, "system_assign_module_to_template", {"template": "web", "module": "nginx"})
    assert await _outcomes(client, "system_put_template", name="web") == ["ok", "denied", "denied"]


# -- real processes: one server per parametrized group ------------------------------------------------------
@dataclass
class Group:
    db_url: str
    data_dir: Path

    def env(self, **extra: str) -> dict[str, str]:
        return cli_env(self.data_dir, self.db_url, FLEET_MCP_POLICY=str(POLICY), FLEET_MCP_SCHEDULER="false",
                       **extra)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def group(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Group:
    """An empty database and data dir shared by this module's subprocesses (the first one migrates it)."""
    data_dir = tmp_path_factory.mktemp("matrix") / "data"
    if request.param == "sqlite":
        return Group(f"sqlite+aiosqlite:///{data_dir.parent / 'fleet.db'}", data_dir)
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = "m_" + uuid.uuid4().hex[:12]
    server.psql(f"CREATE DATABASE {name}")
    return Group(server.url(name), data_dir)


@pytest.fixture(scope="module")
def stdio_env(group: Group) -> dict[str, str]:
    return group.env(FLEET_MCP_ACCOUNT="acme", FLEET_MCP_PRINCIPAL="olga", FLEET_MCP_ROLES="operator")


# Without the capability the two eras take the same path (no question is ever sent); HTTP covers both anyway.
@pytest.mark.parametrize(("mode", "capable"), [("auto", True), ("auto", False), ("legacy", True)])
async def test_stdio_subprocess(stdio_env: dict[str, str], mode: str, capable: bool) -> None:
    human = Human() if capable else None
    tag = f"s-{mode}-{'e' if capable else 'n'}"
    params = StdioServerParameters(command=sys.executable, args=["-m", "fleet_mcp", "serve"], env=stdio_env)

    async def decide(aid: str) -> None:  # a second principal, from the command line, in another process
        approver = {**stdio_env, "FLEET_MCP_PRINCIPAL": "ben", "FLEET_MCP_ROLES": "approver"}
        run_cli(approver, "approvals", "approve", aid, "--reason", "change 42")

    async with Client(params, elicitation_callback=human, mode=mode) as c:
        ids = await exercise(c, human, tag, elicits=capable)
        if mode == "auto" and capable:  # one cross-process approval per database is enough
            await approved_once(c, "provider_config", f"p-{tag}", ids["provider_config"], decide, "acme/olga")


@dataclass
class HttpGroup:
    env: dict[str, str]
    tokens: dict[str, str]
    stateful: HttpServer
    stateless: HttpServer

    def client(self, who: str, *, stateless: bool = False, human: Human | None = None, mode: str = "auto"
               ) -> Client:
        url = (self.stateless if stateless else self.stateful).url + "/mcp"
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=60)
        return Client(streamable_http_client(url, http_client=http), elicitation_callback=human, mode=mode)


@pytest.fixture(scope="module")
def http_group(group: Group) -> Iterator[HttpGroup]:
    """Two real servers on one database (stateful and stateless) and two tokens: olga requests, ben (an
    operator who may also approve) decides, and tries to spend olga's answers."""
    env = group.env()

    def token(who: str, *roles: str) -> str:
        role_args = [arg for role in roles for arg in ("--role", role)]
        out = run_cli(env, "token", "create", "--account", "acme", "--name", f"{who}-{uuid.uuid4().hex[:6]}",
                      "--principal", who, *role_args)
        return out.stdout.strip().splitlines()[-1]

    # The first process migrates the database; the account may exist already (the stdio tests made it).
    created = run_cli(env, "account", "create", "acme", check=False)
    assert created.returncode == 0 or "exists" in created.stdout + created.stderr, created.stderr
    tokens = {"olga": token("olga", "operator")}
    with ThreadPoolExecutor(3) as pool:
        ben = pool.submit(token, "ben", "operator", "approver")
        starting = [pool.submit(HttpServer, env), pool.submit(HttpServer, env, "--stateless")]
    servers = [f.result() for f in starting if f.exception() is None]
    if len(servers) < 2 or ben.exception() is not None:
        for srv in servers:
            srv.stop()
        raise next(f.exception() for f in (ben, *starting) if f.exception() is not None)  # type: ignore[misc]
    tokens["ben"] = ben.result()
    yield HttpGroup(env, tokens, *servers)
    for srv in servers:
        srv.stop()


@pytest.mark.parametrize("capable", CAPABLE)
@pytest.mark.parametrize("mode", ERAS)
@pytest.mark.parametrize("stateless", [pytest.param(False, id="stateful"), pytest.param(True, id="stateless")])
async def test_http(http_group: HttpGroup, stateless: bool, mode: str, capable: bool) -> None:
    """Stateless HTTP never elicits: there, even a capable client's approvals are queued."""
    human = Human() if capable else None
    tag = f"h{'l' if stateless else 'f'}-{mode}-{'e' if capable else 'n'}"

    async def decide(aid: str) -> None:
        async with http_group.client("ben", stateless=stateless, mode=mode) as b:
            await _ok(b, "system_approvals_decide", {"approval_id": aid, "decision": "approve", "reason": "ok"})
            r = await b.call_tool("system_approvals_decide", {"approval_id": aid, "decision": "approve",
                                                              "reason": "again"})
            assert r.is_error and r.structured_content["error"]["code"] == "conflict", _text(r)

    async with http_group.client("olga", stateless=stateless, human=human, mode=mode) as c:
        ids = await exercise(c, human, tag, elicits=capable and not stateless)
        await approved_once(c, "provider_config", f"p-{tag}", ids["provider_config"], decide, "acme/olga")
        # The requester (an operator, not an approver) cannot decide its own request.
        await _ok(c, "system_put_provider_config", {"name": f"q-{tag}", "spec": {"provider": "aws"}})
        r = await c.call_tool("system_delete_provider_config", {"name": f"q-{tag}"})
        own = r.structured_content["approval_id"]
        r = await c.call_tool("system_approvals_decide", {"approval_id": own, "decision": "approve",
                                                          "reason": "mine"})
        assert r.is_error and r.structured_content["status"] == "denied", _text(r)
        assert await _exists(c, "provider_config", f"q-{tag}")


async def test_http_elicited_answer_is_bound_to_the_token(http_group: HttpGroup) -> None:
    """Another principal who may delete templates too cannot spend the request_state (and the human's
    answer) handed to olga."""
    async with http_group.client("olga", human=Human()) as c:
        await _ok(c, "system_put_template", {"name": "bound", "spec": {}})
        first = await c.session.call_tool("system_delete_template", {"name": "bound"}, allow_input_required=True)
        assert isinstance(first, InputRequiredResult)
        yes = {k: ElicitResult(action="accept", content={"approve": True}) for k in first.input_requests}
    # ben's client could be asked too, so an accepted state would be consumed if it were not bound to olga.
    someone = Human()
    async with http_group.client("ben", human=someone) as b:
        with pytest.raises(MCPError, match="requestState"):
            await b.session.call_tool("system_delete_template", {"name": "bound"}, input_responses=yes,
                                      request_state=first.request_state, allow_input_required=True)
    assert someone.asked == []
    async with http_group.client("olga") as c:
        assert await _exists(c, "template", "bound")
        assert [e for e in await _audit(c, "system_delete_template", name="bound") if e["outcome"] == "ok"] == []
