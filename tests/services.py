"""Real services the tests use (PostgreSQL, OpenBao, git, sshd, the MCP Inspector): missing ones skip a test
locally, and fail it when pytest runs with `--require-services` (scripts/test and CI always pass it)."""

from __future__ import annotations

from typing import NoReturn

import pytest

_required = False


def set_required(required: bool) -> None:
    global _required
    _required = required


def required() -> bool:
    return _required


def missing(what: str, how: str) -> NoReturn:
    """A service the test needs is not there: fail under --require-services, else skip (visible in -ra)."""
    if _required:
        pytest.fail(f"{what} is required (--require-services) but not available: {how}", pytrace=False)
    pytest.skip(f"{what} not available: {how}")
