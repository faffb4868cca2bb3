"""A primary that censors (node/consensus/censor.py): it keeps proposing blocks, so the view timer
sees progress, and leaves one transaction out for ever. The watch's rules are driven directly, the
protocol on the seeded simulated network (tests/consensus_sim.py), and the attack on real processes
(MEDCHAIN_BYZANTINE=censor: the first primary leaves out every sender with a grant waiting)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from devices.patient.client import NodeClient
from node.block import TX_FRAMING, Block
from node.consensus.censor import CensorWatch
from node.crypto.keys import Identity
from node.mempool import PLACINGS, Mempool
from node.tx import DATA_TYPES, Grant, Profile, Tx
from tests.conftest import run
from tests.consensus_sim import SimNet, make_block
from tests.test_faults import _network

TARGET = b"a patient's revoke"


def _per_tx(placed_age: Callable[[bytes, int], tuple[bytes, int | None]]) -> Callable[[Block, int], list]:
    """A driver's answer for a whole block from one for each of its transactions."""
    return lambda block, seq: [placed_age(raw, seq) for raw in block.txs]


def _watch(max_txs: int = 10, max_bytes: int = 10_000) -> CensorWatch:
    w = CensorWatch(max_txs, max_bytes, grace_ms=1000, skips=3)
    w.tick(0, 0, False, lambda: 0)
    w.offer(TARGET, 0)
    return w


def test_only_blocks_proposed_after_the_grace_with_room_left_count_as_skips():
    w = _watch()
    w.tick(500, 0, False, lambda: 99)
    w.delivered(1, make_block(1, txs=[b"x"]), 0)  # within the grace: the primary may not hold it yet
    assert w.skipped == 0 and w.horizon is None
    w.tick(1000, 0, False, lambda: 4)  # the grace ran out while sequences up to 4 were proposed
    for seq in (2, 3, 4):
        w.delivered(seq, make_block(seq, txs=[b"x"]), 0)  # proposed before then
    assert w.skipped == 0 and w.horizon == 4
    w.delivered(5, make_block(5, txs=[b"x%d" % k for k in range(10)]), 0)  # full by count
    w.delivered(6, make_block(6, txs=[bytes(10_001 - 2 * TX_FRAMING - len(TARGET))]), 0)  # no room in bytes
    w.delivered(7, make_block(7, view=1, txs=[b"x"]), 0)  # another view's block (a stale watch)
    assert w.skipped == 0 and not w.censoring
    for seq in (8, 9):
        w.delivered(seq, make_block(seq, txs=[b"x"]), 0)
    w.offer(TARGET, 900)  # the same transaction offered again keeps its count
    assert w.skipped == 2 and not w.censoring
    w.delivered(10, make_block(10), 0)  # an empty block has room too
    assert w.censoring


def test_the_watch_ends_with_the_transaction_and_a_new_view_gives_the_grace_from_its_start():
    w = _watch()
    w.tick(1000, 0, False, lambda: 0)
    for seq in (1, 2, 3):
        w.delivered(seq, make_block(seq, txs=[b"x"]), 0)
    assert w.censoring
    w.tick(1100, 1, True, lambda: 3)  # view 1 asked for: no primary works, nothing is counted
    w.tick(9000, 1, True, lambda: 3)  # a long view change does not use up the next primary's grace
    assert w.view == 0
    w.tick(9100, 1, False, lambda: 3)  # view 1 installed: its primary gets the whole grace from now
    assert not w.censoring and w.horizon is None and w.target == TARGET and w.armed_at == 9100
    w.tick(10_000, 1, False, lambda: 3)
    assert w.horizon is None
    w.tick(10_100, 1, False, lambda: 3)
    w.delivered(4, make_block(4, view=1, txs=[b"x", TARGET]), 10_200)
    assert w.target is None and not w.censoring
    w.offer(b"another", 10_150)
    assert w.target == b"another" and w.horizon is None


