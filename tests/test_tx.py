"""Transactions, key files, sealed keys and blocks: exact encodings and stateless rejection."""

from __future__ import annotations

import os
import re
from itertools import combinations

import pytest
from coincurve import PublicKey
from hypothesis import given
from hypothesis import strategies as st

from node import merkle
from node.block import Block, BlockError, Header, quorum, verify_cert, vote_digest
from node.crypto import ecdsa, seal
from node.crypto.keys import Identity
from node.crypto.seal import SealError
from node.tx import (
    KIND_GRANT,
    KIND_PROFILE,
    KIND_READ,
    KIND_RELEASE,
    KIND_WRITE,
    Grant,
    Profile,
    Read,
    Release,
    SealedKey,
    Tx,
    TxError,
    Write,
)
from node.tx.model import BAD_SIGNATURE, MAX_CID, MAX_NAME
from node.wire import MAX_TX_BYTES, WireError, decode, encode

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
CHAIN = "medchain-test"
ALICE, BOB, STAFF = (Identity.from_seed(s) for s in (b"alice", b"bob", b"staff"))
CID = b"\x01\x55\x12\x20" + ecdsa.sha256(b"blob")
SEALED = seal.seal(STAFF.box_public, bytes(range(32)))
BODIES = {
    KIND_GRANT: Grant(STAFF.address, (1, 3), 0, (SealedKey(1, 0, SEALED), SealedKey(3, 2, SEALED))),
    KIND_PROFILE: Profile("Dr Ada", "doctor", "St Mary", STAFF.box_public),
    KIND_RELEASE: Release(STAFF.address, 4, 1_000, (SealedKey(4, 2, SEALED), SealedKey(4, 3, SEALED))),
    KIND_WRITE: Write(1, CID, 4096, 0, 1_000, 2_000),
    KIND_READ: Read(ALICE.address, 1, CID, 0, 0),
}
OK = {k: b.fields() for k, b in BODIES.items()}
REASONS = (TxError, WireError)
OWN_KEY = object()


def raw_tx(kind=KIND_PROFILE, fields=None, ident=ALICE, chain=CHAIN, nonce=1, version=1, signer=None, pubkey=OWN_KEY):
    payload = encode([version, kind, chain, ident.public_key if pubkey is OWN_KEY else pubkey, nonce,
                      *(OK[kind] if fields is None else fields)])
    return encode([payload, (signer or ident).sign(ecdsa.sha256(payload))])


def with_field(kind, i, value):
    f = list(OK[kind])
    f[i] = value
    return raw_tx(kind, f)


# ---------------------------------------------------------------- transactions


@pytest.mark.parametrize("kind", sorted(BODIES))
def test_build_sign_decode(kind):
    body = BODIES[kind]
    tx = Tx.build(ALICE, CHAIN, 7, body)
    assert tx.payload == encode([1, kind, CHAIN, ALICE.public_key, 7, *body.fields()])
    assert tx.raw == encode([tx.payload, tx.sig]) and len(tx.sig) == 64
    assert tx.id == ecdsa.sha256(tx.raw) and tx.digest == ecdsa.sha256(tx.payload)
    assert ecdsa.verify(ALICE.public_key, tx.digest, tx.sig)
    assert (tx.kind, tx.body, tx.nonce, tx.chain_id, tx.address) == (kind, body, 7, CHAIN, ALICE.address)
    assert Tx.decode(tx.raw, CHAIN) == tx == Tx.decode(tx.raw)
    assert Tx.build(ALICE, CHAIN, 7, body) == tx  # RFC 6979: deterministic, so the id is too
    assert Tx.build(ALICE, CHAIN, 8, body).id != tx.id


def test_revoke_and_range_read():
    assert Tx.decode(Tx.build(ALICE, CHAIN, 1, Grant(STAFF.address, (), 5, ())).raw, CHAIN).body.types == ()
    assert Tx.decode(Tx.build(STAFF, CHAIN, 1, Read(ALICE.address, 5, b"", 10, 20)).raw, CHAIN).body.cid == b""


_cids = st.builds(lambda codec, digest: bytes((1, codec, 0x12, 0x20)) + digest, st.sampled_from([0x55, 0x70]),
                  st.binary(min_size=32, max_size=32))  # CIDv1, raw or dag-pb, sha2-256: what a write names


