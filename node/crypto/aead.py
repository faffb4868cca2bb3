"""AES-GCM with 12-byte nonces and 16-byte tags; single and batch interfaces.

The batch functions are the seam for the native (AES-NI, GIL-free) loop; the fallback here is
`cryptography`'s AESGCM, the fastest pure-Python-callable option (a reused context per key).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_LEN = 12
TAG_LEN = 16
KEY_LEN = 32


class AeadError(ValueError):
    """Authentication failed, or parameters this implementation does not support."""


def _check(key: bytes, nonce: bytes) -> None:
    if len(key) not in (16, 24, 32):
        raise AeadError(f"unsupported AES key size {len(key) * 8} bits")
    if len(nonce) != NONCE_LEN:
        raise AeadError(f"unsupported nonce size {len(nonce)} bytes (only {NONCE_LEN})")


def seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """Ciphertext || tag."""
    _check(key, nonce)
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def open_(key: bytes, nonce: bytes, sealed: bytes, aad: bytes = b"") -> bytes:
    _check(key, nonce)
    if len(sealed) < TAG_LEN:
        raise AeadError("ciphertext shorter than the tag")
    try:
        return AESGCM(key).decrypt(nonce, sealed, aad)
    except InvalidTag:
        raise AeadError("authentication failed: wrong key, nonce, associated data or tampered bytes") from None


def seal_batch(key: bytes, items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bytes]:
    """Seal (nonce, plaintext, aad) items under one key."""
    if len(key) not in (16, 24, 32):
        raise AeadError(f"unsupported AES key size {len(key) * 8} bits")
    ctx = AESGCM(key)
    out = []
    for nonce, pt, aad in items:
        if len(nonce) != NONCE_LEN:
            raise AeadError(f"unsupported nonce size {len(nonce)} bytes (only {NONCE_LEN})")
        out.append(ctx.encrypt(nonce, pt, aad))
    return out


def open_batch(key: bytes, items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bytes | None]:
    """Open (nonce, sealed, aad) items; None where authentication fails."""
    if len(key) not in (16, 24, 32):
        raise AeadError(f"unsupported AES key size {len(key) * 8} bits")
    ctx = AESGCM(key)
    out: list[bytes | None] = []
    for nonce, ct, aad in items:
        if len(nonce) != NONCE_LEN:
            raise AeadError(f"unsupported nonce size {len(nonce)} bytes (only {NONCE_LEN})")
        try:
            out.append(ctx.decrypt(nonce, ct, aad) if len(ct) >= TAG_LEN else None)
        except InvalidTag:
            out.append(None)
    return out


def new_key() -> bytes:
    return os.urandom(KEY_LEN)


def new_nonce() -> bytes:
    return os.urandom(NONCE_LEN)
