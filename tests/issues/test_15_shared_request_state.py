"""Issue 15 (1): an in-client approval whose second round lands on another replica works when the replicas
share the request-state key file, and is refused when each seals under its own key."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import ElicitResult, InputRequiredResult

from fleet_mcp.app import App
from fleet_mcp.errors import InvalidArgument
from fleet_mcp.keyring import load_key_ring
from fleet_mcp.server import build_server

pytestmark = pytest.mark.anyio
MATRIX = Path(__file__).resolve().parents[2] / "fixtures" / "policies" / "gate-matrix.yaml"


def _key_file(path: Path, *keys: bytes) -> Path:
    path.write_text("".join(base64.b64encode(k).decode() + "\n" for k in keys))
    path.chmod(0o600)
    return path


async def _two_replicas(settings, key_file: Path | None):  # noqa: ANN001, ANN202
    s = settings.model_copy(update={"policy": MATRIX, "request_state_key_file": key_file})
    a, b = App(s), App(s)
    await a.start(migrate_db=False)
    await b.start(migrate_db=False)
    return a, b


async def _human(_ctx, _params) -> ElicitResult:  # noqa: ANN001
    return ElicitResult(action="accept", content={"approve": True})


async def _round_one_on_a_round_two_on_b(a: App, b: App):  # noqa: ANN202
    """The client is able to answer (it declares elicitation); the test carries the rounds by hand."""
    async with (Client(build_server(a)[0], elicitation_callback=_human) as ca,
                Client(build_server(b)[0], elicitation_callback=_human) as cb):
        assert not (await ca.call_tool("system_put_template", {"name": "web", "spec": {}})).is_error
        first = await ca.session.call_tool("system_delete_template", {"name": "web"}, allow_input_required=True)
        assert isinstance(first, InputRequiredResult)
        answers = {k: ElicitResult(action="accept", content={"approve": True}) for k in first.input_requests}
        try:
            return await cb.session.call_tool("system_delete_template", {"name": "web"}, input_responses=answers,
                                              request_state=first.request_state)
        except MCPError as exc:
            return exc


async def test_shared_key_lets_any_replica_take_the_answer(app, settings, tmp_path: Path) -> None:  # noqa: ANN001
    old, new = os.urandom(32), os.urandom(32)
    a, b = await _two_replicas(settings, _key_file(tmp_path / "rs.keys", new, old))
    try:
        r = await _round_one_on_a_round_two_on_b(a, b)
        assert not r.is_error, r.content
        assert r.structured_content["deleted"] is True
    finally:
        await a.close()
        await b.close()


async def test_per_process_keys_refuse_the_other_replicas_state(app, settings) -> None:  # noqa: ANN001
    a, b = await _two_replicas(settings, None)
    try:
        refused = await _round_one_on_a_round_two_on_b(a, b)
        assert isinstance(refused, MCPError) and "Invalid or expired requestState" in str(refused)
    finally:
        await a.close()
        await b.close()


def test_key_ring_file_is_checked(tmp_path: Path) -> None:
    good = _key_file(tmp_path / "ok.keys", os.urandom(32), os.urandom(48))
    assert [len(k) for k in load_key_ring(good)] == [32, 48]
    short = _key_file(tmp_path / "short.keys", os.urandom(16))
    with pytest.raises(InvalidArgument, match="at least 32 bytes"):
        load_key_ring(short)
    loose = _key_file(tmp_path / "loose.keys", os.urandom(32))
    loose.chmod(0o644)
    with pytest.raises(InvalidArgument, match="chmod 600"):
        load_key_ring(loose)
    with pytest.raises(InvalidArgument, match="does not exist"):
        load_key_ring(tmp_path / "missing.keys")
