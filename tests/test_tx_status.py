"""GET /v1/tx's committed answer (node/commit.py): inclusion proofs from a bounded cache of the
newest blocks' transaction trees, over a real LMDB ledger, without the network."""

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


@pytest.mark.parametrize("recent_txs", [commit.RECENT_TXS, 10])
def test_committed_status_proves_inclusion_from_a_bounded_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               recent_txs: int) -> None:
    """Every committed transaction's status carries a path that verifies against its block's tx_root,
    whether the block is one of the newest (kept with its tree) or an older one read from the ledger;
    the cache keeps at most RECENT_BLOCKS blocks and, beyond the newest, RECENT_TXS transactions."""
    monkeypatch.setattr(commit, "RECENT_TXS", recent_txs)
    home = init_home(tmp_path, "status-test", ["127.0.0.1:9000"], int(time.time() * 1000), Params(),
                     p2p=["127.0.0.1:9100"])[0]
    v = Validator(home)
    blocks = commit.RECENT_BLOCKS + 4
    sent: list[Tx] = []
    try:
        async def go() -> None:
            for height in range(1, blocks + 1):
                txs = _profiles(v.genesis.chain_id, height, 1 + height % 5)  # odd and even tree sizes
                ex = await v.pipeline.build(v.pipeline.build_tip(), txs, 0, 0, clock.now_ms())
                await v.committer.commit(ex.block, ex)
                v.pipeline.committed(ex.block)
                sent.extend(txs)
        asyncio.run(go())
        recent = v.committer._recent
        assert len(recent) <= commit.RECENT_BLOCKS and max(recent) == blocks
        assert sum(t.size for _, t in recent.values()) <= recent_txs or len(recent) == 1
        for tx in sent:
            st = v.tx_status(tx.id)
            block = v.ledger.block(st["height"])
            assert st["status"] == "committed" and st["block_hash"] == block.hash.hex()
            assert st["tx_count"] == len(block.txs) and block.txs[st["index"]] == tx.raw
            assert merkle.verify(tx.id, st["index"], st["tx_count"], [bytes.fromhex(p) for p in st["proof"]],
                                 block.header.tx_root)
        assert len(v.committer._recent) <= commit.RECENT_BLOCKS
        assert v.tx_status(bytes(32)) == {"status": "unknown"}
    finally:
        v.pipeline.close()
        v.admission.close()
        v.ledger.close()
        v.blobs.close()
