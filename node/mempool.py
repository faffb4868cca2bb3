"""Admission and batching of transactions.

Per sender: pending transactions by nonce and a token bucket (the per-sender rate limit). Clients
must submit in nonce order; batches forwarded by other validators may arrive reordered, so they
may run ahead by a bounded gap. Blocks take each sender's contiguous run from its next nonce,
round-robin across senders, so one busy sender cannot crowd the others out of a batch.

The pool is bounded, and fair between origins: an origin is an opaque key for where a sender's
transactions entered (the API passes the client IP; forwarded batches their peer), and a sender
belongs to the origin of its first pending transaction. One client origin may hold at most
`origin_share` of the pool, so fresh keys from one IP cannot fill it. When the pool is full, room
is made in the origin holding the most, if it holds more than the newcomer's own: a flood from one
IP loses its own transactions, never another IP's. Inside the losing origin, a brand-new sender
(no committed transaction) goes before a sender with history, then the sender holding the most
loses its newest (never a hole in its nonce run). `KeyedLimiter` is the same token bucket keyed
by client IP (API) or by peer (forwarded batches between validators).
"""

from __future__ import annotations

import contextlib
import heapq
from collections import OrderedDict
from collections.abc import Container, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum

from node.tx import KIND_WRITE, Tx
from node.tx.model import BAD_SIGNATURE

MAX_FORWARD_GAP = 256
# the pool's transaction bytes (node config limits.mempool_mb): 200,000 writes of ~250 bytes fit, and
# the largest grants (~8.7 KB) then number ~7,700, eight blocks' byte budget, not 1.7 GB
MAX_TX_POOL_BYTES = 64 * 1024 * 1024

# Where the transactions being admitted come from (client IP, "peer:<id>"), set by the caller around
# a submission: admission reads it without every layer in between passing it along.
admission_origin: ContextVar[str] = ContextVar("admission_origin", default="")


@contextlib.contextmanager
def origin(key: str) -> Iterator[None]:
    """Admit the transactions submitted inside this block as coming from `key`."""
    token = admission_origin.set(key)
    try:
        yield
    finally:
        admission_origin.reset(token)


class Refusal(Enum):
    """Why admission refused a transaction, in kinds a client acts on; the API maps each to its HTTP
    status (node/api/submit.py), the core knows no HTTP."""

    INVALID = "invalid"  # malformed, wrong chain, bad signature or sidecar: fix the transaction
    FORBIDDEN = "forbidden"  # the policy refuses it
    NOT_FOUND = "not found"  # it names what is not on chain
    CONFLICT = "conflict"  # duplicate, replay, nonce order, key epoch: resync, then resubmit
    UNPROCESSABLE = "unprocessable"  # well formed but not acceptable as it is (a blob not held, a bad grant)
    TOO_LARGE = "too large"
    RATE_LIMITED = "rate limited"  # the sender or client is over its share: retry after retry_after
    OVERLOADED = "overloaded"  # the validator is full: retry after retry_after, or elsewhere


class AdmissionError(Exception):
    """A transaction refused at admission: the kind of refusal, why, and when to retry (if ever)."""

    def __init__(self, kind: Refusal, reason: str, retry_after: float | None = None,
                 expected: int | None = None, lasting: bool = False) -> None:
        super().__init__(reason)
        self.kind, self.reason, self.retry_after = kind, reason, retry_after
        self.expected = expected  # a nonce out of order: the one the pool takes next
        # a limit of the chain's state, not of this validator's load (an emergency-read window of a
        # day): the sender's next nonces are not held back behind it
        self.lasting = lasting

    @property
    def bad_signature(self) -> bool:
        """Refused for a signature that does not verify (clients sending these are charged more)."""
        return self.reason.endswith(BAD_SIGNATURE)


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

    def drain(self, now: float, n: float) -> None:
        """Take n tokens even if that leaves a debt (at most one burst deep): a penalty, never refused."""
        self.take(now, 0.0)
        self.tokens = max(-self.burst, self.tokens - n)

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

    def penalise(self, key: object, now: float, n: float) -> None:
        """Charge `key` n extra tokens, into debt if need be (e.g. for transactions that failed
        their signature check: they cost a verification each)."""
        self.take(key, now, 0.0)
        self.buckets[key].drain(now, n)

    def _prune(self, now: float) -> None:
        for k in [k for k, b in self.buckets.items() if b.full(now)]:
            del self.buckets[k]
        while len(self.buckets) >= self.max_keys:
            self.buckets.popitem(last=False)


