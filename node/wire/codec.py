"""Canonical msgpack: arrays, ints, bytes, str, bool and nil only, with hard limits.

Consensus-critical structures are arrays, never maps, so there is no key order to agree on.
A value is canonical when re-encoding its decoded form gives the same bytes (msgpack's
smallest-int and shortest-header rules), which makes one value have exactly one encoding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

import native

MAX_TX_BYTES = 16 * 1024
MAX_BLOCK_BYTES = 8 * 1024 * 1024
_MAX_DEPTH = 8


class WireError(ValueError):
    """Bytes that are not a well-formed, canonical, in-limits encoding."""


# One Packer, reused: packb builds one per call, two thirds of its cost (~2 us -> 0.7 us a value;
# a validator encodes about a dozen per transaction). A caller takes it out of the pool (list.pop is
# one step under the GIL), so no two threads and no re-entered call ever share it; whoever finds
# the pool empty packs with a fresh one, as does the pure-Python msgpack. A packer's buffer keeps
# the size of the largest value it packed, so after a large value (a block) it is replaced.
_C_PACKER = msgpack.Packer.__module__ == "msgpack._cmsgpack"
_KEEP_BUFFER = 256 * 1024


def _packer() -> msgpack.Packer:
    """A packer with the canonical options (bin type for bytes, tuples as arrays)."""
    return msgpack.Packer(use_bin_type=True, strict_types=False)


_POOL = [_packer()] if _C_PACKER else []


def encode(obj: Any) -> bytes:
    """Encode with the canonical options (bin type for bytes, no floats in structures)."""
    try:
        packer = _POOL.pop()
    except IndexError:
        fresh: bytes = _packer().pack(obj)  # what packb does
        return fresh
    try:
        out: bytes = packer.pack(obj)  # on an error msgpack empties the buffer: nothing is left behind
    except BaseException:
        _POOL.append(packer)
        raise
    _POOL.append(packer if len(out) <= _KEEP_BUFFER else _packer())
    return out


_SCALARS = frozenset((type(None), bool, int, bytes, str))  # exact types: msgpack makes no subclasses


def _check_types(obj: Any, depth: int = 0) -> None:
    """Only nil, bool, int, bytes, str and lists of them (a hot path: one type lookup per item)."""
    if depth > _MAX_DEPTH:
        raise WireError("nesting too deep")
    if type(obj) is list:  # exactly list: msgpack's ExtType is a tuple subclass
        if obj and depth >= _MAX_DEPTH:
            raise WireError("nesting too deep")  # its items would sit deeper than the limit
        for item in obj:
            t = type(item)
            if t is list:
                _check_types(item, depth + 1)
            elif t not in _SCALARS:
                raise WireError(f"type {t.__name__} is not allowed on the wire")
    elif type(obj) not in _SCALARS:
        raise WireError(f"type {type(obj).__name__} is not allowed on the wire")


def check_size(data: bytes, max_bytes: int) -> None:
    """WireError if an encoding is over its limit (what decode checks first)."""
    if len(data) > max_bytes:
        raise WireError(f"encoding is {len(data)} bytes, limit {max_bytes}")


# native/_wire.pyx: the same answers for valid input, ~5x faster; on anything it refuses (ValueError)
# the reference below runs and says why, so the native path never decides what is accepted
_native = native.load("_wire")
_native_decode: Callable[[bytes, bool, int], Any] | None = None if _native is None else _native.decode
_TooMany: type[Exception] = Exception if _native is None else _native.TooManyValues
BACKEND = "native" if _native_decode is not None else "python"


def decode(data: bytes, max_bytes: int = MAX_TX_BYTES, max_values: int = -1) -> Any:
    """Decode exactly one msgpack value; reject oversized input, trailing bytes, maps, floats, ext,
    and (with `max_values` >= 0) more values than that: each scalar and each array counts one. A
    frame from the network gets a budget its kind needs: a byte each, millions of empty arrays cost
    seconds and gigabytes to build, before any check could refuse them."""
    obj = _fast(data, max_bytes, False, max_values)
    return decode_py(data, max_bytes, max_values) if obj is _MISS else obj


_MISS = object()


def value_budget(data: bytes, bytes_per_value: int = 16) -> int:
    """A decode budget for a structure whose shape its data decides (a block, a proof bundle, a view
    change body): a value for every `bytes_per_value` bytes, and 64 more. Honest ones need far fewer
    (a transaction or a signature is tens of bytes a value); a frame of one-byte values is cut at a
    sixteenth of its length."""
    return len(data) // bytes_per_value + 64


def _too_many(max_values: int) -> WireError:
    return WireError(f"more than {max_values} values")


def _fast(data: bytes, max_bytes: int, canonical: bool, max_values: int = -1) -> Any:
    """The native decoder's value, or _MISS for what it does not take (the reference then says why)."""
    if _native_decode is not None and type(data) is bytes and len(data) <= max_bytes:
        try:
            return _native_decode(data, canonical, max_values)
        except ValueError:
            pass
        except _TooMany:
            raise _too_many(max_values) from None
    return _MISS


