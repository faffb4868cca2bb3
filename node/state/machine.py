"""Deterministic execution of transactions over a key-value view.

Pure logic: the caller supplies the committed state as a `get(key) -> bytes | None` view, the
state tree's nodes as a `get(position)` view, and the block's height and time; execution returns
the writes, the tree's dirty nodes and the new state root. No clock, no I/O.

State root: the root of the authenticated state tree (node/state/smt.py) over every key after the
block, so any single key can be proven present with its value, or absent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from node.crypto import ecdsa
from node.ipfs.cid import CODEC_DAG_PB, CODEC_RAW
from node.state import keys, smt
from node.state.records import (
    CODES,
    AuditRec,
    BlobRec,
    BreakGlassRec,
    Code,
    GrantRec,
    Holder,
    PolicyRec,
    ProfileRec,
    Receipt,
    Released,
)
from node.state.rules import NO_ISSUERS, Rules
from node.tx import KIND_GRANT, KIND_PROFILE, KIND_WRITE, Grant, Policy, Profile, Read, Release, Tx, Write
from node.tx.credential import signed_by_issuer
from node.wire import decode, encode

Get = Callable[[bytes], "bytes | None"]

OK = Code.OK
# Break-glass limits, in block time (the state machine reads no clock): per window of
# BREAK_GLASS_WINDOW_MS, counted from the first read of the window, a staff member, the staff of one
# credential issuer, and the readers of one patient may each make only so many emergency reads
# (node/state/rules.py, from the genesis); a committed emergency read lets its reader fetch the
# blobs it covers, and the patient release keys to it, for BREAK_GLASS_ACCESS_MS after its block time.
BREAK_GLASS_LIMIT = NO_ISSUERS.per_staff
BREAK_GLASS_WINDOW_MS = 24 * 3600 * 1000
BREAK_GLASS_ACCESS_MS = 24 * 3600 * 1000


def genesis_state_root(chain_id: str, validators: Iterable[bytes]) -> bytes:
    return ecdsa.sha256(encode(["medchain/genesis/v1", chain_id, list(validators)]))


class Overlay:
    """Buffered writes over a read view; reads see the buffer first."""

    def __init__(self, base: Get) -> None:
        self.base = base
        self.writes: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        v = self.writes.get(key)
        return v if v is not None else self.base(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.writes[key] = value

    def get_obj(self, key: bytes) -> Any:  # a msgpack value
        v = self.get(key)
        return None if v is None else decode(v)

    def put_obj(self, key: bytes, obj: object) -> None:
        self.put(key, encode(obj))

    def append(self, count_key: bytes, entry_key: Callable[[int], bytes], value: bytes) -> None:
        """Append to a committed list: its entry at the current count, then the count + 1."""
        n = self.get_obj(count_key) or 0
        self.put(entry_key(n), value)
        self.put_obj(count_key, n + 1)


def _nonce(view: Overlay, addr: bytes) -> int:
    v = view.get_obj(keys.nonce(addr))
    return 0 if v is None else v


def read_allowed(view: Overlay, reader: bytes, patient: bytes, dtype: int, time_ms: int) -> bool:
    """The policy check: the patient always; staff iff the latest grant has the type and is unexpired."""
    if reader == patient:
        return True
    raw = view.get(keys.grant(patient, reader))
    if raw is None:
        return False
    g = GrantRec.decode(raw)
    return dtype in g.types and (g.expiry_ms == 0 or time_ms < g.expiry_ms)


def key_access(view: Overlay, reader: bytes, patient: bytes, dtype: int, epoch: int, time_ms: int) -> bool:
    """Whether `reader` may still use the patient's key of (dtype, epoch): by a lasting grant of the
    type that read_allowed honours, or by an unexpired emergency release of that epoch."""
    if read_allowed(view, reader, patient, dtype, time_ms):
        return True
    raw = view.get(keys.grant(patient, reader))
    rel = GrantRec.decode(raw).release_of(dtype) if raw is not None else None
    return rel is not None and epoch in rel.epochs and time_ms < rel.expiry_ms


def break_glass_enabled(view: Overlay, patient: bytes) -> bool:
    """Emergency reads are allowed unless the patient's latest policy transaction turned them off."""
    raw = view.get(keys.policy(patient))
    return raw is None or bool(PolicyRec.decode(raw).break_glass)


def _windows(reader: bytes, issuer: bytes, patient: bytes, rules: Rules) -> list[tuple[bytes, int]]:
    """The break-glass windows an emergency read counts in, each with its limit."""
    return [(keys.break_glass(reader), rules.per_staff), (keys.break_glass_issuer(issuer), rules.per_issuer),
            (keys.break_glass_patient(patient), rules.per_patient)]


