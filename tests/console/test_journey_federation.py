"""Journey 2 in Chromium: alpha proposes federation and copies the one-time token; beta pastes it into the
accept dialog; the handshake makes the peer active; revoking (typed confirmation) makes the handshake fail."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def _confirm(page) -> None:  # noqa: ANN001
    expect(page.locator("h1")).to_contain_text("Confirm")
    page.click("button:has-text('Approve and run')")


def test_propose_copy_accept_handshake_revoke(fleet, people) -> None:  # noqa: ANN001
    alpha = people(fleet.token("alpha", "alpha-ops", "operator"), "alpha")
    beta = people(fleet.token("beta", "beta-ops", "operator"), "beta")
    alpha.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=fleet.url)

    # alpha proposes; the policy asks a person; the token is shown once, with a copy button.
    alpha.go("/federation")
    alpha.page.fill("input[name=remote_account]", "beta")
    alpha.page.fill("input[name=remote_prefix_advertisement]", "10.20.0.0/16")
    alpha.page.click("button:has-text('Propose')")
    expect(alpha.page.locator("#effect")).to_contain_text("Propose federating alpha with beta")
    _confirm(alpha.page)
    token = alpha.page.locator("#acceptance-token").inner_text().strip()
    assert token
    alpha.page.click("button:has-text('Copy token')")
    expect(alpha.page.locator("button[data-copy]")).to_have_text("Copied")
    assert alpha.page.evaluate("navigator.clipboard.readText()") == token
    alpha.shot("console-federation-token.png")
    alpha.go("/federation")
    expect(alpha.page.locator("main")).not_to_contain_text(token)  # never shown again

    # beta pastes it into the accept dialog.
    beta.go("/federation")
    incoming = beta.page.locator("[id^=incoming-]")
    expect(incoming).to_contain_text("alpha proposes")
    incoming.locator("input[name=acceptance_token]").fill(token)
    beta.shot("console-federation-accept.png")
    incoming.locator("button:has-text('Accept with token')").click()
    expect(beta.page.locator("#arguments")).to_contain_text('"acceptance_token": "***"')
    expect(beta.page.locator("main")).not_to_contain_text(token)
    _confirm(beta.page)
    expect(beta.page.locator("#outcome")).to_contain_text("ran")
    beta.page.click("#continue")
    expect(beta.page.locator("#peer-status")).to_have_text("accepted")

    # Handshake → active.
    beta.page.click("button:has-text('Check handshake')")
    expect(beta.page.locator("#handshake")).to_have_text("Handshake succeeded")
    beta.page.click("#continue")
    expect(beta.page.locator("#peer-status")).to_have_text("active")
    beta.shot("console-federation-peer.png")

    # Suspend and resume (each confirmed), then the handshake makes it active again.
    beta.page.locator("form:has(button:has-text('Suspend')) input[name=reason]").fill("maintenance window")
    beta.page.click("button:has-text('Suspend')")
    _confirm(beta.page)
    beta.page.click("#continue")
    expect(beta.page.locator("#peer-status")).to_have_text("suspended")
    beta.page.locator("form:has(button:has-text('Resume')) input[name=reason]").fill("maintenance over")
    beta.page.click("button:has-text('Resume')")
    _confirm(beta.page)
    beta.page.click("#continue")
    expect(beta.page.locator("#peer-status")).to_have_text("accepted")
    beta.page.click("button:has-text('Check handshake')")
    expect(beta.page.locator("#handshake")).to_have_text("Handshake succeeded")

    # alpha revokes: a wrong typed name is refused and nothing runs; the right one asks for confirmation.
    alpha.go("/federation")
    alpha.page.click("a.peer-link")
    alpha.page.fill("textarea[name=reason], input[name=reason] >> nth=-1", "decommissioned")
    alpha.page.fill("input[name=_typed]", "bet")
    alpha.page.click("button:has-text('Revoke for good')")
    expect(alpha.page.locator("h1")).to_have_text("Not confirmed")
    alpha.page.go_back()
    alpha.page.reload()
    alpha.page.fill("textarea[name=reason], input[name=reason] >> nth=-1", "decommissioned")
    alpha.page.fill("input[name=_typed]", "beta")
    alpha.page.click("button:has-text('Revoke for good')")
    expect(alpha.page.locator("#effect")).to_contain_text("Revoke (terminal)")
    _confirm(alpha.page)
    alpha.page.click("#continue")
    expect(alpha.page.locator("#peer-status")).to_have_text("revoked")

    # The same handshake now fails.
    alpha.page.click("button:has-text('Check handshake')")
    expect(alpha.page.locator("#handshake")).to_have_text("Handshake FAILED")
    expect(alpha.page.locator("main")).to_contain_text("failed:")
