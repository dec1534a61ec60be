"""Federation knobs: certificate lifetimes, token limits, failed-accept thresholds and scan thresholds."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from fleet_mcp.federation.governance import ScanThresholds


@dataclass(frozen=True)
class FederationConfig:
    node_cert_lifetime: dt.timedelta = dt.timedelta(hours=24)
    cross_cert_lifetime: dt.timedelta = dt.timedelta(days=7)
    #: Node certificates issued just to verify a federation handshake.
    probe_cert_lifetime: dt.timedelta = dt.timedelta(minutes=15)
    crl_lifetime: dt.timedelta = dt.timedelta(days=7)
    token_ttl_default: int = 86_400
    token_ttl_min: int = 60
    token_ttl_max: int = 7 * 86_400
    #: Failed accepts within `failure_window` that lock the peer (and the attempting account)
    #: for `lockout_for`.
    lockout_after: int = 5
    #: Failed accepts against one token that cancel (revoke) the proposal.
    cancel_after: int = 10
    failure_window: dt.timedelta = dt.timedelta(minutes=15)
    lockout_for: dt.timedelta = dt.timedelta(minutes=15)
    #: Channel client certificates this instance issues to peers; holders renew at `channel_renew_at` of it.
    channel_cert_lifetime: dt.timedelta = dt.timedelta(days=365)
    channel_renew_at: float = 2 / 3
    handshake_timeout: float = 5.0
    #: One bound (connect, TLS, write, read) on each call to another instance over an established channel.
    channel_timeout: float = 10.0
    #: Seconds between polls of a remote instance's bundle (sent to peers as the refresh hint).
    refresh_hint: int = 300
    #: Verify handshakes with the CRLs loaded (VERIFY_CRL_CHECK_CHAIN), not only the bundles.
    handshake_with_crls: bool = True
    scan: ScanThresholds = field(default_factory=ScanThresholds)

    @property
    def renew_when_left(self) -> dt.timedelta:
        """Cross certificates are renewed once half their life has passed."""
        return self.cross_cert_lifetime / 2

    @classmethod
    def from_settings(cls, settings: Any) -> FederationConfig:
        return cls(
            node_cert_lifetime=dt.timedelta(hours=settings.node_cert_hours),
            cross_cert_lifetime=dt.timedelta(days=settings.cross_cert_days),
            token_ttl_default=settings.federation_token_ttl,
            refresh_hint=getattr(settings, "federation_refresh_seconds", 300),
            channel_timeout=float(getattr(settings, "federation_channel_timeout_seconds", 10.0)),
            channel_cert_lifetime=dt.timedelta(
                seconds=getattr(settings, "federation_channel_cert_seconds", 365 * 86_400)
            ),
        )
