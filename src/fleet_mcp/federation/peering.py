"""Peering tokens for federation between instances: `fmcp-peering-v1.<base64url JSON>` (see
docs/federation-protocol.md §1). The token carries a one-time `fat_` secret; only its digest is stored."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any

from fleet_mcp.errors import Conflict, InvalidArgument

PREFIX = "fmcp-peering-v1."
MAX_TOKEN = 4096
_INSTANCE_RE = re.compile(r"^inst-[0-9a-f]{16}$")


@dataclass(frozen=True, repr=False)
class PeeringToken:
    issuer_instance: str
    account: str
    domain: str
    endpoints: list[str]
    pin: str
    peer_id: int
    remote_domain: str
    secret_token: str  # the `fat_<id>.<secret>` one-time establishment secret
    expires_at: dt.datetime

    def __repr__(self) -> str:  # never the secret
        return f"PeeringToken(issuer={self.issuer_instance!r}, account={self.account!r}, peer={self.peer_id})"

    def encode(self) -> str:
        doc = {
            "v": 1,
            "iss": self.issuer_instance,
            "acct": self.account,
            "dom": self.domain,
            "ep": self.endpoints,
            "pin": self.pin,
            "peer": self.peer_id,
            "rdom": self.remote_domain,
            "tok": self.secret_token,
            "exp": int(self.expires_at.timestamp()),
        }
        raw = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        return PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _bad(what: str) -> InvalidArgument:
    return InvalidArgument(
        f"the peering token is not valid: {what}",
        hint="paste the whole fmcp-peering-v1.… string the proposing operators handed over",
    )


def decode(token: str, *, now: dt.datetime) -> PeeringToken:
    """Parse and check a pasted token; an expired token is refused here, before any connection."""
    token = token.strip() if isinstance(token, str) else ""
    if not token.startswith(PREFIX) or len(token) > MAX_TOKEN:
        raise _bad("it does not start with fmcp-peering-v1. (or is too long)")
    body = token[len(PREFIX):]
    try:
        doc: Any = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, TypeError):
        raise _bad("it is not base64url JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != 1:
        raise _bad("unsupported version")
    try:
        endpoints = [str(e) for e in doc["ep"]]
        parsed = PeeringToken(
            issuer_instance=str(doc["iss"]),
            account=str(doc["acct"]),
            domain=str(doc["dom"]),
            endpoints=endpoints,
            pin=str(doc["pin"]).lower(),
            peer_id=int(doc["peer"]),
            remote_domain=str(doc["rdom"]),
            secret_token=str(doc["tok"]),
            expires_at=dt.datetime.fromtimestamp(int(doc["exp"]), dt.UTC),
        )
    except (KeyError, TypeError, ValueError):
        raise _bad("a field is missing or has the wrong type") from None
    if not _INSTANCE_RE.match(parsed.issuer_instance) or not re.fullmatch(r"[0-9a-f]{64}", parsed.pin):
        raise _bad("bad instance id or pin")
    if not endpoints or len(endpoints) > 8:
        raise _bad("no endpoint")
    if parsed.expires_at <= now:
        raise Conflict(
            f"the peering token expired at {parsed.expires_at:%Y-%m-%d %H:%M:%S} UTC",
            hint="ask the proposing operators to run system_sdwan_regenerate_acceptance_token",
            federation_peer_id=parsed.peer_id,
        )
    return parsed
