"""The state commitment's cost per transaction per validator with 1,000,000 keys in state.

A real LMDB ledger is filled with MEDCHAIN_BENCH_KEYS (default 1,000,000) state keys and their
tree nodes; then blocks of 1000 profile-update-like transactions (3 writes each: an existing
account's nonce, a new profile, a new receipt, as the state machine writes them) are committed to
the tree: `smt.update` over the ledger's node reader (what execution adds per block), and the
dirty nodes written in a write transaction (what commit_block adds). CPU time per transaction is
printed beside the per-transaction floor of `/work/shared/bench/floor.py`, run in the same session.

Measured here (1M keys, 1000-tx blocks): the native update ~13 us/tx, of which ~8 us are LMDB reads
of ~6.5 tree nodes per transaction (~1.3 us each, random pages), the rest SHA-256 of ~7.4 dirty
nodes and building their records; writing and committing the dirty nodes ~18 us/tx, ~4 us per
random LMDB page touched (~4.5 per transaction), beside ~12 us/tx for the state writes themselves.

    .venv/bin/python -m pytest -q -p no:cacheprovider bench/test_bench_state_commitment.py \
        --benchmark-only --benchmark-columns=mean,median,rounds -s
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.ledger import Ledger
from node.state import smt

N_KEYS = int(os.environ.get("MEDCHAIN_BENCH_KEYS", "1000000"))
BLOCK_TXS = int(os.environ.get("MEDCHAIN_BENCH_BLOCK", "1000"))  # transactions per block
FLOOR = Path("/work/shared/bench/floor.py")
REPORT: dict[str, float] = {}


def _block(rnd: list[bytes], i: int) -> dict[bytes, bytes]:
    """One block's writes: per tx an existing account's nonce, a new profile and a new receipt."""
    w: dict[bytes, bytes] = {}
    for t in range(BLOCK_TXS):
        acct = rnd[(i * BLOCK_TXS + t) * 7919 % len(rnd)]
        w[b"n" + acct] = (i % 50_000 + t).to_bytes(4, "big")
        w[b"p" + os.urandom(32)] = os.urandom(120)
        w[b"r" + os.urandom(32)] = os.urandom(12)
    return w


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    led = Ledger(tmp_path_factory.mktemp("smt-bench") / "ledger")
    accts = [os.urandom(32) for _ in range(N_KEYS // 2)]
    t0 = time.monotonic()
    chunk = 100_000
    keys_ = [b"n" + a for a in accts] + [b"p" + a for a in accts]
    for i in range(0, len(keys_), chunk):
        w = {k: os.urandom(40) for k in keys_[i:i + chunk]}
        _, nodes = smt.update(led.get_node, w)
        with led.env.begin(write=True) as txn:  # bench set-up only: state and nodes without blocks
            for k, v in w.items():
                txn.put(k, v, db=led.state)
            for k, v in nodes.items():
                txn.put(k, v, db=led.tree)
        led.invalidate_reads()  # as commit_block does: the cached node reader must see the new nodes
    print(f"\nset-up: {len(keys_):,} keys in state, tree built and stored in {time.monotonic() - t0:.1f} s")
    yield led, accts
    led.close()


def _commit(led: Ledger, w: dict[bytes, bytes], nodes: dict[bytes, bytes]) -> float:
    """CPU seconds to put and commit (synced) the state writes and `nodes`."""
    t0 = time.process_time()
    with led.env.begin(write=True) as txn:
        for k, v in w.items():
            txn.put(k, v, db=led.state)
        for k, v in nodes.items():
            txn.put(k, v, db=led.tree)
    led.invalidate_reads()
    return time.process_time() - t0


def _measure(led: Ledger, accts: list[bytes], update, blocks: int) -> tuple[float, float]:
    """CPU seconds per transaction: (tree update, writing and committing its dirty nodes), the
    latter as the extra commit cost over alternate blocks committed without tree nodes."""
    upd = with_nodes = without = 0.0
    for i in range(2 * blocks):
        w = _block(accts, 1000 + i)
        t0 = time.process_time()
        _root, nodes = update(led.get_node, w)
        upd += time.process_time() - t0
        if i % 2:
            with_nodes += _commit(led, w, nodes)
        else:  # reference: a like block's state writes alone (its nodes are committed apart, untimed)
            without += _commit(led, w, {})
            _commit(led, {}, nodes)
    REPORT.setdefault("(reference) state writes+commit, no tree", without / (blocks * BLOCK_TXS))
    return upd / (2 * blocks * BLOCK_TXS), (with_nodes - without) / (blocks * BLOCK_TXS)


def test_state_commitment_per_tx(benchmark, ledger):
    led, accts = ledger
    counter = iter(range(10**6))

    def one_block():
        w = _block(accts, next(counter))
        return smt.update(led.get_node, w)

    benchmark.group = f"state commitment, {BLOCK_TXS}-tx block"
    benchmark.extra_info["keys_in_state"] = N_KEYS
    benchmark.pedantic(one_block, rounds=5, iterations=1, warmup_rounds=1)
    upd, put = _measure(led, accts, smt.update, 5)
    REPORT[f"{smt.BACKEND} update"] = upd
    REPORT[f"{smt.BACKEND} node writes+commit"] = put
    if smt.update_native is not None:
        REPORT["python fallback update"] = _measure(led, accts, smt.update_py, 2)[0]
    _report()


def _report() -> None:
    floor = subprocess.run([sys.executable, str(FLOOR)], capture_output=True, text=True, timeout=600) \
        if FLOOR.exists() else None
    print(f"\nstate commitment, {N_KEYS:,} keys in state, {BLOCK_TXS}-tx blocks, 3 writes per tx "
          "(CPU us per transaction, one core):")
    for k, v in REPORT.items():
        print(f"  {k:40} {v * 1e6:7.2f} us/tx")
    if REPORT:
        total = sum(v for k, v in REPORT.items() if not k.startswith(("python fallback", "(reference)")))
        print(f"  {'commitment total (update + node writes)':40} {total * 1e6:7.2f} us/tx  (goal <= 10)")
    print("per-transaction floor (/work/shared/bench/floor.py): "
          + (floor.stdout.strip() if floor is not None else "floor.py not found"))
