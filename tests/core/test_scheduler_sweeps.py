"""The scheduler's sweep jobs, one tick each driven directly through `run_once` (the scheduler's own runner,
with the job looked up by its registered name): the effect in the database and the audit row it leaves."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from fleet_mcp import audit, scheduler
from fleet_mcp.db.models import ApprovalRequest, AuditEntry
from fleet_mcp.settings import DEFAULT_POLICY
from fleet_mcp.vault.models import Credential
from tests.conftest import call_as, make_caller

pytestmark = pytest.mark.anyio
MATRIX = Path(__file__).resolve().parents[2] / "fixtures" / "policies" / "gate-matrix.yaml"


def registered(name: str) -> tuple[scheduler.Job, bool]:
    import fleet_mcp.federation.jobs  # noqa: F401  (registers its jobs, as `serve` does)

    for job_name, _interval, fn, per_process in scheduler.JOBS:
        if job_name == name:
            return fn, per_process
    raise AssertionError(f"no scheduler job {name!r}; registered: {[j[0] for j in scheduler.JOBS]}")


async def tick(app, name: str) -> None:  # noqa: ANN001
    fn, per_process = registered(name)
    if per_process:
        await fn(app)
    else:
        assert await scheduler.run_once(app, name, fn)


async def audit_rows(app, tool: str) -> list[AuditEntry]:  # noqa: ANN001
    async with app.sessionmaker() as s:
        return list((await s.execute(select(AuditEntry).where(AuditEntry.tool == tool).order_by(AuditEntry.seq)))
                    .scalars().all())


class TestApprovalExpirySweep:
    @pytest.fixture
    def settings(self, settings):  # noqa: ANN001
        return settings.model_copy(update={"policy": MATRIX})

    async def test_one_tick_expires_due_requests_discards_their_arguments_and_audits_each(self, app) -> None:  # noqa: ANN001
        olga = await make_caller(app, "acme", "olga", ("operator",))
        for name in ("aws", "gcp"):
            out = await call_as(app, olga, "system_put_provider_config", {"name": name, "spec": {"provider": "aws"}})
            assert out.ok, out.message
        due, later = [], []
        for name, bucket in (("aws", due), ("gcp", later)):
            out = await call_as(app, olga, "system_delete_provider_config", {"name": name})
            assert out.data["status"] == "approval_required", out.message
            bucket.append(out.data["approval_id"])
        async with app.sessionmaker() as s, s.begin():
            await s.execute(update(ApprovalRequest).where(ApprovalRequest.id == due[0])
                            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
            sealed = (await s.execute(select(ApprovalRequest.arguments_sealed)
                                      .where(ApprovalRequest.id == due[0]))).scalar_one()
        assert sealed.startswith("credential:")
        sealed_id = int(sealed.split(":", 1)[1])

        await tick(app, "approvals.sweep")

        async with app.sessionmaker() as s:
            reqs = {r.id: r for r in (await s.execute(select(ApprovalRequest))).scalars()}
            sealed_left = (await s.execute(select(func.count()).select_from(Credential)
                                           .where(Credential.id == sealed_id))).scalar_one()
            chain = await audit.verify(s)
        assert reqs[due[0]].status == "expired" and reqs[due[0]].arguments_sealed == ""
        assert reqs[later[0]].status == "pending" and reqs[later[0]].arguments_sealed
        assert sealed_left == 0  # the queued arguments (secrets included) are gone with the request
        rows = await audit_rows(app, "approval.expire")
        assert [(r.approval_id, r.decision, r.outcome, r.principal) for r in rows] == [
            (due[0], "expire", "expired", "system/scheduler")]
        assert chain.ok

        await tick(app, "approvals.sweep")  # nothing more is due: no second row
        assert len(await audit_rows(app, "approval.expire")) == 1


async def test_one_renewal_tick_renews_due_cross_certificates_and_audits_it(app) -> None:  # noqa: ANN001
    from fleet_mcp.federation.models import IssuedCertificate

    alice = await make_caller(app, "acme", "alice", ("admin",))
    bob = await make_caller(app, "globex", "bob", ("operator",))
    r = await call_as(app, alice, "system_sdwan_propose_federation_peer", {"remote_account": "globex"},
                      elicited="accept")
    assert r.ok, r.message
    r = await call_as(app, bob, "system_sdwan_accept_federation_peer",
                      {"federation_peer_id": r.data["federation_peer"]["id"],
                       "acceptance_token": r.data["acceptance_token"]}, elicited="accept")
    assert r.ok, r.message
    await tick(app, "federation.renew_cross_certificates")
    assert await audit_rows(app, "federation.renew_cross_certificates") == []  # nothing due: nothing written

    serial = r.data["cross_certificates"][0]["serial"]
    async with app.sessionmaker() as s, s.begin():  # one cross certificate past half its life
        await s.execute(update(IssuedCertificate).where(IssuedCertificate.serial == serial)
                        .values(not_after=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)))
    await tick(app, "federation.renew_cross_certificates")

    async with app.sessionmaker() as s:
        old = (await s.execute(select(IssuedCertificate).where(IssuedCertificate.serial == serial))).scalar_one()
        chain = await audit.verify(s)
    peer = await call_as(app, alice, "system_sdwan_get_federation_peer",
                         {"federation_peer_id": r.data["federation_peer"]["id"]})
    states = sorted(c["state"] for c in peer.data["federation_peer"]["cross_certificates"])
    assert states == ["current", "current", "superseded"] and old.serial == serial
    rows = await audit_rows(app, "federation.renew_cross_certificates")
    assert [(r_.detail, r_.decision, r_.principal) for r_ in rows] == [
        ({"renewed": 1}, "scheduled", "system/scheduler")]
    assert chain.ok


class TestPolicyReloadTick:
    @pytest.fixture
    def settings(self, settings, tmp_path: Path):  # noqa: ANN001
        policy = tmp_path / "policy.yaml"
        shutil.copyfile(DEFAULT_POLICY, policy)
        return settings.model_copy(update={"policy": policy})

    async def test_one_tick_puts_an_edited_policy_in_force_and_keeps_it_on_a_bad_edit(self, app) -> None:  # noqa: ANN001
        alice = await make_caller(app, "acme", "alice", ("admin",))
        assert (await call_as(app, alice, "system_list_templates")).ok
        path: Path = app.settings.policy
        path.write_text(path.read_text().replace(
            "rules:", "rules:\n  - name: no-listing\n    match: {tools: [system_list_templates]}\n"
                      "    decision: deny\n    description: listing is off\n", 1))

        await tick(app, "policy.reload_if_changed")
        out = await call_as(app, alice, "system_list_templates")
        assert not out.ok and out.data["status"] == "denied" and out.data["rule"] == "no-listing"

        in_force = app.policy.current
        path.write_text("version: 1\nrules: [ {broken\n")
        await tick(app, "policy.reload_if_changed")
        assert app.policy.current is in_force and app.policy.last_error is not None
