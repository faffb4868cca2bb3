"""Admission and batching of transactions.

Per sender: a queue in nonce order and a token bucket (the per-sender rate limit). Blocks are cut
round-robin across senders, so one busy sender cannot crowd the others out of a batch.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from node.tx import Tx


class AdmissionError(Exception):
    """A transaction refused at admission; `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.retry_after = status, reason, retry_after


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float
    tokens: float
    stamp: float

    def take(self, now: float) -> float:
        """0.0 if a token was taken, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Mempool:
    def __init__(self, capacity: int = 100_000, rate: float = 200.0, burst: float = 400.0,
                 max_per_sender: int = 1024) -> None:
        self.capacity, self.rate, self.burst, self.max_per_sender = capacity, rate, burst, max_per_sender
        self.queues: OrderedDict[bytes, deque[Tx]] = OrderedDict()  # address -> txs in nonce order
        self.by_id: dict[bytes, Tx] = {}
        self.buckets: dict[bytes, TokenBucket] = {}
        self.rejections: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.by_id)

    def __contains__(self, txid: bytes) -> bool:
        return txid in self.by_id

    def next_nonce(self, addr: bytes, committed: int) -> int:
        q = self.queues.get(addr)
        return (q[-1].nonce if q else committed) + 1

    def refuse(self, status: int, reason: str, retry_after: float | None = None) -> AdmissionError:
        key = reason.split(":")[0]
        self.rejections[key] = self.rejections.get(key, 0) + 1
        return AdmissionError(status, reason, retry_after)

    def admit(self, tx: Tx, committed_nonce: int, now: float) -> None:
        """Queue a transaction that passed stateless and stateful checks; enforce nonce order and limits."""
        addr = tx.address
        if tx.id in self.by_id:
            raise self.refuse(409, "duplicate: transaction already pending")
        expected = self.next_nonce(addr, committed_nonce)
        if tx.nonce <= committed_nonce:
            raise self.refuse(409, f"stale nonce: {tx.nonce} already used (replay?); next is {expected}")
        if tx.nonce != expected:
            raise self.refuse(409, f"nonce out of order: got {tx.nonce}, expected {expected}")
        if len(self.by_id) >= self.capacity:
            raise self.refuse(503, "mempool full: try again later", 1.0)
        q = self.queues.get(addr)
        if q is not None and len(q) >= self.max_per_sender:
            raise self.refuse(429, f"rate limited: {self.max_per_sender} transactions already pending", 1.0)
        bucket = self.buckets.get(addr)
        if bucket is None:
            bucket = self.buckets[addr] = TokenBucket(self.rate, self.burst, self.burst, now)
        wait = bucket.take(now)
        if wait > 0:
            raise self.refuse(429, f"rate limited: sender exceeds {self.rate:g} tx/s", wait)
        if q is None:
            q = self.queues[addr] = deque()
        q.append(tx)
        self.by_id[tx.id] = tx

    def batch(self, max_txs: int) -> list[Tx]:
        """Up to max_txs transactions, round-robin over senders, each sender's in nonce order.
        They stay in the pool until committed (remove) so a failed round loses nothing."""
        out: list[Tx] = []
        cursors = {a: 0 for a in self.queues}
        while len(out) < max_txs and cursors:
            for addr in list(cursors):
                i = cursors[addr]
                q = self.queues[addr]
                if i >= len(q):
                    del cursors[addr]
                    continue
                out.append(q[i])
                cursors[addr] = i + 1
                if len(out) >= max_txs:
                    break
        return out

    def remove(self, txs: list[Tx]) -> None:
        """Drop committed transactions (and any now-stale ones queued behind them)."""
        for tx in txs:
            if self.by_id.pop(tx.id, None) is None:
                continue
            q = self.queues.get(tx.address)
            if q is None:
                continue
            while q and q[0].nonce <= tx.nonce:
                self.by_id.pop(q.popleft().id, None)
            if not q:
                del self.queues[tx.address]
            else:
                self.queues.move_to_end(tx.address)

    def prune_buckets(self, now: float) -> None:
        """Forget full buckets of idle senders so memory stays bounded by active senders."""
        for addr in [a for a, b in self.buckets.items() if a not in self.queues and
                     b.tokens + (now - b.stamp) * b.rate >= b.burst]:
            del self.buckets[addr]
