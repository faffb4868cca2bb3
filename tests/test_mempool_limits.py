"""The mempool's limits at their exact edges, what each refusal tells the client, and the
bookkeeping behind them (sidecar bytes, origins, the lazy heaps, the token buckets).

These are the rules a hostile client meets first: each refusal must say what was refused, of
which kind (the API's HTTP status follows from it) and when to retry."""

from __future__ import annotations

import pytest

from node.block import TX_FRAMING, TXS_MAX_BYTES
from node.crypto.keys import Identity
from node.mempool import MAX_FORWARD_GAP, AdmissionError, KeyedLimiter, Mempool, Refusal, TokenBucket
from node.tx import Tx
from node.wire import MAX_BLOCK_BYTES
from tests.large_txs import big_grants
from tests.test_mempool import CHAIN, A, B, C, big_pool, pending, tx


def ident(i: int) -> Identity:
    return Identity.from_seed(b"limits-%d" % i)


def refusal(mp: Mempool, t: Tx, committed: int = 0, now: float = 0.0, **kw: object) -> AdmissionError:
    with pytest.raises(AdmissionError) as ei:
        mp.admit(t, committed, now, **kw)  # type: ignore[arg-type]
    return ei.value


def said(e: AdmissionError) -> tuple[Refusal, str, float | None]:
    return e.kind, e.reason, e.retry_after


# ---- what each refusal says ----

def test_the_per_sender_cap_says_how_many_and_to_retry_in_a_second():
    mp = big_pool(max_per_sender=2)
    mp.admit(tx(A, 1), 0, 0.0)
    mp.admit(tx(A, 2), 0, 0.0)
    assert said(refusal(mp, tx(A, 3))) == (Refusal.RATE_LIMITED, "rate limited: 2 transactions already pending", 1.0)


def test_sidecar_bytes_are_bounded_to_the_byte_and_released_with_their_write():
    mp = big_pool(max_sidecar_bytes=100)
    t1, t2, t3 = tx(A, 1), tx(B, 1), tx(C, 1)
    mp.admit(t1, 0, 0.0, sidecar=b"a" * 60)
    mp.admit(t2, 0, 0.0, sidecar=b"b" * 40)  # exactly at the bound
    assert mp.sidecar_bytes == 100 and mp.sidecar(t1.id) == b"a" * 60 and mp.sidecar(t2.id) == b"b" * 40
    assert mp.by_id[t1.id] is t1  # the validator re-forwards pending transactions from here
    e = refusal(mp, t3, sidecar=b"c")
    assert said(e) == (Refusal.OVERLOADED, "mempool full: 100 bytes of sidecars pending", 1.0)
    assert t3.id not in mp and mp.sidecar(t3.id) is None and mp.sidecar_bytes == 100
    mp.remove([t1])  # committed: its sidecar's bytes are free again
    assert mp.sidecar_bytes == 40 and mp.sidecar(t1.id) is None
    mp.admit(t3, 0, 0.0, sidecar=b"c" * 60)
    assert mp.sidecar_bytes == 100 and mp.sidecar(t3.id) == b"c" * 60


def test_an_evicted_write_frees_its_sidecar_bytes():
    mp = big_pool(capacity=2, max_sidecar_bytes=1000)
    mp.admit(tx(A, 1), 0, 0.0, origin="heavy", sidecar=b"x" * 300)
    mp.admit(tx(A, 2), 0, 0.0, origin="heavy", sidecar=b"y" * 200)
    evicted = mp.admit(tx(B, 1), 0, 0.0, origin="light", sidecar=b"z" * 10)
    assert [(t.address, t.nonce) for t in evicted] == [(A.address, 2)]
    assert mp.sidecar_bytes == 310 and mp.sidecar(evicted[0].id) is None


