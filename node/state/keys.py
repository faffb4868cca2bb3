"""State key layout (one byte prefix, then fixed-width parts so range scans work)."""

from __future__ import annotations

import struct


def nonce(addr: bytes) -> bytes:
    return b"n" + addr


def profile(addr: bytes) -> bytes:
    return b"p" + addr


def grant(patient: bytes, staff: bytes) -> bytes:
    return b"g" + patient + staff


def sealed_key(patient: bytes, staff: bytes, dtype: int, epoch: int) -> bytes:
    return b"k" + patient + staff + struct.pack(">BI", dtype, epoch)


def epoch(patient: bytes, dtype: int) -> bytes:
    return b"e" + patient + bytes([dtype])


def blob(cid: bytes) -> bytes:
    return b"d" + cid


def data_index(patient: bytes, dtype: int, t_start_ms: int, cid: bytes) -> bytes:
    return b"i" + patient + struct.pack(">BQ", dtype, t_start_ms) + cid


def audit(patient: bytes, height: int, idx: int) -> bytes:
    return b"a" + patient + struct.pack(">QI", height, idx)


def receipt(txid: bytes) -> bytes:
    return b"r" + txid


def policy(patient: bytes) -> bytes:
    return b"o" + patient


def break_glass(staff: bytes) -> bytes:
    return b"b" + staff
