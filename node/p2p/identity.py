"""Deterministic libp2p identities for validators.

Key type: **Ed25519** (libp2p's default and the one every libp2p implementation must support; its
public key is inlined in the peer id, so ids look like ``12D3KooW...``). The 32-byte secret is not
used as the seed directly: the seed is ``SHA-256(b"medchain/p2p/ed25519/v1" || secret)``, so a
validator may derive its network identity from its consensus secret (secp256k1) without reusing
one key across two signature schemes.
"""

from __future__ import annotations

import hashlib
from typing import Any

_DOMAIN = b"medchain/p2p/ed25519/v1"


def _seed(secret32: bytes) -> bytes:
    if not isinstance(secret32, bytes | bytearray) or len(secret32) != 32:
        raise ValueError("secret32 must be 32 bytes")
    return hashlib.sha256(_DOMAIN + bytes(secret32)).digest()


def key_pair_from_secret(secret32: bytes) -> Any:
    """libp2p ``KeyPair`` (Ed25519) for a 32-byte secret."""
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.crypto.keys import KeyPair

    priv = Ed25519PrivateKey.from_bytes(_seed(secret32))
    return KeyPair(priv, priv.get_public_key())


def peer_id_from_secret(secret32: bytes) -> str:
    """Base58 libp2p peer id of the identity derived from ``secret32``."""
    from libp2p.peer.id import ID

    return ID.from_pubkey(key_pair_from_secret(secret32).public_key).to_base58()