@given(st.integers(1, 5), _cids, st.integers(0, 1 << 40),
       st.integers(0, 2**32 - 1), st.integers(0, (1 << 63) - 1), st.integers(0, 1000), st.integers(1, (1 << 63) - 1))
def test_write_round_trip(dtype, cid, size, epoch, start, dur, nonce):
    body = Write(dtype, cid, size, epoch, start, min(start + dur, (1 << 63) - 1))
    tx = Tx.build(BOB, CHAIN, nonce, body)
    assert Tx.decode(tx.raw, CHAIN).body == body


def test_a_write_names_its_blob_in_one_form_only():
    """A CIDv0 names the same bytes as its CIDv1 dag-pb twin: a second form of another patient's CID,
    recorded as one's own write, made its writer that blob's patient of record (free to download it).
    Only a CIDv1, raw or dag-pb, with a sha2-256 digest is a write's CID."""
    digest = bytes(range(32))
    for ok in (b"\x01\x55\x12\x20" + digest, b"\x01\x70\x12\x20" + digest):
        assert Write.parse([1, ok, 10, 0, 5, 9]).root.multihash == b"\x12\x20" + digest
    for bad in (b"\x12\x20" + digest,  # the CIDv0 of the dag-pb one
                b"\x01\x55\x12\x20" + digest[:31], b"\x01\x55\x12\x20" + digest + b"\x00",
                b"\x01\x71\x12\x20" + digest,  # dag-cbor
                b"\x01\x55\x13\x40" + digest * 2,  # sha2-512
                b"\x00\x00"):
        with pytest.raises(TxError, match="^cid: a write names a binary CIDv1, raw or dag-pb, with a sha2-256"):
            Write.parse([1, bad, 10, 0, 5, 9])


def test_wrong_chain_id():
    raw = raw_tx()
    with pytest.raises(TxError, match="wrong chain id"):
        Tx.decode(raw, "other-chain")
    with pytest.raises(TxError, match="chain id"):
        Tx.decode(raw_tx(chain="c" * 33))
    with pytest.raises(TxError):
        Tx.decode(raw_tx(chain=b"medchain-test"), CHAIN)


@pytest.mark.parametrize("kind", [0, 0x14, 0x1F, 0x22, 0x30, -1, 1 << 40, "grant", None, b"\x10"])
def test_unknown_kind(kind):
    with pytest.raises(TxError, match="unknown transaction kind"):
        Tx.decode(raw_tx(kind=kind, fields=OK[KIND_PROFILE]), CHAIN)


def test_unhashable_kind():
    with pytest.raises(TxError):
        Tx.decode(raw_tx(kind=[], fields=OK[KIND_PROFILE]))


@pytest.mark.parametrize("version", [0, 2, -1, 256, "1", None, b"\x01"])
def test_unknown_version(version):
    with pytest.raises(TxError, match="unsupported transaction version"):
        Tx.decode(raw_tx(version=version))


def test_bool_version_rejected():
    with pytest.raises(TxError):
        Tx.decode(raw_tx(version=True), CHAIN)


def test_bad_signatures():
    good = Tx.build(ALICE, CHAIN, 3, BODIES[KIND_PROFILE])
    r, s = good.sig[:32], int.from_bytes(good.sig[32:], "big")
    assert s <= N // 2
    high_s = encode([good.payload, r + (N - s).to_bytes(32, "big")])
    other = Tx.build(ALICE, CHAIN, 4, BODIES[KIND_PROFILE])
    bad = [
        high_s,
        raw_tx(nonce=3, signer=BOB),  # signed by another key
        encode([good.payload, other.sig]),  # a valid signature of another payload
        encode([good.payload, bytes(64)]),
        encode([good.payload, good.sig[:-1] + bytes([good.sig[-1] ^ 1])]),
        encode([good.payload, bytes(32) + good.sig[32:]]),
        encode([good.payload, r + N.to_bytes(32, "big")]),
    ]
    for raw in bad:
        with pytest.raises(TxError, match="bad signature"):
            Tx.decode(raw, CHAIN)
        assert Tx.decode(raw, CHAIN, check_sig=False).payload == good.payload
    assert BAD_SIGNATURE.startswith("bad signature")
    for sig in (good.sig[:63], good.sig + b"\x00", b""):
        with pytest.raises(TxError, match="64 bytes"):
            Tx.decode(encode([good.payload, sig]), CHAIN)


