"""Blocks: header, transactions and the commit certificate; exact encodings in docs/PROTOCOL.md.

header = [version, chain_id, height, prev_hash, view, seq, time_ms, tx_root, state_root, proposer]
block  = [header_bytes, [tx_raw, ...], certificate, cert_view]; certificate = [[validator_index, sig], ...]
The block hash is SHA-256(header_bytes); validators sign commit votes over vote_digest(). The header's
view is the view the block was first proposed in; cert_view is the view it committed in (later when a
view change carried it over), and the certificate's votes are over that view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from node import merkle
from node.crypto import ecdsa
from node.crypto.batch import verify_batch  # the native batch path when it is built
from node.wire import MAX_BLOCK_BYTES, WireError, decode_canonical, encode, value_budget

BLOCK_VERSION = 1
GENESIS_PREV = bytes(32)
# What a block's transactions may take of MAX_BLOCK_BYTES, each counted with its framing
# (TX_FRAMING): the rest holds the header (~200 bytes) and the certificate (~80 bytes a vote, so
# room for some 800 validators). block_max_txs counts transactions, and a transaction may be 16 KiB:
# a block over MAX_BLOCK_BYTES is refused by every replica, and the next primary, holding the same
# pool, would propose the same (tests/test_block_bytes.py).
TXS_MAX_BYTES = MAX_BLOCK_BYTES - 64 * 1024
TX_FRAMING = 5  # at most what msgpack adds around one transaction's bytes (a bin 32 header)


def txs_bytes(txs: Sequence[bytes]) -> int:
    """What a block's transactions take against TXS_MAX_BYTES."""
    return sum(len(t) for t in txs) + TX_FRAMING * len(txs)


class BlockError(ValueError):
    pass


@dataclass(frozen=True)
class Header:
    chain_id: str
    height: int
    prev_hash: bytes
    view: int
    seq: int
    time_ms: int
    tx_root: bytes
    state_root: bytes
    proposer: int

    def encode(self) -> bytes:
        return encode([BLOCK_VERSION, self.chain_id, self.height, self.prev_hash, self.view, self.seq,
                       self.time_ms, self.tx_root, self.state_root, self.proposer])

    @property
    def hash(self) -> bytes:
        return ecdsa.sha256(self.encode())

    @classmethod
    def decode(cls, raw: bytes) -> Header:
        try:
            h = decode_canonical(raw, 1024)
        except WireError as exc:
            raise BlockError(f"header encoding: {exc}") from None
        if not isinstance(h, list) or len(h) != 10 or type(h[0]) is not int or h[0] != BLOCK_VERSION:
            raise BlockError("header is [1, chain_id, height, prev, view, seq, time_ms, tx_root, state_root, proposer]")
        _, chain_id, height, prev, view, seq, t, txr, sr, prop = h
        ints = (height, view, seq, t, prop)
        if not isinstance(chain_id, str) or not all(type(i) is int and i >= 0 for i in ints):
            raise BlockError("bad header field types")
        if not all(isinstance(x, bytes) and len(x) == 32 for x in (prev, txr, sr)):
            raise BlockError("hashes in the header must be 32 bytes")
        return cls(chain_id, height, prev, view, seq, t, txr, sr, prop)


def vote_digest(chain_id: str, view: int, seq: int, block_hash: bytes) -> bytes:
    """What a validator signs to commit a block (the commit-phase vote of PBFT)."""
    return ecdsa.sha256(encode(["medchain/commit", chain_id, view, seq, block_hash]))


@dataclass(frozen=True)
class Block:
    header: Header
    txs: tuple[bytes, ...]  # raw transactions, in execution order
    cert: tuple[tuple[int, bytes], ...] = field(default=())
    cert_view: int = -1  # -1: the header's view

    def __post_init__(self) -> None:
        if self.cert_view < 0:
            object.__setattr__(self, "cert_view", self.header.view)

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def tx_ids(self) -> list[bytes]:
        return [ecdsa.sha256(t) for t in self.txs]

    def encode(self) -> bytes:
        return encode([self.header.encode(), list(self.txs), [list(c) for c in self.cert], self.cert_view])

    @classmethod
    def decode(cls, raw: bytes) -> Block:
        try:
            b = decode_canonical(raw, MAX_BLOCK_BYTES, value_budget(raw))
        except WireError as exc:
            raise BlockError(f"block encoding: {exc}") from None
        if not isinstance(b, list) or len(b) != 4 or not isinstance(b[0], bytes):
            raise BlockError("block is [header_bytes, txs, certificate, cert_view]")
        if not isinstance(b[1], list) or not all(isinstance(t, bytes) for t in b[1]):
            raise BlockError("txs must be a list of byte strings")
        if not isinstance(b[2], list) or not all(
            isinstance(c, list) and len(c) == 2 and type(c[0]) is int and isinstance(c[1], bytes) for c in b[2]
        ):
            raise BlockError("certificate must be a list of [validator_index, signature]")
        header = Header.decode(b[0])
        if type(b[3]) is not int or b[3] < header.view:
            raise BlockError("cert_view must be an integer no lower than the header's view")
        return cls(header, tuple(b[1]), tuple((c[0], c[1]) for c in b[2]), b[3])

    def with_cert(self, cert: Sequence[tuple[int, bytes]], view: int = -1) -> Block:
        """This block with a commit certificate whose votes are over `view` (default: the header's)."""
        return Block(self.header, self.txs, tuple(sorted(cert)), view)

    def check_tx_root(self) -> bool:
        return merkle.root(self.tx_ids) == self.header.tx_root


def max_faulty(n: int) -> int:
    """f: how many of n validators may be byzantine (n >= 3f + 1)."""
    return (n - 1) // 3


def quorum(n: int) -> int:
    """The smallest quorum any two of which share f+1 validators: 2f+1 when n = 3f+1 (n=1 gives 1),
    and still safe for the other sizes (n=3 needs 2, n=5 needs 4)."""
    return (n + max_faulty(n)) // 2 + 1


def availability(n: int) -> int:
    """Holders that make a blob available: 2f+1, so f+1 honest validators hold it and it survives f
    of them losing it. Not quorum(n): no two holder sets need to intersect."""
    return 2 * max_faulty(n) + 1


def verify_cert(block: Block, validators: Sequence[bytes]) -> bool:
    """2f+1 distinct genesis validators signed the commit vote for this block."""
    h = block.header
    digest = vote_digest(h.chain_id, block.cert_view, h.seq, block.hash)
    seen: set[int] = set()
    items = []
    for idx, sig in block.cert:
        if idx in seen or not 0 <= idx < len(validators):
            return False
        seen.add(idx)
        items.append((validators[idx], digest, sig))
    if len(seen) < quorum(len(validators)):
        return False
    return all(verify_batch(items))
