"""node/checkpoint.py on its own: what a node believes of a checkpoint, from a snapshot file or a
peer's state transfer. Each check in turn: the block (chain, height, tx root, certificate against
the genesis keys), the chunks (shape, order, limits, declared count), the root of the assembled
state, the snapshot's manifest and end frame. tests/test_statesync.py and tests/test_snapshot.py run
the same checks through real validators; these run in milliseconds (mutation testing uses them)."""

from __future__ import annotations

import pytest

from node import merkle
from node.block import GENESIS_PREV, Block, Header, vote_digest
from node.checkpoint import (
    MAX_CHUNK_KEYS,
    MAX_PAIR_BYTES,
    MAX_STATE_KEYS,
    PAIR_OVERHEAD,
    SNAPSHOT_VERSION,
    Checkpoint,
    CheckpointError,
    Manifest,
    MemorySink,
    StateAssembler,
    StateChecker,
    check_block,
    check_manifest,
    chunk_or_end,
    chunked,
    decode_chunk,
    decode_manifest,
    encode_chunk,
    end_frame,
    manifest_frame,
)
from node.crypto import ecdsa
from node.state import smt
from node.wire import encode
from tests.consensus_sim import CHAIN, IDS, pubs

STATE = {b"k%03d" % i: b"v%d" % i for i in range(50)}
ROOT = smt.naive_root(STATE)
VALIDATORS = pubs(4)
GENESIS_HASH = bytes(range(32))


def block(height: int = 5, state_root: bytes = ROOT, chain: str = CHAIN, signers: tuple[int, ...] = (0, 1, 2),
          txs: tuple[bytes, ...] = (b"tx-a", b"tx-b"), seq: int | None = None, view: int = 0) -> Block:
    h = Header(chain, height, GENESIS_PREV, view, height if seq is None else seq, 1_000,
               merkle.root([ecdsa.sha256(t) for t in txs]), state_root, 0)
    b = Block(h, txs)
    d = vote_digest(chain, view, h.seq, b.hash)
    return b.with_cert([(i, IDS[i].sign(d)) for i in signers], view)


def refused(message: str, fn, *args) -> None:
    with pytest.raises(CheckpointError) as e:
        fn(*args)
    assert str(e.value) == message, str(e.value)


# ---- the block ---------------------------------------------------------------------------------

def test_a_certified_block_of_this_chain_is_believed() -> None:
    b = block()
    assert check_block(b.encode(), CHAIN, VALIDATORS) == b


def test_a_block_is_refused_for_each_reason() -> None:
    refused("the checkpoint block does not decode: block encoding: malformed msgpack: Unpack failed: incomplete input",
            check_block, block().encode()[:-1], CHAIN, VALIDATORS)
    refused("the checkpoint is of chain 'other', this node's is 'pbft-test'",
            check_block, block(chain="other").encode(), CHAIN, VALIDATORS)
    refused("the checkpoint block has height 0 and sequence 0", check_block, block(height=0).encode(), CHAIN, VALIDATORS)
    refused("the checkpoint block has height 5 and sequence 6", check_block, block(seq=6).encode(), CHAIN, VALIDATORS)
    b = block()
    forged = Block(b.header, (b"tx-a", b"tx-c"), b.cert, b.cert_view)  # other transactions under the header
    refused("block 5's transactions do not hash to its Merkle root", check_block, forged.encode(), CHAIN, VALIDATORS)
    for signers in ((0, 1), (0, 0, 1), (0, 1, 7)):
        refused("block 5's commit certificate does not carry 2f+1 valid signatures of this genesis's validators",
                check_block, block(signers=signers).encode(), CHAIN, VALIDATORS)
    assert check_block(block(height=1).encode(), CHAIN, VALIDATORS).header.height == 1  # the lowest a checkpoint has


# ---- chunks ------------------------------------------------------------------------------------------

