"""The commit stage: a certified, executed block becomes durable, with its blobs.

It owns what a commit touches: the ledger write (block, state, the state tree's nodes) and, before
it, one synced block-store transaction that stores the sidecars held here for the block's
successful writes and pins every blob the block records (a crash or a full disk between the two leaves
blobs and no block, never a block whose blobs are missing; the retried commit does not pin them
twice); the clients waiting for their
transactions; the mempool's removal of what committed; and telling replication which blobs are
still wanted (fetched over bitswap: the repair path). Blocking work runs in the ledger worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from node import merkle
from node.admission import Admission
from node.block import Block
from node.execution import Executed
from node.ipfs.blockstore import BlockStore
from node.ipfs.cid import CODEC_RAW, Cid
from node.ledger import Ledger
from node.mempool import Mempool, Refusal
from node.metrics import Metrics
from node.replication import Replicator
from node.sidecar import SidecarCache
from node.state import CODES, OK
from node.state.records import NO_NONCE
from node.tx import KIND_WRITE
from node.uploads import UploadBudget

Run = Callable[..., Awaitable[Any]]  # runs blocking work in the ledger worker thread
# Committed blocks kept decoded with their transaction tree, for the status polls that follow a
# commit (each client asks about its own transaction of the newest blocks): bounded in blocks and
# in bytes (transactions, and 64 bytes a leaf for the tree), so large blocks cannot hold much memory.
RECENT_BLOCKS = 16
RECENT_BYTES = 8 * 1024 * 1024
# A block long-polled for (GET /v1/blocks/{h}?wait=S) is waited for only this far past the head: a
# client following the chain asks for the next one; nobody parks a waiter on a height years ahead.
WAIT_AHEAD = 64


class Commit:
    def __init__(self, ledger: Ledger, blobs: BlockStore, mempool: Mempool, admission: Admission,
                 sidecars: SidecarCache, replicator: Replicator, metrics: Metrics, run: Run) -> None:
        self.ledger, self.blobs, self.mempool, self.admission = ledger, blobs, mempool, admission
        self.sidecars, self.replicator, self.metrics, self._run = sidecars, replicator, metrics, run
        self._waiters: dict[bytes, list[asyncio.Future]] = {}
        self._height_waiters: dict[int, list[asyncio.Future]] = {}
        self._recent: dict[int, tuple[Block, merkle.Tree, int]] = {}  # height -> block, tree, bytes
        self._recent_bytes = 0
        self.uploads: UploadBudget | None = None  # the validator's, told what each block pinned

    async def commit(self, block: Block, ex: Executed) -> None:
        roots, sidecars = self.blobs_of(ex)
        stored, wanted = await self._run(self.write, block, ex, sidecars, roots)
        if self.uploads is not None:
            self.uploads.pinned(r.multihash for r in roots)  # pinned by the chain: off the upload budget
        in_block = {t.id for t in ex.txs}
        # a transaction executed as a bad nonce, or again as a duplicate, did not take its nonce: it
        # moves no sender's run (a duplicate of a later nonce, included by a byzantine primary, dropped
        # every pending transaction below it here as superseded), and it can never commit now (it has
        # its receipt), so it alone leaves the pool
        took = [t for t, c in zip(ex.txs, ex.codes, strict=True) if c not in NO_NONCE]
        burned = [t for t, c in zip(ex.txs, ex.codes, strict=True) if c in NO_NONCE]
        for t in burned:
            self.mempool.discard(t)
        for addr in {t.address for t in burned}:  # a pool behind the chain (it missed a commit) catches up
            self.admission.settle(addr, self.admission.committed_nonce(addr))
        for t in self.mempool.remove(took, time.monotonic(), block.header.height):
            if t.id not in in_block:  # accepted (202) here: its client polls for a status, not a 404
                self.admission.reject(t.id, Refusal.CONFLICT, f"superseded: nonce {t.nonce} of this sender was "
                                                              "committed by another transaction")
        now = time.monotonic()
        self.admission.backlog.committed(len(ex.txs), now)
        for tx in ex.txs:
            self.admission.pending_since.pop(tx.id, None)
            t0 = self.admission.submitted_at.pop(tx.id, None)
            if t0 is not None:
                self.metrics.commit_latency.observe(now - t0)
            _wake(self._waiters.pop(tx.id, []))
        # stored now: the forwarded copies are no longer needed (held, the cache would track the last
        # 16 MiB forwarded instead of the writes in flight; at 1,000 writes/s for 40 s, one pair:
        # 138 -> 132 MB anonymous per validator)
        self.sidecars.discard([c.digest for c, _ in sidecars if c.codec == CODEC_RAW])
        self.metrics.sidecar_cache.set(self.sidecars.bytes)
        if stored:
            self.replicator.stored(stored)  # answers peers' wants waiting for them
            self.metrics.sidecars_stored.inc(len(stored))
        self.replicator.on_commit(block.header.height, roots, wanted)
        if ex.tx_tree is not None:  # hashed once, when the block was executed
            self._remember(block, ex.tx_tree)
        self.metrics.height.set(block.header.height)
        self.wake_heights(block.header.height)
        self.metrics.committed.inc(len(ex.txs))
        self.metrics.mempool.set(len(self.mempool))
        self.mempool.prune_buckets(now)

    def blobs_of(self, ex: Executed) -> tuple[list[Cid], list[tuple[Cid, bytes]]]:
        """The blobs the block's successful writes record, and the sidecars held here for them (with
        the write in the mempool, or seen in a forwarded batch the block overtook)."""
        roots, sidecars = [], []
        for t, c in zip(ex.txs, ex.codes, strict=True):
            if t.kind != KIND_WRITE or c != OK:
                continue
            cid = t.body.root  # parses: Write.parse takes only a CIDv1 of sha2-256
            roots.append(cid)
            side = self.mempool.sidecar(t.id)
            if side is None and cid.codec == CODEC_RAW:
                side = self.sidecars.get(cid.digest)
            if side is not None:
                sidecars.append((cid, side))
        return roots, sidecars

    def write(self, block: Block, ex: Executed, sidecars: list[tuple[Cid, bytes]],
               roots: list[Cid]) -> tuple[list[Cid], list[Cid]]:
        """The blocking part of a commit (on the worker thread): the blobs, then the block with its state,
        each in one synced LMDB transaction. Returns the blobs stored now and the ones still wanted."""
        done = self.blobs.commit_blobs(sidecars, roots, block.header.height, block.hash) if roots else ([], [])
        self.ledger.commit_block(block, ex.writes, ex.nodes)
        return done

    def included(self, height: int) -> tuple[Block, merkle.Tree] | None:
        """Committed block `height` and its transaction tree (None if not held here)."""
        hit = self._recent.get(height)
        if hit is not None:
            return hit[0], hit[1]
        block = self.ledger.block(height)
        if block is None or not block.txs:
            return None
        tree = merkle.Tree(block.tx_ids)
        self._remember(block, tree)
        return block, tree

    def block_at(self, height: int) -> Block | None:
        """Committed block `height` (from the newest kept, else the ledger), without its tree."""
        hit = self._recent.get(height)
        return hit[0] if hit is not None else self.ledger.block(height)

    def _remember(self, block: Block, tree: merkle.Tree) -> None:
        h = block.header.height
        if h in self._recent or (len(self._recent) >= RECENT_BLOCKS and h < min(self._recent)):
            return  # an old block read for one poll is not kept: it would push out a newer one
        size = sum(map(len, block.txs)) + 64 * tree.size
        self._recent[h] = (block, tree, size)
        self._recent_bytes += size
        while len(self._recent) > 1 and (len(self._recent) > RECENT_BLOCKS or self._recent_bytes > RECENT_BYTES):
            self._recent_bytes -= self._recent.pop(min(self._recent))[2]  # the oldest height goes

    def tx_status(self, txid: bytes) -> dict:
        """For GET /v1/tx: committed (with its inclusion proof), pending, rejected (why) or unknown."""
        rec = self.ledger.receipt(txid)
        if rec is not None:
            height, idx = rec.height, rec.tx_index
            hit = self.included(height)
            if hit is not None:
                block, tree = hit
                return {"status": "committed", "height": height, "index": idx, "code": rec.code,
                        "result": CODES.get(rec.code, "unknown"), "block_hash": block.hash.hex(),
                        "tx_root": block.header.tx_root.hex(), "tx_count": tree.size,
                        "proof": [p.hex() for p in tree.proof(idx)],
                        # the certified header: a client checks the commit from this answer alone
                        "header": block.header.encode().hex(), "certificate": [[i, s.hex()] for i, s in block.cert],
                        "cert_view": block.cert_view}
        if txid in self.mempool:
            return {"status": "pending"}
        if txid in self.admission.rejected:
            return {"status": "rejected", "reason": self.admission.rejected[txid]}
        return {"status": "unknown"}

    async def wait_height(self, height: int, timeout: float) -> bool:
        """True once block `height` is committed here (waiting up to `timeout` seconds; at once
        False for a height more than WAIT_AHEAD past the head)."""
        head = self.ledger.head().height
        if height > head + WAIT_AHEAD:
            return False
        return await _wait(self._height_waiters, height, timeout, lambda: self.ledger.head().height >= height)

    def wake_heights(self, head: int) -> None:
        """Wake the waiters of every height up to `head`: at each commit, and after a checkpoint's
        install (Validator._rebuild_from_disk), which moves the head past heights never committed here."""
        for h in [h for h in self._height_waiters if h <= head]:
            _wake(self._height_waiters.pop(h))

    async def wait_committed(self, txid: bytes, timeout: float) -> bool:
        """True once `txid` is committed here (waiting up to `timeout` seconds)."""
        return await _wait(self._waiters, txid, timeout, lambda: self.ledger.tx_location(txid) is not None)


def _wake(futs: list[asyncio.Future]) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_result(True)


async def _wait(waiters: dict[Any, list[asyncio.Future]], key: Any, timeout: float,
                done: Callable[[], bool]) -> bool:
    """Wait up to `timeout` seconds for `waiters[key]` to be woken; `done()` says whether what it
    waits for happened already (then no waiter is parked), and is asked again after a timeout."""
    if done():
        return True
    fut = asyncio.get_running_loop().create_future()
    waiters.setdefault(key, []).append(fut)
    try:
        await asyncio.wait_for(fut, timeout)
        return True
    except TimeoutError:
        return done()
    finally:
        lst = waiters.get(key)
        if lst and fut in lst:
            lst.remove(fut)
            if not lst:
                del waiters[key]
