"""Consent that means what the patient thinks, tried as an attacker would on real validator
processes: an expired grantee must not decrypt data written after its expiry (even with the
ciphertext in hand, e.g. through a break-glass read); re-keying after a revoke goes on past an
expired co-grantee; a transaction signed for one network is refused by every other; a long
audit log hides no emergency read, and an old read opens no later data.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from devices.net.localnet import dev_issuer, make_network
from devices.patient import envelope
from devices.patient.client import ApiError, NodeClient
from devices.patient.phone import Phone
from devices.patient.staff import AccessDenied, Staff
from devices.wearable.wearables import make_wearable
from node.crypto.keys import Identity
from node.genesis import Genesis, Params
from node.ipfs.cid import Cid, cid_v1_raw
from node.tx import DATA_TYPES, Grant, Profile, Read, Tx, Write
from node.tx.credential import issue
from tests.conftest import run

HR, BP = DATA_TYPES["heart_rate"], DATA_TYPES["blood_pressure"]


def clinician(node, genesis, staff: bytes):
    """A credential of the local network's issuer: the holder may break the glass."""
    return issue(dev_issuer(node.home), genesis.chain_id, staff, int(time.time() * 1000) + 10**8)


def _readings(t0: int, n: int = 5, kind: str = "heart_rate") -> list[envelope.Reading]:
    """n real frames of `kind` (the phone seals only its type's characteristic), a second apart."""
    frames = list(make_wearable(kind, "t", seed=t0).frames_between(0, 6 * 3_600_000))[:n]
    return [(t0 + 1000 * k, uuid, frame) for k, (_, uuid, frame) in enumerate(frames)]


async def _wait_until(ms: int) -> None:
    await asyncio.sleep(max(0.0, ms / 1000 - time.time()) + 0.05)


def test_an_expired_grantee_cannot_open_data_written_after_the_expiry(node, genesis):
    chain = genesis.chain_id

    async def go():
        async with NodeClient(node.url) as c:
            phone = Phone(Identity.from_seed(b"consent patient"), c, chain)
            doc = Staff(Identity.from_seed(b"consent doctor"), c, chain)
            await doc.register("Dr Exp", "physician", "General", clinician(node, genesis, doc.address))
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
            # what it was granted before: it holds the key, so break-glass does not serve the ciphertext
            # (that would undo the expiry); the patient's release would
            assert windows[before.cid].readings == [] and "break-glass refused" in windows[before.cid].refused
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


def test_a_long_audit_log_hides_no_emergency_read_and_old_reads_open_no_new_data(node, genesis):
    """An insider commits 1,100 allowed reads, then another staff member one break-glass read: the
    patient's client reads the log to its end (newest first, page by page) and finds the emergency
    read both in the log and in its own index, on every page. A read committed before a window was
    written never opens that window."""
    chain = genesis.chain_id

    async def go():
        async with NodeClient(node.url) as c:
            phone = Phone(Identity.from_seed(b"audit patient"), c, chain)
            insider = Staff(Identity.from_seed(b"audit insider"), c, chain)
            medic = Staff(Identity.from_seed(b"audit medic"), c, chain)
            await insider.register("In Sider", "nurse", "Ward")
            await medic.register("E Medic", "physician", "ER", clinician(node, genesis, medic.address))
            await phone.grant(insider.address, ["heart_rate"])
            first = await phone.write_window("heart_rate", _readings(int(time.time() * 1000) - 60_000))
            n = 1100
            reads = [Tx.build(insider.identity, chain, 2 + k, Read(phone.address, HR, b"", 0, 2**62))
                     for k in range(n)]
            for i in range(0, n, 400):  # a sender may have 1,024 pending: batch by batch
                res = await c.submit_many([t.raw for t in reads[i:i + 400]])
                assert all(r["status"] == 202 for r in res), [r for r in res if r["status"] != 202][:2]
                assert (await c.wait_committed(reads[min(i + 399, n - 1)].id.hex(), 60))["code"] == 0
            [bg] = await medic.read(phone.address, "heart_rate", first.cid, break_glass="ETREAT")
            log = await phone.client.audit(phone.address)
            assert log["count"] == n + 1 == len(log["reads"]) and log["next"] is None
            assert [r["seq"] for r in log["reads"]] == list(range(n, -1, -1))  # newest first, to the end
            assert log["reads"][0]["break_glass"] == "ETREAT" and log["reads"][0]["reader"] == medic.address.hex()
            assert [r["seq"] for r in log["break_glass"]] == [n]
            # a page far from the newest still carries every emergency read
            page = await c.get_json(f"/v1/patients/{phone.address.hex()}/audit", before=100, limit=50)
            assert [r["seq"] for r in page["reads"]] == list(range(99, 49, -1)) and page["next"] == 50
            assert [r["seq"] for r in page["break_glass"]] == [n]

            # the insider's last read (a range to the far future) was committed before this window ...
            later = await phone.write_window("heart_rate", _readings(int(time.time() * 1000) - 30_000))
            blob = Cid.parse(later.cid).to_bytes()
            with pytest.raises(ApiError) as refused:
                await c.download(insider.identity, chain, later.cid, blob, reads[-1].id)
            assert refused.value.status == 403 and "written after the read" in refused.value.reason
            # ... while what was on chain when it committed stays open to it
            assert await c.download(insider.identity, chain, first.cid, Cid.parse(first.cid).to_bytes(), reads[-1].id)
    run(go())


