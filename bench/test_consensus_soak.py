"""Soak: many seeded random fault schedules (crashes, restarts, partitions of up to f replicas) on the
deterministic simulated network of tests/test_consensus.py. Every seed must end with all replicas on
the same certified chain; a failing seed is printed and replays exactly with
`chaos_run(seed)` in tests/consensus_sim.py.

    make bench                                  # 200 seeds, n = 4
    MEDCHAIN_SOAK_SEEDS=2000 MEDCHAIN_SOAK_N=7 make bench
"""

from __future__ import annotations

import os

from tests.consensus_sim import chaos_run

SEEDS = int(os.environ.get("MEDCHAIN_SOAK_SEEDS", "200"))
N = int(os.environ.get("MEDCHAIN_SOAK_N", "4"))


def test_chaos_soak(benchmark):
    def soak():
        views = 0
        for seed in range(SEEDS):
            try:
                net = chaos_run(100_000 + seed, n=N)
            except AssertionError as exc:
                raise AssertionError(f"seed {100_000 + seed} (n={N}) diverged: {exc}") from None
            views += max(r.view for r in net.replicas)
        return views

    views = benchmark.pedantic(soak, rounds=1, iterations=1)
    benchmark.extra_info.update({"seeds": SEEDS, "n": N, "views_entered": views})
    print(f"\nsoak: {SEEDS} seeded fault schedules (n={N}) converged; {views} view changes in all")
