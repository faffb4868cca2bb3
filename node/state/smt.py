"""Authenticated state: a compacted radix-16 sparse Merkle tree over SHA-256(key) (exact bytes in
docs/PROTOCOL.md, "Authenticated state").

Pure: nodes are read through an injected `get(position) -> record | None` and a block's update
returns its dirty nodes as a dict, which the caller keeps with the executed block (an uncommitted
tip) until the ledger writes them in the block's LMDB transaction.

- A node's hash is SHA-256 of its record; the record's first byte separates the two kinds:
  leaf = 0x00 || key_hash(32) || value_hash(32); internal = 0x01 || bitmap(2, big-endian) ||
  the present children's hashes in nibble order. The empty tree's root is 32 zero bytes.
- Compacted: a subtree holding one key is that key's leaf, placed where the key's path first
  leaves every other key's, so a path is ~log16(n)+1 nodes, not 64.
- Stored: an internal node at its position (one byte of depth in nibbles, then the path's nibbles
  packed, an odd last nibble in the high half) as its encoding followed by its leaf children
  inline: leafmask (u16 BE) || kh || value_hash per leaf child, in nibble order. A leaf is never
  stored on its own (except a lone leaf at the root), so a block's commit touches about one
  LMDB page per dirty key instead of two. The state never deletes keys: a position only changes
  from empty (or a leaf inside its parent) to internal, and the tree is canonical for its key set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import native
from node.wire import WireError, decode_canonical, encode

GetNode = Callable[[bytes], "bytes | None"]
EMPTY_ROOT = bytes(32)
LEAF, INTERNAL = 0, 1
ROOT_POS = b"\x00"
MAX_PROOF_BYTES = 64 * (3 + 16 * 32) + 128

_sha = hashlib.sha256


def position(key_hash: bytes, depth: int) -> bytes:
    """Where the node at `depth` nibbles along `key_hash`'s path is stored."""
    if depth & 1:
        i = depth >> 1
        return bytes((depth,)) + key_hash[:i] + bytes((key_hash[i] & 0xF0,))
    return bytes((depth,)) + key_hash[: depth >> 1]


def nibble(key_hash: bytes, depth: int) -> int:
    b = key_hash[depth >> 1]
    return b & 15 if depth & 1 else b >> 4


def root_of(get: GetNode) -> bytes:
    rec = get(ROOT_POS)
    if rec is None:
        return EMPTY_ROOT
    return _sha(rec if rec[0] == LEAF else _hash_part(rec)).digest()


def _parse(rec: bytes) -> tuple[int, dict[int, bytes], dict[int, bytes]]:
    """A stored internal node: (bitmap, child hashes by nibble, inline leaves (kh || vh) by nibble)."""
    bm = (rec[1] << 8) | rec[2]
    hashes, off = {}, 3
    for n in range(16):
        if bm >> n & 1:
            hashes[n] = rec[off:off + 32]
            off += 32
    lm = (rec[off] << 8) | rec[off + 1]
    leaves, off = {}, off + 2
    for n in range(16):
        if lm >> n & 1:
            leaves[n] = rec[off:off + 64]
            off += 64
    return bm, hashes, leaves


def _hash_part(rec: bytes) -> bytes:
    """The hashed prefix of a stored internal node (without its inline leaves)."""
    return rec[:3 + 32 * bin((rec[1] << 8) | rec[2]).count("1")]


def _internal(children: Mapping[int, bytes]) -> bytes:
    bm = 0
    for n in children:
        bm |= 1 << n
    return b"\x01" + bm.to_bytes(2, "big") + b"".join(children[n] for n in sorted(children))


def _stored(children: Mapping[int, bytes], leaves: Mapping[int, bytes]) -> bytes:
    lm = 0
    for n in leaves:
        lm |= 1 << n
    return _internal(children) + lm.to_bytes(2, "big") + b"".join(leaves[n] for n in sorted(leaves))


