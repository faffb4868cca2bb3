"""CPU per transaction on one validator, stage by stage, in one process: where a write's cost goes.

    .venv/bin/python bench/write_path.py [N] [BLOCK]

No network and no other process: the CPU time of each stage over N transactions (data writes with
their 200-byte ciphertext as sidecar, and profile updates for comparison), from 100 senders:
  admit    the entry validator's admission (decode, sidecar hash, batch signature check, state
           checks, mempool), batches of 500 as POST /v1/txs brings them;
  execute  building the block (apply every transaction on the state, state root), blocks of BLOCK
           transactions (2000 unless given: a loaded network's blocks are smaller, and a write
           in a smaller block costs the state tree more);
  commit   the block's LMDB commit and, for writes, its blobs (one synced transaction each).
Printed as microseconds per transaction and as a ratio to the per-transaction floor
(../shared/bench/floor.py), measured in the same run. CPU time (time.process_time) is what is
measured, so another job on the machine slows the run but moves the figures less than wall time.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from devices.load.floor import floor_line, measure_floor
from node import clock
from node.crypto.keys import Identity
from node.execution import build_block
from node.genesis import Params, init_home
from node.ipfs.cid import cid_v1_raw
from node.tx import Profile, Tx, Write
from node.validator import Validator

SENDERS = 100


def _txs(chain: str, n: int, kind: str) -> list[tuple[bytes, bytes | None]]:
    per = n // SENDERS
    now = int(time.time() * 1000)
    out: list[tuple[bytes, bytes | None]] = []
    for _ in range(SENDERS):
        ident = Identity.from_seed(os.urandom(16))
        if kind == "profile":
            bodies, blobs = [Profile("p", "r", "o", bytes(32))] * per, [None] * per
        else:
            blobs = [os.urandom(200) for _ in range(per)]
            bodies = [Write(1, cid_v1_raw(b).to_bytes(), len(b), 0, now + k * 1000, now + k * 1000 + 999)
                      for k, b in enumerate(blobs)]
        out += [(t.raw, b) for t, b in zip(Tx.build_batch(ident, chain, 1, bodies), blobs, strict=True)]
    # interleave senders as a phone proxy's batches would mix them, each sender's nonces in order
    return [out[s * per + k] for k in range(per) for s in range(SENDERS)]


def run(kind: str, n: int, block: int = 2000) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="medchain-writepath-") as d:
        (home,) = init_home(Path(d), "medchain-bench", ["127.0.0.1:1"], int(time.time() * 1000),
                            Params(sender_rate=1e9, sender_burst=1e9, mempool_capacity=10 * n))
        v = Validator(home)
        v.backlog.floor = v.backlog.cap  # the whole load is admitted before a block is built (node/backlog.py)
        try:
            items = _txs(v.chain_id, n, kind)
            cpu: dict[str, float] = {}
            t0 = time.process_time()
            for k in range(0, n, 500):
                res = v.submit_many_sync(items[k:k + 500])
                bad = [r for r in res if not isinstance(r, bytes)]
                assert not bad, bad[:3]
            cpu["admit"] = time.process_time() - t0
            cpu["execute"] = cpu["commit"] = 0.0
            while len(v.mempool):
                t0 = time.process_time()
                ex = build_block(v.pipeline.head_tip(), v.mempool.batch(block), v.chain_id, 0, 0, clock.now_ms())
                t1 = time.process_time()
                roots, sidecars = v.committer.blobs_of(ex)
                v.committer.write(ex.block, ex, sidecars, roots)
                v.mempool.remove(ex.txs)
                t2 = time.process_time()
                cpu["execute"] += t1 - t0
                cpu["commit"] += t2 - t1
            return {k: s / n * 1e6 for k, s in cpu.items()}
        finally:
            v.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    block = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    if n < 1 or block < 1:
        raise SystemExit("usage: write_path.py [N >= 1] [BLOCK >= 1]")
    floor = measure_floor()
    print(floor_line(floor))
    for kind in ("write", "profile"):
        us = run(kind, n, block)
        total = sum(us.values())
        parts = "  ".join(f"{k} {v:.1f}" for k, v in us.items())
        ratio = f" = {total / floor:.2f}x the floor" if floor else ""
        print(f"{kind:8s} blocks of {block}, us CPU per tx: {parts}  total {total:.1f}{ratio}")


if __name__ == "__main__":
    main()
