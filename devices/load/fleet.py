"""A fleet of emulated wearables behind phone proxies, in one asyncio process.

Wearable i belongs to phone i mod M and measures kind KINDS[(i // M) mod 5] at its own period
(devices/wearable/wearables.py), notifying real GATT frames over its own modelled BLE link
(devices/wearable/ble.py: connection events, losses and retransmissions delay a frame, never drop it).
Each phone buffers the readings it receives per data type. A window closes (the phone "flushes"):
  - natural mode (rate = 0): window_s after its first reading;
  - open loop (rate > 0): arrivals at exactly `rate` windows per second over the whole fleet, each
    taking the oldest non-empty buffer in round-robin order; arrivals never wait for commits, so a
    slow network shows up as latency, not as a slower load;
  - closed loop: a phone flushes only when its previous write has committed.
The proxy then, for all windows closed since its last pass: encrypts each with AES-256-GCM
(envelope format, node/crypto/batch.py's batch AEAD, one call per key), uploads the ciphertext to
the phone's validator, signs each phone's transactions in one batch call, and submits them per
validator in one POST /v1/txs. A follower reads every new block and stamps commit times.
Mixes add staff reads (a committed Read of one CID, then a signed fetch and decryption with the
key unsealed from the chain) and grant changes / revokes (the phone holds its writes until the
grant commits, then re-reads its key epochs).

At the end every buffer is flushed and every transaction followed to commit; `check` then counts
every committed write against each patient's on-chain records and has a permitted staff member
decrypt a sample of patients' windows and compare them with what the wearables emitted.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import heapq
import logging
import math
import os
import random
import time
from collections import deque
from dataclasses import dataclass, field

import aiohttp
from hdrh.histogram import HdrHistogram

from devices.load.follow import Follower
from devices.patient import envelope
from devices.patient.client import ApiError, NodeClient
from devices.wearable.ble import Link, LinkParams
from devices.wearable.wearables import make_wearable
from node.crypto import seal
from node.crypto.batch import aead_seal_batch
from node.crypto.keys import Identity
from node.genesis import Genesis
from node.ipfs.cid import Cid, raw_cid_bytes
from node.proof import verify_status
from node.state.records import CODES, Code
from node.tx import Grant, Profile, Read, SealedKey, Tx, Write, data_type_id
from node.wire import encode

log = logging.getLogger("medchain.fleet")
KINDS = ["heart_rate", "spo2", "body_temperature", "blood_pressure", "glucose"]
ALL_TYPES = tuple(sorted(data_type_id(k) for k in KINDS))
HISTORY_EPOCHS = 12  # as devices/patient/phone.py: past key epochs a grant carries
PHONE_KINDS = ("write", "grant")  # signed by a phone, in its one nonce run
MAX_BATCH = 4000  # transactions per POST /v1/txs (the API allows 4096)
MAX_BATCH_BYTES = 1900 * 1024  # and bytes, sidecars included (the API allows 2 MiB)


@dataclass
class FleetConfig:
    wearables: int = 50
    phones: int = 10
    seconds: float = 5.0
    window_s: float = 10.0  # natural mode: how long a phone collects one type before it writes
    rate: float = 0.0  # open loop: windows per second over the fleet (0: natural windows)
    closed: bool = False  # closed loop: one write in flight per phone
    reads: float = 0.0  # staff reads per second (open loop)
    read_fetch: float = 1.0  # fraction of committed reads whose blob is fetched and decrypted
    grants: float = 0.0  # grant changes / revokes per second (open loop)
    staff: int = 2
    link: LinkParams = field(default_factory=LinkParams)
    tick_ms: float = 20.0
    # a proxy lane holds its first queued transaction this long before it posts, so one POST carries
    # a few ticks' worth: each POST costs the proxy and the validator ~0.2 ms whatever it carries
    linger_ms: float = 40.0
    # concurrent uploads over the fleet: 2,000 real phones would each have their own connection, so
    # a slow validator must not throttle the offered load through a small client pool
    uploads_in_flight: int = 512
    seed: int = 1
    drain_timeout: float = 300.0  # after the run: how long to wait for every transaction to commit


@dataclass
class Meta:
    kind: str  # write | read | grant | profile
    owner: int  # phone index (write, grant) or staff index (read, profile)
    t_sched: float  # when the workload asked for it (monotonic)
    t_sent: float = 0.0
    dtype: int = 0
    cid: bytes = b""  # binary CID (its text form only when a staff read fetches it)
    n: int = 0  # readings in the window
    digest: bytes = b""  # SHA-256 of the window's plaintext (compared after decryption)
    body: object = None
    tx: Tx | None = None
    tries: int = 0
    readings: list | None = None
    blob: bytes = b""
    epoch: int = 0
    t0: int = 0
    t1: int = 0
    patient: int = -1  # reads: the phone whose data is read
    done: bool = False  # committed or refused
    final: bool = False  # the end-of-run flush of partial windows: counted, but not in rate or latency
    overloaded: bool = False  # refused with 429/503 and sent again: counted once in the send rate
    grants_at_admit: int = 0  # a write: its phone's committed grants when it was admitted


class FleetPhone:
    """One emulated phone's state in the fleet: its keys, nonce, key epochs, buffers and grants."""

    __slots__ = ("addr", "blocked", "bufs", "cids", "clinician", "epochs", "granted", "grants_committed", "ident", "keys",
                 "master",
                 "nonce", "outstanding", "resync", "v")

    def data_key(self, dtype: int, epoch: int) -> bytes:
        k = self.keys.get((dtype, epoch))
        if k is None:
            k = self.keys[(dtype, epoch)] = envelope.data_key(self.master, dtype, epoch)
        return k

    def __init__(self, ident: Identity, v: int, clinician: int) -> None:
        self.ident, self.addr, self.v, self.clinician = ident, ident.address, v, clinician
        self.master = envelope.master_secret(ident.secret)
        self.keys: dict[tuple[int, int], bytes] = {}  # (dtype, epoch) -> data key, derived once
        self.nonce = 1  # nonces start at 1
        self.epochs: dict[int, int] = {}
        self.bufs: dict[int, list[envelope.Reading]] = {}
        self.granted: tuple[int, ...] = ()
        self.cids: list[tuple[int, bytes, int]] = []  # committed (dtype, cid, epoch), for staff reads
        self.blocked = False  # a grant change is in flight: hold writes until it commits
        self.outstanding = 0
        self.resync = False
        self.grants_committed = 0  # as the follower saw them, in chain order


