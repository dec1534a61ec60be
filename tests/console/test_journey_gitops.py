"""Journey 1 in Chromium: an operator syncs a real git repository, reviews a proposal's diff and sends the
whole run to approval; an approver approves it from the inbox; live state changes; the audit page shows both."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.console.conftest import approval_id
from tests.gitops.gitops_helpers import BASE_FLEET, FleetRepo

pytestmark = pytest.mark.browser


def test_sync_review_queue_approve_apply(fleet, people, tmp_path) -> None:  # noqa: ANN001
    repo = FleetRepo(tmp_path / "repo")
    repo.commit({"fleet.yaml": BASE_FLEET}, "desired state")
    olga = people(fleet.token("acme", "olga", "operator"), "olga")
    ben = people(fleet.token("acme", "ben", "approver"), "ben")
    page = olga.page

    # Register and sync through the console.
    olga.go("/gitops")
    page.fill("input[name=name]", "fleet")
    page.fill("input[name=repo_url]", repo.url)
    page.click("button:has-text('Register')")
    expect(page.locator("#outcome")).to_contain_text("ran")
    olga.go("/gitops")
    page.click("button:has-text('Sync now')")
    expect(page.locator("#outcome")).to_contain_text("system_gitops_sync_repository")
    page.click("#continue")
    page.click("a.run-link")
    expect(page.locator("h1")).to_contain_text("Sync run #1")
    expect(page.locator("a.proposal-link")).to_have_count(7)

    # The diff of one proposal: per field, old → new.
    page.locator("tr").filter(has_text="template").filter(has=page.locator("code:text-is('web')")) \
        .locator("a.proposal-link").click()
    expect(page.locator("h1")).to_contain_text("create template web")
    diff = page.locator("table[aria-label='Field changes']")
    expect(diff.locator("tr.field")).to_have_count(3)
    expect(diff).to_contain_text("metadata.team")
    expect(diff.locator("td.old").first).to_contain_text("(absent)")
    olga.shot("console-proposal-diff.png")
    page.click("text=Collapse all")
    expect(page.locator("details#diff")).not_to_have_attribute("open", "")

    # Apply the whole run: the policy asks a person; the operator sends it to an approver.
    page.click("button:has-text('Apply the whole run')")
    expect(page.locator("h1")).to_contain_text("Confirm")
    expect(page.locator("#effect")).not_to_be_empty()
    expect(page.locator("#digest")).to_have_text(page.locator("#digest").inner_text())
    olga.shot("console-confirm.png")
    page.click("button:has-text('Send to an approver instead')")
    expect(page.locator("#outcome")).to_contain_text("Queued for approval")
    apr = approval_id(page.locator("#approval-id").inner_text())

    # The requester sees no approve button on her own request, only withdraw.
    olga.go("/")
    row = page.locator(f"#row-{apr}")
    expect(row).to_contain_text("system_gitops_apply_sync_run")
    expect(row.locator("button:has-text('Approve')")).to_have_count(0)
    expect(row.locator("button:has-text('Withdraw')")).to_have_count(1)

    # The approver approves from the inbox with a reason.
    ben.go("/")
    brow = ben.page.locator(f"#row-{apr}")
    expect(brow).to_contain_text("acme/olga")
    expect(brow).to_contain_text("0 / 1")
    ben.shot("console-inbox.png")
    brow.locator("input[name=reason]").fill("reviewed the diff")
    brow.locator("button:has-text('Approve')").click()
    expect(ben.page.locator("#outcome")).to_contain_text("ran")
    expect(ben.page.locator("details pre")).to_contain_text('"executed": true')
    changes = ben.page.locator("table[aria-label='Per-change result'] tbody tr")
    expect(changes).to_have_count(7)
    expect(changes.filter(has_text="applied")).to_have_count(7)

    # Live state changed: every proposal applied, and git and live agree.
    olga.go("/gitops/runs/1")
    expect(page.locator("td:has-text('applied')")).to_have_count(7)
    olga.go("/gitops/repositories/1/drift")
    expect(page.locator("main")).to_contain_text("live state matches git")

    # Both steps are in the audit page, linked by the approval id.
    olga.go(f"/audit?approval_id={apr}")
    rows = page.locator("tr.audit-row")
    expect(rows.filter(has_text="system_gitops_apply_sync_run").filter(has_text="approval_required")).to_have_count(1)
    expect(rows.filter(has_text="acme/ben").filter(has_text="approve")).not_to_have_count(0)
    expect(rows.filter(has_text="acme/olga").filter(has_text="approved")).to_have_count(1)
    expect(page.locator("#chain")).to_contain_text("Hash chain verified")
    olga.shot("console-audit.png")
    assert not olga.dialogs and not ben.dialogs