def test_a_full_pool_with_nobody_heavier_says_try_again_later():
    mp = big_pool(capacity=2)
    mp.admit(tx(A, 1), 0, 0.0, origin="x")
    mp.admit(tx(B, 1), 0, 0.0, origin="y")
    # from a third origin: x and y hold one each, not more than its 0 + 1
    assert said(refusal(mp, tx(C, 1), origin="z")) == (Refusal.OVERLOADED, "mempool full: try again later", 1.0)
    # from x itself: its one sender holds one, as the newcomer would
    assert said(refusal(mp, tx(C, 1), origin="x")) == (Refusal.OVERLOADED, "mempool full: try again later", 1.0)


def test_a_pool_of_no_capacity_refuses_everything_as_overloaded():
    e = refusal(big_pool(capacity=0), tx(A, 1))
    assert (e.kind, e.retry_after) == (Refusal.OVERLOADED, 1.0)


def test_the_sender_holding_the_most_is_told_it_is_the_one():
    mp = big_pool(capacity=4)
    for n in (1, 2, 3):
        mp.admit(tx(A, n), 0, 0.0, origin="x")
    mp.admit(tx(B, 1), 0, 0.0, origin="x")
    assert said(refusal(mp, tx(A, 4), origin="x")) == (
        Refusal.RATE_LIMITED, "mempool full: this sender holds the most pending transactions", 1.0)


def test_the_backlog_bound_refusal_says_retry_later_or_elsewhere():
    mp = big_pool(capacity=100, origin_share=0.5)
    for i in range(4):
        mp.admit(tx(ident(i), 1), 0, 0.0, origin="flood", limit=100)
    assert said(refusal(mp, tx(ident(9), 1), origin="flood", limit=4)) == (
        Refusal.OVERLOADED, "overloaded: 4 transactions pending, the 4 this validator takes at the chain's "
        "current rate: retry later or elsewhere", 1.0)


def test_an_origin_without_an_address_is_named_as_unknown():
    mp = big_pool(capacity=4, origin_share=0.5)
    mp.admit(tx(A, 1), 0, 0.0)
    mp.admit(tx(B, 1), 0, 0.0)
    e = refusal(mp, tx(C, 1))
    assert e.kind == Refusal.RATE_LIMITED and e.reason.startswith("rate limited: client ? holds its share")


# ---- edges ----

def test_a_forwarded_transaction_may_run_exactly_the_gap_ahead():
    mp = big_pool()
    mp.admit(tx(A, 5 + MAX_FORWARD_GAP), 5, 0.0, forwarded=True)
    e = refusal(mp, tx(B, 6 + MAX_FORWARD_GAP), 5, forwarded=True)
    assert e.kind == Refusal.CONFLICT and e.expected == 6


def test_a_commit_seen_at_admission_drops_the_committed_transaction():
    mp = big_pool()
    mp.admit(tx(A, 1), 0, 0.0, origin="x")
    mp.admit(tx(B, 1), 0, 0.0, origin="x")
    mp.admit(tx(A, 2), 1, 0.0, origin="x")  # nonce 1 committed meanwhile
    assert len(mp) == 2 and pending(mp, A) == [2]
    assert list(mp.origins["x"].fresh) == [B.address]  # A has history now


def test_the_share_of_the_backlog_bound_is_at_least_one_transaction():
    """With a bound of 2 and a share of a half, an origin holding one transaction holds its share."""
    mp = big_pool(capacity=100, origin_share=0.5)
    mp.admit(tx(A, 1), 0, 0.0, origin="x", limit=100)
    mp.admit(tx(B, 1), 0, 0.0, origin="y", limit=100)
    assert refusal(mp, tx(C, 1), origin="x", limit=2).kind == Refusal.OVERLOADED
    mp.admit(tx(C, 1), 0, 0.0, origin="z", limit=3)  # an origin holding none, under twice the bound


