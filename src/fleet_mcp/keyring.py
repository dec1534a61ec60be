"""Key rings kept in files: one base64 key per line, the first seals, every line still opens."""

from __future__ import annotations

import base64
import binascii
import stat
from pathlib import Path

from fleet_mcp.errors import InvalidArgument

MIN_KEY_BYTES = 32


def load_key_ring(path: Path) -> list[bytes]:
    """Read a key ring file (mode 0600 or stricter). Rotation: `[old, new]` everywhere, then `[new, old]`,
    then `[new]` once everything sealed under `old` has expired."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InvalidArgument(f"key file {path} does not exist",
                              hint="create it with one base64 key per line, e.g. `openssl rand -base64 32`, "
                                   "mode 0600") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise InvalidArgument(f"key file {path} is readable or writable by group or others "
                              f"(mode {stat.S_IMODE(st.st_mode):04o})", hint=f"restrict it with: chmod 600 {path}")
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
