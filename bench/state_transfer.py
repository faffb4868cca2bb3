"""State-transfer catch-up rate on a real 4-validator devnet.

Validator 3 is stopped and restored from an older copy of its home while the others commit under
closed-loop load; the others stop the load at a given lead, then validator 3 is started again and must
pull the blocks it lacks (with certificates) over /medchain/sync/1.0.0. Prints the gap in blocks, the
time from start to level, and the rate; the time includes its start-up and the ~0.5 s until it hears
its peers' heartbeats.

    .venv/bin/python bench/state_transfer.py [--blocks 600]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from devices.net.faultharness import acknowledged_load
from devices.net.localnet import make_network, start_all
from devices.patient.client import NodeClient
from node.genesis import Params


async def height(node) -> int:
    async with NodeClient(node.url) as c:
        return (await c.status())["height"]


async def main(blocks: int, senders: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="medchain-st-"))
    nodes = make_network(root, 4, params=Params(sender_rate=1e5, sender_burst=1e5))
    start_all(nodes)
    try:
        nodes[3].stop()
        old = root / "node3-old"
        shutil.copytree(nodes[3].home, old)
        committed: list[str] = []
        stop = asyncio.Event()
        load = asyncio.create_task(acknowledged_load(nodes, stop, committed, b"st-", senders=senders, avoid=3))
        while await height(nodes[1]) < blocks:
            await asyncio.sleep(0.5)
        stop.set()
        await load
        target = await height(nodes[1])
        shutil.rmtree(nodes[3].home)
        shutil.copytree(old, nodes[3].home)
        t0 = time.monotonic()
        nodes[3].start()
        t_up = time.monotonic()
        gap = target - await height(nodes[3])
        while await height(nodes[3]) < target:
            await asyncio.sleep(0.01)
        t1 = time.monotonic()
        async with NodeClient(nodes[3].url) as c:
            st = await c.status()
        took = t1 - t_up
        print(f"{gap} blocks ({len(committed)} transactions) behind: level {took:.2f} s after its API came up "
              f"({t_up - t0:.2f} s start-up): {gap / took:.0f} blocks/s, {len(committed) / took:.0f} tx/s; "
              f"{st['consensus']['synced_blocks']} pulled by state transfer")
    finally:
        for n in nodes:
            n.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=600)
    ap.add_argument("--senders", type=int, default=24)
    a = ap.parse_args()
    asyncio.run(main(a.blocks, a.senders))
