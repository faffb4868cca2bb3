"""The encrypted window of readings stored off-chain (shared by phone and staff).

plaintext = msgpack [1, [[time_ms, gatt_uuid, frame], ...]]
            or, padded, msgpack [2, [[time_ms, gatt_uuid, frame], ...], zeros: bin]
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


def master_secret(identity_secret: bytes, chain_id: str) -> bytes:
    """The patient's data-key master on one chain: a key sealed to someone on a test network (or
    before a re-genesis, where epochs start again at 0) opens nothing on another chain."""
    return hmac.new(identity_secret, encode(["medchain/data-master/v2", chain_id]), hashlib.sha256).digest()


def aad(chain_id: str, patient: bytes, dtype: int, epoch: int, t_start_ms: int, t_end_ms: int) -> bytes:
    return encode(["medchain/blob/v1", chain_id, patient, dtype, epoch, t_start_ms, t_end_ms])


def padded_plaintext(readings: list[Reading], pad_to: int) -> bytes:
    """msgpack [2, rows, zeros: bin] whose length is the smallest multiple of pad_to that fits, so
    every window of up to pad_to bytes of readings has the same ciphertext size (metadata privacy)."""
    rows = [list(r) for r in readings]
    base = len(encode([2, rows, b""])) - 2  # without the empty bin's 2-byte encoding
    target = -(-(base + 2) // pad_to) * pad_to
    while True:
        for head, hi in ((2, 0xFF), (3, 0xFFFF), (5, 0xFFFFFFFF)):  # bin8 / bin16 / bin32 header sizes
            n = target - base - head
            if 0 <= n <= hi and (head == 2 or n > (0xFF if head == 3 else 0xFFFF)):
                out = encode([2, rows, bytes(n)])
                assert len(out) == target
                return out
        target += pad_to  # the header size straddles a boundary: the next multiple fits


def seal_window(key: bytes, ad: bytes, readings: list[Reading], pad_to: int = 0) -> bytes:
    """Encrypt a window; with pad_to > 0 the plaintext is padded to a multiple of pad_to bytes."""
    nonce = aead.new_nonce()
    plaintext = padded_plaintext(readings, pad_to) if pad_to > 0 else encode([1, [list(r) for r in readings]])
    return nonce + aead.seal(key, nonce, plaintext, ad)


def open_window(key: bytes, ad: bytes, blob: bytes) -> list[Reading]:
    if len(blob) < aead.NONCE_LEN + aead.TAG_LEN:
        raise aead.AeadError("blob too short")
    pt = aead.open_(key, blob[: aead.NONCE_LEN], blob[aead.NONCE_LEN:], ad)
    ver, rows, *pad = msgpack.unpackb(pt, raw=False)
    if ver not in (1, 2) or len(pad) != ver - 1:  # version 2 carries padding after the rows
        raise ValueError(f"unknown envelope version {ver}")
    return [(int(t), int(u), bytes(f)) for t, u, f in rows]