def test_truncated_and_oversized():
    raw = Tx.build(ALICE, CHAIN, 1, BODIES[KIND_GRANT]).raw
    for cut in range(len(raw)):
        with pytest.raises(REASONS):
            Tx.decode(raw[:cut], CHAIN)
    with pytest.raises(WireError, match="trailing"):
        Tx.decode(raw + b"\x00", CHAIN)
    big = raw_tx(KIND_WRITE, [1, bytes(MAX_TX_BYTES), 1, 0, 0, 0])
    assert len(big) > MAX_TX_BYTES
    with pytest.raises(WireError, match="limit"):
        Tx.decode(big, CHAIN)


def test_non_canonical_encodings():
    head = b"".join(encode(x) for x in [1, KIND_PROFILE, CHAIN, ALICE.public_key])
    tail = b"".join(encode(x) for x in OK[KIND_PROFILE])
    payload = b"\x99" + head + b"\xcc\x05" + tail  # nonce 5 as uint8
    assert payload.replace(b"\xcc\x05", b"\x05") == encode([1, KIND_PROFILE, CHAIN, ALICE.public_key, 5,
                                                             *OK[KIND_PROFILE]])
    with pytest.raises(WireError, match="non-canonical"):
        Tx.decode(encode([payload, ALICE.sign(ecdsa.sha256(payload))]), CHAIN)
    good = Tx.build(ALICE, CHAIN, 5, BODIES[KIND_PROFILE])
    outer = b"\x92\xc5" + len(good.payload).to_bytes(2, "big") + good.payload + encode(good.sig)  # bin16
    assert len(good.payload) < 256
    with pytest.raises(WireError, match="non-canonical"):
        Tx.decode(outer, CHAIN)


@pytest.mark.parametrize("raw", [
    encode(1), encode([b"x"]), encode([b"x", bytes(64), b""]), encode(["payload", bytes(64)]),
    encode([encode([1, KIND_PROFILE, CHAIN]), bytes(64)]), encode([encode({"a": 1}), bytes(64)]),
    encode([encode("not a list"), bytes(64)]), encode([encode(1.5), bytes(64)]),
])
def test_malformed_structure(raw):
    with pytest.raises(REASONS):
        Tx.decode(raw, CHAIN)


@pytest.mark.parametrize("types, keys, why", [
    ([3, 1], [], "sorted"), ([1, 1], [], "sorted and unique"), ([1, 6], [], "unknown data type"),
    ([0], [], "unknown data type"), ([True], [], "unknown data type"), ([1, 2, 3, 4, 5, 5], [], "list of data"),
    ("heart_rate", [], "list of data"), ([1], [[2, 0, SEALED]], "not granted"), ([1], [[1, 0, b""]], "sealed key"),
    ([1], [[1, 0, bytes(129)]], "sealed key"), ([1], [[1, 2**32, SEALED]], "epoch"), ([1], [[1, 0]], "each sealed"),
    ([1], [[1, 0, SEALED]] * 65, "at most 64"), ([1], [[1, True, SEALED]], "epoch"),
    ([], [[1, 0, SEALED]], "not granted"),
])
def test_bad_grants(types, keys, why):
    with pytest.raises(TxError, match=why):
        Tx.decode(raw_tx(KIND_GRANT, [STAFF.address, types, 0, keys]), CHAIN)


def test_grant_limits_accepted():
    Tx.decode(raw_tx(KIND_GRANT, [STAFF.address, [1, 2, 3, 4, 5], 0, [[5, 2**32 - 1, bytes(128)]] * 64]), CHAIN)
    with pytest.raises(TxError):
        Tx.decode(raw_tx(KIND_GRANT, [STAFF.address[:31], [1], 0, []]), CHAIN)
    with pytest.raises(TxError):
        Tx.decode(raw_tx(KIND_GRANT, [STAFF.address, [1], -1, []]), CHAIN)


