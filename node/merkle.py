"""RFC 6962 Merkle trees over 32-byte leaves (transaction ids), with inclusion proofs.

leaf hash = SHA-256(0x00 || leaf), node hash = SHA-256(0x01 || left || right); a tree of n leaves
splits at the largest power of two below n. The domain bytes stop a leaf posing as a node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()


def _leaf(x: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + x).digest()


def _node(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + a + b).digest()


def _levels(hashes: list[bytes]) -> list[list[bytes]]:
    # Bottom-up: pair neighbours, carry an odd last node up unchanged; equals RFC 6962's recursion.
    level = hashes
    out = [level]
    while len(level) > 1:
        nxt = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        out.append(nxt)
        level = nxt
    return out


def root(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        return EMPTY_ROOT
    return Tree(leaves).root


class Tree:
    """A tree's levels, hashed once: its root, and any leaf's audit path without hashing again
    (a status poll per transaction of a block asks for a path each; rebuilding the tree every time
    was O(n) hashes per poll)."""

    __slots__ = ("levels",)

    def __init__(self, leaves: Sequence[bytes]) -> None:
        if not leaves:
            raise ValueError("a tree of no leaves has no paths")
        self.levels = _levels([_leaf(x) for x in leaves])

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def proof(self, index: int) -> list[bytes]:
        """The audit path of leaf `index`, leaf side first (RFC 6962 section 2.1.1): the sibling at
        each level, none where the node is an odd last one carried up unchanged."""
        if not 0 <= index < self.size:
            raise IndexError("leaf index out of range")
        out = []
        for level in self.levels[:-1]:
            sib = index ^ 1
            if sib < len(level):
                out.append(level[sib])
            index >>= 1
        return out


def proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf `index`, leaf-side first (RFC 6962 section 2.1.1)."""
    if not 0 <= index < len(leaves):
        raise IndexError("leaf index out of range")
    return Tree(leaves).proof(index)


def verify(leaf: bytes, index: int, size: int, path: Sequence[bytes], expected_root: bytes) -> bool:
    """Check an audit path (RFC 9162 section 2.1.3.2)."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, _leaf(leaf)
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root