def test_at_capacity_the_heavier_origin_gives_way_even_beyond_the_backlog_bound():
    """At capacity the fair eviction decides, not the bound: a light origin's transaction evicts
    the heaviest origin's newest (the bound refuses only below capacity)."""
    mp = big_pool(capacity=4)
    for n in (1, 2, 3, 4):
        mp.admit(tx(A, n), 0, 0.0, forwarded=True, origin="peer:1")
    evicted = mp.admit(tx(B, 1), 0, 0.0, origin="10.0.0.9", limit=2)
    assert [(t.address, t.nonce) for t in evicted] == [(A.address, 4)]


@pytest.mark.parametrize("heavy_n, evicts", [(3, True), (2, False)])
def test_another_origin_gives_way_only_when_it_holds_two_more(heavy_n, evicts):
    mp = big_pool(capacity=heavy_n + 1)
    for n in range(1, heavy_n + 1):
        mp.admit(tx(A, n), 0, 0.0, origin="heavy")
    mp.admit(tx(B, 1), 0, 0.0, origin="mine")  # the newcomer's origin holds one
    if evicts:
        evicted = mp.admit(tx(C, 1), 0, 0.0, origin="mine")
        assert [(t.address, t.nonce) for t in evicted] == [(A.address, heavy_n)]
    else:
        assert refusal(mp, tx(C, 1), origin="mine").kind == Refusal.OVERLOADED and len(mp) == heavy_n + 1


def test_a_new_origin_evicts_from_one_holding_two():
    mp = big_pool(capacity=2)
    mp.admit(tx(A, 1), 0, 0.0, origin="heavy")
    mp.admit(tx(A, 2), 0, 0.0, origin="heavy")
    evicted = mp.admit(tx(B, 1), 0, 0.0, origin="new")
    assert [(t.address, t.nonce) for t in evicted] == [(A.address, 2)]


def test_one_committed_transaction_is_history():
    """A sender with one committed transaction goes before its origin's brand-new senders: the
    newest brand-new sender gives way, not the one holding the most."""
    mp = big_pool(capacity=3)
    f1, f2 = ident(1), ident(2)
    mp.admit(tx(f1, 1), 0, 0.0, origin="x")
    mp.admit(tx(f1, 2), 0, 0.0, origin="x")
    mp.admit(tx(f2, 1), 0, 0.0, origin="x")
    evicted = mp.admit(tx(A, 2), 1, 0.0, origin="x")
    assert [(t.address, t.nonce) for t in evicted] == [(f2.address, 1)]


# ---- the lazy heaps ----

def test_the_heaviest_origin_is_found_past_stale_heap_entries():
    """The origins' heap is lazy: an origin that left the pool, or shrank by commits, leaves stale
    entries above the live ones, and the search must pass them to the one that holds the most."""
    mp = big_pool(capacity=4)
    gone = [tx(C, n) for n in (1, 2, 3, 4)]
    for t in gone:
        mp.admit(t, 0, 0.0, origin="left")
    mp.remove(gone)  # committed: the origin is gone, its heap entries stale
    xs = [tx(A, n) for n in (1, 2, 3)]
    for t in xs:
        mp.admit(t, 0, 0.0, origin="x")
    mp.remove(xs[:2])  # x shrank from 3 to 1
    mp.admit(tx(B, 1), 0, 0.0, origin="y")
    mp.admit(tx(B, 2), 0, 0.0, origin="y")  # y holds 2, the most
    mp.admit(tx(ident(1), 1), 0, 0.0, origin="z")
    evicted = mp.admit(tx(ident(2), 1), 0, 0.0, origin="new")
    assert [(t.address, t.nonce) for t in evicted] == [(B.address, 2)]


def test_the_heaviest_sender_is_found_after_its_heap_was_compacted_and_it_committed():
    """An origin's heap of senders is compacted after enough entries; a sender whose count then
    fell by commits has only stale entries left, and the search must still find it."""
    mp = big_pool(capacity=100_000, max_per_sender=2000)
    txs = [tx(A, n) for n in range(1, 1101)]
    for t in txs:
        mp.admit(t, 0, 0.0, origin="x")
    mp.remove(txs[:1099])
    assert mp._victim("x", prefer_fresh=False) == A.address


