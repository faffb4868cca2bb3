"""The crypto wrappers' contracts beyond the vectors (node/crypto/aead.py, seal.py, ecdsa.py, keys.py): defaults that
must interoperate with the library underneath, and refusals that say exactly why (a refusal for
another reason than the one a test aims at would hide the bug it aims at)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading

import pytest
from coincurve import PrivateKey as PrivateKeyCC
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.public import PrivateKey, SealedBox

from node.crypto import aead, ecdsa, seal
from node.crypto.aead import AeadError
from node.crypto.keys import Identity, address_of

KEY, NONCE = bytes(range(32)), bytes(range(12))


def test_aead_default_associated_data_is_empty() -> None:
    # what another implementation (the native loop, a phone) produces with empty associated data
    ref = AESGCM(KEY).encrypt(NONCE, b"reading", b"")
    assert aead.seal(KEY, NONCE, b"reading") == ref
    assert aead.open_(KEY, NONCE, ref) == b"reading"


@pytest.mark.parametrize("size", [0, 20, 31, 33])
def test_aead_key_size_refusals_name_the_size_in_bits(size: int) -> None:
    msg = f"^unsupported AES key size {size * 8} bits$"
    for call in (lambda k: aead.seal(k, NONCE, b""), lambda k: aead.open_(k, NONCE, bytes(16)),
                 lambda k: aead.seal_batch(k, []), lambda k: aead.open_batch(k, [])):
        with pytest.raises(AeadError, match=msg):
            call(bytes(size))


@pytest.mark.parametrize("size", [0, 11, 13, 16])
def test_aead_nonce_size_refusals_name_the_size(size: int) -> None:
    msg = rf"^unsupported nonce size {size} bytes \(only 12\)$"
    for call in (lambda n: aead.seal(KEY, n, b""), lambda n: aead.open_(KEY, n, bytes(16)),
                 lambda n: aead.seal_batch(KEY, [(n, b"", b"")]), lambda n: aead.open_batch(KEY, [(n, bytes(16), b"")])):
        with pytest.raises(AeadError, match=msg):
            call(bytes(size))


def test_aead_open_says_why_it_refuses() -> None:
    with pytest.raises(AeadError, match="^ciphertext shorter than the tag$"):
        aead.open_(KEY, NONCE, bytes(15))
    sealed = aead.seal(KEY, NONCE, b"x", b"ad")
    with pytest.raises(AeadError, match="^authentication failed: wrong key, nonce, associated data or tampered bytes$"):
        aead.open_(KEY, NONCE, sealed, b"other")
    assert aead.open_batch(KEY, [(NONCE, bytes(15), b""), (NONCE, sealed, b"ad"), (NONCE, sealed, b"")]) == \
        [None, b"x", None]


def test_seal_round_trip_and_refusals() -> None:
    box = PrivateKey(bytes(range(32)))
    sealed = seal.seal(bytes(box.public_key), b"data key")
    assert len(sealed) == len(b"data key") + seal.SEALED_OVERHEAD
    assert SealedBox(box).decrypt(sealed) == b"data key"  # what PyNaCl itself opens
    assert seal.unseal(bytes(box), sealed) == b"data key"
    assert seal.public_key(bytes(box)) == bytes(box.public_key)
    with pytest.raises(seal.SealError, match="^X25519 public key must be 32 bytes$"):
        seal.seal(bytes(31), b"data key")
    with pytest.raises(seal.SealError, match="^sealed key does not open with this key: "):
        seal.unseal(bytes(32), sealed)


# ---- ECDSA (node/crypto/ecdsa.py) ------------------------------------------------------------------

SK = ecdsa.sha256(b"crypto core")
PK = ecdsa.public_key(SK)


def test_sign_refuses_a_digest_that_is_not_32_bytes() -> None:
    for n in (0, 31, 33):
        with pytest.raises(ValueError, match="^digest must be 32 bytes$"):
            ecdsa.sign(SK, bytes(n))


def test_sign_refuses_a_secret_out_of_range_or_not_32_bytes_and_matches_coincurve_at_the_edges() -> None:
    """ecdsa.sign calls libsecp256k1 itself (no PrivateKey, whose two public keys cost more than
    the signature): it refuses what PrivateKey refused, and signs as it did at the range's ends."""
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    d = ecdsa.sha256(b"edge")
    for bad in (bytes(32), n.to_bytes(32, "big"), (n + 1).to_bytes(32, "big"), b"\xff" * 32):
        with pytest.raises(ValueError, match="^invalid secret"):
            ecdsa.sign(bad, d)
    for bad in (bytes(31), bytes(33), b""):
        with pytest.raises(ValueError, match="^secret must be 32 bytes$"):
            ecdsa.sign(bad, d)
    for k in (1, 2, n - 1):
        sk = k.to_bytes(32, "big")
        assert ecdsa.sign(sk, d) == PrivateKeyCC(sk).sign_recoverable(d, hasher=None)[:64]
        assert ecdsa.sign(bytearray(sk), d) == ecdsa.sign(sk, d)
        assert ecdsa.verify(ecdsa.public_key(sk), d, ecdsa.sign(sk, d))


