"""Pre-signed load against a validator: committed tx/s and commit latency (Caliper's definitions).

Phase 1 (not timed): make senders, upload one small ciphertext per transaction, pre-sign data-write
transactions. Phase 2 (timed): submit them in batches (POST /v1/txs, as a phone proxy would) from
several concurrent submitters while a follower reads each new block and stamps its transactions'
commit time. throughput = committed / (last commit - first submit).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from devices.client import NodeClient
from node.crypto.keys import Identity
from node.ipfs.cid import Cid
from node.tx import Tx, Write


@dataclass
class LoadResult:
    submitted: int
    committed: int
    refused: int
    seconds: float
    tps: float
    latency_ms: dict[str, float]
    blocks: int

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def percentile(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, round(p / 100 * (len(sorted_vals) - 1))))
    return sorted_vals[k]


async def _prepare(c: NodeClient, chain: str, senders: int, per_sender: int) -> list[list[Tx]]:
    idents = [Identity.from_seed(os.urandom(16)) for _ in range(senders)]
    now = int(time.time() * 1000)
    sem = asyncio.Semaphore(32)

    async def one(ident: Identity) -> list[Tx]:
        out = []
        for n in range(1, per_sender + 1):
            blob = os.urandom(96)  # a small encrypted window (the bytes are opaque to the chain)
            async with sem:
                cid = await c.upload(blob)
            out.append(Tx.build(ident, chain, n, Write(1, Cid.parse(cid).to_bytes(), len(blob), 0,
                                                       now + n * 1000, now + n * 1000 + 999)))
        return out
    return await asyncio.gather(*(one(i) for i in idents))


async def run_load(url: str, senders: int = 200, per_sender: int = 50, batch: int = 500,
                   submitters: int = 4, timeout: float = 120.0) -> LoadResult:
    async with NodeClient(url) as c:
        chain = (await c.status())["chain_id"]
        per = await _prepare(c, chain, senders, per_sender)
        # interleave senders so every batch carries many senders, each in nonce order
        order = [per[s][n] for n in range(per_sender) for s in range(senders)]
        batches = [order[i:i + batch] for i in range(0, len(order), batch)]
        sent_at: dict[bytes, float] = {}
        done_at: dict[bytes, float] = {}
        refused = 0
        start_height = (await c.status())["height"]
        stop = asyncio.Event()

        async def follow() -> int:
            h = start_height
            while not stop.is_set():
                st = await c.status()
                while h < st["height"]:
                    h += 1
                    blk = await c.get_json(f"/v1/blocks/{h}")
                    t = time.monotonic()
                    for tid in blk["tx_ids"]:
                        done_at.setdefault(bytes.fromhex(tid), t)
                if len(done_at) >= len(sent_at) and sent_at and all_sent.is_set():
                    break
                await asyncio.sleep(0.005)
            return h - start_height

        all_sent = asyncio.Event()
        queue: asyncio.Queue = asyncio.Queue()
        for b in batches:
            queue.put_nowait(b)

        async def submitter() -> None:
            nonlocal refused
            while not queue.empty():
                b = queue.get_nowait()
                t = time.monotonic()
                for tx in b:
                    sent_at[tx.id] = t
                res = await c.submit_many([tx.raw for tx in b])
                for tx, r in zip(b, res, strict=True):
                    if r["status"] != 202:
                        refused += 1
                        sent_at.pop(tx.id, None)

        follower = asyncio.create_task(follow())
        t0 = time.monotonic()
        await asyncio.gather(*(submitter() for _ in range(submitters)))
        all_sent.set()
        try:
            blocks = await asyncio.wait_for(follower, timeout)
        except TimeoutError:
            stop.set()
            blocks = -1
        lat = sorted((done_at[t] - s) * 1000 for t, s in sent_at.items() if t in done_at)
        committed = len(lat)
        last = max((done_at[t] for t in sent_at if t in done_at), default=t0)
        secs = last - t0
        return LoadResult(len(order), committed, refused, secs, committed / secs if secs > 0 else 0.0,
                          {"min": lat[0] if lat else float("nan"), "avg": sum(lat) / len(lat) if lat else float("nan"),
                           "p50": percentile(lat, 50), "p95": percentile(lat, 95), "p99": percentile(lat, 99),
                           "max": lat[-1] if lat else float("nan")}, blocks)
