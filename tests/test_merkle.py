"""RFC 6962 Merkle trees: roots against the recursive definition, audit paths and their verification."""

from __future__ import annotations

from hashlib import sha256

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node import merkle

MAX_N = 70


def mth(d: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 MTH, written out independently of node.merkle."""
    if not d:
        return sha256(b"").digest()
    if len(d) == 1:
        return sha256(b"\x00" + d[0]).digest()
    k = 1 << ((len(d) - 1).bit_length() - 1)  # largest power of two < n
    return sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()


def rfc_path(m: int, d: list[bytes]) -> list[bytes]:
    """RFC 6962 section 2.1.1 PATH(m, D)."""
    if len(d) <= 1:
        return []
    k = 1 << ((len(d) - 1).bit_length() - 1)
    if m < k:
        return rfc_path(m, d[:k]) + [mth(d[k:])]
    return rfc_path(m - k, d[k:]) + [mth(d[:k])]


def shape(m: int, n: int) -> tuple[str, ...]:
    """The sides of the siblings along leaf m's path in a tree of n leaves, leaf side first."""
    if n <= 1:
        return ()
    k = 1 << ((n - 1).bit_length() - 1)
    return shape(m, k) + ("R",) if m < k else shape(m - k, n - k) + ("L",)


def leaves(n: int) -> list[bytes]:
    return [sha256(b"tx%d" % i).digest() for i in range(n)]


def flip(b: bytes, bit: int = 0) -> bytes:
    x = bytearray(b)
    x[bit // 8 % len(x)] ^= 1 << (bit % 8)
    return bytes(x)


# Published RFC 6962 test data (certificate-transparency's merkle tree tests): leaves and roots.
CT_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


@pytest.mark.parametrize("n", range(1, 9))
def test_published_roots(n):
    d = [bytes.fromhex(x) for x in CT_LEAVES[:n]]
    assert merkle.root(d).hex() == CT_ROOTS[n - 1]
    assert mth(d).hex() == CT_ROOTS[n - 1]


def test_empty_root():
    assert merkle.root([]) == merkle.EMPTY_ROOT == sha256(b"").digest()


def test_small_trees_by_hand():
    a, b, c = b"a", b"b", b"c"
    la, lb, lc = (sha256(b"\x00" + x).digest() for x in (a, b, c))
    assert merkle.root([a]) == la
    assert merkle.root([a, b]) == sha256(b"\x01" + la + lb).digest()
    assert merkle.root([a, b, c]) == sha256(b"\x01" + sha256(b"\x01" + la + lb).digest() + lc).digest()
    assert merkle.root([a, b]) != merkle.root([b, a])


@pytest.mark.parametrize("n", range(1, MAX_N + 1))
def test_root_matches_rfc_definition(n):
    d = leaves(n)
    assert merkle.root(d) == mth(d)


@pytest.mark.parametrize("n", range(1, MAX_N + 1))
def test_every_proof_verifies_and_matches_rfc_path(n):
    d = leaves(n)
    r = mth(d)
    for i in range(n):
        p = merkle.proof(d, i)
        assert p == rfc_path(i, d)
        assert len(p) == len(shape(i, n))
        assert merkle.verify(d[i], i, n, p, r)


@pytest.mark.parametrize("n", range(1, MAX_N + 1))
def test_a_tree_hashed_once_gives_the_rfc_root_and_every_rfc_path(n):
    d = leaves(n)
    t = merkle.Tree(d)
    assert (t.root, t.size) == (mth(d), n)
    assert [t.proof(i) for i in range(n)] == [rfc_path(i, d) for i in range(n)]
    for bad in (-1, n):
        with pytest.raises(IndexError, match="^leaf index out of range$"):
            t.proof(bad)


def test_a_tree_needs_a_leaf():
    with pytest.raises(ValueError, match="^a tree of no leaves has no paths$"):
        merkle.Tree([])


@pytest.mark.parametrize("n", range(1, MAX_N + 1))
def test_tampered_proofs_fail(n):
    d = leaves(n)
    r = mth(d)
    junk = sha256(b"junk").digest()
    for i in range(n):
        p = merkle.proof(d, i)
        assert not merkle.verify(flip(d[i], i), i, n, p, r)  # wrong leaf
        if n > 1:
            assert not merkle.verify(d[(i + 1) % n], i, n, p, r)  # another leaf of the same tree
        assert not merkle.verify(d[i], i, n, p, flip(r, i))  # wrong root
        for j, elem in enumerate(p):  # each path element tampered
            assert not merkle.verify(d[i], i, n, [*p[:j], flip(elem, 7 * j + i), *p[j + 1 :]], r)
        assert not merkle.verify(d[i], i, n, [*p, junk], r)  # extra element at the end
        assert not merkle.verify(d[i], i, n, [junk, *p], r)  # extra element at the start
        assert not merkle.verify(d[i], i, n, [*p, *p[-1:], r], r)  # extra copies of real hashes
        if p:
            assert not merkle.verify(d[i], i, n, p[:-1], r)  # missing last element
            assert not merkle.verify(d[i], i, n, p[1:], r)  # missing first element
        if len(p) > 1:
            assert not merkle.verify(d[i], i, n, p[::-1], r)  # right elements, wrong order
        assert not merkle.verify(d[i], n, n, p, r)  # index == size
        assert not merkle.verify(d[i], -1, n, p, r)
        assert not merkle.verify(d[i], i, 0, p, r)


@pytest.mark.parametrize("n", range(1, MAX_N + 1))
def test_wrong_index_fails(n):
    d = leaves(n)
    r = mth(d)
    for i in range(n):
        p = merkle.proof(d, i)
        others = range(n) if n <= 24 else {0, n - 1, i - 1, i + 1, i ^ 1, i ^ 2, n // 2} - {-1, n}
        for j in others:
            if j != i:
                assert not merkle.verify(d[i], j, n, p, r), (n, i, j)


@pytest.mark.parametrize("n", range(1, MAX_N + 1))
def test_wrong_size_fails_unless_same_path_shape(n):
    """A path fixes the leaf's position only through the tree shape, so a size that gives the same
    sides and length for this index proves the same inclusion; every other size must fail."""
    d = leaves(n)
    r = mth(d)
    for i in range(n):
        p = merkle.proof(d, i)
        failing = 0
        for m in range(1, MAX_N + 3):
            if m == n:
                continue
            ok = merkle.verify(d[i], i, m, p, r)
            assert ok == (i < m and shape(i, m) == shape(i, n)), (n, i, m)
            failing += not ok
        assert failing > 0


def test_leaf_cannot_pose_as_node():
    d = leaves(4)
    l0, l1, l2, l3 = (sha256(b"\x00" + x).digest() for x in d)
    left, right = sha256(b"\x01" + l0 + l1).digest(), sha256(b"\x01" + l2 + l3).digest()
    r = merkle.root(d)
    assert r == sha256(b"\x01" + left + right).digest()
    # The 64 bytes under an inner node, offered as a leaf of a 2-leaf tree, do not verify.
    assert not merkle.verify(l0 + l1, 0, 2, [right], r)
    assert merkle.root([l0 + l1, l2 + l3]) != r


def test_proof_index_out_of_range():
    d = leaves(5)
    for bad in (-1, 5, 6):
        with pytest.raises(IndexError, match="^leaf index out of range$"):
            merkle.proof(d, bad)
    with pytest.raises(IndexError, match="^leaf index out of range$"):
        merkle.proof([], 0)


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=40), st.data())
def test_arbitrary_leaves(d, data):
    i = data.draw(st.integers(0, len(d) - 1))
    r = merkle.root(d)
    assert r == mth(d)
    p = merkle.proof(d, i)
    assert p == rfc_path(i, d)
    assert merkle.verify(d[i], i, len(d), p, r)
    other = data.draw(st.binary(max_size=40).filter(lambda x: x != d[i]))
    assert not merkle.verify(other, i, len(d), p, r)
