"""The encrypted window of readings stored off-chain (shared by phone and staff).

plaintext = msgpack [1, [[time_ms, gatt_uuid, frame], ...]]
blob      = nonce (12) || AES-256-GCM(data_key, nonce, plaintext, aad)
aad       = msgpack ["medchain/blob/v1", chain_id, patient, type, epoch, t_start_ms, t_end_ms]
The associated data binds the ciphertext to its on-chain record: a blob swapped under another
patient, type, epoch or window fails authentication.
"""

from __future__ import annotations

import hashlib
import hmac

import msgpack

from node.crypto import aead
from node.wire import encode

Reading = tuple[int, int, bytes]  # (time_ms, GATT characteristic uuid, frame bytes)


def data_key(master: bytes, dtype: int, epoch: int) -> bytes:
    """Data key per (patient, type, epoch), derived so a phone can be restored from its secret."""
    return hmac.new(master, encode(["medchain/data-key/v1", dtype, epoch]), hashlib.sha256).digest()


def master_secret(identity_secret: bytes) -> bytes:
    return hashlib.sha256(b"medchain/data-master/v1" + identity_secret).digest()


def aad(chain_id: str, patient: bytes, dtype: int, epoch: int, t_start_ms: int, t_end_ms: int) -> bytes:
    return encode(["medchain/blob/v1", chain_id, patient, dtype, epoch, t_start_ms, t_end_ms])


def seal_window(key: bytes, ad: bytes, readings: list[Reading]) -> bytes:
    nonce = aead.new_nonce()
    plaintext = encode([1, [list(r) for r in readings]])
    return nonce + aead.seal(key, nonce, plaintext, ad)


def open_window(key: bytes, ad: bytes, blob: bytes) -> list[Reading]:
    if len(blob) < aead.NONCE_LEN + aead.TAG_LEN:
        raise aead.AeadError("blob too short")
    pt = aead.open_(key, blob[: aead.NONCE_LEN], blob[aead.NONCE_LEN:], ad)
    ver, rows = msgpack.unpackb(pt, raw=False)
    if ver != 1:
        raise ValueError(f"unknown envelope version {ver}")
    return [(int(t), int(u), bytes(f)) for t, u, f in rows]
