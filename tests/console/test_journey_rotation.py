"""Journey 3 in Chromium: an admin asks for a pepper rotation (policy: a second person), an approver approves
it in the inbox, the progress page reaches 100 %, and the admin finalizes after the confirmation."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from playwright.sync_api import expect

from tests.console.conftest import approval_id

pytestmark = pytest.mark.browser
CREDENTIALS = 40


def _store_credentials(url: str, token: str) -> None:
    """Secrets to rewrap, stored the way an agent would: over MCP with a bearer token."""

    async def go() -> None:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
        async with Client(streamable_http_client(url + "/mcp", http_client=http)) as c:
            for i in range(CREDENTIALS):
                r = await c.call_tool("system_vault_store_credential",
                                      {"name": f"api-{i}", "kind": "api_key", "secret": f"s3cret-{i}"})
                assert not r.is_error, r

    # Playwright's sync API owns this thread's event loop: the MCP client runs in its own thread.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(anyio.run, go).result()


def test_rotation_approved_progress_finalize(fleet, people) -> None:  # noqa: ANN001
    adam_token = fleet.token("acme", "adam", "admin")
    _store_credentials(fleet.url, adam_token)
    adam = people(adam_token, "adam")
    ben = people(fleet.token("acme", "ben", "approver"), "ben")

    # The approver sees no rotate or finalize button; the inbox is open before anything is queued.
    ben.go("/vault")
    expect(ben.page.locator("form[action*='/call/']")).to_have_count(0)
    ben.go("/")
    expect(ben.page.locator("#inbox-empty")).to_be_visible()

    adam.go("/vault")
    expect(adam.page.locator("#latest-version")).to_have_text("v1")
    adam.shot("console-vault.png")
    adam.page.click("button:has-text('Rotate the pepper')")
    expect(adam.page.locator("#outcome")).to_contain_text("Queued for approval")
    apr = approval_id(adam.page.locator("#approval-id").inner_text())

    # The request appears in the open inbox without a reload (htmx polling), and is approved there.
    row = ben.page.locator(f"#row-{apr}")
    expect(row).to_contain_text("rewrap", timeout=20_000)
    row.locator("input[name=reason]").fill("quarterly rotation")
    row.locator("button:has-text('Approve')").click()
    expect(ben.page.locator("#outcome")).to_contain_text("ran")
    ben.page.click("#job-link")

    # Live progress (htmx polling) reaches 100 %.
    expect(ben.page.locator("#job-percent")).to_have_text("100 %", timeout=60_000)
    expect(ben.page.locator("#job-status")).to_have_text("completed")
    expect(ben.page.locator("main")).to_contain_text(f"{CREDENTIALS} rewrapped")
    ben.shot("console-rotation-job.png")

    # The admin finalizes after the confirmation that says what stops decrypting.
    adam.page.goto(ben.page.url)
    adam.page.click("button:has-text('Finalize')")
    expect(adam.page.locator("#effect")).to_contain_text("stop decrypting")
    adam.page.click("button:has-text('Approve and run')")
    expect(adam.page.locator("#outcome")).to_contain_text("ran")
    expect(adam.page.locator("details pre")).to_contain_text('"refused": false')
    adam.go("/vault")
    expect(adam.page.locator("#latest-version")).to_have_text("v2")
    expect(adam.page.locator("#min-decryption")).to_have_text("v2")
    for p in (adam, ben):
        assert not [e for e in p.errors if "Content Security Policy" in e], p.errors