def test_the_watch_s_edges_a_block_at_its_byte_limit_a_first_view_above_zero_and_skips_counted_afresh():
    """Exactly at the byte limit there is room; a replica whose watch starts in view 1 gives that
    view's primary the grace from the first tick; a new view counts its skips from none; the pace is
    0.3 of the first watched transaction's time from its grace starting to its delivery."""
    w = _watch()
    w.tick(1000, 0, False, lambda: 0)
    at_limit = [bytes(10_000 - 2 * TX_FRAMING - len(TARGET))]  # it would fit exactly
    w.delivered(1, make_block(1, txs=at_limit), 0)
    assert w.skipped == 1
    w.tick(1100, 1, False, lambda: 1)  # a new view: no skips, a new grace
    w.tick(2100, 1, False, lambda: 1)
    for seq in (2, 3):
        w.delivered(seq, make_block(seq, view=1, txs=[b"x"]), 2200)
    assert w.skipped == 2 and not w.censoring
    late = CensorWatch(10, grace_ms=1000)
    late.offer(TARGET, 0)
    late.tick(5000, 1, False, lambda: 9)  # this replica's first tick, in view 1
    assert late.armed_at == 5000 and late.horizon is None
    paced = CensorWatch(10, grace_ms=1000)
    paced.tick(0, 0, False, lambda: 0)
    paced.offer(TARGET, 0)
    paced.delivered(1, make_block(1, txs=[TARGET]), 2000)
    assert paced.pace_ms == 600.0 and paced.target is None and paced.skipped == 0


def test_the_pace_counts_from_the_grace_s_start_never_below_zero_nor_above_8x_the_grace():
    """Exact pace arithmetic: a delivery at the grace's start adds nothing, one 100 s late adds 0.3 of
    8 graces; a watch delivered to before its first tick is not censoring; a transaction offered
    without its arrival time arrived at 0."""
    w = CensorWatch(10, grace_ms=1000)
    w.delivered(1, make_block(1, txs=[TARGET]), 0)  # before any tick or offer: nothing watched
    assert not w.censoring and w.target is None
    w.offer(TARGET, 500)
    w.delivered(2, make_block(2, txs=[TARGET]), 500)  # delivered as its grace starts
    assert w.pace_ms == 0.0 and w.target is None
    w.tick(0, 0, False, lambda: 0)
    w.offer(b"slow", 0)
    w.delivered(3, make_block(3, txs=[b"slow"]), 100_000)
    assert w.pace_ms == 0.3 * 8 * 1000
    early = CensorWatch(10, grace_ms=1000)
    early.offer(TARGET, 0)
    early.delivered(1, make_block(1, txs=[TARGET]), 2000)  # before its first tick: the view began at 0
    assert early.pace_ms == 600.0
    fresh = CensorWatch(10, grace_ms=1000)
    fresh.tick(0, 0, False, lambda: 0)
    fresh.offer(TARGET)  # arrived at 0
    fresh.tick(1000, 0, False, lambda: 4)
    assert fresh.since == 0 and fresh.horizon == 4


def test_the_grace_runs_from_arrival_so_a_changing_front_restarts_no_clock():
    """The longest waiting transaction is watched; when the one before it commits, the next one's
    grace has been running since it arrived (a censor cannot buy a fresh grace per transaction
    ahead of its victim, nor by making the front change)."""
    w = _watch()
    w.offer(b"first", 0)
    w.offer(b"victim", 100)
    w.tick(1200, 0, False, lambda: 7)
    assert w.horizon == 7  # its grace ran out at 1100: skips count at once
    w.offer(b"first", 0)
    w.offer(b"victim", 100)  # back again: no new grace, only a new horizon
    assert w.horizon is None and w.since == 100


def test_the_grace_follows_the_pace_of_watched_transactions_within_bounds():
    """An overloaded validator admits its forwards seconds late (and may drop one, sent again after
    REFORWARD_S): while the watched transactions take long to commit, the grace is 4x that, at most
    8x the base, as the view timer follows the pace of deliveries."""
    w = _watch()
    assert w.grace == 1000
    for k in range(20):  # each watched transaction took 1.5 s to commit
        w.offer(b"t%d" % k, 10_000 * k)
        w.tick(10_000 * k, 0, False, lambda: 0)
        w.delivered(k + 1, make_block(k + 1, txs=[b"t%d" % k]), 10_000 * k + 1500)
    assert 5_500 < w.grace <= 6_000
    w.offer(b"slow", 200_000)
    w.delivered(99, make_block(99, txs=[b"slow"]), 400_000)  # 200 s
    assert w.grace == 8000