PLACINGS = 6  # places in the order remembered per sender: more than the blocks a primary has in flight (4)


class _Sender:
    __slots__ = ("base", "end", "origin", "placed", "placings", "txs")

    def __init__(self, base: int, origin: str, placed: float = 0.0) -> None:
        self.base = base  # the next nonce the chain will accept from this sender
        self.txs: dict[int, Tx] = {}
        self.origin = origin  # the origin of its first pending transaction: it is counted there
        # when it took its place at the end of the proposal order (batch: round-robin over senders in
        # order); once a commit has moved it there, its last few places, each with the height of the
        # block whose commit moved it (-1: it came), oldest first (the censorship watch asks)
        self.placed = placed
        self.placings: list[tuple[int, float]] | None = None
        # every nonce from base up to here is pending: the run only grows at its end, a commit moves its
        # start, and an eviction (of the newest) cuts it, so admitting k transactions is O(k), not O(k^2)
        self.end = base

    def contiguous_end(self) -> int:
        """The first nonce after the pending run that starts at base."""
        n = max(self.base, self.end)
        while n in self.txs:
            n += 1
        self.end = n
        return n


class _Origin:
    """The senders one origin brought in: their pending count, the brand-new ones in arrival order,
    and a lazy max-heap of (-pending, sender) to find its heaviest sender."""
    __slots__ = ("fresh", "heavy", "n", "nbytes", "senders")

    def __init__(self) -> None:
        self.n = 0
        self.nbytes = 0  # the wire bytes of its pending transactions
        self.senders: set[bytes] = set()
        self.fresh: dict[bytes, None] = {}
        self.heavy: list[tuple[int, bytes]] = []