class _Updater:
    __slots__ = ("get", "out")

    def __init__(self, get: GetNode) -> None:
        self.get = get
        self.out: dict[bytes, bytes] = {}

    def run(self, depth: int, items: list[tuple[bytes, bytes]], rec: bytes | None,
            resident: bytes | None) -> tuple[bytes, bytes | None]:
        """(new hash, kh || vh if the subtree is now one leaf) of the subtree at `depth` on the
        common path of `items` (sorted (key_hash, value_hash) pairs), whose stored internal node is
        `rec`, or whose single leaf is `resident` (kh || vh), or which is empty. Dirty internal
        nodes go to `out`; leaves live inside their parent's record (the root's alone is stored)."""
        if resident is not None and not any(kh == resident[:32] for kh, _ in items):
            items = sorted([*items, (resident[:32], resident[32:])])  # the resident key moves down
        kh0 = items[0][0]
        if rec is None and len(items) == 1:
            leaf = kh0 + items[0][1]
            if depth == 0:
                self.out[ROOT_POS] = b"\x00" + leaf
            return _sha(b"\x00" + leaf).digest(), leaf
        if rec is None:
            hashes: dict[int, bytes] = {}
            leaves: dict[int, bytes] = {}
        else:
            _, hashes, leaves = _parse(rec)
        # group the (sorted) items by their nibble at this depth: each group is one child's update
        d1 = depth + 1
        i, n_items = 0, len(items)
        while i < n_items:
            nib = nibble(items[i][0], depth)
            j = i + 1
            while j < n_items and nibble(items[j][0], depth) == nib:
                j += 1
            group = items[i:j]
            res = leaves.pop(nib, None)
            child = self.get(position(group[0][0], d1)) if nib in hashes and res is None else None
            hashes[nib], kv = self.run(d1, group, child, res)
            if kv is not None:
                leaves[nib] = kv
            i = j
        node = _stored(hashes, leaves)
        self.out[position(kh0, depth)] = node
        return _sha(_hash_part(node)).digest(), None


def update_py(get: GetNode, writes: Mapping[bytes, bytes]) -> tuple[bytes, dict[bytes, bytes]]:
    """The pure-Python update (the reference, and the fallback without the native build)."""
    if not writes:
        return root_of(get), {}
    items = sorted((_sha(k).digest(), _sha(v).digest()) for k, v in writes.items())
    u = _Updater(get)
    rec = get(ROOT_POS)
    if rec is not None and rec[0] == LEAF:
        root, _ = u.run(0, items, None, rec[1:65])
    else:
        root, _ = u.run(0, items, rec, None)
    return root, u.out


_native = native.load("_smt")
update_native: Callable[..., tuple[bytes, dict[bytes, bytes]]] | None = None if _native is None else _native.update
BACKEND = "native" if update_native is not None else "python"


def update(get: GetNode, writes: Mapping[bytes, bytes]) -> tuple[bytes, dict[bytes, bytes]]:
    """Apply one block's state writes (bytes to bytes): the new root and the dirty node records
    (position -> record), each dirty node hashed once. Native (native/_smt.pyx) when built."""
    if not writes:
        return root_of(get), {}
    if update_native is not None:
        return update_native(get, writes)
    return update_py(get, writes)


def layered(nodes: Mapping[bytes, bytes], parent: GetNode) -> GetNode:
    """A node reader for a tip: this block's dirty nodes over its parent's reader."""
    def get(pos: bytes) -> bytes | None:
        v = nodes.get(pos)
        return v if v is not None else parent(pos)
    return get


# ---- proofs ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Proof:
    """The path to a key: per internal node from the root, its bitmap and its other children's
    hashes; then the leaf where the path ends (its key hash and value hash), or None when the path
    ends in an empty slot of the last node (then that node's level carries all its children)."""

    levels: tuple[tuple[int, bytes], ...]
    leaf: tuple[bytes, bytes] | None

    def encode(self) -> bytes:
        return encode([[[bm, sib] for bm, sib in self.levels], None if self.leaf is None else list(self.leaf)])

    @classmethod
    def decode(cls, raw: bytes) -> Proof:
        try:
            p = decode_canonical(raw, MAX_PROOF_BYTES)
        except WireError as exc:
            raise ValueError(f"proof encoding: {exc}") from None
        if not (isinstance(p, list) and len(p) == 2 and isinstance(p[0], list) and len(p[0]) <= 64):
            raise ValueError("proof is [levels, leaf]")
        levels = []
        for lv in p[0]:
            if not (isinstance(lv, list) and len(lv) == 2 and type(lv[0]) is int and 0 < lv[0] < 1 << 16
                    and isinstance(lv[1], bytes) and len(lv[1]) % 32 == 0):
                raise ValueError("a proof level is [bitmap, sibling hashes]")
            levels.append((lv[0], lv[1]))
        leaf = p[1]
        if leaf is not None and not (isinstance(leaf, list) and len(leaf) == 2
                                     and all(isinstance(x, bytes) and len(x) == 32 for x in leaf)):
            raise ValueError("a proof leaf is [key_hash, value_hash]")
        return cls(tuple(levels), None if leaf is None else (leaf[0], leaf[1]))