def test_the_pool_offers_the_transactions_that_can_execute_longest_waiting_first():
    """In arrival order, and never blinded: a byzantine validator's forwards of nonce 2 from a
    thousand fresh keys (no honest primary can propose them) stand in nobody's way."""
    ids = [Identity.from_seed(b"censor pool %d" % k) for k in range(3)]
    pool = Mempool()
    tx = {(k, n): Tx.build(ids[k], "c", n, Profile("p", "r", "o", bytes(32))) for k in range(3) for n in (1, 2)}
    for k in range(1000):
        gap = Tx.build(Identity.from_seed(b"gapped %d" % k), "c", 2, Profile("p", "r", "o", bytes(32)))
        pool.admit(gap, 0, 0.5, forwarded=True)
    pool.admit(tx[0, 2], 0, 1.0, forwarded=True)  # runs ahead of a gap: cannot execute yet
    pool.admit(tx[1, 1], 0, 2.0)
    pool.admit(tx[2, 1], 0, 3.0)
    assert [(t.id, at) for t, at in pool.longest_waiting()] == [(tx[1, 1].id, 2.0), (tx[2, 1].id, 3.0)]
    pool.admit(tx[0, 1], 0, 4.0)  # the gap filled: nonce 1 can execute, it arrived last
    pool.remove([tx[1, 1]])  # sender 1 committed: its next one arrives later
    pool.admit(tx[1, 2], 1, 5.0)
    assert [t.id for t, _ in pool.longest_waiting()] == [tx[2, 1].id, tx[0, 1].id, tx[1, 2].id]
    assert [t.id for t, _ in pool.longest_waiting(1)] == [tx[2, 1].id]
    # sender 0's nonce 2 arrived at 1.0, but became ready only now: it does not step in front of those
    # ready all along (a censor making early-forwarded ones ready one by one kept its victim unwatched)
    pool.remove([tx[0, 1]], now=6.0)
    assert [(t.id, at) for t, at in pool.longest_waiting()] == [(tx[2, 1].id, 3.0), (tx[1, 2].id, 5.0),
                                                                (tx[0, 2].id, 6.0)]
    assert pool.settle(ids[2].address, 1) == [tx[2, 1]] and [t.id for t, _ in pool.longest_waiting()] == [
        tx[1, 2].id, tx[0, 2].id]


def test_the_pool_says_when_each_sender_took_its_place_in_the_proposal_order():
    """A sender takes its place at the end of the batch order when it comes and again when a commit of
    its moves it there; the watch reads that time (Mempool.placed) to judge a full block."""
    ids = [Identity.from_seed(b"placed %d" % k) for k in range(2)]
    tx = {(k, n): Tx.build(ids[k], "c", n, Profile("p", "r", "o", bytes(32))) for k in range(2) for n in (1, 2)}
    pool = Mempool()
    pool.admit(tx[0, 1], 0, 1.0)
    pool.admit(tx[0, 2], 0, 2.0)
    pool.admit(tx[1, 1], 0, 3.0)
    assert (pool.placed(ids[0].address), pool.placed(ids[1].address), pool.placed(bytes(33))) == (1.0, 3.0, None)
    assert [t.id for t in pool.batch(1)] == [tx[0, 1].id]
    pool.remove([tx[0, 1]], now=4.0, height=5)  # its commit in block 5 moves sender 0 behind sender 1
    assert pool.placed(ids[0].address) == 4.0 and pool.placed(ids[1].address) == 3.0
    assert [t.id for t in pool.batch(1)] == [tx[1, 1].id]
    # as it was once the blocks up to 4 had committed (a block proposed while 5 was in flight)
    assert pool.placed(ids[0].address, upto=4) == 1.0 and pool.placed(ids[0].address, upto=5) == 4.0
    committed = 1
    for h in range(6, 6 + PLACINGS):  # a sender moved by more commits than are remembered
        pool.admit(Tx.build(ids[0], "c", committed + 2, Profile("p", "r", "o", bytes(32))), committed, float(h))
        pool.remove([pool.first_pending(ids[0].address)], now=float(h), height=h)
        committed += 1
    last = pool.first_pending(ids[0].address)
    assert last is not None and last.nonce == committed + 1
    assert pool.placed(ids[0].address) == 5.0 + PLACINGS and pool.placed(ids[0].address, upto=4) == 6.0  # the earliest kept


