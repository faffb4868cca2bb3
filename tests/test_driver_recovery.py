"""A validator restarted after a crash (node/validator.py `_recover`), over real LMDB homes, with the
four validators' consensus tasks driven in one process and their messages routed by hand."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from node.consensus import Broadcast
from node.consensus.messages import T_PREPREPARE
from node.crypto.keys import Identity
from node.genesis import Params, init_home
from node.ipfs.cid import cid_v1_raw
from node.multiaddr import peer_id
from node.tx import DATA_TYPES, Profile, Tx, Write
from node.validator import Validator


class Router:
    """The p2p adapter of four in-process validators: what each sends waits here until `flush`."""

    def __init__(self, vals: list[Validator]) -> None:
        self.vals = vals
        self.queue: list[tuple[int, bytes]] = []  # (to, data)
        self.down: set[int] = set()
        for v in vals:
            self.attach(v)

    def attach(self, v: Validator) -> None:
        self.vals[v.index] = v
        by_peer = {peer_id(info.p2p): j for j, info in enumerate(v.genesis.validators)}
        router = self

        class Net:
            def broadcast(self, data: bytes) -> None:
                router.queue += [(j, data) for j in range(len(router.vals)) if j != v.index]

            def send(self, peer: str, data: bytes) -> None:
                router.queue.append((by_peer[peer], data))

            async def stop(self) -> None:
                pass
        v.net = Net()  # type: ignore[assignment]

    async def flush(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            if not self.queue:
                return
            batch, self.queue = self.queue, []
            for to, data in batch:
                if to not in self.down:
                    v = self.vals[to]
                    await v._handle(await v._on_wire(data))


def test_a_backup_restarted_with_a_bound_block_whose_parent_it_never_recorded_starts_and_commits(
        tmp_path: Path) -> None:
    """A backup holds back its vote for block 1 (a write's blob is not here yet) but votes for block
    2, executed on block 1's executed tip: its consensus log holds a record for 2 and none for 1.
    Killed then, it refused to start on every restart ("does not execute on the ledger", exit 4,
    which a service manager restarts for ever). It starts now, keeps its vote for block 2 bound, and
    commits both blocks once the primary sends block 1 again. (Found by a crash-consistency review.)"""
    homes = init_home(tmp_path, "recovery-test", [f"127.0.0.1:{9000 + i}" for i in range(4)],
                      int(time.time() * 1000), Params(), p2p=[f"127.0.0.1:{9100 + i}" for i in range(4)])
    vals = [Validator(h) for h in homes]
    router = Router(vals)
    try:
        async def go() -> None:
            v0, v1 = vals[0], vals[1]
            t = int(time.time() * 1000)
            pat, other = Identity.from_seed(b"recovery patient"), Identity.from_seed(b"recovery other")
            blob = os.urandom(2000)
            w = Tx.build(pat, v0.chain_id, 1, Write(DATA_TYPES["heart_rate"], cid_v1_raw(blob).to_bytes(), len(blob),
                                                    0, t - 5000, t - 4000))
            q = Tx.build(other, v0.chain_id, 1, Profile("p", "r", "o", bytes(32)))
            assert v0.submit_many_sync([(w.raw, blob), (q.raw, None)]) == [w.id, q.id]  # the sidecar: at v0 only
            pps = []
            for txs, dt in (([w], 0), ([q], 1)):
                ex = await v0.pipeline.build(v0.pipeline.build_tip(), txs, 0, 0, t + dt)
                acts = v0.replica.propose(ex.block)
                await v0._handle(acts)
                pps += [a.msg for a in acts if isinstance(a, Broadcast) and a.msg.tag == T_PREPREPARE]
            a_block, b_block = pps[0].block, pps[1].block
            await v1._handle(v1.replica.on_message(pps[0]))  # executed; its vote waits for the blob
            assert v1.gate.parked() == 1
            await v1._handle(v1.replica.on_message(pps[1]))  # executed on block 1's tip: PREPARE, recorded
            assert [s for s, _ in v1.ledger.log_entries()] == [2] and v1.ledger.head().height == 0

            # killed here (nothing more is written: closing only releases the files), and restarted
            v1.close()
            v1 = Validator(homes[1])
            router.attach(v1)
            await v1._recover()  # before: SystemExit(4)
            assert v1.replica.state.log[2].digest == b_block.hash  # its vote for block 2 still binds it

            # the blob comes (a late forward), the primary sends its pre-prepares again, all talk
            assert v1.submit_many_sync([(w.raw, blob)], forwarded=True)
            for v in vals[2:]:
                v.submit_many_sync([(w.raw, blob)], forwarded=True)
            router.queue += [(j, pp.encode()) for pp in pps for j in (1, 2, 3)]
            await router.flush()
            for v in vals:
                assert v.ledger.head().height == 2, v.index
                assert [v.ledger.block(h).hash for h in (1, 2)] == [a_block.hash, b_block.hash]
        asyncio.run(go())
    finally:
        for v in vals:
            v.close()


def test_close_waits_for_calls_into_the_stores_still_running(tmp_path: Path) -> None:
    """Stop cancels the tasks, but a blocking call one of them handed to a worker thread (a block
    served to a peer, a replication step, the upload collector, adopting a checkpoint's blobs) runs
    on: it must not find the ledger or block store closed under it (LMDB then is undefined; a
    review). close() drains the validator's store executor first."""
    from node.validator import Validator

    (home,) = init_home(tmp_path, "close-drain", ["127.0.0.1:0"], int(time.time() * 1000))
    v = Validator(home)

    def slow_read() -> tuple[int, int]:
        time.sleep(0.3)
        return v.ledger.head().height, v.blobs.count()

    running = v.io.submit(slow_read)
    v.close()
    assert running.result(timeout=5) == (0, 0)
