"""Certified checkpoints: the whole state at one height, believed only once it is proven (sans-IO).

A checkpoint is a committed block with its commit certificate plus every state key/value pair at
that block's height. Both ways a node gets one, a snapshot file (`medchain snapshot` / `restore`,
node/snapshot.py) and state transfer from peers (node/sync.py), feed it through the same checks:

1. the block: this chain's, certified by 2f+1 of the genesis validator keys (never by keys that came
   with the checkpoint), so a snapshot from an untrusted source or a lying peer cannot invent a head;
2. the state: pairs arrive in chunks, in strictly increasing key order (so no key is given twice and
   a chunk cannot be replayed), within the declared count and a size cap, and the sparse-Merkle root
   of all of them must equal the certified block's state root. One wrong byte anywhere fails that
   check, and nothing is installed until it passes.

The installer proves the root first with the state tree grown batch by batch apart from the ledger
(StateAssembler into node/ledger/scratch.py), then reads the pairs again into one ledger transaction:
its memory does not grow with the state, and a state that does not prove never touches the ledger.
A running validator streams a transferred state to a file and installs it from a short-lived process,
so LMDB's copy of every page that transaction writes does not stay in the validator's memory.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from node.block import Block, BlockError, verify_cert
from node.state import smt
from node.wire import MAX_BLOCK_BYTES, WireError, decode_canonical, encode

MAX_CHUNK_KEYS = 4096
MAX_CHUNK_BYTES = 1024 * 1024  # keys and values of one chunk; one pair may exceed it alone
MAX_PAIR_BYTES = 4 * 1024 * 1024
# what a peer or a file may make us write (to a transfer file, then the ledger's install transaction)
# before the root check: disk, not memory (the installer streams, StateAssembler)
MAX_STATE_BYTES = 64 * 1024 * 1024 * 1024
# what one pair costs on disk beyond its bytes (LMDB's entry header, its share of the state tree's
# inline leaf and internal nodes), counted against MAX_STATE_BYTES so that many tiny pairs count
PAIR_OVERHEAD = 128
# pairs per state-tree update while a checkpoint is assembled, and at most these bytes of theirs (the
# batch holds their values until the tree takes them: large values would make it hold far more)
TREE_BATCH = 8_192
TREE_BATCH_BYTES = 16 * 1024 * 1024
MAX_STATE_KEYS = MAX_STATE_BYTES // PAIR_OVERHEAD
MAX_CHUNK_FRAME = MAX_CHUNK_BYTES + MAX_PAIR_BYTES + 64 * 1024

Pairs = list[tuple[bytes, bytes]]


class CheckpointError(ValueError):
    """A checkpoint (or one of its chunks) that must not be believed; the message says why."""


@dataclass(frozen=True)
class Checkpoint:
    block: Block  # its certificate checked against the genesis keys
    keys: int  # how many state pairs the source says it holds (checked at the end)

    @property
    def height(self) -> int:
        return self.block.header.height

    @property
    def state_root(self) -> bytes:
        return self.block.header.state_root


def check_block(raw: bytes, chain_id: str, validators: Sequence[bytes]) -> Block:
    """The checkpoint's block, if it is of `chain_id` and 2f+1 of `validators` certified it."""
    try:
        block = Block.decode(raw)
    except BlockError as exc:
        raise CheckpointError(f"the checkpoint block does not decode: {exc}") from None
    h = block.header
    if h.chain_id != chain_id:
        raise CheckpointError(f"the checkpoint is of chain {h.chain_id!r}, this node's is {chain_id!r}")
    if h.height < 1 or h.seq != h.height:
        raise CheckpointError(f"the checkpoint block has height {h.height} and sequence {h.seq}")
    if not block.check_tx_root():
        raise CheckpointError(f"block {h.height}'s transactions do not hash to its Merkle root")
    if not verify_cert(block, validators):
        raise CheckpointError(f"block {h.height}'s commit certificate does not carry 2f+1 valid signatures "
                              "of this genesis's validators")
    return block


def encode_chunk(pairs: Pairs) -> bytes:
    return encode([[k, v] for k, v in pairs])


def decode_chunk(raw: bytes) -> Pairs:
    """A chunk's pairs, shape-checked (order and limits are the assembler's)."""
    try:
        obj = decode_canonical(raw, MAX_CHUNK_FRAME, 1 + 3 * (MAX_CHUNK_KEYS + 1))
    except WireError as exc:
        raise CheckpointError(f"state chunk: {exc}") from None
    if not isinstance(obj, list) or len(obj) > MAX_CHUNK_KEYS:
        raise CheckpointError(f"a state chunk is a list of at most {MAX_CHUNK_KEYS} [key, value] pairs")
    out = []
    for p in obj:
        if not (isinstance(p, list) and len(p) == 2 and isinstance(p[0], bytes) and isinstance(p[1], bytes)
                and p[0]):
            raise CheckpointError("a state chunk entry is [key (non-empty bytes), value (bytes)]")
        out.append((p[0], p[1]))
    return out