def test_chunks_round_trip_and_split_within_their_limits() -> None:
    pairs = sorted(STATE.items())
    assert decode_chunk(encode_chunk(pairs)) == pairs
    assert [len(c) for c in chunked(pairs, max_keys=20)] == [20, 20, 10]
    sizes = [sum(len(k) + len(v) for k, v in c) for c in chunked(pairs, max_bytes=60)]
    assert all(s <= 60 for s in sizes) and sum(map(len, chunked(pairs, max_bytes=60))) == 50
    one = [(b"k", b"v" * 10)]  # a pair above the byte limit still travels, alone
    assert list(chunked(one * 3, max_bytes=5)) == [one, one, one]
    exact = [(b"a", b"1"), (b"b", b"2")]
    assert list(chunked(exact, max_bytes=4)) == [exact]  # exactly at the limit: one chunk
    assert list(chunked(exact, max_bytes=3)) == [exact[:1], exact[1:]]
    assert list(chunked([])) == []
    assert [len(c) for c in chunked([(b"%05d" % i, b"") for i in range(MAX_CHUNK_KEYS + 1)])] == [MAX_CHUNK_KEYS, 1]


@pytest.mark.parametrize("obj,message", [
    (b"pairs", f"a state chunk is a list of at most {MAX_CHUNK_KEYS} [key, value] pairs"),
    ([[b"k", b"v"]] * (MAX_CHUNK_KEYS + 1), f"a state chunk is a list of at most {MAX_CHUNK_KEYS} [key, value] pairs"),
    ([[b"", b"v"]], "a state chunk entry is [key (non-empty bytes), value (bytes)]"),
    ([[b"k"]], "a state chunk entry is [key (non-empty bytes), value (bytes)]"),
    ([[b"k", b"v", b"w"]], "a state chunk entry is [key (non-empty bytes), value (bytes)]"),
    ([["k", b"v"]], "a state chunk entry is [key (non-empty bytes), value (bytes)]"),
    ([[b"k", "v"]], "a state chunk entry is [key (non-empty bytes), value (bytes)]"),
    ([b"kv"], "a state chunk entry is [key (non-empty bytes), value (bytes)]"),
])
def test_a_malformed_chunk_is_refused(obj: object, message: str) -> None:
    refused(message, decode_chunk, encode(obj))
    assert decode_chunk(encode([])) == [] and decode_chunk(encode([[b"k", b""]])) == [(b"k", b"")]


def test_a_chunk_that_does_not_decode_is_refused() -> None:
    with pytest.raises(CheckpointError, match="^state chunk: "):
        decode_chunk(encode_chunk([(b"k", b"v")])[:-1])


# ---- assembling and proving the state -----------------------------------------------------------------

def cp(keys: int = len(STATE), root: bytes = ROOT) -> Checkpoint:
    return Checkpoint(block(state_root=root), keys)


def test_the_state_is_assembled_in_order_and_proven_against_the_certified_root() -> None:
    a = StateAssembler(cp())
    for c in chunked(sorted(STATE.items()), max_keys=7):
        a.add(c)
    a.finish()
    state, nodes = a.sink.state, a.sink.nodes
    assert state == STATE and smt.root_of(nodes.get) == ROOT
    assert (a.count, a.chunks, a.last) == (50, 8, b"k049")
    assert a.size == sum(len(k) + len(v) + PAIR_OVERHEAD for k, v in STATE.items())
    assert cp().height == 5 and cp().state_root == ROOT


def test_a_state_that_is_not_the_certified_one_is_refused() -> None:
    wrong = {**STATE, b"k007": b"changed"}
    a = StateAssembler(cp())
    a.add(sorted(wrong.items()))
    refused(f"the state's root {smt.naive_root(wrong).hex()[:16]}… is not the state root {ROOT.hex()[:16]}… "
            "certified by block 5", a.finish)


def test_chunks_out_of_order_repeated_or_beyond_the_declared_count_are_refused() -> None:
    pairs = sorted(STATE.items())
    c = StateChecker(cp())
    c.add(pairs[:10])
    refused("state chunk 1: keys out of order or repeated", c.add, pairs[9:12])  # the last key again
    c = StateChecker(cp())
    refused("state chunk 0: keys out of order or repeated", c.add, [pairs[1], pairs[0]])
    refused("an empty state chunk before the end", StateChecker(cp()).add, [])
    c = StateChecker(cp(keys=10))
    c.add(pairs[:10])
    refused("more state pairs than the 10 declared", c.add, pairs[10:11])
    short = StateChecker(cp())
    short.add(pairs[:49])
    refused("49 state pairs, but 50 were declared", short.complete)
    a = StateAssembler(cp())
    a.add(pairs[:49])
    refused("49 state pairs, but 50 were declared", a.finish)


