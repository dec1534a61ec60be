"""Imports every model module so Base.metadata knows every table (migrations, create_all)."""

from __future__ import annotations

import importlib
import logging

from fleet_mcp.db import models as core_models  # noqa: F401
from fleet_mcp.db.base import Base

log = logging.getLogger(__name__)

DOMAIN_MODEL_MODULES = (
    "fleet_mcp.gitops.models",
    "fleet_mcp.federation.models",
    "fleet_mcp.vault.models",
)

for _name in DOMAIN_MODEL_MODULES:
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # TODO(lead): make strict once every domain has landed
        if exc.name is None or not _name.startswith(exc.name):
            raise

metadata = Base.metadata
