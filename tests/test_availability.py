"""Data availability before a vote (node/availability.py): a backup prepares a block only once it
holds the blob of every write the block records.

The gate's logic is driven directly (asyncio, no network); the attack runs on real processes: a
byzantine primary that keeps no ciphertext (MEDCHAIN_BYZANTINE=withhold) proposes writes whose
blobs nobody holds, and no honest validator commits them, while the network moves on to a new
primary and keeps committing.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from devices.net import faultharness
from devices.patient.client import ApiError, NodeClient
from node.availability import MAX_PARKED, AvailabilityGate, SizeMismatch
from node.crypto.keys import Identity
from node.execution import Executed
from node.ipfs.cid import Cid, cid_v1_raw
from node.state import OK
from node.tx import DATA_TYPES, Profile, Tx, Write
from tests.conftest import run
from tests.test_faults import _network
from tests.test_sidecars import _held

HR = DATA_TYPES["heart_rate"]
PAT = Identity.from_seed(b"availability patient")


_LEN: dict[bytes, int] = {}  # a test blob's true length, by digest


def _writes(n: int, chain: str = "c", t0: int = 1_700_000_000_000) -> tuple[list[Tx], list[bytes]]:
    blobs = [os.urandom(64 + k) for k in range(n)]
    _LEN.update((cid_v1_raw(b).digest, len(b)) for b in blobs)
    txs = [Tx.build(PAT, chain, k + 1, Write(HR, cid_v1_raw(b).to_bytes(), len(b), 0, t0 + 1000 * k,
                                             t0 + 1000 * k + 999)) for k, b in enumerate(blobs)]
    return txs, blobs


def _executed(txs: list[Tx], codes: list[int] | None = None) -> Executed:
    ex = Executed.__new__(Executed)  # only txs and codes matter to the gate
    ex.txs, ex.codes = txs, codes or [OK] * len(txs)
    return ex


class _World:
    """What the gate sees of a validator: which blobs are here, and what peers can serve."""

    def __init__(self, peers_hold: set[bytes] = frozenset()) -> None:
        self.here: set[bytes] = set()
        self.peers_hold = set(peers_hold)
        self.off_by: dict[bytes, int] = {}  # a blob held (or served) with another size than its write's
        self.fetches: list[Cid] = []
        self.released: list[bytes] = []

    def held(self, txid: bytes, cid: Cid) -> int | None:
        return _LEN[cid.digest] + self.off_by.get(cid.digest, 0) if cid.digest in self.here else None

    async def fetch(self, cid: Cid, timeout: float) -> bool:
        self.fetches.append(cid)
        await asyncio.sleep(0.01)
        if cid.digest in self.peers_hold:
            self.here.add(cid.digest)
            return True
        return False

    def gate(self, grace: float = 0.05) -> AvailabilityGate:
        return AvailabilityGate(self.held, self.fetch, self.released.append, grace_s=grace, fetch_timeout_s=1)


def test_held_blobs_pass_and_failed_writes_are_not_asked_for():
    w = _World()
    txs, blobs = _writes(3)
    w.here = {cid_v1_raw(blobs[0]).digest, cid_v1_raw(blobs[1]).digest}
    g = w.gate()
    assert g.missing(_executed(txs)) == [(txs[2].id, cid_v1_raw(blobs[2]), len(blobs[2]))]
    # a write that failed in execution records no blob: nothing to hold
    assert g.missing(_executed(txs, [OK, OK, 5])) == []


def test_sidecars_arriving_release_the_vote_without_a_fetch():
    async def go():
        w = _World()
        g = w.gate(grace=0.3)
        txs, blobs = _writes(2)
        g.park(b"B" * 32, b"pp-bytes", g.missing(_executed(txs)))
        g.park(b"B" * 32, b"pp-bytes", g.missing(_executed(txs)))  # a retransmission: one entry
        assert g.parked() == 1
        w.here.add(cid_v1_raw(blobs[0]).digest)
        g.recheck()
        assert w.released == [] and g.parked() == 1  # one blob still missing: no vote yet
        w.here.add(cid_v1_raw(blobs[1]).digest)
        g.recheck()
        assert w.released == [b"pp-bytes"] and g.parked() == 0
        await asyncio.sleep(0.4)
        assert w.fetches == [] and g.stats["released_by_sidecar"] == 1
    run(go())


def test_after_the_grace_missing_blobs_are_fetched_then_the_vote_goes():
    async def go():
        txs, blobs = _writes(3)
        w = _World(peers_hold={cid_v1_raw(b).digest for b in blobs})
        w.here.add(cid_v1_raw(blobs[0]).digest)
        g = w.gate()
        g.park(b"B" * 32, b"pp", g.missing(_executed(txs)))
        await asyncio.sleep(0.2)
        assert sorted(c.digest for c in w.fetches) == sorted(cid_v1_raw(b).digest for b in blobs[1:])
        assert w.released == [b"pp"] and g.stats["released_by_fetch"] == 1
    run(go())


def test_a_blob_nobody_holds_means_no_vote():
    async def go():
        txs, blobs = _writes(2)
        w = _World(peers_hold={cid_v1_raw(blobs[0]).digest})  # the second is held by no peer
        g = w.gate()
        g.park(b"B" * 32, b"pp", g.missing(_executed(txs)))
        await asyncio.sleep(0.2)
        assert w.released == [] and g.parked() == 0 and g.stats["unavailable"] == 1
    run(go())


def test_a_blob_held_with_another_size_than_its_write_states_means_no_vote():
    """The write's size is signed; a blob here of another length (a standalone upload the write
    names with a false size) must not get the block a vote, however the blob came: stored before,
    arriving as a sidecar while parked, or fetched after the grace."""
    txs, blobs = _writes(2)
    w = _World()
    w.here = {cid_v1_raw(b).digest for b in blobs}
    w.off_by[cid_v1_raw(blobs[1]).digest] = 1
    g = w.gate()
    with pytest.raises(SizeMismatch, match=f"is {len(blobs[1]) + 1} bytes, its write .* says {len(blobs[1])}"):
        g.missing(_executed(txs))
    assert g.stats["size_mismatch"] == 1
    assert g.missing(_executed(txs[:1])) == []  # the other write is fine alone

    async def arriving():
        w = _World()
        g = w.gate(grace=0.3)
        g.park(b"B" * 32, b"pp", g.missing(_executed(txs)))
        w.here.add(cid_v1_raw(blobs[0]).digest)
        w.here.add(cid_v1_raw(blobs[1]).digest)
        w.off_by[cid_v1_raw(blobs[1]).digest] = -1
        g.recheck()
        assert g.parked() == 0 and w.released == [] and g.stats["size_mismatch"] == 1
        await asyncio.sleep(0.4)
        assert w.fetches == [] and w.released == []  # dropped, not fetched and released later

    async def fetched():
        w = _World(peers_hold={cid_v1_raw(b).digest for b in blobs})
        w.off_by[cid_v1_raw(blobs[0]).digest] = 7  # a peer served a blob that hashes right but the write lies
        g = w.gate()
        g.park(b"B" * 32, b"pp", g.missing(_executed(txs)))
        await asyncio.sleep(0.2)
        assert len(w.fetches) == 2 and w.released == [] and g.parked() == 0
        assert g.stats["size_mismatch"] == 1 and g.stats["released_by_fetch"] == 0
    run(arriving())
    run(fetched())


def test_a_block_decided_meanwhile_is_forgotten_and_parking_is_bounded():
    async def go():
        txs, blobs = _writes(1)
        w = _World(peers_hold={cid_v1_raw(blobs[0]).digest})
        g = w.gate(grace=0.1)
        g.park(b"A" * 32, b"pp-a", g.missing(_executed(txs)))
        g.forget(b"A" * 32)  # its certificate came: the block is committed without our vote
        await asyncio.sleep(0.2)
        assert w.fetches == [] and w.released == []
        for k in range(MAX_PARKED + 5):  # a primary flooding proposals cannot grow the gate
            g.park(k.to_bytes(32, "big"), b"pp", g.missing(_executed(txs)))
        assert g.parked() == MAX_PARKED and g.stats["dropped"] == 5
        g.close()
        assert g.parked() == 0
    run(go())


async def _honest_traffic(nodes: list, tag: bytes) -> list[str]:
    """Steady acknowledged traffic through the honest validators until 21 commits (or 40 s)."""
    committed: list[str] = []
    stop = asyncio.Event()
    load = asyncio.create_task(faultharness.acknowledged_load(nodes, stop, committed, tag))
    for _ in range(400):
        if len(committed) > 20:
            break
        await asyncio.sleep(0.1)
    stop.set()
    await load
    return committed


def test_a_primary_withholding_ciphertexts_certifies_none_of_them(tmp_path):
    """Validator 0, the first primary, keeps no ciphertext: it admits writes with their sidecars,
    forwards them bare and stores nothing at commit. Honest backups refuse the bare forwards, park
    its proposals, find the blobs nowhere, and do not vote; honest traffic leaves the stalled view
    and commits under the next primary. None of the withheld writes is committed by an honest
    validator, and every write they commit has its blob held by each of them."""
    nodes = _network(tmp_path, env={0: {"MEDCHAIN_BYZANTINE": "withhold"}})
    honest = nodes[1:]
    try:
        async def go():
            async with NodeClient(nodes[0].url) as c0, NodeClient(nodes[1].url) as c1:
                chain = (await c0.status())["chain_id"]
                txs, blobs = _writes(5, chain, int(time.time() * 1000))
                res = await c0.submit_many(list(zip([t.raw for t in txs], blobs, strict=True)))
                assert all(r["status"] == 202 for r in res), res  # the byzantine entry admits them
                # an honest write through an honest validator, and steady honest traffic
                good = Identity.from_seed(b"honest writer")
                gt, gb = _writes(1, chain, int(time.time() * 1000))
                gtx = Tx.build(good, chain, 1, gt[0].body)
                await c1.submit(gtx.raw, gb[0])
                assert len(await _honest_traffic(nodes, b"da-")) > 20, "honest traffic stalled behind the withholding primary"
                st = await c1.wait_committed(gtx.id.hex(), 30)
                assert st["status"] == "committed" and st["code"] == 0, st
                for n in honest:
                    async with NodeClient(n.url) as c:
                        for t in txs:
                            try:
                                st = await c.tx(t.id.hex())
                            except ApiError as exc:
                                assert exc.status == 404
                                continue
                            assert st["status"] != "committed", (n.url, st)
                        status = await c.status()
                        assert status["consensus"]["view"] >= 1
                        # it looked for the blobs (after the grace, over bitswap) and found them nowhere
                        deadline = time.monotonic() + 15
                        while status["availability"]["unavailable"] < 1 and time.monotonic() < deadline:
                            await asyncio.sleep(0.2)
                            status = await c.status()
                        assert status["availability"]["unavailable"] >= 1, status["availability"]
                        assert status["availability"]["released_by_fetch"] == 0
                return gb[0]
        good_blob = run(go())
    finally:
        for n in nodes:
            n.stop()
    for n in honest:
        assert _held(n.home, cid_v1_raw(good_blob))


def _with_a_missizer(tmp_path, seed: bytes, body) -> None:
    """Run `body(clients, chain, liar)` on 4 real validators, validator 0 in MEDCHAIN_BYZANTINE=missize
    and `liar` a patient with one committed transaction (uploads need one)."""
    nodes = _network(tmp_path, env={0: {"MEDCHAIN_BYZANTINE": "missize"}})
    liar = Identity.from_seed(seed)
    try:
        async def go():
            clients = [NodeClient(n.url) for n in nodes]
            for c in clients:
                await c.__aenter__()
            try:
                chain = (await clients[1].status())["chain_id"]
                first = Tx.build(liar, chain, 1, Profile("p", "r", "o", bytes(32)))
                await clients[1].submit(first.raw)
                for c in clients:  # each, before anything is uploaded to it
                    assert (await c.wait_committed(first.id.hex(), 30))["code"] == 0
                await body(nodes, clients, chain, liar)
            finally:
                for c in clients:
                    await c.close()
        run(go())
    finally:
        for n in nodes:
            n.stop()


def test_a_primary_recording_a_false_blob_size_gets_no_vote(tmp_path):
    """A Sybil patient and validator 0, the first primary, collude: the patient uploads a blob to every
    validator and signs a write naming it with a size one byte more; validator 0 admits it
    (MEDCHAIN_BYZANTINE=missize) and proposes it. Every honest validator holds the blob with its true
    size, so none votes for the block: the write is never committed, the network moves to the next
    primary and goes on committing."""
    async def body(nodes, clients, chain, liar):
        blob = os.urandom(300)
        for c in clients:
            assert await c.upload(blob, liar, chain) == str(cid_v1_raw(blob))
        now = int(time.time() * 1000)
        bad = Tx.build(liar, chain, 2, Write(HR, cid_v1_raw(blob).to_bytes(), len(blob) + 1, 0, now, now + 999))
        with pytest.raises(ApiError) as refused:  # an honest validator refuses it itself
            await clients[1].submit(bad.raw)
        assert refused.value.status == 422 and "size mismatch" in str(refused.value)
        await clients[0].submit(bad.raw)  # the byzantine primary admits it
        assert len(await _honest_traffic(nodes, b"ms-")) > 20, "honest traffic stalled behind the lying primary"
        for c in clients[1:]:
            try:
                st = await c.tx(bad.id.hex())
                assert st["status"] != "committed", st
            except ApiError as exc:
                assert exc.status == 404
            status = await c.status()
            assert status["consensus"]["view"] >= 1
            assert status["availability"]["size_mismatch"] >= 1, status["availability"]
    _with_a_missizer(tmp_path, b"availability missizer", body)


def test_honest_primaries_never_propose_a_write_whose_blob_is_not_its_size(tmp_path):
    """A byzantine validator (with a colluding patient) holds the only copy of a dag-pb upload and
    forwards a write naming it with a size one byte more: the honest validators admit the bare forward
    (they hold nothing to compare with). Before, every honest primary proposed it in turn and no
    honest backup voted for it: the chain stood still (0 commits in 44 s in a review's run). A primary
    now proposes a write only once it holds its blob with the stated size (fetching it first), and
    refuses the write otherwise, so honest traffic goes on and the write's status says why."""
    async def body(nodes, clients, chain, liar):
        blob = os.urandom((1 << 20) + 5000)
        cid = Cid.parse(await clients[0].upload(blob, liar, chain))  # to the byzantine validator only
        now = int(time.time() * 1000)
        bad = Tx.build(liar, chain, 2, Write(HR, cid.to_bytes(), len(blob) + 1, 0, now, now + 999))
        await clients[0].submit(bad.raw)
        assert len(await _honest_traffic(nodes, b"dp-")) > 20, "honest traffic stalled behind the write"
        for c in clients[1:]:
            for _ in range(100):
                st = await c.tx(bad.id.hex())
                if st["status"] == "rejected":
                    break
                await asyncio.sleep(0.1)
            assert st["status"] == "rejected" and "size mismatch" in st["reason"], (c.base, st)
            # every honest validator checked the bare forward's blob on arrival and refused it: no
            # backup held it pending behind an honest primary (each such primary was suspected, in turn)
            assert (await c.status())["consensus"]["view"] <= 2
    _with_a_missizer(tmp_path, b"availability dag-pb missizer", body)