def _window_reads(view: Overlay, key: bytes, time_ms: int) -> BreakGlassRec:
    """The window's record as of `time_ms`: a new, empty one once the last has run out."""
    raw = view.get(key)
    rl = BreakGlassRec.decode(raw) if raw is not None else None
    if rl is None or time_ms - rl.window_start_ms >= BREAK_GLASS_WINDOW_MS:
        return BreakGlassRec(time_ms, 0)  # a new window starts at this read's block time
    return rl


def clinician_issuer(view: Overlay, staff: bytes, time_ms: int, rules: Rules) -> bytes | None:
    """The genesis issuer whose unexpired credential the staff member's profile carries, or None."""
    raw = view.get(keys.profile(staff))
    if raw is None:
        return None
    p = ProfileRec.decode(raw)
    return p.issuer if p.issuer in rules.issuers and time_ms < p.credential_until_ms else None


def _break_glass_check(view: Overlay, reader: bytes, patient: bytes, time_ms: int, rules: Rules) -> int:
    if view.get(keys.profile(reader)) is None:
        return Code.NO_PROFILE  # an emergency reader must be identifiable: a registered staff profile
    issuer = clinician_issuer(view, reader, time_ms, rules)
    if issuer is None:
        return Code.NO_CREDENTIAL  # a self-registered profile is not a clinician
    if not break_glass_enabled(view, patient):
        return Code.BREAK_GLASS_OFF
    if any(_window_reads(view, k, time_ms).reads >= limit for k, limit in _windows(reader, issuer, patient, rules)):
        return Code.BREAK_GLASS_LIMIT
    return OK


def break_glass_reopens_ms(view: Overlay, reader: bytes, patient: bytes, time_ms: int, rules: Rules) -> int | None:
    """How long from `time_ms` until every window that holds `reader`'s emergency read of `patient`
    at its limit has run out (0: none does); None if one never will (a limit of 0, or no issuer)."""
    issuer = clinician_issuer(view, reader, time_ms, rules)
    if issuer is None:
        return None
    wait = 0
    for key, limit in _windows(reader, issuer, patient, rules):
        rl = _window_reads(view, key, time_ms)
        if rl.reads >= limit:
            if limit <= 0:
                return None
            wait = max(wait, rl.window_start_ms + BREAK_GLASS_WINDOW_MS - time_ms)
    return wait


def _check_release(view: Overlay, patient: bytes, r: Release, time_ms: int) -> int:
    if r.staff == patient or view.get(keys.profile(r.staff)) is None:
        return Code.NO_PROFILE
    if r.ends:  # ending a release: there must be one
        raw = view.get(keys.grant(patient, r.staff))
        return OK if raw is not None and GrantRec.decode(raw).release_of(r.dtype) else Code.INVALID_GRANT
    if r.expiry_ms <= time_ms or r.keys[-1].epoch > _epoch(view, patient, r.dtype):
        return Code.INVALID_GRANT
    read_ms = view.get_obj(keys.emergency_read(patient, r.staff, r.dtype))
    if read_ms is None or r.expiry_ms > read_ms + BREAK_GLASS_ACCESS_MS:
        return Code.NO_EMERGENCY_READ  # keys go only to an emergency reader, for its access window
    return OK


def check_tx(view: Overlay, tx: Tx, time_ms: int, rules: Rules = NO_ISSUERS) -> int:
    """The stateful checks other than the nonce; OK or a code from CODES."""
    b = tx.body
    addr = tx.address
    if isinstance(b, Profile):  # a credential must be a genesis issuer's, for this key and chain, unexpired
        c = b.credential
        if c is not None and (c.issuer not in rules.issuers or c.not_after_ms <= time_ms
                              or not signed_by_issuer(c, tx.chain_id, addr)):
            return Code.INVALID_CREDENTIAL
        return OK
    if isinstance(b, Release):
        return _check_release(view, addr, b, time_ms)
    if isinstance(b, Grant):
        if b.staff == addr:
            return Code.INVALID_GRANT
        if view.get(keys.profile(b.staff)) is None:
            return Code.NO_PROFILE
        if b.expiry_ms and b.expiry_ms <= time_ms:
            return Code.INVALID_GRANT
        # sealed keys are only for granted types, which this grant does not rotate
        if any(k.epoch > _epoch(view, addr, k.dtype) for k in b.keys):
            return Code.INVALID_GRANT
        return OK
    if isinstance(b, Write):
        if b.epoch != _epoch(view, addr, b.dtype):
            return Code.STALE_EPOCH
        if any(h[1] <= time_ms for h in view.get_obj(keys.expiring(addr, b.dtype)) or ()):  # expiries are > 0
            return Code.KEY_EXPIRED  # a grantee whose access ended holds this epoch's key
        if view.get(keys.blob(b.cid)) is not None or view.get(keys.blob(_codec_twin(b.cid))) is not None:
            return Code.CID_RECORDED  # by this CID, or its twin: the same digest under the other codec
        return OK
    if isinstance(b, Read):
        if b.reason:
            code = _break_glass_check(view, addr, b.patient, time_ms, rules)
            if code != OK:
                return code
        elif not read_allowed(view, addr, b.patient, b.dtype, time_ms):
            return Code.DENIED
        if b.cid:
            raw = view.get(keys.blob(b.cid))
            if raw is None:
                return Code.CID_UNKNOWN
            d = BlobRec.decode(raw)
            if d.patient != b.patient or d.dtype != b.dtype:
                return Code.CID_MISMATCH
        return OK
    return OK  # Policy: any patient


