"""Signed off-chain requests (blob downloads): what is signed and how it is checked."""

from __future__ import annotations

from node.crypto import ecdsa
from node.wire import encode

BLOB_GET_DOMAIN = "medchain/blob-get/v1"


def blob_request_digest(chain_id: str, cid: bytes, read_txid: bytes, time_ms: int) -> bytes:
    """SHA-256 of the canonical [domain, chain_id, cid, read_txid (or empty), time_ms]."""
    return ecdsa.sha256(encode([BLOB_GET_DOMAIN, chain_id, cid, read_txid, time_ms]))