def test_the_size_limits() -> None:
    """Each pair counts its bytes and PAIR_OVERHEAD (what the installer holds for it beyond them), so
    a peer sending many tiny pairs meets the cap as soon as one sending their bytes in large ones."""
    c = StateChecker(cp(), max_bytes=101 + 2 * PAIR_OVERHEAD)
    c.add([(b"a", b"x" * 99), (b"b", b"")])  # exactly at the cap
    refused(f"the state passes {101 + 2 * PAIR_OVERHEAD} bytes before its root was checked", c.add, [(b"c", b"")])
    cap = 1000 * (4 + PAIR_OVERHEAD)
    tiny = StateChecker(Checkpoint(block(), MAX_STATE_KEYS), max_bytes=cap)
    tiny.add([(b"%04d" % k, b"") for k in range(1000)])  # 4 bytes each, each counted as 260: at the cap
    refused(f"the state passes {cap} bytes before its root was checked", tiny.add, [(b"9999", b"")])
    big = StateChecker(cp())
    big.add([(b"a", b"x" * (MAX_PAIR_BYTES - 1))])  # the largest pair
    refused(f"state chunk 1: a pair of {MAX_PAIR_BYTES + 1} bytes", big.add, [(b"b", b"x" * MAX_PAIR_BYTES)])


# ---- the snapshot's manifest and end frame ------------------------------------------------------------

def manifest(**kw) -> Manifest:
    b = kw.pop("blk", None) or block()
    raw = manifest_frame(GENESIS_HASH, b.encode(), b, len(STATE))[4:]
    m = decode_manifest(raw)
    return Manifest(**{**m.__dict__, **kw})


def test_a_manifest_round_trips_and_describes_its_certified_block() -> None:
    b = block()
    m = manifest()
    assert (m.chain_id, m.genesis_hash, m.height, m.block_hash, m.state_root, m.keys) == (
        CHAIN, GENESIS_HASH, 5, b.hash, ROOT, 50)
    got = check_manifest(m, CHAIN, GENESIS_HASH, VALIDATORS)
    assert (got.block, got.keys) == (b, 50)
    assert m.as_json() == {"chain_id": CHAIN, "genesis_hash": GENESIS_HASH.hex(), "height": 5,
                           "block_hash": b.hash.hex(), "state_root": ROOT.hex(), "state_keys": 50}
    assert m.as_json(b)["certificate"] == {"view": 0, "signers": [0, 1, 2]}


def test_a_manifest_is_refused_for_each_reason() -> None:
    refused("the snapshot is of chain 'other', this home's genesis is of 'pbft-test'",
            check_manifest, manifest(chain_id="other"), CHAIN, GENESIS_HASH, VALIDATORS)
    refused(f"the snapshot was made under genesis {bytes(32).hex()[:16]}…, this home's is {GENESIS_HASH.hex()[:16]}…",
            check_manifest, manifest(genesis_hash=bytes(32)), CHAIN, GENESIS_HASH, VALIDATORS)
    for field, value in (("height", 6), ("block_hash", bytes(32)), ("state_root", bytes(32))):
        refused("the snapshot manifest's height, block hash or state root is not its block's",
                check_manifest, manifest(**{field: value}), CHAIN, GENESIS_HASH, VALIDATORS)
    refused("block 5's commit certificate does not carry 2f+1 valid signatures of this genesis's validators",
            check_manifest, manifest(blk=block(signers=(0, 1))), CHAIN, GENESIS_HASH, VALIDATORS)