def prove(get: GetNode, key: bytes) -> Proof:
    kh = _sha(key).digest()
    rec, depth, levels = get(ROOT_POS), 0, []
    if rec is None:
        return Proof((), None)  # the empty tree
    if rec[0] == LEAF:
        return Proof((), (rec[1:33], rec[33:65]))
    while True:
        nib = nibble(kh, depth)
        bm, _, leaves = _parse(rec)
        hp = _hash_part(rec)
        if not bm >> nib & 1:
            levels.append((bm, hp[3:]))  # the path ends in an empty slot: every child is a sibling
            return Proof(tuple(levels), None)
        rank = bin(bm & ((1 << nib) - 1)).count("1")
        levels.append((bm, hp[3:3 + 32 * rank] + hp[3 + 32 * (rank + 1):]))
        if nib in leaves:
            return Proof(tuple(levels), (leaves[nib][:32], leaves[nib][32:]))
        depth += 1
        rec = get(position(kh, depth))
        if rec is None:
            raise ValueError(f"tree node missing at depth {depth}")


def verify(root: bytes, key: bytes, value: bytes | None, proof: Proof) -> bool:
    """True iff `proof` shows that `key` holds `value` (None: that `key` is absent) under `root`."""
    kh = _sha(key).digest()
    levels, n = proof.levels, len(proof.levels)
    if n > 64:
        return False
    if proof.leaf is not None:
        lk, lv = proof.leaf
        if value is not None and (lk != kh or lv != _sha(value).digest()):
            return False
        if value is None and lk == kh:
            return False
        if any(nibble(lk, d) != nibble(kh, d) for d in range(n)):
            return False  # a leaf off the key's path proves nothing about the key
        h = _sha(b"\x00" + lk + lv).digest()
        top = n
    else:
        if value is not None:
            return False
        if n == 0:
            return root == EMPTY_ROOT
        bm, sib = levels[-1]
        if bm >> nibble(kh, n - 1) & 1 or len(sib) != 32 * bin(bm).count("1"):
            return False
        h = _sha(b"\x01" + bm.to_bytes(2, "big") + sib).digest()
        top = n - 1
    for d in range(top - 1, -1, -1):
        bm, sib = levels[d]
        nib = nibble(kh, d)
        cnt = bin(bm).count("1")
        if not bm >> nib & 1 or len(sib) != 32 * (cnt - 1):
            return False
        r = 32 * bin(bm & ((1 << nib) - 1)).count("1")
        h = _sha(b"\x01" + bm.to_bytes(2, "big") + sib[:r] + h + sib[r:]).digest()
    return h == root


def naive_root(state: Mapping[bytes, bytes]) -> bytes:
    """The root recomputed from scratch from the key set (for tests and `medchain verify`)."""
    items = sorted((_sha(k).digest(), _sha(v).digest()) for k, v in state.items())
    if not items:
        return EMPTY_ROOT

    def sub(depth: int, its: list[tuple[bytes, bytes]]) -> bytes:
        if len(its) == 1:
            return _sha(b"\x00" + its[0][0] + its[0][1]).digest()
        groups: dict[int, list[tuple[bytes, bytes]]] = {}
        for it in its:
            groups.setdefault(nibble(it[0], depth), []).append(it)
        return _sha(_internal({nb: sub(depth + 1, g) for nb, g in groups.items()})).digest()

    return sub(0, items)
