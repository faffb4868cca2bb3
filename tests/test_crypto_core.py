"""The crypto wrappers' contracts beyond the vectors (node/crypto/aead.py, seal.py): defaults that
must interoperate with the library underneath, and refusals that say exactly why (a refusal for
another reason than the one a test aims at would hide the bug it aims at)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.public import PrivateKey, SealedBox

from node.crypto import aead, seal
from node.crypto.aead import AeadError

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
