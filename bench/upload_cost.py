"""Validator and client CPU per blob upload vs per transaction, on one validator in isolation.

    .venv/bin/python bench/upload_cost.py

Starts one validator, uploads 2,000 200-byte blobs (32 concurrent POST /v1/blobs), then submits
2,000 profile transactions in batches of 500 and waits until the mempool is empty; prints the
validator's CPU (from /proc) and this process's CPU per item. Used by bench/README.md to explain
where a fleet write's cost goes.
"""
import asyncio
import os
import tempfile
import time
from pathlib import Path

from devices.client import NodeClient
from devices.localnet import make_network, start_all
from node.crypto.keys import Identity
from node.tx import Profile, Tx

N = 2000


async def go(url: str, node) -> None:  # noqa: ANN001
    async with NodeClient(url) as c:
        chain = (await c.status())["chain_id"]
        sem = asyncio.Semaphore(32)

        async def up() -> None:
            async with sem:
                await c.upload(os.urandom(200))
        c0 = node.cpu_seconds()
        g0 = time.process_time()
        await asyncio.gather(*(up() for _ in range(N)))
        c1 = node.cpu_seconds()
        g1 = time.process_time()
        print(f"upload: validator {1000*(c1-c0)/N:.3f} ms CPU per blob; client {1000*(g1-g0)/N:.3f} ms")
        ids = [Identity.from_seed(os.urandom(16)) for _ in range(100)]
        txs = [t for i in ids for t in Tx.build_batch(i, chain, 1, [Profile("x", "y", "z", bytes(32))] * (N // 100))]
        c0 = node.cpu_seconds()
        g0 = time.process_time()
        for k in range(0, N, 500):
            await c.submit_many([t.raw for t in txs[k:k + 500]])
        while (await c.status())["mempool_size"] > 0:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        c1 = node.cpu_seconds()
        g1 = time.process_time()
        print(f"tx (batched submit, through commit): validator {1000*(c1-c0)/N:.3f} ms CPU per tx; client {1000*(g1-g0)/N:.3f} ms")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        nodes = make_network(Path(d), 1)
        start_all(nodes)
        try:
            asyncio.run(go(nodes[0].url, nodes[0]))
        finally:
            for n in nodes:
                n.stop()
