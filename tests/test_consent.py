"""Consent that means what the patient thinks, tried as an attacker would on real validator
processes: an expired grantee must not decrypt data written after its expiry (even with the
ciphertext in hand, e.g. through a break-glass read); re-keying after a revoke goes on past an
expired co-grantee; a transaction signed for one network is refused by every other.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from devices.net.localnet import make_network
from devices.patient import envelope
from devices.patient.client import ApiError, NodeClient
from devices.patient.phone import Phone
from devices.patient.staff import Staff
from node.crypto.keys import Identity
from node.genesis import Genesis, Params
from node.ipfs.cid import cid_v1_raw
from node.tx import DATA_TYPES, Grant, Profile, Tx, Write
from tests.conftest import run

HR, BP = DATA_TYPES["heart_rate"], DATA_TYPES["blood_pressure"]


def _readings(t0: int, n: int = 5) -> list[envelope.Reading]:
    return [(t0 + 1000 * k, HR, b"%d bpm" % (60 + k)) for k in range(n)]


async def _wait_until(ms: int) -> None:
    await asyncio.sleep(max(0.0, ms / 1000 - time.time()) + 0.05)


def test_an_expired_grantee_cannot_open_data_written_after_the_expiry(node, genesis):
    chain = genesis.chain_id

    async def go():
        async with NodeClient(node.url) as c:
            phone = Phone(Identity.from_seed(b"consent patient"), c, chain)
            doc = Staff(Identity.from_seed(b"consent doctor"), c, chain)
            await doc.register("Dr Exp", "physician", "General")
            expiry = int(time.time() * 1000) + 3000
            await phone.grant(doc.address, ["heart_rate"], expiry)
            now = int(time.time() * 1000)
            before = await phone.write_window("heart_rate", _readings(now - 60_000))
            assert before.epoch == 0
            assert [len(w.readings) for w in await doc.read(phone.address, "heart_rate", before.cid)] == [5]
            await _wait_until(expiry)

            # a phone that does not rotate: a write under the epoch the expired grant holds is refused
            blob = b"x" * 64
            await phone.sync()
            stale = Tx.build(phone.identity, chain, phone.next_nonce,
                             Write(HR, cid_v1_raw(blob).to_bytes(), len(blob), 0, now, now + 1))
            with pytest.raises(ApiError) as refused:
                await c.submit(stale.raw, blob)
            assert refused.value.status == 409 and "expired" in refused.value.reason, refused.value

            # the phone rotates at its first write after the expiry: the type moves to epoch 1
            after = await phone.write_window("heart_rate", _readings(int(time.time() * 1000) - 30_000))
            assert after.epoch == 1
            grants = {g["staff"]: g for g in (await c.grants(phone.address))["grants"]}
            assert grants[doc.address.hex()]["types"] == []  # the expired grant was revoked

            # the former grantee fetches the new ciphertext with a break-glass read: it holds no key for it
            windows = {w.cid: w for w in await doc.read(phone.address, "heart_rate", break_glass="ETREAT")}
            assert windows[after.cid].sealed and windows[after.cid].readings == []
            assert len(windows[before.cid].readings) == 5  # what it was granted before stays readable
            keys = (await c.sealed_keys(phone.address, doc.address))["keys"]
            assert {(k["type"], k["epoch"]) for k in keys} == {("heart_rate", 0)}
    run(go())


def test_revoking_one_grantee_re_keys_the_others_past_an_expired_one(node, genesis):
    chain = genesis.chain_id

    async def go():
        async with NodeClient(node.url) as c:
            phone = Phone(Identity.from_seed(b"rekey patient"), c, chain)
            staff = [Staff(Identity.from_seed(b"rekey staff %d" % k), c, chain) for k in range(3)]
            for k, s in enumerate(staff):
                await s.register(f"S{k}", "nurse", "Ward")
            expiry = int(time.time() * 1000) + 2000
            await phone.grant(staff[0].address, ["heart_rate"], expiry)  # will expire
            await phone.grant(staff[1].address, ["heart_rate"])  # keeps the type
            await phone.grant(staff[2].address, ["heart_rate"])  # is revoked
            await _wait_until(expiry)
            await phone.revoke(staff[2].address)
            assert phone.rekey_failures == {}
            # the valid co-grantee got the new epoch's key; the expired one was skipped, not re-sent
            got = {(k["type"], k["epoch"]) for k in (await c.sealed_keys(phone.address, staff[1].address))["keys"]}
            assert ("heart_rate", 1) in got
            got0 = {(k["type"], k["epoch"]) for k in (await c.sealed_keys(phone.address, staff[0].address))["keys"]}
            assert ("heart_rate", 1) not in got0
            w = await phone.write_window("heart_rate", _readings(int(time.time() * 1000) - 30_000))
            assert w.epoch >= 1
            assert [len(x.readings) for x in await staff[1].read(phone.address, "heart_rate", w.cid)] == [5]
    run(go())



def test_a_transaction_signed_for_one_network_is_refused_by_another(tmp_path):
    """Two networks made independently (`medchain init` twice, as two hospitals' test setups would)
    get different chain ids; a profile and a grant committed on A are refused by B."""
    a = make_network(tmp_path / "a", 1, params=Params(sender_rate=1000, sender_burst=2000))[0]
    b = make_network(tmp_path / "b", 1, params=Params(sender_rate=1000, sender_burst=2000))[0]
    chain_a = Genesis.load(a.home / "genesis.json").chain_id
    chain_b = Genesis.load(b.home / "genesis.json").chain_id
    assert chain_a != chain_b
    a.start()
    b.start()
    try:
        async def go():
            async with NodeClient(a.url) as ca, NodeClient(b.url) as cb:
                doc = Identity.from_seed(b"cross-network doctor")
                pat = Identity.from_seed(b"cross-network patient")
                txs = [Tx.build(doc, chain_a, 1, Profile("Dr A", "physician", "A", doc.box_public)),
                       Tx.build(pat, chain_a, 1, Grant(doc.address, (HR,), 0, ()))]
                for tx in txs:
                    assert (await ca.wait_committed(await ca.submit(tx.raw), 30))["code"] == 0
                    with pytest.raises(ApiError) as refused:
                        await cb.submit(tx.raw)
                    assert refused.value.status == 400 and "wrong chain id" in refused.value.reason
                assert (await cb.account(doc.address))["profile"] is None
        run(go())
    finally:
        a.stop()
        b.stop()
