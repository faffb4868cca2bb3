"""Blocks and commit certificates (node/block.py): the exact encodings, each malformed form refused for
its own reason, the quorum size, and what a certificate must hold to verify."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from node.block import GENESIS_PREV, Block, BlockError, Header, availability, quorum, verify_cert, vote_digest
from tests.consensus_sim import CHAIN, IDS, make_block, pubs

H32 = bytes(range(32))


def enc(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_header_and_vote_digest_are_the_documented_encodings() -> None:
    h = Header(CHAIN, 5, H32, 2, 7, 1_700, H32[::-1], bytes(32), 3)
    raw = enc([1, CHAIN, 5, H32, 2, 7, 1_700, H32[::-1], bytes(32), 3])
    assert h.encode() == raw and h.hash == hashlib.sha256(raw).digest() and Header.decode(raw) == h
    assert vote_digest(CHAIN, 2, 7, H32) == hashlib.sha256(enc(["medchain/commit", CHAIN, 2, 7, H32])).digest()
    b = Block(h, (b"t1", b"t2"))
    assert b.cert_view == 2 and Block(h, (), (), 4).cert_view == 4  # default: the header's view
    assert b.encode() == enc([raw, [b"t1", b"t2"], [], 2]) and Block.decode(b.encode()) == b
    assert b.tx_ids == [hashlib.sha256(b"t1").digest(), hashlib.sha256(b"t2").digest()]
    c = b.with_cert([(3, b"s3"), (1, b"s1")], 4)
    assert c.cert == ((1, b"s1"), (3, b"s3")) and c.cert_view == 4 and Block.decode(c.encode()) == c
    assert b.with_cert([]).cert_view == 2


def _hdr(**kw: object) -> bytes:
    f = {"v": 1, "chain": CHAIN, "height": 1, "prev": H32, "view": 0, "seq": 1, "t": 5, "txr": H32, "sr": H32,
         "prop": 0, **kw}
    return enc(list(f.values()))


BAD_HEADERS = [
    (b"\xc1", "^header encoding: "),
    (enc([1, CHAIN]), r"^header is \[1, chain_id, height, prev, view, seq, time_ms, tx_root, state_root, proposer\]$"),
    (enc(b"x" * 10), r"^header is \[1, "),
    (_hdr(v=2), r"^header is \[1, "),
    (_hdr(v="1"), r"^header is \[1, "),
    (_hdr(v=True), r"^header is \[1, "),
    (_hdr(chain=b"c"), "^bad header field types$"),
    *((_hdr(**{k: -1}), "^bad header field types$") for k in ("height", "view", "seq", "t", "prop")),
    *((_hdr(**{k: True}), "^bad header field types$") for k in ("height", "view", "seq", "t", "prop")),
    *((_hdr(**{k: H32[:31]}), "^hashes in the header must be 32 bytes$") for k in ("prev", "txr", "sr")),
    *((_hdr(**{k: "x" * 32}), "^hashes in the header must be 32 bytes$") for k in ("prev", "txr", "sr")),
]


@pytest.mark.parametrize("raw,why", BAD_HEADERS)
def test_malformed_headers_are_refused_for_their_own_reason(raw: bytes, why: str) -> None:
    with pytest.raises(BlockError, match=why):
        Header.decode(raw)


def test_a_header_with_zero_fields_decodes() -> None:
    h = Header.decode(_hdr(height=0, view=0, seq=0, t=0, prop=0))
    assert (h.height, h.view, h.seq, h.time_ms, h.proposer) == (0, 0, 0, 0, 0)


GOOD_HDR = _hdr(view=2)
BAD_BLOCKS = [
    (b"\xc1", "^block encoding: "),
    (enc([GOOD_HDR, [], []]), r"^block is \[header_bytes, txs, certificate, cert_view\]$"),
    (enc([GOOD_HDR, [], [], 2, 0]), r"^block is \[header_bytes, "),
    (enc(b"x" * 4), r"^block is \[header_bytes, "),
    (enc(["hdr", [], [], 2]), r"^block is \[header_bytes, "),
    (enc([GOOD_HDR, b"tx", [], 2]), "^txs must be a list of byte strings$"),
    (enc([GOOD_HDR, [b"a", "b"], [], 2]), "^txs must be a list of byte strings$"),
    (enc([GOOD_HDR, [], b"c", 2]), r"^certificate must be a list of \[validator_index, signature\]$"),
    (enc([GOOD_HDR, [], [[0]], 2]), r"^certificate must be a list of \[validator_index, signature\]$"),
    (enc([GOOD_HDR, [], [[0, b"s", 1]], 2]), r"^certificate must be"),
    (enc([GOOD_HDR, [], [[True, b"s"]], 2]), r"^certificate must be"),
    (enc([GOOD_HDR, [], [["0", b"s"]], 2]), r"^certificate must be"),
    (enc([GOOD_HDR, [], [[0, "s"]], 2]), r"^certificate must be"),
    (enc([GOOD_HDR, [], [[0, b"s"], b"x"], 2]), r"^certificate must be"),
    (enc([b"bad header", [], [], 2]), "^header encoding: "),
    (enc([GOOD_HDR, [], [], 1]), "^cert_view must be an integer no lower than the header's view$"),
    (enc([GOOD_HDR, [], [], True]), "^cert_view must be an integer"),
    (enc([GOOD_HDR, [], [], "2"]), "^cert_view must be an integer"),
]


@pytest.mark.parametrize("raw,why", BAD_BLOCKS)
def test_malformed_blocks_are_refused_for_their_own_reason(raw: bytes, why: str) -> None:
    with pytest.raises(BlockError, match=why):
        Block.decode(raw)
    assert Block.decode(enc([GOOD_HDR, [b"a"], [[0, b"s"]], 2])).cert == ((0, b"s"),)


@pytest.mark.parametrize("n", range(1, 14))
def test_quorum_is_the_smallest_size_any_two_of_which_share_f_plus_1(n: int) -> None:
    f = (n - 1) // 3
    smallest = next(q for q in range(1, n + 1) if 2 * q - n >= f + 1)
    assert quorum(n) == smallest
    if n % 3 == 1:
        assert quorum(n) == 2 * f + 1 == n - f  # PBFT's 2f+1, reachable with f silent


@pytest.mark.parametrize("n", range(1, 14))
def test_availability_is_the_fewest_holders_of_which_f_plus_1_are_honest(n: int) -> None:
    """A blob is available once f+1 honest validators hold it, whichever f of its holders lie; the
    count must be reachable with f validators silent, and needs no quorum (n=5: 3 holders, quorum 4)."""
    f = (n - 1) // 3
    assert availability(n) == next(k for k in range(1, n + 1) if k - f >= f + 1)
    assert availability(n) <= n - f and availability(n) <= quorum(n)


def _certified(n: int, signers: list[int], view: int = 0) -> Block:
    b = make_block(1, n=n)
    d = vote_digest(CHAIN, view, 1, b.hash)
    return b.with_cert([(i, IDS[i].sign(d)) for i in signers], view)


@pytest.mark.parametrize("n", [4, 7])
def test_a_certificate_needs_a_quorum_of_distinct_known_validators_who_signed_this_vote(n: int) -> None:
    q, keys = quorum(n), pubs(n)
    good = _certified(n, list(range(q)))
    assert verify_cert(good, keys) and verify_cert(_certified(n, list(range(n))), keys)
    assert verify_cert(_certified(n, list(range(q)), view=3), keys)  # votes over the view it committed in
    assert not verify_cert(_certified(n, list(range(q - 1))), keys)
    dup = Block(good.header, good.txs, good.cert[: q - 1] + good.cert[:1], good.cert_view)
    assert not verify_cert(dup, keys)
    outsider = _certified(8, [*range(q - 1), 7])  # index n and beyond are not validators
    assert not verify_cert(Block(good.header, good.txs, outsider.cert, 0), keys)
    neg = Block(good.header, good.txs, ((-1, good.cert[0][1]), *good.cert[1:]), 0)
    assert not verify_cert(neg, keys)
    forged = Block(good.header, good.txs, ((0, bytes(64)), *good.cert[1:]), 0)
    assert not verify_cert(forged, keys)
    other_view = Block(good.header, good.txs, good.cert, 1)  # the same votes claimed for another view
    assert not verify_cert(other_view, keys)
    other_block = make_block(1, n=n, txs=[b"other"])
    assert not verify_cert(Block(other_block.header, (), good.cert, 0), keys)


def test_tx_root_check() -> None:
    b = make_block(1, txs=[b"a", b"b"])
    assert b.check_tx_root() and not Block(b.header, (b"a",)).check_tx_root()
    assert make_block(1, prev=GENESIS_PREV).header.prev_hash == bytes(32)


def _header_of_size(size: int) -> bytes:
    for n in range(size):  # the chain id's length that makes the encoding exactly `size` bytes
        raw = Header("c" * n, 1, H32, 0, 1, 5, H32, H32, 0).encode()
        if len(raw) == size:
            return raw
    raise AssertionError(size)


def test_size_limits_of_headers_and_blocks() -> None:
    assert Header.decode(_header_of_size(1024)).height == 1
    with pytest.raises(BlockError, match="^header encoding: "):
        Header.decode(_header_of_size(1025))
    big = make_block(1, txs=[bytes(16 * 1024)] * 4)  # a block far above one transaction's limit
    assert Block.decode(big.encode()) == big
