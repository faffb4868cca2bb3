"""The paper's flow end to end over the real HTTP API of a real validator process."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest

from devices.patient import envelope
from devices.patient.client import ApiError, NodeClient
from devices.patient.phone import Phone
from devices.patient.staff import AccessDenied, Staff
from devices.wearable.wearables import make_wearable
from node.crypto import aead, seal
from node.crypto.keys import Identity
from node.ipfs.cid import Cid
from node.tx import DATA_TYPES, Profile, Tx
from tests.conftest import run, running_network

KINDS = ["heart_rate", "blood_pressure", "body_temperature", "glucose", "spo2"]


def test_paper_flow(node, genesis):
    async def go():
        async with NodeClient(node.url) as c:
            pat, doc = Identity.from_seed(b"patient"), Identity.from_seed(b"doctor")
            phone = Phone(pat, c, genesis.chain_id, genesis.validator_keys)
            staff = Staff(doc, c, genesis.chain_id)
            await staff.register("Dr. Grace Hopper", "physician", "General Hospital")
            await phone.grant(doc.address, ["heart_rate", "blood_pressure"])

            now = int(time.time() * 1000)
            written = {}
            for i, k in enumerate(KINDS):
                frames = list(make_wearable(k, k, seed=i).frames_between(now - 600_000, now))
                assert frames, k
                res = await phone.write_window(k, frames)
                written[k] = (res, frames)

            # staff reads and decrypts heart rate: exactly the frames the wearable emitted
            hr = await staff.read(pat.address, "heart_rate")
            assert [w.readings for w in hr] == [written["heart_rate"][1]]
            bp = await staff.read(pat.address, "blood_pressure", cid=written["blood_pressure"][0].cid)
            assert bp[0].readings == written["blood_pressure"][1]

            with pytest.raises(AccessDenied, match="denied"):
                await staff.read(pat.address, "glucose")

            # change: {heart_rate, spo2}; blood pressure is gone, spo2 is readable
            await phone.grant(doc.address, ["heart_rate", "spo2"])
            with pytest.raises(AccessDenied):
                await staff.read(pat.address, "blood_pressure")
            assert (await staff.read(pat.address, "spo2"))[0].readings == written["spo2"][1]
            acct = await c.account(pat.address)
            assert acct["epochs"]["blood_pressure"] == 1 and acct["epochs"]["heart_rate"] == 0

            # revoke: empty set
            await phone.revoke(doc.address)
            with pytest.raises(AccessDenied):
                await staff.read(pat.address, "heart_rate")
            grants = (await c.grants(pat.address))["grants"]
            assert grants[0]["types"] == []

            # data written after the revoke is under a new epoch the revoked staff has no key for
            later = list(make_wearable("heart_rate", "hr", seed=9).frames_between(now, now + 60_000))
            res = await phone.write_window("heart_rate", later)
            assert res.epoch == 1
            blob = await c.download(pat, genesis.chain_id, res.cid, Cid.parse(res.cid).to_bytes())
            keys = {(k["type"], k["epoch"]): k["sealed"] for k in (await c.sealed_keys(pat.address, doc.address))["keys"]}
            assert ("heart_rate", 1) not in keys
            old_key = seal.unseal(doc.box_secret, bytes.fromhex(keys[("heart_rate", 0)]))
            ad = envelope.aad(genesis.chain_id, pat.address, DATA_TYPES["heart_rate"], 1,
                              later[0][0], later[-1][0])
            with pytest.raises(aead.AeadError):
                envelope.open_window(old_key, ad, blob)
            # ...while the patient's own key for epoch 1 opens it (so the failure above is the key's)
            assert envelope.open_window(phone.data_key(DATA_TYPES["heart_rate"], 1), ad, blob) == later

            # downloading the ciphertext directly without a committed read is refused
            with pytest.raises(ApiError) as ei:
                await c.download(doc, genesis.chain_id, res.cid, Cid.parse(res.cid).to_bytes())
            assert ei.value.status == 403

            reads = (await phone.audit())[::-1]  # the log comes newest first: in order here
            assert [r["seq"] for r in reads] == [0, 1, 2]
            assert [(r["reader"], r["type"], r["allowed"]) for r in reads] == [
                (doc.address.hex(), "heart_rate", True),
                (doc.address.hex(), "blood_pressure", True),
                (doc.address.hex(), "spo2", True),
            ]
            assert all(r["time_ms"] > 0 and r["height"] > 0 for r in reads)
            assert reads[1]["cid"] == written["blood_pressure"][0].cid
    run(go())


def test_rekey_reaches_other_grantees(node, genesis):
    """Revoking one staff member rotates the key; another grantee still reads new data."""
    async def go():
        async with NodeClient(node.url) as c:
            pat = Identity.from_seed(b"p2")
            a, b = Identity.from_seed(b"a"), Identity.from_seed(b"b")
            phone = Phone(pat, c, genesis.chain_id, genesis.validator_keys)
            sa, sb = Staff(a, c, genesis.chain_id), Staff(b, c, genesis.chain_id)
            await sa.register("A", "nurse", "X")
            await sb.register("B", "nurse", "X")
            await phone.grant(a.address, ["glucose"])
            await phone.grant(b.address, ["glucose"])
            now = int(time.time() * 1000)
            first = list(make_wearable("glucose", "g", seed=1).frames_between(now - 3_600_000, now))
            await phone.write_window("glucose", first)
            await phone.revoke(a.address)
            second = list(make_wearable("glucose", "g", seed=2).frames_between(now, now + 3_600_000))
            await phone.write_window("glucose", second)
            wins = await sb.read(pat.address, "glucose")
            assert [w.readings for w in wins] == [first, second]
            assert [w.epoch for w in wins] == [0, 1]
    run(go())


async def _with_two_grantees(c: NodeClient, genesis, record, seed: bytes) -> tuple[Phone, Staff, Staff]:
    """A patient (identity from `seed`) whose phone keeps `record`, and staff A and B (seeds + " a",
    " b"), both granted heart rate."""
    phone = Phone(Identity.from_seed(seed), c, genesis.chain_id, genesis.validator_keys, record=record)
    sa, sb = (Staff(Identity.from_seed(seed + x), c, genesis.chain_id) for x in (b" a", b" b"))
    await sa.register("A", "nurse", "X")
    await sb.register("B", "nurse", "X")
    for st in (sa, sb):
        await phone.grant(st.address, ["heart_rate"])
    return phone, sa, sb


def _losing_the_first_revoke(chain_id: str, held: list[bytes]) -> type[NodeClient]:
    """A client whose first submission of a grant that revokes (empty types) is lost in transit
    (kept in `held`, answered by a dropped connection)."""
    from node.tx import Grant

    class Losing(NodeClient):
        async def submit_and_wait(self, raw, sidecar, wait, patience=60.0):
            tx = Tx.decode(raw, chain_id)
            if not held and isinstance(tx.body, Grant) and not tx.body.types:
                held.append(raw)
                raise ApiError(503, "connection lost")
            return await super().submit_and_wait(raw, sidecar, wait, patience)
    return Losing


async def _revoke_lost_and_restarted(c: NodeClient, genesis, tmp_path, seed: bytes) -> tuple[Phone, int, Staff]:
    """Two grantees of heart rate, the revoke of the first lost (`c`: _losing_the_first_revoke), and
    the phone restarted from its record: (the phone, the revoke's nonce it owes, the other grantee)."""
    record = tmp_path / "pat.record.json"
    phone, sa, sb = await _with_two_grantees(c, genesis, record, seed)
    with pytest.raises(ApiError):
        await phone.revoke(sa.address)
    owed = phone.rekey_pending
    assert owed is not None
    return Phone(phone.identity, c, genesis.chain_id, genesis.validator_keys, record=record), owed, sb


def test_a_rekey_that_failed_after_a_revoke_is_sent_at_the_next_sync_even_after_a_restart(node, genesis, tmp_path):
    """The revoke commits and rotates the type; the new key's grant to the other grantee is then lost
    (a dropped connection, or the phone dies between the two). The phone records, before the revoke
    is sent, that a re-key is owed, and its next sync (here a restarted phone's next write) re-seals
    the current key to every grantee lacking it: the other grantee reads the new data. (Found by a
    review: it stayed without the key for good, and the CLI said "revoked".)"""
    from node.tx import Grant

    class Dropping(NodeClient):
        """Loses the first grant that carries keys to `victim` after the revoke."""
        drop = True

        async def submit_and_wait(self, raw, sidecar, wait, patience=60.0):
            tx = Tx.decode(raw, genesis.chain_id)
            if self.drop and isinstance(tx.body, Grant) and tx.body.staff == b.address and revoked:
                self.drop = False
                raise ApiError(503, "connection lost")
            return await super().submit_and_wait(raw, sidecar, wait, patience)

    pat = Identity.from_seed(b"rekey owed")
    b = Identity.from_seed(b"rekey owed b")
    record = tmp_path / "pat.record.json"
    revoked: list[bool] = []

    async def go():
        async with Dropping(node.url) as c:
            phone, sa, sb = await _with_two_grantees(c, genesis, record, b"rekey owed")
            a = sa.identity
            revoked.append(True)
            await phone.revoke(a.address)
            assert list(phone.rekey_failures) == [b.address.hex()] and phone.rekey_pending is not None
            assert json.loads(record.read_text())["rekey_pending"] == phone.rekey_pending  # the revoke's nonce
            # the phone restarts: its record alone says a re-key is owed
            phone = Phone(pat, c, genesis.chain_id, genesis.validator_keys, record=record)
            now = int(time.time() * 1000)
            frames = list(make_wearable("heart_rate", "hr", seed=4).frames_between(now - 60_000, now - 50_000))
            res = await phone.write_window("heart_rate", frames)
            assert res.epoch == 1 and phone.rekey_pending is None and not phone.rekey_failures
            assert json.loads(record.read_text())["rekey_pending"] is None
            assert [w.readings for w in await sb.read(pat.address, "heart_rate")] == [frames]
            with pytest.raises(AccessDenied):
                await sa.read(pat.address, "heart_rate")
    run(go())


def test_a_rekey_owed_waits_for_its_rotation_to_commit(node, genesis, tmp_path):
    """The revoke is admitted late (its submission lost for now, delivered later): a restarted
    phone's sync must not clear the re-key it owes while the chain has not taken the revoke's nonce
    (nothing is rotated yet, so nothing lacks a key); once the revoke commits, its next sync re-seals
    the new key to the other grantee. (Found by the review of the first version, which cleared it.)"""
    held: list[bytes] = []
    pat = Identity.from_seed(b"rekey late")

    async def go():
        async with _losing_the_first_revoke(genesis.chain_id, held)(node.url) as c:
            phone, owed, sb = await _revoke_lost_and_restarted(c, genesis, tmp_path, b"rekey late")
            await phone.sync()
            assert phone.rekey_pending == owed  # the revoke has not committed: still owed
            await c.submit_and_wait(held[0], None, 10)  # the revoke arrives after all
            await phone.sync()  # its nonce is taken: the new key goes to B
            assert phone.rekey_pending is None and phone.epochs[DATA_TYPES["heart_rate"]] == 1
            now = int(time.time() * 1000)
            frames = list(make_wearable("heart_rate", "hr", seed=5).frames_between(now - 60_000, now - 50_000))
            await phone.write_window("heart_rate", frames)
            assert [w.readings for w in await sb.read(pat.address, "heart_rate")] == [frames]
    run(go())


def test_no_window_is_sealed_before_a_revoke_signed_earlier_has_committed(node, genesis, tmp_path):
    """The revoke's submission is lost (a dropped connection; a byzantine validator answering 503
    with an hour's Retry-After; the phone killed right after signing it). The phone's next window
    would have been sealed under the epoch the revoked grantee holds, and its sidecar gone to a
    validator that may collude with them: the restarted phone sends the revoke it recorded first,
    and seals the window under the new epoch. (Found by a review: it sealed it under the old one.)"""
    held: list[bytes] = []
    pat = Identity.from_seed(b"revoke first")

    async def go():
        async with _losing_the_first_revoke(genesis.chain_id, held)(node.url) as c:
            phone, _, sb = await _revoke_lost_and_restarted(c, genesis, tmp_path, b"revoke first")
            assert phone.rotation == held[0]  # the record kept the signed revoke
            sa = Staff(Identity.from_seed(b"revoke first a"), c, genesis.chain_id)
            now = int(time.time() * 1000)
            frames = list(make_wearable("heart_rate", "hr", seed=6).frames_between(now - 60_000, now - 50_000))
            res = await phone.write_window("heart_rate", frames)
            assert res.epoch == 1 and phone.rotation is None and phone.rekey_pending is None
            assert (await c.tx(Tx.decode(held[0], genesis.chain_id).id.hex()))["status"] == "committed"
            with pytest.raises(AccessDenied):
                await sa.read(pat.address, "heart_rate")
            assert [w.readings for w in await sb.read(pat.address, "heart_rate")] == [frames]  # re-sealed to B
    run(go())


def test_a_revoke_signed_earlier_goes_before_any_other_transaction(node, genesis, tmp_path):
    """The lost revoke's nonce must not be taken by the phone's next transaction of another kind
    (a policy change): the revoke would be forgotten without a word. It is sent first."""
    held: list[bytes] = []

    async def go():
        async with _losing_the_first_revoke(genesis.chain_id, held)(node.url) as c:
            phone, _, _ = await _revoke_lost_and_restarted(c, genesis, tmp_path, b"revoke before policy")
            await phone.set_break_glass(False)
            assert (await c.tx(Tx.decode(held[0], genesis.chain_id).id.hex()))["status"] == "committed"
            assert phone.rotation is None and phone.epochs[DATA_TYPES["heart_rate"]] == 1
            assert (await c.account(phone.address))["break_glass"] is False
    run(go())


def test_a_revoke_whose_nonce_another_device_took_is_said_not_to_have_happened(node, genesis, tmp_path):
    """The revoke is lost; before the restarted phone sends it again, another device with the
    patient's key takes its nonce (a policy change). The phone took the chain passing that nonce
    for the revoke done, and sealed its next window under the epoch the grantee it meant to revoke
    holds, without a word. The revoke's own commit is asked for now: the next write hears that it
    did not happen (RotationPending), and the one after is sealed as before (said once)."""
    from devices.patient.phone import RotationPending

    held: list[bytes] = []

    async def go():
        async with _losing_the_first_revoke(genesis.chain_id, held)(node.url) as c:
            phone, owed, _ = await _revoke_lost_and_restarted(c, genesis, tmp_path, b"revoke superseded")
            other = Phone(phone.identity, c, genesis.chain_id, genesis.validator_keys)  # knows of no revoke
            await other.set_break_glass(False)
            assert (await c.account(phone.address))["next_nonce"] == owed + 1
            now = int(time.time() * 1000)
            frames = list(make_wearable("heart_rate", "hr", seed=13).frames_between(now - 60_000, now - 50_000))
            with pytest.raises(RotationPending, match="did not happen"):
                await phone.write_window("heart_rate", frames)
            assert phone.rotation is None and (await c.data(phone.address))["data"] == []
            assert (await phone.write_window("heart_rate", frames)).epoch == 0
            await phone.sync()  # the re-seal owed with it finds every grantee holding the keys
            assert phone.rekey_pending is None and phone.rotation is None
    run(go())


def test_a_revoke_signed_earlier_commits_before_a_new_grant_seals_its_keys(node, genesis, tmp_path):
    """A restarted phone owes revoke(A); the patient grants C. The revoke commits first (else C's
    grant took its nonce and A was never revoked), and C's keys are sealed after it: under the new
    epoch, so C reads what is written next (sealed before, they stopped at the old one)."""
    held: list[bytes] = []

    async def go():
        async with _losing_the_first_revoke(genesis.chain_id, held)(node.url) as c:
            phone, _, _ = await _revoke_lost_and_restarted(c, genesis, tmp_path, b"revoke before grant")
            sa = Staff(Identity.from_seed(b"revoke before grant a"), c, genesis.chain_id)
            sc = Staff(Identity.from_seed(b"revoke before grant c"), c, genesis.chain_id)
            await sc.register("C", "nurse", "X")
            await phone.grant(sc.address, ["heart_rate"])
            assert (await c.tx(Tx.decode(held[0], genesis.chain_id).id.hex()))["status"] == "committed"
            now = int(time.time() * 1000)
            frames = list(make_wearable("heart_rate", "hr", seed=10).frames_between(now - 60_000, now - 50_000))
            assert (await phone.write_window("heart_rate", frames)).epoch == 1
            assert [w.readings for w in await sc.read(phone.address, "heart_rate")] == [frames]
            with pytest.raises(AccessDenied):
                await sa.read(phone.address, "heart_rate")
    run(go())


def test_a_revoke_sent_again_that_stays_pending_seals_nothing(node, genesis, tmp_path, monkeypatch):
    """The recorded revoke, sent again, does not commit in time (its validator holds it): the write
    says so (RotationPending) and seals nothing; it was taken as settled, and the window sealed
    under the epoch the revoked grantee holds (from a review)."""
    from devices.patient import phone as phone_mod
    from devices.patient.phone import RotationPending

    held: list[bytes] = []
    monkeypatch.setattr(phone_mod, "ROTATION_WAIT_S", 2.0)

    class Holding(_losing_the_first_revoke(genesis.chain_id, held)):  # type: ignore[misc]
        """Also answers every later submission of that revoke as pending, and sends it nowhere."""

        async def submit_and_wait(self, raw, sidecar, wait, patience=60.0):
            if held and raw == held[0]:
                return {"status": "pending"}
            return await super().submit_and_wait(raw, sidecar, wait, patience)

        async def submit(self, raw, sidecar=None):
            if held and raw == held[0]:
                return Tx.decode(raw, genesis.chain_id).id.hex()
            return await super().submit(raw, sidecar)

    async def go():
        async with Holding(node.url) as c:
            phone, _, _ = await _revoke_lost_and_restarted(c, genesis, tmp_path, b"revoke pending")
            now = int(time.time() * 1000)
            frames = list(make_wearable("heart_rate", "hr", seed=11).frames_between(now - 60_000, now - 50_000))
            with pytest.raises(RotationPending, match="has not committed yet"):
                await phone.write_window("heart_rate", frames)
            assert phone.rotation == held[0] and (await c.data(phone.address))["data"] == []
    run(go())


def test_a_revoke_replaces_a_recorded_one_that_a_lost_nonce_holds_up(node, genesis, tmp_path):
    """A rotation recorded at a nonce the chain cannot reach (the transaction before it was lost):
    every write says so, and a revoke signed now replaces it instead of being held up behind it
    too (from a review: nothing could fill the gap, and the phone was stuck for good)."""
    from devices.patient.phone import RotationPending
    from node.tx import Grant

    async def go():
        async with NodeClient(node.url) as c:
            record = tmp_path / "pat.record.json"
            phone, sa, sb = await _with_two_grantees(c, genesis, record, b"rotation held up")
            await phone.sync()
            phone._rotating(Tx.build(phone.identity, genesis.chain_id, phone.next_nonce + 1,
                                     Grant(sa.address, (), 0, ())))  # signed after one that was lost
            phone = Phone(phone.identity, c, genesis.chain_id, genesis.validator_keys, record=record)
            now = int(time.time() * 1000)
            frames = list(make_wearable("heart_rate", "hr", seed=12).frames_between(now - 60_000, now - 50_000))
            with pytest.raises(RotationPending, match="waits for this patient's nonce"):
                await phone.write_window("heart_rate", frames)
            await phone.revoke(sa.address)
            assert phone.rotation is None and phone.epochs[DATA_TYPES["heart_rate"]] == 1
            assert (await phone.write_window("heart_rate", frames)).epoch == 1
            assert [w.readings for w in await sb.read(phone.address, "heart_rate")] == [frames]
    run(go())


def test_a_rotation_refused_for_good_blocks_no_window(node, genesis, tmp_path):
    """A release's end (a rotation, recorded before it is sent) that the chain refuses for good
    (there is no such release): the record is put back as it was, and windows are sealed as before.
    And one recorded by a phone that died before hearing the refusal: its next write hears it
    (RotationPending, the revoke did not happen) and the one after is sealed. (Found by a review:
    every write re-sent it and raised the refusal, for good, across restarts.)"""
    from devices.patient.phone import RotationPending
    from node.tx import Release

    async def go():
        async with NodeClient(node.url) as c:
            record = tmp_path / "pat.record.json"
            phone, sa, _ = await _with_two_grantees(c, genesis, record, b"rotation refused")
            with pytest.raises(ApiError):
                await phone.end_release(sa.address, DATA_TYPES["heart_rate"])
            assert phone.rotation is None and phone.rekey_pending is None
            now = int(time.time() * 1000)
            frames = list(make_wearable("heart_rate", "hr", seed=9).frames_between(now - 60_000, now - 50_000))
            await phone.write_window("heart_rate", frames)
            await phone.sync()
            phone._rotating(Tx.build(phone.identity, genesis.chain_id, phone.next_nonce,
                                     Release(sa.address, DATA_TYPES["heart_rate"], 0, ())))  # signed, then killed
            phone = Phone(phone.identity, c, genesis.chain_id, genesis.validator_keys, record=record)
            with pytest.raises(RotationPending, match="refused for good, so it did not happen"):
                await phone.write_window("heart_rate", frames)
            assert phone.rotation is None
            await phone.write_window("heart_rate", frames)
    run(go())


def test_a_phone_over_its_senders_rate_waits_the_retry_after_and_loses_nothing(tmp_path):
    """One transaction a second per sender: a phone's second and third grants in a row are refused
    with 429 and a Retry-After. The client sends the same signed bytes again after it (a refusal
    for now admitted nothing), so every grant commits, in order, none of them twice."""
    from node.genesis import Genesis

    docs = [Identity.from_seed(f"doctor-429-{i}".encode()) for i in range(3)]
    with running_network(tmp_path, 1, sender_rate=1, sender_burst=1) as (n,):
        gen = Genesis.load(n.home / "genesis.json")

        async def go():
            async with NodeClient(n.url) as c:
                phone = Phone(Identity.from_seed(b"patient-429"), c, gen.chain_id, gen.validator_keys)
                for i, d in enumerate(docs):  # each its own sender: its one transaction is within its rate
                    await Staff(d, c, gen.chain_id).register(f"Dr. {i}", "physician", "General Hospital")
                t0 = time.monotonic()
                for d in docs:
                    await phone.grant(d.address, ["heart_rate"])
                grants = (await c.get_json(f"/v1/patients/{phone.address.hex()}/grants"))["grants"]
                acct = await c.account(phone.address)
                return time.monotonic() - t0, grants, acct

        took, grants, acct = run(go())
        metrics = urllib.request.urlopen(n.url + "/metrics", timeout=5).read().decode()
    line = 'medchain_tx_rejected_total{reason="rate limited"}'
    assert line in metrics and float(metrics.split(line)[1].split()[0]) >= 2, metrics[-2000:]  # the 429s came
    assert sorted(g["staff"] for g in grants) == sorted(d.address.hex() for d in docs)
    assert acct["nonce"] == 3  # three transactions, each committed once
    assert took >= 1.5  # the second and third waited for the sender's bucket (the 429's Retry-After)


def test_a_transaction_superseded_by_another_with_its_nonce_gets_a_status_not_a_404(tmp_path):
    """Two transactions of one sender with the same nonce, accepted (202) by two validators at once
    (a client that signs a retry anew): one commits; the other's status at the validator that
    accepted it says it was rejected (superseded), instead of 404 "unknown" for ever."""
    with running_network(tmp_path) as nodes:
        async def go():
            async with NodeClient(nodes[2].url) as c2, NodeClient(nodes[3].url) as c3:
                chain = (await c2.status())["chain_id"]
                for k in range(3):  # a few senders: the race goes either way, each must end with a status
                    who = Identity.from_seed(b"superseded %d" % k)
                    a = Tx.build(who, chain, 1, Profile("first", "patient", "", who.box_public))
                    b = Tx.build(who, chain, 1, Profile("second", "patient", "", who.box_public))
                    await asyncio.gather(c2.submit(a.raw), c3.submit(b.raw))
                    statuses = {}
                    for c, t in ((c2, a), (c3, b)):
                        for _ in range(200):
                            try:
                                st = await c.tx(t.id.hex())
                            except ApiError as exc:
                                assert exc.status == 404
                                st = {"status": "unknown"}
                            if st["status"] in ("committed", "rejected"):
                                break
                            await asyncio.sleep(0.05)
                        statuses[t.id] = st
                    assert sorted(s["status"] for s in statuses.values()) == ["committed", "rejected"], statuses
                    lost = next(s for s in statuses.values() if s["status"] == "rejected")
                    assert "nonce" in lost["reason"], lost
        run(go())


def test_a_transaction_the_validator_lost_is_sent_again_while_its_commit_is_awaited(node, genesis):
    """A validator keeps an admitted transaction in memory until it commits: one that crashed after
    answering 202 (before forwarding it) answers 404 once restarted. A client waiting for the commit
    sends the same signed bytes again instead of failing; without a way to resend, the 404 is raised.
    (The validator here never saw the transaction: the state such a crash leaves.)"""
    async def go():
        async with NodeClient(node.url) as c:
            ident = Identity.from_seed(b"lost in a restart")
            tx = Tx.build(ident, genesis.chain_id, 1, Profile("p", "r", "o", bytes(32)))
            with pytest.raises(ApiError) as ei:
                await c.wait_committed(tx.id.hex(), 3)
            assert ei.value.status == 404
            sent = []

            async def resubmit():
                sent.append(await c.submit(tx.raw))
            st = await c.wait_committed(tx.id.hex(), 30, resubmit)
            assert st["status"] == "committed" and sent == [tx.id.hex()]
            # committed: sending it again is refused (never applied twice) and the wait ends
            st = await c.wait_committed(tx.id.hex(), 30, resubmit)
            assert st["status"] == "committed" and len(sent) == 1
            with pytest.raises(ApiError):
                await resubmit()
            assert (await c.account(ident.address))["next_nonce"] == 2
    run(go())


def test_a_window_whose_cid_another_account_recorded_first_is_sealed_again(node, genesis):
    """A CID is public once its write is sent: a front-runner (a byzantine validator holding the
    sidecar) records it first in a write of its own, and the patient's write is refused "cid already
    recorded". The phone seals the window again under a fresh nonce (another blob, another CID) and
    records that; the staff member reads the readings. (Found by a review: the window was lost.)"""
    from typing import ClassVar

    from node.tx import Write

    class FrontRunning(NodeClient):
        """The validator the phone talks to copies the first write it is sent, sidecar and all."""
        stolen: ClassVar[list[str]] = []

        async def submit_and_wait(self, raw, sidecar, wait, patience=60.0):
            tx = Tx.decode(raw, genesis.chain_id)
            if isinstance(tx.body, Write) and not self.stolen:
                b = tx.body
                copy = Tx.build(eve, genesis.chain_id, 1, Write(b.dtype, b.cid, b.size, 0, b.t_start_ms, b.t_end_ms))
                st = await super().submit_and_wait(copy.raw, sidecar, 10)
                assert st["status"] == "committed" and st["code"] == 0, st
                self.stolen.append(str(Cid.from_bytes(b.cid)))
            return await super().submit_and_wait(raw, sidecar, wait, patience)

    eve = Identity.from_seed(b"front-runner")
    async def go():
        async with FrontRunning(node.url) as c:
            pat, doc = Identity.from_seed(b"front-run patient"), Identity.from_seed(b"front-run doctor")
            phone = Phone(pat, c, genesis.chain_id, genesis.validator_keys)
            staff = Staff(doc, c, genesis.chain_id, validators=genesis.validator_keys)
            await staff.register("Dr F", "physician", "ER")
            await phone.grant(doc.address, ["heart_rate"])
            now = int(time.time() * 1000)
            frames = list(make_wearable("heart_rate", "hr", seed=3).frames_between(now - 60_000, now - 50_000))
            res = await phone.write_window("heart_rate", frames)
            assert c.stolen and res.cid != c.stolen[0]  # sealed again: another CID
            assert [w.readings for w in await staff.read(pat.address, "heart_rate")] == [frames]
    run(go())
