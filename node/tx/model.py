"""Transactions: exact encodings, signing and stateless validation.

Wire form: msgpack array [payload: bin, signature: bin(64)].
payload is the canonical msgpack array [version, kind, chain_id, sender_pubkey, nonce, *fields].
The signature is low-S compact ECDSA over SHA-256(payload); the transaction id is
SHA-256 of the whole wire form. docs/PROTOCOL.md is the normative description.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

from node.crypto import ecdsa
from node.crypto.keys import Identity, address_of
from node.frozen import frozen_from
from node.ipfs.cid import Cid, is_v1_sha256
from node.wire import MAX_TX_BYTES, WireError, check_size, decode, decode_canonical, encode

VERSION = 1
KIND_GRANT = 0x10  # access family: grant / change / revoke (empty set)
KIND_PROFILE = 0x11  # access family: staff profile registration
KIND_POLICY = 0x12  # access family: the patient's own settings (break-glass opt-out)
KIND_RELEASE = 0x13  # access family: keys released to an emergency reader, time-limited
KIND_WRITE = 0x20  # data family: patient writes a blob reference
KIND_READ = 0x21  # data family: staff (or patient) reads, committed for the audit log
KIND_NAMES = {KIND_GRANT: "grant", KIND_PROFILE: "profile", KIND_POLICY: "policy", KIND_RELEASE: "release",
              KIND_WRITE: "write", KIND_READ: "read"}
# The two families, by the kind's high nibble: 0x1_ access, 0x2_ data. Nothing else is admitted.
FAMILIES = {0x10: "access", 0x20: "data"}
# Break-glass reason codes (HL7 v3-ActReason); a break-glass read must carry one of these.
BREAK_GLASS_REASONS = ("ETREAT",)

DATA_TYPES = {"heart_rate": 1, "blood_pressure": 2, "body_temperature": 3, "glucose": 4, "spo2": 5}
_TYPE_NAMES = {v: k for k, v in DATA_TYPES.items()}

MAX_CHAIN_ID = 32
MAX_NAME = 64
MAX_CID = 128
MAX_SEALED = 128
MAX_KEYS_PER_GRANT = 64
U63 = (1 << 63) - 1
BAD_SIGNATURE = "bad signature (invalid, not by the sender, or high-S)"


class TxError(ValueError):
    """A transaction that is malformed or fails stateless validation; the message says why."""


def data_type_id(name: str | int) -> int:
    if isinstance(name, int):
        if name in _TYPE_NAMES:
            return name
        raise TxError(f"unknown data type {name!r}; known: {', '.join(DATA_TYPES)}")
    try:
        return DATA_TYPES[name]
    except (KeyError, TypeError):
        raise TxError(f"unknown data type {name!r}; known: {', '.join(DATA_TYPES)}") from None


def data_type_name(tid: int) -> str:
    return _TYPE_NAMES[tid]


def _uint(v: object, what: str, hi: int = U63) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
        raise TxError(f"{what} must be an integer in [0, {hi}]")
    return v


def _bytes(v: object, what: str, lo: int, hi: int) -> bytes:
    if not isinstance(v, bytes) or not lo <= len(v) <= hi:
        raise TxError(f"{what} must be {lo}..{hi} bytes")
    return v


def _str(v: object, what: str, hi: int) -> str:
    if not isinstance(v, str) or len(v.encode()) > hi:
        raise TxError(f"{what} must be a string of at most {hi} bytes")
    return v


def _dtype(v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v not in _TYPE_NAMES:
        raise TxError(f"unknown data type {v!r}")
    return v


@dataclass(frozen=True)
class SealedKey:
    dtype: int
    epoch: int
    sealed: bytes  # the 32-byte data key sealed to the staff X25519 key


@dataclass(frozen=True)
class Grant:
    """Patient grants staff the set `types` (replacing the previous grant); empty set = revoke."""

    kind: ClassVar[int] = KIND_GRANT
    staff: bytes  # staff address
    types: tuple[int, ...]
    expiry_ms: int  # 0 = never
    keys: tuple[SealedKey, ...]

    def fields(self) -> list[Any]:
        return [self.staff, list(self.types), self.expiry_ms,
                [[k.dtype, k.epoch, k.sealed] for k in self.keys]]

    @classmethod
    def parse(cls, f: list[Any]) -> Grant:
        if len(f) != 4:
            raise TxError("grant takes 4 fields: staff, types, expiry_ms, keys")
        staff = _bytes(f[0], "staff address", 32, 32)
        if not isinstance(f[1], list) or len(f[1]) > len(DATA_TYPES):
            raise TxError("types must be a list of data types")
        types = tuple(_dtype(t) for t in f[1])
        if list(types) != sorted(set(types)):
            raise TxError("types must be sorted and unique")
        if not isinstance(f[3], list) or len(f[3]) > MAX_KEYS_PER_GRANT:
            raise TxError(f"keys must be a list of at most {MAX_KEYS_PER_GRANT}")
        keys = []
        for k in f[3]:
            if not isinstance(k, list) or len(k) != 3:
                raise TxError("each sealed key is [type, epoch, sealed]")
            dt = _dtype(k[0])
            if dt not in types:
                raise TxError("a sealed key for a type that is not granted")
            keys.append(SealedKey(dt, _uint(k[1], "epoch", 2**32 - 1), _bytes(k[2], "sealed key", 1, MAX_SEALED)))
        return cls(staff, types, _uint(f[2], "expiry_ms"), tuple(keys))


@dataclass(frozen=True)
class Credential:
    """A clinician credential: an issuer listed in the genesis (an organisation's key) signs that
    the staff address may make emergency (break-glass) reads on this chain until `not_after_ms`
    (node/tx/credential.py makes and checks the signature; the state machine checks the issuer)."""

    issuer: bytes  # 33-byte compressed secp256k1 public key
    not_after_ms: int
    sig: bytes  # compact ECDSA over credential_digest(chain_id, staff address, not_after_ms)

    def fields(self) -> list[Any]:
        return [self.issuer, self.not_after_ms, self.sig]

    @classmethod
    def parse(cls, f: object) -> Credential:
        if not isinstance(f, list) or len(f) != 3:
            raise TxError("a credential is [issuer public key, not_after_ms, signature]")
        issuer = _bytes(f[0], "credential issuer", 33, 33)
        if not ecdsa.valid_pubkey(issuer):
            raise TxError("credential issuer is not a valid compressed secp256k1 public key")
        return cls(issuer, _uint(f[1], "credential not_after_ms"), _bytes(f[2], "credential signature", 64, 64))


@dataclass(frozen=True)
class Profile:
    """Staff profile registration; the signing key is the transaction's sender. A clinician's
    profile carries a credential (a 5th field, present only then, so a plain profile keeps its
    exact 4-field encoding): only such a profile may break the glass."""

    kind: ClassVar[int] = KIND_PROFILE
    name: str
    role: str
    org: str
    box_public: bytes  # X25519 public key that grants seal data keys to
    credential: Credential | None = None

    def fields(self) -> list[Any]:
        f: list[Any] = [self.name, self.role, self.org, self.box_public]
        return f + [self.credential.fields()] if self.credential else f

    @classmethod
    def parse(cls, f: list[Any]) -> Profile:
        if len(f) not in (4, 5):
            raise TxError("profile takes 4 fields: name, role, org, x25519_public (and a clinician credential)")
        return cls(_str(f[0], "name", MAX_NAME), _str(f[1], "role", MAX_NAME), _str(f[2], "org", MAX_NAME),
                   _bytes(f[3], "x25519 public key", 32, 32), Credential.parse(f[4]) if len(f) == 5 else None)


@dataclass(frozen=True)
class Policy:
    """The patient's settings for their own data. `break_glass` False makes every emergency
    (break-glass) read of this patient's data fail on chain."""

    kind: ClassVar[int] = KIND_POLICY
    break_glass: bool

    def fields(self) -> list[Any]:
        return [self.break_glass]

    @classmethod
    def parse(cls, f: list[Any]) -> Policy:
        if len(f) != 1 or type(f[0]) is not bool:
            raise TxError("policy takes 1 field: break_glass (true or false)")
        return cls(f[0])


@dataclass(frozen=True)
class Release:
    """The patient releases data keys of one type to a staff member who made an emergency read:
    the `keys` (epochs the read's window touched) are sealed to that reader alone and held until
    `expiry_ms`, apart from any lasting grant. With no keys and expiry 0 it ends the release (the
    type then moves to a new key epoch if the release held the current one, as a revoke does)."""

    kind: ClassVar[int] = KIND_RELEASE
    staff: bytes
    dtype: int
    expiry_ms: int  # 0 only to end a release
    keys: tuple[SealedKey, ...]

    @property
    def ends(self) -> bool:
        return not self.keys

    def fields(self) -> list[Any]:
        return [self.staff, self.dtype, self.expiry_ms, [[k.epoch, k.sealed] for k in self.keys]]

    @classmethod
    def parse(cls, f: list[Any]) -> Release:
        if len(f) != 4:
            raise TxError("release takes 4 fields: staff, type, expiry_ms, keys")
        staff, dtype, expiry = _bytes(f[0], "staff address", 32, 32), _dtype(f[1]), _uint(f[2], "expiry_ms")
        if not isinstance(f[3], list) or len(f[3]) > MAX_KEYS_PER_GRANT:
            raise TxError(f"keys must be a list of at most {MAX_KEYS_PER_GRANT}")
        keys = []
        for k in f[3]:
            if not isinstance(k, list) or len(k) != 2:
                raise TxError("each released key is [epoch, sealed]")
            keys.append(SealedKey(dtype, _uint(k[0], "epoch", 2**32 - 1), _bytes(k[1], "sealed key", 1, MAX_SEALED)))
        if [k.epoch for k in keys] != sorted({k.epoch for k in keys}):
            raise TxError("released epochs must be sorted and unique")
        if bool(keys) != bool(expiry):
            raise TxError("a release carries keys and an expiry; an end of a release carries neither")
        return cls(staff, dtype, expiry, tuple(keys))


@dataclass(frozen=True)
class Write:
    """Patient records the CID of an encrypted window of readings of one type."""

    kind: ClassVar[int] = KIND_WRITE
    dtype: int
    cid: bytes  # binary CID of the ciphertext
    size: int
    epoch: int
    t_start_ms: int
    t_end_ms: int

    def fields(self) -> list[Any]:
        return [self.dtype, self.cid, self.size, self.epoch, self.t_start_ms, self.t_end_ms]

    @cached_property
    def root(self) -> Cid:
        """The CID parsed, once per transaction: admission, the availability gate and the commit each
        need it (CidError if `cid` is not one; a failed parse is not kept)."""
        return Cid.from_bytes(self.cid)

    @classmethod
    def parse(cls, f: list[Any]) -> Write:
        if len(f) != 6:
            raise TxError("write takes 6 fields: type, cid, size, epoch, t_start_ms, t_end_ms")
        dtype, cid, size, epoch, t0, t1 = f
        # the hot path (every validator parses every write): the checks of the helpers below, inline,
        # on the exact types a decoded payload holds; anything else goes through them for its reason
        if not (type(dtype) is int and dtype in _TYPE_NAMES and type(cid) is bytes and 2 <= len(cid) <= MAX_CID
                and type(size) is int and 0 <= size <= 1 << 40 and type(epoch) is int and 0 <= epoch <= 0xFFFFFFFF
                and type(t0) is int and 0 <= t0 <= U63 and type(t1) is int and 0 <= t1 <= U63):
            dtype, cid, size = _dtype(dtype), _bytes(cid, "cid", 2, MAX_CID), _uint(size, "size", 1 << 40)
            epoch, t0, t1 = _uint(epoch, "epoch", 2**32 - 1), _uint(t0, "t_start_ms"), _uint(t1, "t_end_ms")
        if t1 < t0:
            raise TxError("t_end_ms before t_start_ms")
        if not is_v1_sha256(cid):
            raise TxError("cid: a write names a binary CIDv1, raw or dag-pb, with a sha2-256 digest (36 bytes)")
        return frozen_from(cls, {"dtype": dtype, "cid": cid, "size": size, "epoch": epoch, "t_start_ms": t0,
                                 "t_end_ms": t1})


@dataclass(frozen=True)
class Read:
    """A read of patient data: one CID, or (cid empty) every blob of the type in a time range.
    With a `reason` (a break-glass code, e.g. "ETREAT") it is an emergency read without a grant: a
    6th field, present only then, so an ordinary read keeps its exact 5-field encoding."""

    kind: ClassVar[int] = KIND_READ
    patient: bytes
    dtype: int
    cid: bytes  # b"" for a range read
    t_from_ms: int
    t_to_ms: int
    reason: str = ""  # "" = ordinary read; else a code from BREAK_GLASS_REASONS

    @property
    def break_glass(self) -> bool:
        return bool(self.reason)

    def fields(self) -> list[Any]:
        f = [self.patient, self.dtype, self.cid, self.t_from_ms, self.t_to_ms]
        return f + [self.reason] if self.reason else f

    @classmethod
    def parse(cls, f: list[Any]) -> Read:
        if len(f) not in (5, 6):
            raise TxError("read takes 5 fields: patient, type, cid, t_from_ms, t_to_ms (and a break-glass reason)")
        reason = ""
        if len(f) == 6:  # one encoding per read: an ordinary read never carries the 6th field
            if not isinstance(f[5], str) or f[5] not in BREAK_GLASS_REASONS:
                raise TxError("read takes 5 fields, or 6 with a break-glass reason: one of "
                              f"{', '.join(BREAK_GLASS_REASONS)} (HL7 v3-ActReason)")
            reason = f[5]
        r = cls(_bytes(f[0], "patient address", 32, 32), _dtype(f[1]), _bytes(f[2], "cid", 0, MAX_CID),
                _uint(f[3], "t_from_ms"), _uint(f[4], "t_to_ms"), reason)
        if r.t_to_ms < r.t_from_ms:
            raise TxError("t_to_ms before t_from_ms")
        return r


Body = Grant | Profile | Policy | Release | Write | Read
_PARSERS: dict[int, Callable[[list[Any]], Body]] = {
    KIND_GRANT: Grant.parse, KIND_PROFILE: Profile.parse, KIND_POLICY: Policy.parse, KIND_RELEASE: Release.parse,
    KIND_WRITE: Write.parse, KIND_READ: Read.parse}
assert all(k & 0xF0 in FAMILIES for k in _PARSERS)  # only the two families have parsers


@dataclass(frozen=True)
class Tx:
    chain_id: str
    sender: bytes  # 33-byte compressed public key
    nonce: int
    body: Body
    payload: bytes
    sig: bytes
    raw: bytes  # the wire encoding
    id: bytes  # SHA-256 of raw

    @property
    def kind(self) -> int:
        return self.body.kind

    @cached_property
    def address(self) -> bytes:
        """H(sender): admission, the pool and execution each ask for it, so it is hashed once."""
        return address_of(self.sender)

    @property
    def digest(self) -> bytes:
        """What the sender signed."""
        return ecdsa.sha256(self.payload)

    @classmethod
    def build(cls, ident: Identity, chain_id: str, nonce: int, body: Body) -> Tx:
        return cls.build_batch(ident, chain_id, nonce, [body])[0]

    @classmethod
    def build_batch(cls, ident: Identity, chain_id: str, first_nonce: int, bodies: list[Body]) -> list[Tx]:
        """Transactions with consecutive nonces from one sender, signed in one batch call (the
        native batch signer when it is built: load generators sign thousands at once)."""
        from node.crypto.batch import sign_batch
        payloads = [encode([VERSION, b.kind, chain_id, ident.public_key, first_nonce + i, *b.fields()])
                    for i, b in enumerate(bodies)]
        sigs = sign_batch(ident.secret, [ecdsa.sha256(p) for p in payloads])
        out = []
        for p, s in zip(payloads, sigs, strict=True):
            raw = encode([p, s])
            check_size(raw, MAX_TX_BYTES)
            # the bytes are canonical by construction (encode); the payload's fields are parsed and
            # checked as decode does (a bad body fails here, not at a validator), from one plain decode
            out.append(cls._parse(decode(p), p, s, raw, chain_id))
        return out

    @classmethod
    def decode(cls, raw: bytes, chain_id: str | None = None, check_sig: bool = True) -> Tx:
        """Parse and statelessly validate; raises TxError or WireError with the reason."""
        outer = decode_canonical(raw, MAX_TX_BYTES)
        if not isinstance(outer, list) or len(outer) != 2:
            raise TxError("a transaction is [payload, signature]")
        payload, sig = outer
        if not isinstance(payload, bytes) or not isinstance(sig, bytes):
            raise TxError("payload and signature must be bytes")
        if len(sig) != ecdsa.SIG_LEN:
            raise TxError(f"signature must be {ecdsa.SIG_LEN} bytes (compact r||s)")
        tx = cls._parse(decode_canonical(payload, MAX_TX_BYTES), payload, sig, bytes(raw), chain_id)
        if check_sig and not ecdsa.verify(tx.sender, tx.digest, sig):
            raise TxError(BAD_SIGNATURE)
        return tx

    @classmethod
    def _parse(cls, p: Any, payload: bytes, sig: bytes, raw: bytes, chain_id: str | None) -> Tx:
        """The payload's decoded fields checked and parsed into a Tx (no signature check)."""
        if not isinstance(p, list) or len(p) < 5:
            raise TxError("payload is [version, kind, chain_id, sender, nonce, *fields]")
        version, kind, cid, sender, nonce = p[:5]
        if type(version) is not int or version != VERSION:
            raise TxError(f"unsupported transaction version {version!r}")
        if type(kind) is not int or kind not in _PARSERS:
            raise TxError(f"unknown transaction kind {kind!r}")
        _str(cid, "chain id", MAX_CHAIN_ID)
        if chain_id is not None and cid != chain_id:
            raise TxError(f"wrong chain id {cid!r} (this chain is {chain_id!r})")
        if not isinstance(sender, bytes) or not ecdsa.valid_pubkey(sender):
            raise TxError("sender is not a valid 33-byte compressed secp256k1 public key")
        _uint(nonce, "nonce")
        if nonce == 0:
            raise TxError("nonces start at 1")
        body = _PARSERS[kind](p[5:])
        # `address` (a cached_property) filled in now: admission, the pool and execution all ask for it
        return frozen_from(cls, {"chain_id": cid, "sender": sender, "nonce": nonce, "body": body, "payload": payload,
                                 "sig": sig, "raw": raw, "id": ecdsa.sha256(raw), "address": address_of(sender)})


__all__ = ["Tx", "TxError", "WireError"]
