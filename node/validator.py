"""The driver that wires the layers: mempool -> block building -> PBFT replica -> ledger, and the
p2p adapter for n > 1.

One asyncio task owns the replica (the sans-IO PBFT core): network messages, ticks and proposals
all reach it through that task, in order. Blocking work (execution, LMDB commits with fsync) runs
in one worker thread so the loop keeps serving the API. Blocks come only from the replica's Deliver
action: a single validator is PBFT with a quorum of one, the same path the network uses.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from node import clock, faults, storage
from node.admission import Admission
from node.availability import AvailabilityGate, SizeMismatch
from node.backlog import Backlog
from node.blobcheck import BlobChecks
from node.block import TX_FRAMING, TXS_MAX_BYTES, Block
from node.commit import Commit
from node.config import max_queue_s, mempool_bytes
from node.consensus import (
    Broadcast,
    Catchup,
    ConsensusError,
    Deliver,
    Execute,
    NewView,
    Persist,
    Replica,
    Send,
    ViewChanged,
    decode_message,
)
from node.consensus.censor import CensorWatch
from node.consensus.messages import MAX_MESSAGE_BYTES, T_PREPREPARE, PrePrepare
from node.consensus.recovery import decode_record
from node.crypto import ecdsa
from node.crypto.keys import Identity
from node.execution import MAX_FUTURE_MS
from node.forwarding import Forwarder
from node.genesis import Genesis
from node.ipfs.blobwriter import BlobWriter
from node.ipfs.blockstore import BlockStore
from node.ledger import Ledger
from node.ledger.scratch import remove_stale
from node.mempool import AdmissionError, KeyedLimiter, Mempool, origin
from node.metrics import Metrics
from node.multiaddr import host_port, is_ip, peer_id
from node.pipeline import Pipeline, propose_now
from node.replication import HELD_PREFIX, Replicator, head_from_ledger, roots_from_ledger
from node.sidecar import (
    TXS_PREFIX,
    Item,
    SidecarCache,
    SidecarError,
    decode_forwarded,
)
from node.state import keys
from node.sync import THRESHOLD as SYNC_THRESHOLD
from node.sync import StateSync
from node.uploads import UploadBudget
from node.verify import refuse_unless_certified_state, refuse_unless_this_network
from node.wire import WireError

log = logging.getLogger("medchain.validator")

_TXS_PREFIX = TXS_PREFIX
PIPELINE = 4  # blocks executed and not yet written to the ledger, at most, on the primary
TICK_S = 0.05
GAP_CHECK_S = 10.0
TXIN_MAX = 4096  # forwarded batches waiting for admission; beyond, they are dropped (and re-forwarded)
TXIN_MAX_BYTES = 64 * 1024 * 1024  # and their bytes (sidecars ride in them): memory stays flat
INBOX_MAX = 16_384  # consensus messages waiting; beyond, dropped (PBFT retransmits what is missing)
INBOX_MAX_BYTES = 128 * 1024 * 1024  # and their bytes: 16 full blocks (a frame may be up to 32 MiB)


class Validator:
    def __init__(self, home: str | Path, identity: Identity | None = None, genesis: Genesis | None = None,
                 p2p_mode: str = "direct", ipfs_peers: list[str] | None = None, network: str | None = None,
                 p2p_gate: bool = True) -> None:
        self.home = Path(home)
        self.genesis = genesis or Genesis.load(self.home / "genesis.json")
        # the network's name in its p2p protocol ids: the genesis file's, which every validator shares
        # (`genesis` may have this validator's own p2p entry rewritten to where it listens: node/run.py)
        self.network = network if network is not None else self.genesis.network
        self.identity = identity or Identity.load(self.home / "node_key.json")
        self.chain_id = self.genesis.chain_id
        self.index = self.genesis.index_of(self.identity.public_key)
        self.n = len(self.genesis.validators)
        self.params = p = self.genesis.params
        self.ledger = Ledger(self.home / "ledger", genesis_root=self.genesis.state_root, map_size=storage.map_size())
        self.blobs = BlockStore(self.home / "blobs", map_size=storage.map_size())
        self.disk = storage.DiskGuard([storage.Store("ledger", self.home / "ledger", self.ledger.env, self.ledger.spare),
                                       storage.Store("block store", self.home / "blobs", self.blobs.env,
                                                     self.blobs.spare)])
        self.blob_writer = BlobWriter(self.blobs)  # uploads: one synced transaction per batch, off the loop
        # blocking calls into the stores from the event loop's tasks (block serving, replication, the
        # upload collector): drained by close() before the stores close under them
        self.io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store")
        self.replicator = Replicator(self.blobs, self.n, roots_from_ledger(self.ledger), head_from_ledger(self.ledger),
                                     io=self.io)  # blobs over bitswap
        self.ipfs_peers = list(ipfs_peers or [])  # external IPFS peers (multiaddrs), bitswap only
        self.p2p_gate = p2p_gate  # p2p connections only from the peers' addresses (node.toml p2p.gate)
        self.mempool = Mempool(p.mempool_capacity, p.sender_rate, p.sender_burst, origin_share=p.client_mempool_share,
                               max_tx_bytes=mempool_bytes())
        self._peer_limit = KeyedLimiter(p.peer_forward_bytes, 2 * p.peer_forward_bytes)  # per peer, bytes
        self.metrics = Metrics()
        head = self.ledger.head()
        self.chain_clock = clock.ChainClock(max(head.time_ms, self.genesis.time_ms))  # bounds of block times
        self.metrics.height.set(head.height)
        self.p2p_mode = p2p_mode
        self.net = None  # the P2PNode when n > 1
        self._peer_index = {peer_id(v.p2p): i for i, v in enumerate(self.genesis.validators) if v.p2p}
        self.sidecars = SidecarCache()  # recently forwarded sidecars by SHA-256: self-verifying
        # what clients may make this validator take on (node/backlog.py)
        self.backlog = Backlog(max_queue_s(), min(2 * p.block_max_txs, p.mempool_capacity), p.mempool_capacity)
        self.admission = Admission(self.chain_id, self.ledger, self.blobs, self.mempool, self.metrics,
                                   self.backlog, self.genesis.rules)
        # blocks executed on an uncommitted tip, and the worker thread all blocking work runs on
        self.pipeline = Pipeline(self.chain_id, self.ledger, self.admission, self.mempool, self.chain_clock,
                                 self.genesis.rules)
        self.uploads = UploadBudget.for_params(self.params.upload_grace_s, self.params.max_blob_bytes)
        self.committer = Commit(self.ledger, self.blobs, self.mempool, self.admission, self.sidecars,
                                self.replicator, self.metrics, self.pipeline.run)
        self.committer.uploads = self.uploads
        self.replica = self._new_replica()
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._inbox_bytes = 0  # of the peers' frames in it (INBOX_MAX_BYTES)
        # each peer's frames and bytes in it: a peer holds at most its share (of the others'), so one
        # flooding validly signed messages cannot fill the inbox and have the honest ones dropped
        self._inbox_peer: dict[str, list[int]] = {}
        others = max(1, self.n - 1)
        self._inbox_share = (max(1, INBOX_MAX // others), max(INBOX_MAX_BYTES // others, MAX_MESSAGE_BYTES))
        self._calls: collections.deque[tuple[Callable[[], Awaitable[None]], asyncio.Future[None]]] = (
            collections.deque())  # see in_consensus
        self._byzantine = faults.mode()
        # a primary proposes a write only once its blob is here (node/blobcheck.py), and a backup votes
        # for a block only once it holds the blobs its writes record (node/availability.py)
        self.blob_checks = BlobChecks(self.mempool, self.admission, self.sidecars, self.blobs, self.replicator,
                                      lambda: self._wake.set(), self._byzantine)
        self.forwarder = Forwarder(self.admission, self.mempool, self.pipeline, lambda: self.replica, self._send,
                                   self._broadcast, lambda: self.net is not None, self._byzantine == "drop")
        self.gate = AvailabilityGate(self.blob_checks.size, lambda cid, t: self.replicator.ensure(cid, t, "vote"),
                                     lambda answer: self._inbox.put_nowait(("executed", answer)))
        self._txin: asyncio.Queue = asyncio.Queue()  # forwarded transaction batches, admitted apart
        self._txin_bytes = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._adopting: asyncio.Task | None = None
        self._stopping = False
        self.msgs_in = self.msgs_out = 0
        self.synced_blocks = 0  # blocks fetched by state transfer
        self.sync = StateSync(self)
        self.faults = faults.FaultFile(self.home)
        if self._byzantine:
            log.critical("BYZANTINE MODE %r (fault-injection tests only)", self._byzantine)
            if self._byzantine == "withhold":
                faults.withhold_sidecars(self.mempool, self.admission)
            elif self._byzantine == "missize":
                faults.admit_any_size(self.admission)
        log.info("validator %d of %d, chain %s, height %d", self.index, self.n, self.chain_id, head.height)

    async def _rebuild_from_disk(self) -> tuple[int, int]:
        """After a full disk: the consensus stage as a restart builds it, from what is on disk."""
        self.gate.close()
        self.pipeline.reset()
        self.replica = self._new_replica()
        await self._recover()
        self._adopt_checkpoint_blobs()
        self._wake.set()
        # a checkpoint's install (node/statesync.py) moves the head without a commit here: long
        # polls for the heights it passed are answered now, not at their timeout
        self.committer.wake_heights(self.ledger.head().height)
        return self.replica.last_delivered, self.replica.view

    def _adopt_checkpoint_blobs(self) -> None:
        """A ledger that starts from a checkpoint holds none of the blobs committed below it: pin them
        and fetch them in the background (Replicator.adopt), once per checkpoint."""
        base = self.ledger.base_height()
        if not base or (self._adopting is not None and not self._adopting.done()):
            return

        async def adopt() -> None:
            try:
                await self.replicator.adopt(base, lambda after: self.ledger.scan_state(keys.BLOB_PREFIX, 2000, after))
            except Exception:  # retried at the next start; the blobs stay fetchable on demand meanwhile
                log.exception("adopting the blobs below the checkpoint at %d failed", base)

        self._adopting = asyncio.create_task(adopt(), name="adopt-checkpoint-blobs")
        self._tasks.append(self._adopting)

    def _new_replica(self) -> Replica:
        """The PBFT core as on disk: at start, and when a validator whose disk filled resumes (storage.py)."""
        head = self.ledger.head()
        last = self.ledger.block(head.height) if head.height else None
        # the view: the persisted one (a view change in progress survives a restart), else the last block's
        block_view = last.cert_view if last else 0
        view = max(self.ledger.get_view(), block_view)
        censor = None
        if self.n > 1:
            censor = CensorWatch(self.params.block_max_txs)
            # a full block is judged by the pool's order as it was when the primary could propose it:
            # before the commits of the PIPELINE blocks below it, which may have been in flight then
            censor.placed_ages = lambda block, seq: self.admission.placed_ages_ms(
                block, self.pipeline.executed.get(block.hash), seq - PIPELINE)
        return Replica(self.chain_id, self.n, self.index, self.identity.sign, self._verify_vote,
                       last_delivered=head.height, view=view, last_hash=head.hash,
                       last_cert=(last.cert_view, last.cert) if last else (0, ()),
                       view_timeout_ms=self.params.view_timeout_ms, awaiting_new_view=view > block_view,
                       window=self.params.pbft_window, push_gap_max=SYNC_THRESHOLD, censor=censor)

    # ---- start and stop ----------------------------------------------------------------------
    async def start(self) -> None:
        remove_stale(self.home)  # a killed installer's scratch tree (its own runs only after this start)
        refuse_unless_this_network(self.ledger, self.genesis, self.network)  # a replaced genesis file
        refuse_unless_certified_state(self.ledger)  # a rewritten LMDB record must not be served
        await self._recover()
        if self.n > 1:
            from node.p2p import P2PNode, swarmkey
            me = self.genesis.validators[self.index].p2p
            host, port = host_port(me)
            if not is_ip(host):  # advertised by name: listened on every interface (p2p.listen narrows it)
                host = "0.0.0.0"
            self.net = P2PNode(self.identity.p2p_secret, host, port, [v.p2p for v in self.genesis.validators],
                               self._on_net, mode=self.p2p_mode, max_frame=MAX_MESSAGE_BYTES + 4096,
                               blockstore=self.blobs, external_peers=self.ipfs_peers, psk=swarmkey.load(self.home),
                               max_blob_bytes=self.params.max_blob_bytes, network=self.network, gate=self.p2p_gate)
            self.sync.register()
            await self.net.start()
            self.replicator.start(self.net)
            self.admission.forwarding = self._byzantine != "drop"  # fault injection: clients' transactions stay here
            log.info("p2p %s listening on %s (%s)", self.net.peer_id, self.net.listen_addr, self.p2p_mode)
        self._tasks = [asyncio.create_task(self._produce(), name="producer"),
                       asyncio.create_task(self._consensus(), name="consensus"),
                       asyncio.create_task(self._ticker(), name="ticker"),
                       asyncio.create_task(self._admit_forwarded(), name="admit-forwarded"),
                       asyncio.create_task(self._collect_uploads(), name="upload-collector"),
                       asyncio.create_task(storage.watch(self.disk, lambda: self._inbox.put(("resume", None))),
                                           name="disk-watch")]
        if self.net is not None:
            self.sync.start()
        self._adopt_checkpoint_blobs()  # a restore, or a state transfer a stop cut short

    async def stop(self) -> None:
        self._stopping = True
        self.forwarder.flush()  # client transactions admitted here and not yet forwarded go now
        self._wake.set()
        self.gate.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, self.blob_checks.stop(), return_exceptions=True)
        await self.replicator.stop()
        await self.sync.stop()
        if self.net is not None:
            await self.net.stop()
        await self.blob_writer.close()
        self.close()

    def close(self) -> None:
        """Release the worker threads and the stores: the end of `stop`, and all a validator that was
        constructed but never started (a benchmark, a test) needs."""
        self.io.shutdown(wait=True)  # a task cancelled by stop() may have left a call into a store running
        self.pipeline.close()
        self.admission.close()
        self.ledger.close()
        self.blobs.close()

    # ---- admission (node/admission.py) -----------------------------------------------------------
    def committed_nonce(self, addr: bytes) -> int:
        return self.admission.committed_nonce(addr)

    async def submit(self, raw: bytes, sidecar: bytes | None = None) -> bytes:
        """Admit one signed transaction (with its sidecar); returns its id or raises AdmissionError."""
        res = (await self.submit_many([(raw, sidecar)]))[0]
        if isinstance(res, AdmissionError):
            raise res
        return res

    async def submit_many(self, items: list[Item], forwarded: bool = False) -> list[bytes | AdmissionError]:
        """Admit a batch of (transaction, sidecar or None); one id or AdmissionError each. StorageFull
        (the API's 507) while this validator's disk is full: forwarded ones are still admitted."""
        quiet = False
        if not forwarded:
            self.disk.check()
            now = time.monotonic()
            quiet = self.forwarder.quiet(now)
        out = await self.admission.submit_many(items, forwarded)
        if forwarded and not self._byzantine:
            # a bare forwarded write (a dag-pb upload held elsewhere): its blob is fetched and checked
            # now, at every validator, so a write no honest validator could propose leaves every pool
            # (a backup holding it pending would suspect each honest primary that leaves it out)
            for (_, side), r in zip(items, out, strict=True):
                t = self.mempool.by_id.get(r) if side is None and isinstance(r, bytes) else None
                if t is not None:
                    self.blob_checks.check_bare(t)
        self._wake.set()
        if not forwarded and self.gate.parked():
            self.gate.recheck()  # a client's sidecar may be what a held-back vote waits for
        if not forwarded:
            self.forwarder.submitted(now, any(isinstance(r, bytes) for r in out), quiet)
        return out

    def submit_many_sync(self, items: list[Item], forwarded: bool = False) -> list[bytes | AdmissionError]:
        """submit_many on the caller's thread (the loop): for tests and in-process benchmarks."""
        if not forwarded:
            self.disk.check()
        out = self.admission.submit_many_sync(items, forwarded)
        self._wake.set()
        return out

    def tx_status(self, txid: bytes) -> dict:
        return self.committer.tx_status(txid)

    async def wait_committed(self, txid: bytes, timeout: float) -> bool:
        return await self.committer.wait_committed(txid, timeout)

    # ---- consensus -------------------------------------------------------------------------------
    def _now_ms(self) -> int:
        return clock.now_ms()

    def _verify_vote(self, index: int, digest: bytes, sig: bytes) -> bool:
        return ecdsa.verify(self.genesis.validator_keys[index], digest, sig)

    async def _produce(self) -> None:
        interval = self.params.block_interval_ms / 1000
        while not self._stopping:
            r = self.replica
            if (self.disk.stalled or not r.can_propose() or len(self.mempool) == 0
                    or not propose_now(max(r.in_flight(), len(self.pipeline.executed)),
                                       len(self.mempool) - self.pipeline.in_flight_txs(),
                                       self.params.block_max_txs, PIPELINE,
                                       (waiting_bytes := self.mempool.tx_bytes - self.pipeline.in_flight_bytes()))):
                self._wake.clear()
                await self._wake.wait()
                continue
            tip = self.pipeline.build_tip()
            if tip.height != r.next_seq - 1:  # after a view change: build on what the new view carried over
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), interval)
                continue
            exclude = self.pipeline.proposed_ids()
            # nothing ran since the check above (no await): the pool and the blocks in flight are as they were
            if len(self.mempool) - len(exclude) < self.params.block_max_txs and waiting_bytes < TXS_MAX_BYTES:
                await asyncio.sleep(interval)  # let a batch fill: one round should carry many transactions
            txs = self.blob_checks.proposable(self.mempool.batch(self.params.block_max_txs, exclude, TXS_MAX_BYTES, TX_FRAMING))
            if self._byzantine == "fill":  # fault injection: full blocks of Sybil senders' work
                txs = faults.sybil_fill(txs, self.params.block_max_txs, self.chain_id)
            if not txs:
                self._wake.clear()
                await self._wake.wait()
                continue
            self.forwarder.flush()  # the sidecars of our own clients' writes travel ahead of the block
            try:
                now = self._now_ms()
                ex = await self.pipeline.build(tip, txs, r.view, self.index, now)
                self.chain_clock.check_own(ex.block.header.time_ms, now)  # our clock behind the chain's: say so
                await self._inbox.put(("propose", ex.block))
            except Exception:  # keep producing: the transactions stay in the pool
                log.exception("block production failed")
                await asyncio.sleep(interval)

    async def _ticker(self) -> None:
        gaps_checked = time.monotonic()
        while not self._stopping:
            await asyncio.sleep(TICK_S)
            await self._inbox.put(("tick", None))
            self.faults.poll()
            if self.net is None:
                continue
            now = time.monotonic()
            self.forwarder.tick(now, TICK_S)
            if now - gaps_checked >= GAP_CHECK_S:  # forwards that wait behind a gap for ever (node/admission.py)
                gaps_checked = now
                if n := self.admission.expire_gapped(now):
                    log.info("dropped %d forwarded transaction(s) that waited behind a nonce gap", n)

    async def _collect_uploads(self) -> None:
        """Standalone uploads that no committed write pinned within the grace are deleted: an
        unreferenced upload costs its uploader's rate, and the disk only for the grace."""
        grace = self.params.upload_grace_s
        while not self._stopping:
            await asyncio.sleep(min(60.0, max(0.5, grace / 4)))
            try:
                n = await asyncio.get_running_loop().run_in_executor(self.io, self.blobs.collect_uploads, grace)
            except Exception:  # keep collecting next round
                log.exception("collecting unreferenced uploads failed")
                continue
            if n:
                self.metrics.uploads_collected.inc(n)
                log.info("collected %d unreferenced upload(s) older than %.0f s", n, grace)

    def _on_net(self, peer: str, data: bytes) -> None:
        self.msgs_in += 1
        if self.faults.cut and self._peer_index.get(peer) in self.faults.cut:
            return  # fault injection: cut off from that validator
        if data[:2] == HELD_PREFIX:  # which blocks' blobs the peer holds (node/replication.py)
            self.replicator.on_held(peer, data)
            return
        if data[:2] == _TXS_PREFIX and self._peer_limit.take(peer, time.monotonic(), len(data)) > 0:
            self.metrics.throttled.labels("peer").inc()
            return  # over this peer's forwarding budget; its entry validator re-forwards what is pending
        if data[:2] == _TXS_PREFIX:
            # admission of forwarded transactions runs in its own task: under overload it must not hold
            # up PBFT messages (or the replicas would see no progress and change view for nothing)
            if self._txin.qsize() >= TXIN_MAX or self._txin_bytes + len(data) > TXIN_MAX_BYTES:
                self.metrics.throttled.labels("backlog").inc()
                return  # its entry validator re-forwards what stays pending
            try:
                items = decode_forwarded(data)
            except (WireError, SidecarError) as exc:
                log.debug("dropped malformed forwarded batch from %s: %s", peer, exc)
                return
            for _raw, side in items:
                if side is not None:  # usable at once: by a held-back vote, by a block that beats admission
                    self.sidecars.add(side)
            self.metrics.sidecar_cache.set(self.sidecars.bytes)
            if self.gate.parked():
                self.gate.recheck()
            self._txin_bytes += len(data)
            self._txin.put_nowait((peer, items, len(data)))
            return
        held = self._inbox_peer.setdefault(peer, [0, 0])
        if self._inbox.qsize() >= INBOX_MAX or self._inbox_bytes + len(data) > INBOX_MAX_BYTES \
                or held[0] >= self._inbox_share[0] or held[1] + len(data) > self._inbox_share[1]:
            self.metrics.throttled.labels("consensus_backlog").inc()
            return  # a flood of consensus messages: PBFT tolerates the loss and retransmits
        self._inbox_bytes += len(data)
        held[0] += 1
        held[1] += len(data)
        self._inbox.put_nowait(("net", (peer, data)))

    async def _admit_forwarded(self) -> None:
        while True:
            peer, items, size = await self._txin.get()
            self._txin_bytes -= size
            try:
                if items:
                    with origin(f"peer:{peer}"):  # forwarded: no client IP, so the peer is the origin
                        await self.submit_many(items, forwarded=True)
            except Exception:
                log.exception("admitting a forwarded batch failed")
            await asyncio.sleep(0)  # let the consensus task in between batches

    async def _consensus(self) -> None:
        while True:
            kind, item = ("call", self._calls.popleft()) if self._calls else await self._inbox.get()
            if kind == "net":
                peer, item = item
                self._inbox_bytes -= len(item)
                held = self._inbox_peer[peer]
                held[0] -= 1
                held[1] -= len(item)
            if self.disk.stalled or kind == "resume":
                if kind == "call" and item is not None and not item[1].done():  # its caller must not wait on
                    item[1].set_exception(storage.StorageFull("storage stalled: not run"))  # a dropped step
                await storage.while_stalled(self.disk, kind, item, self._rebuild_from_disk)  # a failed write:
                # nothing reaches the replica until the disk takes writes again
                continue
            try:
                if kind == "propose":
                    r = self.replica
                    if not (r.can_propose() and r.is_next(item)):
                        # the view moved on while the block was built (a view change, a restart into a
                        # view the others left): its transactions stay pooled, the new view drops it
                        log.info("block %d built for view %d not proposed: the replica is in view %d%s",
                                 item.header.seq, item.header.view, r.view, " (changing)" if r.changing else "")
                        continue
                    acts = r.propose(item)
                elif kind == "tick":
                    if self.replica.censor is not None and not self.replica.is_primary:
                        try:  # a failure here must not cost the heartbeat and the view timer
                            watched = self.admission.watch_candidate()
                            self.replica.watch(*(watched or (None, 0)))
                            self.forwarder.push_watched(self.replica.censor)
                        except Exception:
                            log.exception("censorship watch failed on this tick")
                    acts = self.replica.tick(clock.timer_ms(), pending=len(self.mempool) > 0)
                elif kind == "executed":  # a parked block's blobs are here now (node/availability.py)
                    acts = self.replica.executed(*item, True)
                elif kind == "synced":
                    await self._on_synced(*item)
                    continue
                elif kind == "call":  # another stage's step that must not interleave with ours (node/statesync.py)
                    if item is not None:  # None: in_consensus's wake-up, its call already taken from _calls
                        await self._call(*item)
                    continue
                else:
                    acts = await self._on_wire(item)
                await self._handle(acts)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if storage.is_storage_error(exc):  # the replica may now be ahead of its disk: stop it
                    self.disk.failed(f"handling {kind}", exc)
                else:
                    log.exception("consensus step failed (%s)", kind)

    async def _on_wire(self, data: bytes) -> list:
        try:
            if data[:2] == _TXS_PREFIX:
                await self.submit_many(decode_forwarded(data), forwarded=True)
                return []
            msg = decode_message(data)
        except (WireError, ConsensusError, SidecarError) as exc:
            log.debug("dropped malformed p2p message: %s", exc)
            return []
        return self.replica.on_message(msg)

    @contextlib.contextmanager
    def _waited(self, step: str) -> Iterator[None]:
        """Count the time the consensus task awaits `step` (medchain_consensus_wait_seconds_total)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.consensus_wait.labels(step).inc(time.perf_counter() - t0)

    async def _execute(self, act: Execute) -> list:
        """The replica's Execute: run the proposed block on its parent (once; a retransmission finds it
        executed) and answer `executed`, or park the answer until the blobs its writes record are here."""
        block = act.block
        ex = self.pipeline.executed.get(block.hash)
        if ex is None:
            ex = await self.pipeline.execute(block, check_time=act.fresh)
        elif act.fresh and block.header.time_ms > self._now_ms() + MAX_FUTURE_MS:
            del self.pipeline.executed[block.hash]  # executed untimed earlier; as a fresh proposal it is too late
            ex = None
        if ex is None:
            return self.replica.executed(act.seq, block.hash, False)
        try:
            missing = self.gate.missing(ex)
        except SizeMismatch as exc:
            log.warning("not voting for block %s at %d: %s", block.hash.hex()[:16], act.seq, exc)
            return self.replica.executed(act.seq, block.hash, False)
        if missing:
            self.gate.park(block.hash, (act.seq, block.hash), missing)  # no PREPARE before the blobs are here
            return []
        return self.replica.executed(act.seq, block.hash, True)

    async def _recover(self) -> None:
        """Reload what this replica persisted before a crash: the NEW-VIEW of its view, then its consensus
        log (node/consensus/recovery.py). A log that does not decode or execute is a fault we must not
        guess past, so the validator stops loudly."""
        r = self.replica
        nv_raw = self.ledger.get_new_view()
        if nv_raw is not None:
            # awaited (the view persisted is above the head's): without it the replica cannot take
            # part; else (a block of the view is on the ledger) it brings back the view's obligations
            awaited = r.changing
            try:
                nv = decode_message(nv_raw)
                if not isinstance(nv, NewView) or not r.reinstall(nv):
                    raise ConsensusError("it does not install our view")
                log.info("back in view %d (its NEW-VIEW reinstalled)", r.view)
            except ConsensusError as exc:
                if awaited:
                    log.critical("the persisted NEW-VIEW is unusable (%s): refusing to start", exc)
                    raise SystemExit(4) from None
                log.info("the persisted NEW-VIEW binds nothing in view %d (%s)", r.view, exc)
        head = self.ledger.head()
        for seq, raw in self.ledger.log_entries():
            if seq <= head.height:
                continue
            try:
                rec = decode_record(raw)
            except ConsensusError as exc:
                log.critical("consensus log entry %d is corrupt (%s): refusing to start", seq, exc)
                raise SystemExit(4) from None
            if not r.restore_record(seq, rec):
                log.info("consensus log entry %d (view %d) binds nothing in view %d", seq, rec.view, r.view)
                continue
            if self.pipeline.tip_for(rec.block.header.prev_hash) is None:
                # its parent was executed here but never recorded (our vote for it was held back for
                # a blob, or it came in an earlier view): the binding stands, and the block executes
                # once its parent comes again (a retransmission, a commit certificate, catch-up)
                log.warning("consensus log entry %d is bound, but its parent is not on the ledger: it executes "
                            "when the parent comes", seq)
                continue
            ex = await self.pipeline.execute(rec.block, check_time=False)
            if ex is None:
                log.critical("consensus log entry %d does not execute on the ledger: refusing to start", seq)
                raise SystemExit(4)
            if r.is_primary:
                self.pipeline.tip = ex.tip()
            log.info("recovered our signed messages %s for sequence %d", list(rec.tags), seq)
        r.resume_view_change()

    async def _handle(self, actions: list) -> None:
        waited = self._waited
        for act in actions:
            if isinstance(act, Execute):
                with waited("execute"):
                    then = await self._execute(act)
                await self._handle(then)
            elif isinstance(act, Deliver):
                with waited("deliver"):
                    await self._deliver(act.block)
            elif isinstance(act, ViewChanged):
                await self._view_changed(act)
            elif isinstance(act, Persist):  # synced before the message it covers leaves
                with waited("persist"):
                    await self.pipeline.run(self.ledger.log_put, act.seq, act.record)
            elif isinstance(act, Broadcast) and self.net is not None:
                if self._byzantine == "equivocate" and act.msg.tag == T_PREPREPARE and self._equivocate(act.msg):
                    continue
                self._broadcast(act.msg.encode())
            elif isinstance(act, Send) and self.net is not None:
                self._send(act.to, act.msg.encode())
            elif isinstance(act, Catchup) and self.net is not None:
                for h in range(act.first, act.last + 1):
                    b = self.ledger.block(h)
                    if b is None:
                        break
                    self._send(act.to, self.replica.certified_message(b).encode())

    async def in_consensus(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run `fn` in the consensus task between its steps (a checkpoint install, node/statesync.py),
        before the messages waiting in its inbox: a new validator's inbox holds the frames its peers
        had queued for it since the network started, and replaying them first would take it past
        the checkpoint it came to install. Returns once `fn` ran, raising what it raised; StorageFull
        if the storage stalled before its turn (nothing runs while it is stalled)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._calls.append((fn, done))
        await self._inbox.put(("call", None))  # wakes the task if it waits on an empty inbox
        await done

    @staticmethod
    async def _call(fn: Callable[[], Awaitable[None]], done: asyncio.Future[None]) -> None:
        if done.done():  # its caller gave up waiting (a timeout cancels the future): not run late
            return
        try:
            await fn()
        except Exception as exc:  # noqa: BLE001 - the caller of in_consensus gets it
            if not done.done():
                done.set_exception(exc)
        else:
            if not done.done():
                done.set_result(None)

    rebuild_from_disk = _rebuild_from_disk  # public: state transfer rebuilds the replica on a checkpoint

    async def submit_certified(self, blocks: list[Block], done: asyncio.Future) -> None:
        """State transfer hands fetched blocks to the consensus task; `done` gets how many were delivered."""
        await self._inbox.put(("synced", (blocks, done)))

    async def _on_synced(self, blocks: list[Block], done: asyncio.Future) -> None:
        accepted = 0
        try:
            for b in blocks:
                known = b.header.seq <= self.replica.last_delivered or b.header.seq in self.replica.certified
                await self._handle(self.replica.offer_certified(b))
                accepted += not known and (b.header.seq <= self.replica.last_delivered
                                           or b.header.seq in self.replica.certified)
        finally:
            if not done.done():
                done.set_result(accepted)

    def consensus_status(self) -> dict:
        """PBFT state for /v1/status: view, watermarks, view changes, and the evidence of misbehaviour."""
        r = self.replica
        return {"view": r.view, "phase": r.phase.value, "view_changing": r.changing, "view_changes": r.view_changes,
                "stable_checkpoint": r.stable, "peer_stable_checkpoint": r.peer_stable, "in_flight": r.in_flight(),
                "behind_by": r.behind_by(), "ignored_messages": r.ignored,
                "ignored_by_reason": r.ignored_by_reason(), "evidence": list(r.evidence),
                "synced_blocks": self.synced_blocks, "block_times_refused": dict(self.chain_clock.refused)}

    async def _view_changed(self, act: ViewChanged) -> None:
        """Persist the view before any message of it leaves (a restarted replica must not go back to an
        older view); once in the new view, drop proposals it abandoned and build on what it carried over."""
        await self.pipeline.run(self.ledger.put_view, act.view, act.new_view)
        if not act.active:
            log.warning("view change: leaving for view %d (primary %d)", act.view, act.view % self.n)
            return
        await self.pipeline.new_view(act.view, act.reproposed)
        log.warning("view %d installed (primary %d, %d block(s) carried over)", act.view, act.view % self.n,
                    len(act.reproposed))
        self._wake.set()

    def _equivocate(self, pp: PrePrepare) -> bool:
        """Fault injection (node/faults.py): a conflicting proposal for half the others."""
        b = pp.block
        done = faults.equivocate(pp, self.pipeline.tip_for(b.header.prev_hash) if b else None,
                                 self.pipeline.executed.get(pp.digest), self.chain_id, self.n, self.index,
                                 self.identity.sign)
        if done is None:
            return False
        alt, sends = done
        self.pipeline.add(alt)
        for j, data in sends:
            self._send(j, data)
        return True

    def _send(self, index: int, data: bytes) -> None:
        if index in self.faults.cut:
            return
        peer = peer_id(self.genesis.validators[index].p2p)
        self.net.send(peer, data)
        self.msgs_out += 1

    def _broadcast(self, data: bytes) -> None:
        if self.faults.cut:  # fault injection: a partition leaves some validators out
            for j in range(self.n):
                if j != self.index:
                    self._send(j, data)
            return
        self.net.broadcast(data)
        self.msgs_out += 1

    async def _deliver(self, block: Block) -> None:
        ex = self.pipeline.executed.get(block.hash)
        if ex is None:  # a certified block we did not see proposed: execute it now
            ex = await self.pipeline.execute(block, check_time=False)
            if ex is None:
                log.critical("certified block %d does not execute to its state root here: stopping",
                             block.header.height)
                raise SystemExit(3)
        await self.committer.commit(block, ex)
        self.chain_clock.committed(block.header.time_ms)
        self.gate.forget(block.hash)
        self.pipeline.committed(block)
        self._wake.set()
