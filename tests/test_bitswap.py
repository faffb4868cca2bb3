"""Bitswap 1.2.0 sans-IO: the protobuf codec, the engine's ledger, the DAG fetch schedule, and the
block store's blobs, pins and garbage collection. Each defect DESIGN.md section 3 lists for
py-libp2p 0.8.1's ``libp2p.bitswap`` (which we do not use) has a test named after it here or in
tests/test_bitswap_hosts.py."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from node.ipfs import blockstore
from node.ipfs.bitswap import MAX_BLOCK, SEND_BUDGET, Engine, merge, pack
from node.ipfs.bitswap_pb import (
    DONT_HAVE,
    HAVE,
    MAX_ENTRIES,
    MAX_MESSAGE,
    WANT_BLOCK,
    WANT_HAVE,
    Entry,
    Message,
    MessageError,
    cid_from_prefix,
    cid_prefix,
    decode_message,
    encode_message,
)
from node.ipfs.blockstore import BlockStore, IntegrityError, MissingBlock
from node.ipfs.cid import CODEC_DAG_PB, Cid, cid_v1_raw, multihash_sha256
from node.ipfs.fetch import DagFetch, FetchError
from node.ipfs.unixfs import (
    TYPE_FILE,
    PBLink,
    PBNode,
    UnixfsData,
    UnixfsError,
    encode_pbnode,
    encode_unixfs_data,
    export_bytes,
    import_bytes,
)

HELLO = b"hello world\n"
HELLO_V0 = Cid.parse("QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o")


def store_of(blocks: dict[Cid, bytes]):
    return lambda cid: next((d for c, d in blocks.items() if c.multihash == cid.multihash), None)


# ---- codec --------------------------------------------------------------------------------------
def test_message_round_trip_and_known_bytes() -> None:
    v1 = cid_v1_raw(HELLO)
    msg = Message(entries=[Entry(v1, 5, False, WANT_HAVE, True), Entry(HELLO_V0, 1, True)], full=True,
                  blocks=[(v1, HELLO)], presences=[(v1, HAVE), (HELLO_V0, DONT_HAVE)], pending_bytes=7)
    back = decode_message(encode_message(msg))
    assert back == msg
    # an entry is exactly the proto3 encoding go-bitswap/Helia produce: field 1 CID, 2 priority, 4 type, 5 sdh
    raw = encode_message(Message(entries=[Entry(v1, 1, False, WANT_HAVE, True)]))
    entry = b"\x0a" + bytes([len(v1.to_bytes())]) + v1.to_bytes() + b"\x10\x01\x20\x01\x28\x01"
    assert raw == b"\x0a" + bytes([len(entry) + 2]) + b"\x0a" + bytes([len(entry)]) + entry
    # negative int32 priority (10-byte varint) survives
    assert decode_message(encode_message(Message(entries=[Entry(v1, -3)]))).entries[0].priority == -3


def test_cid_prefixes_v0_and_v1() -> None:
    """py-libp2p defect: the CIDv0 prefix was empty. Ours is 00 70 12 20 (go-cid Prefix.Bytes)."""
    assert cid_prefix(HELLO_V0) == bytes.fromhex("00701220")
    assert cid_prefix(cid_v1_raw(HELLO)) == bytes.fromhex("01551220")
    block = bytes.fromhex("0a1208021204") + b"x" * 4 + bytes.fromhex("1804")  # any bytes: the hash decides
    assert cid_from_prefix(bytes.fromhex("00701220"), block) == Cid(0, CODEC_DAG_PB, multihash_sha256(block))
    assert cid_from_prefix(bytes.fromhex("01551220"), HELLO) == cid_v1_raw(HELLO)
    # a v0 block in a message comes back with the v0 CID (what kubo wanted)
    v0_node_blocks = import_bytes(HELLO, "kubo-default")[1]
    ((c0, d0),) = v0_node_blocks.items()
    assert decode_message(encode_message(Message(blocks=[(c0, d0)]))).blocks == [(c0, d0)]
    for bad in ("", "01", "01551320", "0155122000", "02551220", "00551220", "01991220"):
        with pytest.raises(MessageError):
            cid_from_prefix(bytes.fromhex(bad), HELLO)


def test_bad_messages_are_refused_clearly() -> None:
    with pytest.raises(MessageError, match="over"):
        decode_message(b"\x00" * (MAX_MESSAGE + 1))
    with pytest.raises(MessageError, match="truncated"):
        decode_message(b"\x0a\x05\x0a")
    with pytest.raises(MessageError, match="without a CID"):
        decode_message(b"\x0a\x04\x0a\x02\x10\x01")
    with pytest.raises(MessageError, match="wantlist entry"):
        decode_message(b"\x0a\x06\x0a\x04\x0a\x02\x01\x02")  # entry CID is junk
    with pytest.raises(MessageError, match="wire type"):
        decode_message(b"\x0b")
    assert decode_message(b"\x30\x01") == Message()  # unknown field 6: skipped (proto3)


# ---- engine ---------------------------------------------------------------------------------------
def test_want_block_have_and_dont_have() -> None:
    big = os.urandom(MAX_BLOCK)  # blocks up to 2 MiB (py-libp2p refused over 512 KiB)
    held = {cid_v1_raw(HELLO): HELLO, cid_v1_raw(big): big}
    eng = Engine(store_of(held))
    missing = cid_v1_raw(b"nope")
    r = eng.receive("p", Message(entries=[
        Entry(cid_v1_raw(HELLO), want_type=WANT_BLOCK), Entry(cid_v1_raw(big), want_type=WANT_BLOCK),
        Entry(cid_v1_raw(HELLO), want_type=WANT_HAVE),  # same CID: presence too
        Entry(missing, want_type=WANT_HAVE, send_dont_have=True), Entry(cid_v1_raw(b"x"), send_dont_have=False),
    ]))
    assert {p for p, _ in r.replies} == {"p"}  # replies addressed to the asker, sent on our own stream
    blocks = [b for _, m in r.replies for b in m.blocks]
    presences = [x for _, m in r.replies for x in m.presences]
    assert sorted(len(d) for _, d in blocks) == [12, MAX_BLOCK]
    assert (missing, DONT_HAVE) in presences and (cid_v1_raw(HELLO), HAVE) in presences
    assert len(presences) == 2  # no DONT_HAVE for b"x": not asked for
    assert all(len(encode_message(m)) <= MAX_MESSAGE for _, m in r.replies)
    assert sorted(c.multihash for c in eng.wanted_by("p")) == sorted([missing.multihash, cid_v1_raw(b"x").multihash])


def test_a_want_list_reads_each_block_once_and_within_the_budget() -> None:
    """One message repeating a held 1 MiB CID 99,800 times (within the 4 MiB message cap) had the
    block read and buffered as often: 100 GiB, the trio thread blocked (a review). Each entry counts
    once, and blocks are read for the answer only within the budget; past it the peer hears HAVE
    and asks again once it has read what came."""
    blobs = [os.urandom(1 << 20) for _ in range(5)]
    eng = Engine(store_of({cid_v1_raw(b): b for b in blobs}))
    r = eng.receive("p", Message(entries=[Entry(cid_v1_raw(blobs[0]), want_type=WANT_BLOCK)] * 10_000))
    assert [len(d) for _, m in r.replies for _, d in m.blocks] == [1 << 20]
    r = eng.receive("p", Message(entries=[Entry(cid_v1_raw(b), want_type=WANT_BLOCK) for b in blobs]),
                    send_budget=(2 << 20) + 1)
    assert len([d for _, m in r.replies for _, d in m.blocks]) == 3  # read until the budget is spent
    assert sorted(c.multihash for c, p in (x for _, m in r.replies for x in m.presences) if p == HAVE) == sorted(
        cid_v1_raw(b).multihash for b in blobs[3:])


def test_late_want_is_answered_when_the_block_arrives() -> None:
    """py-libp2p defect: blocks added after a want were lost. Here the ledger keeps the want."""
    held: dict[Cid, bytes] = {}
    eng = Engine(store_of(held))
    late, have_only = cid_v1_raw(b"late"), cid_v1_raw(b"have")
    r = eng.receive("p", Message(entries=[Entry(late, send_dont_have=True), Entry(have_only, want_type=WANT_HAVE)]))
    assert [x for _, m in r.replies for x in m.presences] == [(late, DONT_HAVE)]
    eng.receive("q", Message(entries=[Entry(late)]))
    eng.receive("q", Message(entries=[Entry(late, cancel=True)]))  # q withdrew its want
    held[late], held[have_only] = b"late", b"have"
    out = eng.blocks_added([late, have_only])
    assert [(p, m.blocks, m.presences) for p, m in out] == [("p", [(late, b"late")], [(have_only, HAVE)])]
    assert eng.blocks_added([late]) == []  # answered once
    assert eng.wanted_by("p") == [] and eng.wanted_by("q") == []


def test_full_wantlist_replaces_and_peer_gone_clears() -> None:
    eng = Engine(store_of({}), max_wants_per_peer=3)
    cids = [cid_v1_raw(bytes([i])) for i in range(5)]
    eng.receive("p", Message(entries=[Entry(c) for c in cids]))
    assert eng.wanted_by("p") == cids[2:]  # bounded ledger: the oldest go first
    eng.receive("p", Message(entries=[Entry(cids[0])], full=True))
    assert eng.wanted_by("p") == [cids[0]]
    eng.peer_gone("p")
    assert eng.wanted_by("p") == [] and eng.blocks_added(cids) == []
    # our own wants asked only of a peer that went: forgotten (empty entries piled up on a flaky link)
    eng.want(cids[:2], ["p"])
    eng.want(cids[1:3], ["q"])
    eng.peer_gone("p")
    assert sorted(eng.wants) == sorted(c.multihash for c in cids[1:3]) and all(eng.wants.values())


def test_messages_are_bounded_in_entries_and_split_by_senders() -> None:
    """A 4 MiB message of ~95,000 wantlist entries cost ~0.6 s of the p2p thread (a review): at most
    MAX_ENTRIES entries, or presences, decode; this node's own wants and answers are split there."""
    cids = [cid_v1_raw(b"%d" % i) for i in range(MAX_ENTRIES + 5)]
    big = encode_message(Message(entries=[Entry(c) for c in cids]))
    assert len(big) < MAX_MESSAGE
    with pytest.raises(MessageError, match="wantlist entries"):
        decode_message(big)
    with pytest.raises(MessageError, match="block presences"):
        decode_message(encode_message(Message(presences=[(c, HAVE) for c in cids])))
    out = Engine(store_of({})).want(cids, ["p"])
    assert [len(m.entries) for _, m in out] == [MAX_ENTRIES, 5]
    assert [len(decode_message(encode_message(m)).entries) for _, m in out] == [MAX_ENTRIES, 5]
    assert sorted(len(m.presences) for m in pack([], [(c, HAVE) for c in cids])) == [5, MAX_ENTRIES]


