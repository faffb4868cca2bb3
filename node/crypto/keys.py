"""Identities: a secp256k1 signing key (address = SHA-256 of the compressed public key) and,
for staff, an X25519 key for receiving sealed data keys. Key files are JSON, mode 0600."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from coincurve import PrivateKey

from node.crypto import ecdsa, seal
from node.files import write_durably


def address_of(pubkey: bytes) -> bytes:
    """The 32-byte address H(pk) of a 33-byte compressed public key."""
    return ecdsa.sha256(pubkey)


@dataclass(frozen=True)
class Identity:
    secret: bytes  # 32-byte secp256k1 scalar
    box_secret: bytes  # 32-byte X25519 secret for SealedBox

    @classmethod
    def generate(cls) -> Identity:
        return cls(PrivateKey().secret, secrets.token_bytes(32))

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Deterministic identity for tests and load generators (never for real patients)."""
        sk = ecdsa.sha256(b"medchain/seed/secp256k1/" + seed)
        return cls(PrivateKey(sk).secret, ecdsa.sha256(b"medchain/seed/x25519/" + seed))

    # derived once per identity (cached in the instance; the fields stay frozen): deriving a public
    # key costs ~80 us, and a phone proxy signs with each of thousands of identities many times
    @cached_property
    def public_key(self) -> bytes:
        return ecdsa.public_key(self.secret)

    @cached_property
    def address(self) -> bytes:
        return address_of(self.public_key)

    @cached_property
    def box_public(self) -> bytes:
        return seal.public_key(self.box_secret)

    @property
    def p2p_secret(self) -> bytes:
        """The validator's libp2p key, derived from its signing key (one key file per validator)."""
        return ecdsa.sha256(b"medchain/libp2p/v1" + self.secret)

    def sign(self, digest: bytes) -> bytes:
        return ecdsa.sign(self.secret, digest)

    def to_json(self) -> dict[str, str]:
        return {
            "secp256k1_secret": self.secret.hex(),
            "x25519_secret": self.box_secret.hex(),
            "public_key": self.public_key.hex(),
            "address": self.address.hex(),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically with 0600 permissions (created so, never widened)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(path, json.dumps(self.to_json(), indent=1), 0o600)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        path = Path(path)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(f"{path} has mode {mode:o}; key files must be 0600")
        data = json.loads(path.read_text())
        try:
            ident = cls(bytes.fromhex(data["secp256k1_secret"]), bytes.fromhex(data["x25519_secret"]))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a medchain key file ({exc})") from None
        if "public_key" in data and data["public_key"] != ident.public_key.hex():
            raise ValueError(f"{path}: public key does not match the secret")
        return ident
