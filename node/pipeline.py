"""The pipeline stage of the driver: blocks executed on a tip that is not committed yet.

The primary builds its next block on its newest proposal rather than on the ledger's head, so up to
PIPELINE blocks are in flight at once (a further one only once enough waits: `propose_now`); a
backup executes a proposal on the block it extends before it votes (the replica's Execute action;
the driver answers whether that exact block executed here and matched). Both kinds wait here, by
hash, until the commit stage writes them or a view change abandons them. The blocking work of the
driver (execution, LMDB commits with fsync) runs on this stage's one worker thread, in order, so
the asyncio loop keeps serving the API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from node import clock
from node.admission import Admission
from node.block import TXS_MAX_BYTES, Block
from node.crypto.batch import verify_batch
from node.execution import Executed, InvalidBlock, Tip, build_block, check_block
from node.ledger import Ledger
from node.mempool import Mempool
from node.state.rules import NO_ISSUERS, Rules
from node.tx import Tx

log = logging.getLogger("medchain.validator")


FILL = 4  # with blocks in flight, a further one waits for 1/FILL of a full block


def propose_now(in_flight: int, waiting: int, block_max_txs: int, depth: int,
                waiting_bytes: int = 0, max_bytes: int = TXS_MAX_BYTES) -> bool:
    """Whether the primary proposes a block now, with `in_flight` of its blocks not yet committed and
    `waiting` transactions not in any of them. None in flight: yes. Otherwise only while fewer than
    `depth` are, and only once 1/FILL of a full block is waiting. Every block costs each validator
    the same messages, signatures and synced commits however few transactions it carries: at light
    load one block per round then carries all that arrived during the round, instead of a block of
    a handful every batch interval (measured in bench/README.md), and a heavy load still overlaps
    up to `depth` full blocks. A block is full by count or by bytes (`max_bytes` of transactions,
    `waiting_bytes` of them waiting), whichever comes first: large grants fill it by bytes."""
    if in_flight == 0:
        return waiting > 0
    return in_flight < depth and (waiting >= max(1, block_max_txs // FILL) or waiting_bytes >= max_bytes // FILL)


class Pipeline:
    def __init__(self, chain_id: str, ledger: Ledger, admission: Admission, mempool: Mempool,
                 chain_clock: clock.ChainClock, rules: Rules = NO_ISSUERS) -> None:
        self.chain_id = chain_id
        self.rules = rules  # the genesis's rules, carried from tip to tip
        self.ledger = ledger
        self.admission = admission
        self.mempool = mempool
        self.chain_clock = chain_clock
        # block hash -> executed, not yet committed. The primary's producer counts these, not only the
        # replica's undelivered proposals: a proposal still queued for the replica, or delivered and
        # waiting for its ledger write, is neither, and a commit stage slower than execution (one
        # validator on one core) otherwise let executed blocks, each with its state writes and tree
        # nodes, pile up without bound
        self.executed: dict[bytes, Executed] = {}
        self.tip: Tip | None = None  # the primary's newest proposal, to pipeline on
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Blocking work, off the loop, on the one worker thread (in the order it was asked for)."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    def reset(self) -> None:
        """Forget every uncommitted block (the consensus stage is rebuilt from disk)."""
        self.executed.clear()
        self.tip = None

    # ---- tips ------------------------------------------------------------------------------------
    def head_tip(self) -> Tip:
        """The ledger's committed head, as a tip to execute on."""
        h = self.ledger.head()
        return Tip(h.height, h.hash, h.state_root, h.time_ms, self.ledger.head_state, self.ledger.get_node,
                   self.rules)

    def tip_for(self, prev_hash: bytes) -> Tip | None:
        """The tip a block extending `prev_hash` executes on: the head, or an executed block (None: neither)."""
        head = self.head_tip()
        if prev_hash == head.hash:
            return head
        ex = self.executed.get(prev_hash)
        return ex.tip() if ex is not None else None

    def build_tip(self) -> Tip:
        """Where the primary's next block goes: on its newest proposal while that is still executed here."""
        return self.tip if (self.tip and self.tip.hash in self.executed) else self.head_tip()

    def in_flight_txs(self) -> int:
        """How many transactions the executed, uncommitted blocks carry."""
        return sum(len(ex.txs) for ex in self.executed.values())

    def in_flight_bytes(self) -> int:
        """The wire bytes of those transactions."""
        return sum(len(t.raw) for ex in self.executed.values() for t in ex.txs)

    def proposed_ids(self) -> set[bytes]:
        """The transactions of blocks in flight (not free for another block, not to be re-forwarded)."""
        return {t.id for ex in self.executed.values() for t in ex.txs}

    # ---- execution -------------------------------------------------------------------------------
    async def build(self, tip: Tip, txs: list[Tx], view: int, index: int, now: int) -> Executed:
        """The primary's next block, executed on `tip`; it becomes the tip to build on."""
        ex: Executed = await self.run(build_block, tip, txs, self.chain_id, view, index, now)
        self.add(ex)
        self.tip = ex.tip()
        return ex

    def add(self, ex: Executed) -> None:
        """An executed block waits here. If its parent committed while it executed (the producer waits
        for a batch to fill holding its tip; a check runs on the worker after the parent's write), the
        cut in `committed` missed it: make it now, or each block would keep its parent, and so on back
        to the process's start."""
        prev = ex.block.header.prev_hash
        if prev not in self.executed:
            head = self.ledger.head()
            if head is not None and head.hash == prev:
                self._read_ledger(ex)
        self.executed[ex.block.hash] = ex

    def _read_ledger(self, ex: Executed) -> None:
        """`ex`'s parent is on the ledger: read through it, so the parent's `Executed` (its writes,
        tree nodes and transactions) can be freed."""
        ex.parent_get, ex.parent_tree = self.ledger.head_state, self.ledger.get_node

    async def execute(self, block: Block, check_time: bool) -> Executed | None:
        """Execute a proposal (or a certified or re-proposed block) on its parent; None if its parent is
        not executed here yet, its time is off (only `check_time`: fresh proposals), or it is invalid."""
        tip = self.tip_for(block.header.prev_hash)
        if tip is None:
            return None  # its parent is not executed here yet; the retransmission will bring it again
        if check_time and self.chain_clock.refuses(block, clock.now_ms()):
            return None  # its time is off (node/clock.py): logged once per block
        try:
            ex: Executed = await self.run(check_block, block, tip, self.chain_id, clock.now_ms(),
                                          self.admission.verified.__contains__, verify_batch, check_time,
                                          self.mempool.by_id.get)
        except InvalidBlock as exc:
            h = block.header
            log.warning("refused block %d from validator %d (view %d): %s", h.height, h.proposer, h.view, exc)
            return None
        for t in ex.txs:
            self.admission.mark_verified(t.id)
        self.add(ex)
        return ex

    # ---- what commits and view changes leave ------------------------------------------------------
    def committed(self, block: Block) -> None:
        """`block` is on the ledger: it leaves, and so do the proposals at or below its height (they lost)."""
        del self.executed[block.hash]
        for h, e in list(self.executed.items()):
            if e.block.header.height <= block.header.height:
                del self.executed[h]  # proposals at or below this height that lost (a view change)
            elif e.block.header.prev_hash == block.hash:
                # its parent is committed: under a pipelined load each block otherwise kept the
                # whole history of executed blocks alive through its parent
                self._read_ledger(e)

    async def new_view(self, view: int, reproposed: tuple[Block, ...]) -> None:
        """Installed `view`: drop the proposals it abandoned (their transactions are free again) and build
        on the blocks it carried over, executing those we have not."""
        keep = {b.hash for b in reproposed}
        head = self.ledger.head().height
        for h, e in list(self.executed.items()):
            if e.block.header.height > head and e.block.header.view < view and h not in keep:
                del self.executed[h]
        self.tip = None
        for b in reproposed:
            ex = self.executed.get(b.hash) or await self.execute(b, check_time=False)
            if ex is None:
                break  # its parent is not here yet: catch-up brings it, and the producer waits
            self.tip = ex.tip()
