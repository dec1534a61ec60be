"""Fixtures for the policy tests: the tool catalog and the shipped policy directory."""

from __future__ import annotations

from pathlib import Path

import pytest

import fleet_mcp
from fleet_mcp.policy import ToolFacts
from tests.policy.catalog_data import build_catalog

POLICIES = Path(fleet_mcp.__file__).parent / "policies"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def catalog() -> dict[str, ToolFacts]:
    return build_catalog()


@pytest.fixture(scope="session")
def policies_dir() -> Path:
    return POLICIES
