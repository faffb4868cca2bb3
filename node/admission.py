"""The admission stage: what a transaction passes before it waits in the mempool.

Stateless checks (decode, chain id, the sidecar against its CID, one batch signature check) run in
the verifier thread, off the event loop; stateful checks (replay, policy, nonce, blob held, the
mempool's limits) run on the loop, in submission order. The stage owns its state: the caches of
verified and failed signatures, the recent refusals (for `GET /v1/tx`), the client transactions
waiting to be forwarded with their sidecars, and when each pending transaction arrived. It returns
its own errors (AdmissionError); what they become on the wire is the API's business.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from node import clock
from node.backlog import Backlog
from node.block import Block
from node.crypto import ecdsa
from node.crypto.batch import verify_batch
from node.execution import Executed
from node.ipfs.blockstore import BlockStore
from node.ipfs.cid import CODEC_RAW, Cid
from node.ledger import Ledger
from node.ledger.store import Snapshot
from node.mempool import AdmissionError, Mempool, Refusal, admission_origin
from node.metrics import Metrics
from node.sidecar import SIDECAR_MAX, Item, check_sidecar
from node.state import CODES, OK, Code, Overlay, check_tx, keys
from node.state.machine import break_glass_reopens_ms
from node.state.records import NO_NONCE
from node.state.rules import NO_ISSUERS, Rules
from node.tx import KIND_WRITE, Tx, TxError
from node.tx.model import BAD_SIGNATURE
from node.wire import MAX_TX_BYTES, WireError, decode

# The kind of refusal each state check's code is.
_CODE_REFUSAL = {Code.NO_PROFILE: Refusal.UNPROCESSABLE, Code.DENIED: Refusal.FORBIDDEN,
                 Code.CID_UNKNOWN: Refusal.NOT_FOUND, Code.STALE_EPOCH: Refusal.CONFLICT,
                 Code.CID_RECORDED: Refusal.CONFLICT, Code.INVALID_GRANT: Refusal.UNPROCESSABLE,
                 Code.CID_MISMATCH: Refusal.UNPROCESSABLE, Code.BREAK_GLASS_OFF: Refusal.FORBIDDEN,
                 Code.KEY_EXPIRED: Refusal.CONFLICT,
                 Code.NO_CREDENTIAL: Refusal.FORBIDDEN}
# Bounded caches, sized for memory on edge hardware (~170 bytes an entry): ids verified at admission
# (a block's transactions are not verified twice while they wait: seconds, not minutes; 32,768 is
# 13 s of the network's writes at 2,500/s, and one that ages out is only verified again), ids whose
# signature failed (a replayed bad transaction costs a lookup), recent refusals (for GET /v1/tx)
_VERIFIED_CACHE = 1 << 15
_BAD_SIG_CACHE = 1 << 16
_REJECTED_CACHE = 50_000
MAX_REASON = 240  # characters of a refusal's reason kept and answered (the cache is then ~15 MB at most)
_REFUSED_FOR_NOW_CACHE = 1 << 15  # senders whose nonce was refused for now (bounded)
WATCH_CHECKS = 8  # pooled transactions checked per tick for one to watch for censorship
GAP_MAX_S = 60.0  # a forwarded transaction waits this long at most for its sender's missing nonce
REFORWARD_S = 5.0  # well above a healthy p99 commit latency: only stranded transactions are resent


def size_mismatch(cid: Cid, held: int, stated: int) -> str:
    """Why a write is refused whose blob, held here, is not the size it states."""
    return f"size mismatch: blob {cid} is {held} bytes, transaction says {stated}"


class Admission:
    def __init__(self, chain_id: str, ledger: Ledger, blobs: BlockStore, mempool: Mempool, metrics: Metrics,
                 backlog: Backlog, rules: Rules = NO_ISSUERS) -> None:
        self.chain_id, self.ledger, self.blobs, self.mempool, self.metrics = chain_id, ledger, blobs, mempool, metrics
        self.backlog = backlog  # what clients may make this validator take on: a bounded wait, not the whole pool
        self.checking = 0  # client transactions in the verifier thread: taken on, not yet in the pool
        self.rules = rules  # the genesis's: credential issuers and break-glass limits
        self.forwarding = False  # set once the p2p adapter runs: client transactions are then forwarded
        self.check_held_size = True  # off only in the byzantine fault-injection mode "missize" (node/faults.py)
        self.verified: OrderedDict[bytes, None] = OrderedDict()
        self.bad_sigs: OrderedDict[bytes, None] = OrderedDict()
        self.rejected: OrderedDict[bytes, str] = OrderedDict()
        # sender -> (its lowest nonce refused for now, until when later nonces wait for it, the refusal)
        self.refused_for_now: OrderedDict[bytes, tuple[int, float, AdmissionError]] = OrderedDict()
        self.forward: list[Item] = []  # admitted client transactions (and sidecars) to forward
        self.submitted_at: dict[bytes, float] = {}  # client submissions here, for the latency metric
        self.pending_since: dict[bytes, float] = {}  # every admitted tx: when to re-forward it next
        self._verifier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify")  # FIFO: keeps order

    def close(self) -> None:
        self._verifier.shutdown(wait=True)

    def take_forward(self) -> list[Item]:
        batch, self.forward = self.forward, []
        return batch

    def committed_nonce(self, addr: bytes, get: Callable[[bytes], bytes | None] | None = None) -> int:
        v = (get or self.ledger.get_state)(keys.nonce(addr))
        return 0 if v is None else decode(v)

    def reject(self, txid: bytes | None, kind: Refusal, reason: str,
                retry_after: float | None = None) -> AdmissionError:
        if len(reason) > MAX_REASON:  # a reason may quote what was sent (a 16 KB field): kept short
            reason = reason[:MAX_REASON - 3] + "..."
        self.metrics.rejected.labels(reason.split(":")[0]).inc()
        if txid is not None:
            self.rejected[txid] = reason
            while len(self.rejected) > _REJECTED_CACHE:
                self.rejected.popitem(last=False)
        return AdmissionError(kind, reason, retry_after)

    async def submit_many(self, items: list[Item], forwarded: bool = False) -> list[bytes | AdmissionError]:
        """Admit a batch of (transaction, sidecar or None): parse and verify every signature in the
        verifier thread (the loop keeps serving; the native batch verifier releases the GIL), then
        admit in order on the loop. Client transactions are forwarded to the other validators in
        batches, with their sidecars. Admission order follows submission order: one FIFO thread."""
        arrived = time.monotonic()  # rate limits count arrivals, not when verification finished
        taken = 0 if forwarded else len(items)
        self.checking += taken
        try:
            checked = await asyncio.get_running_loop().run_in_executor(self._verifier, self._check_items, items,
                                                                       forwarded)
        finally:
            self.checking -= taken
        return self._admit_checked(checked, forwarded, arrived)

    def submit_many_sync(self, items: list[Item], forwarded: bool = False) -> list[bytes | AdmissionError]:
        """submit_many on the caller's thread (the loop): for tests and small in-process callers."""
        return self._admit_checked(self._check_items(items, forwarded), forwarded, time.monotonic())

    def full(self) -> AdmissionError | None:
        """A 503 for a client's submission, checked before its body is decoded, while the verifier
        already holds a whole bound's worth of client transactions (node/backlog.py): their
        signatures are this validator's costliest work, and the pool could not take them anyway.
        Otherwise None: the pool's own bound then decides per transaction, fairly between clients."""
        limit = self.backlog.limit(time.monotonic())
        if self.checking < limit:
            return None
        self.backlog.refused += 1
        return self.reject(None, Refusal.OVERLOADED, f"overloaded: {self.checking} client transactions are being "
                           f"verified, the {limit} this validator takes at the chain's current rate: retry later "
                           "or elsewhere", self.backlog.retry_after())

    def _check_items(self, items: list[Item], forwarded: bool) -> list:
        """Stateless checks (decode, chain id, sidecar, signature): pure, runs off the loop. Returns per
        item an AdmissionError, (txid or None, Refusal, reason) for a refusal, or (tx, sidecar). Known
        bad signatures cost a lookup."""
        out: list = []
        todo: list[tuple[int, Tx]] = []
        for raw, side in items:
            if forwarded and len(raw) <= MAX_TX_BYTES and ecdsa.sha256(raw) in self.mempool:
                out.append(AdmissionError(Refusal.CONFLICT, "duplicate: transaction already pending"))
                continue  # a re-forwarded copy we hold already: costs a hash, not a decode
            try:
                tx = Tx.decode(raw, check_sig=False)
            except (TxError, WireError) as exc:
                txid = ecdsa.sha256(raw) if len(raw) <= MAX_TX_BYTES else None
                out.append((txid, Refusal.INVALID, f"invalid transaction: {exc}"))
                continue
            if tx.chain_id != self.chain_id:
                out.append((tx.id, Refusal.INVALID, f"wrong chain id: {tx.chain_id!r}, this chain is {self.chain_id!r}"))
                continue
            if tx.id in self.bad_sigs:
                out.append((tx.id, Refusal.INVALID, f"invalid transaction: {BAD_SIGNATURE}"))
                continue
            if side is not None:
                why = check_sidecar(tx, side)
                if why is not None:
                    out.append((tx.id, Refusal.INVALID, f"invalid sidecar: {why}"))
                    continue
            if tx.id not in self.verified:
                todo.append((len(out), tx))
            out.append((tx, side))
        oks = verify_batch([(t.sender, t.digest, t.sig) for _, t in todo]) if todo else []
        for (i, tx), ok in zip(todo, oks, strict=True):
            if not ok:
                out[i] = (tx.id, Refusal.INVALID, f"invalid transaction: {BAD_SIGNATURE}")
        return out

    def _admit_checked(self, checked: list, forwarded: bool, now: float) -> list[bytes | AdmissionError]:
        with self.ledger.snapshot() as snap:
            return self._admit_all(checked, forwarded, snap, now)

    def _admit_all(self, checked: list, forwarded: bool, snap: Snapshot, now: float) -> list[bytes | AdmissionError]:
        out: list[bytes | AdmissionError] = []
        now_ms = clock.now_ms()
        view = Overlay(snap.get_state)
        # a client's transaction fits the backlog bound too (the chain's rate times max_queue_s), not
        # only the pool's capacity; no block commits during this loop, so it is one bound per batch
        limit = None if forwarded else self.backlog.limit(now)
        admitted = 0
        try:
            for c in checked:
                r = self._admit_one(c, forwarded, view, snap, now_ms, now, limit)
                out.append(r)
                admitted += type(r) is bytes
        finally:  # an unexpected error mid-batch still counts the ones admitted before it
            self.metrics.admitted.inc(admitted)  # once a batch: the counter takes a lock per call
        self.metrics.mempool.set(len(self.mempool))
        return out

    def _admit_one(self, c: Any, forwarded: bool, view: Overlay, snap: Snapshot, now_ms: int, now: float,
                   limit: int | None) -> bytes | AdmissionError:
        """One item of `_check_items`'s answer: its id once admitted, else the refusal."""
        if isinstance(c, AdmissionError):
            return c
        if len(c) == 3:  # (txid, kind, reason): refused by the stateless checks
            txid, kind, reason = c
            err = self.reject(txid, kind, reason)
            if err.bad_signature and txid is not None:
                self.bad_sigs[txid] = None
                while len(self.bad_sigs) > _BAD_SIG_CACHE:
                    self.bad_sigs.popitem(last=False)
            return err
        tx, side = c
        self.mark_verified(tx.id)
        try:
            side = self._admit(tx, side, view, snap, now_ms, now, forwarded, limit)
        except AdmissionError as exc:
            return self._held_back(tx, exc, now) or self._refuse(tx, exc, now)
        if not forwarded and self.forwarding:
            self.forward.append((tx.raw, side))
        return tx.id

    def _refuse(self, tx: Tx, exc: AdmissionError, now: float) -> AdmissionError:
        # a full pool, or the backlog bound: come back when the chain has worked it down
        retry = self.backlog.retry_after() if exc.kind is Refusal.OVERLOADED else exc.retry_after
        err = self.reject(tx.id, exc.kind, exc.reason, retry)
        if exc.kind in (Refusal.OVERLOADED, Refusal.RATE_LIMITED) and not exc.lasting:  # for now: _held_back
            held = self.refused_for_now.get(tx.address)
            if held is None or held[0] >= tx.nonce or now >= held[1]:
                self.refused_for_now[tx.address] = (tx.nonce, now + 2 * max(1.0, retry or 1.0), err)
                self.refused_for_now.move_to_end(tx.address)
                while len(self.refused_for_now) > _REFUSED_FOR_NOW_CACHE:
                    self.refused_for_now.popitem(last=False)
        return err

    def _held_back(self, tx: Tx, exc: AdmissionError, now: float) -> AdmissionError | None:
        """A nonce out of order only because the one before it was refused for now (overloaded, rate
        limited), in this batch or a recent one: refused the same way, with the same Retry-After,
        not with a 409 the client would take as final, so a client that sends the refused ones again,
        in order, loses none. None: a plain refusal."""
        held = self.refused_for_now.get(tx.address)
        if exc.expected is None or held is None or held[0] != exc.expected or now >= held[1]:
            return None
        first = held[2]
        return self.reject(tx.id, first.kind, f"{first.reason.split(':')[0]}: held back, nonce {held[0]} of this "
                           f"sender was refused first ({first.reason})", first.retry_after)

    def mark_verified(self, txid: bytes) -> None:
        self.verified[txid] = None
        if len(self.verified) > _VERIFIED_CACHE:
            self.verified.popitem(last=False)

    def _admit(self, tx: Tx, sidecar: bytes | None, view: Overlay, snap: Snapshot, now_ms: int, now: float,
               forwarded: bool = False, limit: int | None = None) -> bytes | None:
        """Stateful admission; returns the sidecar to forward with the transaction (None if none)."""
        if snap.has_tx(tx.id):
            raise AdmissionError(Refusal.CONFLICT, "duplicate: transaction already committed (replay)")
        code = check_tx(view, tx, now_ms, self.rules)
        if code == Code.BREAK_GLASS_LIMIT:
            wait = break_glass_reopens_ms(view, tx.address, tx.body.patient, now_ms, self.rules)  # type: ignore[union-attr]
            secs = None if wait is None else max(1, -(-wait // 1000))  # whole seconds, rounded up
            if secs is None:  # a limit of 0 (or no issuer): no wait lifts it, so no 429 that clients retry
                raise AdmissionError(Refusal.FORBIDDEN, f"refused: {CODES[code]} for good (a limit of 0)")
            raise AdmissionError(Refusal.RATE_LIMITED, f"refused: {CODES[code]} until its window ends in {secs} s",
                                 secs, lasting=True)
        if code != OK:
            raise AdmissionError(_CODE_REFUSAL.get(code, Refusal.UNPROCESSABLE), f"refused: {CODES[code]}")
        forward_side = sidecar
        if tx.kind == KIND_WRITE and sidecar is None and not forwarded:
            # no sidecar: the blob must be held here already (a standalone upload); a small one is
            # attached to the forwarded batch, so the other validators hold it at commit too
            forward_side = self._held_blob(tx)
        elif tx.kind == KIND_WRITE and sidecar is None:
            self._check_forwarded_write(tx)
            forward_side = self._small_held(tx)
        # the pool keeps what goes with the transaction when it is sent on (a re-forward, the
        # censorship watch's send to the primary): a raw blob held here rides too, or the
        # primary, lacking it, would refuse the bare write
        committed = self.committed_nonce(tx.address, snap.get_state)
        self.settle(tx.address, committed)  # the pool missed a commit: told, not lost
        was_origin = self.mempool.origin_of(tx.address)
        displaced = self._supersede_blobless(tx, forward_side) if forwarded else []
        try:
            evicted = self.mempool.admit(tx, committed, now, forwarded, admission_origin.get(), forward_side, limit)
        except AdmissionError:
            for back, side, arrived in displaced:  # the newcomer did not get in after all: the first stays
                try:  # as it was: its origin, its arrival
                    self.mempool.admit(back, committed, now, True, was_origin or "", side, arrived=arrived)
                except AdmissionError as exc:
                    self.forget(back, Refusal.CONFLICT, f"superseded: its place was lost ({exc.reason})")
            raise
        for gone, _side, _arrived in displaced:
            why = "superseded: another transaction of its nonce came with its blob" if gone.nonce == tx.nonce else \
                f"held back: nonce {tx.nonce} of this sender was superseded"
            self.forget(gone, Refusal.CONFLICT, why)
        for ev in evicted:
            # fair eviction made room: the heaviest origin's (client IP's) newest sender gave way (its
            # pending_since goes too: only non-primaries sweep it, it would outlive the tx)
            self.forget(ev, Refusal.OVERLOADED, "evicted: mempool full and its client or sender held the most pending transactions")
        self.rejected.pop(tx.id, None)
        held = self.refused_for_now.get(tx.address)
        if held is not None and held[0] <= tx.nonce:
            del self.refused_for_now[tx.address]  # the refused nonce came again and got in
        if not forwarded:
            self.submitted_at[tx.id] = now
        self.pending_since[tx.id] = now + REFORWARD_S
        return forward_side

    def forget(self, tx: Tx, kind: Refusal, reason: str) -> None:
        """A pooled transaction left the pool without a commit: its status says why, and nothing is
        kept for it (timing, re-forwarding)."""
        self.reject(tx.id, kind, reason)
        self.submitted_at.pop(tx.id, None)
        self.pending_since.pop(tx.id, None)

    def settle(self, addr: bytes, committed: int) -> int:
        """Drop the sender's pooled transactions the chain has passed (`committed`, its nonce there:
        blocks this pool never saw committed), each told superseded; how many."""
        gone = self.mempool.settle(addr, committed)
        for tx in gone:
            self.forget(tx, Refusal.CONFLICT, "superseded: its nonce was committed with another transaction")
        return len(gone)

    def expire_gapped(self, now: float, max_age: float = GAP_MAX_S) -> int:
        """Drop what has waited behind a nonce gap for more than `max_age`: transactions forwarded
        ahead of their sender's next nonce, which never came (a byzantine validator's forwards from
        keys of its own, or a client that gave up). They could not execute, and held pool room
        until evicted. An honest entry validator keeps its own and forwards them again
        (REFORWARD_S), so a gap that closes late costs a re-forward, nothing more. A sender whose
        base here is stale (the chain moved past it by blocks this pool never saw) is settled
        first. Returns how many were dropped."""
        dropped = 0
        for addr in self.mempool.gapped(now - max_age):
            committed = self.committed_nonce(addr)
            dropped += self.settle(addr, committed)
            if self.mempool.pending(addr, committed + 1) is not None:
                continue  # its next nonce is here after all: it can execute
            first = self.mempool.first_pending(addr)
            if first is None:
                continue
            for gone in self.mempool.withdraw(first):
                self.forget(gone, Refusal.CONFLICT, f"waited more than {max_age:.0f} s behind a nonce gap: "
                            f"nonce {committed + 1} of this sender never came")
                dropped += 1
        return dropped

    def placed_ages_ms(self, block: Block, ex: Executed | None, upto: int | None = None) -> list[tuple[bytes, int | None]]:
        """For each transaction of a block the censorship watch judges, its sender and how long ago the
        pool placed it (placed_age_ms). With the block's execution here (`ex`), one that executed
        without taking its nonce (a bad nonce, a duplicate) has no place: no honest primary batches
        one (its batch takes each sender's run from its next nonce), and it would let a byzantine
        primary fill blocks with the forwards of an early sender, never moving it."""
        if ex is None or len(ex.txs) != len(block.txs):
            return [self.placed_age_ms(raw, upto) for raw in block.txs]
        now = time.monotonic()
        out: list[tuple[bytes, int | None]] = []
        for tx, code in zip(ex.txs, ex.codes, strict=True):
            placed = None if code in NO_NONCE else self.mempool.placed(tx.address, upto)
            out.append((tx.address, None if placed is None else int((now - placed) * 1000)))
        return out

    def placed_age_ms(self, raw: bytes, upto: int | None = None) -> tuple[bytes, int | None]:
        """The sender of a raw transaction (of a block this validator executed) and how long ago (ms)
        the pool placed it in its proposal order (as it was once the blocks up to height `upto` had
        committed: Mempool.placed), None if nothing of it is pending here: the censorship watch
        judges a full block by it. By sender: one whose newest transaction is not admitted here yet
        holds its place all the same."""
        tx = self.mempool.by_id.get(ecdsa.sha256(raw))
        if tx is not None:
            addr = tx.address
        else:
            try:
                addr = Tx.decode(raw, check_sig=False).address
            except (TxError, WireError):
                return raw, None  # never in a block this validator executed
        placed = self.mempool.placed(addr, upto)
        return addr, None if placed is None else int((time.monotonic() - placed) * 1000)

    def watch_candidate(self, checks: int = WATCH_CHECKS) -> tuple[bytes, int] | None:
        """The transaction a backup watches for censorship (node/consensus/censor.py), and when it
        arrived, in ms of the pool's monotonic clock (clock.timer_ms, the replica timers' clock):
        the longest waiting one that can execute now (the pool never offers a write without its blob
        here, Mempool._now_ready). A stale one (its nonce committed with another body, as a state
        transfer leaves the pool) is settled out of the pool."""
        for _ in range(2):
            stale = False
            for tx, arrived in self.mempool.longest_waiting(checks):
                committed = self.committed_nonce(tx.address)
                if tx.nonce <= committed:
                    self.settle(tx.address, committed)
                    stale = True
                    continue
                if self.ledger.get_state(keys.receipt(tx.id)) is not None:
                    # executed without taking its nonce (a bad nonce) in a block this pool did not see
                    # committed (a state transfer passed it): it can never commit, its receipt says so
                    self.mempool.discard(tx)
                    self.submitted_at.pop(tx.id, None)
                    self.pending_since.pop(tx.id, None)
                    stale = True
                    continue
                return tx.raw, int(arrived * 1000)
            if not stale:
                break
        return None

    def _supersede_blobless(self, tx: Tx, sidecar: bytes | None) -> list[tuple[Tx, bytes | None, float | None]]:
        """A forwarded transaction whose nonce is pending here with a write whose blob is not here
        (a bare dag-pb forward, its blob being fetched): its sender signed both, and the one this
        validator can propose takes the nonce. Else a byzantine validator forwarding writes of blobs
        nobody holds to the primary, one after another, kept the other body, which the backups hold,
        out of its blocks, and had them depose an honest primary for censoring it
        (node/consensus/censor.py). Returns what was withdrawn (the write and its sender's later
        transactions, with their sidecars and arrivals), oldest first."""
        held = self.mempool.pending(tx.address, tx.nonce)
        if held is None or held.id == tx.id or held.kind != KIND_WRITE or self.mempool.sidecar(held.id) is not None \
                or self.blobs.blob_size(self._cid_of(held)) is not None:
            return []
        if tx.kind == KIND_WRITE and sidecar is None and self.blobs.blob_size(self._cid_of(tx)) is None:
            return []  # no better: the first stays
        kept = {t.nonce: (self.mempool.sidecar(t.id), self.mempool.arrived.get(t.id))
                for t in self.mempool.pending_from(held)}
        return [(t, *kept.get(t.nonce, (None, None))) for t in reversed(self.mempool.withdraw(held))]

    @staticmethod
    def _cid_of(tx: Tx) -> Cid:
        return tx.body.root  # parses: Write.parse takes only a CIDv1 of sha2-256

    def _check_forwarded_write(self, tx: Tx) -> None:
        """An honest entry validator forwards every write of one raw block with its sidecar; one
        without it (a faulty peer dropped it) is refused unless the blob is held here already.
        Only a dag-pb blob (a standalone upload, over 1 MiB) comes without, and is repaired at commit."""
        cid = self._cid_of(tx)
        size = self.blobs.blob_size(cid)
        if cid.codec == CODEC_RAW and size is None:
            raise AdmissionError(Refusal.UNPROCESSABLE, "blob not held: a forwarded write of one raw block must carry its sidecar")
        if size is not None and size != tx.body.size:  # else an honest primary would propose a write no one votes for
            raise AdmissionError(Refusal.UNPROCESSABLE, size_mismatch(cid, size, tx.body.size))

    def _small_held(self, tx: Tx) -> bytes | None:
        """A forwarded bare write's raw blob when it is held here and small enough to ride as a sidecar."""
        cid = self._cid_of(tx)
        size = self.blobs.blob_size(cid)
        return self.blobs.get(cid) if cid.codec == CODEC_RAW and size is not None and size <= SIDECAR_MAX else None

    def _held_blob(self, tx: Tx) -> bytes | None:
        """A write without a sidecar: its blob must be held here with the size the write states.
        Returns the blob's bytes when it is small enough to ride as a sidecar, else None."""
        cid = self._cid_of(tx)
        size = self.blobs.blob_size(cid)
        if size is None:
            raise AdmissionError(Refusal.UNPROCESSABLE, f"blob not held: send the ciphertext as the write's sidecar, or upload "
                                      f"{cid} (POST /v1/blobs) to this validator first")
        if size != tx.body.size and self.check_held_size:
            raise AdmissionError(Refusal.UNPROCESSABLE, size_mismatch(cid, size, tx.body.size))
        if cid.codec == CODEC_RAW and size <= SIDECAR_MAX:
            return self.blobs.get(cid)  # it rides with the write: held at commit whatever is collected
        # it stays here until the write commits (or leaves the pool): an upload admitted near the end
        # of its grace was collected before its commit (a review)
        self.blobs.touch(cid)
        return None
