"""Admission and batching of transactions.

Per sender: pending transactions by nonce and a token bucket (the per-sender rate limit). Clients
must submit in nonce order; batches forwarded by other validators may arrive reordered, so they
may run ahead by a bounded gap. Blocks take each sender's contiguous run from its next nonce,
round-robin across senders, so one busy sender cannot crowd the others out of a batch.

The pool is bounded. When it is full, room is made by evicting the newest transaction of the sender
holding the most (not the newest arrival, which is likely an honest one): a flooder loses its own
tail first. `KeyedLimiter` is the same token bucket keyed by client IP (API) or by peer (forwarded
batches between validators).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass

from node.tx import Tx

MAX_FORWARD_GAP = 256


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

    def take(self, now: float, n: float = 1.0) -> float:
        """0.0 if n tokens were taken, else the seconds until they are available (never, if n is
        over the burst: size the burst above the largest legitimate cost)."""
        if now > self.stamp:  # a caller may pass an earlier arrival time: never refill backwards
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


class KeyedLimiter:
    """One token bucket per key (client IP, peer id), at most `max_keys` of them: idle full buckets
    are forgotten first, then the least recently used."""

    def __init__(self, rate: float, burst: float, max_keys: int = 65_536) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self.buckets: OrderedDict[object, TokenBucket] = OrderedDict()

    def take(self, key: object, now: float, n: float = 1.0) -> float:
        """0.0 if allowed, else the seconds to wait (the Retry-After)."""
        b = self.buckets.get(key)
        if b is None:
            if len(self.buckets) >= self.max_keys:
                self._prune(now)
            b = self.buckets[key] = TokenBucket(self.rate, self.burst, self.burst, now)
        else:
            self.buckets.move_to_end(key)
        return b.take(now, n)

    def _prune(self, now: float) -> None:
        for k in [k for k, b in self.buckets.items() if b.full(now)]:
            del self.buckets[k]
        while len(self.buckets) >= self.max_keys:
            self.buckets.popitem(last=False)


class _Sender:
    __slots__ = ("base", "txs")

    def __init__(self, base: int) -> None:
        self.base = base  # the next nonce the chain will accept from this sender
        self.txs: dict[int, Tx] = {}

    def contiguous_end(self) -> int:
        n = self.base
        while n in self.txs:
            n += 1
        return n


class Mempool:
    def __init__(self, capacity: int = 100_000, rate: float = 200.0, burst: float = 400.0,
                 max_per_sender: int = 1024, max_sidecar_bytes: int = 64 * 1024 * 1024) -> None:
        self.capacity, self.rate, self.burst, self.max_per_sender = capacity, rate, burst, max_per_sender
        # sidecars (node/sidecar.py) wait here with their writes, bounded in bytes: memory stays flat
        self.sidecars: dict[bytes, bytes] = {}
        self.sidecar_bytes, self.max_sidecar_bytes = 0, max_sidecar_bytes
        self.senders: OrderedDict[bytes, _Sender] = OrderedDict()
        self.by_id: dict[bytes, Tx] = {}
        self.buckets: dict[bytes, TokenBucket] = {}
        self._heavy: list[tuple[int, bytes]] = []  # lazy max-heap of (-pending, sender) for eviction
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.by_id)

    def __contains__(self, txid: bytes) -> bool:
        return txid in self.by_id

    def next_nonce(self, addr: bytes, committed: int) -> int:
        s = self.senders.get(addr)
        if s is None:
            return committed + 1
        n = max(s.base, committed + 1)
        while n in s.txs:
            n += 1
        return n

    def admit(self, tx: Tx, committed_nonce: int, now: float, forwarded: bool = False,
              sidecar: bytes | None = None) -> list[Tx]:
        """Queue a transaction that passed stateless and stateful checks; enforce nonce order and limits.
        `forwarded` batches (from other validators) skip the rate limit, which their entry validator
        applied, and may run ahead of the next nonce by up to MAX_FORWARD_GAP. Returns the
        transactions evicted to make room (empty unless the pool was full)."""
        addr = tx.address
        if tx.id in self.by_id:
            raise AdmissionError(409, "duplicate: transaction already pending")
        s = self.senders.get(addr)
        if s is not None and s.base <= committed_nonce:
            self._advance(addr, s, committed_nonce + 1)
            s = self.senders.get(addr)
        expected = committed_nonce + 1 if s is None else s.contiguous_end()
        if tx.nonce <= committed_nonce:
            raise AdmissionError(409, f"stale nonce: {tx.nonce} already used (replay?); next is {expected}")
        if s is not None and tx.nonce in s.txs:
            raise AdmissionError(409, f"nonce conflict: {tx.nonce} already pending with another transaction")
        if tx.nonce != expected and not (forwarded and tx.nonce <= committed_nonce + MAX_FORWARD_GAP):
            raise AdmissionError(409, f"nonce out of order: got {tx.nonce}, expected {expected}")
        if s is not None and len(s.txs) >= self.max_per_sender:
            raise AdmissionError(429, f"rate limited: {self.max_per_sender} transactions already pending", 1.0)
        if sidecar is not None and self.sidecar_bytes + len(sidecar) > self.max_sidecar_bytes:
            raise AdmissionError(503, f"mempool full: {self.sidecar_bytes} bytes of sidecars pending", 1.0)
        if not forwarded:
            bucket = self.buckets.get(addr)
            if bucket is None:
                bucket = self.buckets[addr] = TokenBucket(self.rate, self.burst, self.burst, now)
            wait = bucket.take(now)
            if wait > 0:
                raise AdmissionError(429, f"rate limited: sender exceeds {self.rate:g} tx/s", wait)
        evicted = self._make_room(addr, 0 if s is None else len(s.txs)) if len(self.by_id) >= self.capacity else []
        if s is None:
            s = self.senders[addr] = _Sender(committed_nonce + 1)
        s.txs[tx.nonce] = tx
        self.by_id[tx.id] = tx
        if sidecar is not None:
            self.sidecars[tx.id] = sidecar
            self.sidecar_bytes += len(sidecar)
        heapq.heappush(self._heavy, (-len(s.txs), addr))
        return evicted

    def _make_room(self, addr: bytes, mine: int) -> list[Tx]:
        """Evict the newest transaction of the sender holding the most, if it holds more than the
        newcomer would; otherwise the newcomer is the heavy one (429) or everyone is equal (503)."""
        heavy = self._heaviest()
        most = 0 if heavy is None else len(self.senders[heavy].txs)
        if most <= mine + 1:
            if mine > 1 and mine >= most:
                raise AdmissionError(429, "mempool full: this sender holds the most pending transactions", 1.0)
            raise AdmissionError(503, "mempool full: try again later", 1.0)
        s = self.senders[heavy]
        victim = s.txs.pop(max(s.txs))
        self._forget(victim.id)
        self.evictions += 1
        if s.txs:
            heapq.heappush(self._heavy, (-len(s.txs), heavy))
        else:
            del self.senders[heavy]
        return [victim]

    def charge(self, addr: bytes, now: float, n: float = 1.0) -> float:
        """Take n tokens from a sender's bucket outside admission (a standalone upload); 0.0 if
        taken, else the seconds to wait."""
        bucket = self.buckets.get(addr)
        if bucket is None:
            bucket = self.buckets[addr] = TokenBucket(self.rate, self.burst, self.burst, now)
        return bucket.take(now, n)

    def _forget(self, txid: bytes) -> None:
        self.by_id.pop(txid, None)
        side = self.sidecars.pop(txid, None)
        if side is not None:
            self.sidecar_bytes -= len(side)

    def sidecar(self, txid: bytes) -> bytes | None:
        return self.sidecars.get(txid)

    def _heaviest(self) -> bytes | None:
        """The sender with the most pending transactions (stale heap entries are dropped lazily)."""
        h = self._heavy
        if len(h) > 4 * len(self.senders) + 1024:  # compact: one entry per sender
            h[:] = [(-len(s.txs), a) for a, s in self.senders.items()]
            heapq.heapify(h)
        while h:
            neg, addr = h[0]
            s = self.senders.get(addr)
            if s is not None and len(s.txs) == -neg:
                return addr
            heapq.heappop(h)
            if s is not None and s.txs:
                heapq.heappush(h, (-len(s.txs), addr))
        return None

    def batch(self, max_txs: int, exclude: Container[bytes] = ()) -> list[Tx]:
        """Up to max_txs transactions, round-robin over senders, each sender's contiguous nonce run
        (skipping ids in `exclude`, e.g. those already proposed). They stay in the pool until
        committed (remove), so a failed round loses nothing."""
        out: list[Tx] = []
        cursors: dict[bytes, int] = {}
        for addr, s in self.senders.items():
            n = s.base
            while n in s.txs and s.txs[n].id in exclude:
                n += 1
            if n in s.txs:
                cursors[addr] = n
        while len(out) < max_txs and cursors:
            for addr in list(cursors):
                s = self.senders[addr]
                n = cursors[addr]
                tx = s.txs.get(n)
                if tx is None or tx.id in exclude:
                    del cursors[addr]
                    continue
                out.append(tx)
                cursors[addr] = n + 1
                if len(out) >= max_txs:
                    break
        return out

    def _advance(self, addr: bytes, s: _Sender, base: int) -> None:
        for n in [n for n in s.txs if n < base]:
            self._forget(s.txs.pop(n).id)
        s.base = base
        if not s.txs:
            del self.senders[addr]

    def remove(self, txs: list[Tx]) -> None:
        """Drop committed transactions (and any stale ones for the same nonces)."""
        top: dict[bytes, int] = {}
        for tx in txs:
            top[tx.address] = max(top.get(tx.address, 0), tx.nonce)
        for addr, nonce in top.items():
            s = self.senders.get(addr)
            if s is not None and nonce >= s.base:
                self._advance(addr, s, nonce + 1)
                if addr in self.senders:
                    self.senders.move_to_end(addr)

    def prune_buckets(self, now: float) -> None:
        """Forget full buckets of idle senders so memory stays bounded by active senders."""
        for addr in [a for a, b in self.buckets.items() if a not in self.senders and
                     b.tokens + (now - b.stamp) * b.rate >= b.burst]:
            del self.buckets[addr]
