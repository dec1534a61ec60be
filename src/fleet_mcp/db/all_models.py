"""Imports every model module so Base.metadata knows every table (migrations, create_all)."""

from __future__ import annotations

import importlib

from fleet_mcp.db import models as core_models  # noqa: F401
from fleet_mcp.db.base import Base

DOMAIN_MODEL_MODULES = (
    "fleet_mcp.fleet.models",
    "fleet_mcp.gitops.models",
    "fleet_mcp.federation.models",
    "fleet_mcp.vault.models",
    "fleet_mcp.console.models",
)

for _name in DOMAIN_MODEL_MODULES:
    importlib.import_module(_name)

metadata = Base.metadata
