"""The `vault:v<N>:<base64(nonce12 + ciphertext + tag16)>` ciphertext format shared by both backends."""

from __future__ import annotations

PREFIX = "vault:v"


def format_ciphertext(version: int, raw: bytes) -> str:
    import base64

    return f"{PREFIX}{version}:{base64.b64encode(raw).decode('ascii')}"


def ciphertext_version(ciphertext: str) -> int | None:
    """The key version a ciphertext names, or None when it is not in the transit format."""
    if not ciphertext.startswith(PREFIX):
        return None
    end = ciphertext.find(":", len(PREFIX))
    if end < 0:
        return None
    try:
        version = int(ciphertext[len(PREFIX) : end])
    except ValueError:
        return None
    # Vault reads v0 as v1 (ciphertexts from before versioning).
    return 1 if version == 0 else version
