"""Signed off-chain requests (blob downloads and standalone uploads): what is signed."""

from __future__ import annotations

from node.crypto import ecdsa
from node.wire import encode

BLOB_GET_DOMAIN = "medchain/blob-get/v2"


def blob_request_digest(chain_id: str, validator: bytes, cid: bytes, read_txid: bytes, time_ms: int) -> bytes:
    """SHA-256 of the canonical [domain, chain_id, validator (the public key of the validator
    asked), cid, read_txid (or empty), time_ms]: a captured request opens nothing at another
    validator, and the one asked serves it once."""
    return ecdsa.sha256(encode([BLOB_GET_DOMAIN, chain_id, validator, cid, read_txid, time_ms]))


BLOB_PUT_DOMAIN = "medchain/blob-put/v2"


def blob_upload_digest(chain_id: str, validator: bytes, blob_sha256: bytes, size: int, time_ms: int) -> bytes:
    """SHA-256 of the canonical [domain, chain_id, validator (the public key of the validator the
    upload is sent to), SHA-256 of the blob, its size, time_ms]: a captured upload is stored once,
    by that validator only (a replay cannot spend its signer's rate and upload budget)."""
    return ecdsa.sha256(encode([BLOB_PUT_DOMAIN, chain_id, validator, blob_sha256, size, time_ms]))


HEAD_DOMAIN = "medchain/head/v1"
NONCE_BYTES = 16


def head_digest(chain_id: str, validator: bytes, nonce: bytes, height: int) -> bytes:
    """SHA-256 of the canonical [domain, chain_id, validator (its public key), nonce (the client's,
    fresh), height]: a validator's signed word that its head was `height` when asked, so a client
    counts each validator's report once however many addresses reach it, and a report cannot be
    replayed to another client."""
    return ecdsa.sha256(encode([HEAD_DOMAIN, chain_id, validator, nonce, height]))
