"""Transit (pepper) backends: the interface, the embedded keyring and Vault/OpenBao, and the factory."""

from __future__ import annotations

from fleet_mcp.vault.transit.base import (
    TOO_OLD,
    CiphertextRejected,
    KeyInfo,
    TransitBackend,
    TransitItemError,
    TransitUnavailable,
)
from fleet_mcp.vault.transit.ciphertext import ciphertext_version, format_ciphertext
from fleet_mcp.vault.transit.factory import build_transit
from fleet_mcp.vault.transit.masterkey import load_or_create_master_key

__all__ = [
    "TOO_OLD",
    "CiphertextRejected",
    "KeyInfo",
    "TransitBackend",
    "TransitItemError",
    "TransitUnavailable",
    "build_transit",
    "ciphertext_version",
    "format_ciphertext",
    "load_or_create_master_key",
]
