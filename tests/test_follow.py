"""A client following the chain long-polls the next block (GET /v1/blocks/{h}?wait=S) on a real
validator process: one request per block, answered when the block commits."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from devices.patient.client import NodeClient
from node.crypto.keys import Identity
from node.tx import Profile, Tx
from tests.conftest import run


def test_the_next_block_is_long_polled_and_a_far_height_is_refused_at_once(node, genesis):
    async def go() -> None:
        async with NodeClient(node.url) as c, aiohttp.ClientSession() as s:
            head = (await c.status())["height"]

            async def get(height: int, wait: str) -> tuple[int, dict]:
                async with s.get(f"{node.url}/v1/blocks/{height}", params={"wait": wait}) as r:
                    return r.status, await r.json()

            poll = asyncio.create_task(get(head + 1, "20"))
            await asyncio.sleep(0.5)
            assert not poll.done()  # nothing committed: the request waits
            ident = Identity.from_seed(b"follower test")
            tx = Tx.build(ident, genesis.chain_id, 1, Profile("F", "nurse", "Ward", ident.box_public))
            await c.submit(tx.raw)
            status, blk = await asyncio.wait_for(poll, 15)  # answered by the commit, not the wait
            assert status == 200 and blk["height"] == head + 1 and tx.id.hex() in blk["tx_ids"]
            # a height not committed within the wait: 404 once the wait is over, as without a wait
            asked = time.monotonic()
            status, body = await get(head + 2, "1")
            assert status == 404 and "no block" in body["error"]
            assert time.monotonic() - asked >= 0.9  # it waited (a lower bound, not a speed)
            # far past the head: 404 at once (no waiter is parked), whatever the wait asked
            status, _ = await asyncio.wait_for(get(head + 1000, "30"), 10)
            assert status == 404
            status, body = await get(head + 2, "soon")
            assert status == 400
            assert (await get(head + 1, "5"))[0] == 200  # a committed block: at once
    run(go())


def test_next_block_returns_none_after_the_wait_and_pauses_on_an_immediate_404(node, genesis):
    """`NodeClient.next_block`, the followers' call in the fleet and the load generator: a block
    that has not come is None after the wait; a 404 the validator gives at once (a height far past
    its head, or below its checkpoint) is answered after a pause, so a follower that calls again in
    a loop does not spin on the validator."""
    async def go() -> None:
        async with NodeClient(node.url) as c:
            head = (await c.status())["height"]
            ident = Identity.from_seed(b"next_block test")
            tx = Tx.build(ident, genesis.chain_id, 1, Profile("N", "nurse", "Ward", ident.box_public))
            await c.submit(tx.raw)
            blk = await c.next_block(head + 1, 15)  # answered by the commit
            assert blk is not None and blk["height"] == head + 1 and tx.id.hex() in blk["tx_ids"]
            assert await c.next_block(head + 2, 1) is None  # waited out
            calls = 0
            end = time.monotonic() + 1.0
            while time.monotonic() < end:  # a follower's loop on a height the validator refuses at once
                assert await c.next_block(head + 1000, 10) is None
                calls += 1
            assert calls <= 11, calls  # ~0.1 s apart, not hundreds of requests a second
    run(go())
