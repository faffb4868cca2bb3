"""The private-network key of a validator set (libp2p pnet): 32 random bytes shared by the validators
only, in `HOME/swarm.key` as 64 hex digits, mode 0600. With it, every libp2p connection is encrypted
with the key beneath noise, so a host without it cannot complete even the first handshake; this is
on top of admitting only genesis peer ids. Absent file: no private network."""

from __future__ import annotations

import secrets
from pathlib import Path

from node.files import write_durably

FILENAME = "swarm.key"


class SwarmKeyError(ValueError):
    pass


def new_key() -> bytes:
    return secrets.token_bytes(32)


def write(home: str | Path, key: bytes) -> Path:
    if len(key) != 32:
        raise SwarmKeyError("a swarm key is 32 bytes")
    path = Path(home) / FILENAME
    write_durably(path, key.hex() + "\n", 0o600)
    return path


def load(home: str | Path) -> bytes | None:
    path = Path(home) / FILENAME
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise SwarmKeyError(f"{path}: not hex") from None
    if len(key) != 32:
        raise SwarmKeyError(f"{path}: a swarm key is 64 hex digits (32 bytes), found {len(key)} bytes")
    return key
