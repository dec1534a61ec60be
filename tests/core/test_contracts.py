"""Tool contracts: every tool declared on purpose, `tools/` current, the Inspector sees the same tools."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleet_mcp.contracts import check_contracts
from fleet_mcp.registry import load_tools
from tests import services

ROOT = Path(__file__).resolve().parents[2]


def test_every_tool_is_declared_on_purpose() -> None:
    tools = load_tools()
    assert len(tools) >= 20
    for spec in tools.values():
        c = spec.contract()
        assert c["description"] and c["title"], spec.name
        assert set(c["annotations"]) == {"readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"}
        assert c["inputSchema"]["additionalProperties"] is False, spec.name
        assert c["outputSchema"]["type"] == "object", spec.name
        assert "." in spec.permission, spec.name
        if spec.read_only:
            assert not spec.destructive, spec.name


def test_published_schemas_are_self_contained() -> None:
    """No $ref anywhere (clients that cannot resolve references still see every field), and the server
    publishes the same schemas as the contracts."""
    for spec in load_tools().values():
        text = json.dumps(spec.contract())
        assert "$ref" not in text and "$defs" not in text, spec.name


def test_inline_refs_keeps_meaning_and_leaves_recursive_models_alone() -> None:
    from pydantic import BaseModel

    from fleet_mcp.registry import inline_refs

    class Leaf(BaseModel):
        x: int

    class Outer(BaseModel):
        leaf: Leaf
        leaves: list[Leaf]

    class Node(BaseModel):
        children: list[Node]

    flat = inline_refs(Outer.model_json_schema())
    assert flat["properties"]["leaf"]["properties"]["x"]["type"] == "integer"
    assert flat["properties"]["leaves"]["items"]["title"] == "Leaf"
    assert "$defs" not in flat
    recursive = Node.model_json_schema()
    assert inline_refs(recursive) == recursive


@pytest.mark.anyio
async def test_server_publishes_the_contract_schemas(client) -> None:  # noqa: ANN001
    tools = {t.name: t for t in (await client.list_tools()).tools}
    specs = load_tools()
    for name, t in tools.items():
        assert t.input_schema == specs[name].input_schema(), name
        assert t.output_schema == specs[name].output_schema(), name


def test_tools_folder_is_current() -> None:
    problems = check_contracts(ROOT / "tools", ROOT / "docs")
    assert problems == [], "run `fleet-mcp tools export`: " + "; ".join(problems)


def test_tools_export_check_cli_detects_staleness(tmp_path: Path) -> None:
    out = tmp_path / "tools"
    shutil.copytree(ROOT / "tools", out)
    victim = next(out.glob("system_*.json"))
    victim.write_text(victim.read_text().replace('"title"', '"titel"', 1))
    proc = subprocess.run([sys.executable, "-m", "fleet_mcp", "tools", "export", "--check", "--dir", str(out),
                           "--docs", ""],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "stale" in proc.stderr
    ok = subprocess.run([sys.executable, "-m", "fleet_mcp", "tools", "export", "--check", "--dir",
                         str(ROOT / "tools")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_shipped_policies_load_against_the_real_registry() -> None:
    from fleet_mcp.policy.loader import load_policy
    from fleet_mcp.registry import catalog

    files = sorted((ROOT / "policies").glob("*.yaml"))
    assert {f.name for f in files} >= {"default.yaml", "read-only.yaml", "strict.yaml"}
    for f in files:
        load_policy(f, catalog())


def _inspector() -> str | None:
    path = os.environ.get("FLEET_MCP_TEST_INSPECTOR")
    if path and Path(path).exists():
        return path
    return shutil.which("mcp-inspector")


def test_inspector_cli_lists_the_contracted_tools(tmp_path: Path) -> None:
    inspector = _inspector()
    if inspector is None:
        services.missing("the MCP Inspector CLI", "scripts/test installs it into .cache/node")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_MCP_")}
    env["FLEET_MCP_DATA_DIR"] = str(tmp_path / "data")
    proc = subprocess.run(
        [inspector, "--cli", "-e", f"FLEET_MCP_DATA_DIR={tmp_path / 'data'}", sys.executable, "-m", "fleet_mcp",
         "serve", "--method", "tools/list"],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = {t["name"]: t for t in json.loads(proc.stdout)["tools"]}
    contracts = {p.stem: json.loads(p.read_text()) for p in (ROOT / "tools").glob("system_*.json")}
    assert set(listed) == set(contracts)
    for name, tool in listed.items():
        assert tool["inputSchema"] == contracts[name]["inputSchema"], name
        assert tool.get("annotations", {}).get("readOnlyHint") == contracts[name]["annotations"]["readOnlyHint"]


def test_every_setting_is_documented_and_the_reference_is_generated(tmp_path: Path) -> None:
    """Each setting has a description, so docs/SETTINGS.md (generated, checked like the tool contracts) says
    what every environment variable does; no secret default is printed; a hand edit is caught as stale."""
    from fleet_mcp.contracts import render_settings_markdown
    from fleet_mcp.settings import Settings

    undocumented = [name for name, f in Settings.model_fields.items() if not (f.description or "").strip()]
    assert undocumented == [], f"settings without a description: {undocumented}"
    text = render_settings_markdown()
    for name in Settings.model_fields:
        assert f"`FLEET_MCP_{name.upper()}`" in text
    assert str(ROOT) not in text  # the same on every machine
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "API.md").write_text((ROOT / "docs" / "API.md").read_text())
    (docs / "SETTINGS.md").write_text(text.replace("Seconds", "Minutes", 1))
    assert any("SETTINGS.md" in p for p in check_contracts(ROOT / "tools", docs))


def test_server_json_names_only_real_settings_and_marks_their_secrets() -> None:
    """server.json (the MCP registry entry) lists environment variables by hand: each must be a setting (or one
    of its aliases), and a secret setting must be marked isSecret there."""
    from pydantic import AliasChoices, SecretStr

    from fleet_mcp.settings import Settings

    env_names: dict[str, bool] = {}
    for name, field in Settings.model_fields.items():
        secret = field.annotation is not None and SecretStr in getattr(field.annotation, "__args__", (field.annotation,))
        names = [f"FLEET_MCP_{name.upper()}"]
        if isinstance(field.validation_alias, AliasChoices):
            names = [str(c) for c in field.validation_alias.choices]
        env_names.update(dict.fromkeys(names, secret))
    entries = [v for p in json.loads((ROOT / "server.json").read_text())["packages"]
               for v in p.get("environmentVariables", [])]
    assert entries
    for var in entries:
        assert var["name"] in env_names, f"server.json names {var['name']}, which is no setting"
        assert bool(var.get("isSecret")) == env_names[var["name"]], f"{var['name']}: isSecret must match"
