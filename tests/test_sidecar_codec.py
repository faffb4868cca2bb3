"""node/sidecar.py on its own: the check a validator makes of a write's ciphertext before it admits
it (each reason at its boundary), the submission and forwarded-batch encodings (round trips, chunking,
every malformed shape) and the forwarded-sidecar cache's bounds. Pure functions on real transactions;
tests/test_sidecars.py checks the same rules through running validators' APIs."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.crypto.keys import Identity
from node.ipfs.cid import CODEC_DAG_PB, Cid, multihash_sha256, raw_cid_bytes
from node.sidecar import (
    FORWARD_CHUNK,
    MAX_FORWARD_ITEMS,
    SIDECAR_MAX,
    T_TXS,
    SidecarCache,
    SidecarError,
    check_sidecar,
    decode_forwarded,
    decode_submission,
    encode_submission,
    forward_messages,
    item_obj,
    parse_item,
)
from node.tx import Profile, Tx, Write
from node.wire import WireError, encode

PAT = Identity.from_seed(b"sidecar-codec-patient")


def write(data: bytes, size: int | None = None, cid: bytes | None = None) -> Tx:
    return Tx.build(PAT, "c", 1, Write(1, raw_cid_bytes(data) if cid is None else cid,
                                       len(data) if size is None else size, 0, 1_000, 2_000))


# ---- check_sidecar -----------------------------------------------------------------------------

def test_the_blob_a_write_names_is_accepted_up_to_the_limit() -> None:
    for n in (0, 1, 200, SIDECAR_MAX):
        data = os.urandom(n)
        assert check_sidecar(write(data), data) is None


def test_each_mismatch_is_refused_for_its_reason() -> None:
    data = os.urandom(200)
    tx = write(data)
    assert check_sidecar(Tx.build(PAT, "c", 1, Profile("p", "patient", "", bytes(32))), data) == \
        "a sidecar rides only with a data write"
    assert check_sidecar(tx, data + b"x") == "sidecar is 201 bytes, the write says 200"
    assert check_sidecar(tx, data[:-1]) == "sidecar is 199 bytes, the write says 200"
    other = bytes([data[0] ^ 1]) + data[1:]
    assert check_sidecar(tx, other) == f"sidecar does not hash to {Cid.from_bytes(raw_cid_bytes(data))}"
    big = os.urandom(SIDECAR_MAX + 1)
    assert check_sidecar(write(big), big) == (
        f"sidecar of {SIDECAR_MAX + 1} bytes exceeds {SIDECAR_MAX}: upload larger blobs with POST /v1/blobs")
    dag = Cid(1, CODEC_DAG_PB, multihash_sha256(data)).to_bytes()  # the right digest, the wrong codec
    assert check_sidecar(write(data, cid=dag), data) == (
        f"a sidecar's CID must be raw (one block of at most {SIDECAR_MAX} bytes), not dag-pb")


# ---- submission items ------------------------------------------------------------------------------

def test_parse_item_shapes() -> None:
    assert parse_item(b"tx") == (b"tx", None)
    assert parse_item([b"tx", b"side"]) == (b"tx", b"side")
    assert parse_item([b"tx", b""]) == (b"tx", b"")
    for bad in ([b"tx"], [b"tx", b"a", b"b"], [b"tx", "side"], ["tx", b"side"], 5, None, "tx", [[b"tx"], b"s"]):
        with pytest.raises(SidecarError, match=r"^an item is transaction bytes, or \[transaction bytes, sidecar bytes\]$"):
            parse_item(bad)
    assert item_obj(b"tx", None) == b"tx" and item_obj(b"tx", b"s") == [b"tx", b"s"]


def test_a_submission_round_trips_and_a_bare_transaction_is_itself() -> None:
    data = os.urandom(300)
    tx = write(data)
    assert encode_submission(tx.raw, None) == tx.raw
    assert decode_submission(tx.raw, 1 << 20) == (tx.raw, None)  # a transaction: its first bin is a payload
    assert decode_submission(encode_submission(tx.raw, data), 1 << 20) == (tx.raw, data)
    assert decode_submission(encode_submission(tx.raw, b""), 1 << 20) == (tx.raw, b"")


@pytest.mark.parametrize("body", [
    b"", b"\x92", b"\x92\xc4", b"\x92\xc4\x05abc", b"\x93\xc4\x01a\xc4\x01b\xc4\x01c",
    encode([b"\x91\x01", b"s"]),  # the first bin is not a transaction's encoding
    encode([b"\x92\x01", b"s", b"t"]),
], ids=["empty", "array-header", "bin-header", "truncated", "three", "not-a-tx", "three-bins"])
def test_anything_else_is_left_whole_for_the_transaction_decoder(body: bytes) -> None:
    assert decode_submission(body, 1 << 20) == (body, None)


def test_a_submission_whose_transaction_needs_a_longer_bin_header() -> None:
    # a transaction of 256 bytes or more is a bin16 (0xc5) in the array; above 65,535 a bin32
    # (0xc6): the API refuses that one as too large, after it is taken apart here
    tx = Tx.build(PAT, "c", 1, Profile("p" * 64, "patient", "o" * 64, bytes(32)))
    assert len(tx.raw) > 255
    body = encode_submission(tx.raw, b"side")
    assert body[1:2] == b"\xc5" and decode_submission(body, 1 << 20) == (tx.raw, b"side")
    huge = b"\x92" + bytes(70_000)
    body = encode([huge, b"side"])
    assert body[1:2] == b"\xc6" and decode_submission(body, 1 << 20) == (huge, b"side")


def test_a_submission_whose_sidecar_is_not_bytes_is_refused() -> None:
    # [transaction, sidecar] in shape, with a str for the sidecar: the API answers 400 with this
    with pytest.raises(SidecarError, match="^an item is transaction bytes"):
        decode_submission(encode([b"\x92\x01", "s"]), 1 << 20)


def test_a_submission_over_the_limit_is_left_whole() -> None:
    data = os.urandom(300)
    tx = write(data)
    body = encode_submission(tx.raw, data)
    assert decode_submission(body, len(body)) == (tx.raw, data)
    assert decode_submission(body, len(body) - 1) == (body, None)


# ---- forwarded batches -----------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=300), st.none() | st.binary(max_size=2000)), max_size=40),
       st.integers(64, 8192))
def test_forwarded_batches_round_trip_in_chunks(items: list, chunk: int) -> None:
    msgs = forward_messages(items, chunk)
    assert [it for m in msgs for it in decode_forwarded(m)] == items
    for m in msgs:
        assert m[:2] == bytes([0x92, T_TXS])
        if len(decode_forwarded(m)) > 1:  # only an item bigger than a chunk travels alone over it
            assert len(m) <= chunk + 64
    assert forward_messages([]) == []


def test_chunking_at_the_limit() -> None:
    item = (b"t" * 100, b"s" * 100)  # counted as 100 + 116 + 8 = 224 bytes
    assert len(forward_messages([item] * 4, 4 * 224)) == 1
    assert len(forward_messages([item] * 4, 4 * 224 - 1)) == 2
    assert [len(decode_forwarded(m)) for m in forward_messages([item] * 8, 4 * 224)] == [4, 4]  # each chunk from 0
    assert len(forward_messages([(b"t" * 100, None)] * 2, 216)) == 1  # 108 each without a sidecar
    assert len(forward_messages([(b"t" * 100, None)] * 2, 215)) == 2
    assert len(forward_messages([item] * 1000)) == 1 and FORWARD_CHUNK > 224_000


def test_a_batch_holds_at_most_4096_items_and_more_are_refused_before_decoding() -> None:
    item = (b"t" * 10, None)
    msgs = forward_messages([item] * (2 * MAX_FORWARD_ITEMS + 1))
    assert [len(decode_forwarded(m)) for m in msgs] == [MAX_FORWARD_ITEMS, MAX_FORWARD_ITEMS, 1]
    assert len(decode_forwarded(encode([T_TXS, [b"t"] * MAX_FORWARD_ITEMS]))) == MAX_FORWARD_ITEMS
    for n in (MAX_FORWARD_ITEMS + 1, 70_000, 2**32 - 1):  # array 16 and array 32 headers
        header = bytes([0x92, T_TXS]) + (bytes([0xDC]) + n.to_bytes(2, "big") if n < 2**16
                                          else bytes([0xDD]) + n.to_bytes(4, "big"))
        body = header + b"\xc4\x01t" * min(n, MAX_FORWARD_ITEMS + 1)  # truncated past that: never decoded
        with pytest.raises(SidecarError, match=f"at most {MAX_FORWARD_ITEMS} items, this one declares {n}"):
            decode_forwarded(body)


@pytest.mark.parametrize("obj", [[T_TXS], [T_TXS, b""], [15, []], [T_TXS, [], 1], b"x", 16, [True, []], ["16", []]])
def test_a_malformed_forwarded_batch_is_refused(obj: object) -> None:
    with pytest.raises(SidecarError, match=r"^a forwarded batch is \[16, \[item, \.\.\.\]\]$"):
        decode_forwarded(encode(obj))


def test_a_forwarded_batch_with_a_bad_item_or_over_its_limit_is_refused() -> None:
    with pytest.raises(SidecarError, match="^an item is"):
        decode_forwarded(encode([T_TXS, [b"ok", [b"tx"]]]))
    msg = forward_messages([(b"t" * 100, b"s" * 100)])[0]
    assert decode_forwarded(msg, len(msg)) == [(b"t" * 100, b"s" * 100)]
    with pytest.raises(WireError):
        decode_forwarded(msg, len(msg) - 1)
    with pytest.raises(WireError):
        decode_forwarded(msg[:-1])


# ---- the forwarded-sidecar cache -------------------------------------------------------------------

def test_the_cache_is_bounded_self_verifying_and_counts_bytes() -> None:
    c = SidecarCache(max_bytes=1000)
    a, b, d = b"a" * 400, b"b" * 400, b"d" * 400
    c.add(a)
    c.add(a)  # the same bytes once
    assert c.bytes == 400 and c.get(hashlib.sha256(a).digest()) == a
    c.add(b)
    c.add(d)  # 1,200 bytes: the oldest goes
    assert c.bytes == 800 and c.get(hashlib.sha256(a).digest()) is None
    assert c.get(hashlib.sha256(d).digest()) == d
    c.discard([hashlib.sha256(b).digest(), hashlib.sha256(b"never").digest()])
    assert c.bytes == 400 and c.get(hashlib.sha256(b).digest()) is None
    three = SidecarCache()
    for x in (b"1" * 100, b"2" * 200, b"3" * 300):
        three.add(x)
    three.discard([hashlib.sha256(b"2" * 200).digest()])
    assert three.bytes == 400
    exact = SidecarCache(max_bytes=800)
    exact.add(a)
    exact.add(b)  # exactly at the bound: both stay
    assert exact.bytes == 800 and exact.get(hashlib.sha256(a).digest()) == a
    big = SidecarCache()
    big.add(b"x" * SIDECAR_MAX)
    big.add(b"y" * (SIDECAR_MAX + 1))  # no write can name it: not kept
    assert big.bytes == SIDECAR_MAX and big.get(hashlib.sha256(b"y" * (SIDECAR_MAX + 1)).digest()) is None
