"""The patient's phone: identity, data keys per (type, epoch), encryption, upload, access control."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from devices.patient import envelope
from devices.patient.client import ApiError, NodeClient
from devices.patient.commits import TxRejected, Upload, refused_for_good, submit_proven, wait_proven
from devices.patient.verified_reads import VerifiedReader
from devices.wearable.gatt import UUID_BY_KIND, decode_measurement
from node.crypto import seal
from node.files import write_durably
from node.ipfs.cid import Cid, cid_v1_raw
from node.sidecar import SIDECAR_MAX
from node.state import CODES, Code
from node.state.machine import BREAK_GLASS_ACCESS_MS
from node.state.records import NO_NONCE
from node.tx import Grant, Policy, Read, Release, SealedKey, Tx, Write, data_type_id, data_type_name
from node.tx.model import DATA_TYPES

log = logging.getLogger("medchain.phone")
HISTORY_EPOCHS = 12  # how many past key epochs a new grant carries (history a grantee can read)
CID_TRIES = 3  # a window sealed again after its CID was recorded first by another write
ROTATION_WAIT_S = 30.0  # how long a recorded rotation sent again is waited for before a write gives up


def _check_readings(tid: int, readings: list[envelope.Reading]) -> None:
    """Every reading of a window is a frame of its type's characteristic that decodes (ValueError
    naming the first that is not): a device on the short-range link sending another characteristic's
    frames must not have them sealed under this type's key, which a staff member granted only this
    type holds."""
    want = UUID_BY_KIND[data_type_name(tid)]
    for i, (t, uuid, frame) in enumerate(readings):
        if uuid != want:
            raise ValueError(f"reading {i} is of characteristic {uuid!r}, not {want:#06x} "
                             f"({data_type_name(tid)}): refused, not sealed under this type's key")
        if type(t) is not int or t < 0:
            raise ValueError(f"reading {i}: time_ms must be a non-negative int, got {t!r}")
        try:
            decode_measurement(uuid, bytes(frame))
        except ValueError as exc:
            raise ValueError(f"reading {i} is not a {data_type_name(tid)} frame: {exc}") from None


class RotationPending(Exception):
    """A key rotation the patient signed (a revoke, a release's end) has not committed, or was
    refused: no window is sealed before it is settled (Phone._rotation_first)."""


@dataclass
class WriteResult:
    txid: str
    cid: str
    epoch: int
    size: int


class Phone:
    def __init__(self, identity, client: NodeClient, chain_id: str, validators: list[bytes] | None = None,
                 pad_to: int = 0, reader: VerifiedReader | None = None, record: Path | None = None) -> None:
        self.identity = identity
        self.pad_to = pad_to  # metadata privacy: pad every window's plaintext to a multiple of this
        self.client = client
        self.chain_id = chain_id
        self.validators = validators  # genesis keys: when set, commits are checked by proof, not trusted
        self.master = envelope.master_secret(identity.secret, chain_id)
        self.next_nonce: int | None = None
        self.epochs: dict[int, int] = {}
        self.rekey_failures: dict[str, str] = {}  # grantee (hex) -> why its new keys did not commit
        self._healing = False
        self._expiry_due: dict[int, int] = {}  # data type -> the earliest expiry of a grant holding it
        # Reads a phone acts on: proven (reader) or taken on trust from one validator (client)
        self.reader = reader
        self.reads = reader or client
        # The phone's own record of its key epochs (it alone changes them) and of the newest block
        # it committed in: no answer below either is believed, and no window is sealed under less.
        self.record_path = record
        self.own_epochs: dict[int, int] = {}
        # a key rotation whose re-sealing to the other grantees has not all committed (a failure, or
        # a crash between the two): the nonce of the rotating transaction; once the chain has taken
        # that nonce, the next sync re-seals to whoever lacks a current key (not before: a rotation
        # committing late would come after a heal that found nothing to do)
        self.rekey_pending: int | None = None
        # ...and that rotating transaction's signed bytes until the chain has taken its nonce: no window
        # is sealed before it is (`_rotation_first`), else under a key the revoked grantee holds
        self.rotation: bytes | None = None
        if record is not None and record.exists():
            r = json.loads(record.read_text())
            self.own_epochs = {int(t): e for t, e in r["epochs"].items()}
            owed = r.get("rekey_pending")
            self.rekey_pending = None if owed in (None, False) else 0 if owed is True else int(owed)
            self.rotation = bytes.fromhex(r["rotation"]) if r.get("rotation") and self.rekey_pending is not None else None
            if reader is not None:
                reader.saw_height(r["height"])

    @property
    def address(self) -> bytes:
        return self.identity.address

    async def sync(self) -> None:
        if self.reader is not None:
            acct = await self.reader.account(self.address, min_epochs=self.own_epochs)
        else:
            acct = await self.client.account(self.address)
        self.next_nonce = acct["next_nonce"]
        proven = {DATA_TYPES[k]: v for k, v in acct["epochs"].items()}
        self.epochs = {t: max(e, self.own_epochs.get(t, 0)) for t, e in proven.items()}
        self._save_record()
        if self.rekey_pending is not None and self.next_nonce > self.rekey_pending and not self._healing:
            if self.rotation is not None:
                await self._rotation_took_its_nonce()
            self._healing = True
            try:
                await self.heal_keys()
            finally:
                self._healing = False

    def _save_record(self) -> None:
        for t, e in self.epochs.items():
            self.own_epochs[t] = max(e, self.own_epochs.get(t, 0))
        if self.record_path is not None:
            h = self.reader.min_height if self.reader is not None else 0
            write_durably(self.record_path, json.dumps({"epochs": self.own_epochs, "height": h,
                                                        "rekey_pending": self.rekey_pending,
                                                        "rotation": self.rotation.hex() if self.rotation else None}))

    async def _rotation_took_its_nonce(self) -> None:
        """The chain has passed the nonce of a recorded rotation whose own commit the phone never saw
        proven (it stopped, or lost the answer, or sent it without waiting). Another transaction
        with this key (another device) may have taken that nonce, and the revoke would be forgotten
        without a word. The same signed bytes are sent again: a committed one is "duplicate" (an
        honest validator says so before judging it again) and its proven commit that took the nonce
        settles it (the healing goes on). A stale nonce, any other refusal for good, or a commit
        that did not take the nonce: it did not happen, its bytes are dropped and the patient told
        once (RotationPending). Anything else (no proven answer yet) keeps the record for the next sync."""
        try:
            tx = Tx.decode(self.rotation or b"", self.chain_id)
        except ValueError:
            return  # _rotation_first drops it and says so

        def not_happened(why: str) -> RotationPending:
            self._rekey_owed(tx.nonce)  # its bytes dropped; a re-seal owed from before is still owed
            return RotationPending(f"the revoke (or release's end) signed with nonce {tx.nonce} did not happen "
                                   f"({why}): another transaction of this patient took its nonce: revoke again")
        try:
            try:
                st = await submit_proven(self.client, tx, None, ROTATION_WAIT_S, self.validators, self.chain_id,
                                         self.reader)
            except ApiError as exc:
                if "stale nonce" in exc.reason or refused_for_good(exc):
                    raise not_happened(exc.reason) from exc
                if "duplicate" not in exc.reason:
                    raise
                # with no others to fail over to, "committed" is its validator's word: the proof decides
                st = await wait_proven(self.client, tx.id.hex(), ROTATION_WAIT_S, self.validators, self.chain_id,
                                       self.reader)
        except (TxRejected, ApiError) as exc:
            raise RotationPending(f"the revoke (or release's end) signed with nonce {tx.nonce} is not proven "
                                  f"committed yet ({exc}): no data is sealed until it is") from exc
        if st["code"] in NO_NONCE:
            raise not_happened(f"committed as {CODES.get(st['code'], st['code'])}, its nonce not taken")
        self._rekey_owed(tx.nonce)  # its own commit took its nonce, proven: its bytes are not needed again

    def _rekey_owed(self, nonce: int | None, rotation: bytes | None = None) -> None:
        """Record (durably, before the rotation is sent, with the nonce it is sent under and, while
        the chain has not taken that nonce, its signed bytes) that grantees may lack the current
        keys; None: nothing owed."""
        rotation = rotation if nonce is not None else None
        if nonce != self.rekey_pending or rotation != self.rotation:
            self.rekey_pending, self.rotation = nonce, rotation
            self._save_record()

    async def _nonce(self) -> int:
        if self.next_nonce is None:
            await self.sync()
        n = self.next_nonce
        self.next_nonce += 1
        return n

    async def send(self, body, wait: bool = True, timeout: float = 30.0,
                   sidecar: bytes | None = None, signed: Callable[[Tx], None] | None = None,
                   upload: Upload | None = None) -> str:
        """Sign and submit (a write with its ciphertext as sidecar); with wait, block until committed
        and check it was applied. `signed(tx)` runs between signing and the first byte sent (a
        rotation recorded: refused for good, the record is put back as it was). A rotation signed
        earlier and not yet taken goes first (a new one replaces it): else this transaction took its
        nonce, and the revoke was forgotten without a word. `upload`: a write's standalone blob, for a
        validator the write fails over to (commits.submit_proven)."""
        if signed is None:
            await self._settle_rotation()
        tx = Tx.build(self.identity, self.chain_id, await self._nonce(), body)
        before = (self.rekey_pending, self.rotation)
        if signed is not None:
            signed(tx)
        try:
            await self._submit(tx, wait, timeout, sidecar, upload)
        except ApiError as exc:
            if signed is not None and refused_for_good(exc):
                self._rekey_owed(*before)  # its nonce was never taken: nothing rotated, nothing owed for it
            raise
        return tx.id.hex()

    async def _submit(self, tx: Tx, wait: bool, timeout: float, sidecar: bytes | None,
                      upload: Upload | None = None) -> None:
        try:
            if not wait:
                await self.client.submit(tx.raw, sidecar)
                return
            # one request: the answer comes with the commit and its proofs
            st = await submit_proven(self.client, tx, sidecar, timeout, self.validators, self.chain_id, self.reader,
                                     upload)
        except Exception:
            self.next_nonce = None  # whether its nonce was taken is the chain's to say: resync on the next send
            raise
        if self.rotation == tx.raw and st["code"] not in NO_NONCE:  # its own commit took its nonce, proven
            self._rekey_owed(tx.nonce)
        if st["code"] in NO_NONCE:
            self.next_nonce = None  # executed without taking its nonce (bad nonce, duplicate)
        if st["code"] != 0:
            raise TxRejected(st)

    async def confirm(self, txid: str, timeout: float = 30.0) -> dict:
        """The proven commit of a transaction sent earlier (TxRejected if it failed)."""
        st = await wait_proven(self.client, txid, timeout, self.validators, self.chain_id, self.reader)
        if st["code"] != 0:
            raise TxRejected(st)
        return st

    def data_key(self, dtype: int, epoch: int) -> bytes:
        return envelope.data_key(self.master, dtype, epoch)

    async def write_window(self, dtype: str | int, readings: list[envelope.Reading], wait: bool = True,
                           slot: tuple[int, int] | None = None) -> WriteResult:
        """Encrypt a window of readings of one type, upload it, record its CID on chain. With `slot`
        (start_ms, end_ms) the window is that schedule slot, even empty: see write_slot."""
        tid = data_type_id(dtype)
        if not readings and slot is None:
            raise ValueError("empty window")
        _check_readings(tid, readings)
        await self._settle_rotation()
        if self.next_nonce is None:
            await self.sync()
        t0, t1 = slot if slot is not None else (min(r[0] for r in readings), max(r[0] for r in readings))
        try:
            return await self._seal_and_write(tid, readings, t0, t1, wait)
        except (ApiError, TxRejected) as exc:  # a grant expired that the phone's cache did not know of
            code = exc.status.get("code") if isinstance(exc, TxRejected) else None
            if code != Code.KEY_EXPIRED and CODES[Code.KEY_EXPIRED] not in str(exc):
                raise
            self._expiry_due = {}
            return await self._seal_and_write(tid, readings, t0, t1, wait)

    async def _seal_and_write(self, tid: int, readings: list[envelope.Reading], t0: int, t1: int,
                              wait: bool) -> WriteResult:
        """Seal and record the window. A blob's CID is public once sent: anyone who saw it (a byzantine
        validator) may record it first in a write of its own, and ours is refused as recorded; sealed
        again under a fresh nonce it is another blob with another CID (a few tries)."""
        for _ in range(CID_TRIES - 1):
            try:
                return await self._seal_and_write_once(tid, readings, t0, t1, wait)
            except (ApiError, TxRejected) as exc:  # refused at admission (409), or in the block
                if not (exc.status.get("code") == Code.CID_RECORDED if isinstance(exc, TxRejected)
                        else exc.status == 409 and CODES[Code.CID_RECORDED] in exc.reason):
                    raise
                log.warning("window %d-%d of type %d: its CID was recorded first by another write; sealed again",
                            t0, t1, tid)
        return await self._seal_and_write_once(tid, readings, t0, t1, wait)

    async def _seal_and_write_once(self, tid: int, readings: list[envelope.Reading], t0: int, t1: int,
                                   wait: bool) -> WriteResult:
        await self.rotate_expired(tid)
        epoch = self.epochs.get(tid, 0)
        ad = envelope.aad(self.chain_id, self.address, tid, epoch, t0, t1)
        blob = envelope.seal_window(self.data_key(tid, epoch), ad, readings, self.pad_to)
        upload = None
        if len(blob) <= SIDECAR_MAX:  # one raw block: its CID is computed here, the blob rides along
            cid, side = str(cid_v1_raw(blob)), blob
        else:  # a large window: a signed standalone upload, then the write names it

            async def upload(c: NodeClient) -> str:  # also to a validator the write fails over to
                return await c.upload(blob, self.identity, self.chain_id)

            cid, side = await upload(self.client), None
        txid = await self.send(Write(tid, Cid.parse(cid).to_bytes(), len(blob), epoch, t0, t1), wait=wait,
                               sidecar=side, upload=upload)
        return WriteResult(txid, cid, epoch, len(blob))

    async def write_slot(self, dtype: str | int, readings: list[envelope.Reading], slot_start_ms: int,
                         period_ms: int, wait: bool = True) -> WriteResult:
        """Metadata privacy: upload on a fixed schedule. Every slot of every type is written, with
        or without readings, its window is the slot (not the readings' times) and, with pad_to set,
        every ciphertext has the same size; so upload time, window and size do not reveal when a
        wearable measured or how much. Costs one write per slot per type and padded storage."""
        if slot_start_ms % period_ms:
            raise ValueError("slots start at multiples of the period")
        if any(not slot_start_ms <= r[0] < slot_start_ms + period_ms for r in readings):
            raise ValueError("a reading outside the slot")
        return await self.write_window(dtype, readings, wait, (slot_start_ms, slot_start_ms + period_ms - 1))

    async def _sealed_keys(self, staff: bytes, types: tuple[int, ...], epochs: dict[int, int]) -> tuple[SealedKey, ...]:
        """The keys a grant of `types` carries: each type's current epoch and HISTORY_EPOCHS - 1 before it."""
        return await self._seal_to(staff, {t: range(max(0, epochs.get(t, 0) - HISTORY_EPOCHS + 1), epochs.get(t, 0) + 1)
                                           for t in types})

    async def _seal_to(self, staff: bytes, wanted: dict[int, Iterable[int]]) -> tuple[SealedKey, ...]:
        """The data keys of these (type: epochs), each sealed to the staff member's X25519 key (with a
        reader, the one a proof binds to its address, from a state no older than f+1 validators'
        heads now)."""
        if self.reader is not None:
            self.reader.refresh()
        prof = (await self.reads.account(staff))["profile"]
        if prof is None:
            raise ValueError(f"staff {staff.hex()} has not registered a profile")
        box = bytes.fromhex(prof["x25519_public"])
        return tuple(SealedKey(t, e, seal.seal(box, self.data_key(t, e))) for t, es in wanted.items() for e in es)

    async def rotate_expired(self, dtype: int | None = None) -> list[str]:
        """Expiry ends access like a revoke: before writing (type `dtype`, or any), revoke every grant
        and end every emergency release that has expired, so the type moves to a new key epoch its
        former holder never held (the chain refuses a write under an epoch an expired grant or
        release holds: Code.KEY_EXPIRED)."""
        now = int(time.time() * 1000)
        due = self._expiry_due.get(dtype) if dtype is not None else None
        if due is not None and now < due:
            return []  # no grant of this type can have expired since the grants were last read
        grants = (await self.reads.grants(self.address))["grants"]
        expired = [g for g in grants if g["types"] and 0 < g["expiry_ms"] <= now
                   and (dtype is None or dtype in {data_type_id(t) for t in g["types"]})]
        # the lasting grant only: a release runs to its own expiry (below)
        txids = [await self.grant(bytes.fromhex(g["staff"]), []) for g in expired]
        for g in grants:
            for r in g.get("released", []):
                t = data_type_id(r["type"])
                if r["expiry_ms"] <= now and (dtype is None or dtype == t):
                    txids.append(await self.end_release(bytes.fromhex(g["staff"]), t))
        # per type, the earliest expiry among the grants and releases left (expired grants of other
        # types included, so their next write looks again): writes before it need not read the grants
        gone = {g["staff"] for g in expired}
        due_by_type = dict.fromkeys(DATA_TYPES.values(), 2**63)
        for g in grants:
            held = [(data_type_id(t), g["expiry_ms"]) for t in g["types"] if g["expiry_ms"]] \
                if g["staff"] not in gone else []
            held += [(data_type_id(r["type"]), r["expiry_ms"]) for r in g.get("released", []) if r["expiry_ms"] > now]
            for tid, until in held:
                due_by_type[tid] = min(due_by_type[tid], until)
        self._expiry_due = due_by_type
        return txids

    async def grant(self, staff: bytes, types: list[str | int], expiry_ms: int = 0) -> str:
        """Grant (or change to) exactly `types`; an empty list revokes. Types taken away get a new key
        epoch on chain; the phone then re-seals the new keys to everyone who still holds those types."""
        # before keys are sealed: it may move an epoch (a revoke replaces one a lost nonce holds up)
        settled = await self._settle_rotation(replacing=not types)
        await self.sync()
        tids = tuple(sorted({data_type_id(t) for t in types}))
        if settled is not None and isinstance(settled.body, Grant) and settled.body.staff == staff \
                and (settled.body.types, settled.body.expiry_ms) == (tids, expiry_ms):
            return settled.id.hex()  # this very change, signed earlier, has just committed
        before = {g["staff"]: g for g in (await self.reads.grants(self.address))["grants"]}
        prev = {data_type_id(t) for t in before.get(staff.hex(), {}).get("types", [])}
        removed = prev - set(tids)
        keys = await self._sealed_keys(staff, tids, self.epochs)
        self._expiry_due = {}  # the grants change: read them again before the next write
        txid = await self.send(Grant(staff, tids, expiry_ms, keys), signed=self._rotating if removed else None)
        if removed:  # the chain moved these types to a new epoch: record it before anyone answers
            for t in removed:
                self.own_epochs[t] = max(self.own_epochs.get(t, 0), self.epochs.get(t, 0) + 1)
            await self._rekey(before, removed, staff)
        return txid

    async def end_release(self, staff: bytes, dtype: int) -> str:
        """End an emergency release; if it held the current key epoch the chain rotates the type
        (as for a revoke) and the phone re-seals the new key to the type's remaining grantees."""
        await self._settle_rotation(replacing=True)
        await self.sync()
        return await self._send_release(Release(staff, dtype, 0, ()))

    async def _send_release(self, r: Release) -> str:
        """Send a release (or its end). One that ends, or replaces, a release holding the current key
        epoch rotates the type on chain: the new key is then re-sealed to the type's other grantees."""
        before = {g["staff"]: g for g in (await self.reads.grants(self.address))["grants"]}
        epoch = self.epochs.get(r.dtype, 0)
        self._expiry_due = {}
        if self.next_nonce is None:
            await self.sync()
        txid = await self.send(r, signed=self._rotating)  # it may rotate the type
        await self.sync()
        if self.epochs.get(r.dtype, 0) > epoch:
            await self._rekey(before, {r.dtype}, r.staff)
        else:
            self._rekey_owed(None)
        return txid

    def _rotating(self, tx: Tx) -> None:
        self._rekey_owed(tx.nonce, tx.raw)

    async def _settle_rotation(self, replacing: bool = False) -> Tx | None:
        """_rotation_first, when a rotation is recorded and this is not the healing it starts."""
        return await self._rotation_first(replacing) if self.rotation is not None and not self._healing else None

    async def _rotation_first(self, replacing: bool = False) -> Tx | None:
        """Before a window is sealed: a revoke (or a release's end) signed earlier whose nonce the
        chain has not taken (its answer lost, refused by every validator for now, the phone killed
        after signing it) is sent again, the same signed bytes, and committed first. Sealed under
        the current epoch meanwhile, a window went, sidecar and all, to validators one of which may
        collude with the grantee being revoked, who holds that epoch's key. RotationPending while
        a transaction before it has not committed; refused for good, the record is dropped and the
        refusal raised once (the revoke did not happen: the patient must hear it). `replacing`: the
        caller signs a revoke (or a release's end) next, which takes the place of one a lost nonce
        holds up. Returns the rotation it committed and applied (None: nothing, or it failed)."""
        await self.sync()  # the proven next nonce; past the rotation's, it heals what it owes
        if self.rotation is None or self.rekey_pending is None or self.next_nonce > self.rekey_pending:
            return None
        try:
            tx = Tx.decode(self.rotation, self.chain_id)
        except ValueError as exc:  # a record not of this chain, or damaged: it would block every write
            log.error("the recorded key rotation does not decode (%s): dropped; revoke again if one was meant", exc)
            self._rekey_owed(None)
            return None
        if self.next_nonce < self.rekey_pending and replacing:
            log.warning("the key rotation signed with nonce %d waits behind nonce %d, never committed: "
                        "replaced by the one signed now", self.rekey_pending, self.next_nonce)
            self._rekey_owed(None)
            return None
        if self.next_nonce < self.rekey_pending:
            raise RotationPending(f"a revoke (or a release's end) signed with nonce {self.rekey_pending} waits for "
                                  f"this patient's nonce {self.next_nonce} to commit: no data is sealed until it "
                                  "has (if that transaction was lost, revoke again)")
        log.warning("a key rotation signed with nonce %d has not committed: sent again before any data is sealed",
                    tx.nonce)
        self.next_nonce = tx.nonce + 1
        applied: Tx | None = tx
        try:
            await self._submit(tx, True, ROTATION_WAIT_S, None)
        except (ApiError, TxRejected) as exc:
            if isinstance(exc, ApiError) and refused_for_good(exc):
                self._rekey_owed(None)
                raise RotationPending(f"the revoke (or release's end) signed with nonce {tx.nonce} was refused "
                                      f"for good, so it did not happen ({exc.reason}): revoke again") from exc
            if isinstance(exc, ApiError) or exc.status.get("status") != "committed":  # pending, dropped, unknown
                raise RotationPending(f"the revoke (or release's end) signed with nonce {tx.nonce} has not committed "
                                      f"yet ({exc}): no data is sealed until it has") from exc
            log.warning("the key rotation signed with nonce %d committed as a failure: %s", tx.nonce, exc)
            applied = None  # its nonce is taken all the same: the sync below settles the record
        self._expiry_due = {}  # the grants changed: read them again before the next write
        await self.sync()  # its nonce is taken: re-seal the new keys to the type's other grantees
        if self.rotation is not None and self.rekey_pending is not None and self.next_nonce <= self.rekey_pending:
            raise RotationPending(f"the revoke (or release's end) signed with nonce {tx.nonce} is not yet on the "
                                  "chain as proven: no data is sealed until it is")
        return applied

    async def _rekey(self, before: dict[str, dict], rotated: set[int], staff: bytes) -> None:
        """Re-seal the new epochs of the `rotated` types to every unexpired grantee of them but `staff`."""
        self._healing = True  # this is the healing: the syncs below must not start another
        try:
            await self.sync()
            await self._reseal({other: g for other, g in before.items()
                                if other != staff.hex() and rotated & {data_type_id(t) for t in g["types"]}})
        finally:
            self._healing = False

    async def heal_keys(self) -> dict[str, str]:
        """Re-seal the current keys to every unexpired grantee lacking the current epoch of a type it
        holds (after a rotation whose re-sealing failed, or a crash before it); the failures, by grantee."""
        grants = (await self.reads.grants(self.address))["grants"]
        lacking = {}
        for g in grants:
            held = {(data_type_id(k["type"]), k["epoch"])
                    for k in (await self.reads.sealed_keys(self.address, bytes.fromhex(g["staff"])))["keys"]}
            if any((data_type_id(t), self.epochs.get(data_type_id(t), 0)) not in held for t in g["types"]):
                lacking[g["staff"]] = g
        await self._reseal(lacking)
        return self.rekey_failures

    async def _reseal(self, grantees: dict[str, dict]) -> None:
        """A grant of the same types and expiry, carrying the current keys, to each of `grantees`."""
        now = int(time.time() * 1000)
        self.rekey_failures = {}
        for other, g in grantees.items():
            gt = tuple(sorted(data_type_id(t) for t in g["types"]))
            if 0 < g["expiry_ms"] <= now:
                continue  # expired: it gets no new key (and the chain would refuse its grant)
            try:  # one grantee's failure must not leave the others without the new key
                okeys = await self._sealed_keys(bytes.fromhex(other), gt, self.epochs)
                await self.send(Grant(bytes.fromhex(other), gt, g["expiry_ms"], okeys))
            except (ApiError, TxRejected, ValueError) as exc:
                self.rekey_failures[other] = str(exc)
                log.warning("re-keying grantee %s failed (the others go on): %s", other, exc)
        self._rekey_owed(self.rekey_pending if self.rekey_failures else None)

    async def revoke(self, staff: bytes) -> str:
        """Take away all `staff` holds of this patient: the lasting grant, then every emergency release
        still running (left alone, a release of the current epoch kept opening data written after the
        revoke until it expired, up to 24 h; from a review). The grant's transaction id."""
        txid = await self.grant(staff, [])
        now = int(time.time() * 1000)
        for g in (await self.reads.grants(self.address))["grants"]:
            if g["staff"] == staff.hex():
                for r in g.get("released", []):
                    if r["expiry_ms"] > now:
                        await self.end_release(staff, data_type_id(r["type"]))
        return txid

    async def read_own(self, dtype: str | int) -> list[envelope.Reading]:
        """The patient reads their own data (no grant needed; the read is still on the ledger)."""
        tid = data_type_id(dtype)
        await self.send(Read(self.address, tid, b"", 0, 2**63 - 1))
        out: list[envelope.Reading] = []
        for rec in (await self.reads.data(self.address, type=data_type_name(tid)))["data"]:
            cid = Cid.parse(rec["cid"])
            blob = await self.client.download_any(self.reader.urls if self.reader else [], self.identity, self.chain_id,
                                                  rec["cid"], cid.to_bytes(), size=rec["size"])
            ad = envelope.aad(self.chain_id, self.address, tid, rec["epoch"], rec["t_start_ms"], rec["t_end_ms"])
            out += envelope.open_window(self.data_key(tid, rec["epoch"]), ad, blob)
        return out

    async def audit(self) -> list[dict]:
        return (await self.reads.audit(self.address))["reads"]

    async def set_break_glass(self, enabled: bool) -> str:
        """Allow (default) or forbid emergency (break-glass) reads of this patient's data, on chain."""
        return await self.send(Policy(enabled))

    async def plan_release(self, within_ms: int = BREAK_GLASS_ACCESS_MS, hold_ms: int | None = None) -> list[ReleasePlan]:
        """What answering the emergency reads of the last `within_ms` would release: per reader and
        data type, only the key epochs of the blobs those reads covered (on chain when each read
        committed, in its range capped at its block time), until the latest read's access window
        ends (or, with `hold_ms`, sooner). Nothing for a reader whose lasting grant holds the type."""
        now = int(time.time() * 1000)
        await self.sync()
        reads = [r for r in (await self.reads.audit(self.address))["break_glass"]
                 if r["allowed"] and now - r["time_ms"] < min(within_ms, BREAK_GLASS_ACCESS_MS)]
        if not reads:
            return []
        grants = {g["staff"]: g for g in (await self.reads.grants(self.address))["grants"]}
        data: dict[str, list[dict]] = {}
        plans: dict[tuple[str, int], ReleasePlan] = {}
        for r in reads:
            if r["type"] not in data:
                data[r["type"]] = (await self.reads.data(self.address, type=r["type"]))["data"]
            touched = {b["epoch"] for b in data[r["type"]] if b["height"] <= r["height"] and _covers(r, b)}
            p = plans.setdefault((r["reader"], data_type_id(r["type"])),
                                 ReleasePlan(r["reader"], data_type_id(r["type"]), [], 0, []))
            p.epochs = sorted(set(p.epochs) | touched)
            p.expiry_ms = max(p.expiry_ms, r["time_ms"] + BREAK_GLASS_ACCESS_MS)
            if hold_ms is not None:
                p.expiry_ms = min(p.expiry_ms, now + hold_ms)
            p.reads.append(r["tx"])
        out = []
        for (staff, t), p in sorted(plans.items()):
            g = grants.get(staff)
            if g is not None and data_type_name(t) in g["types"] and g["expiry_ms"] == 0:
                continue  # a lasting grant of the type: the reader holds its keys already
            old = next((x for x in (g or {}).get("released", []) if x["type"] == data_type_name(t)), None)
            if old is not None and old["expiry_ms"] > now:  # a release replaces the last: keep its epochs
                if set(p.epochs) <= set(old["epochs"]) and old["expiry_ms"] >= p.expiry_ms:
                    continue
                p.epochs = sorted(set(p.epochs) | set(old["epochs"]))
            if p.epochs:
                prof = (await self.reads.account(bytes.fromhex(staff)))["profile"] or {}
                p.name, p.org = prof.get("name", "?"), prof.get("org", "")
                p.issuer = (prof.get("credential") or {}).get("issuer", "")
                out.append(p)
        return out

    async def release(self, plans: list[ReleasePlan]) -> list[str]:
        """Carry out release plans: each reader gets its epochs' keys sealed to it alone, as a
        separate emergency release that expires and never widens a lasting grant."""
        txids = []
        for p in plans:
            await self._settle_rotation()  # before keys are sealed: it may move an epoch
            staff = bytes.fromhex(p.staff)
            keys = await self._seal_to(staff, {p.dtype: p.epochs})
            txids.append(await self._send_release(Release(staff, p.dtype, p.expiry_ms, keys)))
        return txids

    async def answer_break_glass(self, within_ms: int = BREAK_GLASS_ACCESS_MS) -> list[str]:
        """The phone as the patient's key agent, without asking (the CLI asks first): a break-glass
        read opens the ciphertext, not the data key; release what plan_release finds."""
        return await self.release(await self.plan_release(within_ms))


@dataclass
class ReleasePlan:
    """Keys one emergency reader would get: what the patient is asked to confirm."""

    staff: str  # hex address
    dtype: int
    epochs: list[int]
    expiry_ms: int
    reads: list[str]  # the emergency reads (tx ids) it answers
    name: str = ""
    org: str = ""
    issuer: str = ""  # hex: the credential's issuer

    def to_json(self) -> dict:
        return {"staff": self.staff, "name": self.name, "org": self.org, "issuer": self.issuer,
                "type": data_type_name(self.dtype), "epochs": self.epochs, "expiry_ms": self.expiry_ms,
                "reads": self.reads}


def _covers(read: dict, blob: dict) -> bool:
    """Whether an emergency read (an audit entry) covered a blob (a data entry): its CID, or its
    time range capped at the read's block time, as validators serve it (node/api/blobs.read_covers)."""
    if read["cid"]:
        return blob["cid"] == read["cid"]
    return blob["t_end_ms"] >= read["from_ms"] and blob["t_start_ms"] <= min(read["to_ms"], read["time_ms"])