def test_verify_refuses_each_wrong_length_on_its_own() -> None:
    d = ecdsa.sha256(b"m")
    sig = ecdsa.sign(SK, d)
    assert ecdsa.verify(PK, d, sig)
    uncompressed = PrivateKeyCC(SK).public_key.format(compressed=False)
    for pk, dg, s in ((PK, d, sig + b"\x00"), (PK, d, sig[:63]), (PK, d + b"\x00", sig), (PK, d[:31], sig),
                      (uncompressed, d, sig), (PK + b"\x00", d, sig), (PK[:32], d, sig)):
        assert ecdsa.verify(pk, dg, s) is False
    assert ecdsa.compress(uncompressed) == PK and ecdsa.compress(PK) == PK
    assert ecdsa.verify(b"\x02" + bytes(32), d, sig) is False  # not a point on the curve
    assert ecdsa.valid_pubkey(PK) and not ecdsa.valid_pubkey(bytearray(PK)) and not ecdsa.valid_pubkey(PK[:32])
    assert not ecdsa.valid_pubkey(b"\x02" + bytes(32)) and not ecdsa.valid_pubkey(uncompressed)


@pytest.mark.parametrize("n", [1, 63, 64, 65, 130])
def test_verify_batch_fallback_keeps_order_on_both_halves(n: int) -> None:
    ds = [ecdsa.sha256(bytes([i])) for i in range(n)]
    sigs = [ecdsa.sign(SK, d) for d in ds]
    bad = {0, n // 2, n - 1}  # the first, the split point and the last
    items = [(PK, d, sigs[(i + 1) % n] if i in bad and n > 1 else s) for i, (d, s) in enumerate(zip(ds, sigs, strict=True))]
    want = [not (i in bad and n > 1) for i in range(n)]
    assert ecdsa.verify_batch_fallback(items) == want
    assert ecdsa.verify_batch_fallback(tuple(items)) == want


# ---- identities and key files (node/crypto/keys.py) ------------------------------------------------

def test_identity_from_seed_and_its_derived_keys_are_the_documented_ones() -> None:
    ident = Identity.from_seed(b"alice")
    assert ident.secret == hashlib.sha256(b"medchain/seed/secp256k1/alice").digest()
    assert ident.box_secret == hashlib.sha256(b"medchain/seed/x25519/alice").digest()
    assert ident.public_key == PrivateKeyCC(ident.secret).public_key.format(compressed=True)
    assert ident.address == hashlib.sha256(ident.public_key).digest() == address_of(ident.public_key)
    assert ident.box_public == bytes(PrivateKey(ident.box_secret).public_key)
    assert ident.p2p_secret == hashlib.sha256(b"medchain/libp2p/v1" + ident.secret).digest()
    assert ecdsa.verify(ident.public_key, ecdsa.sha256(b"m"), ident.sign(ecdsa.sha256(b"m")))
    assert ident.to_json() == {"secp256k1_secret": ident.secret.hex(), "x25519_secret": ident.box_secret.hex(),
                               "public_key": ident.public_key.hex(), "address": ident.address.hex()}
    fresh = Identity.generate()
    assert len(fresh.secret) == len(fresh.box_secret) == 32 and fresh != Identity.generate()


def test_key_files_are_0600_and_checked_on_load(tmp_path) -> None:
    ident = Identity.from_seed(b"bob")
    path = tmp_path / "deep" / "er" / "key.json"
    (tmp_path / "deep" / "er").mkdir(parents=True)
    stale = path.with_suffix(".json.tmp")
    stale.write_text("left over")
    stale.chmod(0o644)  # a leftover temp file must not pass its mode on
    ident.save(path)
    ident.save(path)  # again, over the existing file and folders
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and not stale.exists()
    assert Identity.load(path) == ident
    assert json.loads(path.read_text()) == ident.to_json()
    Identity.from_seed(b"carol").save(tmp_path / "new" / "dir" / "k.json")  # creates its folders
    path.chmod(0o640)
    with pytest.raises(PermissionError, match="has mode 640; key files must be 0600$"):
        Identity.load(path)
    path.chmod(0o600)
    for broken, why in (({**ident.to_json(), "public_key": "02" + "00" * 32}, "public key does not match the secret"),
                        ({"x25519_secret": "00" * 32}, r"not a medchain key file \('secp256k1_secret'\)"),
                        ({"secp256k1_secret": "zz", "x25519_secret": "00"}, "not a medchain key file")):
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=why):
            Identity.load(path)
    data = ident.to_json()
    del data["public_key"]  # optional: older key files lack it
    path.write_text(json.dumps(data))
    assert Identity.load(path) == ident


def test_key_files_are_created_0600_not_narrowed_after(tmp_path, monkeypatch) -> None:
    """Created with mode 0600 by os.open itself: a file created wider and narrowed later could be
    opened by another user in between, and that descriptor would read the secret once written."""
    monkeypatch.setattr(os, "fchmod", lambda fd, mode: None)
    old = os.umask(0o022)
    try:
        Identity.from_seed(b"dave").save(tmp_path / "k.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.json").stat().st_mode) == 0o600


def test_verify_batch_fallback_reuses_one_pool() -> None:
    """One bounded pool for every batch: a pool per call would leak threads under load."""
    d = ecdsa.sha256(b"pool")
    items = [(PK, d, ecdsa.sign(SK, d))] * 64
    assert ecdsa.verify_batch_fallback(items) == [True] * 64
    before = set(threading.enumerate())
    for _ in range(5):
        assert ecdsa.verify_batch_fallback(items) == [True] * 64
    assert set(threading.enumerate()) - before == set()
