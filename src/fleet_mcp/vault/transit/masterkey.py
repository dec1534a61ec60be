"""The local transit's master key: 32 random bytes in a file only its owner can read (mode 0600)."""

from __future__ import annotations

import base64
import binascii
import secrets
from pathlib import Path

from fleet_mcp.errors import InvalidArgument
from fleet_mcp.keyring import check_private_file, create_private_file

MASTER_KEY_BYTES = 32


def decode_master_key(text: str, *, source: str) -> bytes:
    """Decode a base64 master key; `source` names where it came from (never the key)."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(
            f"the master key in {source} is not valid base64",
            hint="it must be 32 random bytes, base64-encoded",
        ) from None
    if len(key) != MASTER_KEY_BYTES:
        raise InvalidArgument(
            f"the master key in {source} has {len(key)} bytes, expected {MASTER_KEY_BYTES}",
            hint="generate one with: openssl rand -base64 32",
        )
    return key


def load_or_create_master_key(path: Path) -> bytes:
    """Read the master key file, creating it with mode 0600 if missing; refuse a group/world-readable file."""
    return load_or_create_master_key_file(path)[0]


def load_or_create_master_key_file(path: Path) -> tuple[bytes, bool]:
    """Like `load_or_create_master_key`, and say whether the file was created now. A keyring that already
    exists must refuse a key created now (`LocalTransit.ensure_key`): it cannot unwrap the keyring."""
    path = Path(path)
    try:
        return _read(path), False
    except FileNotFoundError:
        pass
    text = base64.b64encode(secrets.token_bytes(MASTER_KEY_BYTES)).decode("ascii") + "\n"
    created = create_private_file(path, text.encode("ascii"))
    return _read(path), created


def _read(path: Path) -> bytes:
    check_private_file(path, "master key")
    return decode_master_key(path.read_text(encoding="ascii"), source=str(path))