def _check_values(data: bytes, max_values: int) -> None:
    """WireError if `data` holds more than `max_values` values, or a type the wire refuses, walked by
    their headers without building any (the reference's budget; a truncation is left for msgpack to
    name). A refused type must be refused here: msgpack would build the whole frame first (an empty
    map or a float before a million empty arrays did, a review found)."""
    pos, n, pending, left = 0, len(data), 1, max_values
    while pending and pos < n:
        c = data[pos]
        pos += 1
        pending -= 1
        left -= 1
        if left < 0:
            raise _too_many(max_values)
        if 0x90 <= c <= 0x9f:
            pending += c & 0x0F
        elif c in (0xDC, 0xDD):
            w = 2 if c == 0xDC else 4
            pending += int.from_bytes(data[pos:pos + w], "big")
            pos += w
        elif 0xA0 <= c <= 0xBF:
            pos += c & 0x1F
        elif c in (0xC4, 0xC5, 0xC6, 0xD9, 0xDA, 0xDB):
            w = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}[c]
            pos += w + int.from_bytes(data[pos:pos + w], "big")
        elif 0xCC <= c <= 0xD3:
            pos += 1 << ((c - 0xCC) & 3)
        elif not (c <= 0x7F or c >= 0xE0 or c in (0xC0, 0xC2, 0xC3)):
            raise WireError("a type the wire does not allow (map, float, ext)")
        if pending > left:  # more items announced than the budget allows
            raise _too_many(max_values)


def decode_py(data: bytes, max_bytes: int = MAX_TX_BYTES, max_values: int = -1) -> Any:
    """`decode` in pure Python: the reference (and the fallback without the native build)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("expected bytes")
    check_size(data, max_bytes)
    if len(data) == 0:
        raise WireError("empty input")
    if max_values >= 0:
        _check_values(bytes(data), max_values)
    try:
        obj = msgpack.unpackb(
            bytes(data),
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=max_bytes,
            max_str_len=max_bytes,
            max_array_len=max_bytes,
            max_map_len=0,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise WireError("trailing bytes after the value") from None
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise WireError(f"malformed msgpack: {exc}") from None
    except RecursionError:
        raise WireError("nesting too deep") from None
    _check_types(obj)
    return obj


def decode_canonical(data: bytes, max_bytes: int = MAX_TX_BYTES, max_values: int = -1) -> Any:
    """Decode and require that the bytes are the canonical encoding of the value."""
    obj = _fast(data, max_bytes, True, max_values)
    return decode_canonical_py(data, max_bytes, max_values) if obj is _MISS else obj


def decode_canonical_py(data: bytes, max_bytes: int = MAX_TX_BYTES, max_values: int = -1) -> Any:
    """`decode_canonical` in pure Python (the reference)."""
    obj = decode_py(data, max_bytes, max_values)
    if encode(obj) != bytes(data):
        raise WireError("non-canonical msgpack encoding")
    return obj