def test_the_sender_heap_is_compacted_at_its_bound_and_still_finds_the_heaviest():
    mp = big_pool(capacity=100_000)
    for n in (1, 2, 3):
        mp.admit(tx(B, n), 0, 0.0, origin="x")  # stays pending: the origin lives on
    o = mp.origins["x"]
    for n in range(1, 1100):
        t = tx(A, n)
        mp.admit(t, n - 1, 0.0, origin="x")
        assert len(o.heavy) <= 4 * len(o.senders) + 1024
        mp.remove([t])
    mp.admit(tx(A, 1100), 1099, 0.0, origin="x")
    assert mp._victim("x", prefer_fresh=False) == B.address  # B holds 3, A 1


def test_the_origin_heap_is_compacted_at_its_bound_and_still_finds_the_heaviest():
    mp = big_pool(capacity=100_000)
    for n in (1, 2, 3):
        mp.admit(tx(B, n), 0, 0.0, origin="y")
    for n in range(1, 1100):
        t = tx(A, n)
        mp.admit(t, n - 1, 0.0, origin="x")
        assert len(mp._heavy_origins) <= 4 * 2 + 1024  # two origins at most when it is pushed to
        mp.remove([t])
        assert len(mp._heavy_origins) <= 4 * 2 + 1024
    mp.admit(tx(A, 1100), 1099, 0.0, origin="x")
    assert mp._heaviest_origin() == "y"


# ---- token buckets ----

def test_a_penalty_drains_a_new_key_from_full_and_into_a_bounded_debt():
    lim = KeyedLimiter(rate=2.0, burst=10.0)
    lim.penalise("ip", 0.0, 4.0)
    assert (lim.buckets["ip"].tokens, lim.buckets["ip"].stamp) == (6.0, 0.0)
    lim.penalise("ip", 1.0, 100.0)  # refilled by 2 first, then into debt, at most one burst deep
    assert (lim.buckets["ip"].tokens, lim.buckets["ip"].stamp) == (-10.0, 1.0)
    assert lim.take("ip", 1.0) == pytest.approx(11.0 / 2.0)


def test_drain_refills_before_it_takes():
    b = TokenBucket(rate=2.0, burst=10.0, tokens=0.0, stamp=0.0)
    b.drain(3.0, 1.0)
    assert (b.tokens, b.stamp) == (5.0, 3.0)


def test_a_bucket_is_full_exactly_when_its_refill_reaches_the_burst():
    b = TokenBucket(rate=4.0, burst=10.0, tokens=2.0, stamp=1.0)
    assert not b.full(2.99) and b.full(3.0)


def test_a_limiter_never_holds_more_keys_than_its_bound_and_forgets_the_least_recent():
    lim = KeyedLimiter(rate=1.0, burst=5.0, max_keys=2)
    lim.take("a", 0.0, 5.0)
    lim.take("b", 0.0, 5.0)
    lim.take("a", 0.0, 0.0)  # a is the most recently used; neither bucket is full
    lim.take("c", 0.0)
    assert list(lim.buckets) == ["a", "c"]


def test_an_upload_is_charged_to_its_sender_s_bucket():
    mp = Mempool(rate=2.0, burst=4.0)
    assert mp.charge(A.address, 0.0, 3.0) == 0.0
    assert mp.charge(A.address, 0.0) == 0.0
    assert mp.charge(A.address, 0.0) == pytest.approx(0.5)  # its bucket is empty: 1 token at 2/s
    assert mp.charge(B.address, 0.0, 4.0) == 0.0  # another sender has its own
    assert mp.charge(A.address, 1.0, 2.0) == 0.0  # refilled by time
    e = refusal(mp, tx(A, 1), now=1.0)  # admission draws on the same bucket
    assert e.kind == Refusal.RATE_LIMITED and e.retry_after == pytest.approx(0.5)