@pytest.mark.parametrize("kind, i, ok, bad", [
    (KIND_PROFILE, 0, "n" * MAX_NAME, "n" * (MAX_NAME + 1)),
    (KIND_PROFILE, 0, "é" * 32, "é" * 33),  # the limit is in UTF-8 bytes, not characters
    (KIND_PROFILE, 1, "r" * 64, "r" * 65),
    (KIND_PROFILE, 2, "o" * 64, b"o"),
    (KIND_PROFILE, 3, bytes(32), bytes(33)),
    (KIND_WRITE, 0, 5, 6),
    (KIND_WRITE, 1, CID, CID[:-1]),  # a write's CID: CIDv1, raw or dag-pb, sha2-256 (36 bytes)
    (KIND_WRITE, 1, b"\x01\x70\x12\x20" + bytes(32), b"\x12\x20" + bytes(32)),  # not its CIDv0 twin
    (KIND_WRITE, 2, 1 << 40, (1 << 40) + 1),
    (KIND_WRITE, 3, 2**32 - 1, 2**32),
    (KIND_WRITE, 5, 1_000, 999),  # t_end before t_start
    (KIND_READ, 0, bytes(32), bytes(33)),
    (KIND_READ, 2, bytes(MAX_CID), bytes(MAX_CID + 1)),
    (KIND_READ, 4, 0, -1),
])
def test_field_limits(kind, i, ok, bad):
    assert Tx.decode(with_field(kind, i, ok), CHAIN).kind == kind
    with pytest.raises(TxError):
        Tx.decode(with_field(kind, i, bad), CHAIN)


@pytest.mark.parametrize("kind, i", [
    (KIND_GRANT, 2), (KIND_WRITE, 0), (KIND_WRITE, 2), (KIND_WRITE, 3), (KIND_WRITE, 4), (KIND_WRITE, 5),
    (KIND_READ, 1), (KIND_READ, 3), (KIND_READ, 4),
])
@pytest.mark.parametrize("value", [True, False])
def test_bool_where_int_expected(kind, i, value):
    with pytest.raises(TxError):
        Tx.decode(with_field(kind, i, value), CHAIN)


@pytest.mark.parametrize("kind", sorted(BODIES))
def test_wrong_field_count(kind):
    extra = 1 + (kind == KIND_PROFILE)  # a profile may carry a 5th field, its credential
    for fields in (OK[kind][:-1], [*OK[kind], *[[ALICE.public_key, 1, bytes(64)]] * extra], []):
        with pytest.raises(TxError, match="takes"):
            Tx.decode(raw_tx(kind, fields), CHAIN)


@pytest.mark.parametrize("nonce", [0, -1, 1 << 63, True, False, None, "1"])
def test_bad_nonce(nonce):
    with pytest.raises(TxError, match="nonce"):
        Tx.decode(raw_tx(nonce=nonce), CHAIN)


def test_nonce_limits_accepted():
    assert Tx.decode(raw_tx(nonce=(1 << 63) - 1), CHAIN).nonce == (1 << 63) - 1


@pytest.mark.parametrize("pubkey", [
    bytes.fromhex("04") + ALICE.public_key[1:] + bytes(32),  # 65 bytes
    b"\x05" + ALICE.public_key[1:],  # bad prefix
    b"\x02" + b"\xff" * 32,  # x >= p
    PublicKey(ALICE.public_key).format(compressed=False),  # the signer's own key, uncompressed
    ALICE.public_key[:32], ALICE.public_key + b"\x00", bytes(33), "02" * 33, None,
])
def test_invalid_sender_pubkey(pubkey):
    with pytest.raises(TxError, match="sender"):
        Tx.decode(raw_tx(pubkey=pubkey), CHAIN)


# ---------------------------------------------------------------- key files and sealed keys


