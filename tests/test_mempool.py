"""Mempool admission (nonce order, per-sender token bucket, capacity) and round-robin batching."""

from __future__ import annotations

import contextlib

import pytest

from node.crypto import ecdsa
from node.crypto.keys import Identity
from node.mempool import MAX_FORWARD_GAP, AdmissionError, KeyedLimiter, Mempool, Refusal, TokenBucket
from node.tx import DATA_TYPES, Tx, Write

CHAIN = "mempool-test"
HR = DATA_TYPES["heart_rate"]
A, B, C = (Identity.from_seed(s) for s in (b"sender-a", b"sender-b", b"sender-c"))


def tx(ident, nonce, tag=b""):
    cid = b"\x01\x55\x12\x20" + ecdsa.sha256(ident.public_key + nonce.to_bytes(8, "big") + tag)
    return Tx.build(ident, CHAIN, nonce, Write(HR, cid, 100, 0, 0, 1))


def refused(mp, t, committed=0, now=0.0):
    with pytest.raises(AdmissionError) as ei:
        mp.admit(t, committed, now)
    return ei.value


def big_pool(**kw):
    return Mempool(**{"rate": 1e6, "burst": 1e6, **kw})


def pending(mp, ident):
    """The sender's pending nonces, as the pool hands them to a block."""
    return [t.nonce for t in mp.batch(len(mp) + 1) if t.address == ident.address]


def test_nonce_ordering():
    mp = big_pool()
    t1, t2, t3 = tx(A, 1), tx(A, 2), tx(A, 3)
    mp.admit(t1, 0, 0.0)
    assert mp.next_nonce(A.address, 0) == 2 and mp.next_nonce(B.address, 7) == 8
    gap = refused(mp, t3)
    assert gap.kind == Refusal.CONFLICT and "out of order" in gap.reason and "expected 2" in gap.reason
    dup = refused(mp, t1)
    assert dup.kind == Refusal.CONFLICT and dup.reason.startswith("duplicate")
    other1 = refused(mp, tx(A, 1, b"other"))  # same nonce as a pending tx, different content
    assert other1.kind == Refusal.CONFLICT and "already pending" in other1.reason
    mp.admit(t2, 0, 0.0)
    mp.admit(t3, 0, 0.0)
    assert pending(mp, A) == [1, 2, 3] and len(mp) == 3
    assert t2.id in mp and tx(A, 4).id not in mp and t1.id in mp


def test_stale_nonce_refused():
    mp = big_pool()
    for n in (1, 5):
        e = refused(mp, tx(B, n), committed=5)
        assert e.kind == Refusal.CONFLICT and e.reason.startswith("stale nonce") and "next is 6" in e.reason
    gap = refused(mp, tx(B, 7), committed=5)
    assert gap.kind == Refusal.CONFLICT and "out of order" in gap.reason
    mp.admit(tx(B, 6), 5, 0.0)
    assert mp.next_nonce(B.address, 5) == 7
    assert len(mp) == 1


def test_admit_drops_pending_txs_made_stale_by_a_commit():
    mp = big_pool()
    for n in (1, 2, 3):
        mp.admit(tx(A, n), 0, 0.0)
    mp.admit(tx(A, 4), 2, 0.0)  # nonces 1 and 2 were committed meanwhile
    assert pending(mp, A) == [3, 4] and len(mp) == 2
    assert refused(mp, tx(A, 2, b"again"), committed=2).reason.startswith("stale nonce")


def test_rate_limit_returns_429_and_refills():
    mp = Mempool(rate=8.0, burst=3.0)  # times below are exact binary fractions
    for n in (1, 2, 3):
        mp.admit(tx(A, n), 0, 0.0)
    e = refused(mp, tx(A, 4), now=0.0)
    assert e.kind == Refusal.RATE_LIMITED and "rate limited" in e.reason
    assert e.retry_after == pytest.approx(0.125)
    e = refused(mp, tx(A, 4), now=0.0625)
    assert 0 < e.retry_after == pytest.approx(0.0625)
    assert len(mp) == 3  # a refused tx is not queued
    mp.admit(tx(B, 1), 0, 0.0625)  # buckets are per sender
    mp.admit(tx(A, 4), 0, 0.125)  # refilled: one token per 1/rate seconds
    refused(mp, tx(A, 5), now=0.125)
    # an idle sender's bucket refills up to the burst, not beyond
    for n in (5, 6, 7):
        mp.admit(tx(A, n), 0, 100.0)
    e = refused(mp, tx(A, 8), now=100.0)
    assert e.kind == Refusal.RATE_LIMITED and e.retry_after == pytest.approx(0.125)


