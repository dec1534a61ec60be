"""The federation endpoint (`serve --federation-listen HOST:PORT`): routes of docs/federation-protocol.md,
each in its own unit of work with an audit row when it changed anything. Runs beside /mcp, not through the
gate: the other instance is authenticated by the one-time secret (establish) or its channel certificate."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
import time
from typing import Any

from fleet_mcp import audit
from fleet_mcp.db.base import utcnow
from fleet_mcp.errors import FleetError
from fleet_mcp.federation import instance, wire
from fleet_mcp.federation.remote import API, Refusal
from fleet_mcp.ratelimit import InvalidCallLimiter

log = logging.getLogger(__name__)

_PEER_PATH = re.compile(rf"^{API}/peers/(\d{{1,12}})/(confirm|bundle|lifecycle|probe|renew)$")
_PROBE_PATH = re.compile(rf"^{API}/probe/([a-z0-9.-]{{1,253}})$")
PROBE_TTL = 60.0


def build_service(app: Any) -> Any:
    """The federation service of a running app (CA keys sealed by its transit backend), knowing the
    instance identity and endpoint when the listener runs."""
    from fleet_mcp.federation.config import FederationConfig
    from fleet_mcp.federation.service import FederationService
    from fleet_mcp.vault.credentials import CredentialKeySealer

    return FederationService(
        CredentialKeySealer(app.transit),
        FederationConfig.from_settings(app.settings),
        identity=lambda: app.federation_identity,
        endpoint=app.federation_endpoint,
    )


async def _audit(session: Any, *, who: str, tool: str, args: dict[str, Any], outcome: str, detail: Any) -> None:
    await audit.append(
        session,
        principal=f"federation/{who}",
        account="*",
        tool=tool,
        arguments=args,
        decision="federation_channel",
        outcome=outcome,
        detail=detail,
    )


def source_key(address: str) -> str:
    """The unit a rate is counted for: an IPv4 address, or the /64 of an IPv6 address (one host's share)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class SourceLimiter:
    """Per-source token buckets in front of the endpoint, one for requests without a client certificate
    (instance fetch, establish attempts) and one for channel requests (bundle polls, lifecycle, probes), so a
    flood of one kind from an address does not starve its other kind. Memory is bounded (least recently seen
    sources forgotten first)."""

    def __init__(self, *, burst: int, per_second: float, max_sources: int = 10_000) -> None:
        self._buckets = InvalidCallLimiter(burst=burst, per_second=per_second, max_principals=max_sources)

    def __call__(self, address: str, channel: bool) -> int | None:
        refused = self._buckets.check(f"{source_key(address)}|{'channel' if channel else 'open'}")
        if refused is None:
            return None
        if refused.first:
            log.warning("federation endpoint: %s over its rate (%s requests); refusing for %d s",
                        source_key(address), "channel" if channel else "unauthenticated", refused.seconds)
        return refused.seconds


class Endpoint:
    def __init__(self, app: Any, identity: instance.InstanceIdentity) -> None:
        self.app = app
        self.identity = identity
        #: SNI name → (TLS context of a probe node, expiry, peer id): handshakes the other instance asked for.
        self.probes: dict[str, tuple[ssl.SSLContext, float, int]] = {}

    def server_context(self) -> ssl.SSLContext:
        ctx = self.identity.server_context()
        ctx.sni_callback = self._sni
        return ctx

    def _sni(self, sslobj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        """A probe name switches the connection to the probe node's identity and its account's bundle."""
        entry = self.probes.get(server_name or "")
        if entry is not None and entry[1] > time.monotonic():
            sslobj.context = entry[0]

    async def handle(self, req: wire.Request) -> tuple[int, dict[str, Any]]:
        try:
            if req.method == "GET" and req.path == f"{API}/instance":
                return 200, {"instance_id": self.identity.instance_id, "instance_ca_pem": self.identity.ca_pem}
            if req.method == "POST" and req.path == f"{API}/establish":
                return await self._establish(req)
            p = _PROBE_PATH.match(req.path)
            if p is not None and req.method == "GET":
                return await self._probe_result(req, p.group(1))
            m = _PEER_PATH.match(req.path)
            if m is not None:
                return await self._channel(req, int(m.group(1)), m.group(2))
            return 404, {"error": {"code": "not_found", "message": "no such federation route"}}
        except Refusal as exc:
            return exc.status, exc.body()
        except FleetError as exc:
            return 400, {"error": {"code": exc.code, "message": exc.message}}
        except Exception:
            log.exception("federation endpoint: %s %s failed", req.method, req.path)
            return 500, {"error": {"code": "internal", "message": "internal error"}}

    async def _establish(self, req: wire.Request) -> tuple[int, dict[str, Any]]:
        body = req.body or {}
        svc = build_service(self.app)
        who = str(body.get("instance_id", "unknown"))[:40]
        args = {"peer": body.get("peer"), "instance_id": who, "account": str(body.get("account", ""))[:120]}
        # Refusals keep their writes (failure counters) and are audited; a crash rolls everything back.
        async with self.app.unit_of_work() as uow:
            session = uow.session
            try:
                out = await svc.remote.establish(session, body, now=utcnow())
            except Refusal as exc:
                await _audit(session, who=who, tool="federation.establish", args=args, outcome="refused",
                             detail={"code": exc.code})
                return exc.status, exc.body()
            await _audit(session, who=who, tool="federation.establish", args=args, outcome="ok",
                         detail={"federation_peer_id": out["peer"]})
        return 200, out

    async def _channel(self, req: wire.Request, peer_id: int, verb: str) -> tuple[int, dict[str, Any]]:
        expected = {"confirm": "POST", "bundle": "GET", "lifecycle": "POST", "probe": "POST", "renew": "POST"}[verb]
        if req.method != expected:
            return 405, {"error": {"code": "method", "message": f"{verb} takes {expected}"}}
        svc = build_service(self.app)
        async with self.app.unit_of_work() as uow:
            session = uow.session
            peer, link = await svc.remote.channel_peer(session, peer_id, req.client_cert_der)
            who = link.remote_instance_id or "unknown"
            now = utcnow()
            if verb == "bundle":
                return 200, await svc.remote.bundle(session, peer_id, req.client_cert_der)
            if verb == "probe":
                return 200, await self._serve_probe(session, svc, peer, link, now)
            if verb == "renew":
                out = await svc.remote.renew_inbound(session, peer_id, req.client_cert_der, req.body or {}, now=now)
                await _audit(session, who=who, tool="federation.renew", args={"federation_peer_id": peer_id},
                             outcome="ok", detail={"not_after": out["not_after"]})
                return 200, out
            if verb == "confirm":
                out = await svc.remote.confirm(session, peer_id, req.client_cert_der, req.body or {}, now=now)
            else:
                out = await svc.receive_lifecycle(session, peer, link, req.body or {}, now=now)
            await _audit(session, who=who, tool=f"federation.{verb}", args={"federation_peer_id": peer_id,
                         **({"action": (req.body or {}).get("action")} if verb == "lifecycle" else {})},
                         outcome="ok", detail=out)
        return 200, out


    async def _serve_probe(self, session: Any, svc: Any, peer: Any, link: Any, now: Any) -> dict[str, Any]:
        """Issue a probe node of our account and serve it under its DNS name for a minute."""
        from fleet_mcp.federation import accounts, handshake

        account = await accounts.by_id(session, link.local_account_id)
        node = await svc.verifier.probe_identity(session, account, peer, now, None)
        ctx = handshake.build_context(node, server=True)
        ctx.sni_callback = None
        for name in [n for n, (_, exp, _) in self.probes.items() if exp <= time.monotonic()]:
            self.probes.pop(name, None)
        self.probes[node.dns_name] = (ctx, time.monotonic() + PROBE_TTL, peer.id)
        return {"server_name": node.dns_name}

    async def _probe_result(self, req: wire.Request, name: str) -> tuple[int, dict[str, Any]]:
        """Reached only through a handshake in which the probe node verified the client's node against its
        account's bundle: record it (accepted → active) and say so."""
        entry = self.probes.get(name)
        if entry is None or req.tls_context is not entry[0] or not req.client_cert_der:
            return 403, {"error": {"code": "no_probe", "message": "no verified probe handshake on this connection"}}
        self.probes.pop(name, None)
        svc = build_service(self.app)
        async with self.app.unit_of_work() as uow:
            session = uow.session
            from fleet_mcp.federation.models import FederationPeer

            peer = await session.get(FederationPeer, entry[2])
            if peer is None:
                return 404, {"error": {"code": "not_found", "message": "no such peer"}}
            await svc.record_remote_handshake(session, peer, now=utcnow())
            await _audit(session, who="probe", tool="federation.handshake", args={"federation_peer_id": peer.id},
                         outcome="ok", detail={"status": peer.status})
        return 200, {"ok": True}


async def start(app: Any, host: str, port: int) -> asyncio.Server:
    """Load (or create) the instance identity, publish it on the app for the tools, start listening."""
    ident = instance.load_or_create(app.settings.data_dir)
    endpoint = Endpoint(app, ident)
    limiter = SourceLimiter(burst=int(getattr(app.settings, "federation_rate_burst", 30)),
                            per_second=float(getattr(app.settings, "federation_rate_per_second", 1.0)))
    server = await wire.serve(host, port, endpoint.server_context(), endpoint.handle, admit=limiter)
    bound = server.sockets[0].getsockname()[1] if server.sockets else port
    app.federation_identity = ident
    app.federation_endpoint = getattr(app.settings, "federation_advertise_url", None) or f"https://{host}:{bound}"
    log.info("federation endpoint %s (instance %s, pin %s)", app.federation_endpoint, ident.instance_id, ident.pin)
    return server
