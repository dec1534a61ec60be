"""Builds the configured transit backend from Settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleet_mcp.errors import InvalidArgument
from fleet_mcp.vault.transit.base import TransitBackend

if TYPE_CHECKING:
    from fleet_mcp.settings import Settings


def build_transit(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> TransitBackend:
    """The local keyring (default) or Vault/OpenBao. Call `await backend.ensure_key()` once at start."""
    if settings.transit == "local":
        from fleet_mcp.vault.transit.local import LocalTransit
        from fleet_mcp.vault.transit.masterkey import decode_master_key, load_or_create_master_key_file

        created_at = None
        if settings.master_key is not None:
            key = decode_master_key(settings.master_key.get_secret_value(), source="FLEET_MCP_MASTER_KEY")
        else:
            key, created = load_or_create_master_key_file(settings.effective_master_key_file)
            created_at = settings.effective_master_key_file if created else None
        return LocalTransit(sessionmaker, key, key_name=settings.pepper_key, master_key_created_at=created_at)
    if settings.transit == "vault":
        from fleet_mcp.vault.transit.vault import VaultTransit

        return VaultTransit(
            settings.vault_addr or "",
            token=settings.vault_token.get_secret_value() if settings.vault_token else None,
            role_id=settings.vault_role_id,
            secret_id=settings.vault_secret_id.get_secret_value() if settings.vault_secret_id else None,
            admin_token=settings.vault_admin_token.get_secret_value() if settings.vault_admin_token else None,
            admin_role_id=settings.vault_admin_role_id,
            admin_secret_id=(
                settings.vault_admin_secret_id.get_secret_value() if settings.vault_admin_secret_id else None
            ),
            namespace=settings.vault_namespace,
            cacert=str(settings.vault_cacert) if settings.vault_cacert else None,
            skip_verify=settings.vault_skip_verify,
            mount=settings.transit_mount,
            key_name=settings.pepper_key,
            batch_size=settings.rotation_batch_size,
        )
    raise InvalidArgument(f"unknown transit backend {settings.transit!r}", hint="use 'local' or 'vault'")
