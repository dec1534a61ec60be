"""Console browser fixtures: Debian's Chromium driven by Playwright against a real `fleet-mcp serve
--transport http` subprocess on SQLite, one browser context per principal."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HttpServer, cli_env, run_cli
from tests.services import missing

CHROMIUM = Path("/usr/bin/chromium")
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """One Chromium per test module. Playwright's sync API runs an event loop in this thread while the browser
    lives: it must be gone before the async tests of other modules run theirs."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright", "pip install -e '.[test]'")
    if not CHROMIUM.exists():
        missing("Chromium", "apt-get install chromium (scripts/test installs it)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        yield b
        b.close()


class Fleet:
    """A served fleet-mcp with its CLI: tokens, revocation, and the console's URL."""

    def __init__(self, tmp_path: Path) -> None:
        self.env = cli_env(tmp_path / "data", f"sqlite+aiosqlite:///{tmp_path / 'fleet.db'}",
                           FLEET_MCP_ALLOW_LOCAL_REPOS="true")
        run_cli(self.env, "db", "upgrade")
        self.server = HttpServer(self.env)
        self.url = self.server.url
        self.ui = self.url + "/ui"
        self._accounts: set[str] = set()

    def token(self, account: str, label: str, *roles: str) -> str:
        if account not in self._accounts:  # tokens are issued only in existing accounts
            if account not in ("default",):
                run_cli(self.env, "account", "create", account)
            self._accounts.add(account)
        args = ["token", "create", "--account", account, "--name", label]
        for r in roles:
            args += ["--role", r]
        return run_cli(self.env, *args).stdout.strip().splitlines()[-1]

    def revoke(self, label: str) -> None:
        run_cli(self.env, "token", "revoke", label)

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    yield f
    f.stop()


class Person:
    """One principal in its own browser context (its own cookies)."""

    def __init__(self, browser, fleet: Fleet, token: str, name: str) -> None:  # noqa: ANN001
        self.fleet = fleet
        self.name = name
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.sign_in(token)

    def sign_in(self, token: str) -> None:
        from playwright.sync_api import expect

        self.page.goto(self.fleet.ui + "/")
        expect(self.page.locator("h1")).to_have_text("Sign in to the fleet-mcp console")
        self.page.fill("#token", token)
        self.page.click("button:has-text('Sign in')")
        expect(self.page.locator("h1")).to_have_text("Inbox")

    def go(self, path: str) -> None:
        self.page.goto(self.fleet.ui + path)

    def csrf(self) -> str:
        return self.page.locator("input[name=csrf]").first.get_attribute("value") or ""

    def shot(self, name: str) -> None:
        IMAGES.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(IMAGES / name), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def people(browser, fleet: Fleet) -> Iterator:  # noqa: ANN001
    made: list[Person] = []

    def person(token: str, name: str) -> Person:
        p = Person(browser, fleet, token, name)
        made.append(p)
        return p

    yield person
    for p in made:
        p.close()


def approval_id(text: str) -> str:
    m = re.search(r"apr_[0-9a-f]{16}", text)
    assert m, text
    return m.group(0)


def git(path: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)
