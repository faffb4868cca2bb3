"""GET /v1/tx's committed answer and the long polls (node/commit.py), over a real LMDB ledger,
without the network: inclusion proofs from a bounded cache of the newest blocks' transaction trees,
and waiters that are woken, time out or are cancelled without leaving anything behind."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from node import clock, commit, merkle
from node.crypto.keys import Identity
from node.genesis import Params, init_home
from node.tx import Profile, Tx
from node.validator import Validator


def _profiles(chain: str, height: int, n: int) -> list[Tx]:
    out = []
    for j in range(n):
        ident = Identity.from_seed(f"staff {height} {j}".encode())
        out.append(Tx.build(ident, chain, 1, Profile(f"S{height}.{j}", "nurse", "Ward", ident.box_public)))
    return out


def _validator(tmp_path: Path) -> Validator:
    home = init_home(tmp_path, "status-test", ["127.0.0.1:9000"], int(time.time() * 1000), Params(),
                     p2p=["127.0.0.1:9100"])[0]
    return Validator(home)


async def _commit(v: Validator, txs: list[Tx]) -> None:
    ex = await v.pipeline.build(v.pipeline.build_tip(), txs, 0, 0, clock.now_ms())
    await v.committer.commit(ex.block, ex)
    v.pipeline.committed(ex.block)


@pytest.mark.parametrize("recent_bytes", [commit.RECENT_BYTES, 3000])
def test_committed_status_proves_inclusion_from_a_bounded_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               recent_bytes: int) -> None:
    """Every committed transaction's status carries a path that verifies against its block's tx_root,
    whether the block is one of the newest (kept with its tree) or an older one read from the ledger;
    the cache keeps at most RECENT_BLOCKS blocks and, beyond the newest, RECENT_BYTES, and a poll of
    an old transaction does not push a newer block out."""
    monkeypatch.setattr(commit, "RECENT_BYTES", recent_bytes)
    v = _validator(tmp_path)
    blocks = commit.RECENT_BLOCKS + 4
    sent: list[Tx] = []
    try:
        async def go() -> None:
            for height in range(1, blocks + 1):
                txs = _profiles(v.genesis.chain_id, height, 1 + height % 5)  # odd and even tree sizes
                await _commit(v, txs)
                sent.extend(txs)
        asyncio.run(go())
        recent = v.committer._recent
        kept = sorted(recent)
        assert len(recent) <= commit.RECENT_BLOCKS and kept[-1] == blocks
        assert sum(size for _, _, size in recent.values()) <= recent_bytes or len(recent) == 1
        for tx in sent:
            st = v.tx_status(tx.id)
            block = v.ledger.block(st["height"])
            assert st["status"] == "committed" and st["block_hash"] == block.hash.hex()
            assert st["tx_count"] == len(block.txs) and block.txs[st["index"]] == tx.raw
            assert merkle.verify(tx.id, st["index"], st["tx_count"], [bytes.fromhex(p) for p in st["proof"]],
                                 block.header.tx_root)
            assert v.committer.block_at(st["height"]).hash == block.hash
        if len(kept) == commit.RECENT_BLOCKS:  # full: the polls of older blocks kept none of them
            assert sorted(recent) == kept
        assert v.tx_status(bytes(32)) == {"status": "unknown"}
    finally:
        v.close()


def test_block_waiters_are_woken_time_out_or_are_cancelled_and_leave_nothing(tmp_path: Path) -> None:
    v = _validator(tmp_path)
    c = v.committer
    try:
        async def go() -> None:
            assert await c.wait_height(0, 5)  # the genesis head: at once
            assert not await c.wait_height(commit.WAIT_AHEAD + 1, 5)  # too far ahead: at once, no waiter
            assert c._height_waiters == {}
            assert not await c.wait_height(1, 0.05)  # nothing commits: timed out
            first = asyncio.create_task(c.wait_height(1, 10))
            second = asyncio.create_task(c.wait_height(2, 10))
            gone = asyncio.create_task(c.wait_height(2, 10))
            await asyncio.sleep(0.01)
            assert sorted(c._height_waiters) == [1, 2]
            gone.cancel()  # a client that hung up
            await asyncio.gather(gone, return_exceptions=True)
            await _commit(v, _profiles(v.genesis.chain_id, 1, 2))
            assert await first and not second.done()
            c.wake_heights(5)  # an install past 2: every waiter up to it answers
            assert await asyncio.wait_for(second, 5)  # woken (not at its 10 s timeout)...
            assert v.ledger.block_raw(2) is None  # ...and block 2 is not here: the route answers 404
            assert c._height_waiters == {} and c._waiters == {}
            tx = _profiles(v.genesis.chain_id, 9, 1)[0]
            assert not await c.wait_committed(tx.id, 0.05)
            waiter = asyncio.create_task(c.wait_committed(tx.id, 10))
            await asyncio.sleep(0.01)
            await _commit(v, [tx])
            assert await waiter and c._waiters == {} and c._height_waiters == {}
        asyncio.run(go())
    finally:
        v.close()