def test_a_sender_whose_last_pending_one_committed_a_moment_ago_comes_back_to_its_old_place():
    """Its last pending transaction committed in block 10 and it left the pool; its next one came at
    once. A primary that batched block 11 while 10 was in flight still had it in its old place, so it
    is judged by that place up to 10 - 1, and by its new one after; a sender gone for more blocks
    than are remembered comes back new."""
    a, b = Identity.from_seed(b"emptied a"), Identity.from_seed(b"emptied b")
    pool = Mempool()
    first = Tx.build(a, "c", 1, Profile("p", "r", "o", bytes(32)))
    pool.admit(first, 0, 1.0)
    pool.remove([first], now=5.0, height=10)
    assert pool.placed(a.address) is None and pool.placed(a.address, upto=10) is None
    assert pool.placed(a.address, upto=9) == 1.0  # gone at 10's commit; its next one may be on its way
    pool.admit(Tx.build(a, "c", 2, Profile("p", "r", "o", bytes(32))), 1, 6.0)
    assert (pool.placed(a.address, upto=9), pool.placed(a.address, upto=10), pool.placed(a.address)) == (1.0, 6.0, 6.0)
    old = Tx.build(b, "c", 1, Profile("p", "r", "o", bytes(32)))
    pool.admit(old, 0, 7.0)
    pool.remove([old], now=8.0, height=11)
    for h in range(12, 13 + PLACINGS):  # blocks without it
        pool.remove([], now=float(h), height=h)
    pool.admit(Tx.build(b, "c", 2, Profile("p", "r", "o", bytes(32))), 1, 30.0)
    assert pool.placed(b.address, upto=9) == 30.0


def test_a_full_block_proposed_while_the_block_that_moved_its_senders_was_in_flight_is_no_skip():
    """Overload, honestly: a primary with blocks in flight batches from its order before their commits,
    so block 11 may repeat block 10's senders (their next transactions). Here block 10's commit moved
    them to the end well after the watched transaction; judged by their place once the blocks up to
    11 - PIPELINE had committed (as the driver asks), they came before it, and block 11 is no skip.
    A block proposed after that commit certainly was (PIPELINE above it), and it is."""
    from node.validator import PIPELINE

    ids = [Identity.from_seed(b"front %d" % k) for k in range(4)]
    pool = Mempool()
    for ident in ids:  # four front senders, two transactions each, placed at 0 s
        for n in (1, 2):
            pool.admit(Tx.build(ident, "c", n, Profile("p", "r", "o", bytes(32))), 0, 0.0)
    first = [pool.pending(i.address, 1) for i in ids]
    pool.remove(first, now=30.0, height=10)  # block 10 committed at 30 s: they move to the end
    second = [pool.pending(i.address, 2).raw for i in ids]
    w = _watch(max_txs=4)  # TARGET arrived at 0, grace 1 s
    w.tick(1000, 0, False, lambda: 0)
    now = 31_000  # ms, the pool's clock x 1000

    def placed_age(raw: bytes, seq: int) -> tuple[bytes, int | None]:
        who = Tx.decode(raw, check_sig=False).address
        t = pool.placed(who, seq - PIPELINE)
        return who, None if t is None else now - int(t * 1000)
    w.placed_ages = _per_tx(placed_age)
    w.delivered(11, make_block(11, txs=second), now)
    assert w.skipped == 0
    w.delivered(10 + PIPELINE, make_block(10 + PIPELINE, txs=second), now)
    assert w.skipped == 1


def test_a_full_block_is_a_skip_when_most_of_it_is_of_senders_placed_late_or_not_held():
    """Placed more than the grace after the watched transaction's arrival (here 0 + 1,000 ms), or not
    held here, is late; a block full by count is a skip when more than half of it is late, and one
    full by bytes never is."""
    w = _watch(max_txs=4)
    w.tick(1000, 0, False, lambda: 0)
    now, ages = 5000, {}
    w.placed_ages = _per_tx(lambda raw, seq: (raw, ages.get(raw)))
    full = [b"sender %d" % k for k in range(4)]
    ages.update(dict.fromkeys(full, now - 1000))  # placed exactly a grace after it: not late
    w.delivered(1, make_block(1, txs=full), now)
    assert w.skipped == 0
    ages[full[0]] = now - 1001
    del ages[full[1]]  # two of four late: not most of it
    w.delivered(2, make_block(2, txs=full), now)
    assert w.skipped == 0
    ages[full[2]] = now - 1001  # three of four
    w.delivered(3, make_block(3, txs=full), now)
    assert w.skipped == 1
    big = [bytes(10_001 - 2 * TX_FRAMING - len(TARGET) - 3 * (7 + TX_FRAMING)), b"other 1", b"other 2", b"other 3"]
    w.delivered(4, make_block(4, txs=big), now)  # full by bytes too, all of it late: no room for it
    assert w.skipped == 1
    w.placed_ages = None  # a driver that cannot say: full blocks are not judged
    w.delivered(5, make_block(5, txs=full), now)
    assert w.skipped == 1
    # one sender placed early takes one place of an honest first round, not four
    w.placed_ages = _per_tx(lambda raw, seq: (b"sender a" if raw in full[:2] else b"sender b", now))
    w.delivered(6, make_block(6, txs=full), now)  # two senders, two transactions each: 2 of 4 late
    assert w.skipped == 1
    w.placed_ages = _per_tx(lambda raw, seq: (b"early sender", now))
    w.delivered(7, make_block(7, txs=full), now)  # one sender's four: 3 of 4 late
    assert w.skipped == 2

    def broken(block: Block, seq: int) -> list[tuple[bytes, int | None]]:
        raise KeyError(seq)
    w.placed_ages = broken  # a driver whose answer fails: the block is delivered, not judged
    w.delivered(8, make_block(8, txs=full), now)
    assert w.skipped == 2