def test_refusals_other_than_rate_limit_take_no_token():
    mp = Mempool(rate=1.0, burst=2.0)
    mp.admit(tx(A, 1), 0, 0.0)
    for bad in (tx(A, 3), tx(A, 1), tx(A, 9)):
        refused(mp, bad)
    mp.admit(tx(A, 2), 0, 0.0)
    assert refused(mp, tx(A, 3)).kind == Refusal.RATE_LIMITED


def test_token_bucket():
    b = TokenBucket(rate=4.0, burst=2.0, tokens=2.0, stamp=10.0)
    assert b.take(10.0) == 0.0 and b.take(10.0) == 0.0
    assert b.take(10.0) == pytest.approx(0.25)
    assert b.take(10.125) == pytest.approx(0.125)
    assert b.take(10.25) == 0.0
    assert b.take(1000.0) == 0.0 and b.tokens == pytest.approx(1.0)


def _per_sender(batch):
    out = {}
    for t in batch:
        out.setdefault(t.address, []).append(t.nonce)
    return out


def test_batch_fair_share_against_a_flooding_sender():
    mp = big_pool()
    for n in range(1, 1001):
        mp.admit(tx(A, n), 0, 0.0)  # the flooder arrived first
    others = [Identity.from_seed(b"small-%d" % i) for i in range(10)]
    for o in others:
        mp.admit(tx(o, 1), 0, 0.0)
    batch = mp.batch(20)
    assert len(batch) == 20 and len({t.id for t in batch}) == 20
    per = _per_sender(batch)
    assert all(per[o.address] == [1] for o in others)
    assert per[A.address] == list(range(1, 11))
    assert len({t.address for t in batch[:11]}) == 11  # the first round takes one from every sender
    assert len(mp) == 1010  # batching does not remove


def test_batch_keeps_nonce_order_round_robin():
    mp = big_pool()
    counts = {A: 5, B: 3, C: 1}
    for ident, k in counts.items():
        for n in range(1, k + 1):
            mp.admit(tx(ident, n), 0, 0.0)
    batch = mp.batch(100)
    assert len(batch) == 9
    assert [t.address for t in batch] == [A.address, B.address, C.address, A.address, B.address, A.address,
                                          B.address, A.address, A.address]
    assert _per_sender(batch) == {i.address: list(range(1, k + 1)) for i, k in counts.items()}
    assert mp.batch(0) == [] and Mempool().batch(10) == []
    assert [t.nonce for t in mp.batch(4)] == [1, 1, 1, 2]


def test_batch_exclude_skips_already_proposed():
    mp = big_pool()
    a = [tx(A, n) for n in (1, 2, 3)]
    for t in [*a, tx(B, 1)]:
        mp.admit(t, 0, 0.0)
    got = mp.batch(10, exclude={a[0].id, a[1].id})
    assert [(t.address, t.nonce) for t in got] == [(A.address, 3), (B.address, 1)]


def test_forwarded_txs_may_run_ahead_and_skip_the_rate_limit():
    mp = Mempool(rate=1.0, burst=1.0)
    mp.admit(tx(A, 3), 0, 0.0, forwarded=True)  # arrived ahead of nonces 1 and 2
    assert mp.batch(10) == []  # a gap: nothing from A is batchable yet
    assert refused(mp, tx(A, 2)).kind == Refusal.CONFLICT  # a client must still submit in order
    mp.admit(tx(A, 1), 0, 0.0, forwarded=True)
    mp.admit(tx(A, 2), 0, 0.0, forwarded=True)
    assert pending(mp, A) == [1, 2, 3]
    far = refused(mp, tx(B, MAX_FORWARD_GAP + 1), now=0.0)
    assert far.kind == Refusal.CONFLICT
    with pytest.raises(AdmissionError):
        mp.admit(tx(B, MAX_FORWARD_GAP + 1), 0, 0.0, forwarded=True)
    mp.admit(tx(A, 4), 0, 0.0)  # the client's own bucket was not drained by the forwarded ones
    assert refused(mp, tx(A, 5)).kind == Refusal.RATE_LIMITED