def _hold(view: Overlay, patient: bytes, dtype: int, staff: bytes, g: GrantRec) -> None:
    """Record until when `staff` holds (patient, dtype)'s current key epoch, by its grant and its
    release: nothing for a lasting grant of the type (only access that can expire is tracked) or
    for no hold at all, else the later of the grant's expiry and the release's."""
    cur = _epoch(view, patient, dtype)
    rel = g.release_of(dtype)
    until = [g.expiry_ms] if dtype in g.types else []
    if rel is not None and cur in rel.epochs:
        until.append(rel.expiry_ms)
    raw = view.get(keys.expiring(patient, dtype))
    holders = [Holder(*h) for h in decode(raw)] if raw is not None else []
    kept = [h for h in holders if h.staff != staff]
    if until and 0 not in until:
        kept.append(Holder(staff, max(until)))
    if kept != holders:
        view.put_obj(keys.expiring(patient, dtype), sorted(kept))


def _rotate(view: Overlay, patient: bytes, dtype: int) -> None:
    """A new key epoch for the type: nobody holds its key yet (the phone re-seals it to those who keep the type)."""
    view.put_obj(keys.epoch(patient, dtype), _epoch(view, patient, dtype) + 1)
    if view.get(keys.expiring(patient, dtype)) is not None:
        view.put_obj(keys.expiring(patient, dtype), [])


def _apply_release(view: Overlay, patient: bytes, r: Release, height: int, txid: bytes) -> None:
    raw = view.get(keys.grant(patient, r.staff))
    g = GrantRec.decode(raw) if raw is not None else None
    if g is None:  # a staff member joins the patient's committed list of grantees once
        view.append(keys.grant_count(patient), lambda i: keys.grant_entry(patient, i), r.staff)
        g = GrantRec([], 0, height, txid)
    old = g.release_of(r.dtype)
    others = tuple(x for x in g.released if x.dtype != r.dtype)
    if r.ends:
        g = g._replace(released=others)
        if old is not None and _epoch(view, patient, r.dtype) in old.epochs and r.dtype not in g.types:
            _rotate(view, patient, r.dtype)  # ends like a revoke: later data is under a key it never held
    else:
        rel = Released(r.dtype, r.expiry_ms, [k.epoch for k in r.keys], txid)
        if (old is not None and (cur := _epoch(view, patient, r.dtype)) in old.epochs and cur not in rel.epochs
                and r.dtype not in g.types):
            _rotate(view, patient, r.dtype)  # the release it replaces held the current key: that one ends here
        g = g._replace(released=tuple(sorted((*others, rel))))
        for k in r.keys:
            view.put(keys.sealed_key(patient, r.staff, r.dtype, k.epoch), k.sealed)
    view.put(keys.grant(patient, r.staff), g.encode())
    _hold(view, patient, r.dtype, r.staff, g)


def _epoch(view: Overlay, patient: bytes, dtype: int) -> int:
    v = view.get_obj(keys.epoch(patient, dtype))
    return 0 if v is None else v