def test_bare_writes_are_not_in_the_ready_order_so_a_few_cannot_hide_the_rest():
    """A bare dag-pb write (no blob here; the watch skips it) is kept out of the ready order: eight of
    them forwarded by a byzantine validator blinded the watch, which looks at the first eight."""
    from node.ipfs.cid import Cid, cid_v1_raw
    from node.tx import Write
    pool = Mempool()
    for k in range(20):
        cid = Cid(1, 0x70, cid_v1_raw(b"nowhere %d" % k).multihash).to_bytes()
        bare = Tx.build(Identity.from_seed(b"bare %d" % k), "c", 1, Write(DATA_TYPES["heart_rate"], cid, 5_000_000, 0,
                                                                           1_000, 2_000))
        pool.admit(bare, 0, float(k), forwarded=True)
    blob = b"r" * 40
    raw = Tx.build(Identity.from_seed(b"raw writer"), "c", 1, Write(DATA_TYPES["heart_rate"], cid_v1_raw(blob).to_bytes(),
                                                                     40, 0, 1_000, 2_000))
    victim = Tx.build(Identity.from_seed(b"victim"), "c", 1, Profile("p", "r", "o", bytes(32)))
    pool.admit(raw, 0, 30.0, sidecar=blob)
    pool.admit(victim, 0, 31.0)
    assert [t.id for t, _ in pool.longest_waiting(8)] == [raw.id, victim.id]


def test_a_vote_for_a_far_sequence_does_not_move_the_horizon():
    """A log entry made by a vote alone (anyone's signed COMMIT for seq 64) must not count as a
    proposal: it gave the primary a window of blocks that could not be skips."""
    from node.consensus import Commit
    from tests.consensus_sim import make_replica, signed
    r = make_replica(4, 1)
    r.censor = CensorWatch(10, grace_ms=0)
    r.on_message(signed(Commit, 2, 0, 60, bytes(32)))
    assert 60 in r.state.log and r._proposed_up_to() == 0


def _censored_net(watch: bool, full: bool = False, seconds: int = 30, late: int | None = None) -> SimNet:
    """Four replicas; primary 0 proposes a block of other work every ~200 ms and never TARGET, which
    every replica holds (the driver offers it each tick). `full`: its blocks are full. `late`: the
    replicas judge full blocks by their pools' order, in which that many of each block's 3
    transactions are of senders they do not hold (a Sybil filler's), the rest placed with TARGET."""
    net = SimNet(4, 7)
    for r in net.replicas:
        r.censor = CensorWatch(3, grace_ms=2000) if watch else None
        if watch and late is not None:
            def placed_age(raw: bytes, seq: int, r=r) -> tuple[bytes, int | None]:
                k = int(raw.rsplit(b".", 1)[1]) if raw.startswith(b"other") else 0
                return raw, None if k < late else r.state.now_ms  # placed at time 0, as TARGET arrived
            r.censor.placed_ages = _per_tx(placed_age)
    for t in range(seconds * 10):
        for r in net.replicas:
            r.watch(TARGET, 0)
        net.tick_all(pending=True)
        r = net.replicas[net.replicas[1].primary]
        if t % 2 == 0 and r.can_propose() and r.in_flight() == 0:
            txs = [b"other %d.%d" % (t, k) for k in range(3 if full else 1)]
            if r.index != 0:
                txs[0] = TARGET  # an honest primary proposes what waits
            net.send(r.index, r.propose(make_block(r.next_seq, view=r.view, txs=txs, prev=r.last_hash,
                                                   proposer=r.index)))
        while net.queue:
            net.step()
    return net


