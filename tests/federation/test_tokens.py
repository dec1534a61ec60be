"""Acceptance tokens: format, replay, expiry, wrong secret vs unknown id (one error), lockout, cancellation,
16 concurrent accepts with one winner, and no token where it must not be (DB file, logs, events, errors)."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import anyio
import pytest
from sqlalchemy import select

from fleet_mcp.db.models import FleetEvent
from fleet_mcp.errors import Conflict, FleetError, RateLimited, Unauthenticated
from fleet_mcp.federation import tokens
from fleet_mcp.federation.models import FederationAcceptFailure, FederationPeer, IssuedCertificate


def test_token_shape_and_parse():
    t = tokens.new_token()
    assert t.token.startswith("fat_") and len(t.token) == 4 + 16 + 1 + 43
    assert t.digest not in repr(t) and t.token not in repr(t)
    parsed = tokens.parse_token(t.token)
    assert parsed.public_id == t.public_id and parsed.digest == t.digest
    assert tokens.digest_matches(parsed, t.public_id, t.digest)
    assert not tokens.digest_matches(parsed, t.public_id, None)
    other = tokens.new_token()
    assert not tokens.digest_matches(parsed, other.public_id, t.digest)
    assert not tokens.digest_matches(tokens.parse_token(other.token), t.public_id, t.digest)
    messages = set()
    for bad in (
        "",
        "fat_",
        t.token[:-1],
        t.token + "A",
        t.token.replace("fat_", "fbt_"),
        t.token.replace(".", "_"),
        "x" * 5000,
        t.token[:20] + "!" + t.token[21:],
    ):
        with pytest.raises(Unauthenticated) as e:
            tokens.parse_token(bad)
        messages.add(str(e.value))
    assert len(messages) == 1
    # 256-bit secret: 43 urlsafe base64 characters carry 258 bits, the last two always zero.
    assert len(t.token.split(".")[1]) == 43


pytestmark = pytest.mark.anyio


async def propose(uow, svc, account, **kw):
    return await uow(lambda s: svc.propose(s, account_id=account.id, remote_account="globex", **kw))


async def attempt(uow, svc, acct, peer_id, token, now=None):
    return await uow(
        lambda s: svc.accept(s, account_id=acct.id, peer_id=peer_id, acceptance_token=token, now=now)
    )


def wrong_secret(token: str) -> str:
    head, secret = token.split(".")
    return f"{head}.{'A' if secret[0] != 'A' else 'B'}{secret[1:]}"


@pytest.mark.anyio
async def test_wrong_secret_unknown_id_and_malformed_give_one_error(uow, svc, account, other_account):
    p = await propose(uow, svc, account)
    pid = p.federation_peer.id
    unknown_id = tokens.new_token().token
    errors = []
    for token in (wrong_secret(p.acceptance_token), unknown_id, "fat_nope", p.acceptance_token[:-3]):
        with pytest.raises(Unauthenticated) as e:
            await attempt(uow, svc, other_account, pid, token)
        errors.append(e.value)
    assert len({(err.message, err.hint, err.code) for err in errors}) == 1
    assert all(p.acceptance_token.split(".")[1] not in str(err) for err in errors)
    got = await uow(lambda s: svc.get_peer(s, account_id=account.id, peer_id=pid))
    assert got.failed_attempts == 4 and got.status == "proposed"
    # The real token still works after a few failures.
    ok = await attempt(uow, svc, other_account, pid, p.acceptance_token)
    assert ok.federation_peer.status == "accepted"


@pytest.mark.anyio
async def test_replay_is_refused(uow, svc, account, other_account, sessionmaker):
    p = await propose(uow, svc, account)
    await attempt(uow, svc, other_account, p.federation_peer.id, p.acceptance_token)
    with pytest.raises(Conflict, match="can no longer be used"):
        await attempt(uow, svc, other_account, p.federation_peer.id, p.acceptance_token)
    async with sessionmaker() as s:
        peer = await s.get(FederationPeer, p.federation_peer.id)
        assert peer.token_digest is None and peer.status == "accepted"
        assert len((await s.execute(select(IssuedCertificate))).scalars().all()) == 2


@pytest.mark.anyio
async def test_expiry_and_regeneration(uow, svc, account, other_account):
    p = await propose(uow, svc, account, token_ttl_seconds=3600)
    pid = p.federation_peer.id
    later = p.acceptance_token_expires_at + dt.timedelta(seconds=1)
    with pytest.raises(Conflict, match="expired"):
        await attempt(uow, svc, other_account, pid, p.acceptance_token, now=later)
    # Exactly at expiry is already too late.
    with pytest.raises(Conflict, match="expired"):
        await attempt(uow, svc, other_account, pid, p.acceptance_token, now=p.acceptance_token_expires_at)
    with pytest.raises(Conflict, match="only the proposing account"):
        await uow(lambda s: svc.regenerate_token(s, account_id=other_account.id, peer_id=pid))
    fresh = await uow(lambda s: svc.regenerate_token(s, account_id=account.id, peer_id=pid, now=later))
    assert fresh.acceptance_token != p.acceptance_token
    with pytest.raises(Unauthenticated):  # the old token is now just a wrong token
        await attempt(uow, svc, other_account, pid, p.acceptance_token, now=later)
    done = await attempt(uow, svc, other_account, pid, fresh.acceptance_token, now=later)
    assert done.federation_peer.status == "accepted"
    with pytest.raises(Conflict, match="only proposed peers"):
        await uow(lambda s: svc.regenerate_token(s, account_id=account.id, peer_id=pid))


@pytest.mark.anyio
async def test_lockout_then_cancellation(uow, svc, account, other_account, sessionmaker):
    t0 = dt.datetime.now(dt.UTC)
    p = await propose(uow, svc, account, now=t0)
    pid, bad = p.federation_peer.id, wrong_secret(p.acceptance_token)
    for i in range(5):
        with pytest.raises(Unauthenticated):
            await attempt(uow, svc, other_account, pid, bad, now=t0 + dt.timedelta(seconds=i))
    # Locked: even the right token is refused for a while.
    with pytest.raises(RateLimited):
        await attempt(uow, svc, other_account, pid, p.acceptance_token, now=t0 + dt.timedelta(minutes=1))
    got = await uow(lambda s: svc.get_peer(s, account_id=account.id, peer_id=pid))
    assert got.locked_until is not None and got.failed_attempts == 5
    scan = await uow(lambda s: svc.scan(s, account_id=account.id, now=t0 + dt.timedelta(minutes=1)))
    assert "failed_accept_spike" in {f.kind for f in scan.findings}
    # After the lock, five more failures (10 against this token) cancel the proposal.
    t1 = t0 + dt.timedelta(minutes=16)
    for i in range(5):
        with pytest.raises(Unauthenticated):
            await attempt(uow, svc, other_account, pid, bad, now=t1 + dt.timedelta(seconds=i))
    got = await uow(lambda s: svc.get_peer(s, account_id=account.id, peer_id=pid))
    assert got.status == "revoked" and "cancelled after 10" in got.revoked_reason
    with pytest.raises(FleetError):
        await attempt(uow, svc, other_account, pid, p.acceptance_token, now=t1 + dt.timedelta(minutes=20))
    async with sessionmaker() as s:
        kinds = [k for (k,) in (await s.execute(select(FleetEvent.kind))).all()]
        peer = await s.get(FederationPeer, pid)
    assert kinds.count("federation.accept_failed") >= 10
    assert "federation.accept_locked" in kinds and "federation.proposal_cancelled" in kinds
    assert peer.token_digest is None


@pytest.mark.anyio
async def test_account_lockout_spans_peers_and_strangers_cannot_lock_a_peer(
    uow, svc, account, other_account, sessionmaker
):
    from fleet_mcp.db.models import Account

    async with sessionmaker() as s, s.begin():
        s.add(Account(name="initech", federation_domain="initech.fleet.test"))
    async with sessionmaker() as s:
        initech = (await s.execute(select(Account).where(Account.name == "initech"))).scalar_one()
    p = await propose(uow, svc, account)
    pid = p.federation_peer.id
    t0 = dt.datetime.now(dt.UTC)
    # A stranger (not the addressed account) guessing: counted against the stranger only.
    for i in range(5):
        with pytest.raises(Unauthenticated):
            await attempt(
                uow, svc, initech, pid, wrong_secret(p.acceptance_token), now=t0 + dt.timedelta(seconds=i)
            )
    with pytest.raises(RateLimited):
        await attempt(uow, svc, initech, pid, p.acceptance_token, now=t0 + dt.timedelta(seconds=10))
    got = await uow(lambda s: svc.get_peer(s, account_id=account.id, peer_id=pid))
    assert got.failed_attempts == 0 and got.locked_until is None
    # The addressed account: failures against unknown peers lock the account out of every accept.
    for i in range(5):
        with pytest.raises(Unauthenticated):
            await attempt(
                uow, svc, other_account, pid + 1000 + i, p.acceptance_token, now=t0 + dt.timedelta(seconds=i)
            )
    with pytest.raises(RateLimited):
        await attempt(uow, svc, other_account, pid, p.acceptance_token, now=t0 + dt.timedelta(seconds=10))
    async with sessionmaker() as s:
        rows = (await s.execute(select(FederationAcceptFailure))).scalars().all()
    assert sorted(r.account_id for r in rows) == [other_account.id] * 5 + [initech.id] * 5
    ok = await attempt(uow, svc, other_account, pid, p.acceptance_token, now=t0 + dt.timedelta(minutes=16))
    assert ok.federation_peer.status == "accepted"


@pytest.mark.anyio
async def test_sixteen_concurrent_accepts_one_winner(uow, svc, account, other_account, sessionmaker):
    p = await propose(uow, svc, account)
    outcomes: list[object] = []

    async def one() -> None:
        try:
            outcomes.append(await attempt(uow, svc, other_account, p.federation_peer.id, p.acceptance_token))
        except FleetError as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(one)
    winners = [o for o in outcomes if not isinstance(o, Exception)]
    losers = [o for o in outcomes if isinstance(o, Exception)]
    assert len(outcomes) == 16 and len(winners) == 1
    assert all(isinstance(e, Conflict) and "no longer" in e.message for e in losers), losers
    async with sessionmaker() as s:
        certs = (
            (await s.execute(select(IssuedCertificate).where(IssuedCertificate.kind == "cross")))
            .scalars()
            .all()
        )
        failures = (await s.execute(select(FederationAcceptFailure))).scalars().all()
    assert len(certs) == 2 and failures == []


@pytest.mark.anyio
async def test_token_never_stored_logged_or_emitted(
    uow, svc, account, other_account, sessionmaker, db_url, caplog
):
    # Everything of ours down to DEBUG, everything else from INFO (aiosqlite's DEBUG lines echo bound SQL
    # parameters, which include the digest — the server must never run that logger at DEBUG).
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="fleet_mcp")
    p = await propose(uow, svc, account)
    token = p.acceptance_token
    secret = token.split(".")[1]
    errors = []
    for bad in (wrong_secret(token), token + "x"):
        with pytest.raises(FleetError) as e:
            await attempt(uow, svc, other_account, p.federation_peer.id, bad)
        errors.append(e.value)
    regenerated = await uow(
        lambda s: svc.regenerate_token(s, account_id=account.id, peer_id=p.federation_peer.id)
    )
    new_token = regenerated.acceptance_token
    accepted = await attempt(uow, svc, other_account, p.federation_peer.id, new_token)
    needles = [token, secret, new_token, new_token.split(".")[1]]
    async with sessionmaker() as s:
        peer = await s.get(FederationPeer, p.federation_peer.id)
        payloads = [repr(e.payload) for e in (await s.execute(select(FleetEvent))).scalars().all()]
    digests = [tokens.parse_token(t).digest for t in (token, new_token)]
    assert peer.token_digest is None  # cleared on accept
    assert any(r.name.startswith("fleet_mcp.federation") for r in caplog.records)
    haystacks = {
        "logs": caplog.text,
        "events": "\n".join(payloads),
        "errors": "\n".join(f"{e!s} {e.to_dict()!r}" for e in errors),
        "results": p.federation_peer.model_dump_json()
        + accepted.model_dump_json()
        + regenerated.federation_peer_id.__repr__(),
    }
    for where, text in haystacks.items():
        for needle in needles + digests:
            assert needle not in text, f"token material found in {where}"
    if db_url.startswith("sqlite"):
        db_file = Path(db_url.split("///", 1)[1])
        raw = b"".join(f.read_bytes() for f in db_file.parent.glob(db_file.name + "*"))
        assert len(raw) > 0
        for needle in needles:
            assert needle.encode() not in raw, "token plaintext found in the SQLite files"