class Fleet:
    def __init__(self, urls: list[str], cfg: FleetConfig, progress=None, mark=None,
                 genesis: Genesis | None = None) -> None:
        # mark(name) is called at "start" (setup done) and "end" (everything committed, before the
        # check), so a caller can read the validators' counters over exactly the measured window
        self.urls, self.cfg, self.progress, self.mark = urls, cfg, progress, mark
        # with the genesis, a commit counts only in a block whose certificate and transaction ids
        # check against its keys (node/proof.py), as a phone proxy would before dropping its buffers
        self.genesis = genesis
        self.follower: Follower | None = None
        self.rng = random.Random(f"fleet|{cfg.seed}")
        self.hist = HdrHistogram(1, 3_600_000_000, 3)  # commit latency, microseconds (Caliper)
        self.hist_e2e = HdrHistogram(1, 3_600_000_000, 3)  # window closed -> committed
        self.tracked: dict[bytes, Meta] = {}
        self.committed: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.written: dict[bytes, Meta] = {}  # committed writes by CID
        self.first_submit = self.last_submit = self.last_commit = 0.0
        self.submitted = self.emitted = self.starved = self.reads_decrypted = self.reads_refused = 0
        self.overloaded = 0  # transactions refused with 429/503 (once or more) and sent again after the Retry-After
        self.overload_refusals = 0  # every such refusal
        # phone transactions refused with 409 (a nonce or key epoch out of date) and signed again
        self.conflicts_resent = 0
        self.conflicts: dict[str, int] = {}
        self.reads_failed = 0
        self.work: asyncio.Queue = asyncio.Queue()
        self.lanes: list[list[Meta]] = [[] for _ in urls]
        self.lane_wake = [asyncio.Event() for _ in urls]
        self.unseal_cache: dict[tuple, bytes] = {}
        self.staff_resync = False
        self.cpu_emul = 0.0  # CPU spent emulating wearables and links (not the phones' work)
        self.unsent = self.drain_submitted = self.drain_committed = 0
        self.open_ops = 0  # staged and not yet committed or finally refused (the drain waits for 0)
        self.bg: set[asyncio.Task] = set()

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self.bg.add(t)
        t.add_done_callback(self.bg.discard)

    # --- setup (not timed) ----------------------------------------------------------------
    async def setup(self) -> None:
        cfg = self.cfg
        nv = len(self.clients)
        # a clinician's patients all use the clinician's validator: a staff read and the patient's
        # grant change then travel in one ordered lane, so a read is never admitted after a revoke
        # it was staged before (it may still commit after it, and then be denied: counted)
        cfg.staff = -(-max(cfg.staff, 1) // nv) * nv
        tag = os.urandom(4).hex()  # fresh accounts per run: the chain may have seen earlier fleets
        self.staff = [Identity.from_seed(f"staff|{tag}|{s}".encode()) for s in range(cfg.staff + 1)]
        self.staff_nonce = [1] * len(self.staff)
        self.phones = [FleetPhone(Identity.from_seed(f"phone|{tag}|{k}".encode()), (k % cfg.staff) % nv, k % cfg.staff)
                       for k in range(cfg.phones)]
        t = time.monotonic()
        profiles = [Meta("profile", s, t, body=Profile(f"Dr. {s}", "clinician", "bench", st.box_public))
                    for s, st in enumerate(self.staff)]
        await self._submit_and_wait(profiles)
        grants = []
        for k, ph in enumerate(self.phones):
            box = self.staff[ph.clinician].box_public
            keys = tuple(SealedKey(d, 0, seal.seal(box, envelope.data_key(ph.master, d, 0))) for d in ALL_TYPES)
            grants.append(Meta("grant", k, t, body=Grant(self.staff[ph.clinician].address, ALL_TYPES, 0, keys)))
            ph.granted = ALL_TYPES
        await self._submit_and_wait(grants)
        # the timed run starts from zero
        self.committed.clear()
        self.hist.reset()
        self.hist_e2e.reset()
        self.first_submit = self.last_submit = self.last_commit = 0.0
        self.submitted = self.open_ops = 0

    async def _submit_and_wait(self, metas: list[Meta]) -> None:
        for m in metas:
            self._sign(m)
            self._enqueue(m)
        while not all(m.done for m in metas):
            await asyncio.sleep(0.05)
        bad = [m for m in metas if m.kind in self.failed]
        if bad:
            raise RuntimeError(f"setup transactions refused: {self.failed}")

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
                try:
                    # a write carries its ciphertext as a sidecar: no upload, no bitswap fetch
                    res = await c.submit_many([(m.tx.raw, m.blob or None) for m in batch])
                except ApiError as exc:  # a whole batch refused (the client IP's rate, a full server)
                    res = [{"status": exc.status, "error": exc.reason, "retry_after": exc.retry_after}] * len(batch)
                except Exception as exc:  # noqa: BLE001 - a lane must survive one bad request
                    res = [{"status": 599, "error": str(exc)}] * len(batch)
                if timed:
                    self.last_submit = time.monotonic()
                self.submitted += timed
                self.drain_submitted += len(batch) - timed
                back, wait, held = [], 0.0, set()
                for m, r in zip(batch, res, strict=True):
                    st = r["status"]
                    if st == 202:
                        if m.kind == "write":
                            m.grants_at_admit = self.phones[m.owner].grants_committed
                        continue
                    self.tracked.pop(m.tx.id, None)
                    if m.kind in PHONE_KINDS:
                        # a phone's transactions share its nonce run: once one of them goes back, every
                        # later one of that phone goes back with it and is signed again after it
                        if st in (429, 503) or m.owner in held:
                            wait = max(wait, float(r.get("retry_after") or 1.0))  # refused for now: not a try
                            self._for_now(m)
                        elif not self._resend(m, r):
                            continue
                        held.add(m.owner)
                        back.append(m)
                    elif st == 503 or (st == 429 and m.kind != "read"):  # not a read limit: wait at the lane's head
                        back.append(m)
                        self._for_now(m)
                        wait = max(wait, float(r.get("retry_after") or 1.0))
                    else:
                        self._refused(m, r)
                if back:
                    await self._hold_back(v, back, wait)

    async def _hold_back(self, v: int, back: list[Meta], wait: float) -> None:
        """A good client: transactions refused with 429/503 wait for the Retry-After, and are neither
        failures nor one of their window's tries. The lane pauses meanwhile. A phone's transactions
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

    def _refused(self, m: Meta, r: dict, gap: bool = True) -> None:
        """Refused for good: counted as failed, with its reason. `gap`: refused at admission, so its
        nonce was never taken (False: it executed, as a failure, and took it)."""
        m.done = True
        self.open_ops -= 1
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
            self.staff_resync = True

    @staticmethod
    def _reason(into: dict, r: dict) -> None:
        key = f"{r['status']} {str(r.get('error', ''))[:60]}"
        into[key] = into.get(key, 0) + 1

    # --- the follower -----------------------------------------------------------------------
    async def _follow(self) -> None:
        c = self.clients[-1]  # a backup: keeps the harness's requests off the primary
        self.follower = Follower(self.clients, self.genesis, self.chain, (await c.status())["height"])
        async for blk in self.follower.blocks():
            if blk is None:
                continue
            t = time.monotonic()
            for tid in blk["tx_ids"]:
                m = self.tracked.pop(bytes.fromhex(tid), None)
                if m is not None:
                    self._on_commit(m, t)

    def _on_commit(self, m: Meta, t: float, confirmed: bool = False) -> None:
        if m.kind == "write" and not confirmed and self.phones[m.owner].grants_committed > m.grants_at_admit:
            # a grant of its phone committed after the write was admitted and before it: a revoke in it
            # rotated a key epoch, and the write may have executed as stale. Its receipt tells.
            self._spawn(self._confirm(m, t))
            return
        m.done = True
        self.open_ops -= 1
        if m.final:
            self.drain_committed += 1
        else:
            self.committed[m.kind] = self.committed.get(m.kind, 0) + 1
            self.last_commit = t
        if m.kind == "profile":
            return
        if not m.final:
            self.hist.record_value(max(1, int((t - m.t_sent) * 1e6)))
            self.hist_e2e.record_value(max(1, int((t - m.t_sched) * 1e6)))
        if m.kind == "write":
            ph = self.phones[m.owner]
            m.blob, m.readings = b"", None  # committed: every validator holds it now
            ph.outstanding -= 1
            self.written[m.cid] = m
            ph.cids.append((m.dtype, m.cid, m.body.epoch))
        elif m.kind == "grant":
            self.phones[m.owner].grants_committed += 1
            if self.phones[m.owner].blocked:
                self._spawn(self._after_grant(m))
        elif m.kind == "read" and self.rng.random() < self.cfg.read_fetch:
            self._spawn(self._fetch(m))

    async def _confirm(self, m: Meta, t: float) -> None:
        """A write whose block may have found its key epoch rotated: its proven receipt says whether
        it was recorded. If not (stale key epoch), it is sealed again under the new epoch and sent
        again, as a refusal at admission would have it; any other failed code is a failure."""
        ph = self.phones[m.owner]
        try:
            st = await self.clients[ph.v].tx(m.tx.id.hex())
            if self.genesis is not None:
                verify_status(m.tx.id, st, self.genesis.validator_keys, self.chain)
            code = st["code"]
        except Exception as exc:  # noqa: BLE001 - the receipt could not be had or proven: a failure, said so
            self._refused(m, {"status": 599, "error": f"receipt of a write after a grant change: {exc}"}, gap=False)
            return
        if code == Code.OK:
            self._on_commit(m, t, confirmed=True)
            return
        r = {"status": 409, "error": f"at execution: {CODES.get(code, code)}"}
        if code != Code.STALE_EPOCH or m.tries >= 5:
            self._refused(m, r, gap=False)
            return
        m.tries += 1
        self.conflicts_resent += 1
        self._reason(self.conflicts, r)
        acct = await self.clients[ph.v].account(ph.addr)  # the nonce it took stays taken: epochs only
        ph.epochs = {data_type_id(k): v for k, v in acct["epochs"].items()}
        m.body = None
        self.work.put_nowait([m])

    async def _after_grant(self, m: Meta) -> None:
        ph = self.phones[m.owner]
        acct = await self.clients[ph.v].account(ph.addr)
        ph.epochs = {data_type_id(k): v for k, v in acct["epochs"].items()}
        ph.granted = m.body.types
        ph.blocked = False

    async def _fetch(self, m: Meta) -> None:
        """The staff member fetches the blob its committed read names and decrypts it."""
        s, ph = m.owner, self.phones[m.patient]
        c = self.clients[s % len(self.clients)]
        cid, epoch = m.cid, m.epoch
        try:
            blob = await c.download(self.staff[s], self.chain, str(Cid.from_bytes(cid)), cid, m.tx.id)
            ck = (s, ph.addr, m.dtype, epoch)
            if ck not in self.unseal_cache:
                keys = (await c.sealed_keys(ph.addr, self.staff[s].address))["keys"]
                for k in keys:
                    self.unseal_cache[(s, ph.addr, data_type_id(k["type"]), k["epoch"])] = seal.unseal(
                        self.staff[s].box_secret, bytes.fromhex(k["sealed"]))
            w = self.written[cid]
            ad = envelope.aad(self.chain, ph.addr, m.dtype, epoch, w.t0, w.t1)
            envelope.open_window(self.unseal_cache[ck], ad, blob)
            self.reads_decrypted += 1
        except ApiError as exc:
            # 403: the read committed after a grant change it was staged before, and was denied
            if exc.status == 403:
                self.reads_refused += 1
            else:
                self.reads_failed += 1
        except Exception:  # noqa: BLE001 - counted: anything else is a failed read (must be 0)
            self.reads_failed += 1

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
        from the validator's, and the staff's nonces if a read was refused: all at once, and again for
        any phone that a refusal marked meanwhile, so nothing is signed from a stale count."""
        sem = asyncio.Semaphore(64)

        async def read(ph: FleetPhone) -> None:
            async with sem:
                acct = await self.clients[ph.v].account(ph.addr)
            ph.nonce = acct["next_nonce"]
            ph.epochs = {data_type_id(k): v for k, v in acct["epochs"].items()}

        while True:
            due = [self.phones[k] for k in {m.owner for m in items if m.kind in PHONE_KINDS}
                   if self.phones[k].resync]
            if not due and not self.staff_resync:
                return
            for ph in due:
                ph.resync = False  # set before the read: a refusal that comes meanwhile sets it again
            await asyncio.gather(*(read(ph) for ph in due))
            if self.staff_resync:
                self.staff_resync = False
                for s, st in enumerate(self.staff):
                    self.staff_nonce[s] = (await self.clients[0].account(st.address))["next_nonce"]

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

    # --- the workload ------------------------------------------------------------------------
    def _flush(self, k: int, dtype: int, t: float, final: bool = False) -> None:
        ph = self.phones[k]
        readings = ph.bufs.pop(dtype)
        ph.outstanding += 1
        self.open_ops += 1
        self.work.put_nowait([Meta("write", k, t, dtype=dtype, n=len(readings), readings=readings, final=final)])

    def _stage_read(self, t: float) -> None:
        for _ in range(8):  # a random patient of a random clinician with something to read
            k = self.rng.randrange(len(self.phones))
            ph = self.phones[k]
            cands = [x for x in ph.cids if x[0] in ph.granted] if not ph.blocked else []
            if cands:
                dtype, cid, epoch = cands[self.rng.randrange(len(cands))]
                body = Read(ph.addr, dtype, cid, 0, 2**63 - 1)
                self.open_ops += 1
                self.work.put_nowait([Meta("read", ph.clinician, t, dtype=dtype, cid=cid, epoch=epoch, body=body,
                                           patient=k)])
                return

    def _stage_grant(self, t: float) -> None:
        k = self.rng.randrange(len(self.phones))
        ph = self.phones[k]
        if ph.blocked:
            return
        r = self.rng.random()
        types = () if r < 0.3 else tuple(sorted(self.rng.sample(ALL_TYPES, self.rng.randint(1, len(ALL_TYPES)))))
        box = self.staff[ph.clinician].box_public
        keys = tuple(SealedKey(d, e, seal.seal(box, envelope.data_key(ph.master, d, e)))
                     for d in types for e in range(max(0, ph.epochs.get(d, 0) - HISTORY_EPOCHS + 1),
                                                   ph.epochs.get(d, 0) + 1))
        ph.blocked = True
        self.open_ops += 1
        self.work.put_nowait([Meta("grant", k, t, body=Grant(self.staff[ph.clinician].address, types, 0, keys))])

    async def run(self) -> dict:
        per = max(8, self.cfg.uploads_in_flight // len(self.urls) + 4)
        self.clients = [NodeClient(u, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=per), timeout=aiohttp.ClientTimeout(total=120))) for u in self.urls]
        self.chain = self.genesis.chain_id if self.genesis is not None else (await self.clients[0].status())["chain_id"]
        tasks = [asyncio.create_task(x) for x in (self._follow(), self._proxy(),
                                                  *(self._lane(v) for v in range(len(self.clients))))]
        try:
            await self.setup()
            return await self._timed(tasks)
        finally:
            gc.unfreeze()
            for x in tasks:
                x.cancel()

    async def _timed(self, tasks: list[asyncio.Task]) -> dict:
        cfg = self.cfg
        if self.mark:
            self.mark("start")
        cpu0, t0 = time.process_time(), time.monotonic()
        wall0 = time.time() * 1000
        end_ms = wall0 + cfg.seconds * 1000
        devs, heap, links = [], [], []
        for i in range(cfg.wearables):
            k, kind = i % cfg.phones, KINDS[(i // cfg.phones) % len(KINDS)]
            w = make_wearable(kind, f"{kind}-{i}", seed=cfg.seed * 1_000_003 + i)
            devs.append((w, k, data_type_id(kind)))
            links.append(Link(cfg.link, f"{cfg.seed}|{i}"))
            heap.append((wall0 + self.rng.uniform(0, w.period_ms), i))
        heapq.heapify(heap)
        phase = [self.rng.uniform(0, cfg.window_s * 1000) for _ in range(cfg.phones)]
        # the long-lived objects (the wearables and links just made, the phones) leave the cyclic
        # collector's full scans for the timed run (run() unfreezes): 3-4% of the generator's CPU
        gc.collect()
        gc.freeze()
        air: list[tuple[float, int, int, int, envelope.Reading]] = []  # frames on the BLE links
        windows: list[tuple[float, int, int]] = []  # natural mode: when each open window closes
        ready: deque[tuple[int, int]] = deque()  # buffers that hold readings, oldest first
        seq = staged_rate = staged_reads = staged_grants = 0
        last_progress = t0
        while True:
            now_ms, mono = time.time() * 1000, time.monotonic()
            stop = now_ms >= end_ms
            c_emul = time.process_time()
            while heap and heap[0][0] <= min(now_ms, end_ms):  # wearables measure and notify
                due, i = heapq.heappop(heap)
                w, k, dtype = devs[i]
                uuid, frame = w.next_frame(int(due))
                self.emitted += 1
                arr = links[i].deliver(due, len(frame))
                if arr is not None:
                    seq += 1
                    heapq.heappush(air, (arr, seq, k, dtype, (int(due), uuid, frame)))
                heapq.heappush(heap, (due + w.period_ms, i))
            while air and (stop or air[0][0] <= now_ms):  # frames reach their phone
                _, _, k, dtype, reading = heapq.heappop(air)
                buf = self.phones[k].bufs.setdefault(dtype, [])
                if not buf and (cfg.closed or cfg.rate > 0):
                    ready.append((k, dtype))
                elif not buf:  # windows end on the phone's own clock: phones are not in step
                    w_ms, ph_ms = cfg.window_s * 1000, phase[k]
                    heapq.heappush(windows, (wall0 + ph_ms + math.ceil((now_ms - wall0 - ph_ms) / w_ms + 1e-9) * w_ms,
                                             k, dtype))
                buf.append(reading)
            self.cpu_emul += time.process_time() - c_emul
            if stop:
                break
            if cfg.closed:
                for _ in range(len(ready)):
                    k, d = ready.popleft()
                    ph = self.phones[k]
                    if ph.outstanding or ph.blocked:
                        ready.append((k, d))
                    else:
                        self._flush(k, d, mono)
            elif cfg.rate > 0:
                due_n = int((mono - t0) * cfg.rate)
                while staged_rate < due_n:
                    staged_rate += 1
                    for _ in range(len(ready)):
                        k, d = ready.popleft()
                        if not self.phones[k].blocked:
                            self._flush(k, d, t0 + staged_rate / cfg.rate)
                            break
                        ready.append((k, d))
                    else:
                        self.starved += 1  # no buffered reading to send: the fleet is too small
            else:
                while windows and windows[0][0] <= now_ms:
                    _, k, d = heapq.heappop(windows)
                    if self.phones[k].bufs.get(d) and not self.phones[k].blocked:
                        self._flush(k, d, mono)
                    elif self.phones[k].bufs.get(d):
                        heapq.heappush(windows, (now_ms + cfg.tick_ms, k, d))
            while staged_reads < int((mono - t0) * cfg.reads):
                staged_reads += 1
                self._stage_read(mono)
            while staged_grants < int((mono - t0) * cfg.grants):
                staged_grants += 1
                self._stage_grant(mono)
            if self.progress and mono - last_progress >= 1.0:
                last_progress = mono
                self.progress(self.snapshot(mono - t0))
            await asyncio.sleep(cfg.tick_ms / 1000)
        # the end: hold for pending grants, then flush every buffer and follow everything to commit
        deadline = time.monotonic() + cfg.drain_timeout
        while any(p.blocked for p in self.phones) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        mono = time.monotonic()
        if cfg.rate > 0:  # open loop sends only at the offered rate: what is left stays on the phones
            self.unsent = sum(len(b) for ph in self.phones for b in ph.bufs.values())
        else:
            for k, ph in enumerate(self.phones):
                for d in list(ph.bufs):
                    if ph.bufs[d]:
                        self._flush(k, d, mono, final=True)
        while self.open_ops > 0 and time.monotonic() < deadline:
            if self.progress and time.monotonic() - last_progress >= 1.0:
                last_progress = time.monotonic()
                self.progress(self.snapshot(time.monotonic() - t0))
            await asyncio.sleep(0.05)
        if self.bg:  # the last staff fetches
            await asyncio.wait(list(self.bg), timeout=30)
        cpu = time.process_time() - cpu0
        if self.mark:
            self.mark("end")
        return self.result(cpu, links)

    def snapshot(self, elapsed: float) -> dict:
        n = sum(self.committed.values())
        return {"t": elapsed, "submitted": self.submitted, "committed": n, "pending": len(self.tracked),
                "queued": self.work.qsize() + sum(len(x) for x in self.lanes),
                "p50_ms": self.hist.get_value_at_percentile(50) / 1000 if n else 0.0}

    def result(self, cpu: float, links: list[Link]) -> dict:
        n = sum(self.committed.values())
        span = self.last_commit - self.first_submit
        send_span = self.last_submit - self.first_submit
        h = self.hist
        lat = {"min": h.get_min_value(), "avg": h.get_mean_value(), "p50": h.get_value_at_percentile(50),
               "p95": h.get_value_at_percentile(95), "p99": h.get_value_at_percentile(99), "max": h.get_max_value()}
        e2e = {p: self.hist_e2e.get_value_at_percentile(p) / 1000 for p in (50, 95, 99)}
        readings_committed = sum(m.n for m in self.written.values())
        notif = sum(lk.notifications for lk in links)
        return {
            "submitted": self.submitted, "committed": n, "committed_by_kind": dict(self.committed),
            "failed": sum(v for k, v in self.failed.items() if k != "reasons"), "failed_by_kind": dict(self.failed),
            "overloaded_retried": self.overloaded, "overload_refusals": self.overload_refusals,
            "conflicts_resent": self.conflicts_resent, "conflicts": dict(self.conflicts),
            # None: no genesis keys given, commits taken on the followed validator's word
            "blocks_proven": self.follower.proven_or_none if self.follower else None,
            "blocks_refused": self.follower.refused if self.follower else 0,
            "unfinished": self.open_ops, "send_rate": self.submitted / send_span if send_span > 0 else 0.0,
            "tps": n / span if span > 0 else 0.0, "seconds": span,
            "latency_ms": {k: v / 1000 for k, v in lat.items()} if n else {}, "window_to_commit_ms": e2e,
            "generator_cpu_s": cpu, "generator_cpu_ms_per_tx": 1000 * cpu / max(1, self.submitted),
            # the split: wearables + BLE links (per reading), and everything else (phones, proxy, follower)
            "generator_cpu_wearables_s": self.cpu_emul,
            "generator_cpu_us_per_reading": 1e6 * self.cpu_emul / max(1, self.emitted),
            "generator_cpu_phones_ms_per_tx": 1000 * (cpu - self.cpu_emul) / max(1, self.submitted + self.drain_submitted),
            "readings_emitted": self.emitted, "readings_committed": readings_committed,
            "readings_unsent": self.unsent, "drain": {"writes_submitted": self.drain_submitted,
                                                      "writes_committed": self.drain_committed},
            "starved_arrivals": self.starved, "reads_decrypted": self.reads_decrypted,
            "reads_refused": self.reads_refused, "reads_failed": self.reads_failed,
            "ble": {"notifications": notif, "attempts": sum(lk.attempts for lk in links),
                    "bytes_on_air": sum(lk.bytes_on_air for lk in links), "dropped": sum(lk.dropped for lk in links),
                    "uj_per_reading": sum(lk.energy_uj for lk in links) / max(1, notif)},
        }

    async def close(self) -> None:
        for c in getattr(self, "clients", []):
            await c.session.close()