class Mempool:
    def __init__(self, capacity: int = 100_000, rate: float = 200.0, burst: float = 400.0,
                 max_per_sender: int = 1024, origin_share: float = 1.0,
                 max_sidecar_bytes: int = 64 * 1024 * 1024, max_tx_bytes: int = MAX_TX_POOL_BYTES) -> None:
        self.capacity, self.rate, self.burst, self.max_per_sender = capacity, rate, burst, max_per_sender
        # for client origins (not forwarded); a share of 1 or more: no cap beyond the pool's own
        self.max_per_origin = max(1, int(capacity * origin_share)) if origin_share < 1 else None
        self.origin_share = min(1.0, origin_share)
        # sidecars (node/sidecar.py) wait here with their writes, bounded in bytes: memory stays flat
        self.sidecars: dict[bytes, bytes] = {}
        self.sidecar_bytes, self.max_sidecar_bytes = 0, max_sidecar_bytes
        # the transactions' own bytes: a count alone lets 16 KiB grants hold gigabytes
        self.tx_bytes, self.max_tx_bytes = 0, max_tx_bytes
        self.max_origin_bytes = max(1, int(max_tx_bytes * origin_share)) if origin_share < 1 else None
        self.senders: OrderedDict[bytes, _Sender] = OrderedDict()
        # senders whose last pending transaction committed in the last PLACINGS + 1 blocks: (that
        # height, their places), oldest first, for one that comes again (the censorship watch asks)
        self._emptied: OrderedDict[bytes, tuple[int, list[tuple[int, float]]]] = OrderedDict()
        self.by_id: dict[bytes, Tx] = {}
        self.buckets: dict[bytes, TokenBucket] = {}
        self.origins: dict[str, _Origin] = {}
        self._heavy_origins: list[tuple[int, str]] = []  # lazy max-heap of (-pending, origin)
        self.evictions = 0
        # when each pending transaction arrived here, and a lazy min-heap of (arrival, k, sender,
        # nonce) of the transactions that can execute now (their sender's next nonce): the
        # censorship watch (node/consensus/censor.py) takes the longest waiting of them
        self.arrived: dict[bytes, float] = {}
        self._ready: list[tuple[float, int, bytes, int]] = []
        self._ready_k = 0
        self._ready_at: dict[bytes, float] = {}  # when each ready one became ready (its order in _ready)
        self._clock = 0.0  # the latest time admit or remove was given

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

    def origin_full(self, key: str) -> bool:
        """Whether client origin `key` holds its whole share: the API refuses its transactions before
        paying to decode and verify them."""
        o = self.origins.get(key)
        return self.max_per_origin is not None and o is not None and o.n >= self.max_per_origin

    def admit(self, tx: Tx, committed_nonce: int, now: float, forwarded: bool = False,
              origin: str = "", sidecar: bytes | None = None, limit: int | None = None,
              arrived: float | None = None) -> list[Tx]:
        """Queue a transaction that passed stateless and stateful checks; enforce nonce order and limits.
        `forwarded` batches (from other validators) skip the rate limit and the origin share, which
        their entry validator applied, and may run ahead of the next nonce by up to MAX_FORWARD_GAP.
        `origin` is an opaque key for where the transaction entered (client IP, peer). Returns the
        transactions evicted to make room (empty unless the pool was full). `limit`: the client
        backlog bound (node/backlog.py); at it, clients are refused, not evicted for."""
        addr = tx.address
        if tx.id in self.by_id:
            raise AdmissionError(Refusal.CONFLICT, "duplicate: transaction already pending")
        s = self.senders.get(addr)
        if s is not None and s.base <= committed_nonce:
            self._advance(addr, s, committed_nonce + 1)
            s = self.senders.get(addr)
        expected = committed_nonce + 1 if s is None else s.contiguous_end()
        if tx.nonce <= committed_nonce:
            raise AdmissionError(Refusal.CONFLICT, f"stale nonce: {tx.nonce} already used (replay?); next is {expected}")
        if s is not None and tx.nonce in s.txs:
            raise AdmissionError(Refusal.CONFLICT, f"nonce conflict: {tx.nonce} already pending with another transaction")
        if tx.nonce != expected and not (forwarded and tx.nonce <= committed_nonce + MAX_FORWARD_GAP):
            raise AdmissionError(Refusal.CONFLICT, f"nonce out of order: got {tx.nonce}, expected {expected}",
                                 expected=expected)
        if s is not None and len(s.txs) >= self.max_per_sender:
            raise AdmissionError(Refusal.RATE_LIMITED, f"rate limited: {self.max_per_sender} transactions already pending", 1.0)
        if sidecar is not None and self.sidecar_bytes + len(sidecar) > self.max_sidecar_bytes:
            raise AdmissionError(Refusal.OVERLOADED, f"mempool full: {self.sidecar_bytes} bytes of sidecars pending", 1.0)
        size = len(tx.raw)
        if self.tx_bytes + size > self.max_tx_bytes:
            raise AdmissionError(Refusal.OVERLOADED, f"mempool full: {self.tx_bytes} bytes of transactions pending", 1.0)
        key = origin if s is None else s.origin
        if not forwarded and self.origin_full(key):
            raise AdmissionError(Refusal.RATE_LIMITED, f"rate limited: client {key or '?'} holds its share of the mempool "
                                      f"({self.max_per_origin} pending transactions)", 1.0)
        if not forwarded and self.max_origin_bytes is not None:
            held = self.origins[key].nbytes if key in self.origins else 0
            if held + size > self.max_origin_bytes:
                raise AdmissionError(Refusal.RATE_LIMITED, f"rate limited: client {key or '?'} holds its share of the "
                                     f"mempool ({held} of {self.max_origin_bytes} bytes pending)", 1.0)
        if not forwarded:
            bucket = self.buckets.get(addr)
            if bucket is None:
                bucket = self.buckets[addr] = TokenBucket(self.rate, self.burst, self.burst, now)
            wait = bucket.take(now)
            if wait > 0:
                raise AdmissionError(Refusal.RATE_LIMITED, f"rate limited: sender exceeds {self.rate:g} tx/s", wait)
        evicted = []
        if limit is not None and not forwarded and limit <= len(self.by_id) < self.capacity:
            self._over_bound(key, limit)
        if len(self.by_id) >= self.capacity:
            # never the newcomer's own sender: it holds less than the victim, or has history
            evicted = self._make_room(key, s, committed_nonce > 0)
        if s is None:
            s = self.senders[addr] = _Sender(committed_nonce + 1, key, now)
            emptied = self._emptied.pop(addr, None)
            if emptied is not None:
                # its last pending one committed in block h a moment ago: a primary that proposed while h
                # was in flight still had it in its old place, and this one came to it there
                s.placings = list(emptied[1])
                self._placed_anew(s, emptied[0], now)
            o = self.origins.get(key)
            if o is None:
                o = self.origins[key] = _Origin()
            o.senders.add(addr)
            if committed_nonce == 0:  # no committed transaction yet: first to go when its origin must give way
                o.fresh[addr] = None
        else:
            o = self.origins[key]
        s.txs[tx.nonce] = tx
        self.by_id[tx.id] = tx
        self._clock = max(self._clock, now)
        self.arrived[tx.id] = now if arrived is None else arrived  # a restored one keeps its own
        self.tx_bytes += size
        o.nbytes += size
        if sidecar is not None:
            self.sidecars[tx.id] = sidecar
            self.sidecar_bytes += len(sidecar)
        if tx.nonce == s.base:
            self._now_ready(addr, tx)
        o.n += 1
        self._weigh_sender(o, addr, len(s.txs))
        self._weigh_origin(key, o.n)
        return evicted

    def _over_bound(self, key: str, limit: int) -> None:
        """The pool holds a client's backlog bound (node/backlog.py) or more: refuse the newcomer (503,
        no eviction: what was admitted stays admitted) unless its origin holds less than its share
        of the bound, so one flooding client cannot keep the others out; never beyond twice it."""
        o = self.origins.get(key)
        if len(self.by_id) >= 2 * limit or (o is not None and o.n >= max(1, int(limit * self.origin_share))):
            raise AdmissionError(Refusal.OVERLOADED, f"overloaded: {len(self.by_id)} transactions pending, the "
                                 f"{limit} this validator takes at the chain's current rate: retry later or "
                                 "elsewhere", 1.0)

    def _make_room(self, key: str, s: _Sender | None, history: bool) -> list[Tx]:
        """Evict one transaction for a newcomer from origin `key` (sender `s`, with committed
        `history` or not), or refuse it: 429 if the newcomer's sender holds the most in its own
        origin, 503 if everyone there holds about as much."""
        mine = self.origins[key].n if key in self.origins else 0
        heavy = self._heaviest_origin()
        if heavy is not None and heavy != key and self.origins[heavy].n > mine + 1:
            # another origin holds more: it gives way, its brand-new senders first
            return [self._evict(self._victim(heavy, prefer_fresh=True))]
        o = self.origins.get(key)
        if o is None:
            raise AdmissionError(Refusal.OVERLOADED, "mempool full: try again later", 1.0)
        if history and o.fresh:
            # a sender with committed history goes before the brand-new senders of its own origin
            return [self._evict(next(reversed(o.fresh)))]
        mine_s = 0 if s is None else len(s.txs)
        victim = self._victim(key, prefer_fresh=False)
        most = len(self.senders[victim].txs)
        if most <= mine_s + 1:
            if mine_s > 1 and mine_s >= most:
                raise AdmissionError(Refusal.RATE_LIMITED, "mempool full: this sender holds the most pending transactions", 1.0)
            raise AdmissionError(Refusal.OVERLOADED, "mempool full: try again later", 1.0)
        return [self._evict(victim)]

    def _victim(self, key: str, prefer_fresh: bool) -> bytes:
        """The sender of origin `key` to lose a transaction: its newest brand-new sender (if
        `prefer_fresh` and it has one), else the sender holding the most (stale heap entries are
        dropped lazily)."""
        o = self.origins[key]
        if prefer_fresh and o.fresh:
            return next(reversed(o.fresh))
        h = o.heavy
        while True:
            neg, addr = h[0]
            s = self.senders.get(addr)
            if s is not None and s.origin == key and len(s.txs) == -neg:
                return addr
            heapq.heappop(h)
            if s is not None and s.origin == key and s.txs:
                heapq.heappush(h, (-len(s.txs), addr))

    def _heaviest_origin(self) -> str | None:
        h = self._heavy_origins
        while h:
            neg, key = h[0]
            o = self.origins.get(key)
            if o is not None and o.n == -neg:
                return key
            heapq.heappop(h)
            if o is not None and o.n:
                heapq.heappush(h, (-o.n, key))
        return None

    # The two lazy heaps get an entry per change of weight and lose stale ones only when read (a full
    # pool), so they are compacted to one entry per sender (origin) once stale entries dominate:
    # otherwise they grew by three entries per transaction for the life of a pool that never fills
    # (2.4 MB in 40 s at 2,400 writes/s).
    def _weigh_sender(self, o: _Origin, addr: bytes, pending: int) -> None:
        h = o.heavy
        heapq.heappush(h, (-pending, addr))
        if len(h) > 4 * len(o.senders) + 1024:
            h[:] = [(-len(self.senders[a].txs), a) for a in o.senders]
            heapq.heapify(h)

    def _weigh_origin(self, key: str, pending: int) -> None:
        h = self._heavy_origins
        heapq.heappush(h, (-pending, key))
        if len(h) > 4 * len(self.origins) + 1024:
            h[:] = [(-o.n, k) for k, o in self.origins.items()]
            heapq.heapify(h)

    def _evict(self, addr: bytes) -> Tx:
        """Drop the newest pending transaction of `addr` (its run stays contiguous)."""
        s = self.senders[addr]
        victim = s.txs[max(s.txs)]
        self._drop_pending(s, victim)
        self.evictions += 1
        return victim

    def discard(self, tx: Tx) -> bool:
        """Drop exactly this pending transaction (its sender's later ones stay, behind a gap until its
        nonce comes again with other bytes); False if it is not pending here."""
        if tx.id not in self.by_id:
            return False
        self._drop_pending(self.senders[tx.address], tx)
        return True

    def _drop_pending(self, s: _Sender, tx: Tx) -> None:
        """Take pending `tx` out of sender `s` and its origin's books (the sender leaves with its last)."""
        del s.txs[tx.nonce]
        s.end = min(s.end, tx.nonce)
        o = self.origins[s.origin]
        self._drop_tx(tx, o)
        o.n -= 1
        if s.txs:
            self._weigh_sender(o, tx.address, len(s.txs))
        else:
            self._forget(tx.address, s)
        self._weigh_origin(s.origin, o.n)

    def withdraw(self, tx: Tx) -> list[Tx]:
        """Drop a pending transaction that cannot be proposed, with every later one of its sender
        (they could never commit behind the gap); returns them, newest first ([] if not pending)."""
        out: list[Tx] = []
        while tx.id in self.by_id:
            out.append(self._evict(tx.address))
            self.evictions -= 1  # not the pool's fair eviction (the metric counts only those)
        return out

    def charge(self, addr: bytes, now: float, n: float = 1.0) -> float:
        """Take n tokens from a sender's bucket outside admission (a standalone upload); 0.0 if
        taken, else the seconds to wait."""
        bucket = self.buckets.get(addr)
        if bucket is None:
            bucket = self.buckets[addr] = TokenBucket(self.rate, self.burst, self.burst, now)
        return bucket.take(now, n)

    def _drop_tx(self, tx: Tx, o: _Origin) -> None:
        del self.by_id[tx.id]
        self.arrived.pop(tx.id, None)
        self._ready_at.pop(tx.id, None)
        self.tx_bytes -= len(tx.raw)
        o.nbytes -= len(tx.raw)
        side = self.sidecars.pop(tx.id, None)
        if side is not None:
            self.sidecar_bytes -= len(side)

    def sidecar(self, txid: bytes) -> bytes | None:
        return self.sidecars.get(txid)

    def _forget(self, addr: bytes, s: _Sender) -> None:
        """A sender with nothing pending leaves the pool and its origin."""
        del self.senders[addr]
        o = self.origins[s.origin]
        o.senders.discard(addr)
        o.fresh.pop(addr, None)
        if not o.senders:
            del self.origins[s.origin]

    def batch(self, max_txs: int, exclude: Container[bytes] = (), max_bytes: int | None = None,
              framing: int = 0) -> list[Tx]:
        """Up to max_txs transactions, round-robin over senders, each sender's contiguous nonce run
        (skipping ids in `exclude`, e.g. those already proposed), and with `max_bytes` at most that
        many bytes, each transaction counted with `framing`: a sender whose next transaction would
        not fit takes no more in this batch. They stay in the pool until committed (remove), so a
        failed round loses nothing."""
        out: list[Tx] = []
        room = max_bytes
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
                if tx is None or tx.id in exclude or (room is not None and len(tx.raw) + framing > room):
                    del cursors[addr]
                    continue
                if room is not None:
                    room -= len(tx.raw) + framing
                out.append(tx)
                cursors[addr] = n + 1
                if len(out) >= max_txs:
                    break
        return out

    def placed(self, addr: bytes, upto: int | None = None) -> float | None:
        """When sender `addr` took its place in the proposal order (the clock admit and remove are
        given), None if nothing of it is pending here. With `upto`, the place it held once the blocks
        up to that height had committed (a primary proposing a block while the blocks before it are
        in flight batches by the order before their commits moved anyone; the earliest place
        remembered if every one kept came later)."""
        s = self.senders.get(addr)
        if s is not None:
            if upto is None or s.placings is None:
                return s.placed
            placings = s.placings
        else:
            emptied = self._emptied.get(addr)
            if emptied is None or upto is None or upto >= emptied[0]:
                return None
            # it left the pool at block h's commit and nothing of it came since: up to h - 1 it held its
            # place (its next transaction may be on its way here)
            placings = emptied[1]
        return next((t for height, t in reversed(placings) if height <= upto), placings[0][1])

    def pending_from(self, tx: Tx) -> list[Tx]:
        """The pending transactions of tx's sender from tx's nonce on."""
        s = self.senders.get(tx.address)
        return [] if s is None else [t for n, t in sorted(s.txs.items()) if n >= tx.nonce]

    def origin_of(self, addr: bytes) -> str | None:
        """The origin a pending sender is counted in (None: nothing pending)."""
        s = self.senders.get(addr)
        return None if s is None else s.origin

    def first_pending(self, addr: bytes) -> Tx | None:
        """The sender's pending transaction with the lowest nonce, if any."""
        s = self.senders.get(addr)
        return None if s is None or not s.txs else s.txs[min(s.txs)]

    def pending(self, addr: bytes, nonce: int) -> Tx | None:
        """The transaction pending for this sender's nonce, if any."""
        s = self.senders.get(addr)
        return None if s is None else s.txs.get(nonce)

    def _now_ready(self, addr: bytes, tx: Tx) -> None:
        """tx can execute now: it joins the ready ones, in the order of when it became ready (its
        arrival, or now if it waited behind a gap: a transaction forwarded early and made ready
        later must not step in front of one that has waited ready all along). A write without its
        blob here (a bare dag-pb forward) is not kept in order: the censorship watch skips those,
        and a few of them at the front must not hide the rest."""
        if tx.kind == KIND_WRITE and tx.id not in self.sidecars:
            return
        at = self._ready_at[tx.id] = max(self.arrived[tx.id], self._clock)
        self._ready_k += 1
        heapq.heappush(self._ready, (at, self._ready_k, addr, tx.nonce))
        if len(self._ready) > 2 * len(self.senders) + 1024:  # stale entries piled up under a live top
            self._ready = [(at, k, a, t.nonce) for k, (a, sd) in enumerate(self.senders.items())
                           if (t := sd.txs.get(sd.base)) is not None and (at := self._ready_at.get(t.id)) is not None]
            heapq.heapify(self._ready)

    def longest_waiting(self, limit: int = 8) -> list[tuple[Tx, float]]:
        """Up to `limit` transactions that can execute now (each its sender's next nonce), those
        ready here first first, with when they became ready. Senders whose run starts past a gap (a
        forward ahead of its predecessors) are not in the way: only ready ones are kept in order."""
        out: list[tuple[Tx, float]] = []
        keep: list[tuple[float, int, bytes, int]] = []
        h = self._ready
        while h and len(out) < limit:
            entry = heapq.heappop(h)
            t, _, addr, nonce = entry
            s = self.senders.get(addr)
            tx = None if s is None or s.base != nonce else s.txs.get(nonce)
            if tx is not None and self._ready_at.get(tx.id) == t:
                out.append((tx, t))
                keep.append(entry)
        for entry in keep:
            heapq.heappush(h, entry)
        return out

    def gapped(self, before: float) -> list[bytes]:
        """Senders whose pending transactions all wait behind a gap (forwarded ahead of the sender's
        next nonce, which never came here) and arrived before `before`."""
        out = []
        for addr, s in self.senders.items():
            if s.base not in s.txs and min(self.arrived.get(t.id, 0.0) for t in s.txs.values()) < before:
                out.append(addr)
        return out

    def settle(self, addr: bytes, committed_nonce: int) -> list[Tx]:
        """Drop the sender's transactions the chain has passed (committed with other bodies, as after
        a state transfer that no block delivery told the pool about); returns them."""
        s = self.senders.get(addr)
        if s is None or s.base > committed_nonce:
            return []
        return self._advance(addr, s, committed_nonce + 1)

    def _advance(self, addr: bytes, s: _Sender, base: int) -> list[Tx]:
        """Drop the sender's transactions below nonce `base` (committed, or superseded by another
        transaction with the same nonce that committed); returns them."""
        gone = [n for n in s.txs if n < base]
        o = self.origins[s.origin]
        dropped = [s.txs.pop(n) for n in gone]
        for tx in dropped:
            self._drop_tx(tx, o)
        s.base = base
        if base in s.txs:
            self._now_ready(addr, s.txs[base])
        o.n -= len(gone)
        o.fresh.pop(addr, None)  # it has committed history now
        if gone:
            self._weigh_origin(s.origin, o.n)
        if not s.txs:
            self._forget(addr, s)
        return dropped

    def remove(self, txs: list[Tx], now: float | None = None, height: int = -1) -> list[Tx]:
        """Drop committed transactions and any others for the same nonces; returns those others (each
        superseded: another transaction of its sender took its nonce). `height`: of the block they
        committed in (a sender with more pending takes its place at the end of the order by it)."""
        if now is not None:
            self._clock = max(self._clock, now)  # when the next ones of these senders become ready
        top: dict[bytes, int] = {}
        for tx in txs:
            top[tx.address] = max(top.get(tx.address, 0), tx.nonce)
        dropped: list[Tx] = []
        for addr, nonce in top.items():
            s = self.senders.get(addr)
            if s is not None and nonce >= s.base:
                dropped += self._advance(addr, s, nonce + 1)
                if addr in self.senders:
                    self.senders.move_to_end(addr)
                    self._placed_anew(s, height, self._clock)
                elif height >= 0:  # its last pending one committed: its places are kept a few blocks
                    self._emptied.pop(addr, None)
                    self._emptied[addr] = (height, s.placings or [(-1, s.placed)])
        if height >= 0:
            while self._emptied and next(iter(self._emptied.values()))[0] < height - PLACINGS:
                self._emptied.popitem(last=False)
        ids = {tx.id for tx in txs}
        return [tx for tx in dropped if tx.id not in ids]

    @staticmethod
    def _placed_anew(s: _Sender, height: int, t: float) -> None:
        """Sender `s` takes its place at the end of the order at `t`, by the commit of block `height`."""
        if s.placings is None:
            s.placings = [(-1, s.placed)]
        s.placings.append((height, t))
        if len(s.placings) > PLACINGS:
            del s.placings[0]
        s.placed = t

    def prune_buckets(self, now: float) -> None:
        """Forget full buckets of idle senders so memory stays bounded by active senders."""
        for addr in [a for a, b in self.buckets.items() if a not in self.senders and
                     b.tokens + (now - b.stamp) * b.rate >= b.burst]:
            del self.buckets[addr]