def test_a_primary_leaving_one_transaction_out_of_blocks_with_room_loses_its_view():
    net = _censored_net(watch=True)
    assert all(r.view >= 1 for r in net.replicas), [r.view for r in net.replicas]
    delivered = [d.block for d in net.out[1]]
    assert any(TARGET in b.txs for b in delivered)  # the next primary proposed it
    assert sum(1 for b in delivered if b.header.view == 0) > 10  # the censor's blocks kept coming meanwhile
    net.check_agreement(delivered, count=len(delivered))


def test_without_the_watch_the_censor_keeps_its_seat_for_ever():
    """What the watch fixes: every censor's block carries work, so the view timer never runs out."""
    net = _censored_net(watch=False)
    assert all(r.view == 0 for r in net.replicas)
    assert not any(TARGET in d.block.txs for d in net.out[1]) and len(net.out[1]) > 100


def test_a_primary_whose_blocks_are_full_is_not_suspected():
    net = _censored_net(watch=True, full=True)
    assert all(r.view == 0 for r in net.replicas) and len(net.out[1]) > 100


def test_a_primary_filling_its_blocks_with_senders_no_replica_holds_loses_its_view():
    """A Sybil filler: every block full by count, two of its three transactions of senders no honest
    replica holds (never forwarded). An honest primary's round-robin would have reached TARGET's
    sender, placed before them, first: each such block is a skip, and the view changes."""
    net = _censored_net(watch=True, full=True, late=2)
    assert all(r.view >= 1 for r in net.replicas), [r.view for r in net.replicas]
    delivered = [d.block for d in net.out[1]]
    assert any(TARGET in b.txs for b in delivered)
    net.check_agreement(delivered, count=len(delivered))


def test_full_blocks_mostly_of_senders_placed_before_the_watched_one_are_not_skips():
    """An honest primary at overload: its full blocks hold senders placed in its order before the
    watched one's (here all three, then two of three), so it keeps its view."""
    for late in (0, 1):
        net = _censored_net(watch=True, full=True, late=late)
        assert all(r.view == 0 for r in net.replicas) and len(net.out[1]) > 100, late


async def _grant_waiting(c: NodeClient, chain: str, seed: bytes) -> Tx:
    """A clinician's profile committed (a censor lets profiles in), then a patient's grant to them
    submitted: the transaction the censoring primary leaves out."""
    patient, doctor = Identity.from_seed(seed + b" patient"), Identity.from_seed(seed + b" doctor")
    prof = Tx.build(doctor, chain, 1, Profile("Dr. C", "clinician", "o", doctor.box_public))
    await c.submit(prof.raw)
    assert (await c.wait_committed(prof.id.hex(), 30))["code"] == 0
    grant = Tx.build(patient, chain, 1, Grant(doctor.address, (DATA_TYPES["heart_rate"],), 0, ()))
    await c.submit(grant.raw)
    return grant


def test_a_censoring_primary_on_real_validators_loses_its_view_and_the_revoke_commits(tmp_path):
    """Validator 0, the first primary, leaves out every transaction of a sender with a grant waiting
    (MEDCHAIN_BYZANTINE=censor) and proposes the rest. A patient's grant sent to validator 1 waits
    while other senders' work commits steadily; the honest backups watch it left out of blocks with
    room, stop counting the censor's blocks as progress, and move to a new view whose primary
    commits it."""
    nodes = _network(tmp_path, env={0: {"MEDCHAIN_BYZANTINE": "censor"}})
    try:
        async def go() -> None:
            async with NodeClient(nodes[1].url) as c1, NodeClient(nodes[2].url) as c2:
                chain = (await c1.status())["chain_id"]
                grant = await _grant_waiting(c1, chain, b"censored")
                busy = [Identity.from_seed(b"busy sender %d" % k) for k in range(4)]
                nonce, t0, views = 1, time.monotonic(), []
                while time.monotonic() - t0 < 60:
                    # other senders' work, committed under the censor: its blocks keep coming
                    for b in busy:
                        await c2.submit(Tx.build(b, chain, nonce, Profile("p", "r", "o", bytes(32))).raw)
                    nonce += 1
                    st = await c1.tx(grant.id.hex())
                    views.append((await c2.status())["consensus"]["view"])
                    if st["status"] == "committed":
                        break
                    await asyncio.sleep(0.3)
                assert st["status"] == "committed" and st["code"] == 0, st
                assert views[0] == 0 and views[-1] >= 1, views
                # the censor's blocks carried the busy senders' work before the view changed
                assert nonce > 5
        run(go())
    finally:
        for n in nodes:
            n.stop()