# ---- batches ----

def test_a_batch_stops_at_the_block_byte_budget():
    """block_max_txs counts transactions; a block of the largest ones would be over the 8 MiB every
    replica decodes (tests/test_block_bytes.py), so a batch also stops at a byte budget."""
    staff = Identity.from_seed(b"staff").address
    pool = big_pool(capacity=10_000)
    txs = [t for p in range(4) for t in big_grants(Identity.from_seed(b"p%d" % p), staff, "mempool-test", 1, 400)]
    for t in txs:
        pool.admit(t, 0, 0.0)
    size = len(txs[0].raw)
    assert sum(len(t.raw) for t in txs) > MAX_BLOCK_BYTES + 4 * 1024 * 1024
    batch = pool.batch(2000, max_bytes=TXS_MAX_BYTES, framing=TX_FRAMING)
    total = sum(len(t.raw) + TX_FRAMING for t in batch)
    assert total <= TXS_MAX_BYTES < total + size + TX_FRAMING  # full: the next one would not have fitted
    assert TXS_MAX_BYTES < MAX_BLOCK_BYTES
    by_sender: dict[bytes, list[int]] = {}  # still round-robin, each sender's run contiguous from its base
    for t in batch:
        by_sender.setdefault(t.address, []).append(t.nonce)
    assert len(by_sender) == 4 and all(ns == list(range(1, len(ns) + 1)) for ns in by_sender.values())
    assert max(map(len, by_sender.values())) - min(map(len, by_sender.values())) <= 1
    rest = pool.batch(2000, {t.id for t in batch}, TXS_MAX_BYTES, TX_FRAMING)  # the next block's
    assert rest and not {t.id for t in rest} & {t.id for t in batch}
    assert pool.batch(2000, max_bytes=size - 1) == []  # under one transaction: empty, never oversized


def test_a_batch_counts_exact_bytes_without_framing_and_each_one_with_it():
    pool = big_pool()
    txs = [tx(A, 1), tx(A, 2), tx(A, 3)]
    for t in txs:
        pool.admit(t, 0, 0.0)
    two = len(txs[0].raw) + len(txs[1].raw)
    assert pool.batch(10, max_bytes=two) == txs[:2]  # exactly full
    assert pool.batch(10, max_bytes=two - 1) == txs[:1]
    assert pool.batch(10, max_bytes=two + 10, framing=5) == txs[:2]
    assert pool.batch(10, max_bytes=two + 9, framing=5) == txs[:1]


def test_a_sender_whose_next_transaction_does_not_fit_lets_the_others_go_first():
    """Round-robin goes on past a sender that no longer fits: the senders after it in the round get
    their turn before those before it get a second."""
    pool = big_pool()
    small_w, small_y = [tx(A, 1), tx(A, 2)], [tx(C, 1)]
    big = big_grants(B, A.address, "mempool-test", 1, 1)
    for t in (*small_w, *big, *small_y):
        pool.admit(t, 0, 0.0)
    room = sum(len(t.raw) for t in (*small_w, *small_y))
    assert pool.batch(2, max_bytes=room) == [small_w[0], small_y[0]]


def test_a_batch_never_passes_an_excluded_transaction_in_a_sender_s_run():
    """Already proposed ones are skipped at the start of a run; one excluded further on ends the
    sender's run for this batch (its later nonces cannot go before it)."""
    pool = big_pool()
    a = [tx(A, n) for n in (1, 2, 3)]
    for t in a:
        pool.admit(t, 0, 0.0)
    assert pool.batch(10, {a[0].id}) == a[1:]
    assert pool.batch(10, {a[1].id}) == a[:1]


# ---- the pool's own defaults and clamps ----

