"""PBFT's request timer, for a primary that censors (sans-IO: driven by the replica).

The view timer (node/consensus/viewchange.py) runs while work waits and stops at each delivered block
that carries transactions. A byzantine primary proposing full-enough blocks of other senders' work,
and leaving one transaction out for ever (a patient's revoke, say), is never suspected by it. PBFT
keeps a timer per waiting request; here one transaction is watched at a time: the one the driver
offers (the head of the pool's longest-waiting sender, still valid on the chain's state).

Once the watched transaction has been in this pool for the grace (long enough to have reached the
primary, re-forwarded to it if a forward was lost: node/admission.py REFORWARD_S; longer while the
recent watched transactions took longer to commit: an overloaded primary is slow, not faulty), every block
proposed after that moment (a sequence above the highest one known then) that had room for it and
leaves it out is a skip. After `skips` of them the primary's blocks stop counting as progress here:
the view timer runs out and this replica says SUSPECT as for a silent primary. Every honest replica
holds the transaction (forwarded to all), so 2f+1 come to suspect the view together. A new view
starts the grace again; the transaction's delivery, or its leaving the pool, ends the watch.

An honest primary leaves a ready transaction out of a block with room only if it does not hold it
(both forwards lost) or holds back a write whose blob it is still fetching: the grace and the count of
skips cover both.

A block full by count is no skip by room, so a byzantine primary could fill every block with its own
Sybil senders' transactions. An honest primary batches round-robin over its senders in the order
they took their place (node/mempool.py `batch`: on arrival, or moved to the end by a commit), so a
block it fills by count in the first round without the watched transaction holds only senders placed
before the watched one's (in the order before the commits of the blocks it had in flight: the driver
asks for the place as it was then). Here those were placed by the watched one's arrival plus
forwarding delays; so a full block (with bytes to spare for it) whose transactions are mostly of
senders this replica placed more than a grace after the watched one's arrival, or does not hold at
all, is a skip too. A Sybil filler must then have its senders placed here early, each usable only
until a commit places it anew (in the blocks proposed before that commit: at most PIPELINE of them),
as many as the pools take (the pool's bound, the forwarding validator's origin evicted first).
"""

from __future__ import annotations

from collections.abc import Callable

from node.block import TX_FRAMING, TXS_MAX_BYTES, Block, txs_bytes

GRACE_MS = 6_000  # REFORWARD_S (5 s) and a second: a lost forward has been sent to the primary again
SKIPS = 3


class CensorWatch:
    """One watched transaction (raw bytes) and the blocks that left it out with room for it."""

    __slots__ = ("grace_ms", "horizon", "max_bytes", "max_txs", "pace_ms", "placed_ages", "since", "skipped",
                 "skips", "target", "view", "view_since")

    def __init__(self, max_txs: int, max_bytes: int = TXS_MAX_BYTES, grace_ms: int = GRACE_MS,
                 skips: int = SKIPS) -> None:
        self.max_txs, self.max_bytes, self.grace_ms, self.skips = max_txs, max_bytes, grace_ms, skips
        self.target: bytes | None = None
        self.since = 0  # when the watched transaction arrived in this replica's pool
        self.view = -1
        self.view_since = 0  # when this replica entered the view (its NEW-VIEW installed)
        self.horizon: int | None = None  # the highest sequence proposed that was known when the grace ran out
        self.skipped = 0
        self.pace_ms = 0.0  # recent time from a watched transaction's grace starting to its delivery
        # the driver's: for each transaction of the block at a sequence, its sender and how long ago (ms)
        # this replica's pool placed it in its proposal order, as it was when that block could be
        # proposed (None: nothing of it pending here, or it executed without taking its nonce). None:
        # full blocks are never judged
        self.placed_ages: Callable[[Block, int], list[tuple[bytes, int | None]]] | None = None

    @property
    def censoring(self) -> bool:
        """Whether the primary left the watched transaction out often enough to lose its progress."""
        return self.skipped >= self.skips

    @property
    def armed_at(self) -> int:
        """When the grace started: the transaction's arrival here, or the view's start if later (a new
        primary gets the whole grace)."""
        return max(self.since, self.view_since)

    def offer(self, raw: bytes | None, since_ms: int = 0) -> None:
        """The transaction to watch now (None: nothing ready waits) and when it arrived here. Its grace
        runs from its arrival, so which one is watched (the longest waiting) changing does not
        restart any clock; the same one offered again keeps its count."""
        if raw != self.target:
            self.target, self.since, self.horizon, self.skipped = raw, since_ms, None, 0

    def tick(self, now_ms: int, view: int, changing: bool, known_seq: Callable[[], int]) -> None:
        """Time passes in `view` (`changing`: a view change is under way, no primary is working);
        `known_seq()`: the highest sequence with a proposal this replica knows."""
        if changing:
            return  # the next primary's grace starts when its view is installed
        if view != self.view:
            self.view, self.view_since, self.horizon, self.skipped = view, now_ms, None, 0
        if self.target is not None and self.horizon is None and now_ms - self.armed_at >= self.grace:
            self.horizon = known_seq()

    @property
    def grace(self) -> int:
        """GRACE_MS, or 4x the recent time from a watched transaction's grace starting to its
        delivery if that is longer (an overloaded validator takes seconds to admit what it is
        forwarded, and may drop a forward to be sent again), at most 8x: as the view timer adapts to
        the pace of deliveries. A primary can stretch it so to 48 s, no further."""
        return min(max(self.grace_ms, 4 * int(self.pace_ms)), 8 * self.grace_ms)

    def delivered(self, seq: int, block: Block, now_ms: int) -> None:
        """A block was delivered: it carries the watched transaction (the watch ends), or it left it
        out though proposed after the grace with room for it (a skip), or neither."""
        if self.target is None:
            return
        if self.target in block.txs:
            self.pace_ms = 0.7 * self.pace_ms + 0.3 * min(max(0, now_ms - self.armed_at), 8 * self.grace_ms)
            self.target, self.horizon, self.skipped = None, None, 0
            return
        if self.horizon is None or seq <= self.horizon or block.header.view != self.view:
            return
        if txs_bytes(block.txs) + len(self.target) + TX_FRAMING > self.max_bytes:
            return  # full by bytes: no room for it
        if len(block.txs) < self.max_txs or self._filled_late(seq, block, now_ms):
            self.skipped += 1

    def _filled_late(self, seq: int, block: Block, now_ms: int) -> bool:
        """Whether most of a block full by count are of senders placed here more than a grace after
        the watched transaction's arrival, or not held here, or are a sender's second transaction in
        it: an honest primary's first round of its batch, one transaction a sender, would have
        reached the watched one before them."""
        if self.placed_ages is None:
            return False
        try:
            places = self.placed_ages(block, seq)
        except Exception:  # noqa: BLE001 - the driver's question must never break a delivery
            return False
        late_after = self.armed_at + self.grace
        late = 0
        senders: set[bytes] = set()
        for who, age in places:
            if who in senders:
                late += 1
                continue
            senders.add(who)
            late += age is None or now_ms - age > late_after
        return 2 * late > len(places)