def test_capacity_503():
    mp = big_pool(capacity=3)
    txs = [tx(A, 1), tx(B, 1), tx(C, 1)]
    for t in txs:
        mp.admit(t, 0, 0.0)
    e = refused(mp, tx(A, 2))
    assert e.kind == Refusal.OVERLOADED and e.retry_after and e.retry_after > 0
    assert len(mp) == 3
    mp.remove([txs[0]])
    mp.admit(tx(A, 2), 1, 0.0)
    assert len(mp) == 3


def test_per_sender_pending_cap():
    mp = big_pool(max_per_sender=3)
    for n in (1, 2, 3):
        mp.admit(tx(A, n), 0, 0.0)
    e = refused(mp, tx(A, 4))
    assert e.kind == Refusal.RATE_LIMITED and e.retry_after > 0 and "pending" in e.reason
    mp.admit(tx(B, 1), 0, 0.0)


def test_remove_drops_committed_and_stale():
    mp = big_pool()
    a = [tx(A, n) for n in range(1, 6)]
    b = [tx(B, n) for n in range(1, 3)]
    for t in a + b:
        mp.admit(t, 0, 0.0)
    assert mp.remove([a[2]]) == [a[0], a[1]]  # nonce 3 committed: 1 and 2 are stale now
    assert pending(mp, A) == [4, 5]
    assert all(t.id not in mp for t in a[:3]) and len(mp) == 4
    assert mp.next_nonce(A.address, 3) == 6
    mp.remove([tx(C, 1)])  # unknown sender: no effect
    mp.remove([a[0]])  # already gone: no effect
    assert len(mp) == 4
    assert mp.remove(b) == []  # both committed: none superseded
    assert pending(mp, B) == [] and len(mp) == 2
    mp.remove([a[4], a[3]])
    assert len(mp) == 0 and mp.batch(10) == []
    mp.admit(tx(A, 6), 5, 0.0)


def test_remove_drops_pending_tx_whose_nonce_was_committed_by_another_tx():
    mp = big_pool()
    mine = tx(A, 1)
    mp.admit(mine, 0, 0.0)
    mp.admit(tx(A, 2), 0, 0.0)
    # a different tx with nonce 1 was committed: ours is returned as superseded (its status is told)
    assert mp.remove([tx(A, 1, b"submitted elsewhere")]) == [mine]
    assert pending(mp, A) == [2] and len(mp) == 1


def test_remove_moves_sender_to_the_back_of_the_round():
    mp = big_pool()
    for ident in (A, B):
        for n in (1, 2, 3):
            mp.admit(tx(ident, n), 0, 0.0)
    assert mp.batch(1)[0].address == A.address
    mp.remove([mp.batch(1)[0]])
    assert [(t.address, t.nonce) for t in mp.batch(3)] == [(B.address, 1), (A.address, 2), (B.address, 2)]


def test_next_nonce_respects_the_committed_nonce():
    mp = big_pool()
    mp.admit(tx(A, 1), 0, 0.0)
    mp.admit(tx(A, 2), 0, 0.0)
    assert mp.next_nonce(A.address, 5) == 6  # nonces up to 5 committed (e.g. through another validator)


def test_prune_buckets_forgets_idle_senders():
    mp = Mempool(rate=8.0, burst=3.0)
    ta, tb = tx(A, 1), tx(B, 1)
    mp.admit(ta, 0, 0.0)
    mp.admit(tb, 0, 0.0)
    mp.remove([ta])
    mp.prune_buckets(0.0625)  # A is idle but its bucket is not full yet (2.5 of 3 tokens)
    assert set(mp.buckets) == {A.address, B.address}
    mp.prune_buckets(0.125)
    assert set(mp.buckets) == {B.address}  # B still has a pending tx
    mp.prune_buckets(1000.0)
    assert set(mp.buckets) == {B.address}
    # a pruned sender starts again with a full bucket
    for n in (2, 3, 4):
        mp.admit(tx(A, n), 1, 1000.0)
    assert refused(mp, tx(A, 5), committed=1, now=1000.0).kind == Refusal.RATE_LIMITED


