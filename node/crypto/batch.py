"""Batch signature checking, signing and AES-GCM: the API the validator and load generator use.

The native path (native/_secp.pyx over libsecp256k1, native/_aesgcm.pyx over OpenSSL EVP) runs
with the GIL released on all cores; the fallback is coincurve (two threads, as
`ecdsa.verify_batch_fallback`) and `cryptography`'s AESGCM. The native ECDSA loops call the
libsecp256k1 that coincurve bundles (newer and faster per core than Debian's 0.2.0 that the
extension links): at import this module takes the function addresses from coincurve's cffi
module and hands them to `native._secp.init_from_coincurve`, then checks the result against
coincurve on a known answer; if any of that fails, the extension keeps Debian's library, and
`backend_name()` / `secp_library()` say which one is in use. Native and fallback give identical
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

import functools
import logging
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import cast

from coincurve import PrivateKey

import native
from node.crypto import aead, ecdsa
from node.crypto.aead import AeadError

log = logging.getLogger("medchain.crypto")

__all__ = [
    "NATIVE",
    "NATIVE_AEAD",
    "NATIVE_ECDSA",
    "SECP_LIBRARY_ERROR",
    "aead_open_batch",
    "aead_open_batch_fallback",
    "aead_open_batch_native",
    "aead_seal_batch",
    "aead_seal_batch_fallback",
    "aead_seal_batch_native",
    "backend_name",
    "native_available",
    "native_error",
    "secp_library",
    "sign_batch",
    "sign_batch_fallback",
    "sign_batch_native",
    "verify_batch",
    "verify_batch_fallback",
    "verify_batch_native",
]

_BAD_ITEM = (b"", b"", b"")  # fails the fallback's length check: False, no exception


# not built (no Cython, compiler or headers at install time): the fallbacks serve, and say why.
# Typed through native/*.pyi; None when absent, which every use checks (NATIVE_*, _require).
_secp_error = _aesgcm_error = ""
try:
    from native import _secp
except ImportError as exc:
    _secp = None  # type: ignore[assignment]
    _secp_error = f"native._secp not importable: {exc}"
try:
    from native import _aesgcm
except ImportError as exc:
    _aesgcm = None  # type: ignore[assignment]
    _aesgcm_error = f"native._aesgcm not importable: {exc}"


# --- which libsecp256k1 the native ECDSA loops call ------------------------------------------

# How coincurve's cffi module types the functions native._secp calls (cffi drops `const`):
# a guard against a coincurve build whose declarations differ from the stable API.
_COINCURVE_TYPES = {
    "secp256k1_context_create": "struct secp256k1_context_struct *(*)(unsigned int)",
    "secp256k1_context_destroy": "void(*)(struct secp256k1_context_struct *)",
    "secp256k1_context_randomize": "int(*)(struct secp256k1_context_struct *, unsigned char *)",
    "secp256k1_context_set_illegal_callback":
        "void(*)(struct secp256k1_context_struct *, void(*)(char *, void *), void *)",
    "secp256k1_ec_pubkey_parse":
        "int(*)(struct secp256k1_context_struct *, struct secp256k1_pubkey *, unsigned char *, size_t)",
    "secp256k1_ecdsa_signature_parse_compact":
        "int(*)(struct secp256k1_context_struct *, struct secp256k1_ecdsa_signature *, unsigned char *)",
    "secp256k1_ecdsa_signature_serialize_compact":
        "int(*)(struct secp256k1_context_struct *, unsigned char *, struct secp256k1_ecdsa_signature *)",
    "secp256k1_ecdsa_verify":
        "int(*)(struct secp256k1_context_struct *, struct secp256k1_ecdsa_signature *, unsigned char *, "
        "struct secp256k1_pubkey *)",
    "secp256k1_ecdsa_sign":
        "int(*)(struct secp256k1_context_struct *, struct secp256k1_ecdsa_signature *, unsigned char *, "
        "unsigned char *, int(*)(unsigned char *, unsigned char *, unsigned char *, unsigned char *, void *, "
        "unsigned int), void *)",
    "secp256k1_ec_seckey_verify": "int(*)(struct secp256k1_context_struct *, unsigned char *)",
}


@functools.cache  # importlib.metadata reads the distribution's files: ~0.1 ms, asked by every GET /v1/status
def _coincurve_version() -> str:
    try:
        from importlib.metadata import version

        return version("coincurve")
    except Exception:  # noqa: BLE001 - only for the description
        return "?"


def _self_check(secp: ModuleType) -> None:
    """A known answer against coincurve itself: same signatures, same verdicts."""
    sk = bytes(31) + b"\x07"
    digests = [bytes(32), bytes(range(32)), b"\xff" * 32]
    want = [PrivateKey(sk).sign_recoverable(d, hasher=None)[:64] for d in digests]
    got = secp.sign_batch(sk, digests, 1)
    if got != want:
        raise RuntimeError("signatures differ from coincurve's")
    pk = PrivateKey(sk).public_key.format(compressed=True)
    bad = want[0][:63] + bytes([want[0][63] ^ 1])
    items = [(pk, d, s) for d, s in zip(digests, want, strict=True)] + [(pk, digests[0], bad)]
    if secp.verify_batch(items, 1) != [True, True, True, False]:
        raise RuntimeError("verification differs from coincurve's")


def _use_coincurve_libsecp256k1(secp: ModuleType) -> str:
    """Point native._secp at coincurve's libsecp256k1; '' on success, else why it keeps Debian's."""
    try:
        from coincurve import _libsecp256k1 as cc

        ffi, lib = cc.ffi, cc.lib
        addresses = {}
        for name in secp.FUNCTIONS:
            fn = ffi.addressof(lib, name)
            ctype = ffi.getctype(ffi.typeof(fn))
            if ctype != _COINCURVE_TYPES.get(name):
                return f"coincurve declares {name} as {ctype}"
            addresses[name] = int(ffi.cast("uintptr_t", fn))
        secp.init_from_coincurve(addresses, ffi.sizeof("secp256k1_pubkey"),
                                 ffi.sizeof("secp256k1_ecdsa_signature"), cc)
    except Exception as exc:  # noqa: BLE001 - no coincurve internals: the linked library serves
        return f"{type(exc).__name__}: {exc}"
    try:
        _self_check(secp)
    except Exception as exc:  # noqa: BLE001
        secp.use_system_library()
        return f"self-check failed: {exc}"
    return ""


#: Why the native ECDSA loops use Debian's libsecp256k1 rather than coincurve's ('' if they don't).
SECP_LIBRARY_ERROR: str = _use_coincurve_libsecp256k1(_secp) if _secp is not None else ""
if SECP_LIBRARY_ERROR:
    log.warning("medchain: native ECDSA keeps the system libsecp256k1: %s", SECP_LIBRARY_ERROR)


def secp_library() -> str | None:
    """The libsecp256k1 the native ECDSA loops call: "coincurve", "system", or None (not built)."""
    return _secp.library() if _secp is not None else None


def _secp_description() -> str:
    if secp_library() == "coincurve":
        return f"coincurve {_coincurve_version()}'s libsecp256k1"
    reason = f"coincurve's unusable: {SECP_LIBRARY_ERROR}" if SECP_LIBRARY_ERROR else "coincurve's not selected"
    return f"system libsecp256k1 [{reason}]"

_FORCED_OFF = native.forced_off()

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
        return f"native ({_secp_description()} + OpenSSL EVP AES-GCM, {_secp.default_threads()} threads)"
    if NATIVE_ECDSA or NATIVE_AEAD:
        which = (f"ECDSA native over {_secp_description()}, AES-GCM fallback" if NATIVE_ECDSA
                 else "ECDSA fallback, AES-GCM native")
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
        raw_pk, raw_d, raw_s = cast("Iterable[object]", item)  # anything at all: a caller's bad item
    except (TypeError, ValueError):
        return _BAD_ITEM
    pk, d, s = _as_bytes(raw_pk), _as_bytes(raw_d), _as_bytes(raw_s)
    if pk is None or d is None or s is None:
        return _BAD_ITEM
    return pk, d, s


def verify_batch_fallback(items: Iterable[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """coincurve, one item at a time on two threads (`ecdsa.verify_batch_fallback`)."""
    return ecdsa.verify_batch_fallback([_normalise(it) for it in items])


def verify_batch_native(items: Iterable[tuple[bytes, bytes, bytes]], threads: int | None = None) -> list[bool]:
    """libsecp256k1 (`secp_library()`) on `threads` threads (default: all usable CPUs), GIL released."""
    if _secp is None:
        raise RuntimeError(_secp_error)
    return _secp.verify_batch(items, threads)


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
    if _secp is None:
        raise RuntimeError(_secp_error)
    sk, ds = _check_sign_args(secret, digests)
    return _secp.sign_batch(sk, ds, threads)


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
    if _aesgcm is None:
        raise RuntimeError(_aesgcm_error)
    try:
        return _aesgcm.seal_batch(key, items, threads)
    except _aesgcm.UnsupportedParameters as exc:  # key or nonce size, raised before any work
        raise AeadError(str(exc)) from None


def aead_open_batch_native(
    key: bytes, items: Iterable[tuple[bytes, bytes, bytes]], threads: int | None = None
) -> list[bytes | None]:
    if _aesgcm is None:
        raise RuntimeError(_aesgcm_error)
    try:
        return _aesgcm.open_batch(key, items, threads)
    except _aesgcm.UnsupportedParameters as exc:
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
