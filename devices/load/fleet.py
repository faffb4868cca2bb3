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
The proxy (devices/load/fleet_proxy.py) then, for all windows closed since its last pass: encrypts
each with AES-256-GCM (envelope format, node/crypto/batch.py's batch AEAD, one call per key), signs
each phone's transactions in one batch call, and submits them per validator in one POST /v1/txs,
each ciphertext as its write's sidecar; refused ones go again, in nonce order. A follower reads every
new block (its certificate checked against the genesis when given) and stamps commit times; a write
admitted before a revoke that committed ahead of it counts only once its proven receipt says OK.
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
import heapq
import logging
import math
import os
import random
import time
from collections import deque

import aiohttp
from hdrh.histogram import HdrHistogram

from devices.load.fleet_model import ALL_TYPES, HISTORY_EPOCHS, KINDS, FleetConfig, FleetPhone, Meta
from devices.load.fleet_proxy import ProxyLanes
from devices.load.follow import Follower
from devices.load.follow import start_height as follow_from
from devices.patient import envelope
from devices.patient.client import ApiError, NodeClient
from devices.wearable.ble import Link
from devices.wearable.wearables import make_wearable
from node.crypto import seal
from node.crypto.keys import Identity
from node.genesis import Genesis
from node.ipfs.cid import Cid
from node.proof import verify_status
from node.state.records import CODES, Code
from node.tx import Grant, Profile, Read, SealedKey, data_type_id

log = logging.getLogger("medchain.fleet")
class Fleet(ProxyLanes):
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
        self.staff_resync: set[int] = set()
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
        self.phones = [FleetPhone(Identity.from_seed(f"phone|{tag}|{k}".encode()), (k % cfg.staff) % nv, k % cfg.staff,
                                  self.chain) for k in range(cfg.phones)]
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

    # --- the follower -----------------------------------------------------------------------
    async def _follow(self) -> None:
        self.follower = Follower(self.clients, self.genesis, self.chain, await follow_from(self.clients))
        async for blk in self.follower.blocks():
            if blk is None:
                continue
            t = time.monotonic()
            for tid in blk["tx_ids"]:
                m = self.tracked.pop(bytes.fromhex(tid), None)
                if m is not None:
                    self._on_commit(m, t)

    def _on_commit(self, m: Meta, t: float, confirmed: bool = False) -> None:
        if m.done:  # counted once (a transaction whose POST failed may still have been admitted)
            return
        if m.kind == "write" and not confirmed and m.body.epoch < self.phones[m.owner].chain_epochs.get(m.dtype, 0):
            # a grant of its phone that committed before it rotated its key epoch: the write executed
            # as stale and recorded nothing, unless that grant failed. Its proven receipt tells.
            m.done = True  # until the receipt is read
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
            ph = self.phones[m.owner]
            for d in set(ph.chain_types) - set(m.body.types):
                ph.chain_epochs[d] = ph.chain_epochs.get(d, 0) + 1
            ph.chain_types = m.body.types
            if ph.blocked:
                self._spawn(self._after_grant(m))
        elif m.kind == "read" and self.rng.random() < self.cfg.read_fetch:
            self._spawn(self._fetch(m))

    async def _confirm(self, m: Meta, t: float) -> None:
        """A write whose block may have found its key epoch rotated: its proven receipt says whether
        it was recorded. If not (stale key epoch), it is sealed again under the new epoch and sent
        again, as a refusal at admission would have it; any other failed code is a failure."""
        ph = self.phones[m.owner]
        m.done = False
        try:
            # asked of the phone's validator, which may commit the block after the followed one
            st = await self.clients[ph.v].wait_committed(m.tx.id.hex(), 30.0)
            if self.genesis is not None:
                verify_status(m.tx.id, st, self.genesis.validator_keys, self.chain)
            code = st["code"]
            if code == Code.STALE_EPOCH:  # the nonce it took stays taken: epochs only
                acct = await self.clients[ph.v].account(ph.addr)
                ph.take_epochs(acct)
        except Exception as exc:  # noqa: BLE001 - the receipt could not be had or proven: a failure, said so
            self._refused(m, {"status": 599, "error": f"receipt of a write after a grant change: {exc!r}"}, gap=False)
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
        m.body = None
        self.work.put_nowait([m])

    async def _after_grant(self, m: Meta) -> None:
        ph = self.phones[m.owner]
        c = self.clients[ph.v]
        try:  # the phone's validator may commit the grant after the followed one: its epochs then
            await c.wait_committed(m.tx.id.hex(), 30.0)
            acct = await c.account(ph.addr)
        except Exception:
            log.warning("epochs of phone %d not re-read after its grant", m.owner, exc_info=True)
            ph.grants_changed = time.monotonic()  # it may have committed
            ph.blocked = False
            return
        ph.take_epochs(acct)
        ph.granted = m.body.types
        ph.grants_changed = time.monotonic()
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
