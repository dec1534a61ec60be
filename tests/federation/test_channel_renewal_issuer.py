"""The issuer's side of channel certificate renewal (message 7) on both databases: the presented certificate
stays accepted until the renewed one is first used, so a renewal whose answer was lost never cuts the channel,
and never more than two certificates of one peer work at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from fleet_mcp.db.base import utcnow
from fleet_mcp.federation import instance
from fleet_mcp.federation.keys import MemoryKeySealer
from fleet_mcp.federation.remote import Refusal, _csr_and_key
from fleet_mcp.federation.service import FederationService

pytestmark = pytest.mark.anyio


def _der(pem: str) -> bytes:
    from fleet_mcp.federation import pki

    return pki.load_cert(pem).public_bytes(serialization.Encoding.DER)


async def test_the_previous_certificate_works_until_the_renewed_one_is_used(
    tmp_path: Path, uow, account  # noqa: ANN001
) -> None:
    ident = instance.load_or_create(tmp_path)
    svc = FederationService(MemoryKeySealer(), identity=lambda: ident, endpoint="https://127.0.0.1:9")
    proposal = await uow(lambda s: svc.propose(s, account_id=account.id, remote_account="globex",
                                               remote_federation_domain="globex.elsewhere.test"))
    peer_id = proposal.federation_peer.id

    # The channel certificate the remote holds (as establish would have issued it).
    from fleet_mcp.federation import pki

    first = pki.cert_to_pem(ident.sign_channel_csr(_csr_and_key()[0], label=f"peer-{peer_id}"))

    async def install(s):  # noqa: ANN001, ANN202
        link = await svc.remote.remote_of(s, peer_id)
        link.inbound_channel_fp = instance.fingerprint(pki.load_cert(first))

    await uow(install)

    async def renew(cert_pem: str) -> str:
        out = await uow(lambda s: svc.remote.renew_inbound(s, peer_id, _der(cert_pem),
                                                           {"channel_csr_pem": _csr_and_key()[0]}, now=utcnow()))
        return out["channel_cert_pem"]

    async def works(cert_pem: str) -> bool:
        try:
            await uow(lambda s: svc.remote.channel_peer(s, peer_id, _der(cert_pem)))
        except Refusal as exc:
            assert exc.code == "wrong_channel"
            return False
        return True

    lost = await renew(first)  # the answer never reaches the holder...
    assert await works(first)  # ...which still has the first certificate, and it still works
    second = await renew(first)  # the holder renews again with it
    assert not await works(lost)  # the lost one is forgotten: at most two certificates per peer
    assert await works(first) and await works(second)
    # The holder switches: the first one is retired the moment the renewed one is used.
    assert not await works(first)
    assert await works(second)
    with pytest.raises(Refusal) as refused:
        await renew(first)
    assert refused.value.code == "wrong_channel"
    # A bad CSR changes nothing.
    with pytest.raises(Refusal) as refused:
        await uow(lambda s: svc.remote.renew_inbound(s, peer_id, _der(second), {"channel_csr_pem": "x"},
                                                     now=utcnow()))
    assert refused.value.code == "malformed"
    assert await works(second)