def test_a_sender_may_hold_1024_pending_by_default():
    mp = big_pool()
    for n in range(1, 1025):
        mp.admit(tx(A, n), 0, 0.0)
    assert refusal(mp, tx(A, 1025)).kind == Refusal.RATE_LIMITED


def test_a_limiter_holds_at_most_65536_keys_by_default():
    lim = KeyedLimiter(rate=1.0, burst=2.0)
    for k in range(65_537):
        lim.take(k, 0.0)
    assert len(lim.buckets) == 65_536


def test_an_origin_s_share_of_a_tiny_pool_is_one_transaction():
    mp = big_pool(capacity=2, origin_share=0.5)
    mp.admit(tx(A, 1), 0, 0.0, origin="x")
    e = refusal(mp, tx(B, 1), origin="x")
    assert (e.kind, e.retry_after) == (Refusal.RATE_LIMITED, 1.0)
    assert e.reason == "rate limited: client x holds its share of the mempool (1 pending transactions)"


def test_a_share_above_one_counts_as_the_whole_backlog_bound():
    mp = big_pool(capacity=100, origin_share=1.5)
    for n in (1, 2, 3, 4):
        mp.admit(tx(ident(n), 1), 0, 0.0, origin="x", limit=100)
    assert refusal(mp, tx(A, 1), origin="x", limit=4).kind == Refusal.OVERLOADED


def test_buckets_refilled_to_full_are_pruned_and_others_kept():
    mp = Mempool(rate=10.0, burst=10.0)
    mp.charge(A.address, 1000.0, 10.0)  # emptied at t = 1000
    mp.charge(B.address, 1000.0, 10.0)
    mp.prune_buckets(1000.5)  # half refilled
    assert set(mp.buckets) == {A.address, B.address}
    mp.prune_buckets(1001.0)
    assert not mp.buckets


def test_the_heaviest_sender_of_an_origin_gives_way_whatever_the_addresses():
    """Whichever sender's heap entry is read first, the one holding the most loses its newest."""
    light, heavy = sorted([A, B], key=lambda i: i.address)  # the lighter one sorts first
    mp = big_pool(capacity=8)
    for n in (1, 2, 3):
        mp.admit(tx(light, n), 0, 0.0, origin="o")
    for n in (1, 2, 3, 4, 5):
        mp.admit(tx(heavy, n), 0, 0.0, origin="o")
    evicted = mp.admit(tx(C, 1), 0, 0.0, origin="o")
    assert [(t.address, t.nonce) for t in evicted] == [(heavy.address, 5)]


# ---- the pool's transaction bytes (limits.mempool_mb) ----

def test_transaction_bytes_are_bounded_to_the_byte_for_everyone_and_say_retry():
    t1, t2, t3 = tx(A, 1), tx(B, 1), tx(C, 1)
    mp = big_pool(max_tx_bytes=len(t1.raw) + len(t2.raw))
    mp.admit(t1, 0, 0.0)
    mp.admit(t2, 0, 0.0, forwarded=True)
    assert mp.tx_bytes == mp.max_tx_bytes
    for kw in ({}, {"forwarded": True}):  # a peer's batch meets the bound too: it is this node's memory
        assert said(refusal(mp, t3, **kw)) == (
            Refusal.OVERLOADED, f"mempool full: {mp.max_tx_bytes} bytes of transactions pending", 1.0)
    assert t3.id not in mp and mp.tx_bytes == mp.max_tx_bytes
    mp.remove([t1])  # committed: its bytes are free again
    assert mp.tx_bytes == len(t2.raw)
    mp.admit(t3, 0, 0.0)
    assert mp.tx_bytes == len(t2.raw) + len(t3.raw)


