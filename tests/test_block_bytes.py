"""A block never outgrows what every replica will decode (MAX_BLOCK_BYTES).

`block_max_txs` counts transactions, but a transaction may be up to MAX_TX_BYTES: 2,000 grants of
64 sealed keys each are 17 MB, twice the size any validator decodes. A primary that proposed such a
block had it refused by every replica; the next primary held the same pool and did the same, and
the chain stopped for good. A few registered patients with a burst of large grants each could do it.
"""

from __future__ import annotations

import asyncio
import time

from devices.patient.client import NodeClient
from node.block import TX_FRAMING, TXS_MAX_BYTES
from node.crypto.keys import Identity
from node.mempool import Mempool
from node.tx import Grant, Profile, Tx
from node.tx.model import MAX_KEYS_PER_GRANT, MAX_SEALED, SealedKey
from node.wire import MAX_BLOCK_BYTES
from tests.conftest import run, running_network

CHAIN = "medchain-test"
PATIENTS = 5
GRANTS = 390  # each patient's burst of large grants (its per-sender burst is 400)


def _big_grants(patient: Identity, staff: bytes, chain: str, first_nonce: int, n: int) -> list[Tx]:
    """Grants of the largest size a transaction of this kind can take (~8.7 KB each)."""
    keys = tuple(SealedKey(1, 0, bytes([k]) * MAX_SEALED) for k in range(MAX_KEYS_PER_GRANT))
    return Tx.build_batch(patient, chain, first_nonce, [Grant(staff, (1,), 0, keys)] * n)


def test_a_batch_stops_at_the_block_byte_budget():
    staff = Identity.from_seed(b"staff").address
    pool = Mempool(capacity=10_000, rate=1e6, burst=1e6)
    txs = [t for p in range(4) for t in _big_grants(Identity.from_seed(b"p%d" % p), staff, CHAIN, 1, 400)]
    for t in txs:
        pool.admit(t, 0, 0.0)
    size = len(txs[0].raw)
    assert sum(len(t.raw) for t in txs) > MAX_BLOCK_BYTES + 4 * 1024 * 1024
    batch = pool.batch(2000, max_bytes=TXS_MAX_BYTES, framing=TX_FRAMING)
    total = sum(len(t.raw) + TX_FRAMING for t in batch)
    assert total <= TXS_MAX_BYTES < total + size + TX_FRAMING  # full: the next one would not have fitted
    assert TXS_MAX_BYTES < MAX_BLOCK_BYTES
    # still round-robin over senders, each one's run contiguous from its next nonce
    by_sender: dict[bytes, list[int]] = {}
    for t in batch:
        by_sender.setdefault(t.address, []).append(t.nonce)
    assert len(by_sender) == 4
    assert all(ns == list(range(1, len(ns) + 1)) for ns in by_sender.values())
    assert max(map(len, by_sender.values())) - min(map(len, by_sender.values())) <= 1
    # what did not fit is the next block's
    rest = pool.batch(2000, {t.id for t in batch}, TXS_MAX_BYTES, TX_FRAMING)
    assert rest and not {t.id for t in rest} & {t.id for t in batch}
    # a budget below one transaction gives an empty batch, not an oversized one
    assert pool.batch(2000, max_bytes=size - 1) == []


def test_a_pool_of_large_grants_commits_in_blocks_every_replica_decodes(tmp_path):
    """Five patients' bursts of the largest grants (17 MB) on a real 4-validator devnet: every one
    commits, in blocks each at most MAX_BLOCK_BYTES."""

    async def go(urls: list[str]) -> None:
        staff = Identity.from_seed(b"staff-big")
        patients = [Identity.from_seed(b"patient-big-%d" % i) for i in range(PATIENTS)]
        async with NodeClient(urls[0]) as c0:
            chain = (await c0.status())["chain_id"]
            profiles = [Tx.build(staff, chain, 1, Profile("s", "nurse", "org", staff.box_public))]
            profiles += [Tx.build(p, chain, 1, Profile(f"p{i}", "patient", "", p.box_public))
                         for i, p in enumerate(patients)]
            assert all(r["status"] == 202 for r in await c0.submit_many([t.raw for t in profiles]))
            for t in profiles:
                assert (await c0.wait_committed(t.id.hex(), 30))["status"] == "committed"
            head0 = (await c0.status())["height"]
            grants = [_big_grants(p, staff.address, chain, 2, GRANTS) for p in patients]
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
