"""Blob replication among 4 real validator processes (bitswap over py-libp2p, LMDB block stores)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable

import lmdb
import pytest

from devices.patient.client import ApiError, NodeClient
from devices.patient.phone import Phone
from node.crypto.keys import Identity
from node.ipfs.blockstore import BlockStore
from node.ipfs.cid import Cid, cid_v1_raw
from node.p2p import P2PError
from node.replication import ASK_EVERY_S, HELD_PREFIX, MAX_ASK, MAX_MSG_HEIGHTS, T_HELD, Replicator
from node.state import keys
from node.state.records import BlobRec
from node.tx import DATA_TYPES
from node.tx.model import Write
from node.wire import decode, encode
from tests.conftest import run, running_network


@pytest.fixture
def net4(tmp_path):
    with running_network(tmp_path) as nodes:
        yield nodes


async def _until(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while True:
        res = await pred()
        if res:
            return res
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def _holds(node, cid: Cid) -> bool:
    store = BlockStore(node.home / "blobs")  # LMDB: a second process may read (and write) it
    try:
        return store.has_blob(cid) and store.pin_count(cid) >= 1
    finally:
        store.close()


def test_committed_blob_replicates_becomes_available_and_is_read_anywhere(net4):
    async def go():
        entry = net4[1]  # not the primary
        async with NodeClient(entry.url) as c:
            g = await c.genesis()
            keys = [bytes.fromhex(v["public_key"]) for v in g["validators"]]
            pat = Identity.from_seed(b"replication patient")
            phone = Phone(pat, c, g["chain_id"], keys)
            big = os.urandom(2 * 1024 * 1024)  # the API's limit: two 1 MiB chunks and a root
            small = os.urandom(12)
            now = int(time.time() * 1000)
            ids = {}
            for name, blob in (("small", small), ("big", big)):
                # a small blob rides as its write's sidecar; a big one (after the patient's first
                # commit) is a signed standalone upload, fetched by the others over bitswap
                cid = cid_v1_raw(blob) if name == "small" else Cid.parse(await c.upload(blob, pat, g["chain_id"]))
                assert (cid.codec == 0x70) == (name == "big")  # multi-block DAG vs one raw block
                ids[name] = (cid, await phone.send(Write(DATA_TYPES["heart_rate"], cid.to_bytes(), len(blob), 0,
                                                         now - 1000, now), sidecar=small if name == "small" else None))
            # every validator fetches what it lacks; 2f+1 = 3 holders make it available
            for name, (cid, txid) in ids.items():
                for n in net4:
                    async with NodeClient(n.url) as cn:
                        async def avail(cn=cn, txid=txid):
                            st = await cn.tx(txid)
                            return st if st.get("available") else None
                        st = await _until(avail, 30, f"{name} available at {n.url}")
                        assert st["blob"]["cid"] == str(cid) and st["blob"]["quorum"] == 3
                await _until(lambda cid=cid: _all_hold(net4, cid), 30, f"{name} on every validator")
            cid, _ = ids["big"]
            # a validator whose copy was deleted refetches it to serve a read
            store = BlockStore(net4[3].home / "blobs")
            assert store.delete_blob(cid) == 3
            store.close()
            async with NodeClient(net4[3].url) as c3:
                assert await c3.download(pat, g["chain_id"], str(cid), cid.to_bytes()) == big
            assert _holds(net4[3], cid)
            # a corrupted block is refused, counted, and replaced from a peer
            env = lmdb.open(str(net4[2].home / "blobs"), max_dbs=4, map_size=1 << 38)
            db = env.open_db(b"blocks")
            with env.begin(write=True, db=db) as txn:
                leaf = next(k for k, v in txn.cursor() if len(v) == 1024 * 1024)
                data = bytearray(txn.get(leaf))
                data[7] ^= 1
                txn.put(leaf, bytes(data))
            env.close()
            async with NodeClient(net4[2].url) as c2:
                assert await c2.download(pat, g["chain_id"], str(cid), cid.to_bytes()) == big
                metrics = await (await c2.session.get(net4[2].url + "/metrics")).text()
                assert "medchain_blob_integrity_failures_total 1.0" in metrics
                # availability came from blobs-held messages on the direct streams, both ways
                for direction in ("in", "out"):
                    line = f'medchain_p2p_messages_by_type_total{{direction="{direction}",type="blobs_held"}} '
                    assert float(metrics.split(line)[1].split()[0]) > 0, metrics[-3000:]
                status = await c2.status()
                assert status["replication"]["read_fetches"] >= 1
            # a blob nobody holds any more (all copies deleted): a clear refusal, not a hang
            ghost = os.urandom(100)
            async with NodeClient(net4[0].url) as c0:
                gcid = Cid.parse(await c0.upload(ghost, pat, g["chain_id"]))
                await Phone(pat, c0, g["chain_id"], keys).send(
                    Write(DATA_TYPES["heart_rate"], gcid.to_bytes(), len(ghost), 0, now, now + 1))
            await _until(lambda: _all_hold(net4, gcid), 30, "ghost on every validator")
            for n in net4:
                store = BlockStore(n.home / "blobs")
                store.delete_blob(gcid)
                store.close()
            async with NodeClient(net4[3].url) as c3:
                with pytest.raises(ApiError) as ei:
                    await c3.download(pat, g["chain_id"], str(gcid), gcid.to_bytes())
                assert ei.value.status == 404 and "not held" in ei.value.reason

    run(go())


async def _all_hold(nodes, cid: Cid) -> bool:
    return all(_holds(n, cid) for n in nodes)


class _Peers:
    """The three other validators as the replicator's `net` sees them (P2PNode's `peers`,
    `streaming_peers` and `send`): each records the blobs-held messages it is sent."""

    def __init__(self) -> None:
        self.peers = ["v1", "v2", "v3"]
        self.up = set(self.peers)  # whose direct stream is open
        self.asked: list[tuple[str, list[int]]] = []
        self.told: dict[str, list[int]] = {}
        self.sent: list[tuple[str, bytes]] = []

    def streaming_peers(self) -> list[str]:
        return sorted(self.up)

    def send(self, peer: str, data: bytes) -> None:
        if peer not in self.peers:
            raise P2PError(f"unknown peer {peer}")
        self.sent.append((peer, data))
        tag, held, ask = decode(data)
        assert tag == T_HELD and data[:2] == HELD_PREFIX
        if ask:
            self.asked.append((peer, ask))
        self.told.setdefault(peer, []).extend(held)


def test_a_fresh_commit_is_not_asked_about_an_old_or_unseen_height_is(tmp_path) -> None:
    """A status poll right after a commit reports availability without asking the peers (they
    announce it unasked within ANNOUNCE_EVERY_S); a height committed ASK_EVERY_S ago whose holders
    never announced, or one this validator did not see commit (before its restart), is asked about."""
    store = BlockStore(tmp_path / "blobs")
    r = Replicator(store, 4)
    net = r.net = _Peers()
    cid = cid_v1_raw(b"a window")

    async def go() -> None:
        r.on_commit(7, [cid], [])  # its blob rode in as a sidecar: nothing wanted
        assert r.availability(cid, 7)["available"] is False  # only announcements raise the count
        await asyncio.sleep(0.01)
        assert net.asked == [] and r.stats["asked"] == 0
        r._asked[7] -= ASK_EVERY_S + 1  # no peer announced within ASK_EVERY_S
        r.availability(cid, 7)
        await asyncio.sleep(0.01)
        assert sorted(net.asked) == [("v1", [7]), ("v2", [7]), ("v3", [7])]
        net.asked.clear()
        r.availability(cid, 3)  # not committed since this validator started
        await asyncio.sleep(0.01)
        assert sorted(net.asked) == [("v1", [3]), ("v2", [3]), ("v3", [3])] and r.stats["asked"] == 2
    try:
        asyncio.run(go())
    finally:
        store.close()


def test_a_blob_found_bad_at_a_read_stays_wanted_until_repaired(tmp_path) -> None:
    """A read that finds a committed blob missing or corrupt unlists it to fetch it again. It was
    unlisted alone: a fetch that failed (or a crash) left it neither held nor wanted, and repair
    never came back to it (a crash-consistency review). Now unlisted and wanted in one transaction,
    and queued for the replicator, which survives a restart."""
    store = BlockStore(tmp_path / "blobs")
    r = Replicator(store, 4)
    root, _ = store.put_blob(os.urandom(100))

    async def go() -> None:
        r.refetch(root, 7)
        assert r._queue.get_nowait() == [root] and root.multihash in r._pending[7]

    try:
        asyncio.run(go())
        assert not store.has_blob(root) and store.wanted_blobs() == [(root, 7)]
    finally:
        store.close()
    again = BlockStore(tmp_path / "blobs")  # a restart: repair reloads what is wanted
    try:
        assert again.wanted_blobs() == [(root, 7)]
    finally:
        again.close()


def test_blobs_committed_below_a_checkpoint_are_pinned_once_and_wanted(tmp_path) -> None:
    """A ledger started from a checkpoint (a state transfer, a restore) held none of the blobs
    committed below it, and nothing pinned or fetched them (a crash-consistency review). Adoption pins
    each recorded blob once (those recorded above the checkpoint a commit here pinned), wants those
    not held, and resumes after a crash without pinning twice."""
    held = cid_v1_raw(b"held here")
    records = {keys.blob(c.to_bytes()): encode(list(BlobRec(b"p" * 32, 1, 0, 9, 0, 1, h, b"t" * 32)))
               for c, h in [(cid_v1_raw(b"w%d" % k), 10 + k) for k in range(5)] + [(held, 3), (cid_v1_raw(b"new"), 99)]}
    batches: list[int] = []

    def scan(after: bytes, limit: int = 2) -> list[tuple[bytes, bytes]]:
        batches.append(len(batches))
        if len(batches) == 3 and crash:
            raise OSError("killed")
        return [(k, v) for k, v in sorted(records.items()) if k > after][:limit]

    store = BlockStore(tmp_path / "blobs")
    store.put_blob(b"held here")
    crash = True
    try:
        with pytest.raises(OSError):
            asyncio.run(Replicator(store, 4).adopt(50, scan))
        assert store.adoption()[:2] == (50, False)
        crash = False
        r = Replicator(store, 4)
        taken = sum(1 for k in sorted(records)[:4] if k != keys.blob(cid_v1_raw(b"new").to_bytes()))
        assert asyncio.run(r.adopt(50, scan)) == 6 - taken  # the rest, after the two batches taken
        below = [cid_v1_raw(b"w%d" % k) for k in range(5)]
        assert [store.pin_count(c) for c in [*below, held]] == [1] * 6 and store.pin_count(cid_v1_raw(b"new")) == 0
        assert sorted((str(c), h) for c, h in store.wanted_blobs()) == sorted((str(c), 10 + k) for k, c in enumerate(below))
        assert store.adoption() == (50, True, max(records))
        assert asyncio.run(r.adopt(50, scan)) == 0  # done: nothing pinned again
        assert store.pin_count(held) == 1
    finally:
        store.close()


@contextlib.asynccontextmanager
async def _announcing(r: Replicator) -> AsyncIterator[None]:
    """The replicator's announcer running, with a round due."""
    task = asyncio.create_task(r._announcer())
    r._announce_evt.set()
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _until_true(cond: Callable[[], bool], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        await asyncio.sleep(0.05)


def test_announcements_beyond_one_message_go_in_the_next_round(tmp_path) -> None:
    """After an outage more heights may wait than one blobs-held message holds (MAX_MSG_HEIGHTS):
    the rest go in the next round instead of being dropped (a peer would then have to ask)."""
    store = BlockStore(tmp_path / "blobs")
    r = Replicator(store, 4)
    net = r.net = _Peers()
    waiting = set(range(1, MAX_MSG_HEIGHTS + 101))

    async def go() -> None:
        r._announce = {"v1": set(waiting)}
        async with _announcing(r):
            await _until_true(lambda: len(net.told.get("v1", [])) == len(waiting), 10)
    try:
        asyncio.run(go())
    finally:
        store.close()
    assert sorted(net.told["v1"]) == sorted(waiting) and not r._announce


def test_a_peer_s_blobs_held_message_is_recorded_and_its_question_answered(tmp_path) -> None:
    """[T_HELD, held, ask] from a peer: what it holds counts towards availability, what it asks is
    answered with what this validator holds of it, in one message on the direct stream."""
    store = BlockStore(tmp_path / "blobs")
    looked: list[int] = []  # heights not in memory, looked up in the ledger

    def roots_of(h: int) -> list[Cid]:
        looked.append(h)
        return []
    r = Replicator(store, 4, roots_of=roots_of, head_of=lambda: 50)
    net = r.net = _Peers()

    async def go() -> None:
        r._complete.update({5: None, 6: None})  # this validator holds every blob of blocks 5 and 6
        r._pending[7] = {b"x"}  # and not yet block 7's
        r.on_held("v2", encode([T_HELD, [3, 4], [5, 7, 6]]))
        assert r.peer_held == {3: {"v2"}, 4: {"v2"}}
        await _until_true(lambda: net.sent, 5)
        assert net.sent == [("v2", encode([T_HELD, [5, 6], []]))]  # one answer, to the asker only
        r.on_held("v3", encode([T_HELD, [4], []]))  # nothing asked: nothing answered
        await asyncio.sleep(0.05)
        assert r.peer_held == {3: {"v2"}, 4: {"v2", "v3"}} and len(net.sent) == 1
        r.on_held("v1", encode([T_HELD, [], [8]]))  # asked about what it does not hold: an empty answer
        await _until_true(lambda: len(net.sent) == 2, 5)
        assert net.sent[-1] == ("v1", encode([T_HELD, [], []]))
        # heights from 1 to 4,096 above our head (50) are believed, at most MAX_MSG_HEIGHTS of a
        # message, and only ints; 0, negative and farther heights are not (made-up future heights
        # would push real ones out of what is remembered)
        r.on_held("v1", encode([T_HELD, [*range(1, 30), *range(40 + MAX_MSG_HEIGHTS, 60 + MAX_MSG_HEIGHTS), 0, -1,
                                         -(2 ** 63), 2 ** 64 - 1, "9", True], []]))
        assert {h for h, ps in r.peer_held.items() if "v1" in ps} == {*range(1, 30),
                                                                      *range(40 + MAX_MSG_HEIGHTS, 51 + MAX_MSG_HEIGHTS)}
        r.on_held("v2", encode([T_HELD, list(range(1, MAX_MSG_HEIGHTS + 6)), []]))
        assert {h for h, ps in r.peer_held.items() if "v2" in ps} == {3, 4, *range(1, MAX_MSG_HEIGHTS + 1)}
        # only heights at or below our head are answered, and never 0 or a negative one
        looked.clear()
        r.on_held("v3", encode([T_HELD, [], [0, -1, 51, 2 ** 63, 5, 1, 50, "2", True]]))
        await _until_true(lambda: len(net.sent) == 3, 5)
        assert net.sent[-1] == ("v3", encode([T_HELD, [5], []])) and looked == [1, 50]
    try:
        asyncio.run(go())
    finally:
        store.close()


def test_a_peer_may_have_only_so_many_heights_answered_a_second(tmp_path, monkeypatch) -> None:
    """An asked height this validator does not hold in memory costs a block's decode: a peer's
    questions are answered for at most MAX_ASK heights per ASK_BUDGET_S, off the event loop, so a
    byzantine validator cannot hold up the PBFT messages queued behind its message."""
    import node.replication as rep
    store = BlockStore(tmp_path / "blobs")
    looked: list[tuple[int, bool]] = []
    loop_thread = threading.get_ident()

    def roots_of(h: int) -> list[Cid]:
        looked.append((h, threading.get_ident() == loop_thread))
        return []
    r = Replicator(store, 4, roots_of=roots_of, head_of=lambda: 10_000)
    net = r.net = _Peers()
    monkeypatch.setattr(rep, "ASK_BUDGET_S", 0.5)

    async def go() -> None:
        r.on_held("v1", encode([T_HELD, [], list(range(1, 41))]))
        await _until_true(lambda: net.sent, 5)
        assert sorted(h for h, _ in looked) == list(range(1, MAX_ASK + 1))
        assert not any(on_loop for _, on_loop in looked)  # worked out off the event loop
        r.on_held("v1", encode([T_HELD, [], [100]]))  # within the same window: nothing more
        r.on_held("v2", encode([T_HELD, [], [200]]))  # another peer has its own budget
        await _until_true(lambda: len(net.sent) == 2, 5)
        await asyncio.sleep(0.05)
        assert [p for p, _ in net.sent] == ["v1", "v2"] and 100 not in {h for h, _ in looked}
        await asyncio.sleep(0.5)  # a new window
        r.on_held("v1", encode([T_HELD, [], [100]]))
        await _until_true(lambda: len(net.sent) == 3, 5)
        assert (100, False) in looked
    try:
        asyncio.run(go())
    finally:
        store.close()


def test_without_a_head_any_height_a_message_can_hold_is_taken(tmp_path) -> None:
    """A replicator told no head (a test's, or a tool's) bounds heights by what a height can be."""
    store = BlockStore(tmp_path / "blobs")
    r = Replicator(store, 4)
    net = r.net = _Peers()
    top = 2 ** 63 - 1

    async def go() -> None:
        r.on_held("v1", encode([T_HELD, [top, top + 1, 2 ** 64 - 1], []]))
        assert list(r.peer_held) == [top]
        r._complete.update({top - 4096: None, top - 4095: None})
        r.on_held("v1", encode([T_HELD, [], [top - 4096, top - 4095]]))  # asked: up to 4,096 below the top
        await _until_true(lambda: net.sent, 5)
        assert net.sent == [("v1", encode([T_HELD, [top - 4096], []]))]
    try:
        asyncio.run(go())
    finally:
        store.close()


def test_a_valid_message_up_to_64_kib_is_read_and_a_bad_one_is_logged(tmp_path, caplog) -> None:
    store = BlockStore(tmp_path / "blobs")
    r = Replicator(store, 4)
    r.net = _Peers()
    try:
        big = encode([T_HELD, list(range(2 ** 32, 2 ** 32 + 4096)), []])  # 9 bytes a height: ~36 KiB
        assert 32 * 1024 < len(big) < 64 * 1024
        r.on_held("v1", big)
        assert len(r.peer_held) == 4096
        with caplog.at_level(logging.DEBUG, logger="medchain.replication"):
            r.on_held("v2", encode([T_HELD, 1, []]))
        assert caplog.messages == ["dropped a bad blobs-held message from v2: not [T_HELD, [height, ...], [height, ...]]"]
    finally:
        store.close()


def test_what_waits_for_a_peer_that_stays_down_is_bounded(tmp_path, monkeypatch) -> None:
    """Heights to announce pile up for a peer whose stream stays down; the newest MAX_HEIGHTS are
    kept (the peer asks about the rest when a client asks it)."""
    import node.replication as rep
    monkeypatch.setattr(rep, "MAX_HEIGHTS", 10)
    monkeypatch.setattr(rep, "RETRY_MIN", 0.01)
    monkeypatch.setattr(rep, "ANNOUNCE_EVERY_S", 0.01)
    store = BlockStore(tmp_path / "blobs")
    r = Replicator(store, 4)
    net = r.net = _Peers()
    net.up = {"v1", "v3"}

    async def go() -> None:
        r._announce = {"v2": set(range(1, 31))}
        async with _announcing(r):
            await _until_true(lambda: "v1" in net.told, 0.3)  # a few rounds
            await asyncio.sleep(0.1)
        assert r._announce["v2"] == set(range(21, 31))
    try:
        asyncio.run(go())
    finally:
        store.close()


@pytest.mark.parametrize("bad", [
    b"", b"\x93\x11", encode([T_HELD, [1]]), encode([T_HELD, 1, []]), encode([T_HELD, [], 2]),
    encode([T_HELD + 1, [1], []]), encode({"held": [1]}), encode([T_HELD, [1], [], 4]),
    encode([T_HELD, [0] * 70_000, []]),  # over the 64 KiB a message may be
    bytes([0x93, T_HELD, 0x91]) + b"\xcb" + bytes(8) + b"\x90",  # a float: not on the wire
])
def test_a_malformed_blobs_held_message_is_dropped(tmp_path, bad: bytes) -> None:
    store = BlockStore(tmp_path / "blobs")
    r = Replicator(store, 4)
    net = r.net = _Peers()
    try:
        r.on_held("v1", bad)  # no exception reaches the network's delivery loop
        assert r.peer_held == {} and net.sent == []
    finally:
        store.close()


def test_a_peer_whose_stream_is_down_is_told_in_a_later_round(tmp_path) -> None:
    """A message queued for a peer whose stream is down would be lost (its frames expire): the
    announcer keeps those heights for the next round, as for a failed send."""
    store = BlockStore(tmp_path / "blobs")
    r = Replicator(store, 4)
    net = r.net = _Peers()
    net.up = {"v1", "v3"}

    async def go() -> None:
        r._announce = {p: {1, 2} for p in net.peers}
        async with _announcing(r):
            await _until_true(lambda: "v1" in net.told and "v3" in net.told, 3)
            assert "v2" not in net.told and r._announce == {"v2": {1, 2}}
            net.up.add("v2")
            await _until_true(lambda: "v2" in net.told, 5)
    try:
        asyncio.run(go())
    finally:
        store.close()
    assert {p: sorted(hs) for p, hs in net.told.items()} == {"v1": [1, 2], "v2": [1, 2], "v3": [1, 2]}
    assert not r._announce and r.stats["announced"] == 6
