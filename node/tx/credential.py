"""Clinician credentials: an issuer listed in the genesis (an organisation's signing key) vouches
that a staff address may break the glass on one chain until a time. The signature binds the chain
id, so a credential issued for one network is worthless on another."""

from __future__ import annotations

from node.crypto import ecdsa
from node.crypto.keys import Identity
from node.tx.model import Credential
from node.wire import encode

DOMAIN = "medchain/credential/v1"


def credential_digest(chain_id: str, staff: bytes, not_after_ms: int) -> bytes:
    """What the issuer signs: the domain, the chain, the staff member's address and the end."""
    return ecdsa.sha256(encode([DOMAIN, chain_id, staff, not_after_ms]))


def issue(issuer: Identity, chain_id: str, staff: bytes, not_after_ms: int) -> Credential:
    return Credential(issuer.public_key, not_after_ms,
                      issuer.sign(credential_digest(chain_id, staff, not_after_ms)))


def signed_by_issuer(c: Credential, chain_id: str, staff: bytes) -> bool:
    """Whether the credential's signature is its issuer's, for this chain and staff address."""
    return ecdsa.verify(c.issuer, credential_digest(chain_id, staff, c.not_after_ms), c.sig)


def to_json(c: Credential) -> dict[str, object]:
    return {"issuer": c.issuer.hex(), "not_after_ms": c.not_after_ms, "signature": c.sig.hex()}


def from_json(d: dict[str, object]) -> Credential:
    try:
        return Credential(bytes.fromhex(str(d["issuer"])), int(str(d["not_after_ms"])),
                          bytes.fromhex(str(d["signature"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a medchain credential ({exc})") from None