def test_client_side_matching_unwanted_and_duplicates() -> None:
    eng = Engine(store_of({}))
    a, b = cid_v1_raw(b"a"), cid_v1_raw(b"b")
    out = eng.want([a, b], ["p", "q"], WANT_BLOCK)
    assert sorted(p for p, _ in out) == ["p", "q"] and all(len(m.entries) == 2 for _, m in out)
    assert eng.want(a, ["p"], WANT_HAVE) == []  # a want-block is pending there already
    r = eng.receive("p", Message(blocks=[(a, b"a"), (cid_v1_raw(b"a!"), b"a!")]))  # 2nd: a corrupt copy
    assert r.blocks == [(a, b"a")] and r.unwanted == 1
    cancels = eng.got([a])
    assert cancels == [("q", Message(entries=[Entry(a, 1, True)]))]
    assert eng.receive("q", Message(blocks=[(a, b"a")])).duplicates == 1  # late copy: not "bad"
    # a block already on its way when its want was withdrawn (a failed or finished fetch) is late
    # too: before, it counted as unwanted and got its peer marked bad in the next fetch
    c = cid_v1_raw(b"c")
    eng.want(c, ["p"], WANT_BLOCK)
    assert eng.cancel(c) == [("p", Message(entries=[Entry(c, 1, True)]))]
    r = eng.receive("p", Message(blocks=[(c, b"c")]))
    assert (r.duplicates, r.unwanted, r.blocks) == (1, 0, [])
    # presences only count for our wants, and a HAVE for a want-have completes it there
    eng.want(b, ["r"], WANT_HAVE, send_dont_have=False)
    r = eng.receive("r", Message(presences=[(b, HAVE), (cid_v1_raw(b"zz"), HAVE)]))
    assert r.presences == [(b, HAVE)] and "r" not in eng.wants[b.multihash]
    # once every peer asked has answered, the want goes: each fetched block left one behind for the
    # life of the node (a review), and with it its CID's codec, which a later fetch then used
    d, e = cid_v1_raw(b"d"), cid_v1_raw(b"e")
    eng.want([d, e], ["p"], WANT_BLOCK)
    assert eng.receive("p", Message(blocks=[(d, b"d")], presences=[(e, DONT_HAVE)])).blocks == [(d, b"d")]
    assert d.multihash not in eng.wants and e.multihash not in eng.wants and d.multihash not in eng._want_cid
    assert eng.receive("p", Message(blocks=[(d, b"d")])).duplicates == 1  # a late copy is still not "bad"


