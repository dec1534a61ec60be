"""One-time acceptance tokens: `fat_<public id>.<256-bit secret>`, stored only as a SHA-256 digest."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from fleet_mcp.errors import Unauthenticated

PREFIX = "fat_"
_ID_BYTES = 12
_SECRET_BYTES = 32  # 256 bits: high entropy, so a fast digest is enough (no slow KDF needed)
_B64 = r"[A-Za-z0-9_-]"
_TOKEN_RE = re.compile(rf"^{PREFIX}({_B64}{{16}})\.({_B64}{{43}})$")
# A digest that matches nothing, compared against when there is no stored digest, to keep timing flat.
_NO_DIGEST = "0" * 64

REFUSAL_MESSAGE = "the acceptance token is not valid for this federation peer"
REFUSAL_HINT = (
    "check that the whole token was copied; it may be wrong, expired or already used — "
    "ask the proposing account to regenerate it"
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True, repr=False)
class IssuedToken:
    """The one-time plaintext (give it to the caller once) and what may be stored."""

    token: str
    public_id: str
    digest: str

    def __repr__(self) -> str:
        return f"IssuedToken(public_id={self.public_id!r})"


@dataclass(frozen=True, repr=False)
class ParsedToken:
    public_id: str
    digest: str

    def __repr__(self) -> str:
        return f"ParsedToken(public_id={self.public_id!r})"


def invalid_token(**subject: object) -> Unauthenticated:
    """The single error for every bad token: malformed, unknown id, wrong secret, used."""
    return Unauthenticated(REFUSAL_MESSAGE, hint=REFUSAL_HINT, **subject)


def _digest(public_id: str, secret: str) -> str:
    return hashlib.sha256(f"{PREFIX}{public_id}.{secret}".encode()).hexdigest()


def new_token() -> IssuedToken:
    public_id, secret = _b64(secrets.token_bytes(_ID_BYTES)), _b64(secrets.token_bytes(_SECRET_BYTES))
    return IssuedToken(
        token=f"{PREFIX}{public_id}.{secret}", public_id=public_id, digest=_digest(public_id, secret)
    )


def parse_token(token: str) -> ParsedToken:
    """Split and digest a presented token; malformed input raises the same error as a wrong secret."""
    m = _TOKEN_RE.match(token.strip()) if isinstance(token, str) else None
    if m is None:
        raise invalid_token()
    return ParsedToken(public_id=m.group(1), digest=_digest(m.group(1), m.group(2)))


def public_id_matches(presented: ParsedToken, stored_public_id: str | None) -> bool:
    return stored_public_id is not None and hmac.compare_digest(
        presented.public_id.encode(), stored_public_id.encode()
    )


def digest_matches(presented: ParsedToken, stored_public_id: str | None, stored_digest: str | None) -> bool:
    """Constant-time check of both the public id and the secret digest."""
    id_ok = hmac.compare_digest(presented.public_id.encode(), (stored_public_id or "").encode())
    digest_ok = hmac.compare_digest(presented.digest.encode(), (stored_digest or _NO_DIGEST).encode())
    return id_ok and digest_ok and stored_digest is not None
