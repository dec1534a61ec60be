"""Keys kept in files: created private (0600) and atomically, refused when others may read them; key rings
with one base64 key per line, the first sealing, every line still opening."""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path

from fleet_mcp.errors import InvalidArgument

MIN_KEY_BYTES = 32


def create_private_file(path: Path, content: bytes) -> bool:
    """Write `content` to `path` with mode 0600 unless the file exists; True when this call created it.
    A private temp file is linked into place, so readers never see a half-written key and of two processes
    creating it at once one wins and the other reads the winner's key."""
    path = Path(path)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def check_private_file(path: Path, what: str) -> None:
    """Refuse a key file that is not a regular file, or that group or others may read or write."""
    st = Path(path).stat()
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"{what} path {path} is not a regular file")
    if st.st_mode & 0o077:
        raise InvalidArgument(f"{what} file {path} is readable or writable by group or others "
                              f"(mode {stat.S_IMODE(st.st_mode):04o})", hint=f"restrict it with: chmod 600 {path}")


def load_key_ring(path: Path) -> list[bytes]:
    """Read a key ring file (mode 0600 or stricter). Rotation: `[old, new]` everywhere, then `[new, old]`,
    then `[new]` once everything sealed under `old` has expired."""
    try:
        check_private_file(path, "key")
    except FileNotFoundError:
        raise InvalidArgument(f"key file {path} does not exist",
                              hint="create it with one base64 key per line, e.g. `openssl rand -base64 32`, "
                                   "mode 0600") from None
    keys: list[bytes] = []
    for number, line in enumerate(path.read_text(encoding="ascii").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"key file {path}, line {number}: not base64") from None
        if len(key) < MIN_KEY_BYTES:
            raise InvalidArgument(f"key file {path}, line {number}: a key needs at least {MIN_KEY_BYTES} bytes "
                                  f"(this one has {len(key)})")
        keys.append(key)
    if not keys:
        raise InvalidArgument(f"key file {path} holds no key", hint="one base64 key per line; the first seals")
    return keys