def test_pack_and_merge_respect_the_message_cap() -> None:
    blocks = [(cid_v1_raw(bytes([i]) * 10), os.urandom(MAX_BLOCK)) for i in range(3)]
    msgs = pack(blocks, [(cid_v1_raw(b"x"), DONT_HAVE)])
    assert [len(m.blocks) for m in msgs] == [1, 1, 1] and msgs[0].presences
    assert all(len(encode_message(m)) <= MAX_MESSAGE for m in msgs)
    small = [(cid_v1_raw(bytes([i])), b"x" * 1000) for i in range(100)]
    assert len(pack(small, [])) == 1 and SEND_BUDGET < MAX_MESSAGE
    e1, e2 = Entry(cid_v1_raw(b"1")), Entry(cid_v1_raw(b"2"))
    merged = merge([("p", Message(entries=[e1])), ("q", Message(entries=[e2])), ("p", Message(entries=[e2]))])
    assert merged == [("p", Message(entries=[e1, e2])), ("q", Message(entries=[e2]))]


# ---- DAG fetch schedule -----------------------------------------------------------------------------
def test_fetch_walks_the_dag_rotates_peers_and_drops_bad_ones() -> None:
    root, blocks = import_bytes(os.urandom(600 * 1024), "kubo-cid-version-1")  # 3 raw leaves + root
    f = DagFetch(root, ["a", "b", "c"], window=2, block_timeout=1.0, retry_after=0.5)
    (req,) = f.requests(0.0)
    assert req[1] == root
    f.on_dont_have(req[0], root)  # next peer at once
    (req2,) = f.requests(0.0)
    assert req2[1] == root and req2[0] != req[0]
    assert f.on_block(req2[0], root, blocks[root])
    assert not f.on_block(req2[0], root, blocks[root])  # a duplicate is not ours any more
    reqs = f.requests(0.0)
    assert len(reqs) == 2 and {c for _, c in reqs} < set(blocks) - {root}  # window of 2
    assert len({p for p, _ in reqs}) == 2  # spread over peers


