"""The local transit's master key: 32 random bytes in a file only its owner can read (mode 0600)."""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path

from fleet_mcp.errors import InvalidArgument

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
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = base64.b64encode(secrets.token_bytes(MASTER_KEY_BYTES)).decode("ascii") + "\n"
    # Write a private temp file, then link it into place: readers never see a half-written key,
    # and of two processes creating it at once, one wins and the other reads the winner's key.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return _read(path), True


def _read(path: Path) -> bytes:
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"master key path {path} is not a regular file")
    if st.st_mode & 0o077:
        raise InvalidArgument(
            f"master key file {path} is readable or writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"restrict it with: chmod 600 {path}",
        )
    return decode_master_key(path.read_text(encoding="ascii"), source=str(path))
