"""State key layout (one byte prefix, then fixed-width parts so range scans work), and the parsers
of those keys: nothing else slices a state key.

Every key is committed by the authenticated state tree (node/state/smt.py). Lists a client acts on
are append-only and committed as a count key plus one key per index (docs/PROTOCOL.md), so a
client that fetches the proven count and every index with its proof sees every entry: a forged or
hidden entry would need a proof that does not exist.
"""

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


def expiring(patient: bytes, dtype: int) -> bytes:
    """The grants with an expiry that hold the current key epoch of (patient, dtype): no data may be
    written under that epoch once one of them has expired (an expired grantee keeps its keys)."""
    return b"E" + patient + bytes([dtype])


BLOB_PREFIX = b"d"  # every blob record's key starts so (and no other key does)


def blob(cid: bytes) -> bytes:
    return BLOB_PREFIX + cid


def data_index(patient: bytes, dtype: int, t_start_ms: int, cid: bytes) -> bytes:
    return b"i" + patient + struct.pack(">BQ", dtype, t_start_ms) + cid


def audit(patient: bytes, seq: int) -> bytes:
    """The patient's `seq`-th audit entry (0-based); audit_count holds how many there are."""
    return b"a" + patient + struct.pack(">Q", seq)


def audit_count(patient: bytes) -> bytes:
    return b"A" + patient


def emergency_entry(patient: bytes, seq: int) -> bytes:
    """The audit index (an int) of the patient's `seq`-th break-glass read: emergency reads are
    indexed apart, so a client finds every one without reading the whole audit log."""
    return b"y" + patient + struct.pack(">Q", seq)


def emergency_count(patient: bytes) -> bytes:
    return b"Y" + patient


def data_entry(patient: bytes, seq: int) -> bytes:
    """The CID of the patient's `seq`-th recorded blob; data_count holds how many there are."""
    return b"x" + patient + struct.pack(">Q", seq)


def data_count(patient: bytes) -> bytes:
    return b"D" + patient


def grant_entry(patient: bytes, seq: int) -> bytes:
    """The `seq`-th staff member the patient ever granted (each once); grant_count holds how many."""
    return b"h" + patient + struct.pack(">Q", seq)


def grant_count(patient: bytes) -> bytes:
    return b"G" + patient


def receipt(txid: bytes) -> bytes:
    return b"r" + txid


def policy(patient: bytes) -> bytes:
    return b"o" + patient


def break_glass(staff: bytes) -> bytes:
    return b"b" + staff


def break_glass_issuer(issuer: bytes) -> bytes:
    """The emergency reads made under one credential issuer's key (33 bytes) in its window."""
    return b"c" + issuer


def break_glass_patient(patient: bytes) -> bytes:
    return b"j" + patient


def emergency_read(patient: bytes, staff: bytes, dtype: int) -> bytes:
    """The block time of the staff member's latest allowed emergency read of (patient, dtype): a
    release of keys to them must end within that read's access window."""
    return b"q" + patient + staff + bytes([dtype])


# ---- parsers and scan prefixes (for the API and the verifier) ----------------------------------

def grants_prefix(patient: bytes) -> bytes:
    return b"g" + patient


def grant_staff(key: bytes) -> bytes:
    return key[33:65]


def sealed_keys_prefix(patient: bytes, staff: bytes) -> bytes:
    return b"k" + patient + staff


def sealed_key_parts(key: bytes) -> tuple[int, int]:
    """(data type, epoch) of a sealed-key key."""
    dtype, ep = struct.unpack(">BI", key[65:70])
    return dtype, ep


def data_index_prefix(patient: bytes, dtype: int | None = None) -> bytes:
    return b"i" + patient + (b"" if dtype is None else bytes([dtype]))


def data_index_cid(key: bytes) -> bytes:
    return key[42:]


def audit_prefix(patient: bytes) -> bytes:
    return b"a" + patient