def test_a_primary_filling_full_blocks_with_sybil_senders_on_real_validators_loses_its_view(tmp_path):
    """Validator 0, the first primary, leaves out the senders with a grant waiting and pads every block
    to block_max_txs (16 here) with profile updates of fresh keys it never forwarded
    (MEDCHAIN_BYZANTINE=fill): full blocks, which the watch used to take as an overloaded honest
    primary's. The honest backups hold none of the fillers, count each such block a skip, and move to
    a new view whose primary commits the grant."""
    from devices.net.localnet import make_network, start_all
    from node.block import Block
    from node.genesis import Params

    nodes = make_network(tmp_path, 4, params=Params(sender_rate=1e5, sender_burst=1e5, block_max_txs=16))
    nodes[0].env["MEDCHAIN_BYZANTINE"] = "fill"
    start_all(nodes)
    try:
        async def go() -> None:
            async with NodeClient(nodes[1].url) as c1, NodeClient(nodes[2].url) as c2:
                grant = await _grant_waiting(c1, (await c1.status())["chain_id"], b"filled")
                st = await c1.wait_committed(grant.id.hex(), 60)
                assert st["status"] == "committed" and st["code"] == 0, st
                assert (await c2.status())["consensus"]["view"] >= 1
                at = st["height"]
                filled = [Block.decode(await c2.block_raw(h)) for h in range(1, at)]
                full = [b for b in filled if b.header.view == 0 and len(b.txs) == 16]
                assert len(full) >= 3, [(b.header.view, len(b.txs)) for b in filled]  # its blocks kept coming
        run(go())
    finally:
        for n in nodes:
            n.stop()


def test_a_backup_sends_the_watched_transaction_to_the_primary_at_the_grace_and_each_skip(tmp_path):
    """PBFT's backup forwards a request it waits on to the primary itself: the driver sends the
    watched transaction, with its sidecar, once its grace has run out and again after each skip,
    never twice for the same count (a real validator's pool and replica; the p2p host is a recorder)."""
    from types import SimpleNamespace

    from node.genesis import Params, init_home
    from node.ipfs.cid import cid_v1_raw
    from node.multiaddr import peer_id
    from node.sidecar import decode_forwarded
    from node.tx import Write
    from node.validator import Validator

    homes = init_home(tmp_path, "censor-push", [f"127.0.0.1:{9000 + k}" for k in range(4)], int(time.time() * 1000),
                      Params(), p2p=[f"127.0.0.1:{9100 + k}" for k in range(4)])
    v = Validator(homes[1])
    try:
        sent: list[tuple[str, bytes]] = []
        v.net = SimpleNamespace(send=lambda peer, data: sent.append((peer, data)))
        blob = b"w" * 64
        w = Tx.build(Identity.from_seed(b"push writer"), "censor-push", 1,
                     Write(DATA_TYPES["heart_rate"], cid_v1_raw(blob).to_bytes(), 64, 0, 1_000, 2_000))
        assert v.submit_many_sync([(w.raw, blob)]) == [w.id]
        c = v.replica.censor
        c.tick(0, v.replica.view, False, lambda: 0)
        v.replica.watch(*v.admission.watch_candidate())
        assert c.target == w.raw
        v.forwarder.push_watched(c)
        assert sent == []  # within the grace
        c.tick(c.armed_at + c.grace, v.replica.view, False, lambda: 0)
        v.forwarder.push_watched(c)
        v.forwarder.push_watched(c)
        (peer, data), = sent
        assert decode_forwarded(data) == [(w.raw, blob)]
        assert peer == peer_id(v.genesis.validators[v.replica.primary].p2p) and v.replica.primary == 0
        c.delivered(1, make_block(1, txs=[b"other"]), c.armed_at + c.grace)
        v.forwarder.push_watched(c)
        assert len(sent) == 2 and c.skipped == 1
    finally:
        v.close()


async def _first_block(nodes):
    """The network's genesis, once a first block committed (state reads are proven against one)."""
    from node.genesis import Genesis

    gen = Genesis.load(nodes[0].home / "genesis.json")
    async with NodeClient(nodes[0].url) as c0:
        first = Tx.build(Identity.from_seed(b"first sender"), gen.chain_id, 1, Profile("p", "r", "o", bytes(32)))
        await c0.submit(first.raw)
        assert (await c0.wait_committed(first.id.hex(), 30))["status"] == "committed"
    return gen


async def _committed_at(node, txid: str) -> None:
    """`txid` is committed at `node` too: it may deliver a moment after the validator whose proven
    answer the client took, so it is long-polled."""
    async with NodeClient(node.url) as c:
        assert (await c.tx(txid, wait=10))["status"] == "committed"


