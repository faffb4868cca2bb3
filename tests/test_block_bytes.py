"""A block never outgrows what every replica will decode (MAX_BLOCK_BYTES).

`block_max_txs` counts transactions, but a transaction may be up to MAX_TX_BYTES: 2,000 grants of
64 sealed keys each are 17 MB, twice the size any validator decodes. A primary that proposed such a
block had it refused by every replica; the next primary held the same pool and did the same, and
the chain stopped for good. A few registered patients with a burst of large grants each could do it. The batch's byte budget
itself is tested in tests/test_mempool_limits.py.
"""

from __future__ import annotations

import asyncio
import time

from devices.patient.client import NodeClient
from node.crypto.keys import Identity
from node.tx import Grant, Profile, Tx
from node.tx.model import MAX_KEYS_PER_GRANT, MAX_SEALED, SealedKey
from node.wire import MAX_BLOCK_BYTES
from tests.conftest import run, running_network

CHAIN = "medchain-test"
PATIENTS = 5
GRANTS = 390  # each patient's burst of large grants (its per-sender burst is 400)


def big_grants(patient: Identity, staff: bytes, chain: str, first_nonce: int, n: int) -> list[Tx]:
    """Grants of the largest size a transaction of this kind can take (~8.7 KB each)."""
    keys = tuple(SealedKey(1, 0, bytes([k]) * MAX_SEALED) for k in range(MAX_KEYS_PER_GRANT))
    return Tx.build_batch(patient, chain, first_nonce, [Grant(staff, (1,), 0, keys)] * n)


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
            grants = [big_grants(p, staff.address, chain, 2, GRANTS) for p in patients]
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
