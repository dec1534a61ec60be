"""OpenBao/Vault policies shipped with fleet-mcp: least privilege for the two transit credentials.

`fleet-mcp-runtime.hcl`: the server's token (encrypt, decrypt, rewrap, read the key's metadata).
`fleet-mcp-rotation.hcl`: the rotation token (create, rotate, config, trim; no encrypt/decrypt/rewrap).
"""

from __future__ import annotations

from importlib import resources

POLICIES = ("fleet-mcp-runtime", "fleet-mcp-rotation")


def policy_text(name: str, *, mount: str = "transit", key: str = "fleet-pepper") -> str:
    """The shipped policy `name`, written for `mount` and `key` instead of the defaults."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; shipped: {', '.join(POLICIES)}")
    text = resources.files(__name__).joinpath(f"{name}.hcl").read_text(encoding="utf-8")
    return text.replace('path "transit/', f'path "{mount.strip("/")}/').replace("/fleet-pepper", f"/{key}")
