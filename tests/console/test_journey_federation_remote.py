"""The console's federation panel with a peer on another fleet-mcp instance, in Chromium: two real `fleet-mcp
serve` processes (own data dirs, databases, keyrings, federation listeners), each operator on its own console.
acme proposes to globex on the other instance and copies the peering token (shown once); globex pastes it (a replaced token is refused); both
panels list the peer with the other instance, its bundle sequence and last refresh; refresh, handshake, suspend
(pushed, and only its holder may resume), resume and revoke (typed confirmation) are clicks through the gate."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from playwright.sync_api import expect

from tests.console.conftest import Person
from tests.federation.test_two_instances import ACME, GLOBEX, Instance, _instance

pytestmark = pytest.mark.browser


def _confirm(page) -> None:  # noqa: ANN001
    expect(page.locator("h1")).to_contain_text("Confirm")
    page.click("button:has-text('Approve and run')")


@pytest.fixture
def regions(tmp_path: Path) -> Iterator[tuple[Instance, Instance]]:
    a = _instance(tmp_path, "eu-west", "acme", ACME)
    b = _instance(tmp_path, "us-east", "globex", GLOBEX)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


def _person(browser, inst: Instance, name: str) -> Person:  # noqa: ANN001
    assert inst.server is not None
    site = SimpleNamespace(url=inst.server.url, ui=inst.server.url + "/ui")
    return Person(browser, site, inst.token, name)  # type: ignore[arg-type]


def _open_peer(person: Person) -> None:
    person.go("/federation")
    person.page.click("a.peer-link")


def test_remote_peer_propose_paste_refresh_handshake_suspend_resume_revoke(browser, regions) -> None:  # noqa: ANN001
    a, b = regions
    acme, globex = _person(browser, a, "acme"), _person(browser, b, "globex")
    try:
        acme.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=acme.fleet.url)

        # acme proposes to an account on another instance: the result is a peering token, shown once.
        acme.go("/federation")
        acme.page.fill("input[name=remote_account]", "globex")
        acme.page.fill("input[name=remote_federation_domain]", GLOBEX)
        acme.page.click("button:has-text('Propose')")
        expect(acme.page.locator("#effect")).to_contain_text("globex")
        _confirm(acme.page)
        token = acme.page.locator("#peering-token").inner_text().strip()
        assert token.startswith("fmcp-peering-v1.")
        body = token.split(".", 1)[1]
        doc = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        secret = doc["tok"]
        expect(acme.page.locator("details pre")).not_to_contain_text(secret)  # not in the result body either
        acme.page.click("button[data-copy=peering-token]")
        expect(acme.page.locator("button[data-copy]")).to_have_text("Copied")
        assert acme.page.evaluate("navigator.clipboard.readText()") == token
        acme.go("/federation")
        expect(acme.page.locator("main")).not_to_contain_text(token)
        expect(acme.page.locator("main")).not_to_contain_text(secret)
        expect(acme.page.locator("td.remote-instance")).to_contain_text("not claimed yet")

        # A new peering token replaces it (the first one stops working); also shown once.
        _open_peer(acme)
        expect(acme.page.locator("main")).not_to_contain_text(secret)
        acme.page.click("button:has-text('New peering token')")
        _confirm(acme.page)
        stale, token = token, acme.page.locator("#peering-token").inner_text().strip()
        assert token.startswith("fmcp-peering-v1.") and token != stale
        body = token.split(".", 1)[1]
        doc = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        secret = doc["tok"]
        acme.page.click("#continue")
        expect(acme.page.locator("main")).not_to_contain_text(secret)

        # globex first pastes the replaced token: refused, nothing stored there.
        globex.go("/federation")
        form = globex.page.locator("form:has(button:has-text('Accept from another instance'))")
        form.locator("input[name=peering_token]").fill(stale)
        form.locator("button").click()
        _confirm(globex.page)
        expect(globex.page.locator("#outcome")).to_contain_text("not valid")
        globex.go("/federation")
        expect(globex.page.locator("main")).to_contain_text("No federation peers.")

        # globex pastes the new one: the confirmation masks it; the accept dials acme's endpoint and checks the pin.
        globex.go("/federation")
        form = globex.page.locator("form:has(button:has-text('Accept from another instance'))")
        form.locator("input[name=peering_token]").fill(token)
        form.locator("button").click()
        expect(globex.page.locator("#arguments")).to_contain_text('"peering_token": "***"')
        expect(globex.page.locator("#effect")).to_contain_text(doc["iss"])
        expect(globex.page.locator("main")).not_to_contain_text(token)
        _confirm(globex.page)
        expect(globex.page.locator("#outcome")).to_contain_text("ran")
        globex.page.click("#continue")
        row = globex.page.locator("td.remote-instance")
        expect(row).to_contain_text(doc["iss"])
        expect(row).to_contain_text(a.endpoint)
        expect(globex.page.locator("main")).to_contain_text("seq 1")

        # The proposing side lists it too, with the other instance and its endpoint.
        acme.go("/federation")
        expect(acme.page.locator("td.remote-instance")).to_contain_text(b.endpoint)
        _open_peer(acme)
        expect(acme.page.locator("#peer-status")).to_have_text("accepted")
        expect(acme.page.locator("#remote-endpoint")).to_have_text(b.endpoint)

        # globex refreshes (a bundle poll over the channel) and checks the handshake: active.
        _open_peer(globex)
        expect(globex.page.locator("#remote-instance-id")).to_have_text(doc["iss"])
        globex.page.click("button:has-text('Refresh now')")
        expect(globex.page.locator("#outcome")).to_contain_text("ran")
        expect(globex.page.locator("details pre")).to_contain_text('"outcome": "ok"')
        globex.page.click("#continue")
        expect(globex.page.locator("#remote-bundle")).not_to_contain_text("last refresh —")
        globex.page.click("button:has-text('Check handshake')")
        expect(globex.page.locator("#handshake")).to_have_text("Handshake succeeded")
        globex.page.click("#continue")
        expect(globex.page.locator("#peer-status")).to_have_text("active")
        acme.page.reload()
        expect(acme.page.locator("#peer-status")).to_have_text("active")

        # acme suspends: the suspension is pushed to globex, where only acme may lift it (no Resume there).
        acme.page.locator("form:has(button:has-text('Suspend')) input[name=reason]").fill("audit")
        acme.page.click("button:has-text('Suspend')")
        _confirm(acme.page)
        acme.page.click("#continue")
        expect(acme.page.locator("#peer-status")).to_have_text("suspended")
        globex.page.reload()
        expect(globex.page.locator("#peer-status")).to_have_text("suspended")
        expect(globex.page.locator("button:has-text('Resume')")).to_have_count(0)
        acme.page.locator("form:has(button:has-text('Resume')) input[name=reason]").fill("audit done")
        acme.page.click("button:has-text('Resume')")
        _confirm(acme.page)
        acme.page.click("#continue")
        expect(acme.page.locator("#peer-status")).to_have_text("accepted")
        globex.page.reload()
        expect(globex.page.locator("#peer-status")).to_have_text("accepted")

        # globex revokes (typed name of the remote account); acme learns it at once and its handshake fails.
        other = f"acme@{doc['iss']}"
        globex.page.fill("textarea[name=reason], input[name=reason] >> nth=-1", "region closed")
        globex.page.fill("input[name=_typed]", other)
        globex.page.click("button:has-text('Revoke for good')")
        expect(globex.page.locator("#effect")).to_contain_text("Revoke (terminal)")
        _confirm(globex.page)
        globex.page.click("#continue")
        expect(globex.page.locator("#peer-status")).to_have_text("revoked")
        expect(globex.page.locator("button:has-text('Refresh now')")).to_have_count(0)
        acme.page.reload()
        expect(acme.page.locator("#peer-status")).to_have_text("revoked")
        acme.page.click("button:has-text('Check handshake')")
        expect(acme.page.locator("#handshake")).to_have_text("Handshake FAILED")
        for who in (acme, globex):  # the copy button's script ran under the CSP (no inline script needed)
            assert not [e for e in who.errors if "Content Security Policy" in e], who.errors
    finally:
        acme.close()
        globex.close()
