"""The state's values and result codes: with node/state/keys.py (the key layout), the whole state
schema. The state machine writes these records, the API and the verifying clients read them, and
nothing else indexes a record by position.

Each record is a NamedTuple whose field order is its msgpack array (docs/PROTOCOL.md section 5):
`node.wire.encode(record)` gives the stored bytes (msgpack packs a tuple as an array; AuditRec has
its own `encode` for its optional last field) and `Record.decode` reads them back. The bytes are
exactly those of the positional lists they replace.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple, Self

from node.wire import decode, encode


class Code(IntEnum):
    """A transaction's result code, kept in its receipt (an int on the wire)."""

    OK = 0
    BAD_NONCE = 1
    NO_PROFILE = 2
    DENIED = 3
    CID_UNKNOWN = 4
    STALE_EPOCH = 5
    CID_RECORDED = 6
    INVALID_GRANT = 7
    CID_MISMATCH = 8
    DUPLICATE = 9
    BREAK_GLASS_OFF = 10
    BREAK_GLASS_LIMIT = 11
    KEY_EXPIRED = 12
    NO_CREDENTIAL = 13
    INVALID_CREDENTIAL = 14
    NO_EMERGENCY_READ = 15


# executed without taking the sender's nonce (its receipt is written, the sender's nonce is not: its run
# does not move)
NO_NONCE = (Code.BAD_NONCE, Code.DUPLICATE)

CODES: dict[int, str] = {
    Code.OK: "ok",
    Code.BAD_NONCE: "bad nonce: not the sender's next nonce",
    Code.NO_PROFILE: "staff member has no registered profile",
    Code.DENIED: "access denied by the patient's policy",
    Code.CID_UNKNOWN: "cid is not on chain",
    Code.STALE_EPOCH: "stale key epoch: a revoke rotated this data type's key",
    Code.CID_RECORDED: "cid already recorded",
    Code.INVALID_GRANT: "invalid grant",
    Code.CID_MISMATCH: "cid belongs to another patient or data type",
    Code.DUPLICATE: "duplicate transaction",
    Code.BREAK_GLASS_OFF: "break-glass refused: the patient has disabled emergency access",
    Code.BREAK_GLASS_LIMIT: "break-glass refused: an emergency-read limit (of the staff member, their credential's "
                            "issuer or the patient) is reached",
    Code.KEY_EXPIRED: "key epoch held by an expired grant: rotate the key (revoke the expired grant) before writing",
    Code.NO_CREDENTIAL: "break-glass refused: the reader holds no valid clinician credential from an issuer in the genesis",
    Code.INVALID_CREDENTIAL: "invalid credential: not signed for this staff member and chain by an issuer in the "
                             "genesis, or expired",
    Code.NO_EMERGENCY_READ: "release refused: the staff member made no allowed emergency read of this data type "
                            "whose access window covers the release",
}


class ProfileRec(NamedTuple):
    """keys.profile(addr): a registered staff member or patient; a clinician's also names the
    issuer of its credential and the credential's end (the stored array then has eight elements)."""

    name: str
    role: str
    org: str
    box_public: bytes  # X25519: data keys are sealed to it
    public_key: bytes  # secp256k1, compressed: the profile's signer
    height: int
    issuer: bytes = b""  # the credential's issuer (a genesis issuer key); b"": no credential
    credential_until_ms: int = 0

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        return cls(*decode(raw))

    def encode(self) -> bytes:
        return encode(self if self.issuer else self[:6])


class Released(NamedTuple):
    """An emergency release within a GrantRec: keys of `epochs` of one type, held until `expiry_ms`."""

    dtype: int
    expiry_ms: int
    epochs: list[int]
    tx: bytes


class GrantRec(NamedTuple):
    """keys.grant(patient, staff): the latest grant (an empty type list after a revoke), and apart
    from it the emergency releases to this staff member (a fifth element, present only when there
    is one): a release never widens the lasting grant, and the grant never extends a release."""

    types: list[int]
    expiry_ms: int  # 0: no expiry
    height: int
    tx: bytes
    released: tuple[Released, ...] = ()

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        f = decode(raw)
        return cls(f[0], f[1], f[2], f[3], tuple(Released(*r) for r in f[4]) if len(f) > 4 else ())

    def encode(self) -> bytes:
        return encode(self if self.released else self[:4])

    def release_of(self, dtype: int) -> Released | None:
        return next((r for r in self.released if r.dtype == dtype), None)


class PolicyRec(NamedTuple):
    """keys.policy(patient): whether emergency (break-glass) reads are allowed."""

    break_glass: bool
    height: int

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        return cls(*decode(raw))


class BreakGlassRec(NamedTuple):
    """keys.break_glass(staff), break_glass_issuer(issuer), break_glass_patient(patient): the
    emergency reads in the current window by the staff member, by the staff of one credential
    issuer, and of one patient's data."""

    window_start_ms: int
    reads: int

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        return cls(*decode(raw))


class BlobRec(NamedTuple):
    """keys.blob(cid): a recorded ciphertext window."""

    patient: bytes
    dtype: int
    epoch: int
    size: int
    t_start_ms: int
    t_end_ms: int
    height: int
    tx: bytes

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        return cls(*decode(raw))


class AuditRec(NamedTuple):
    """keys.audit(patient, i): one read of the patient's data, allowed or not; `reason` only for
    an emergency read (the stored array then has nine elements, else eight)."""

    reader: bytes
    dtype: int
    cid: bytes  # empty for a read of a time range
    t_from_ms: int
    t_to_ms: int
    time_ms: int  # the block's time
    tx: bytes
    code: int
    reason: str | None = None

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        return cls(*decode(raw))

    def encode(self) -> bytes:
        return encode(self if self.reason else self[:8])


class Holder(NamedTuple):
    """An entry of keys.expiring(patient, dtype): a grantee holding the current key epoch until `expiry_ms`."""

    staff: bytes
    expiry_ms: int


class Receipt(NamedTuple):
    """keys.receipt(txid): where a transaction committed and its result."""

    height: int
    tx_index: int  # its position in the block (`index` would shadow tuple.index)
    code: int

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        return cls(*decode(raw))