@pytest.mark.parametrize("fields,message", [
    ([2, CHAIN, GENESIS_HASH, 5, bytes(32), ROOT, 50, b"blk"], f"not a version-{SNAPSHOT_VERSION} snapshot manifest"),
    ([SNAPSHOT_VERSION, CHAIN, GENESIS_HASH, 5, bytes(32), ROOT, 50], f"not a version-{SNAPSHOT_VERSION} snapshot manifest"),
    (b"manifest", f"not a version-{SNAPSHOT_VERSION} snapshot manifest"),
    ([SNAPSHOT_VERSION, b"chain", GENESIS_HASH, 5, bytes(32), ROOT, 50, b"blk"], "snapshot manifest fields have the wrong types"),
    ([SNAPSHOT_VERSION, CHAIN, bytes(31), 5, bytes(32), ROOT, 50, b"blk"], "snapshot manifest fields have the wrong types"),
    ([SNAPSHOT_VERSION, CHAIN, "g" * 32, 5, bytes(32), ROOT, 50, b"blk"], "snapshot manifest fields have the wrong types"),
    ([SNAPSHOT_VERSION, CHAIN, GENESIS_HASH, True, bytes(32), ROOT, 50, b"blk"], "snapshot manifest fields have the wrong types"),
    ([SNAPSHOT_VERSION, CHAIN, GENESIS_HASH, 5, "h", ROOT, 50, b"blk"], "snapshot manifest fields have the wrong types"),
    ([SNAPSHOT_VERSION, CHAIN, GENESIS_HASH, 5, bytes(32), "r", 50, b"blk"], "snapshot manifest fields have the wrong types"),
    ([SNAPSHOT_VERSION, CHAIN, GENESIS_HASH, 5, bytes(32), ROOT, -1, b"blk"], "snapshot manifest fields have the wrong types"),
    ([SNAPSHOT_VERSION, CHAIN, GENESIS_HASH, 5, bytes(32), ROOT, False, b"blk"], "snapshot manifest fields have the wrong types"),
    ([SNAPSHOT_VERSION, CHAIN, GENESIS_HASH, 5, bytes(32), ROOT, 50, "blk"], "snapshot manifest fields have the wrong types"),
])
def test_a_malformed_manifest_is_refused(fields: object, message: str) -> None:
    refused(message, decode_manifest, encode(fields))


def test_a_manifest_that_does_not_decode_is_refused() -> None:
    with pytest.raises(CheckpointError, match="^snapshot manifest: "):
        decode_manifest(b"\xc1")
    m = decode_manifest(encode([SNAPSHOT_VERSION, CHAIN, GENESIS_HASH, 0, b"", b"", 0, b""]))
    assert (m.height, m.keys) == (0, 0)  # the types are right: check_manifest judges the values


def test_frames_after_the_manifest() -> None:
    digest = bytes(range(32))
    assert chunk_or_end(end_frame(digest)[4:]) == digest
    assert chunk_or_end(encode_chunk([(b"k", b"v")])) == [(b"k", b"v")]
    for bad in (encode(["end", bytes(31)]), encode(["end", "x" * 32]), encode(["end", 7]), b"\x92\xa3end\xc1",
                encode(["end", digest])[:-1]):
        refused("the snapshot's end frame is malformed", chunk_or_end, bad)
    for other in (encode(["end"]), encode(["end", digest, 1])):  # not the end frame's shape: read as chunks
        refused("a state chunk entry is [key (non-empty bytes), value (bytes)]", chunk_or_end, other)
    refused("a state chunk entry is [key (non-empty bytes), value (bytes)]", chunk_or_end, encode(["ends", digest]))


def test_edges_of_the_order_the_split_and_the_manifest_size() -> None:
    # the first key may be the smallest there is (state keys start with any byte, "A" sorts early)
    low = {b"\x01": b"", b"A": b"1", b"B": b"2"}
    a = StateAssembler(Checkpoint(block(state_root=smt.naive_root(low)), 3))
    a.add(sorted(low.items()))
    a.finish()
    assert a.sink.state == low
    # every chunk's byte count starts from zero
    four = [(b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"d", b"4")]
    assert list(chunked(four, max_bytes=4)) == [four[:2], four[2:]]
    # a manifest above the 16 KiB a transaction may have: a block of many transactions
    b = block(txs=tuple(b"t%05d" % i + bytes(100) for i in range(300)))
    raw = manifest_frame(GENESIS_HASH, b.encode(), b, 0)[4:]
    assert len(raw) > 16 * 1024 and decode_manifest(raw).block_raw == b.encode()


def test_the_tree_built_batch_by_batch_is_the_tree_built_at_once(monkeypatch) -> None:
    """The installer grows the state tree TREE_BATCH pairs at a time (over chunks of any size) so that
    it holds one batch, not the state: the tree is canonical for its key set, node for node."""
    import node.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "TREE_BATCH", 7)
    a = StateAssembler(cp())
    for c in chunked(sorted(STATE.items()), max_keys=3):
        a.add(c)
    a.finish()
    assert a.sink.nodes == smt.update({}.get, STATE)[1] and a.root == ROOT


