"""Apply: all-or-nothing, refuse-on-conflict (stale), forced apply, reject — on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from fleet_mcp import live
from fleet_mcp.db.models import Assignment, FleetEvent, Module, ProviderConfig, Template
from fleet_mcp.errors import Conflict, InvalidArgument, NotFound
from fleet_mcp.fleet.spec import canonical_attributes, fingerprint
from fleet_mcp.gitops import service as gitops
from fleet_mcp.gitops.models import GitOpsProposal
from tests.gitops.gitops_helpers import BASE_FLEET, FleetRepo

pytestmark = pytest.mark.anyio


async def _setup(uow, account, repo: FleetRepo, options):  # noqa: ANN001, ANN202
    async def fn(s):  # noqa: ANN001, ANN202
        r = await gitops.register_repository(s, account_id=account.id, name="fleet", repo_url=repo.url,
                                             allow_local=True)
        return r.id

    repo_id = await uow(fn)
    run = await uow(lambda s: gitops.sync_repository(s, account_id=account.id, repository_id=repo_id,
                                                     options=options))
    return repo_id, run


async def _live(sessionmaker, account) -> dict[tuple[str, str], object]:  # noqa: ANN001
    out = {}
    async with sessionmaker() as s:
        for kind, model in (("template", Template), ("module", Module), ("assignment", Assignment),
                            ("provider_config", ProviderConfig)):
            for row in (await s.execute(select(model).where(model.account_id == account.id))).scalars():
                out[(kind, row.name)] = row
    return out


async def _by_id(uow, account, ids) -> list[GitOpsProposal]:  # noqa: ANN001
    props = await uow(lambda s: gitops.list_proposals(s, account_id=account.id))
    return [p for p in props if p.id in set(ids)]


async def test_apply_sync_run_creates_everything_owned_by_the_repository(
    uow, account, fleet_repo, options, sessionmaker
) -> None:
    repo_id, run = await _setup(uow, account, fleet_repo, options)
    result = await uow(lambda s: gitops.apply_sync_run(s, account_id=account.id, sync_run_id=run.id,
                                                       applied_by="acme/alice"))
    assert (result.applied, result.conflict, result.error) == (True, False, None)
    assert [r["status"] for r in result.results] == ["applied"] * 7
    rows = await _live(sessionmaker, account)
    assert len(rows) == 7
    web = rows[("template", "web")]
    assert (web.managed_by, web.revision) == (f"gitops:{repo_id}", 1)
    assert web.attributes == canonical_attributes("template", {"description": "Web nodes", "node_platform": "linux",
                                                               "metadata": {"team": "web"}})
    assert web.fingerprint == fingerprint(web.attributes)
    props = await _by_id(uow, account, run.proposal_ids)
    assert all(p.status == "applied" and p.applied_at and p.decided_by == "acme/alice" for p in props)
    events = await uow(lambda s: s.execute(select(FleetEvent).where(FleetEvent.kind == "gitops.applied")))
    assert events.scalars().one().payload["count"] == 7

    # Applying again: nothing pending.
    with pytest.raises(Conflict, match="already applied"):
        await uow(lambda s: gitops.apply_sync_run(s, account_id=account.id, sync_run_id=run.id))
    with pytest.raises(Conflict, match="already applied"):
        await uow(lambda s: gitops.apply_proposal(s, account_id=account.id, proposal_id=run.proposal_ids[0]))

    # The next sync sees no drift.
    again = await uow(lambda s: gitops.sync_repository(s, account_id=account.id, repository_id=repo_id,
                                                       options=options))
    assert (again.status, again.diff_count, again.proposal_ids) == ("success", 0, [])


async def test_update_and_delete_in_dependency_order(uow, account, fleet_repo, options, sessionmaker) -> None:
    repo_id, run = await _setup(uow, account, fleet_repo, options)
    await uow(lambda s: gitops.apply_sync_run(s, account_id=account.id, sync_run_id=run.id))
    fleet_repo.commit({"fleet.yaml": BASE_FLEET.replace("priority: 10", "priority: 20")
                       .replace("  db:\n    description: Databases\n", "")
                       .replace("  postgres: {variety: instance, priority: 5}\n", "")
                       .replace("  db:postgres: {}\n", "")})
    run2 = await uow(lambda s: gitops.sync_repository(s, account_id=account.id, repository_id=repo_id,
                                                      options=options))
    props = await uow(lambda s: gitops.list_proposals(s, account_id=account.id, sync_run_id=run2.id))
    assert [(p.action, p.kind, p.name, p.risk) for p in props] == [
        ("update", "module", "nginx", "medium"),
        ("delete", "assignment", "db:postgres", "high"),
        ("delete", "module", "postgres", "high"),
        ("delete", "template", "db", "high"),
    ]
    nginx = props[0]
    assert nginx.fields == [{"path": "priority", "live": 10, "desired": 20}]
    assert nginx.base_fingerprint == (await _live(sessionmaker, account))[("module", "nginx")].fingerprint

    # Deleting the template alone would leave its assignment dangling: refused, nothing changes.
    tpl = props[3]
    single = await uow(lambda s: gitops.apply_proposal(s, account_id=account.id, proposal_id=tpl.id))
    assert not single.applied and "still used by assignment 'db:postgres'" in single.error
    assert ("template", "db") in await _live(sessionmaker, account)
    # That proposal failed; the rest of the run applies in order.
    result = await uow(lambda s: gitops.apply_sync_run(s, account_id=account.id, sync_run_id=run2.id))
    assert result.applied and len(result.proposals) == 3
    rows = await _live(sessionmaker, account)
    assert ("module", "postgres") not in rows and ("assignment", "db:postgres") not in rows
    assert rows[("module", "nginx")].revision == 2 and rows[("module", "nginx")].attributes["priority"] == 20
    assert ("template", "db") in rows  # its proposal failed; a new sync opens a fresh one
    run3 = await uow(lambda s: gitops.sync_repository(s, account_id=account.id, repository_id=repo_id,
                                                      options=options))
    assert run3.diff_summary["by_action"] == {"create": 0, "update": 0, "delete": 1}
    assert (await uow(lambda s: gitops.apply_sync_run(s, account_id=account.id, sync_run_id=run3.id))).applied


async def test_stale_after_manual_edit_then_forced_apply(uow, account, fleet_repo, options, sessionmaker) -> None:
    repo_id, run = await _setup(uow, account, fleet_repo, options)
    await uow(lambda s: gitops.apply_sync_run(s, account_id=account.id, sync_run_id=run.id))
    fleet_repo.commit({"fleet.yaml": BASE_FLEET.replace("description: Web nodes", "description: Web tier")})
    run2 = await uow(lambda s: gitops.sync_repository(s, account_id=account.id, repository_id=repo_id,
                                                      options=options))
    (proposal_id,) = run2.proposal_ids

    # An operator edits the same template by hand (the manual path).
    await uow(lambda s: live.put(s, account.id, "template", "web", {"description": "hand-tuned"}))
    before = (await _live(sessionmaker, account))[("template", "web")]
    assert (before.revision, before.managed_by) == (2, "manual")

    refused = await uow(lambda s: gitops.apply_proposal(s, account_id=account.id, proposal_id=proposal_id))
    assert (refused.applied, refused.conflict) == (False, True)
    assert "changed since proposal" in refused.error and "revision 2" in refused.error
    (p,) = await _by_id(uow, account, [proposal_id])
    assert (p.status, p.conflict) == ("stale", True)
    after = (await _live(sessionmaker, account))[("template", "web")]
    assert (after.revision, after.fingerprint, after.attributes["description"]) == (
        before.revision, before.fingerprint, "hand-tuned")

    with pytest.raises(Conflict, match="is stale"):  # without force a stale proposal stays refused
        await uow(lambda s: gitops.apply_proposal(s, account_id=account.id, proposal_id=proposal_id))

    forced = await uow(lambda s: gitops.apply_proposal(s, account_id=account.id, proposal_id=proposal_id,
                                                       force=True, applied_by="acme/bob"))
    assert (forced.applied, forced.conflict) == (True, False)
    (p,) = await _by_id(uow, account, [proposal_id])
    assert (p.status, p.forced, p.decided_by) == ("applied", True, "acme/bob")
    web = (await _live(sessionmaker, account))[("template", "web")]
    assert (web.revision, web.managed_by, web.attributes["description"]) == (3, f"gitops:{repo_id}", "Web tier")


async def test_stale_member_blocks_the_whole_run(uow, account, fleet_repo, options, sessionmaker) -> None:
    repo_id, run = await _setup(uow, account, fleet_repo, options)
    # Someone creates one of the resources by hand before the run is applied.
    await uow(lambda s: live.put(s, account.id, "module", "nginx", {"variety": "config"}))
    result = await uow(lambda s: gitops.apply_sync_run(s, account_id=account.id, sync_run_id=run.id))
    assert (result.applied, result.conflict) == (False, True)
    assert "1 of 7 proposal(s) are stale" in result.error and "created meanwhile" in result.error
    statuses = {r["proposal_id"]: r["status"] for r in result.results}
    assert sorted(statuses.values()) == ["pending"] * 6 + ["stale"]
    rows = await _live(sessionmaker, account)
    assert list(rows) == [("module", "nginx")]  # nothing else was created
    # Force applies all of them, taking over the hand-made module.
    forced = await uow(lambda s: gitops.apply_sync_run(s, account_id=account.id, sync_run_id=run.id, force=True))
    assert forced.applied and len(forced.proposals) == 7
    nginx = (await _live(sessionmaker, account))[("module", "nginx")]
    assert (nginx.attributes["variety"], nginx.managed_by, nginx.revision) == ("role", f"gitops:{repo_id}", 2)


async def _inject_fault(sessionmaker, dialect: str) -> None:  # noqa: ANN001
    """A real database-level fault: a trigger that refuses inserting the module 'postgres'."""
    async with sessionmaker() as s, s.begin():
        if dialect == "sqlite":
            await s.execute(text(
                "CREATE TRIGGER inject_fault BEFORE INSERT ON modules WHEN NEW.name = 'postgres' "
                "BEGIN SELECT RAISE(ABORT, 'injected fault: module postgres refused'); END"
            ))
        else:
            await s.execute(text(
                "CREATE FUNCTION inject_fault() RETURNS trigger AS $$ BEGIN "
                "IF NEW.name = 'postgres' THEN RAISE EXCEPTION 'injected fault: module postgres refused'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            ))
            await s.execute(text(
                "CREATE TRIGGER inject_fault BEFORE INSERT ON modules FOR EACH ROW EXECUTE FUNCTION inject_fault()"
            ))


async def test_one_failing_change_rolls_back_the_batch(uow, account, fleet_repo, options, sessionmaker,
                                                       engine) -> None:
    repo_id, run = await _setup(uow, account, fleet_repo, options)
    await _inject_fault(sessionmaker, engine.dialect.name)
    result = await uow(lambda s: gitops.apply_sync_run(s, account_id=account.id, sync_run_id=run.id))
    assert (result.applied, result.conflict) == (False, False)
    assert "injected fault: module postgres refused" in result.error
    assert await _live(sessionmaker, account) == {}  # the provider config, templates and nginx were rolled back
    props = {p.name: p for p in await _by_id(uow, account, run.proposal_ids)}
    assert {p.status for p in props.values()} == {"failed"}
    assert "injected fault" in props["postgres"].error
    assert props["web"].error.startswith(f"not applied: the batch was rolled back because proposal "
                                         f"{props['postgres'].id} (module postgres) failed")
    # Statement text and parameters never leak into the reason.
    assert "INSERT" not in props["postgres"].error and "Web nodes" not in props["postgres"].error


async def test_reject(uow, account, fleet_repo, options) -> None:
    _, run = await _setup(uow, account, fleet_repo, options)
    pid = run.proposal_ids[0]
    with pytest.raises(InvalidArgument, match="reason is required"):
        await uow(lambda s: gitops.reject_proposal(s, account_id=account.id, proposal_id=pid, reason="  "))
    p = await uow(lambda s: gitops.reject_proposal(s, account_id=account.id, proposal_id=pid,
                                                   reason="not this quarter", decided_by="acme/carol"))
    assert (p.status, p.reason, p.decided_by) == ("rejected", "not this quarter", "acme/carol")
    with pytest.raises(Conflict, match="is rejected"):
        await uow(lambda s: gitops.apply_proposal(s, account_id=account.id, proposal_id=pid))
    with pytest.raises(Conflict, match="is rejected"):
        await uow(lambda s: gitops.reject_proposal(s, account_id=account.id, proposal_id=pid, reason="again"))
    with pytest.raises(NotFound):
        await uow(lambda s: gitops.reject_proposal(s, account_id=account.id, proposal_id=10_000, reason="x"))
    # the rest of the run still applies (the rejected one is skipped)
    result = await uow(lambda s: gitops.apply_sync_run(s, account_id=account.id, sync_run_id=run.id))
    assert result.applied and pid not in {p.id for p in result.proposals}


async def test_delete_repository_releases_its_resources(uow, account, fleet_repo, options, sessionmaker) -> None:
    repo_id, run = await _setup(uow, account, fleet_repo, options)
    await uow(lambda s: gitops.apply_sync_run(s, account_id=account.id, sync_run_id=run.id))
    out = await uow(lambda s: gitops.delete_repository(s, account_id=account.id, repository_id=repo_id))
    assert out == {"proposals_deleted": 7, "sync_runs_deleted": 1, "resources_released": 7}
    assert {r.managed_by for r in (await _live(sessionmaker, account)).values()} == {"manual"}
