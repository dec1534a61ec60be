"""`fleet-mcp account create` refuses a federation domain that DNS name constraints could not tell apart
from another account's (equal or nested), and one that is not a DNS name; nothing is created then."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_mcp.errors import InvalidArgument
from tests.conftest import cli_env, run_cli


def test_account_create_refuses_overlapping_and_invalid_domains(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data", f"sqlite+aiosqlite:///{tmp_path / 'fleet.db'}", FLEET_MCP_SCHEDULER="false")
    run_cli(env, "account", "create", "acme", "--federation-domain", "acme.eu.fleet.example")
    refused = {
        "twin": ("acme.eu.fleet.example", "overlaps"),
        "twin2": ("ACME.eu.fleet.example.", "overlaps"),  # same name in another spelling
        "child": ("edge.acme.eu.fleet.example", "overlaps"),
        "parent": ("eu.fleet.example", "overlaps"),
        "spaces": ("not a domain", "not a valid DNS domain"),
        "wild": ("*.fleet.example", "not a valid DNS domain"),
        "single": ("localhost", "at least two labels"),
        "longlabel": ("a" * 64 + ".example", "not a valid DNS domain"),
    }
    for name, (domain, says) in refused.items():
        proc = run_cli(env, "account", "create", name, "--federation-domain", domain, check=False)
        assert proc.returncode != 0, (name, proc.stdout)
        assert says in proc.stderr, (name, proc.stderr)
        assert "Traceback" not in proc.stderr
    # Nothing was created by the refusals: the names are free, and a separate domain is accepted.
    proc = run_cli(env, "account", "create", "twin", "--federation-domain", "globex.us.fleet.example")
    assert "globex.us.fleet.example" in proc.stdout
    proc = run_cli(env, "account", "create", "child", "--federation-domain", "Initech.Fleet.Example.")
    assert "(federation domain initech.fleet.example)" in proc.stdout


@pytest.mark.parametrize("bad", ["", ".", "a..b", "-a.b", "a-.b", "a_b.c", "a.b" + ".c" * 130, "1.2.3.4"])
def test_normalize_domain_refuses_what_is_not_a_dns_domain(bad: str) -> None:
    from fleet_mcp.federation.accounts import normalize_domain

    with pytest.raises(InvalidArgument):
        normalize_domain(bad)
