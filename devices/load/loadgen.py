"""Pre-signed load against a validator: committed tx/s and commit latency (Caliper's definitions).

Phase 1 (not timed): make senders, one small ciphertext per write, pre-sign the transactions.
Phase 2 (timed): submit them in batches (POST /v1/txs, as a phone proxy would; each write carries
its ciphertext as a sidecar) from several concurrent submitters while a follower reads each new
block and stamps its transactions' commit time (given the genesis, only a block whose certificate
and transaction ids check against its keys: devices/load/follow.py). throughput = committed /
(last commit - first submit). A 429 or 503 (a rate limit, a full pool) is retried after its
Retry-After, never fatal.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from devices.load.follow import Follower
from devices.load.follow import start_height as follow_from
from devices.patient.client import ApiError, NodeClient, retry_after
from node.crypto.keys import Identity
from node.genesis import Genesis
from node.ipfs.cid import raw_cid_bytes
from node.tx import Profile, Tx, Write

Sub = tuple[Tx, bytes | None]  # a transaction and its sidecar
MAX_RETRIES = 20


@dataclass
class LoadResult:
    submitted: int
    committed: int
    refused: int
    seconds: float
    tps: float
    latency_ms: dict[str, float]
    blocks: int
    blocks_proven: int | None = None  # None: no genesis given, commits taken on the validator's word
    blocks_refused: int = 0

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def percentile(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, round(p / 100 * (len(sorted_vals) - 1))))
    return sorted_vals[k]


def _prepare(chain: str, senders: int, per_sender: int, kind: str) -> list[list[Sub]]:
    """Pre-sign every transaction (writes with their ciphertext as sidecar)."""
    now = int(time.time() * 1000)
    out = []
    for _ in range(senders):
        ident = Identity.from_seed(os.urandom(16))
        bodies, blobs = [], []
        for n in range(1, per_sender + 1):
            if kind == "profile":
                bodies.append(Profile(f"load-{n}", "bench", "medchain", bytes(32)))
                blobs.append(None)
                continue
            blob = os.urandom(96)  # a small encrypted window (the bytes are opaque to the chain)
            bodies.append(Write(1, raw_cid_bytes(blob), len(blob), 0, now + n * 1000, now + n * 1000 + 999))
            blobs.append(blob)
        out.append(list(zip(Tx.build_batch(ident, chain, 1, bodies), blobs, strict=True)))
    return out


async def run_load(urls: list[str], senders: int = 200, per_sender: int = 50, batch: int = 500,
                   lanes: int = 2, timeout: float = 300.0, kind: str = "write", rate: float = 0.0,
                   genesis: Genesis | None = None) -> LoadResult:
    """Submit to every validator in `urls` (sender s to validator s mod n); follow commits on the last.
    rate > 0 offers load open-loop at that many tx/s in total (a slow system cannot slow the
    arrivals down and hide its latency); rate = 0 submits as fast as admission answers."""
    clients = [NodeClient(u) for u in urls]
    for cl in clients:
        await cl.__aenter__()
    try:
        return await _run(clients, senders, per_sender, batch, lanes, timeout, kind, rate, genesis)
    finally:
        for cl in clients:
            await cl.close()


async def _run(clients: list[NodeClient], senders: int, per_sender: int, batch: int, lanes: int,
               timeout: float, kind: str, rate: float = 0.0, genesis: Genesis | None = None) -> LoadResult:
    c = clients[-1]  # follow commits on a backup: keeps the harness's polling off the primary
    chain = genesis.chain_id if genesis is not None else (await c.status())["chain_id"]
    per = _prepare(chain, senders, per_sender, kind)
    # sender s talks to validator s mod V over lane (s // V) mod L; a lane submits its batches one
    # after another, so each sender's nonces arrive in order; lanes and validators run concurrently
    nv = len(clients)
    plan: dict[tuple[int, int], list[int]] = {}
    for s_ in range(senders):
        plan.setdefault((s_ % nv, (s_ // nv) % lanes), []).append(s_)
    work = []
    for (v, _), group in plan.items():
        order = [per[s_][n] for n in range(per_sender) for s_ in group]
        work.append((clients[v], [order[i:i + batch] for i in range(0, len(order), batch)]))
    total = senders * per_sender
    sent_at: dict[bytes, float] = {}
    done_at: dict[bytes, float] = {}
    refused = 0
    start_height = await follow_from(clients)
    all_sent = asyncio.Event()

    follower = Follower(clients, genesis, chain, start_height)

    async def follow() -> int:
        async for blk in follower.blocks(wait_s=1):  # a long poll: one request per block
            if blk is not None:
                t = time.monotonic()
                for tid in blk["tx_ids"]:
                    done_at.setdefault(bytes.fromhex(tid), t)
            if all_sent.is_set() and all(t in done_at for t in sent_at):
                break
        return follower.height - start_height

    lane_rate = rate / len(work) if rate > 0 else 0.0

    async def submit(cl: NodeClient, b: list[Sub]) -> None:
        """Submit a batch; what a rate limit or a full pool refused (and, behind it, the same senders'
        later nonces) is sent again after the Retry-After."""
        nonlocal refused
        for _ in range(MAX_RETRIES):
            t = time.monotonic()
            for tx, _s in b:
                sent_at.setdefault(tx.id, t)
            try:
                res = await cl.submit_many([(tx.raw, side) for tx, side in b])
            except ApiError as exc:  # the whole request refused (the per-client limit), or answered malformed
                if exc.status not in (429, 502, 503):
                    raise
                await asyncio.sleep(retry_after(exc.retry_after))
                continue
            again, wait, blocked = [], 0.0, set()
            for (tx, side), r in zip(b, res, strict=True):
                st = r["status"]
                if st in (429, 503) or (st == 409 and tx.address in blocked):
                    again.append((tx, side))
                    blocked.add(tx.address)
                    wait = max(wait, retry_after(r.get("retry_after")))
                elif st != 202 and not (st == 409 and "already pending" in r.get("error", "")):
                    refused += 1
                    sent_at.pop(tx.id, None)
            if not again:
                return
            b = again
            await asyncio.sleep(wait)
        for tx, _s in b:
            refused += 1
            sent_at.pop(tx.id, None)

    async def lane(cl: NodeClient, batches: list[list[Sub]]) -> None:
        due = time.monotonic()
        for b in batches:
            if lane_rate:
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                due += len(b) / lane_rate
            await submit(cl, b)

    following = asyncio.create_task(follow())
    t0 = time.monotonic()
    await asyncio.gather(*(lane(cl, bs) for cl, bs in work))
    all_sent.set()
    try:
        blocks = await asyncio.wait_for(following, timeout)
    except TimeoutError:
        blocks = -1
    lat = sorted((done_at[t] - s_) * 1000 for t, s_ in sent_at.items() if t in done_at)
    last = max((done_at[t] for t in sent_at if t in done_at), default=t0)
    secs = last - t0
    nan = float("nan")
    return LoadResult(total, len(lat), refused, secs, len(lat) / secs if secs > 0 else 0.0,
                      {"min": lat[0] if lat else nan, "avg": sum(lat) / len(lat) if lat else nan,
                       "p50": percentile(lat, 50), "p95": percentile(lat, 95), "p99": percentile(lat, 99),
                       "max": lat[-1] if lat else nan}, blocks, follower.proven_or_none, follower.refused)