def test_prune_keeps_recently_limited_senders():
    mp = Mempool(rate=1.0, burst=2.0)
    t1, t2 = tx(A, 1), tx(A, 2)
    mp.admit(t1, 0, 0.0)
    mp.admit(t2, 0, 0.0)
    mp.remove([t2])
    mp.prune_buckets(1.0)  # 1 of 2 tokens: forgetting it now would hand A a fresh burst
    assert A.address in mp.buckets
    t3 = tx(A, 3)
    mp.admit(t3, 2, 1.0)
    assert refused(mp, tx(A, 4), committed=2, now=1.0).kind == Refusal.RATE_LIMITED
    mp.remove([t3])
    mp.prune_buckets(3.0)
    assert mp.buckets == {}


# ---- bounded pool, fair eviction, keyed limiters ----------------------------------------------

HONEST = [Identity.from_seed(b"honest-%d" % i) for i in range(6)]


def test_full_pool_evicts_the_heaviest_senders_newest():
    mp = big_pool(capacity=8)
    flood = [tx(A, n) for n in range(1, 7)]
    for t in flood:
        mp.admit(t, 0, 0.0)
    mp.admit(tx(B, 1), 0, 0.0)
    mp.admit(tx(C, 1), 0, 0.0)
    assert len(mp) == 8
    evicted = mp.admit(tx(HONEST[0], 1), 0, 0.0)  # a newcomer: the flooder's tail makes room
    assert evicted == [flood[-1]] and flood[-1].id not in mp and len(mp) == 8 and mp.evictions == 1
    assert pending(mp, A) == [1, 2, 3, 4, 5] and mp.next_nonce(A.address, 0) == 6
    for h in HONEST[1:4]:
        assert [t.nonce for t in mp.admit(tx(h, 1), 0, 0.0)] == [5 - HONEST.index(h) + 1]
    assert pending(mp, A) == [1, 2] and len(mp) == 8
    # now the heaviest holds 2, as much as a second transaction of B would make: nobody to evict
    e = refused(mp, tx(B, 2))
    assert e.kind == Refusal.OVERLOADED and "mempool full" in e.reason
    # the flooder itself cannot push others out: it holds the most
    e = refused(mp, tx(A, 3))
    assert e.kind == Refusal.RATE_LIMITED and "holds the most" in e.reason and e.retry_after


def test_eviction_keeps_each_senders_run_contiguous():
    mp = big_pool(capacity=5)
    a = [tx(A, n) for n in range(1, 5)]
    for t in a:
        mp.admit(t, 0, 0.0)
    mp.admit(tx(B, 1), 0, 0.0)
    assert mp.admit(tx(C, 1), 0, 0.0) == [a[3]]
    assert pending(mp, A) == [1, 2, 3]
    mp.remove(a[:2])  # committed: the eviction heap's counts for A are stale now, and corrected lazily
    a4 = tx(A, 4, b"again")
    mp.admit(a4, 2, 0.0)
    mp.admit(tx(HONEST[0], 1), 0, 0.0)
    assert len(mp) == 5 and pending(mp, A) == [3, 4]
    assert mp.admit(tx(HONEST[1], 1), 0, 0.0) == [a4]  # the tail, never a hole in the middle
    assert pending(mp, A) == [3] and mp.next_nonce(A.address, 2) == 4


