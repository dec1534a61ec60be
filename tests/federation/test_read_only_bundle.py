"""Reading the trust bundle never writes: an account without a CA gets a clear error (and still no CA),
through the gate, where read-only tools run on the read-only engine."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from fleet_mcp.federation.models import CertificateAuthority
from fleet_mcp.vault.models import Credential
from tests.conftest import call_as, make_caller
from tests.federation.test_tools import settings  # noqa: F401  (the federation policy)

pytestmark = pytest.mark.anyio


async def _counts(app) -> tuple[int, int]:  # noqa: ANN001
    async with app.sessionmaker() as s:
        cas = (await s.execute(select(func.count()).select_from(CertificateAuthority))).scalar_one()
        creds = (await s.execute(select(func.count()).select_from(Credential))).scalar_one()
    return cas, creds


async def test_bundle_of_an_account_without_a_ca_is_a_clear_error(account, app) -> None:  # noqa: ANN001
    alice = await make_caller(app, "acme", "alice", ("admin",))
    before = await _counts(app)
    for args in ({}, {"include_crls": True}):
        r = await call_as(app, alice, "system_sdwan_get_trust_bundle", args)
        assert not r.ok
        err = r.data["error"]
        assert err["code"] == "not_found", err
        assert "no federation CA yet" in err["message"] and "system_sdwan_issue_node_certificate" in err["hint"]
    assert await _counts(app) == before == (0, 0)

    # Once a write created the CA, the read works (and still writes nothing).
    r = await call_as(app, alice, "system_sdwan_issue_node_certificate", {"node_name": "edge-1"}, elicited="accept")
    assert r.ok, r.message
    created = await _counts(app)
    r = await call_as(app, alice, "system_sdwan_get_trust_bundle", {"include_crls": True})
    assert r.ok and r.data["certificate_count"] == 1 and "X509 CRL" in r.data["crls_pem"]
    assert await _counts(app) == created