def test_identity_save_load(tmp_path):
    ident = Identity.generate()
    path = tmp_path / "sub" / "key.json"
    old = os.umask(0)  # the 0600 must come from the code, not from the umask
    try:
        ident.save(path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Identity.load(path) == ident
    assert ident.address == ecdsa.sha256(ident.public_key) and len(ident.public_key) == 33
    assert not (tmp_path / "sub" / "key.json.tmp").exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_identity_load_refuses_readable_files(tmp_path, mode):
    path = tmp_path / "key.json"
    Identity.from_seed(b"x").save(path)
    os.chmod(path, mode)
    with pytest.raises(PermissionError, match="0600"):
        Identity.load(path)
    os.chmod(path, 0o400)
    assert Identity.load(path) == Identity.from_seed(b"x")


def test_identity_load_rejects_mismatch_and_garbage(tmp_path):
    path = tmp_path / "key.json"
    Identity.from_seed(b"x").save(path)
    text = path.read_text()
    path.write_text(text.replace(Identity.from_seed(b"x").public_key.hex(), BOB.public_key.hex()))
    with pytest.raises(ValueError, match="does not match"):
        Identity.load(path)
    path.write_text('{"secp256k1_secret": "zz"}')
    with pytest.raises(ValueError, match="not a medchain key file"):
        Identity.load(path)


def test_identity_save_ignores_leftover_tmp_mode(tmp_path):
    path = tmp_path / "key.json"
    (tmp_path / "key.json.tmp").write_text("")
    os.chmod(tmp_path / "key.json.tmp", 0o644)
    Identity.from_seed(b"x").save(path)
    assert path.stat().st_mode & 0o777 == 0o600


def test_sealed_box():
    key = os.urandom(32)
    sealed = seal.seal(STAFF.box_public, key)
    assert len(sealed) == 32 + seal.SEALED_OVERHEAD and key not in sealed
    assert seal.seal(STAFF.box_public, key) != sealed  # fresh ephemeral key each time
    assert seal.unseal(STAFF.box_secret, sealed) == key
    with pytest.raises(SealError):
        seal.unseal(BOB.box_secret, sealed)
    with pytest.raises(SealError):
        seal.unseal(STAFF.box_secret, sealed[:-1] + bytes([sealed[-1] ^ 1]))
    with pytest.raises(SealError):
        seal.unseal(STAFF.box_secret, sealed[:40])
    with pytest.raises(SealError):
        seal.seal(STAFF.box_public[:31], key)


# ---------------------------------------------------------------- blocks


def header(**kw):
    base = dict(chain_id=CHAIN, height=1, prev_hash=bytes(32), view=0, seq=1, time_ms=5, tx_root=bytes(32),
                state_root=b"\x01" * 32, proposer=0)
    return Header(**{**base, **kw})


@given(st.text(max_size=32), *(st.integers(0, (1 << 63) - 1) for _ in range(3)), st.binary(min_size=32, max_size=32),
       st.integers(0, (1 << 63) - 1), st.binary(min_size=32, max_size=32), st.integers(0, 1000))
def test_header_round_trip(chain_id, height, view, seq, root, t, prev, proposer):
    h = Header(chain_id, height, prev, view, seq, t, root, root, proposer)
    assert Header.decode(h.encode()) == h
    assert h.hash == ecdsa.sha256(h.encode())


@pytest.mark.parametrize("fields", [
    [2, CHAIN, 1, bytes(32), 0, 1, 5, bytes(32), bytes(32), 0],
    [1, CHAIN, 1, bytes(32), 0, 1, 5, bytes(32), bytes(32)],
    [1, CHAIN, -1, bytes(32), 0, 1, 5, bytes(32), bytes(32), 0],
    [1, CHAIN, 1, bytes(31), 0, 1, 5, bytes(32), bytes(32), 0],
    [1, CHAIN, 1, bytes(32), 0, 1, 5, bytes(32), "x" * 32, 0],
    [1, b"chain", 1, bytes(32), 0, 1, 5, bytes(32), bytes(32), 0],
    [1, CHAIN, 1, bytes(32), 0, 1, None, bytes(32), bytes(32), 0],
])
def test_header_decode_rejects(fields):
    with pytest.raises(BlockError):
        Header.decode(encode(fields))


def test_header_rejects_bool_ints():
    with pytest.raises(BlockError):
        Header.decode(encode([1, CHAIN, True, bytes(32), 0, 1, 5, bytes(32), bytes(32), 0]))


def test_block_round_trip():
    txs = tuple(Tx.build(ALICE, CHAIN, i, BODIES[KIND_WRITE]).raw for i in range(1, 4))
    root = merkle.root([ecdsa.sha256(t) for t in txs])
    b = Block(header(tx_root=root), txs).with_cert([(2, b"b" * 64), (0, b"a" * 64)])
    assert b.cert == ((0, b"a" * 64), (2, b"b" * 64))
    assert Block.decode(b.encode()) == b and b.check_tx_root()
    assert b.hash == ecdsa.sha256(b.header.encode()) and b.tx_ids == [Tx.decode(t).id for t in txs]
    assert not Block(header(), txs).check_tx_root()


GOOD_HEADER = header().encode()


@pytest.mark.parametrize("raw", [
    b"", b"\xc1", encode([GOOD_HEADER, [], []]) + b"\x00", encode(GOOD_HEADER), encode([GOOD_HEADER, []]),
    encode([GOOD_HEADER, [], [], []]), encode(["header", [], []]), encode([GOOD_HEADER, b"txs", []]),
    encode([GOOD_HEADER, [1], []]), encode([GOOD_HEADER, [], b"cert"]), encode([GOOD_HEADER, [], [[0, b"s", 1]]]),
    encode([GOOD_HEADER, [], [["0", b"s"]]]), encode([GOOD_HEADER, [], [[0, 1]]]), encode({"h": GOOD_HEADER}),
    encode([encode([2, *decode(GOOD_HEADER)[1:]]), [], []]),  # header version 2
    b"\x93\xc5\x00" + bytes([len(GOOD_HEADER)]) + GOOD_HEADER + b"\x90\x90",  # bin16 header: non-canonical
])
def test_block_decode_rejects(raw):
    with pytest.raises(BlockError):
        Block.decode(raw)


@pytest.mark.parametrize("hdr", [b"\xc1", b"", GOOD_HEADER + b"\x00", b"\x9a\xcc\x01" + GOOD_HEADER[2:], bytes(2000)])
def test_block_decode_wraps_header_wire_errors(hdr):
    with pytest.raises(BlockError):
        Block.decode(encode([hdr, [], []]))


VALS = [Identity.from_seed(b"validator-%d" % i) for i in range(4)]


def certified(n, signers, blk=None, digest=None):
    blk = blk or Block(header(view=2, seq=9), ())
    h = blk.header
    digest = digest or vote_digest(h.chain_id, h.view, h.seq, blk.hash)
    return blk.with_cert([(i, VALS[i].sign(digest)) for i in signers]), [v.public_key for v in VALS[:n]]


def test_quorum_values():
    assert [quorum(n) for n in (1, 4, 7, 10)] == [1, 3, 5, 7]


def test_verify_cert_accepts_quorums():
    assert verify_cert(*certified(1, [0]))
    for signers in combinations(range(4), 3):
        assert verify_cert(*certified(4, signers))
    assert verify_cert(*certified(4, range(4)))


def test_verify_cert_rejects():
    blk, vals = certified(4, [0, 1, 2])
    sigs = dict(blk.cert)
    assert not verify_cert(*certified(1, []))
    for signers in combinations(range(4), 2):
        assert not verify_cert(*certified(4, signers))  # too few
    assert not verify_cert(blk.with_cert([(0, sigs[0]), (0, sigs[0]), (1, sigs[1])]), vals)  # duplicate
    assert not verify_cert(blk.with_cert([*blk.cert, (1, sigs[1])]), vals)
    for bad in (4, -1, 100):
        assert not verify_cert(blk.with_cert([*blk.cert, (bad, sigs[0])]), vals)  # unknown index
    assert not verify_cert(blk.with_cert([(0, sigs[0]), (1, sigs[1]), (3, sigs[2])]), vals)  # sig of another
    s = int.from_bytes(sigs[2][32:], "big")
    flipped = sigs[2][:-1] + bytes([sigs[2][-1] ^ 1])
    for wrong in (sigs[2][:32] + (N - s).to_bytes(32, "big"), bytes(64), sigs[2][:63], flipped):
        assert not verify_cert(blk.with_cert([(0, sigs[0]), (1, sigs[1]), (2, wrong)]), vals)
    other = Block(header(view=2, seq=9, time_ms=6), ())
    assert not verify_cert(Block(other.header, (), blk.cert), vals)  # a certificate for another block
    h = blk.header
    for d in (vote_digest(h.chain_id, h.view + 1, h.seq, blk.hash), vote_digest("x", h.view, h.seq, blk.hash)):
        assert not verify_cert(*certified(4, [0, 1, 2], blk, d))
    assert not verify_cert(*certified(1, [0], blk, ecdsa.sha256(blk.hash)))


def test_quorums_intersect_in_an_honest_validator():
    for n in range(1, 20):
        f = (n - 1) // 3
        assert 2 * quorum(n) - n >= f + 1 and quorum(n) <= n - f, n


def test_build_batch_equals_one_by_one():
    """The load generator's batch signing gives byte-identical, valid transactions (RFC 6979)."""
    ident = Identity.from_seed(b"batch-signer")
    bodies = [Profile(f"n{i}", "r", "o", bytes(32)) for i in range(50)]
    batch = Tx.build_batch(ident, "c", 7, bodies)
    single = [Tx.build(ident, "c", 7 + i, b) for i, b in enumerate(bodies)]
    assert [t.raw for t in batch] == [t.raw for t in single]
    assert [Tx.decode(t.raw, "c").nonce for t in batch] == list(range(7, 57))


def test_only_the_two_families_are_admitted():
    """Every kind byte: exactly grant, profile, policy, release (access, 0x1_) and write, read (data, 0x2_) parse."""
    from node.tx.model import _PARSERS, FAMILIES, KIND_POLICY
    assert set(_PARSERS) == {KIND_GRANT, KIND_PROFILE, KIND_POLICY, KIND_RELEASE, KIND_WRITE, KIND_READ}
    assert {k & 0xF0 for k in _PARSERS} == set(FAMILIES)
    for kind in range(256):
        if kind not in _PARSERS:
            with pytest.raises(TxError, match="unknown transaction kind"):
                Tx.decode(raw_tx(kind=kind, fields=OK[KIND_PROFILE]), CHAIN)


# --- the parser's fast paths against the field checks they inline --------------------------------

_edgy_ints = st.sampled_from([0, 1, 5, 6, 2**32 - 1, 2**32, 1 << 40, (1 << 40) + 1, 2**63 - 1, 2**63, -1])
_write_field = st.one_of(_edgy_ints, st.booleans(), st.none(), st.binary(max_size=130), st.text(max_size=3))


def _write_reference(f: list) -> Write:
    """Write.parse as each field's helper checks it (the fast path must give the same answer)."""
    from node.tx.model import MAX_CID, _bytes, _dtype, _uint
    if len(f) != 6:
        raise TxError("write takes 6 fields: type, cid, size, epoch, t_start_ms, t_end_ms")
    w = Write(_dtype(f[0]), _bytes(f[1], "cid", 2, MAX_CID), _uint(f[2], "size", 1 << 40),
              _uint(f[3], "epoch", 2**32 - 1), _uint(f[4], "t_start_ms"), _uint(f[5], "t_end_ms"))
    if w.t_end_ms < w.t_start_ms:
        raise TxError("t_end_ms before t_start_ms")
    if not (len(w.cid) == 36 and w.cid[:4] in (b"\x01\x55\x12\x20", b"\x01\x70\x12\x20")):
        raise TxError("cid: a write names a binary CIDv1, raw or dag-pb, with a sha2-256 digest (36 bytes)")
    return w


@given(st.lists(_write_field, min_size=5, max_size=7), st.data())
def test_write_parse_fast_path_agrees_with_the_field_checks(fields: list, data) -> None:
    if len(fields) == 6 and data.draw(st.booleans()):  # mostly-valid writes, so the fast path runs
        fields[0] = data.draw(st.sampled_from([1, 5, 0, 6, True]))
        fields[1] = data.draw(st.one_of(st.binary(min_size=0, max_size=130), _cids))
    try:
        want = _write_reference(fields)
    except TxError as exc:
        with pytest.raises(TxError, match="^" + re.escape(str(exc))):
            Write.parse(fields)
        return
    got = Write.parse(fields)
    assert got == want and hash(got) == hash(want) and got.fields() == want.fields()
    with pytest.raises(AttributeError):
        got.size = 1  # still frozen


def test_a_decoded_transaction_equals_the_one_built() -> None:
    ident = Identity.from_seed(b"\x01" * 16)
    built = Tx.build(ident, "c", 3, Write(2, b"\x01\x55\x12\x20" + bytes(32), 10, 0, 5, 9))
    got = Tx.decode(built.raw, "c")
    assert got == built and got.address == built.address == ecdsa.sha256(ident.public_key)
    assert got.body.root == built.body.root and got.body.root.to_bytes() == built.body.cid