def _apply(view: Overlay, tx: Tx, height: int, time_ms: int, rules: Rules) -> None:
    b = tx.body
    addr = tx.address
    if isinstance(b, Profile):
        c = b.credential
        rec = ProfileRec(b.name, b.role, b.org, b.box_public, tx.sender, height)
        if c is not None:
            rec = rec._replace(issuer=c.issuer, credential_until_ms=c.not_after_ms)
        view.put(keys.profile(addr), rec.encode())
    elif isinstance(b, Grant):
        raw = view.get(keys.grant(addr, b.staff))
        prev = GrantRec.decode(raw) if raw is not None else None
        # Types taken away from anyone start a new key epoch, so later writes are unreadable to them
        for dt in sorted(set(prev.types) - set(b.types) if prev else ()):
            _rotate(view, addr, dt)
        if prev is None:  # a staff member joins the patient's committed list of grantees once
            view.append(keys.grant_count(addr), lambda i: keys.grant_entry(addr, i), b.staff)
        # the grant replaces the lasting grant only: a release to this staff member stays apart
        g = GrantRec(list(b.types), b.expiry_ms, height, tx.id, prev.released if prev else ())
        view.put(keys.grant(addr, b.staff), g.encode())
        for dt in b.types:  # this grantee holds each granted type's current epoch until its expiry
            _hold(view, addr, dt, b.staff, g)
        for k in b.keys:
            view.put(keys.sealed_key(addr, b.staff, k.dtype, k.epoch), k.sealed)
    elif isinstance(b, Release):
        _apply_release(view, addr, b, height, tx.id)
    elif isinstance(b, Policy):
        view.put_obj(keys.policy(addr), PolicyRec(b.break_glass, height))
    elif isinstance(b, Read) and b.reason:
        issuer = clinician_issuer(view, addr, time_ms, rules)
        assert issuer is not None  # checked by _break_glass_check
        for key, _ in _windows(addr, issuer, b.patient, rules):
            rl = _window_reads(view, key, time_ms)
            view.put_obj(key, BreakGlassRec(rl.window_start_ms, rl.reads + 1))
        view.put_obj(keys.emergency_read(b.patient, addr, b.dtype), time_ms)
    elif isinstance(b, Write):
        view.put_obj(keys.blob(b.cid), BlobRec(addr, b.dtype, b.epoch, b.size, b.t_start_ms, b.t_end_ms, height, tx.id))
        view.put(keys.data_index(addr, b.dtype, b.t_start_ms, b.cid), b"")
        view.append(keys.data_count(addr), lambda i: keys.data_entry(addr, i), b.cid)


@dataclass
class BlockResult:
    codes: list[int]
    writes: dict[bytes, bytes]
    state_root: bytes
    nodes: dict[bytes, bytes]  # the state tree's dirty nodes (position -> record)


def apply_tx(view: Overlay, tx: Tx, height: int, idx: int, time_ms: int, rules: Rules = NO_ISSUERS) -> int:
    """Apply one transaction; every outcome leaves a receipt, and reads (allowed or not) an audit entry."""
    addr = tx.address
    if view.get(keys.receipt(tx.id)) is not None:
        return Code.DUPLICATE  # already executed: never overwrite its receipt
    code: int
    if tx.nonce != _nonce(view, addr) + 1:
        code = Code.BAD_NONCE
    else:
        view.put_obj(keys.nonce(addr), tx.nonce)
        code = check_tx(view, tx, time_ms, rules)
        if code == OK:
            _apply(view, tx, height, time_ms, rules)
        r = tx.body
        if isinstance(r, Read):
            entry = AuditRec(addr, r.dtype, r.cid, r.t_from_ms, r.t_to_ms, time_ms, tx.id, code, r.reason or None)
            patient = r.patient
            seq = view.get_obj(keys.audit_count(patient)) or 0
            view.append(keys.audit_count(patient), lambda i: keys.audit(patient, i), entry.encode())
            if r.reason:  # every emergency read, allowed or not, is indexed apart as well
                view.append(keys.emergency_count(patient), lambda i: keys.emergency_entry(patient, i), encode(seq))
    view.put_obj(keys.receipt(tx.id), Receipt(height, idx, code))
    return code


def apply_block(base: Get, txs: Iterable[Tx], height: int, time_ms: int, tree: smt.GetNode,
                rules: Rules = NO_ISSUERS) -> BlockResult:
    """Execute a block on the state `base` whose tree nodes `tree` reads; the tree is updated once."""
    view = Overlay(base)
    codes = [apply_tx(view, tx, height, i, time_ms, rules) for i, tx in enumerate(txs)]
    root, nodes = smt.update(tree, view.writes)
    return BlockResult(codes, view.writes, root, nodes)


__all__ = [
    "BREAK_GLASS_ACCESS_MS",
    "BREAK_GLASS_LIMIT",
    "BREAK_GLASS_WINDOW_MS",
    "CODES",
    "KIND_GRANT",
    "KIND_PROFILE",
    "KIND_WRITE",
    "OK",
    "Code",
    "Overlay",
    "Rules",
    "apply_block",
    "apply_tx",
    "break_glass_enabled",
    "break_glass_reopens_ms",
    "check_tx",
    "clinician_issuer",
    "genesis_state_root",
    "key_access",
    "read_allowed",
]


def _codec_twin(cid: bytes) -> bytes:
    """The CIDv1 naming the same sha2-256 digest under the other codec (raw <-> dag-pb). A write's CID is
    exactly `01 codec 12 20 digest` (Write refuses any other at decode). A block store lists a blob by
    its digest: a write of a blob's twin (the raw CID of another patient's dag-pb root, its stated size
    the root node's) had a validator that fetched it relist the honest blob as a raw one, not held."""
    return bytes((cid[0], CODEC_DAG_PB if cid[1] == CODEC_RAW else CODEC_RAW)) + cid[2:]