def test_fetch_schedule_full_run() -> None:
    data = os.urandom(3 * 262144 + 10)
    root, blocks = import_bytes(data, "kubo-default")  # 4 leaves + root, CIDv0
    f = DagFetch(root, ["good", "liar", "slow"], window=8, block_timeout=1.0, retry_after=0.5)
    now = 0.0
    for _ in range(20):
        for peer, cid in f.requests(now):
            if peer == "good":
                f.on_block(peer, cid, blocks[cid])
            elif peer == "liar":
                f.on_bad_peer(peer)  # what the adapter reports for a block matching no want
        if f.done:
            break
        now += 1.0
        f.expire(now)  # "slow" never answers
    assert f.done and {c for c, _ in f.blocks.values()} == set(blocks)
    assert f.bad_peers == {"liar"} and f.stats["timeouts"] >= 1 and f.stats["bad_blocks"] >= 1
    # when every peer has failed, the fetch says so
    g = DagFetch(root, ["x"])
    g.requests(0.0)
    g.on_bad_peer("x")
    with pytest.raises(FetchError, match="no usable peer"):
        g.requests(0.0)
    with pytest.raises(FetchError, match="no peers"):
        DagFetch(root, [])


def test_fetch_refuses_malformed_and_oversized_dags() -> None:
    root = Cid(1, CODEC_DAG_PB, multihash_sha256(b"\xff\xff"))
    f = DagFetch(root, ["p"])
    f.requests(0.0)
    with pytest.raises(FetchError, match="not valid dag-pb"):
        f.on_block("p", root, b"\xff\xff")
    data = os.urandom(3 * 262144)
    r2, blocks = import_bytes(data, "kubo-default")
    g = DagFetch(r2, ["p"], max_bytes=1000)
    g.requests(0.0)
    with pytest.raises(FetchError, match="larger than"):
        g.on_block("p", r2, blocks[r2])
        for c, d in blocks.items():
            g.on_block("p", c, d)