def chunked(pairs: Iterable[tuple[bytes, bytes]], max_keys: int = MAX_CHUNK_KEYS,
            max_bytes: int = MAX_CHUNK_BYTES) -> Iterator[Pairs]:
    """Split an ordered stream of pairs into chunks within the limits (a chunk holds at least one pair)."""
    cur: Pairs = []
    size = 0
    for k, v in pairs:
        if cur and (len(cur) >= max_keys or size + len(k) + len(v) > max_bytes):
            yield cur
            cur, size = [], 0
        cur.append((k, v))
        size += len(k) + len(v)
    if cur:
        yield cur


class StateChecker:
    """Checks a checkpoint's chunks as they arrive (order, limits, the declared count) without holding
    them: state transfer streams them to a file, and the installer (node/snapshot.py) proves them."""

    def __init__(self, cp: Checkpoint, max_bytes: int = MAX_STATE_BYTES) -> None:
        self.cp = cp
        self.max_bytes = max_bytes
        self.count = 0
        self.size = 0
        self.chunks = 0
        self.last: bytes = b""  # every key must sort after this one

    def add(self, pairs: Pairs) -> None:
        """Take one chunk; CheckpointError if it breaks the order or the limits (then start over)."""
        if not pairs:
            raise CheckpointError("an empty state chunk before the end")
        for k, v in pairs:
            if k <= self.last:
                raise CheckpointError(f"state chunk {self.chunks}: keys out of order or repeated")
            if len(k) + len(v) > MAX_PAIR_BYTES:
                raise CheckpointError(f"state chunk {self.chunks}: a pair of {len(k) + len(v)} bytes")
            self.last = k
            self.size += len(k) + len(v) + PAIR_OVERHEAD
        self.count += len(pairs)
        self.chunks += 1
        if self.count > self.cp.keys:
            raise CheckpointError(f"more state pairs than the {self.cp.keys} declared")
        if self.size > self.max_bytes:
            raise CheckpointError(f"the state passes {self.max_bytes} bytes before its root was checked")

    def complete(self) -> None:
        if self.count != self.cp.keys:
            raise CheckpointError(f"{self.count} state pairs, but {self.cp.keys} were declared")


class StateSink(Protocol):
    """Where an assembled state goes: the ledger's install transaction (node/ledger/store.py), or
    memory (MemorySink, for tests and small tools)."""

    def put_state(self, key: bytes, value: bytes) -> None: ...
    def get_node(self, pos: bytes) -> bytes | None: ...
    def put_nodes(self, nodes: dict[bytes, bytes]) -> None: ...


class MemorySink:
    def __init__(self) -> None:
        self.state: dict[bytes, bytes] = {}
        self.nodes: dict[bytes, bytes] = {}

    def put_state(self, key: bytes, value: bytes) -> None:
        self.state[key] = value

    def get_node(self, pos: bytes) -> bytes | None:
        return self.nodes.get(pos)

    def put_nodes(self, nodes: dict[bytes, bytes]) -> None:
        self.nodes.update(nodes)


class StateAssembler(StateChecker):
    """Rebuilds a checkpoint's state from its chunks into `sink` and proves it against the certified
    root. The state tree is built as the pairs arrive, TREE_BATCH pairs (TREE_BATCH_BYTES) at a time
    (the tree is canonical for its key set and the state never deletes, so batches give the one-shot
    tree): beyond what the sink keeps, only one batch is held, whatever the size of the state."""

    def __init__(self, cp: Checkpoint, max_bytes: int = MAX_STATE_BYTES, sink: StateSink | None = None) -> None:
        super().__init__(cp, max_bytes)
        self.sink: StateSink = sink if sink is not None else MemorySink()
        self._batch: dict[bytes, bytes] = {}
        self._batch_bytes = 0
        self.root = smt.EMPTY_ROOT

    def add(self, pairs: Pairs) -> None:
        super().add(pairs)
        for k, v in pairs:
            self.sink.put_state(k, v)
            self._batch[k] = v
            self._batch_bytes += len(k) + len(v)
            if len(self._batch) >= TREE_BATCH or self._batch_bytes >= TREE_BATCH_BYTES:
                self._grow()

    def _grow(self) -> None:
        if self._batch:
            self.root, nodes = smt.update(self.sink.get_node, self._batch)
            self.sink.put_nodes(nodes)
            self._batch, self._batch_bytes = {}, 0

    def finish(self) -> None:
        """Return once every declared pair came and they hash to the certified root; CheckpointError if
        not (the caller then discards what the sink took)."""
        self.complete()
        self._grow()
        if self.root != self.cp.state_root:
            raise CheckpointError(f"the state's root {self.root.hex()[:16]}… is not the state root "
                                  f"{self.cp.state_root.hex()[:16]}… certified by block {self.cp.height}")


