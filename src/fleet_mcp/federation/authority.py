"""Per-account certificate authorities on the caller's session: CA creation, CRLs, node certificates,
cross-signing and the trust bundles that follow from them."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Sequence

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fleet_mcp import events
from fleet_mcp.db.base import utcnow
from fleet_mcp.errors import InvalidArgument, NotFound
from fleet_mcp.federation import accounts, pki
from fleet_mcp.federation.config import FederationConfig
from fleet_mcp.federation.keys import KeySealer
from fleet_mcp.federation.lifecycle import TRUSTED_STATUSES
from fleet_mcp.federation.models import CertificateAuthority, FederationPeer, IssuedCertificate
from fleet_mcp.federation.schemas import NodeCertificateOut, TrustBundleOut

log = logging.getLogger(__name__)


#: The key reference of a remote account's CA row: the certificates of another instance, no keys.
REMOTE_KEY_REF = "remote:none"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Authorities:
    """CA operations; private keys are unsealed only for the signature that needs them."""

    def __init__(self, sealer: KeySealer, config: FederationConfig) -> None:
        self.sealer = sealer
        self.config = config

    # -- the CA itself ---------------------------------------------------------------------------

    async def get(self, session: AsyncSession, account_id: int) -> CertificateAuthority | None:
        stmt = select(CertificateAuthority).where(CertificateAuthority.account_id == account_id)
        return (await session.execute(stmt)).scalar_one_or_none()

    async def ensure(
        self, session: AsyncSession, account_id: int, *, now: dt.datetime | None = None
    ) -> CertificateAuthority:
        """The account's CA, created (root + intermediate, keys sealed, empty CRLs) on first need."""
        existing = await self.get(session, account_id)
        if existing is not None:
            return existing
        now = now or utcnow()
        acct = await accounts.by_id(session, account_id)
        m = pki.create_account_ca(acct.name, now=now)
        root_ref = await self.sealer.seal(
            session,
            account_id,
            pki.private_key_to_pem(m.root_key),
            label=f"federation root CA key of {acct.name}",
        )
        int_ref = await self.sealer.seal(
            session,
            account_id,
            pki.private_key_to_pem(m.intermediate_key),
            label=f"federation intermediate CA key of {acct.name}",
        )
        root_pem = pki.cert_to_pem(m.root_cert)
        ca = CertificateAuthority(
            account_id=account_id,
            root_cert_pem=root_pem,
            intermediate_cert_pem=pki.cert_to_pem(m.intermediate_cert),
            root_key_ref=root_ref,
            intermediate_key_ref=int_ref,
            bundle_version=1,
            bundle_digest=_digest(root_pem),
        )
        self._sign_crls(ca, m.root_cert, m.root_key, m.intermediate_cert, m.intermediate_key, [], [], now)
        try:
            async with session.begin_nested():
                session.add(ca)
                await session.flush()
        except IntegrityError:  # a concurrent transaction created it first
            found = await self.get(session, account_id)
            if found is None:
                raise
            return found
        await events.emit(
            session,
            account_id=account_id,
            kind="federation.ca_created",
            payload={
                "root_serial": pki.serial_hex(m.root_cert.serial_number),
                "intermediate_serial": pki.serial_hex(m.intermediate_cert.serial_number),
            },
        )
        log.info("created the federation CA of account %s", account_id)
        return ca

    async def root_key(self, session: AsyncSession, ca: CertificateAuthority) -> pki.CaPrivateKey:
        return pki.load_private_key(await self.sealer.unseal(session, ca.root_key_ref))

    async def intermediate_key(self, session: AsyncSession, ca: CertificateAuthority) -> pki.CaPrivateKey:
        return pki.load_private_key(await self.sealer.unseal(session, ca.intermediate_key_ref))

    async def rotate_intermediate(
        self, session: AsyncSession, account_id: int, *, now: dt.datetime, correlation_id: str | None = None
    ) -> CertificateAuthority:
        """A new intermediate (new key, sealed) under the same root. The CRLs are re-signed with it and the
        bundle sequence grows, so peers on other instances re-sign the new intermediate on their next poll;
        peers on this instance are re-signed here (the old cross certificates are superseded)."""
        ca = await self.get(session, account_id)
        if ca is None or ca.root_key_ref == REMOTE_KEY_REF:
            raise InvalidArgument(
                "this account has no federation CA of its own to rotate",
                hint="the CA is created by the first node certificate or an accepted peer",
            )
        acct = await accounts.by_id(session, account_id)
        cert, key = pki.new_intermediate(pki.load_cert(ca.root_cert_pem), await self.root_key(session, ca), now=now)
        ca.intermediate_key_ref = await self.sealer.seal(
            session, account_id, pki.private_key_to_pem(key), label=f"federation intermediate CA key of {acct.name}"
        )
        ca.intermediate_cert_pem = pki.cert_to_pem(cert)
        await self.rebuild_crls(session, ca, now=now)
        # Cross certificates other local accounts' roots signed for the old intermediate are replaced.
        old = (
            (
                await session.execute(
                    select(IssuedCertificate)
                    .join(FederationPeer, FederationPeer.id == IssuedCertificate.peer_id)
                    .where(
                        IssuedCertificate.kind == "cross",
                        IssuedCertificate.subject_account_id == account_id,
                        IssuedCertificate.revoked_at.is_(None),
                        IssuedCertificate.superseded_at.is_(None),
                        FederationPeer.status.in_([s.value for s in TRUSTED_STATUSES]),
                    )
                )
            )
            .scalars()
            .all()
        )
        for c in old:
            signer = await self.get(session, c.account_id)
            if signer is None or signer.root_key_ref == REMOTE_KEY_REF:
                continue  # signed on another instance: it re-signs on its next poll
            peer = await session.get(FederationPeer, c.peer_id)
            assert peer is not None
            new = await self.cross_sign(
                session, signer_id=c.account_id, subject_id=account_id, peer=peer, now=now,
                correlation_id=correlation_id,
            )
            c.superseded_at = now
            if c.account_id == peer.local_account_id:
                peer.local_cross_serial = new.serial
            else:
                peer.remote_cross_serial = new.serial
            await session.flush()
            await self.refresh_bundle(session, c.account_id)
        ca.bundle_version += 1  # the bundle material (the intermediate) changed even if the bundle did not
        await session.flush()
        await events.emit(
            session,
            account_id=account_id,
            kind="federation.intermediate_rotated",
            payload={"serial": pki.serial_hex(cert.serial_number), "bundle_version": ca.bundle_version},
            correlation_id=correlation_id,
        )
        return ca

    # -- CRLs ------------------------------------------------------------------------------------

    def _sign_crls(
        self,
        ca: CertificateAuthority,
        root: x509.Certificate,
        root_key: pki.CaPrivateKey,
        inter: x509.Certificate,
        inter_key: pki.CaPrivateKey,
        root_revoked: list[tuple[int, dt.datetime]],
        inter_revoked: list[tuple[int, dt.datetime]],
        now: dt.datetime,
    ) -> None:
        life = self.config.crl_lifetime
        ca.root_crl_pem = pki.crl_to_pem(
            pki.build_crl(
                issuer_cert=root,
                issuer_key=root_key,
                revoked=root_revoked,
                crl_number=ca.root_crl_number or 1,
                now=now,
                lifetime=life,
            )
        )
        ca.intermediate_crl_pem = pki.crl_to_pem(
            pki.build_crl(
                issuer_cert=inter,
                issuer_key=inter_key,
                revoked=inter_revoked,
                crl_number=ca.intermediate_crl_number or 1,
                now=now,
                lifetime=life,
            )
        )
        ca.crl_next_update = now + life

    async def rebuild_crls(
        self, session: AsyncSession, ca: CertificateAuthority, *, now: dt.datetime
    ) -> None:
        """Re-sign both CRLs: revoked cross certificates on the root's, revoked nodes on the other. A remote
        account's CA (another instance's, no keys here) is left alone: its CRLs come with its bundle."""
        if ca.root_key_ref == REMOTE_KEY_REF:
            return
        rows = (
            await session.execute(
                select(IssuedCertificate.kind, IssuedCertificate.serial, IssuedCertificate.revoked_at).where(
                    IssuedCertificate.account_id == ca.account_id,
                    IssuedCertificate.revoked_at.is_not(None),
                    IssuedCertificate.not_after > now,
                )
            )
        ).all()
        root_revoked = [(pki.serial_from_hex(s), at) for kind, s, at in rows if kind == "cross"]
        inter_revoked = [(pki.serial_from_hex(s), at) for kind, s, at in rows if kind == "node"]
        ca.root_crl_number = (ca.root_crl_number or 1) + 1
        ca.intermediate_crl_number = (ca.intermediate_crl_number or 1) + 1
        self._sign_crls(
            ca,
            pki.load_cert(ca.root_cert_pem),
            await self.root_key(session, ca),
            pki.load_cert(ca.intermediate_cert_pem),
            await self.intermediate_key(session, ca),
            root_revoked,
            inter_revoked,
            now,
        )
        await session.flush()

    async def refresh_stale_crls(
        self, session: AsyncSession, ca: CertificateAuthority, now: dt.datetime
    ) -> bool:
        """Re-sign CRLs past half their life, so verifiers never meet an expired CRL."""
        if ca.root_key_ref == REMOTE_KEY_REF:
            return False
        if ca.crl_next_update is None or ca.crl_next_update - now <= self.config.crl_lifetime / 2:
            await self.rebuild_crls(session, ca, now=now)
            return True
        return False

    # -- issuing ---------------------------------------------------------------------------------

    async def record(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        cert: x509.Certificate,
        kind: str,
        dns_name: str | None = None,
        subject_account_id: int | None = None,
        peer_id: int | None = None,
        correlation_id: str | None = None,
    ) -> IssuedCertificate:
        """Record an issued certificate and emit `federation.certificate_issued`."""
        row = IssuedCertificate(
            account_id=account_id,
            serial=pki.serial_hex(cert.serial_number),
            kind=kind,
            subject=cert.subject.rfc4514_string()[:500],
            dns_name=dns_name,
            subject_account_id=subject_account_id,
            peer_id=peer_id,
            name_constraints=pki.permitted_dns_names(cert),
            certificate_pem=pki.cert_to_pem(cert),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )
        session.add(row)
        await session.flush()
        await events.emit(
            session,
            account_id=account_id,
            kind="federation.certificate_issued",
            payload={
                "kind": kind,
                "serial": row.serial,
                "subject": row.subject,
                "not_after": row.not_after.isoformat(),
                "federation_peer_id": peer_id,
            },
            correlation_id=correlation_id,
        )
        return row

    async def issue_node_certificate(
        self,
        session: AsyncSession,
        *,
        account_id: int,
        node_name: str,
        csr_pem: str | None = None,
        lifetime: dt.timedelta | None = None,
        now: dt.datetime | None = None,
        correlation_id: str | None = None,
    ) -> NodeCertificateOut:
        """Sign a node certificate from a CSR, or with a fresh key that is returned once and never stored."""
        now = now or utcnow()
        acct = await accounts.by_id(session, account_id)
        domain = accounts.federation_domain(acct)
        dns_name = pki.node_dns_name(node_name, domain)
        private_key_pem: str | None = None
        if csr_pem:
            csr = pki.load_csr(csr_pem)
            public_key = pki.check_node_public_key(csr.public_key())
            foreign = [n for n in pki.csr_dns_names(csr) if not pki.is_under_domain(n, domain)]
            if foreign:
                raise InvalidArgument(
                    f"the CSR asks for names outside the federation domain {domain!r}: {', '.join(foreign)}",
                    hint=f"request only names ending in '.{domain}'",
                )
        else:
            key = pki.generate_key()
            public_key = key.public_key()
            private_key_pem = pki.private_key_to_pem(key).decode()
        ca = await self.ensure(session, account_id, now=now)
        intermediate = pki.load_cert(ca.intermediate_cert_pem)
        cert = pki.issue_node_certificate(
            intermediate_cert=intermediate,
            intermediate_key=await self.intermediate_key(session, ca),
            public_key=public_key,
            dns_name=dns_name,
            federation_domain=domain,
            account_name=acct.name,
            lifetime=lifetime or self.config.node_cert_lifetime,
            now=now,
        )
        await self.record(
            session,
            account_id=account_id,
            cert=cert,
            kind="node",
            dns_name=dns_name,
            correlation_id=correlation_id,
        )
        return NodeCertificateOut(
            certificate_pem=pki.cert_to_pem(cert),
            chain_pem=pki.certs_to_pem([cert, intermediate]),
            serial=pki.serial_hex(cert.serial_number),
            not_after=cert.not_valid_after_utc,
            dns_name=dns_name,
            private_key_pem=private_key_pem,
        )

    # -- trust bundles ---------------------------------------------------------------------------

    async def bundle_cross_certs(self, session: AsyncSession, account_id: int) -> list[IssuedCertificate]:
        """Current cross certificates this account's root signed, for peers it trusts."""
        stmt = (
            select(IssuedCertificate)
            .join(FederationPeer, FederationPeer.id == IssuedCertificate.peer_id)
            .where(
                IssuedCertificate.account_id == account_id,
                IssuedCertificate.kind == "cross",
                IssuedCertificate.revoked_at.is_(None),
                IssuedCertificate.superseded_at.is_(None),
                FederationPeer.status.in_([s.value for s in TRUSTED_STATUSES]),
            )
            .order_by(IssuedCertificate.id)
        )
        return list((await session.execute(stmt)).scalars().all())

    async def bundle_pem(
        self, session: AsyncSession, ca: CertificateAuthority
    ) -> tuple[str, list[IssuedCertificate]]:
        cross = await self.bundle_cross_certs(session, ca.account_id)
        return ca.root_cert_pem + "".join(c.certificate_pem for c in cross), cross

    async def refresh_bundle(self, session: AsyncSession, account_id: int) -> int:
        """Bump the bundle version when the bundle's content changed; return the current version."""
        ca = await self.ensure(session, account_id)
        pem, _ = await self.bundle_pem(session, ca)
        digest = _digest(pem)
        if digest != ca.bundle_digest:
            ca.bundle_version += 1
            ca.bundle_digest = digest
            await session.flush()
            await events.emit(
                session,
                account_id=account_id,
                kind="federation.trust_bundle_changed",
                payload={"bundle_version": ca.bundle_version},
            )
        return ca.bundle_version

    async def crls_for(
        self, session: AsyncSession, ca: CertificateAuthority, cross: Sequence[IssuedCertificate]
    ) -> str:
        """The CRLs a verifier of this bundle needs for VERIFY_CRL_CHECK_CHAIN: own root and intermediate, and
        the intermediates of trusted peers (their leaves are checked against them)."""
        parts = [ca.root_crl_pem or "", ca.intermediate_crl_pem or ""]
        for subject_id in sorted({c.subject_account_id for c in cross if c.subject_account_id is not None}):
            peer_ca = await self.get(session, subject_id)
            if peer_ca is not None and peer_ca.intermediate_crl_pem:
                parts.append(peer_ca.intermediate_crl_pem)
        return "".join(parts)

    async def trust_bundle(
        self, session: AsyncSession, *, account_id: int, include_crls: bool = False
    ) -> TrustBundleOut:
        """What the account's nodes trust: its own root plus the cross certificates its own root signed.

        A read: it never creates the CA (read-only tools run where writes fail), it says there is none."""
        acct = await accounts.by_id(session, account_id)
        ca = await self.get(session, account_id)
        if ca is None:
            raise NotFound(
                f"account {acct.name!r} has no federation CA yet, so it has no trust bundle",
                hint="the CA is created by the account's first node certificate "
                "(system_sdwan_issue_node_certificate) or when a federation peer of the account is accepted",
                account=acct.name,
            )
        pem, cross = await self.bundle_pem(session, ca)
        crls = await self.crls_for(session, ca, cross) if include_crls else None
        return TrustBundleOut(
            account=acct.name,
            bundle_pem=pem,
            bundle_version=ca.bundle_version,
            certificate_count=1 + len(cross),
            crls_pem=crls,
        )

    # -- cross-signing ---------------------------------------------------------------------------

    async def cross_sign(
        self,
        session: AsyncSession,
        *,
        signer_id: int,
        subject_id: int,
        peer: FederationPeer,
        now: dt.datetime,
        correlation_id: str | None = None,
    ) -> IssuedCertificate:
        """The signer's root vouches for the subject's intermediate, limited to the subject's domain."""
        signer_ca = await self.ensure(session, signer_id, now=now)
        subject_ca = await self.ensure(session, subject_id, now=now)
        subject = await accounts.by_id(session, subject_id)
        cert = pki.cross_sign_intermediate(
            signer_root_cert=pki.load_cert(signer_ca.root_cert_pem),
            signer_root_key=await self.root_key(session, signer_ca),
            peer_intermediate_cert=pki.load_cert(subject_ca.intermediate_cert_pem),
            peer_domain=accounts.federation_domain(subject),
            lifetime=self.config.cross_cert_lifetime,
            now=now,
        )
        return await self.record(
            session,
            account_id=signer_id,
            cert=cert,
            kind="cross",
            subject_account_id=subject_id,
            peer_id=peer.id,
            correlation_id=correlation_id,
        )

    async def cross_sign_pair(
        self,
        session: AsyncSession,
        peer: FederationPeer,
        *,
        now: dt.datetime,
        correlation_id: str | None = None,
    ) -> list[IssuedCertificate]:
        """Each root signs the other's intermediate; each bundle gains the one its own root signed."""
        by_local = await self.cross_sign(
            session,
            signer_id=peer.local_account_id,
            subject_id=peer.remote_account_id,
            peer=peer,
            now=now,
            correlation_id=correlation_id,
        )
        by_remote = await self.cross_sign(
            session,
            signer_id=peer.remote_account_id,
            subject_id=peer.local_account_id,
            peer=peer,
            now=now,
            correlation_id=correlation_id,
        )
        peer.local_cross_serial, peer.remote_cross_serial = by_local.serial, by_remote.serial
        await session.flush()
        await self.refresh_bundle(session, peer.local_account_id)
        await self.refresh_bundle(session, peer.remote_account_id)
        return [by_local, by_remote]

    async def withdraw_trust(
        self, session: AsyncSession, peer: FederationPeer, *, reason: str, now: dt.datetime
    ) -> list[str]:
        """Revoke the peer's cross certificates, re-sign both roots' CRLs, bump both bundles; serials out."""
        certs = (
            (
                await session.execute(
                    select(IssuedCertificate).where(
                        IssuedCertificate.peer_id == peer.id,
                        IssuedCertificate.kind == "cross",
                        IssuedCertificate.revoked_at.is_(None),
                    )
                )
            )
            .scalars()
            .all()
        )
        for c in certs:
            c.revoked_at = now
            c.revocation_reason = reason[:500]
        peer.local_cross_serial = peer.remote_cross_serial = None
        await session.flush()
        for account_id in dict.fromkeys((peer.local_account_id, peer.remote_account_id)):
            ca = await self.get(session, account_id)
            if ca is not None:
                if certs:
                    await self.rebuild_crls(session, ca, now=now)
                await self.refresh_bundle(session, account_id)
        return [c.serial for c in certs]
