"""Sealing data keys to a staff member's X25519 key (PyNaCl SealedBox: anonymous sender)."""

from __future__ import annotations

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

SEALED_OVERHEAD = 48  # ephemeral public key (32) + Poly1305 tag (16)


class SealError(ValueError):
    pass


def public_key(box_secret: bytes) -> bytes:
    return bytes(PrivateKey(box_secret).public_key)


def seal(recipient_public: bytes, plaintext: bytes) -> bytes:
    if len(recipient_public) != 32:
        raise SealError("X25519 public key must be 32 bytes")
    return SealedBox(PublicKey(recipient_public)).encrypt(plaintext)


def unseal(box_secret: bytes, sealed: bytes) -> bytes:
    try:
        return SealedBox(PrivateKey(box_secret)).decrypt(sealed)
    except CryptoError as exc:
        raise SealError(f"sealed key does not open with this key: {exc}") from None
