"""Repositories and sync against real git repositories, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt

import anyio
import pytest
from sqlalchemy import func, select

from fleet_mcp.db.base import utcnow
from fleet_mcp.db.models import FleetEvent
from fleet_mcp.errors import Busy, Conflict, InvalidArgument, NotFound
from fleet_mcp.gitops import service as gitops
from fleet_mcp.gitops.models import GitOpsProposal, GitOpsRepository, GitOpsSyncRun
from tests.gitops.gitops_helpers import BASE_FLEET, FleetRepo

pytestmark = pytest.mark.anyio


async def _register(uow, account, repo: FleetRepo, **kw) -> int:  # noqa: ANN001
    async def fn(s):  # noqa: ANN001, ANN202
        r = await gitops.register_repository(s, account_id=account.id, name=kw.pop("name", "fleet"),
                                             repo_url=repo.url, allow_local=True, **kw)
        return r.id

    return await uow(fn)


async def _sync(uow, account, repo_id: int, options) -> GitOpsSyncRun:  # noqa: ANN001
    return await uow(lambda s: gitops.sync_repository(s, account_id=account.id, repository_id=repo_id,
                                                      options=options, triggered_by="test"))


async def _proposals(uow, account, **kw) -> list[GitOpsProposal]:  # noqa: ANN001
    return await uow(lambda s: gitops.list_proposals(s, account_id=account.id, **kw))


async def _count(sessionmaker, model) -> int:  # noqa: ANN001
    async with sessionmaker() as s:
        return (await s.execute(select(func.count()).select_from(model))).scalar_one()


async def test_register_list_get_update_delete(uow, account, other_account, fleet_repo, sessionmaker) -> None:
    repo_id = await _register(uow, account, fleet_repo, branch="main", path_prefix="")
    with pytest.raises(Conflict, match="already registered"):
        await _register(uow, account, fleet_repo)
    for bad in ("ext::sh -c touch% /tmp/x", "--upload-pack=touch /tmp/x", "https://u:p@example.com/x"):
        with pytest.raises(InvalidArgument):
            await uow(lambda s, bad=bad: gitops.register_repository(s, account_id=account.id, name="evil",
                                                                     repo_url=bad, allow_local=True))
    with pytest.raises(InvalidArgument, match="disabled"):
        await uow(lambda s: gitops.register_repository(s, account_id=account.id, name="local",
                                                        repo_url="file://" + fleet_repo.url))
    with pytest.raises(InvalidArgument, match=r"'\.\.'"):
        await _register(uow, account, fleet_repo, name="dots", path_prefix="../outside")
    assert await _count(sessionmaker, GitOpsRepository) == 1

    repos = await uow(lambda s: gitops.list_repositories(s, account_id=account.id))
    assert [r.name for r in repos] == ["fleet"] and repos[0].last_status == "never"
    with pytest.raises(NotFound):  # another account cannot see it
        await uow(lambda s: gitops.get_repository(s, account_id=other_account.id, repository_id=repo_id))

    updated = await uow(lambda s: gitops.update_repository(s, account_id=account.id, repository_id=repo_id,
                                                           auto_apply=True, credential="git-deploy"))
    assert (updated.auto_apply, updated.credential, updated.branch) == (True, "git-deploy", "main")
    cleared = await uow(lambda s: gitops.update_repository(s, account_id=account.id, repository_id=repo_id,
                                                           credential=None))
    assert cleared.credential is None and cleared.auto_apply is True
    with pytest.raises(InvalidArgument):
        await uow(lambda s: gitops.update_repository(s, account_id=account.id, repository_id=repo_id,
                                                     branch="--upload-pack=x"))

    out = await uow(lambda s: gitops.delete_repository(s, account_id=account.id, repository_id=repo_id))
    assert out["proposals_deleted"] == 0
    assert await _count(sessionmaker, GitOpsRepository) == 0


async def test_sync_opens_one_proposal_per_change(uow, account, fleet_repo, options) -> None:
    repo_id = await _register(uow, account, fleet_repo)
    run = await _sync(uow, account, repo_id, options)
    head = fleet_repo.git("rev-parse", "HEAD")
    assert (run.status, run.revision, run.diff_count, run.truncated, run.error) == ("success", head, 7, False, None)
    assert run.diff_summary["by_action"] == {"create": 7, "update": 0, "delete": 0}
    assert run.diff_summary["by_kind"]["assignment"] == {"create": 2}
    assert run.diff_summary["opened"] == 7 and run.finished_at is not None

    proposals = await _proposals(uow, account, sync_run_id=run.id)
    assert [p.id for p in proposals] == run.proposal_ids
    # dependency order: provider configs, templates, modules, then assignments
    assert [(p.kind, p.name) for p in proposals] == [
        ("provider_config", "aws-eu"), ("template", "db"), ("template", "web"), ("module", "nginx"),
        ("module", "postgres"), ("assignment", "db:postgres"), ("assignment", "web:nginx"),
    ]
    assert {(p.status, p.action, p.risk, p.base_fingerprint, p.revision) for p in proposals} == {
        ("pending", "create", "low", None, head)
    }
    web = next(p for p in proposals if p.name == "web")
    assert {"path": "metadata.team", "live": None, "desired": "web"} in web.fields

    repo = await uow(lambda s: gitops.get_repository(s, account_id=account.id, repository_id=repo_id))
    assert (repo.last_status, repo.last_synced_revision, repo.last_error) == ("success", head, None)
    assert repo.last_synced_at is not None and repo.sync_claim is None
    assert repo.desired_revision == head and repo.desired_state["resources"]["module"]["nginx"]["priority"] == 10


async def test_dedup_and_supersede(uow, account, fleet_repo, options, sessionmaker) -> None:
    repo_id = await _register(uow, account, fleet_repo)
    first = await _sync(uow, account, repo_id, options)
    again = await _sync(uow, account, repo_id, options)
    assert again.status == "success" and again.proposal_ids == first.proposal_ids
    assert (again.diff_summary["opened"], again.diff_summary["reused"]) == (0, 7)
    assert await _count(sessionmaker, GitOpsProposal) == 7

    # nginx's desired state changes; db and db:postgres leave the file.
    fleet_repo.commit({"fleet.yaml": BASE_FLEET.replace("priority: 10", "priority: 20")
                       .replace("  db:\n    description: Databases\n", "")
                       .replace("  db:postgres: {}\n", "")})
    third = await _sync(uow, account, repo_id, options)
    assert third.diff_summary["opened"] == 1 and third.diff_summary["reused"] == 4
    assert third.diff_summary["superseded"] == 3
    by_name = {p.name: p for p in await _proposals(uow, account, repository_id=repo_id)}
    nginx_new = next(p for p in await _proposals(uow, account, sync_run_id=third.id) if p.name == "nginx")
    old_nginx = next(p for p in await _proposals(uow, account, status="superseded") if p.name == "nginx")
    assert old_nginx.superseded_by == nginx_new.id and nginx_new.desired["priority"] == 20
    gone = {p.name for p in await _proposals(uow, account, status="superseded")} - {"nginx"}
    assert gone == {"db", "db:postgres"}
    assert by_name["db"].status == "superseded" and "no longer needed" in by_name["db"].reason
    pending = await _proposals(uow, account, status="pending")
    assert sorted(p.name for p in pending) == ["aws-eu", "nginx", "postgres", "web", "web:nginx"]
    assert len(pending) == len({(p.kind, p.name) for p in pending})  # never two pending for one resource


async def test_partial_cap_opens_the_rest_on_later_syncs(uow, account, fleet_repo, options) -> None:
    capped = dataclasses.replace(options, max_proposals_per_sync=3)
    repo_id = await _register(uow, account, fleet_repo)
    run = await _sync(uow, account, repo_id, capped)
    assert (run.status, run.truncated, run.diff_count, len(run.proposal_ids)) == ("partial", True, 7, 3)
    assert run.diff_summary["not_opened"] == 4 and "max_proposals_per_sync" in run.error
    opened = await _proposals(uow, account, sync_run_id=run.id)
    assert [p.kind for p in opened] == ["provider_config", "template", "template"]  # dependency order first
    repo = await uow(lambda s: gitops.get_repository(s, account_id=account.id, repository_id=repo_id))
    assert repo.last_status == "partial"

    run2 = await _sync(uow, account, repo_id, capped)
    assert (run2.status, len(run2.proposal_ids), run2.diff_summary["reused"]) == ("partial", 6, 3)
    run3 = await _sync(uow, account, repo_id, capped)
    assert (run3.status, run3.truncated, len(run3.proposal_ids)) == ("success", False, 7)


async def test_failures_are_recorded_with_their_stage(uow, account, fleet_repo, options, sessionmaker) -> None:
    repo_id = await _register(uow, account, fleet_repo, branch="release")
    run = await _sync(uow, account, repo_id, options)
    assert (run.status, run.stage, run.revision) == ("failed", "fetch", None)
    assert "branch 'release' does not exist" in run.error
    repo = await uow(lambda s: gitops.get_repository(s, account_id=account.id, repository_id=repo_id))
    assert repo.last_status == "failed" and repo.last_error.startswith("fetch: ")

    await uow(lambda s: gitops.update_repository(s, account_id=account.id, repository_id=repo_id, branch="main"))
    bad = fleet_repo.commit({"fleet.yaml": "modules:\n  web: {variety: role, priority: high, colour: red}\n"})
    run = await _sync(uow, account, repo_id, options)
    assert (run.status, run.stage, run.revision) == ("failed", "parse", bad)
    assert "modules.web.priority: Input should be a valid integer" in run.error
    assert "modules.web.colour: Extra inputs are not permitted" in run.error

    for hostile in ("a: &x [1]\nb: *x\n", "templates: {}\n" + "#" * (2 * 1024 * 1024)):
        fleet_repo.commit({"fleet.yaml": hostile})
        run = await _sync(uow, account, repo_id, options)
        assert run.status == "failed" and run.stage in ("parse", "fetch")

    link_repo = fleet_repo
    link_repo.commit({"real.yaml": "templates: {}\n"}, remove=("fleet.yaml",))
    (link_repo.path / "fleet.yaml").symlink_to("real.yaml")
    link_repo.commit()
    run = await _sync(uow, account, repo_id, options)
    assert (run.status, run.stage) == ("failed", "fetch") and "symbolic link" in run.error

    assert await _count(sessionmaker, GitOpsProposal) == 0
    events = await uow(lambda s: s.execute(select(FleetEvent.kind).where(FleetEvent.kind == "gitops.sync_failed")))
    assert len(events.all()) == 5


async def test_missing_repository_is_a_failed_fetch(uow, account, tmp_path, options) -> None:
    ghost = FleetRepo.__new__(FleetRepo)
    ghost.path = tmp_path / "no-such-repo"
    repo_id = await _register(uow, account, ghost)
    run = await _sync(uow, account, repo_id, options)
    assert (run.status, run.stage) == ("failed", "fetch") and "repository not found" in run.error


async def test_empty_render_refused_unless_allowed(uow, account, fleet_repo, options, sessionmaker) -> None:
    repo_id = await _register(uow, account, fleet_repo)
    await _sync(uow, account, repo_id, options)
    applied = await uow(lambda s: _apply_last(s, account))
    assert applied.applied
    fleet_repo.commit({"fleet.yaml": "# nothing left\n"})
    failed = await _sync(uow, account, repo_id, options)
    assert (failed.status, failed.stage) == ("failed", "diff") and "delete all 7 live resources" in failed.error
    await uow(lambda s: gitops.update_repository(s, account_id=account.id, repository_id=repo_id, allow_empty=True))
    ok = await _sync(uow, account, repo_id, options)
    assert ok.status == "success" and ok.diff_summary["by_action"]["delete"] == 7


async def _last(session) -> int:  # noqa: ANN001
    return (await session.execute(select(func.max(GitOpsSyncRun.id)))).scalar_one()


async def _apply_last(session, account) -> gitops.ApplyResult:  # noqa: ANN001
    return await gitops.apply_sync_run(session, account_id=account.id, sync_run_id=await _last(session))


async def test_busy_when_another_sync_holds_the_claim(uow, account, fleet_repo, options, sessionmaker) -> None:
    repo_id = await _register(uow, account, fleet_repo)
    token = await uow(lambda s: gitops.claim_sync(s, account_id=account.id, repository_id=repo_id, options=options))
    with pytest.raises(Busy, match="is being synced"):
        await _sync(uow, account, repo_id, options)
    with pytest.raises(Busy):
        await uow(lambda s: gitops.claim_sync(s, account_id=account.id, repository_id=repo_id, options=options))
    assert await _count(sessionmaker, GitOpsSyncRun) == 0
    # The holder syncs with its token, which releases the claim.
    run = await uow(lambda s: gitops.sync_repository(s, account_id=account.id, repository_id=repo_id,
                                                     options=options, claim_token=token))
    assert run.status == "success"
    assert (await _sync(uow, account, repo_id, options)).status == "success"


async def test_abandoned_claim_is_taken_over(uow, account, fleet_repo, options) -> None:
    repo_id = await _register(uow, account, fleet_repo)
    long_ago = utcnow() - dt.timedelta(seconds=options.claim_ttl + 60)
    await uow(lambda s: gitops.claim_sync(s, account_id=account.id, repository_id=repo_id, options=options,
                                          now=long_ago))
    assert (await _sync(uow, account, repo_id, options)).status == "success"


async def test_concurrent_syncs_never_duplicate(sessionmaker, account, fleet_repo, options, uow) -> None:
    repo_id = await _register(uow, account, fleet_repo)
    outcomes: list[object] = []

    async def one() -> None:
        try:
            async with sessionmaker() as s, s.begin():
                run = await gitops.sync_repository(s, account_id=account.id, repository_id=repo_id,
                                                   options=options)
                outcomes.append(run.status)
        except Busy:
            outcomes.append("busy")

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
    assert outcomes.count("success") >= 1 and set(outcomes) <= {"success", "busy"}
    pending = await _proposals(uow, account, status="pending")
    assert len(pending) == 7 and len({(p.kind, p.name) for p in pending}) == 7


async def test_disabled_repository_is_not_synced(uow, account, fleet_repo, options) -> None:
    repo_id = await _register(uow, account, fleet_repo, enabled=False)
    with pytest.raises(Conflict, match="disabled"):
        await _sync(uow, account, repo_id, options)


async def test_drift_report_writes_nothing(uow, account, fleet_repo, options, sessionmaker) -> None:
    repo_id = await _register(uow, account, fleet_repo)
    before = [await _count(sessionmaker, m) for m in (GitOpsSyncRun, GitOpsProposal, FleetEvent)]
    report = await uow(lambda s: gitops.drift_report(s, account_id=account.id, repository_id=repo_id,
                                                     options=options))
    data = report.to_json()
    assert (data["drift"], data["diff_count"], data["revision"]) == (True, 7, fleet_repo.git("rev-parse", "HEAD"))
    assert data["changes"][0]["kind"] == "provider_config" and data["suppressed"] == []
    assert [await _count(sessionmaker, m) for m in (GitOpsSyncRun, GitOpsProposal, FleetEvent)] == before
    repo = await uow(lambda s: gitops.get_repository(s, account_id=account.id, repository_id=repo_id))
    assert repo.last_status == "never" and repo.desired_state is None


async def _prefetch(sessionmaker, account, repo_id: int, options, **kw):  # noqa: ANN001, ANN202
    async with sessionmaker() as session:  # a read session: prefetch writes nothing
        return await gitops.prefetch(session, account_id=account.id, repository_id=repo_id, options=options, **kw)


async def test_prefetch_outside_the_transaction(uow, account, fleet_repo, options, sessionmaker) -> None:
    repo_id = await _register(uow, account, fleet_repo)
    fetched = await _prefetch(sessionmaker, account, repo_id, options)
    assert fetched.outcome.commit == fleet_repo.git("rev-parse", "HEAD")
    assert (fetched.source.branch, fetched.source.path_prefix, fetched.source.credential) == ("main", "", None)
    run = await uow(lambda s: gitops.sync_repository(s, account_id=account.id, repository_id=repo_id,
                                                     options=options, prefetched=fetched))
    assert (run.status, run.revision, run.diff_count) == ("success", fetched.outcome.commit, 7)

    await uow(lambda s: gitops.update_repository(s, account_id=account.id, repository_id=repo_id, branch="gone"))
    failed = await _prefetch(sessionmaker, account, repo_id, options)
    assert isinstance(failed.outcome, NotFound)
    run = await uow(lambda s: gitops.sync_repository(s, account_id=account.id, repository_id=repo_id,
                                                     options=options, prefetched=failed))
    assert (run.status, run.stage) == ("failed", "fetch")

    await uow(lambda s: gitops.update_repository(s, account_id=account.id, repository_id=repo_id,
                                                 branch="main", credential="deploy-key"))
    no_store = await _prefetch(sessionmaker, account, repo_id, options)
    assert "no credential store" in str(no_store.outcome)
    with pytest.raises(NotFound):
        await _prefetch(sessionmaker, account, 999, options)


async def test_a_prefetch_for_an_older_source_is_not_used(uow, account, fleet_repo, options, sessionmaker) -> None:
    repo_id = await _register(uow, account, fleet_repo)
    old = await _prefetch(sessionmaker, account, repo_id, options)
    fleet_repo.git("checkout", "-q", "-b", "next")
    head = fleet_repo.commit({"fleet.yaml": "templates:\n  only: {}\n"}, "next branch")
    await uow(lambda s: gitops.update_repository(s, account_id=account.id, repository_id=repo_id, branch="next"))
    run = await uow(lambda s: gitops.sync_repository(s, account_id=account.id, repository_id=repo_id,
                                                     options=options, prefetched=old))
    assert (run.status, run.revision, run.diff_count) == ("success", head, 1)
    report = await uow(lambda s: gitops.drift_report(s, account_id=account.id, repository_id=repo_id,
                                                     options=options, prefetched=old))
    assert (report.revision, report.diff_count) == (head, 1)