# ---- block store: blobs, pins, gc ---------------------------------------------------------------------
def test_blob_store_pins_and_gc(tmp_path: Path) -> None:
    s = BlockStore(tmp_path / "s")
    try:
        pinned, pb = s.put_blob(os.urandom(3 * 1024 * 1024))  # 3 leaves + root
        loose, lb = s.put_blob(os.urandom(2000))
        shared = os.urandom(1024 * 1024)
        both, bb = s.put_blob(shared + os.urandom(10))  # shares its first leaf with `alone`
        alone, ab = s.put_blob(shared)
        assert ab[0] in bb and s.blob_size(alone) == len(shared)
        assert s.pin(pinned) == 1 and s.pin(pinned) == 2 and s.unpin(pinned) == 1
        s.pin_many([alone])
        assert s.gc(grace=3600) == 0  # everything is young
        deleted = s.gc(grace=0)
        assert deleted == len(lb) + len(bb) - 1  # `both` goes except the leaf `alone` still needs
        assert s.blob_size(loose) is None and not s.has_blob(both)
        assert len(s.get_blob(pinned)) == 3 * 1024 * 1024 and s.get_blob(alone) == shared
        s.unpin(pinned)
        s.unpin(alone)
        assert s.pin_count(pinned) == 0
        assert s.gc(grace=0) == len(pb) + len(ab) and s.count() == 0
        # deleted and corrupt blocks show up on read
        r, blocks = s.put_blob(os.urandom(1024 * 1024 + 1))
        s.delete(blocks[0])  # a leaf
        with pytest.raises(MissingBlock):
            s.get_blob(r)
        with pytest.raises(IntegrityError):
            s.put_dag(r, [(r, b"not the root")], 1)
        assert s.blob_size(cid_v1_raw(b"never")) is None
    finally:
        s.close()


def test_gc_keeps_what_is_committed_or_uploaded_while_it_walks(tmp_path: Path) -> None:
    """`medchain ipfs gc` runs beside a live validator: it walks the live DAGs outside its write
    transaction, and a block committed (a sidecar stored and pinned) or a dag-pb blob uploaded
    meanwhile was deleted with the garbage, pin and all. (Found by a crash-consistency review.)"""
    s = BlockStore(tmp_path / "s")
    try:
        old = os.urandom(500)
        s.commit_blobs([(cid_v1_raw(old), old)], [cid_v1_raw(old)], 1, b"\x01" * 32)
        garbage, _ = s.put_blob(os.urandom(700))
        side = os.urandom(600)
        big = os.urandom(1024 * 1024 + 10)
        walk = s.dag_cids
        meanwhile: list[Cid] = []

        def dag_cids(root: Cid, txn=None) -> list[Cid]:  # the validator writes while gc walks
            if not meanwhile:
                s.commit_blobs([(cid_v1_raw(side), side)], [cid_v1_raw(side)], 2, b"\x02" * 32)
                meanwhile.append(s.put_blob(big)[0])
            return walk(root) if txn is None else walk(root, txn)
        s.dag_cids = dag_cids  # type: ignore[method-assign]
        assert s.gc(grace=0.0) == 1 and not s.has_blob(garbage)
        assert s.get_blob(cid_v1_raw(side)) == side and s.pin_count(cid_v1_raw(side)) == 1
        assert s.get_blob(meanwhile[0]) == big and s.get_blob(cid_v1_raw(old)) == old
        # a pinned blob this store lacked (wanted), fetched by repair while gc walked: the first walk
        # found nothing under it, and the review of that fix saw it deleted, pin kept, want cleared
        data = os.urandom(3 * 1024 * 1024)
        root, blocks = import_bytes(data, "helia-default")
        s.commit_blobs([], [root], 3, b"\x03" * 32)
        assert [c for c, _ in s.wanted_blobs()] == [root]
        repaired: list[bool] = []

        def repair_meanwhile(r: Cid, txn=None) -> list[Cid]:
            out = walk(r) if txn is None else walk(r, txn)
            if r == root and not repaired:  # just after the walk found it absent
                assert out == []
                repaired.append(True)
                s.put_dags([(root, blocks.items(), len(data))])
            return out
        s.dag_cids = repair_meanwhile  # type: ignore[method-assign]
        s.gc(grace=0.0)  # (the upload above, unpinned, goes now)
        assert s.get_blob(root) == data and s.pin_count(root) == 1
    finally:
        s.close()