def test_one_byte_short_is_refused_and_exactly_full_is_not():
    t1 = tx(A, 1)
    assert refusal(big_pool(max_tx_bytes=len(t1.raw) - 1), t1).kind is Refusal.OVERLOADED
    mp = big_pool(max_tx_bytes=len(t1.raw))
    mp.admit(t1, 0, 0.0)
    assert mp.tx_bytes == len(t1.raw)


def test_an_evicted_transaction_frees_its_bytes_and_its_origin_s():
    mp = big_pool(capacity=2)
    heavy1, heavy2, light = tx(A, 1), tx(A, 2), tx(B, 1)
    mp.admit(heavy1, 0, 0.0, origin="heavy")
    mp.admit(heavy2, 0, 0.0, origin="heavy")
    evicted = mp.admit(light, 0, 0.0, origin="light")
    assert evicted == [heavy2]
    assert mp.tx_bytes == len(heavy1.raw) + len(light.raw)
    assert mp.origins["heavy"].nbytes == len(heavy1.raw) and mp.origins["light"].nbytes == len(light.raw)


def test_a_client_origin_holds_at_most_its_share_of_the_bytes_and_a_peer_is_not_held_to_it():
    grants = [big_grants(ident(10 + k), bytes(32), CHAIN, 1, 1)[0] for k in range(5)]  # ~8.7 KB each
    size = len(grants[0].raw)
    assert all(len(g.raw) == size for g in grants)
    mp = big_pool(max_tx_bytes=5 * size, origin_share=0.5)
    assert mp.max_origin_bytes == int(2.5 * size)
    mp.admit(grants[0], 0, 0.0, origin="10.0.0.1")
    mp.admit(grants[1], 0, 0.0, origin="10.0.0.1")
    assert said(refusal(mp, grants[2], origin="10.0.0.1")) == (
        Refusal.RATE_LIMITED, "rate limited: client 10.0.0.1 holds its share of the mempool "
        f"({2 * size} of {int(2.5 * size)} bytes pending)", 1.0)
    mp.admit(grants[2], 0, 0.0, origin="10.0.0.2")  # another client still gets in
    mp.admit(grants[3], 0, 0.0, origin="peer:x", forwarded=True)  # a peer's batch is not held to a client share
    mp.admit(grants[4], 0, 0.0, origin="peer:x", forwarded=True)
    assert mp.tx_bytes == 5 * size and mp.origins["peer:x"].nbytes == 2 * size


def test_byte_bookkeeping_matches_what_is_pending_through_admits_evictions_and_commits():
    import random
    rng = random.Random(7)
    senders = [ident(i) for i in range(6)]
    committed = dict.fromkeys(range(6), 0)
    mp = big_pool(capacity=12, max_tx_bytes=40 * len(tx(A, 1).raw), origin_share=0.75)
    for _ in range(400):
        i = rng.randrange(6)
        if rng.random() < 0.7:
            t = tx(senders[i], mp.next_nonce(senders[i].address, committed[i]))
            try:
                mp.admit(t, committed[i], 0.0, origin=f"o{i % 3}")
            except AdmissionError:
                pass
        else:
            run = [t for t in mp.batch(len(mp) + 1) if t.address == senders[i].address]
            if run:
                upto = run[: rng.randrange(1, len(run) + 1)]
                mp.remove(upto)
                committed[i] = upto[-1].nonce
        assert mp.tx_bytes == sum(len(t.raw) for t in mp.by_id.values())
        for key, o in mp.origins.items():
            assert o.nbytes == sum(len(t.raw) for a in o.senders for t in mp.senders[a].txs.values()), key
    assert mp.evictions > 0  # the walk reached the count bound, so eviction's bookkeeping was checked too


def test_the_smallest_pool_an_operator_may_set_holds_a_full_block():
    from node.config import MIN_MEMPOOL_MB
    from node.mempool import MAX_TX_POOL_BYTES
    assert MIN_MEMPOOL_MB * 2**20 >= TXS_MAX_BYTES and MAX_TX_POOL_BYTES >= TXS_MAX_BYTES