def _boundaries(state: dict[bytes, bytes], chunk: int) -> tuple[list[int], dict[bytes, bytes]]:
    """How many pairs had come each time the assembler took its batch into the tree, and the nodes."""
    sink = MemorySink()
    at: list[int] = []
    put_nodes = sink.put_nodes
    sink.put_nodes = lambda nodes: (at.append(len(sink.state)), put_nodes(nodes))  # type: ignore[method-assign]
    a = StateAssembler(Checkpoint(block(state_root=smt.naive_root(state)), len(state)), sink=sink)
    for c in chunked(sorted(state.items()), max_keys=chunk):
        a.add(c)
    a.finish()
    return at, sink.nodes


def test_a_batch_of_large_values_is_taken_into_the_tree_by_its_bytes(monkeypatch) -> None:
    """The batch holds its values until the tree takes them: a state of large values is taken into
    the tree once TREE_BATCH_BYTES have come, not every TREE_BATCH pairs (a peer's 16,000 pairs of
    4 MiB would otherwise be held at once before the root check), counted from zero each batch."""
    import node.checkpoint as checkpoint

    big = {b"k%03d" % i: bytes([i]) * 1000 for i in range(40)}  # 1,004 bytes a pair
    monkeypatch.setattr(checkpoint, "TREE_BATCH_BYTES", 4 * 1004)  # reached at the 4th pair
    at, nodes = _boundaries(big, 40)
    assert at == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40] and nodes == smt.update({}.get, big)[1]
    monkeypatch.setattr(checkpoint, "TREE_BATCH_BYTES", 4 * 1004 + 1)  # only at the 5th
    assert _boundaries(big, 40)[0] == [5, 10, 15, 20, 25, 30, 35, 40]


def test_the_tree_is_grown_every_tree_batch_pairs_and_an_empty_state_proves(monkeypatch) -> None:
    import node.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "TREE_BATCH", 7)
    at, nodes = _boundaries(STATE, 3)
    assert at == [7, 14, 21, 28, 35, 42, 49, 50] and nodes == smt.update({}.get, STATE)[1]
    empty = StateAssembler(Checkpoint(block(state_root=smt.EMPTY_ROOT), 0))
    empty.finish()  # a checkpoint of no state (nothing written yet) proves against the empty root
    assert empty.root == smt.EMPTY_ROOT and empty.sink.nodes == {}


def test_the_installers_scratch_tree_has_the_ledgers_room_and_leaves_nothing(tmp_path, monkeypatch) -> None:
    """The tree a checkpoint is proven with lives in a throwaway LMDB environment beside the ledger:
    with the ledger's address space (LMDB's own default, 10 MiB, held a tree of ~100,000 keys at
    most: every real transfer failed MDB_MAP_FULL), its nodes read back in order, removed on close."""
    from node.ledger import scratch
    from node.ledger.scratch import ScratchTree
    from node.ledger.store import DEFAULT_MAP_SIZE

    monkeypatch.setattr(scratch, "NODES_READ", 3)  # read back 3 at a time, reopened in between
    t = ScratchTree(tmp_path)
    try:
        assert t.env.info()["map_size"] == DEFAULT_MAP_SIZE
        nodes = smt.update(t.get_node, STATE)[1]
        t.put_nodes(nodes)
        assert smt.root_of(t.get_node) == ROOT and list(t.nodes()) == sorted(nodes.items())
    finally:
        t.close()
    assert list(tmp_path.iterdir()) == []


def test_a_chunk_or_manifest_of_too_many_values_is_refused_by_the_decoder_at_its_limit() -> None:
    """The decoder's value budget stops a frame before its values are built: a chunk holds at most
    1 + 3 per pair (its list, each entry and its two strings) for MAX_CHUNK_KEYS + 1 pairs, a manifest
    64. Values packed into few entries pass the count of entries, and the shape check alone would
    refuse them only once all were built."""

    limit = 1 + 3 * (MAX_CHUNK_KEYS + 1)
    at = encode([[b"k", b"v", *([0] * (limit - 4))]])  # the chunk's list, one entry, 2 strings, the ints
    refused("a state chunk entry is [key (non-empty bytes), value (bytes)]", decode_chunk, at)
    over = encode([[b"k", b"v", *([0] * (limit - 3))]])
    refused(f"state chunk: more than {limit} values", decode_chunk, over)
    refused("not a version-1 snapshot manifest", decode_manifest, encode([1, *([0] * 62)]))  # 64 values
    refused("snapshot manifest: more than 64 values", decode_manifest, encode([1, *([0] * 63)]))