def test_the_upload_collector_keeps_a_blob_uploaded_again_within_the_grace(tmp_path: Path, monkeypatch) -> None:
    """The same bytes uploaded twice, 500 s apart: the first upload's expiry deleted the blob while
    the second, acknowledged 101 s before, was well within its grace. (Found by a crash-consistency
    review.)"""
    clock = [1_000_000.0]
    monkeypatch.setattr(blockstore, "time", SimpleNamespace(time=lambda: clock[0]))
    s = BlockStore(tmp_path / "s")
    try:
        data = os.urandom(1024 * 1024 + 50)
        root, blocks = import_bytes(data, "helia-default")
        s.put_dags([(root, blocks.items(), len(data))], upload=True)
        clock[0] += 500
        s.put_dags([(root, blocks.items(), len(data))], upload=True)
        assert s.collect_uploads(600.0, now=clock[0] + 101) == 0 and s.get_blob(root) == data
        assert s.collect_uploads(600.0, now=clock[0] + 601) == 1 and not s.has_blob(root)
    finally:
        s.close()


def test_a_dag_linking_one_block_many_times_is_rebuilt_only_within_its_bound() -> None:
    """Three distinct blocks (a root of 1,000 links to one node of 1,000 links to one 1 MiB leaf) pass
    every bound on what a fetch holds, and describe 976 GiB: rebuilding it ran every validator that
    fetched it out of memory (a byzantine validator forwarding a write naming it makes them all
    fetch it; a review). It is refused before anything is rebuilt past the bound, and a file that
    repeats a chunk (zeros) still rebuilds within it."""
    def node(child: Cid, size: int, k: int) -> tuple[Cid, bytes]:
        meta = encode_unixfs_data(UnixfsData(TYPE_FILE, filesize=k * size, blocksizes=(size,) * k))
        b = encode_pbnode(PBNode(tuple(PBLink(child, "", size) for _ in range(k)), meta))
        return Cid(1, CODEC_DAG_PB, multihash_sha256(b)), b
    leaf = os.urandom(1 << 20)
    blocks = {cid_v1_raw(leaf): leaf}
    mid, mb = node(cid_v1_raw(leaf), len(leaf), 1000)
    root, rb = node(mid, 1000 * len(leaf), 1000)
    blocks.update({mid: mb, root: rb})
    with pytest.raises(UnixfsError, match="declares more than the 2097152 bytes"):
        export_bytes(root, blocks.__getitem__, 2 << 20)
    liar, lb = node(mid, 1, 1)  # declares one byte under a node that holds 1,000 MiB
    blocks[liar] = lb
    with pytest.raises(UnixfsError):
        export_bytes(liar, blocks.__getitem__)
    zeros = bytes(3 << 20)  # three identical chunks: one leaf linked three times
    r, zb = import_bytes(zeros, "helia-default")
    assert len(zb) == 2 and export_bytes(r, zb.__getitem__, len(zeros)) == zeros


def test_a_blob_stays_listed_when_its_digest_is_stored_under_the_other_codec(tmp_path: Path) -> None:
    """The raw twin of a dag-pb root (the root node's bytes under a raw CID) stored after it relisted
    the digest as a raw blob: the honest blob read as not held (a review). The first listing stands."""
    s = BlockStore(tmp_path / "s")
    try:
        data = os.urandom(1_500_000)
        root, _ = s.put_blob(data)
        twin = Cid(1, 0x55, root.multihash)
        s.put_dags([(twin, [(twin, s.get(root))], len(s.get(root)))])
        assert s.has_blob(root) and s.blob_size(root) == len(data) and s.blob_size(twin) is None
    finally:
        s.close()
