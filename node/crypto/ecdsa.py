"""ECDSA secp256k1 over 32-byte digests: 64-byte compact, low-S only.

libsecp256k1 (through coincurve) signs low-S and its verify rejects high-S, which is the rule
that keeps signatures (and so transaction ids) non-malleable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

from coincurve import PrivateKey, PublicKey
from coincurve._libsecp256k1 import ffi, lib
from coincurve.context import GLOBAL_CONTEXT

SIG_LEN = 64
PUBKEY_LEN = 33
_CTX = GLOBAL_CONTEXT.ctx


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sign(secret: bytes, digest: bytes) -> bytes:
    """Sign a 32-byte digest; returns r || s with s in the lower half of the order: RFC 6979, byte
    for byte coincurve's `PrivateKey(secret).sign_recoverable(digest, hasher=None)[:64]`, without
    the two public keys (plain and x-only) that constructing a PrivateKey computes first: 80 -> 32 us
    a signature (every vote, head answer and client transaction signs once)."""
    if len(digest) != 32:
        raise ValueError("digest must be 32 bytes")
    if isinstance(secret, (bytearray, memoryview)):
        secret = bytes(secret)
    if type(secret) is not bytes or len(secret) != 32:  # libsecp256k1 reads 32 bytes, whatever it is given
        raise ValueError("secret must be 32 bytes")
    csig = ffi.new("secp256k1_ecdsa_signature *")
    if not lib.secp256k1_ecdsa_sign(_CTX, csig, digest, secret, ffi.NULL, ffi.NULL):
        raise ValueError("invalid secret: not in 1 .. n - 1")
    out = ffi.new("unsigned char[64]")
    lib.secp256k1_ecdsa_signature_serialize_compact(_CTX, out, csig)
    return bytes(ffi.buffer(out, 64))


@lru_cache(maxsize=65536)
def _parsed_pubkey(pubkey: bytes) -> Any:  # a cffi secp256k1_pubkey*, or None
    """Parse (decompress) a public key once; repeat senders hit the cache."""
    out = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_parse(_CTX, out, pubkey, len(pubkey)):
        return None
    return out


def valid_pubkey(pubkey: bytes) -> bool:
    return isinstance(pubkey, bytes) and len(pubkey) == PUBKEY_LEN and _parsed_pubkey(pubkey) is not None


def verify(pubkey: bytes, digest: bytes, sig: bytes) -> bool:
    """True iff sig is a valid low-S compact signature of digest by the compressed pubkey."""
    if len(sig) != SIG_LEN or len(digest) != 32 or len(pubkey) != PUBKEY_LEN:
        return False
    pk = _parsed_pubkey(pubkey)
    if pk is None:
        return False
    csig = ffi.new("secp256k1_ecdsa_signature *")
    if not lib.secp256k1_ecdsa_signature_parse_compact(_CTX, csig, sig):
        return False  # r or s >= n
    return bool(lib.secp256k1_ecdsa_verify(_CTX, csig, digest, pk))


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify")
    return _POOL


def verify_batch_fallback(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """Verify (pubkey, digest, sig) triples; cffi releases the GIL so two threads use two cores."""
    if len(items) < 64:
        return [verify(pk, d, s) for pk, d, s in items]
    half = len(items) // 2
    fut = _pool().submit(lambda: [verify(pk, d, s) for pk, d, s in items[half:]])
    first = [verify(pk, d, s) for pk, d, s in items[:half]]
    return first + fut.result()


def public_key(secret: bytes) -> bytes:
    return PrivateKey(secret).public_key.format(compressed=True)


def compress(pubkey: bytes) -> bytes:
    """Any SEC1 encoding (33 or 65 bytes) to the 33-byte compressed form."""
    return PublicKey(pubkey).format(compressed=True)
