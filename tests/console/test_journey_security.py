"""Journey 4 in Chromium: a viewer sees no action buttons; a forged POST is refused by the gate and audited;
a POST without the CSRF token (or from another origin) is refused before anything runs; hostile names
from fleet.yaml render inert; revoking the token or signing out ends the session at once."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from playwright.sync_api import expect

from tests.conftest import _free_port
from tests.gitops.gitops_helpers import FleetRepo

pytestmark = pytest.mark.browser

HOSTILE_FLEET = r'''templates:
  web:
    description: "<script>window.__pwned=1</script> \"double\" 'single' \u202Eexe.txt"
    metadata: {note: "<img src=x onerror=window.__pwned=2>"}
'''
HOSTILE_REPO = "<img src=x onerror=window.__pwned=3> \"q\" 'q' \u202Egpj.exe"
VIEWER_PAGES = ("/", "/gitops", "/gitops/repositories/1", "/gitops/repositories/1/drift", "/gitops/runs/1",
                "/gitops/proposals/1", "/federation", "/vault", "/audit", "/events")


def test_viewer_forgery_csrf_hostile_names_and_revocation(fleet, people, tmp_path) -> None:  # noqa: ANN001
    repo = FleetRepo(tmp_path / "repo")
    repo.commit({"fleet.yaml": HOSTILE_FLEET}, "hostile")
    olga = people(fleet.token("acme", "olga", "operator"), "olga")
    vic = people(fleet.token("acme", "vic", "viewer"), "vic")

    # Security headers and cookie flags.
    response = vic.page.goto(fleet.ui + "/")
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    cookie = next(c for c in vic.context.cookies() if c["name"] == "fleet_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # A hostile repository name is refused, and the refusal shows it as text; a plain name syncs.
    olga.go("/gitops")
    olga.page.fill("input[name=name]", HOSTILE_REPO)
    olga.page.fill("input[name=repo_url]", repo.url)
    olga.page.click("button:has-text('Register')")
    expect(olga.page.locator("#outcome")).to_contain_text("invalid repository name '<img src=x onerror")
    assert olga.page.evaluate("window.__pwned") is None
    olga.go("/gitops")
    olga.page.fill("input[name=name]", "hostile")
    olga.page.fill("input[name=repo_url]", repo.url)
    olga.page.click("button:has-text('Register')")
    expect(olga.page.locator("#outcome")).to_contain_text("ran")
    olga.go("/gitops")
    olga.page.click("button:has-text('Sync now')")
    expect(olga.page.locator("#outcome")).to_contain_text("ran")

    # Hostile text renders as text: no script ran, the bidi override is shown as a marker.
    for who in (olga, vic):
        who.go("/gitops/proposals/1")
        diff = who.page.locator("table[aria-label='Field changes']")
        expect(diff).to_contain_text("<script>window.__pwned=1</script> \"double\" 'single' [U+202E]exe.txt")
        expect(diff).to_contain_text("<img src=x onerror=window.__pwned=2>")
        assert who.page.evaluate("window.__pwned") is None
        assert who.page.locator("main script, main img").count() == 0
        assert not who.dialogs
    vic.shot("console-hostile-names.png")

    # The viewer sees no action anywhere.
    for path in VIEWER_PAGES:
        vic.go(path)
        expect(vic.page.locator("h1")).not_to_have_text("Internal error")
        expect(vic.page.locator("form[action*='/call/']")).to_have_count(0)

    # A forged POST with a valid session and CSRF token: the gate refuses it and audits the refusal.
    forged = vic.page.request.post(fleet.ui + "/call/system_gitops_sync_repository",
                                   form={"csrf": vic.csrf(), "repository_id": "1"}, headers={"Origin": fleet.url})
    assert forged.status == 403
    assert "Permission denied: system_gitops_sync_repository needs permission system.gitops.sync" in forged.text()
    vic.go("/audit?principal=acme/vic&tool=system_gitops_sync_repository")
    denied = vic.page.locator("tr.audit-row")
    expect(denied).to_have_count(1)
    expect(denied).to_contain_text("deny")
    expect(denied).to_contain_text("denied")

    # Without the CSRF token, or from another origin, even a permitted call is refused before the gate.
    olga.go("/gitops/repositories/1")
    runs_before = olga.page.locator("a.run-link").count()
    no_token = olga.page.request.post(fleet.ui + "/call/system_gitops_sync_repository", form={"repository_id": "1"})
    assert no_token.status == 403 and "CSRF" in no_token.text()
    cross = olga.page.request.post(fleet.ui + "/call/system_gitops_sync_repository",
                                   form={"csrf": olga.csrf(), "repository_id": "1"},
                                   headers={"Origin": "http://evil.example"})
    assert cross.status == 403
    olga.go("/gitops/repositories/1")
    expect(olga.page.locator("a.run-link")).to_have_count(runs_before)
    olga.go("/audit?principal=acme/olga&tool=system_gitops_sync_repository")
    expect(olga.page.locator("tr.audit-row")).to_have_count(runs_before)

    # Revoking the viewer's token ends the session at the next request: the open inbox's own live refresh
    # lands on the sign-in page, without a reload.
    vic.go("/")
    expect(vic.page.locator("h1")).to_have_text("Inbox")
    fleet.revoke("vic")
    expect(vic.page.locator("h1")).to_have_text("Sign in to the fleet-mcp console", timeout=30_000)

    # Signing out ends the session on the server: the old cookie no longer works.
    olga.go("/")
    old = next(c for c in olga.context.cookies() if c["name"] == "fleet_console")
    olga.page.click("button:has-text('Sign out')")
    expect(olga.page.locator("h1")).to_have_text("Sign in to the fleet-mcp console")
    olga.context.add_cookies([old])
    olga.go("/")
    expect(olga.page.locator("h1")).to_have_text("Sign in to the fleet-mcp console")
    for who in (olga, vic):
        assert not [e for e in who.errors if "Content Security Policy" in e], who.errors


def _wait_healthy(url: str, proc: subprocess.Popen) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)  # readiness polling of a starting server, as tests/conftest.py's HttpServer does
    raise AssertionError("fleet-mcp console did not become healthy")


def test_one_time_login_link(browser, tmp_path) -> None:  # noqa: ANN001
    from tests.conftest import cli_env

    env = cli_env(tmp_path / "data", f"sqlite+aiosqlite:///{tmp_path / 'fleet.db'}", FLEET_MCP_ACCOUNT="acme",
                  FLEET_MCP_PRINCIPAL="lena", FLEET_MCP_ROLES="operator")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fleet_mcp", "console", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        link = proc.stdout.readline().strip()
        assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/ui/login/link\?code=[\w-]+", link), link
        _wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
        context = browser.new_context()
        page = context.new_page()
        page.goto(link)  # a GET does not use the link (previews and scanners fetch links)
        page.goto(link)
        page.click("button:has-text('Continue')")
        expect(page.locator("h1")).to_have_text("Inbox")
        expect(page.locator("header")).to_contain_text("acme/lena (operator)")
        other = browser.new_context().new_page()
        other.goto(link)
        other.click("button:has-text('Continue')")
        expect(other.locator("[role=alert]")).to_contain_text("unknown, used or expired")
        other.context.close()
        context.close()
        # The console's token lives as long as the console: stopping it revokes the token (audited), so a
        # token does not pile up per start.
        proc.terminate()
        assert proc.wait(60) == 0
        from tests.conftest import run_cli

        rows = [ln for ln in run_cli(env, "token", "list").stdout.splitlines() if "console-" in ln]
        assert len(rows) == 1 and "revoked" in rows[0], rows
        assert any("token_revoke" in ln and "console-" in ln for ln in run_cli(env, "audit", "export").stdout.splitlines())
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
