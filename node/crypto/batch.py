"""Batch signature checking, signing and AES-GCM: the API the validator and load generator use.

The native path (native/_secp.pyx over libsecp256k1, native/_aesgcm.pyx over OpenSSL EVP) runs
with the GIL released on all cores; the fallback is coincurve (two threads, as
`ecdsa.verify_batch_fallback`) and `cryptography`'s AESGCM. Native and fallback give identical
results on every input (tests/test_native.py). The native path is chosen when the extension is
built and importable (each of the two modules on its own), unless MEDCHAIN_NO_NATIVE=1 forces
the fallback; which one is in use is logged once (on first use) and available from
`backend_name()`, `NATIVE`, `NATIVE_ECDSA` and `NATIVE_AEAD`.

Semantics shared by both paths:
- `verify_batch(items)`: items are (pubkey33, digest32, sig64); one bool per item. Anything
  malformed (not a triple, not bytes-like, wrong lengths, invalid key, r or s out of range,
  high-S, zero signature) is False for that item; nothing raises.
- `sign_batch(secret, digests)`: 64-byte compact low-S RFC 6979 signatures, byte for byte those
  of coincurve's `sign_recoverable(d, hasher=None)[:64]` (and so of `ecdsa.sign`). ValueError for
  an invalid secret or a digest that is not 32 bytes, raised before anything is signed.
- `aead_seal_batch(key, items)` / `aead_open_batch(key, items)`: as `aead.seal_batch` /
  `aead.open_batch`: (nonce, data, aad) items under one key, ciphertext || tag out, None for an
  item that fails authentication; AeadError for an unsupported key or nonce size.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable, Sequence
from types import ModuleType

from coincurve import PrivateKey

from node.crypto import aead, ecdsa
from node.crypto.aead import AeadError

log = logging.getLogger("medchain.crypto")

__all__ = [
    "NATIVE",
    "NATIVE_AEAD",
    "NATIVE_ECDSA",
    "aead_open_batch",
    "aead_open_batch_fallback",
    "aead_open_batch_native",
    "aead_seal_batch",
    "aead_seal_batch_fallback",
    "aead_seal_batch_native",
    "backend_name",
    "native_available",
    "native_error",
    "sign_batch",
    "sign_batch_fallback",
    "sign_batch_native",
    "verify_batch",
    "verify_batch_fallback",
    "verify_batch_native",
]

_BAD_ITEM = (b"", b"", b"")  # fails the fallback's length check: False, no exception


def _load(name: str) -> tuple[ModuleType | None, str]:
    try:
        return importlib.import_module(f"native.{name}"), ""
    except ImportError as exc:  # not built (no Cython, compiler or headers at install time)
        return None, f"native.{name} not importable: {exc}"


_secp, _secp_error = _load("_secp")
_aesgcm, _aesgcm_error = _load("_aesgcm")
_FORCED_OFF = os.environ.get("MEDCHAIN_NO_NATIVE", "").strip() not in ("", "0")

#: Whether verify_batch / sign_batch dispatch to native/_secp.pyx.
NATIVE_ECDSA: bool = _secp is not None and not _FORCED_OFF
#: Whether aead_seal_batch / aead_open_batch dispatch to native/_aesgcm.pyx.
NATIVE_AEAD: bool = _aesgcm is not None and not _FORCED_OFF
#: True when every batch function below dispatches to the native extension.
NATIVE: bool = NATIVE_ECDSA and NATIVE_AEAD


def native_available() -> bool:
    """Whether both extension modules are built and importable (whatever MEDCHAIN_NO_NATIVE says)."""
    return _secp is not None and _aesgcm is not None


def native_error() -> str:
    """Why the native path is not (fully) in use; '' when it is."""
    if NATIVE:
        return ""
    if _FORCED_OFF:
        return "MEDCHAIN_NO_NATIVE is set"
    return "; ".join(e for e in (_secp_error, _aesgcm_error) if e)


def backend_name() -> str:
    """One line for logs and `medchain status`."""
    if NATIVE:
        return f"native (libsecp256k1 + OpenSSL EVP AES-GCM, {_secp.default_threads()} threads)"
    if NATIVE_ECDSA or NATIVE_AEAD:
        which = "ECDSA native, AES-GCM fallback" if NATIVE_ECDSA else "ECDSA fallback, AES-GCM native"
        return f"partly native ({which}; {native_error()})"
    return f"fallback (coincurve + cryptography AESGCM; {native_error()})"


_announced = False


def _announce() -> None:
    global _announced
    if not _announced:
        _announced = True
        if NATIVE:
            log.info("medchain: native crypto in use: %s", backend_name())
        else:
            log.warning("medchain: fallback crypto in use: %s", backend_name())


def _require(module: ModuleType | None, error: str) -> ModuleType:
    if module is None:
        raise RuntimeError(error)
    return module


# --- ECDSA verify ---------------------------------------------------------------------------


def _as_bytes(x: object) -> bytes | None:
    if type(x) is bytes:
        return x
    if isinstance(x, bytes | bytearray | memoryview):
        try:
            return bytes(x)
        except (TypeError, ValueError, BufferError):
            return None
    return None


def _normalise(item: object) -> tuple[bytes, bytes, bytes]:
    try:
        pk, d, s = item  # type: ignore[misc]
    except (TypeError, ValueError):
        return _BAD_ITEM
    pk, d, s = _as_bytes(pk), _as_bytes(d), _as_bytes(s)
    if pk is None or d is None or s is None:
        return _BAD_ITEM
    return pk, d, s


def verify_batch_fallback(items: Iterable[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """coincurve, one item at a time on two threads (`ecdsa.verify_batch_fallback`)."""
    return ecdsa.verify_batch_fallback([_normalise(it) for it in items])


def verify_batch_native(items: Iterable[tuple[bytes, bytes, bytes]], threads: int | None = None) -> list[bool]:
    """libsecp256k1 on `threads` threads (default: all usable CPUs) with the GIL released."""
    return _require(_secp, _secp_error).verify_batch(items, threads)


def verify_batch(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """Verify (pubkey33, digest32, sig64) triples; one bool per item, in order."""
    _announce()
    if NATIVE_ECDSA:
        return _secp.verify_batch(items)
    return verify_batch_fallback(items)


# --- ECDSA sign -----------------------------------------------------------------------------


def _check_sign_args(secret: bytes, digests: Iterable[bytes]) -> tuple[bytes, list[bytes]]:
    sk = _as_bytes(secret)
    if sk is None:
        raise TypeError("secret must be bytes")
    if len(sk) != 32:
        raise ValueError(f"secret key must be 32 bytes, got {len(sk)}")
    out = []
    for i, d in enumerate(digests):
        b = _as_bytes(d)
        if b is None:
            raise TypeError(f"digest {i} must be bytes")
        if len(b) != 32:
            raise ValueError(f"digest {i} must be 32 bytes, got {len(b)}")
        out.append(b)
    return sk, out


def sign_batch_fallback(secret: bytes, digests: Iterable[bytes]) -> list[bytes]:
    """coincurve, one digest at a time."""
    sk, ds = _check_sign_args(secret, digests)
    try:
        key = PrivateKey(sk)
    except ValueError:
        raise ValueError("invalid secret key (zero or not below the curve order)") from None
    return [key.sign_recoverable(d, hasher=None)[:64] for d in ds]


def sign_batch_native(secret: bytes, digests: Iterable[bytes], threads: int | None = None) -> list[bytes]:
    secp = _require(_secp, _secp_error)
    sk, ds = _check_sign_args(secret, digests)
    return secp.sign_batch(sk, ds, threads)


def sign_batch(secret: bytes, digests: Iterable[bytes]) -> list[bytes]:
    """Sign 32-byte digests with one key: 64-byte compact low-S signatures (RFC 6979)."""
    _announce()
    if NATIVE_ECDSA:
        return sign_batch_native(secret, digests)
    return sign_batch_fallback(secret, digests)


# --- AES-GCM --------------------------------------------------------------------------------


def aead_seal_batch_fallback(key: bytes, items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bytes]:
    return aead.seal_batch(key, items)


def aead_open_batch_fallback(key: bytes, items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bytes | None]:
    return aead.open_batch(key, items)


def aead_seal_batch_native(
    key: bytes, items: Iterable[tuple[bytes, bytes, bytes]], threads: int | None = None
) -> list[bytes]:
    mod = _require(_aesgcm, _aesgcm_error)
    try:
        return mod.seal_batch(key, items, threads)
    except mod.UnsupportedParameters as exc:  # key or nonce size, raised before any work
        raise AeadError(str(exc)) from None


def aead_open_batch_native(
    key: bytes, items: Iterable[tuple[bytes, bytes, bytes]], threads: int | None = None
) -> list[bytes | None]:
    mod = _require(_aesgcm, _aesgcm_error)
    try:
        return mod.open_batch(key, items, threads)
    except mod.UnsupportedParameters as exc:
        raise AeadError(str(exc)) from None


def aead_seal_batch(key: bytes, items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bytes]:
    """Seal (nonce, plaintext, aad) items under one key: ciphertext || tag for each."""
    _announce()
    if NATIVE_AEAD:
        return aead_seal_batch_native(key, items)
    return aead_seal_batch_fallback(key, items)


def aead_open_batch(key: bytes, items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bytes | None]:
    """Open (nonce, ciphertext || tag, aad) items under one key; None where authentication fails."""
    _announce()
    if NATIVE_AEAD:
        return aead_open_batch_native(key, items)
    return aead_open_batch_fallback(key, items)
