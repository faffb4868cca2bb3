"""A block never outgrows what every replica will decode (MAX_BLOCK_BYTES).

`block_max_txs` counts transactions, but a transaction may be up to MAX_TX_BYTES: 2,000 grants of
64 sealed keys each are 17 MB, twice the size any validator decodes. A primary that proposed such a
block had it refused by every replica; the next primary held the same pool and did the same, and
the chain stopped for good. A few registered patients with a burst of large grants each could do it.
Here: the primary's production in process on a full pool (deterministic), a block at the budget
with a large certificate, and the whole path on a real devnet. The batch's byte budget itself is
tested in tests/test_mempool_limits.py, a replica's refusal of a larger proposal in
tests/test_replica_edges.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from devices.patient.client import NodeClient
from node.block import TXS_MAX_BYTES, Block, Header, txs_bytes
from node.crypto.keys import Identity
from node.genesis import Params, init_home
from node.tx import Profile, Tx
from node.validator import Validator
from node.wire import MAX_BLOCK_BYTES, MAX_TX_BYTES
from tests.conftest import run, running_network
from tests.large_txs import big_grants

CHAIN = "medchain-test"
PATIENTS = 5
GRANTS = 390  # each patient's burst of large grants (its per-sender burst is 400)


async def register_patients(c: NodeClient, tag: bytes) -> list[list[Tx]]:
    """A staff member and PATIENTS patients registered (committed); each patient's GRANTS largest
    grants to the staff member, signed and not sent."""
    staff = Identity.from_seed(b"staff-" + tag)
    patients = [Identity.from_seed(b"patient-%s-%d" % (tag, i)) for i in range(PATIENTS)]
    chain = (await c.status())["chain_id"]
    profiles = [Tx.build(staff, chain, 1, Profile("s", "nurse", "org", staff.box_public))]
    profiles += [Tx.build(p, chain, 1, Profile(f"p{i}", "patient", "", p.box_public)) for i, p in enumerate(patients)]
    assert all(r["status"] == 202 for r in await c.submit_many([t.raw for t in profiles]))
    for t in profiles:
        assert (await c.wait_committed(t.id.hex(), 30))["status"] == "committed"
    return [big_grants(p, staff.address, chain, 2, GRANTS) for p in patients]


def test_the_primary_proposes_at_most_the_byte_budget_from_a_pool_of_large_grants(tmp_path: Path) -> None:
    """The primary's block production, in process on a real ledger, with 1,950 of the largest grants
    (17 MB) pending: the block it proposes holds as many as the byte budget takes, and no more.
    Before the budget it took 2,000 transactions by count, 17 MB, which no replica decodes."""
    homes = init_home(tmp_path, "bytes-test", [f"127.0.0.1:{9000 + i}" for i in range(4)],
                      int(time.time() * 1000), Params(), p2p=[f"127.0.0.1:{9100 + i}" for i in range(4)])
    v = Validator(homes[0])  # validator 0: the primary of view 0
    try:
        staff = Identity.from_seed(b"staff-big").address
        for i in range(PATIENTS):  # straight into the pool: this is about what the primary builds from it
            for t in big_grants(Identity.from_seed(b"patient-%d" % i), staff, v.chain_id, 1, GRANTS):
                v.mempool.admit(t, 0, 0.0, forwarded=True)
        assert len(v.mempool) == PATIENTS * GRANTS

        async def first_proposal() -> Block:
            task = asyncio.create_task(v._produce())
            try:
                kind, block = await asyncio.wait_for(v._inbox.get(), 60)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            assert kind == "propose"
            return block

        block = asyncio.run(first_proposal())
        used = txs_bytes(block.txs)
        assert TXS_MAX_BYTES - MAX_TX_BYTES < used <= TXS_MAX_BYTES  # full to the budget
        assert len(block.txs) < 2000 and len(block.encode()) <= MAX_BLOCK_BYTES
        assert Block.decode(block.encode()).hash == block.hash  # what every replica does first
    finally:
        v.close()


def test_a_block_at_the_budget_with_a_hundred_votes_decodes() -> None:
    """The 64 KiB left beside the budget holds the header and a certificate: a block of 16 KiB
    transactions filled to the budget, with a 100-validator certificate, is still one every node
    decodes."""
    tx = bytes(MAX_TX_BYTES)
    n = TXS_MAX_BYTES // (len(tx) + 5)
    txs = (tx,) * n + (bytes(TXS_MAX_BYTES - txs_bytes((tx,) * n) - 5),)
    assert txs_bytes(txs) == TXS_MAX_BYTES
    h = Header("c" * 32, 2**40, bytes(32), 2**40, 2**40, 2**60, bytes(32), bytes(32), 99)
    b = Block(h, txs).with_cert([(i, bytes([i]) * 64) for i in range(100)], 2**40)
    raw = b.encode()
    assert len(raw) <= MAX_BLOCK_BYTES and Block.decode(raw) == b


def test_a_pool_of_large_grants_commits_in_blocks_every_replica_decodes(tmp_path):
    """Five patients' bursts of the largest grants (17 MB) on a real 4-validator devnet: every one
    commits, in blocks each at most MAX_BLOCK_BYTES."""

    async def go(urls: list[str]) -> None:
        async with NodeClient(urls[0]) as c0:
            grants = await register_patients(c0, b"big")
            head0 = (await c0.status())["height"]
            assert sum(len(t.raw) for g in grants for t in g) > 2 * MAX_BLOCK_BYTES

            async def submit(i: int, txs: list[Tx]) -> None:  # each patient to its own validator
                async with NodeClient(urls[i % len(urls)]) as c:
                    for k in range(0, len(txs), 50):
                        res = await c.submit_many([t.raw for t in txs[k:k + 50]])
                        assert all(r["status"] == 202 for r in res), res

            await asyncio.gather(*(submit(i, g) for i, g in enumerate(grants)))
            last = [g[-1] for g in grants]
            deadline = time.monotonic() + 90
            for t in last:
                st = await c0.wait_committed(t.id.hex(), max(1.0, deadline - time.monotonic()))
                assert st["status"] == "committed", f"the chain stopped: {st}"
            head = (await c0.status())["height"]
            for h in range(head0 + 1, head + 1):
                assert len(await c0.block_raw(h)) <= MAX_BLOCK_BYTES
        for url in urls[1:]:  # every validator executed the same chain
            async with NodeClient(url) as c:
                for t in last:
                    assert (await c.wait_committed(t.id.hex(), 30))["status"] == "committed"

    with running_network(tmp_path, 4, block_interval_ms=3000) as nodes:
        run(go([n.url for n in nodes]))


def test_a_pool_at_its_byte_bound_answers_503_with_retry_after_and_loses_nothing(tmp_path):
    """A validator with the smallest pool an operator may set (limits.mempool_mb = 9) takes bursts
    of the largest grants (17 MB in all) faster than blocks (one per 3 s) take them: what does not
    fit is refused with 503 and a Retry-After, never held beyond the bound; sent again when told,
    every grant commits."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    from devices.net.localnet import make_network, start_all

    async def pool_bytes(url: str) -> float:
        async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as resp:
            text = await resp.text()
        return next(f.samples[0].value for f in text_string_to_metric_families(text)
                    if f.name == "medchain_mempool_bytes")

    (node,) = make_network(tmp_path, 1, params=Params(sender_rate=1e5, sender_burst=1e5, client_rate=1e5, client_tx_rate=1e5,
                                                   client_burst=1e5, client_tx_burst=1e5, block_interval_ms=3000,
                                                   client_mempool_share=1.0))  # the whole bound, to one client
    node.env["MEDCHAIN_MEMPOOL_MB"] = "9"

    async def go(url: str) -> None:
        async with NodeClient(url) as c:
            grants = await register_patients(c, b"pool")
            left = [list(g) for g in grants]  # each patient's grants not yet taken, in nonce order
            refusals, peak = [], 0
            deadline = time.monotonic() + 120
            while any(left) and time.monotonic() < deadline:
                wait = 0.0
                for q in left:
                    if not q:
                        continue
                    res = await c.submit_many([t.raw for t in q[:50]])
                    took = 0
                    for r in res:
                        if r["status"] != 202:
                            break
                        took += 1
                    del q[:took]
                    for r in res[took:took + 1]:  # the first refused: the rest wait behind its nonce
                        assert r["status"] in (429, 503), r  # only ever "not now"
                        refusals.append(r)
                        wait = max(wait, r.get("retry_after", 0))
                peak = max(peak, await pool_bytes(url))
                if wait:
                    await asyncio.sleep(wait)
            assert not any(left), f"not all taken in 120 s: {sum(map(len, left))} left"
            full = [r for r in refusals if r["status"] == 503 and "bytes of transactions pending" in r["error"]]
            assert full, refusals[:3]  # the bound was met, and said so
            assert all(r.get("retry_after", 0) >= 1 for r in full)
            assert 8 * 2**20 < peak <= 9 * 2**20, peak  # filled to its bound, never past it
            for g in grants:
                assert (await c.wait_committed(g[-1].id.hex(), 90))["status"] == "committed"

    start_all([node])
    try:
        run(go(node.url))
    finally:
        node.stop()
    assert "Traceback" not in node.log_tail(200_000), node.log_tail()
