"""The authenticated state tree (node/state/smt.py): proofs, and incremental roots equal to a
from-scratch recomputation over random histories, including across uncommitted tips."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.state import smt


def build(state: dict[bytes, bytes]) -> tuple[bytes, dict[bytes, bytes]]:
    store: dict[bytes, bytes] = {}
    root, nodes = smt.update(store.get, state)
    store.update(nodes)
    return root, store


STATE = {b"k%d" % i: b"v%d" % i for i in range(300)}
ROOT, STORE = build(STATE)


def test_empty_tree():
    assert smt.update({}.get, {}) == (smt.EMPTY_ROOT, {})
    p = smt.prove({}.get, b"x")
    assert p == smt.Proof((), None)
    assert smt.verify(smt.EMPTY_ROOT, b"x", None, p)
    assert not smt.verify(smt.EMPTY_ROOT, b"x", b"v", p)


def test_single_key_is_a_leaf_at_the_root():
    root, store = build({b"a": b"1"})
    assert list(store) == [smt.ROOT_POS] and store[smt.ROOT_POS][0] == smt.LEAF
    assert root == smt.naive_root({b"a": b"1"})
    assert smt.verify(root, b"a", b"1", smt.prove(store.get, b"a"))
    assert smt.verify(root, b"b", None, smt.prove(store.get, b"b"))


def test_membership_for_every_key():
    assert smt.naive_root(STATE) == ROOT
    for k, v in STATE.items():
        p = smt.Proof.decode(smt.prove(STORE.get, k).encode())
        assert smt.verify(ROOT, k, v, p)
        assert not smt.verify(ROOT, k, v + b"x", p)  # another value
        assert not smt.verify(ROOT, k, None, p)  # a member cannot be shown absent


def test_non_membership_both_endings():
    endings = set()
    for i in range(400):
        k = b"absent%d" % i
        p = smt.prove(STORE.get, k)
        endings.add(p.leaf is None)
        assert smt.verify(ROOT, k, None, p)
        assert not smt.verify(ROOT, k, b"v", p)
    assert endings == {True, False}  # paths ending in an empty slot and at another key's leaf


def test_wrong_root_and_proof_for_another_key():
    p = smt.prove(STORE.get, b"k1")
    assert not smt.verify(hashlib.sha256(b"other").digest(), b"k1", b"v1", p)
    assert not smt.verify(ROOT, b"k2", b"v1", p)
    assert not smt.verify(ROOT, b"k2", b"v2", p)
    assert not smt.verify(ROOT, b"k2", None, p)  # k1's leaf is not on k2's path (or is k1, not k2)


def test_truncated_and_extended_paths():
    p = smt.prove(STORE.get, b"k7")
    assert len(p.levels) >= 2
    assert not smt.verify(ROOT, b"k7", b"v7", smt.Proof(p.levels[:-1], p.leaf))
    assert not smt.verify(ROOT, b"k7", b"v7", smt.Proof(p.levels[1:], p.leaf))
    assert not smt.verify(ROOT, b"k7", b"v7", smt.Proof(p.levels + (p.levels[-1],), p.leaf))
    bm, sib = p.levels[0]
    assert not smt.verify(ROOT, b"k7", b"v7", smt.Proof(((bm, sib[:-32]),) + p.levels[1:], p.leaf))
    assert not smt.verify(ROOT, b"k7", b"v7", smt.Proof(((bm, sib + bytes(32)),) + p.levels[1:], p.leaf))
    # an absent key: dropping the leaf or the empty-slot level must not pass either
    q = smt.prove(STORE.get, b"absent1")
    assert not smt.verify(ROOT, b"absent1", None, smt.Proof(q.levels[:-1], None))
    assert not smt.verify(ROOT, b"absent1", None, smt.Proof(q.levels, None if q.leaf else (bytes(32), bytes(32))))


@pytest.mark.parametrize("raw", [b"", b"\x90", b"\x92\x90\x91\x01", b"\x92\x91\x92\x00\xc4\x00\xc0"])
def test_malformed_proofs_refused(raw):
    with pytest.raises(ValueError):
        smt.Proof.decode(raw)


keys_st = st.binary(min_size=1, max_size=3)
block_st = st.dictionaries(keys_st, st.binary(max_size=4), max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(block_st, max_size=8), st.integers(0, 4))
def test_incremental_root_equals_naive(blocks, committed_every):
    """Blocks executed on a chain of uncommitted tips (each a layer of dirty nodes over its parent),
    committed every `committed_every` blocks (0: only at the end): the root after each block equals
    a from-scratch recomputation, and every key has a valid proof."""
    store: dict[bytes, bytes] = {}
    state: dict[bytes, bytes] = {}
    pending: list[dict[bytes, bytes]] = []
    get = store.get
    for i, w in enumerate(blocks):
        root, nodes = smt.update(get, w)
        state.update(w)
        assert root == smt.naive_root(state)
        pending.append(nodes)
        get = smt.layered(nodes, get)
        if committed_every and (i + 1) % committed_every == 0:
            for n in pending:
                store.update(n)
            pending, get = [], store.get
    for n in pending:
        store.update(n)
    root = smt.root_of(store.get)
    assert root == smt.naive_root(state)
    assert store == build(state)[1]  # the same stored nodes as one update from scratch
    for k, v in state.items():
        assert smt.verify(root, k, v, smt.prove(store.get, k))
    for k in (b"\xff\xff\xff\xff", b""):
        assert smt.verify(root, k, None, smt.prove(store.get, k))


@pytest.mark.skipif(smt.update_native is None, reason="native/_smt not built")
@settings(max_examples=200, deadline=None)
@given(st.lists(block_st, max_size=8))
def test_native_and_python_updates_agree(blocks):
    """native/_smt.pyx and the pure-Python update give the same roots and the same dirty nodes."""
    a: dict[bytes, bytes] = {}
    b: dict[bytes, bytes] = {}
    for w in blocks:
        ra, na = smt.update_native(a.get, w) if w else smt.update_py(a.get, w)
        rb, nb = smt.update_py(b.get, w)
        assert ra == rb and na == nb
        a.update(na)
        b.update(nb)


@pytest.mark.skipif(smt.update_native is None, reason="native/_smt not built")
def test_native_matches_on_a_larger_tree():
    import os
    a: dict[bytes, bytes] = {}
    b: dict[bytes, bytes] = {}
    keys_ = []
    for _ in range(5):
        w = {os.urandom(33): os.urandom(20) for _ in range(2000)}
        w.update(dict.fromkeys(keys_[:300], b"new"))
        keys_ = list(w)
        ra, na = smt.update_native(a.get, w)
        rb, nb = smt.update_py(b.get, w)
        assert ra == rb and na == nb
        a.update(na)
        b.update(nb)


# ---- the verifier and the proof parser at their edges (what mutation testing found unchecked) ----

def test_root_of_a_lone_leaf_and_of_a_tree():
    for state in ({b"a": b"1"}, STATE):
        root, store = build(state)
        assert smt.root_of(store.get) == root == smt.naive_root(state)
    assert smt.root_of({}.get) == smt.EMPTY_ROOT


def test_the_python_update_serves_when_the_native_build_is_absent(monkeypatch):
    native_root, native_nodes = smt.update({}.get, STATE)
    monkeypatch.setattr(smt, "update_native", None)
    assert smt.update({}.get, STATE) == (native_root, native_nodes) == smt.update_py({}.get, STATE)
    store = dict(native_nodes)
    more = {b"k%d" % i: b"w%d" % i for i in range(250, 400)}
    root, nodes = smt.update(store.get, more)
    assert root == smt.naive_root({**STATE, **more})


def test_prove_names_the_missing_node():
    store = dict(STORE)
    kh = hashlib.sha256(b"k7").digest()
    depth = len(smt.prove(store.get, b"k7").levels) - 1  # the deepest internal node on its path
    del store[smt.position(kh, depth)]
    with pytest.raises(ValueError, match=f"^tree node missing at depth {depth}$"):
        smt.prove(store.get, b"k7")


def _levels(n: int, bm: int = 1, sib: bytes = b"") -> list:
    return [[bm, sib] for _ in range(n)]


def test_proof_decode_bounds():
    from node.wire import encode
    ok = [(1, b""), (0xFFFF, bytes(32 * 15))]
    for bm, sib in ok:
        assert smt.Proof.decode(encode([[[bm, sib]], None])).levels == ((bm, sib),)
    assert len(smt.Proof.decode(encode([_levels(64), None])).levels) == 64
    big = encode([_levels(64, 0xFFFF, bytes(32 * 15)), [bytes(32), bytes(32)]])  # ~31 KiB: the largest shape
    assert len(big) > 16 * 1024 and len(smt.Proof.decode(big).levels) == 64
    cases = [
        (encode([_levels(65), None]), "proof is \\[levels, leaf\\]"),
        (encode([[[0, b""]], None]), "a proof level is \\[bitmap, sibling hashes\\]"),
        (encode([[[1 << 16, b""]], None]), "a proof level is \\[bitmap, sibling hashes\\]"),
        (encode([[[True, b""]], None]), "a proof level is \\[bitmap, sibling hashes\\]"),
        (encode([[[1, bytes(31)]], None]), "a proof level is \\[bitmap, sibling hashes\\]"),
        (encode([[], [bytes(32)]]), "a proof leaf is \\[key_hash, value_hash\\]"),
        (encode([[], [bytes(32)] * 3]), "a proof leaf is \\[key_hash, value_hash\\]"),
        (encode([[], [bytes(32), bytes(31)]]), "a proof leaf is \\[key_hash, value_hash\\]"),
        (encode([[], ["a" * 32, bytes(32)]]), "a proof leaf is \\[key_hash, value_hash\\]"),
        (encode([[], b"x"]), "a proof leaf is \\[key_hash, value_hash\\]"),
        (encode([[]]), "proof is \\[levels, leaf\\]"),
    ]
    for raw, why in cases:
        with pytest.raises(ValueError, match=f"^{why}$"):
            smt.Proof.decode(raw)
    with pytest.raises(ValueError, match="^proof encoding: "):
        smt.Proof.decode(encode([[], None]) + b"\x00")


def test_verify_takes_a_proof_of_exactly_64_levels():
    # no real tree is that deep (two keys sharing 63 nibbles of SHA-256), but 64 levels is the
    # format's limit, which decode allows: a made-up absence proof folded into its own root verifies
    key = b"any key"
    kh = hashlib.sha256(key).digest()
    levels = []
    for d in range(64):
        nib, other = smt.nibble(kh, d), (smt.nibble(kh, d) + 1) % 16
        levels.append(((1 << other) if d == 63 else (1 << nib) | (1 << other), bytes(32)))
    last = hashlib.sha256(b"\x01" + levels[63][0].to_bytes(2, "big") + levels[63][1]).digest()
    root = _fold(tuple(levels[:63]), kh, last)
    p = smt.Proof(tuple(levels), None)
    assert smt.Proof.decode(p.encode()) == p
    assert smt.verify(root, key, None, p)


def test_verify_refuses_more_than_64_levels():
    # decode already refuses such a proof; verify must not trust that its caller used decode
    p = smt.prove(STORE.get, b"k1")
    deep = smt.Proof(p.levels + ((p.levels[-1]),) * (65 - len(p.levels)), p.leaf)
    assert len(deep.levels) == 65
    assert not smt.verify(ROOT, b"k1", b"v1", deep)


def _with_nibble(kh: bytes, depth: int, nib: int) -> bytes:
    b = bytearray(kh)
    i = depth >> 1
    b[i] = (b[i] & 0xF0) | nib if depth & 1 else (b[i] & 0x0F) | nib << 4
    return bytes(b)


def _fold(levels: tuple, kh: bytes, h: bytes) -> bytes:
    """The root that `levels` (the tree's nodes from the root down) give over `h`, with no checks."""
    for d in range(len(levels) - 1, -1, -1):
        bm, sib = levels[d]
        r = 32 * bin(bm & ((1 << smt.nibble(kh, d)) - 1)).count("1")
        h = hashlib.sha256(b"\x01" + bm.to_bytes(2, "big") + sib[:r] + h + sib[r:]).digest()
    return h


def test_verify_refuses_a_level_that_skips_the_path_even_when_it_hashes_right():
    # An absent key whose path ends in an empty slot at depth d, next to a set slot m: a proof that
    # goes on through that empty slot into m's real subtree (down to an empty slot there) hashes to
    # the real root, since the key's child takes m's rank. Its claim (absent) is true, but the proof
    # is not the tree's: verify refuses a level whose bitmap does not hold the key's nibble.
    for i in range(20_000):
        key = b"absent%d" % i
        kh = hashlib.sha256(key).digest()
        p = smt.prove(STORE.get, key)
        d = len(p.levels) - 1
        if p.leaf is not None or d < 1:
            continue
        bm, children = p.levels[-1]
        nib = smt.nibble(kh, d)
        above = [b for b in range(nib + 1, 16) if bm >> b & 1]
        if not above or above[0] in smt._parse(STORE[smt.position(kh, d)])[2]:
            continue  # no set slot above, or it holds a leaf, not a subtree
        m = above[0]
        crec = STORE[smt.position(_with_nibble(kh, d, m), d + 1)]
        cbm = (crec[1] << 8) | crec[2]
        if cbm >> smt.nibble(kh, d + 1) & 1:
            continue
        r = 32 * bin(bm & ((1 << m) - 1)).count("1")
        levels = p.levels[:-1] + ((bm, children[:r] + children[r + 32:]), (cbm, smt._hash_part(crec)[3:]))
        bad = smt.Proof(levels, None)
        last = hashlib.sha256(smt._hash_part(crec)).digest()
        assert _fold(levels[:-1], kh, last) == ROOT  # what makes it dangerous: it hashes right
        assert not smt.verify(ROOT, key, None, bad)
        assert smt.verify(ROOT, key, None, p)  # the tree's own proof of the same absence passes
        return
    pytest.fail("no absent key of that shape among 20,000")


def test_verify_refuses_a_level_with_a_sibling_missing():
    key = b"k7"
    p = smt.prove(STORE.get, key)
    bm, sib = p.levels[0]
    short = smt.Proof(((bm, sib[:-32]),) + p.levels[1:], p.leaf)
    assert smt.verify(ROOT, key, STATE[key], p)
    assert not smt.verify(ROOT, key, STATE[key], short)


def test_verify_refuses_an_empty_slot_proof_where_the_slot_is_taken():
    # a present key's proof cut at a level and shown as "its slot is empty here" with every child
    # listed: the node hashes right, so only the bitmap check stands between it and a forged absence
    for key in (b"k7", b"k100", b"k299"):
        p = smt.prove(STORE.get, key)
        kh = hashlib.sha256(key).digest()
        for d, (bm, _sib) in enumerate(p.levels):
            rec = STORE[smt.position(kh, d)]
            full = smt.Proof(p.levels[:d] + ((bm, smt._hash_part(rec)[3:]),), None)
            assert bm >> smt.nibble(kh, d) & 1
            assert not smt.verify(ROOT, key, None, full)


def test_root_of_small_trees():
    # a lone leaf whose key hash starts with at most one set bit in its first two bytes (its record
    # is shorter than an internal node's hashed part would be), and a root whose children all sit
    # in nibbles 0-7 (its bitmap's high byte is zero)
    lone = next(b"lone%d" % i for i in range(1_000_000)
                if bin(int.from_bytes(hashlib.sha256(b"lone%d" % i).digest()[:2], "big")).count("1") <= 1)
    low = [k for k in (b"low%d" % i for i in range(200)) if hashlib.sha256(k).digest()[0] >> 4 < 8]
    pair = next((a, b) for a in low for b in low if hashlib.sha256(a).digest()[0] >> 4 != hashlib.sha256(b).digest()[0] >> 4)
    for state in ({lone: b"1"}, {pair[0]: b"x", pair[1]: b"y"}):
        root, store = build(state)
        assert smt.root_of(store.get) == root == smt.naive_root(state)