def test_keyed_limiter():
    lim = KeyedLimiter(rate=2.0, burst=3.0, max_keys=2)
    assert [lim.take("ip1", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.take("ip1", 0.0) == pytest.approx(0.5)  # one token at 2/s
    assert lim.take("ip2", 0.0) == 0.0  # another client has its own bucket
    assert lim.take("ip1", 0.5) == 0.0
    assert lim.take("peer", 0.0, n=3) == 0.0 and lim.take("peer2", 0.0, n=4) == pytest.approx(0.5)
    assert lim.take("peer2", 100.0, n=4) > 0  # a cost above the burst never passes
    assert len(lim.buckets) <= 2
    big = KeyedLimiter(rate=1.0, burst=1.0, max_keys=1000)
    for i in range(5000):
        big.take(i, float(i))
    assert len(big.buckets) <= 1000


# ---- origins: per-client share, eviction from the heaviest origin, senders with history first ---

def test_sybil_flood_from_one_origin_cannot_evict_another_origins_sender():
    mp = big_pool(capacity=20)
    honest = [tx(A, n) for n in (1, 2, 3)]
    for t in honest:
        mp.admit(t, 0, 0.0, origin="10.0.0.2")
    sybils = [Identity.from_seed(b"sybil-%d" % i) for i in range(40)]
    admitted = refused_n = 0
    for ident in sybils:  # single-transaction fresh keys, all from one IP
        try:
            mp.admit(tx(ident, 1), 0, 0.0, origin="10.0.0.66")
            admitted += 1
        except AdmissionError as e:
            assert e.kind == Refusal.OVERLOADED
            refused_n += 1
    assert len(mp) == 20 and admitted == 17 and refused_n == 23
    assert pending(mp, A) == [1, 2, 3]  # the honest sender lost nothing
    # an honest newcomer from another IP gets in: the flooding IP gives way, its newest key first
    evicted = mp.admit(tx(B, 1), 0, 0.0, origin="10.0.0.3")
    assert len(evicted) == 1 and evicted[0].address == sybils[16].address
    assert mp.admit(tx(A, 4), 0, 0.0, origin="10.0.0.2")[0].address == sybils[15].address
    assert mp.origins["10.0.0.66"].n == 15 and mp.origins["10.0.0.2"].n == 4


def test_client_origin_share_caps_one_ip_but_not_forwarded_batches():
    mp = big_pool(capacity=10, origin_share=0.5)
    for i in range(5):
        mp.admit(tx(Identity.from_seed(b"s%d" % i), 1), 0, 0.0, origin="ip-a")
    with pytest.raises(AdmissionError) as ei:
        mp.admit(tx(C, 1), 0, 0.0, origin="ip-a")
    e = ei.value
    assert e.kind == Refusal.RATE_LIMITED and "share of the mempool" in e.reason and e.retry_after
    mp.admit(tx(C, 1), 0, 0.0, origin="ip-b")
    for i in range(5, 9):  # forwarded: the entry validator applied its clients' shares
        mp.admit(tx(Identity.from_seed(b"s%d" % i), 1), 0, 0.0, forwarded=True, origin="peer:x")
    assert len(mp) == 10 and mp.origins["peer:x"].n == 4


def test_full_pool_prefers_senders_with_committed_history():
    mp = big_pool(capacity=6)
    fresh = [Identity.from_seed(b"fresh-%d" % i) for i in range(6)]
    for ident in fresh:  # forwarded by one peer: one origin
        mp.admit(tx(ident, 1), 0, 0.0, forwarded=True, origin="peer:1")
    with pytest.raises(AdmissionError) as ei:  # a brand-new sender from the same origin: nobody holds more
        mp.admit(tx(A, 1), 0, 0.0, forwarded=True, origin="peer:1")
    assert ei.value.kind == Refusal.OVERLOADED
    # a sender with history takes the place of the newest brand-new one
    evicted = mp.admit(tx(B, 8), 7, 0.0, forwarded=True, origin="peer:1")
    assert [t.address for t in evicted] == [fresh[-1].address] and B.address in mp.senders
    assert len(mp) == 6


def test_origin_bookkeeping_is_released_when_senders_leave():
    mp = big_pool(capacity=4)
    txs = [tx(A, 1), tx(A, 2), tx(B, 1)]
    for t in txs:
        mp.admit(t, 0, 0.0, origin="ip-a")
    mp.admit(tx(C, 1), 0, 0.0, origin="ip-c")
    assert mp.origins["ip-a"].n == 3 and set(mp.origins["ip-a"].fresh) == {A.address, B.address}
    mp.remove(txs[:1])  # A now has history
    assert mp.origins["ip-a"].n == 2 and set(mp.origins["ip-a"].fresh) == {B.address}
    mp.remove(txs[1:])
    assert set(mp.origins) == {"ip-c"}
    mp.admit(tx(A, 3), 2, 0.0, origin="ip-x")  # back with history, counted at its new origin
    assert mp.origins["ip-x"].n == 1 and not mp.origins["ip-x"].fresh


def test_origin_counts_stay_consistent_under_random_admit_evict_commit():
    import random
    rnd = random.Random(16)
    idents = [Identity.from_seed(b"r%d" % i) for i in range(30)]
    mp = big_pool(capacity=25, origin_share=0.6)
    committed = {i.address: 0 for i in idents}
    for step in range(1500):
        ident = rnd.choice(idents)
        a = ident.address
        if rnd.random() < 0.15 and a in mp.senders:  # a block commits this sender's first pending
            s = mp.senders[a]
            first = s.txs.get(s.base)
            if first is not None:
                mp.remove([first])
                committed[a] = first.nonce
        else:
            forwarded = rnd.random() < 0.3
            nonce = mp.next_nonce(a, committed[a]) + (rnd.choice([0, 0, 1, 2]) if forwarded else 0)  # gaps too
            with contextlib.suppress(AdmissionError):
                mp.admit(tx(ident, nonce, b"%d" % step), committed[a], 0.0, forwarded=forwarded,
                         origin=rnd.choice(["ip1", "ip2", "ip3", "peer:x"]))
        for s in mp.senders.values():  # the kept end of each sender's run is the run's end
            n = s.base
            while n in s.txs:
                n += 1
            assert s.contiguous_end() == n
        assert sum(o.n for o in mp.origins.values()) == len(mp) <= 25
        for key, o in mp.origins.items():
            assert o.senders and all(mp.senders[x].origin == key for x in o.senders)
            assert o.n == sum(len(mp.senders[x].txs) for x in o.senders)
            assert set(o.fresh) == {x for x in o.senders if mp.senders[x].base == 1}  # brand-new: none committed
        assert set(mp.senders) == set().union(*(o.senders for o in mp.origins.values()))
    assert mp.evictions > 10  # the pool was full often enough to exercise eviction


def test_the_lazy_heaps_stay_bounded_in_a_pool_that_never_fills():
    """Admission and commits push an entry per change of a sender's weight; only a full pool pops
    them. In a pool that never fills they grew by three entries per transaction (2.4 MB in 40 s at
    2,400 writes/s), so they are compacted to one entry per sender (origin) as they go."""
    mp = big_pool(capacity=1000)
    senders = [Identity.from_seed(b"steady-%d" % i) for i in range(5)]
    for n in range(1, 801):
        for s in senders:
            mp.admit(tx(s, n), n - 1, float(n), origin="10.0.0.1")
        mp.remove([t for t in mp.batch(len(mp)) if t.nonce == n])  # each round commits
    assert len(mp) == 0
    for s in senders:  # a second origin's senders stay pending
        mp.admit(tx(s, 801), 800, 801.0, origin="10.0.0.2")
    (o,) = mp.origins.values()
    assert len(o.heavy) <= 4 * len(o.senders) + 1024
    assert len(mp._heavy_origins) <= 4 * len(mp.origins) + 1024
    # and the heaps still find the heaviest: the pool fills, and the heaviest sender gives way
    heavy = Identity.from_seed(b"steady-heavy")
    for n in range(1, 996):
        mp.admit(tx(heavy, n), 0, 900.0, origin="10.0.0.3")
    assert len(mp) == 1000
    evicted = mp.admit(tx(Identity.from_seed(b"newcomer"), 1), 0, 900.0, origin="10.0.0.4")
    assert [(t.address, t.nonce) for t in evicted] == [(heavy.address, 995)]


def test_withdraw_drops_a_transaction_and_its_senders_later_ones():
    mp = big_pool()
    a = [tx(A, n) for n in range(1, 5)]
    for t in [*a, tx(B, 1)]:
        mp.admit(t, 0, 0.0)
    assert mp.withdraw(a[1]) == [a[3], a[2], a[1]]  # newest first: they could never commit behind the gap
    assert pending(mp, A) == [1] and pending(mp, B) == [1] and mp.evictions == 0
    assert mp.withdraw(a[1]) == []  # not pending any more
    assert mp.next_nonce(A.address, 0) == 2  # the sender may send nonce 2 again
