"""What the censorship watch (node/consensus/censor.py) adds to a backup: per delivered block, a
lookup of the watched transaction in the block (and, when it is missing, the block's bytes); per
tick (every 50 ms), the pool's first waiting head. Both against the per-transaction floor of the
same machine (../shared/bench/floor.py), printed in the run.

    .venv/bin/python -m pytest -q -p no:cacheprovider bench/test_bench_censor.py -s \\
        --benchmark-only --benchmark-columns=mean,median,rounds
"""

from __future__ import annotations

import os

import pytest

from devices.load.floor import floor_line, measure_floor
from node.consensus.censor import CensorWatch
from node.crypto.keys import Identity
from node.mempool import Mempool
from node.tx import Profile, Tx
from tests.consensus_sim import make_block

# a full block of 2,000 writes of ~250 bytes, and a watched transaction of the same size it lacks
_BLOCK = make_block(1, txs=[os.urandom(250) for _ in range(2000)])
_TARGET = os.urandom(250)


@pytest.mark.parametrize("present", [False, True], ids=["left-out", "included"])
def test_watch_per_delivered_block_of_2000(benchmark, present: bool) -> None:
    block = make_block(1, txs=list(_BLOCK.txs[:-1]) + [_TARGET]) if present else _BLOCK
    w = CensorWatch(4000, grace_ms=0)

    def one() -> None:
        w.target, w.horizon, w.view, w.skipped = _TARGET, 0, 0, 0
        w.delivered(1, block, 0)

    benchmark(one)
    per_tx = benchmark.stats.stats.mean / len(block.txs)
    floor = measure_floor(5000)
    ratio = f" ({per_tx * 1e6 / floor:.4f}x the floor)" if floor else ""
    print(f"\ncensor watch, block of {len(block.txs)} ({'included' if present else 'left out'}): "
          f"{benchmark.stats.stats.mean * 1e6:.1f} us a block, {per_tx * 1e9:.0f} ns a transaction{ratio}; "
          f"{floor_line(floor)}")


def test_watch_candidate_per_tick(benchmark) -> None:
    pool = Mempool()
    for k in range(2000):
        ident = Identity.from_seed(b"censor bench %d" % k)
        pool.admit(Tx.build(ident, "c", 1, Profile("p", "r", "o", bytes(32))), 0, 0.0, forwarded=True)
    got = benchmark(lambda: next(pool.waiting_heads(), None))
    assert got is not None
