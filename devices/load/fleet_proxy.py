"""The phones' proxy of the fleet (devices/load/fleet.py): it seals each closed window (the
ciphertext rides as its write's sidecar), signs each phone's transactions in one batch call, submits
them per validator lane in one POST /v1/txs, and decides what each refusal means.

A refusal for now (429, 503) is no failure: the transaction goes back after the Retry-After, with
every later transaction of its phone (a phone's writes and grants share one nonce run), and all are
signed again, in order, from the nonce and key epochs the validator gives. A 409 (a nonce or key
epoch out of date) sends the transaction again the same way, as one of its five tries, sealed again
if a revoke rotated its key epoch. Anything else, or a sixth refusal, is a failure, counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from devices.load.fleet_model import PHONE_KINDS, FleetConfig, FleetPhone, Meta
from devices.patient import envelope
from devices.patient.client import ApiError, NodeClient, retry_after
from node.crypto.batch import aead_seal_batch
from node.crypto.keys import Identity
from node.ipfs.cid import raw_cid_bytes
from node.tx import Tx, Write
from node.wire import encode

log = logging.getLogger("medchain.fleet")
MAX_BATCH = 4000  # transactions per POST /v1/txs (the API allows 4096)
MAX_BATCH_BYTES = 1900 * 1024  # and bytes, sidecars included (the API allows 2 MiB)


def _phone_limit(r: dict) -> bool:
    """A 429 by a limit of one sender (its token bucket, its pending count), not of the client or the
    pool (node/mempool.py); a "held back" refusal quotes the first, so it reads the same."""
    err = str(r.get("error", ""))
    return "sender exceeds" in err or "transactions already pending" in err


class ProxyLanes:
    """The proxy's half of the Fleet (a mixin: the Fleet sets these attributes up)."""

    cfg: FleetConfig
    chain: str
    clients: list[NodeClient]
    phones: list[FleetPhone]
    staff: list[Identity]
    staff_nonce: list[int]
    staff_resync: set[int]  # staff members whose next nonce is read again before signing
    work: asyncio.Queue
    lanes: list[list[Meta]]
    lane_wake: list[asyncio.Event]
    tracked: dict[bytes, Meta]
    failed: dict
    conflicts: dict[str, int]
    conflicts_resent: int
    overloaded: int
    overload_refusals: int
    open_ops: int
    submitted: int
    drain_submitted: int
    first_submit: float
    last_submit: float

    _spawn: Callable[[Any], None]  # the Fleet's: runs a coroutine as a task kept until done

    # --- signing and submission -----------------------------------------------------------
    def _sign(self, m: Meta) -> None:
        if m.kind in ("read", "profile"):
            s = m.owner
            m.tx = Tx.build(self.staff[s], self.chain, self.staff_nonce[s], m.body)
            self.staff_nonce[s] += 1
        else:
            ph = self.phones[m.owner]
            m.tx = Tx.build(ph.ident, self.chain, ph.nonce, m.body)
            ph.nonce += 1

    def _sign_batch(self, ms: list[Meta]) -> None:
        """A phone's transactions of one pass, signed in one batch call with consecutive nonces."""
        by: dict[int, list[Meta]] = {}
        for m in ms:
            by.setdefault(m.owner, []).append(m)
        for k, group in by.items():
            ph = self.phones[k]
            for m, tx in zip(group, Tx.build_batch(ph.ident, self.chain, ph.nonce, [m.body for m in group]),
                             strict=True):
                m.tx = tx
            ph.nonce += len(group)

    def _lane_of(self, m: Meta) -> int:
        return m.owner % len(self.clients) if m.kind in ("read", "profile") else self.phones[m.owner].v

    def _enqueue(self, m: Meta) -> None:
        # latency counts from here (the first time only): the lane's linger and any wait behind a
        # POST in flight are the client's time too
        m.t_sent = m.t_sent or time.monotonic()
        v = self._lane_of(m)
        self.lanes[v].append(m)
        self.lane_wake[v].set()

    async def _lane(self, v: int) -> None:
        """Submit lane v's transactions in order, as many per POST as have queued up."""
        c = self.clients[v]
        while True:
            await self.lane_wake[v].wait()
            self.lane_wake[v].clear()
            if self.cfg.linger_ms > 0:
                await asyncio.sleep(self.cfg.linger_ms / 1000)  # more of the phones' windows join this POST
            while self.lanes[v]:
                lane, size, k = self.lanes[v], 0, 0
                while k < len(lane) and k < MAX_BATCH and (k == 0 or size + len(lane[k].blob) < MAX_BATCH_BYTES):
                    size += len(lane[k].tx.raw) + len(lane[k].blob) + 16
                    k += 1
                batch, self.lanes[v] = lane[:k], lane[k:]
                t = time.monotonic()
                for m in batch:
                    self.tracked[m.tx.id] = m
                timed = sum(1 for m in batch if not m.final and not m.overloaded)
                if timed:
                    self.first_submit = self.first_submit or t
                whole = False  # the whole batch refused: the lane waits, whatever the refusal
                try:
                    # a write carries its ciphertext as a sidecar: no upload, no bitswap fetch
                    res = await c.submit_many([(m.tx.raw, m.blob or None) for m in batch])
                except ApiError as exc:  # a whole batch refused (the client IP's rate, a full server)
                    res = [{"status": exc.status, "error": exc.reason, "retry_after": exc.retry_after}] * len(batch)
                    whole = True
                except Exception as exc:  # noqa: BLE001 - a lane must survive one bad request
                    res = [{"status": 599, "error": str(exc)}] * len(batch)
                if timed:
                    self.last_submit = time.monotonic()
                self.submitted += timed
                self.drain_submitted += len(batch) - timed
                back, wait, pause = self._answers(v, batch, res, whole)
                if back:
                    again = self._hold_back(v, back)
                    if pause:
                        await self._requeue(again, wait)
                    else:
                        self._spawn(self._requeue(again, wait))

    def _answers(self, v: int, batch: list[Meta], res: list[dict], whole: bool) -> tuple[list[Meta], float, bool]:
        """What each answer of one POST on lane v means. Returns the transactions that go back after
        the Retry-After (with the wait, and whether the whole lane pauses). A refusal for good leaves
        a gap in its signer's nonce run: the signer's transactions behind it (later in this batch,
        answered "nonce out of order", or still queued in the lane) are signed again from the nonce
        expected next, as no try and no conflict of their own."""
        back, wait, held, pause = [], 0.0, set(), whole
        resign: list[Meta] = []
        gapped: set[int] = set()  # staff members with a read refused for good in this batch
        behind: set[int] = set()  # and those with a read signed again after a 409 "nonce"
        for m, r in zip(batch, res, strict=True):
            st = r["status"]
            if st == 202:
                continue
            self.tracked.pop(m.tx.id, None)
            if m.kind in PHONE_KINDS:
                # a phone's transactions share its nonce run: once one of them goes back, every
                # later one of that phone goes back with it and is signed again after it
                if st in (429, 503):  # refused for now: not a try
                    wait = max(wait, retry_after(r.get("retry_after"), 1.0))
                    self._for_now(m)
                    # the validator is full, or this client over its share: the lane waits; a
                    # limit of this phone alone (its rate, its pending count) holds only its own
                    pause = pause or st == 503 or not _phone_limit(r)
                elif m.owner in held:  # out of order behind its refused one: not a try either
                    wait = max(wait, retry_after(r.get("retry_after"), 0.0))
                    if "stale key epoch" in str(r.get("error", "")):
                        m.body = None  # sealed again under the epoch read next
                elif not self._resend(m, r):
                    held.add(m.owner)  # refused for good: the ones behind it are signed again
                    continue
                held.add(m.owner)
                back.append(m)
            elif st == 503 or (st == 429 and "break-glass" not in str(r.get("error", ""))):
                # anything but an emergency-read limit (a window of hours): wait at the lane's head
                back.append(m)
                self._for_now(m)
                wait = max(wait, retry_after(r.get("retry_after"), 1.0))
                pause = True
            elif st == 409 and "nonce" in str(r.get("error", "")) and m.owner in gapped:
                resign.append(m)  # behind its staff member's read refused for good: its nonce was never taken
            elif st == 409 and "nonce" in str(r.get("error", "")) and m.tries < 5:
                # signed behind a read refused for good in an earlier POST (or one the validator
                # dropped): signed again likewise, but a conflict all the same
                m.tries += 1
                self.conflicts_resent += 1
                self._reason(self.conflicts, r)
                resign.append(m)
                behind.add(m.owner)  # its queued followers were signed past the same gap
            else:
                if st == 403 and m.kind == "read" and self._grant_moved(m):
                    self._refused(m, r, denied=True)
                else:
                    self._refused(m, r)
                gapped.add(m.owner)
        later: list[Meta] = []  # signed again after the Retry-After
        if gap := gapped | behind:
            # their reads going back for now ("held back" behind the one refused for good) and those
            # still queued in the lane were signed from nonces now out of order: sent as they are,
            # they would come back "nonce out of order" once the validator forgets the refusal (or
            # collide with the nonces the re-signed ones take: "nonce conflict")
            later = [m for m in back if m.kind not in PHONE_KINDS and m.owner in gap]
            back = [m for m in back if m.kind in PHONE_KINDS or m.owner not in gap]
            resign += [m for m in self.lanes[v] if m.kind not in PHONE_KINDS and m.owner in gap]
            self.lanes[v] = [m for m in self.lanes[v] if m.kind in PHONE_KINDS or m.owner not in gap]
        # a phone's transaction refused for good with nothing of its phone going back: its ones still
        # queued in the lane were signed past the gap it leaves (_hold_back takes them only for a phone
        # with one going back), so they are signed again from the validator's next nonce likewise
        lost = held - {m.owner for m in back if m.kind in PHONE_KINDS}  # phone indices, not staff ones
        if lost:
            resign += [m for m in self.lanes[v] if m.kind in PHONE_KINDS and m.owner in lost]
            self.lanes[v] = [m for m in self.lanes[v] if m.kind not in PHONE_KINDS or m.owner not in lost]
            for k in lost:
                self.phones[k].resync = True
        # only these staff members' nonces are read again: another member's reads may be signed and
        # queued in a lane, not yet in the validator's pool, and a fresh count would reuse their nonces
        self.staff_resync |= {m.owner for m in resign + later if m.kind not in PHONE_KINDS}
        if resign:
            self._spawn(self._requeue(resign, 0.0))
        if later:
            self._spawn(self._requeue(later, wait))
        return back, wait, pause

    def _hold_back(self, v: int, back: list[Meta]) -> list[Meta]:
        """A good client: transactions refused with 429/503 wait for the Retry-After, and are neither
        failures nor one of their window's tries. The lane pauses meanwhile, unless only limits of
        single phones refused them (then only those phones' transactions wait). A phone's transactions
        (the refused ones and those of its still queued behind them) are signed again, in order, from
        the nonce the validator expects next: the refused nonces were never taken, and re-signing only
        some of them would collide with the others ("nonce conflict"), or leave a gap that refuses the
        rest ("nonce out of order"). Staff reads keep their place at the head of the lane, in order."""
        phones = {m.owner for m in back if m.kind in PHONE_KINDS}
        again = [m for m in back if m.kind in PHONE_KINDS]
        again += [m for m in self.lanes[v] if m.kind in PHONE_KINDS and m.owner in phones]
        self.lanes[v] = [m for m in back if m.kind not in PHONE_KINDS] + [
            m for m in self.lanes[v] if not (m.kind in PHONE_KINDS and m.owner in phones)]
        for k in phones:
            self.phones[k].resync = True  # signed again from the validator's next nonce and key epochs
        return again

    async def _requeue(self, again: list[Meta], wait: float) -> None:
        if wait > 0:
            await asyncio.sleep(wait)
        if again:
            self.work.put_nowait(again)  # the proxy signs them again, in this order

    def _for_now(self, m: Meta) -> None:
        """Refused with 429/503, sent again after the Retry-After: counted once in the send rate."""
        self.overload_refusals += 1
        if not m.overloaded:
            m.overloaded = True
            self.overloaded += 1

    def _resend(self, m: Meta, r: dict) -> bool:
        """A phone's transaction refused other than for now: whether it is sent again (a try, at most
        five), signed anew; a write refused for a key epoch that a revoke rotated is sealed again under
        the new one. False: refused for good (counted as failed)."""
        if r["status"] in (400, 413) or m.tries >= 5 or (m.kind == "grant" and r["status"] != 409):
            self._refused(m, r)
            return False
        m.tries += 1
        if r["status"] == 409:
            self.conflicts_resent += 1
            self._reason(self.conflicts, r)
        if m.kind == "write" and "stale key epoch" in str(r.get("error", "")):
            m.body = None  # sealed again under the epoch the proxy reads next
        return True

    def _grant_moved(self, m: Meta) -> bool:
        """Whether the patient's grants changed since the read was staged (it is staged only for a
        type granted, with no grant change in flight): a read refused 429 and sent again after its
        Retry-After may come after a revoke staged later, and is then denied, as the policy says."""
        ph = self.phones[m.patient]
        return ph.blocked or m.dtype not in ph.granted or ph.grants_changed > m.t_sched

    def _refused(self, m: Meta, r: dict, gap: bool = True, denied: bool = False) -> None:
        """Refused for good: counted as failed, with its reason (`denied`: a staff read the policy
        denies since a grant change, counted with the reads denied after their commit). `gap`: refused
        at admission, so its nonce was never taken (False: it executed, as a failure, and took it)."""
        if m.done:  # already counted (committed, or refused for good)
            return
        m.done = True
        self.open_ops -= 1
        if denied:
            self.reads_refused += 1
        else:
            self.failed[m.kind] = self.failed.get(m.kind, 0) + 1
            self._reason(self.failed.setdefault("reasons", {}), r)
        if m.kind in PHONE_KINDS:
            ph = self.phones[m.owner]
            ph.resync = ph.resync or gap  # the nonce sequence has a gap now: re-read it before signing again
            if m.kind == "write":
                ph.outstanding -= 1
            else:
                ph.blocked = False
        elif m.kind == "read":
            self.staff_resync.add(m.owner)

    @staticmethod
    def _reason(into: dict, r: dict) -> None:
        key = f"{r['status']} {str(r.get('error', ''))[:60]}"
        into[key] = into.get(key, 0) + 1

    # --- the proxy: seal, sign, enqueue (each ciphertext rides as its write's sidecar) ---------
    async def _proxy(self) -> None:
        while True:
            items: list[Meta] = await self.work.get()
            while not self.work.empty():
                items += self.work.get_nowait()
            await self._resync(items)
            fresh = [m for m in items if m.kind == "write" and m.body is None]
            self._seal(fresh)
            for m in fresh:  # one raw block: the CID is one SHA-256 here (node/sidecar.py)
                m.cid = raw_cid_bytes(m.blob)
                m.body = Write(m.dtype, m.cid, len(m.blob), m.epoch, m.t0, m.t1)
            self._sign_batch([m for m in items if m.kind in PHONE_KINDS])
            for m in items:
                if m.kind == "read":
                    self._sign(m)
                self._enqueue(m)

    async def _resync(self, items: list[Meta]) -> None:
        """Re-read the next nonce and the key epochs of every phone of `items` that must start again
        from the validator's, and those of the staff members marked (a read of theirs refused): all at
        once, and again for any that a refusal marked meanwhile, so nothing is signed from a stale count."""
        sem = asyncio.Semaphore(64)

        async def read(ph: FleetPhone) -> None:
            try:
                async with sem:
                    acct = await self.clients[ph.v].account(ph.addr)
            except Exception as exc:  # noqa: BLE001 - a validator that did not answer: read it again
                log.warning("nonce of phone %s not read (%r): trying again", ph.addr.hex()[:12], exc)
                ph.resync = True
                await asyncio.sleep(0.5)
                return
            ph.nonce = acct["next_nonce"]
            ph.take_epochs(acct)

        while True:
            due = [self.phones[k] for k in {m.owner for m in items if m.kind in PHONE_KINDS}
                   if self.phones[k].resync]
            if not due and not self.staff_resync:
                return
            for ph in due:
                ph.resync = False  # set before the read: a refusal that comes meanwhile sets it again
            await asyncio.gather(*(read(ph) for ph in due))
            for s in sorted(self.staff_resync):
                self.staff_resync.discard(s)
                try:
                    # from the validator of the staff member's lane: its pool holds the pending reads
                    c = self.clients[s % len(self.clients)]
                    self.staff_nonce[s] = (await c.account(self.staff[s].address))["next_nonce"]
                except Exception as exc:  # noqa: BLE001 - read again on the next pass
                    log.warning("nonce of staff member %d not read (%r): trying again", s, exc)
                    self.staff_resync.add(s)
                    await asyncio.sleep(0.5)

    def _seal(self, ms: list[Meta]) -> None:
        """Encrypt each window as envelope.seal_window does, one batch AEAD call per data key."""
        by_key: dict[bytes, list[tuple[Meta, bytes, bytes, bytes]]] = {}
        for m in ms:
            ph = self.phones[m.owner]
            m.epoch = ph.epochs.get(m.dtype, 0)
            m.t0, m.t1 = min(r[0] for r in m.readings), max(r[0] for r in m.readings)
            ad = envelope.aad(self.chain, ph.addr, m.dtype, m.epoch, m.t0, m.t1)
            pt = encode([1, [list(r) for r in m.readings]])
            m.digest = hashlib.sha256(pt).digest()
            key = ph.data_key(m.dtype, m.epoch)
            by_key.setdefault(key, []).append((m, os.urandom(12), pt, ad))
        for key, group in by_key.items():
            for (m, nonce, _, _), ct in zip(group, aead_seal_batch(key, [(n, p, a) for _, n, p, a in group]),
                                            strict=True):
                m.blob = nonce + ct