def _phone(seed: bytes, client: NodeClient, nodes, gen):
    """A phone submitting through `client`, reading and failing over through every validator."""
    from devices.patient.phone import Phone
    from devices.patient.verified_reads import VerifiedReader

    reader = VerifiedReader([n.url for n in nodes], gen.chain_id, gen.validator_keys, session=client.session)
    return Phone(Identity.from_seed(seed), client, gen.chain_id, gen.validator_keys, reader=reader)


def test_a_client_whose_validator_forwards_nothing_gets_its_transaction_committed_by_the_others(tmp_path):
    """Validator 1 answers 202 and keeps its clients' transactions to itself (MEDCHAIN_BYZANTINE=drop):
    the phone, its transaction not committed through it within FAILOVER_S, sends the same signed
    bytes to the other validators and takes the first commit whose proof checks against the genesis."""
    from devices.patient.commits import FAILOVER_S

    nodes = _network(tmp_path, env={1: {"MEDCHAIN_BYZANTINE": "drop"}})
    try:
        async def go() -> float:
            gen = await _first_block(nodes)
            async with NodeClient(nodes[1].url) as c:
                phone = _phone(b"dropped patient", c, nodes, gen)
                t0 = time.monotonic()
                txid = await phone.set_break_glass(False)
                took = time.monotonic() - t0
                await _committed_at(nodes[2], txid)
                return took
        took = run(go())
        assert took >= FAILOVER_S  # it went through the others, after waiting on its own validator
    finally:
        for n in nodes:
            n.stop()


def test_a_client_whose_validator_is_down_gets_its_transaction_committed_by_the_others(tmp_path):
    """The phone's own validator is down (killed): its submission fails to connect, and the same signed
    bytes go to the other genesis validators at once; the commit is taken with its proof. Before, the
    connection error was the phone's answer."""
    nodes = _network(tmp_path)
    try:
        async def go() -> None:
            gen = await _first_block(nodes)
            nodes[1].stop()
            async with NodeClient(nodes[1].url) as c:
                phone = _phone(b"stranded patient", c, nodes, gen)
                txid = await phone.set_break_glass(False)
                await _committed_at(nodes[2], txid)
        run(go())
    finally:
        for n in nodes:
            n.stop()


def test_a_staff_member_whose_validator_is_down_registers_through_the_others(tmp_path):
    """The staff client as the phone: its nonce is read proven through every validator (its own is
    down), and its submission, failing to connect, goes to the others at once and commits with its
    proof. Before, the nonce read or the connection error was its answer."""
    from devices.patient.staff import Staff
    from devices.patient.verified_reads import VerifiedReader

    nodes = _network(tmp_path)
    try:
        async def go() -> None:
            gen = await _first_block(nodes)
            nodes[2].stop()
            async with NodeClient(nodes[2].url) as c:
                reader = VerifiedReader([n.url for n in nodes], gen.chain_id, gen.validator_keys, session=c.session)
                staff = Staff(Identity.from_seed(b"stranded nurse"), c, gen.chain_id, reader, gen.validator_keys)
                txid = await staff.register("N", "nurse", "General Hospital")
                await _committed_at(nodes[0], txid)
                assert staff.next_nonce == 2
        run(go())
    finally:
        for n in nodes:
            n.stop()


def test_a_client_whose_validator_dies_while_it_waits_gets_its_transaction_committed_by_the_others(tmp_path):
    """Validator 1 takes the phone's transaction and forwards nothing (MEDCHAIN_BYZANTINE=drop), then is
    killed while the phone waits on its answer: the broken wait sends the same signed bytes to the
    others then, before FAILOVER_S, and the commit is taken with its proof."""
    from devices.patient.commits import FAILOVER_S

    nodes = _network(tmp_path, env={1: {"MEDCHAIN_BYZANTINE": "drop"}})
    try:
        async def go() -> float:
            gen = await _first_block(nodes)
            async with NodeClient(nodes[1].url) as c:
                phone = _phone(b"abandoned patient", c, nodes, gen)
                await phone.sync()
                loop = asyncio.get_running_loop()
                loop.call_later(2.0, nodes[1].kill)  # SIGKILL: dead at once
                t0 = time.monotonic()
                txid = await phone.set_break_glass(False)
                took = time.monotonic() - t0
                await _committed_at(nodes[2], txid)
                return took
        took = run(go())
        assert took < FAILOVER_S  # the broken wait, not the failover timer, sent it to the others
    finally:
        for n in nodes:
            n.stop()
