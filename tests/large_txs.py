"""Transactions of the largest size their kind allows, for the block byte budget's tests."""

from __future__ import annotations

from node.crypto.keys import Identity
from node.tx import Grant, Tx
from node.tx.model import MAX_KEYS_PER_GRANT, MAX_SEALED, SealedKey


def big_grants(patient: Identity, staff: bytes, chain: str, first_nonce: int, n: int) -> list[Tx]:
    """Grants of 64 sealed keys of the largest size (~8.7 KB each), from `first_nonce` on."""
    keys = tuple(SealedKey(1, 0, bytes([k]) * MAX_SEALED) for k in range(MAX_KEYS_PER_GRANT))
    return Tx.build_batch(patient, chain, first_nonce, [Grant(staff, (1,), 0, keys)] * n)
