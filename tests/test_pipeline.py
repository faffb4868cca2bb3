"""The pipeline stage over a real LMDB ledger: what a chain of executed, uncommitted blocks keeps alive."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

from node import clock
from node.block import TXS_MAX_BYTES
from node.crypto.keys import Identity
from node.execution import Executed
from node.ledger import Ledger
from node.pipeline import FILL, Pipeline, propose_now
from node.tx import Profile, Tx

CHAIN = "pipeline-test"
DEPTH = 3  # blocks in flight, as the primary pipelines them
BLOCKS = 40


def _profiles(height: int) -> list[Tx]:
    """A few staff profiles: each writes state, so each block has dirty tree nodes."""
    out = []
    for j in range(3):
        ident = Identity.from_seed(f"staff {height} {j}".encode())
        out.append(Tx.build(ident, CHAIN, 1, Profile(f"S{height}.{j}", "nurse", "Ward", ident.box_public)))
    return out


def test_a_pipelined_chain_keeps_only_the_blocks_in_flight(tmp_path: Path) -> None:
    """The primary builds each block on its newest (uncommitted) proposal and the commit stage writes
    them DEPTH behind. Once a block is committed its writes and tree nodes must be read from the
    ledger, not through a chain of parents reaching back to the first block: that chain held every
    block's dirty nodes in memory (80 MB after a minute of writes) and made each tree read walk it."""
    led = Ledger(tmp_path / "ledger", genesis_root=bytes(32))
    pipe = Pipeline(CHAIN, led, None, None, clock.ChainClock(clock.now_ms()))  # type: ignore[arg-type]  # build only
    built: list[Executed] = []
    first: list[weakref.ref[Executed]] = []

    async def run() -> None:
        for height in range(1, BLOCKS + 1):
            ex = await pipe.build(pipe.build_tip(), _profiles(height), 0, 0, clock.now_ms())
            assert ex.block.header.height == height  # on the newest proposal, not on the head
            built.append(ex)
            if height > DEPTH:
                old = built.pop(0)
                led.commit_block(old.block, old.writes, old.nodes)
                pipe.committed(old.block)
                old.nodes[b"\xffsentinel"] = b"only in a committed block's memory"
                if len(first) < 5:
                    first.append(weakref.ref(old))
                del old
    try:
        asyncio.run(run())
    finally:
        pipe.close()
    gc.collect()
    assert len(pipe.executed) == DEPTH
    assert [r() for r in first] == [None] * len(first), "committed blocks are still reachable"
    tip = pipe.build_tip()
    assert tip.height == BLOCKS
    # a tree read at the newest tip misses through the blocks in flight to the ledger, never into a
    # committed block's memory
    assert tip.tree(b"\xffsentinel") is None
    # and what those blocks wrote is read from the ledger
    for ex in built:
        led.commit_block(ex.block, ex.writes, ex.nodes)
    assert led.head().height == BLOCKS
    for key, value in built[0].writes.items():
        assert led.get_state(key) == value


def test_a_block_whose_parent_commits_while_it_executes_reads_through_the_ledger(tmp_path: Path) -> None:
    """The producer takes its tip, then waits for a batch to fill; the tip's block may commit meanwhile,
    so the cut in `committed` finds no child to re-point. The child, built on that tip, must still read
    through the ledger, or each block keeps its parent alive, and the newest block all before it: one
    validator on one core held 100 executed blocks, 500 MB, at 2,400 writes/s."""
    led = Ledger(tmp_path / "ledger", genesis_root=bytes(32))
    pipe = Pipeline(CHAIN, led, None, None, clock.ChainClock(clock.now_ms()))  # type: ignore[arg-type]  # build only
    blocks: list[weakref.ref[Executed]] = []

    async def run() -> None:
        prev = await pipe.build(pipe.build_tip(), _profiles(0), 0, 0, clock.now_ms())
        for height in range(2, BLOCKS + 1):
            tip = pipe.build_tip()  # the producer holds this tip while the batch fills
            assert tip.hash == prev.block.hash
            led.commit_block(prev.block, prev.writes, prev.nodes)
            pipe.committed(prev.block)  # no child yet: nothing to cut
            blocks.append(weakref.ref(prev))
            prev = await pipe.build(tip, _profiles(height), 0, 0, clock.now_ms())
            assert prev.block.header.height == height
            del tip
    try:
        asyncio.run(run())
    finally:
        pipe.close()
    gc.collect()
    assert len(pipe.executed) == 1  # the newest, not committed
    assert [r() for r in blocks] == [None] * len(blocks), "committed blocks are still reachable"


def test_a_further_block_waits_for_a_quarter_of_a_full_one() -> None:
    """With none in flight the primary proposes whatever waits; with blocks in flight, a further one
    only once FILL of a full block waits (at light load one block per round, not a block of a few
    transactions every batch interval), and never more than the pipeline depth."""
    assert FILL == 4
    assert not propose_now(0, 0, 2000, 4)
    assert propose_now(0, 1, 2000, 4)
    assert not propose_now(1, 499, 2000, 4)
    assert propose_now(1, 500, 2000, 4)
    assert propose_now(3, 2000, 2000, 4)
    assert not propose_now(4, 10_000, 2000, 4)  # the depth bounds a heavy load
    assert propose_now(1, 1, 3, 4)  # a tiny block size still lets one transaction through


def test_a_block_fills_by_bytes_as_well_as_by_count():
    """Large grants (~8.7 KB) fill the byte budget at ~950 transactions: with a block in flight a
    further one goes once a quarter of the byte budget waits, however few transactions that is."""
    assert not propose_now(1, 100, 2000, 4, 1000 - 1, 4000)
    assert propose_now(1, 100, 2000, 4, 1000, 4000)
    assert not propose_now(4, 100, 2000, 4, 10**9, 4000)  # the depth still bounds it
    assert propose_now(1, 100, 2000, 4, TXS_MAX_BYTES // FILL)  # the block budget by default
    assert not propose_now(1, 100, 2000, 4, TXS_MAX_BYTES // FILL - 1)


def test_in_flight_txs_counts_the_transactions_of_executed_blocks_and_their_bytes(tmp_path: Path) -> None:
    """The producer's count of transactions already proposed (what `propose_now` subtracts from the pool)."""
    led = Ledger(tmp_path / "ledger", genesis_root=bytes(32))
    pipe = Pipeline(CHAIN, led, None, None, clock.ChainClock(clock.now_ms()))  # type: ignore[arg-type]  # build only

    async def run() -> None:
        assert pipe.in_flight_txs() == 0 and pipe.in_flight_bytes() == 0
        a, b = _profiles(1), _profiles(2)[:2]
        first = await pipe.build(pipe.build_tip(), a, 0, 0, clock.now_ms())
        await pipe.build(pipe.build_tip(), b, 0, 0, clock.now_ms())
        assert pipe.in_flight_txs() == 5
        assert pipe.in_flight_bytes() == sum(len(t.raw) for t in a + b)
        led.commit_block(first.block, first.writes, first.nodes)
        pipe.committed(first.block)
        assert pipe.in_flight_txs() == 2 and pipe.in_flight_bytes() == sum(len(t.raw) for t in b)
    try:
        asyncio.run(run())
    finally:
        pipe.close()