def test_a_phone_that_did_not_see_a_grant_expire_rotates_when_the_chain_refuses(node, genesis):
    """The phone reads the grants only when one of its grants may have expired; a grant made by
    another device of the same patient is not in that knowledge: the chain refuses the write
    (KEY_EXPIRED), and the phone rotates and writes under the new epoch."""
    chain = genesis.chain_id

    async def go():
        async with NodeClient(node.url) as c:
            me = Identity.from_seed(b"two-device patient")
            phone, tablet = Phone(me, c, chain), Phone(me, c, chain)
            doc = Staff(Identity.from_seed(b"two-device doctor"), c, chain)
            await doc.register("Dr Two", "physician", "General")
            first = await phone.write_window("heart_rate", _readings(int(time.time() * 1000) - 90_000))
            assert first.epoch == 0  # the phone has read the grants: none expires
            expiry = int(time.time() * 1000) + 2000
            await tablet.grant(doc.address, ["heart_rate"], expiry)
            await _wait_until(expiry)
            phone.next_nonce = None  # the tablet used nonces: resync
            after = await phone.write_window("heart_rate", _readings(int(time.time() * 1000) - 30_000))
            assert after.epoch == 1
    run(go())


def test_break_glass_is_for_clinicians_and_a_release_is_scoped_and_ends(node, genesis):
    """Item 2 of the attack list, on a real validator: self-registered profiles (fresh keys, a
    Sybil) cannot break the glass; a clinician's emergency read gets, on release, only the key
    epochs its read touched, to that reader alone, apart from its lasting grant; and the release
    ends like an expiry: data written after it is under a key the reader never held."""
    chain = genesis.chain_id

    async def go():
        async with NodeClient(node.url) as c:
            for k in range(3):  # fresh self-registered keys: none is a clinician
                sybil = Staff(Identity.from_seed(b"sybil %d" % k), c, chain)
                await sybil.register(f"Dr Sybil {k}", "physician", "Nowhere")
                with pytest.raises(AccessDenied, match="no valid clinician credential"):
                    await sybil.read(Identity.from_seed(b"scoped patient").address, "glucose", break_glass="ETREAT")
            me = Identity.from_seed(b"scoped patient")
            phone = Phone(me, c, chain, genesis.validator_keys)
            nurse = Staff(Identity.from_seed(b"scoped nurse"), c, chain)
            doc = Staff(Identity.from_seed(b"scoped doctor"), c, chain)
            await nurse.register("N", "nurse", "Ward")
            await doc.register("Dr S", "physician", "ER", clinician(node, genesis, doc.address))
            await phone.grant(doc.address, ["heart_rate"])  # a lasting grant of another type
            now = int(time.time() * 1000)
            w0 = await phone.write_window("glucose", _readings(now - 90_000, kind="glucose"))
            await phone.grant(nurse.address, ["glucose"])
            await phone.revoke(nurse.address)  # glucose moves to epoch 1
            w1 = await phone.write_window("glucose", _readings(now - 60_000, kind="glucose"))
            assert (w0.epoch, w1.epoch) == (0, 1)

            # an emergency read of one blob: the release holds that blob's epoch only
            [win] = await doc.read(me.address, "glucose", w0.cid, break_glass="ETREAT")
            assert win.sealed and not win.readings  # the ciphertext, but no key yet
            (plan,) = await phone.plan_release()
            assert (plan.staff, plan.dtype, plan.epochs) == (doc.address.hex(), DATA_TYPES["glucose"], [0])
            await phone.release([plan])
            assert await phone.plan_release() == []  # answered once
            g = next(x for x in (await c.grants(me.address))["grants"] if x["staff"] == doc.address.hex())
            assert g["types"] == ["heart_rate"] and g["expiry_ms"] == 0  # the lasting grant is untouched
            assert [(r["type"], r["epochs"]) for r in g["released"]] == [("glucose", [0])]
            wins = {w.cid: w for w in await doc.read(me.address, "glucose", break_glass="ETREAT")}
            assert not wins[w0.cid].sealed and wins[w0.cid].readings  # decrypted with the released key
            assert wins[w1.cid].sealed and not wins[w1.cid].readings  # epoch 1 was not released

            # the range read touched epoch 1 too: a release of the current epoch, held briefly
            (plan,) = await phone.plan_release(hold_ms=2500)
            assert plan.epochs == [0, 1]
            await phone.release([plan])
            wins = {w.cid: w for w in await doc.read(me.address, "glucose", break_glass="ETREAT")}
            assert not wins[w1.cid].sealed and wins[w1.cid].readings

            # it ends like an expiry: the next write rotates, and the reader never gets the new key
            await _wait_until(plan.expiry_ms)
            w2 = await phone.write_window("glucose", _readings(int(time.time() * 1000) - 30_000, kind="glucose"))
            assert w2.epoch == 2  # the phone ended the expired release, and the chain rotated
            g = next(x for x in (await c.grants(me.address))["grants"] if x["staff"] == doc.address.hex())
            assert g["released"] == [] and g["types"] == ["heart_rate"]
            held = {(k["type"], k["epoch"]) for k in (await c.get_json(
                f"/v1/patients/{me.address.hex()}/keys/{doc.address.hex()}"))["keys"]}
            assert ("glucose", 2) not in held and {("glucose", 0), ("glucose", 1)} <= held
            with pytest.raises(AccessDenied, match="limit"):  # and its emergency budget is spent
                await doc.read(me.address, "glucose", w2.cid, break_glass="ETREAT")
            assert (await c.account(doc.address))["profile"]["credential"]["issuer"] == \
                dev_issuer(node.home).public_key.hex()
    run(go())