# ---- the snapshot file: MAGIC, then frames (u32 big-endian length || msgpack) ----------------------
# frame 0 is the manifest, then the state chunks in key order, then ["end", SHA-256 of every byte
# before that frame]: a truncated or damaged file is refused before its root is even computed.
MAGIC = b"MEDCHAIN-SNAPSHOT/1\n"
SNAPSHOT_VERSION = 1
MAX_MANIFEST = MAX_BLOCK_BYTES + 64 * 1024
_LEN = struct.Struct(">I")


def frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


def manifest_frame(genesis_hash: bytes, block_raw: bytes, block: Block, keys: int) -> bytes:
    h = block.header
    return frame(encode([SNAPSHOT_VERSION, h.chain_id, genesis_hash, h.height, block.hash, h.state_root, keys,
                         block_raw]))


def end_frame(digest: bytes) -> bytes:
    return frame(encode(["end", digest]))


@dataclass(frozen=True)
class Manifest:
    chain_id: str
    genesis_hash: bytes
    height: int
    block_hash: bytes
    state_root: bytes
    keys: int
    block_raw: bytes

    def as_json(self, block: Block | None = None) -> dict[str, object]:
        out: dict[str, object] = {"chain_id": self.chain_id, "genesis_hash": self.genesis_hash.hex(),
                                  "height": self.height, "block_hash": self.block_hash.hex(),
                                  "state_root": self.state_root.hex(), "state_keys": self.keys}
        if block is not None:
            out["certificate"] = {"view": block.cert_view, "signers": sorted(i for i, _ in block.cert)}
        return out


def decode_manifest(raw: bytes) -> Manifest:
    try:
        m = decode_canonical(raw, MAX_MANIFEST, 64)
    except WireError as exc:
        raise CheckpointError(f"snapshot manifest: {exc}") from None
    if not (isinstance(m, list) and len(m) == 8 and m[0] == SNAPSHOT_VERSION):
        raise CheckpointError(f"not a version-{SNAPSHOT_VERSION} snapshot manifest")
    _, chain, gh, height, bh, root, keys, raw_block = m
    if not (isinstance(chain, str) and isinstance(gh, bytes) and len(gh) == 32 and type(height) is int
            and isinstance(bh, bytes) and isinstance(root, bytes) and type(keys) is int and keys >= 0
            and isinstance(raw_block, bytes)):
        raise CheckpointError("snapshot manifest fields have the wrong types")
    return Manifest(chain, gh, height, bh, root, keys, raw_block)


def check_manifest(m: Manifest, chain_id: str, genesis_hash: bytes, validators: Sequence[bytes]) -> Checkpoint:
    """The checkpoint a snapshot's manifest describes, if it is of this chain and genesis, its block is
    certified by this genesis's validators, and its summary fields are that block's."""
    if m.chain_id != chain_id:
        raise CheckpointError(f"the snapshot is of chain {m.chain_id!r}, this home's genesis is of {chain_id!r}")
    if m.genesis_hash != genesis_hash:
        raise CheckpointError(f"the snapshot was made under genesis {m.genesis_hash.hex()[:16]}…, this home's "
                              f"is {genesis_hash.hex()[:16]}…")
    block = check_block(m.block_raw, chain_id, validators)
    if (block.header.height, block.hash, block.header.state_root) != (m.height, m.block_hash, m.state_root):
        raise CheckpointError("the snapshot manifest's height, block hash or state root is not its block's")
    return Checkpoint(block, m.keys)


def chunk_or_end(raw: bytes) -> Pairs | bytes:
    """A frame after the manifest: a state chunk's pairs, or the end frame's digest."""
    if raw[:1] == b"\x92" and raw[1:5] == b"\xa3end":  # msgpack ["end", ...]
        try:
            e = decode_canonical(raw, 128)
        except WireError:
            e = None
        if not (isinstance(e, list) and len(e) == 2 and isinstance(e[1], bytes) and len(e[1]) == 32):
            raise CheckpointError("the snapshot's end frame is malformed")
        return bytes(e[1])
    return decode_chunk(raw)
