"""Crash recovery and byzantine corner cases of the view change, on a hand-scheduled network whose
replicas persist and restart exactly as node/validator.py makes them (records, view, NEW-VIEW).

Each test is a scenario an independent review of this code produced as a fork or a stall (reproduced
before the fix): an honest restart must not let a byzantine primary commit a second block at a
sequence, a prepared certificate must survive its record being rewritten in a later view, a base
block certified only inside a view change must not stall the network, and a replica restarted in the
middle of a view change must send its view change again."""

from __future__ import annotations

from node.consensus import Commit, Prepare, ViewChange
from node.consensus import viewchange as vcm
from node.consensus.recovery import decode_record
from tests.consensus_sim import HandNet, make_block, pre_prepare, signed


def test_restart_keeps_the_installed_view_and_its_signed_records():
    """Byzantine primary 1 of view 1 sends X to 0 and 2; 2 commits X; 0 crashes and restarts, then the
    primary offers 0 and 3 a conflicting Y at the same (view, seq): 0 must refuse it."""
    net = HandNet(4)
    for i in range(4):
        net.nodes[i].handle(net.nodes[i].r.start_view_change(1), net)
    net.deliver(lambda s, d, m: True)
    assert all(nd.r.view == 1 and not nd.r.changing for nd in net.nodes)
    x = make_block(1, view=1, proposer=1, txs=[b"X"])
    y = make_block(1, view=1, proposer=1, txs=[b"Y"])
    for d in (0, 2):
        net.inject(d, pre_prepare(x))
    net.deliver(lambda s, d, m: s in (0, 2) and d in (0, 2) and m.tag == 2)
    net.deliver(lambda s, d, m: s == 0 and d == 2 and m.tag == 3)
    net.inject(2, signed(Commit, 1, 1, 1, x.hash))
    assert net.nodes[2].ledger[0].hash == x.hash
    net.drop(lambda s, d, m: 0 in (s, d))
    net.nodes[0].restart(net.now)
    r0 = net.nodes[0].r
    assert r0.view == 1 and not r0.changing and r0.state.log[1].digest == x.hash  # reinstalled, bound by its record
    net.tick([0], dt=600)
    net.deliver(lambda s, d, m: s == 0 and d == 1 and m.tag == 4)
    net.deliver(lambda s, d, m: s == 1 and d == 0 and m.tag == 7)
    net.drop(lambda s, d, m: True)
    for d in (0, 3):
        net.inject(d, pre_prepare(y))
    net.deliver(lambda s, d, m: s in (0, 3) and d in (0, 3) and m.tag in (2, 3))
    for d in (0, 3):
        net.inject(d, signed(Commit, 1, 1, 1, y.hash))
    net.assert_no_fork()
    assert all(b.hash != y.hash for nd in net.nodes for b in nd.ledger)
    assert any(e["kind"] == "equivocating-primary" for e in r0.evidence)


def test_prepared_certificate_survives_its_record_being_rewritten_in_a_later_view():
    """Honest 2 commits c in view 0 (with byzantine 3); 0 had prepared c. In view 1, 0 signs for the
    same sequence again (rewriting its record), crashes, restarts: its view change must still carry
    the view-0 certificate, so no later view can commit another block at that sequence."""
    net = HandNet(4)
    n = net.nodes
    c = make_block(1, view=0, proposer=0, txs=[b"c"])
    n[0].handle(n[0].r.propose(c), net)
    pp = pre_prepare(c)
    net.deliver(lambda s, d, m: s == 0 and d == 2 and m.tag == 1)
    byz_prep = signed(Prepare, 3, 0, 1, c.hash, pp_sig=pp.sig)
    for d in (0, 2):
        net.inject(d, byz_prep)
    net.deliver(lambda s, d, m: s == 2 and d == 0 and m.tag == 2)
    net.deliver(lambda s, d, m: s == 0 and d == 2 and m.tag == 3)
    net.inject(2, signed(Commit, 3, 0, 1, c.hash))
    assert n[2].ledger[0].hash == c.hash
    net.pending = []

    def ok(s, d, m):  # 2 is slow from here on; byzantine 3 withholds its votes in views 1-2
        return 2 not in (s, d) and not (3 in (s, d) and m.tag in (1, 2, 3) and m.view < 3)

    crashed = False
    for _ in range(400):
        net.tick([0, 1, 3])
        net.deliver(ok)
        net.drop(lambda s, d, m: not ok(s, d, m))
        r0 = n[0].r
        if not crashed and r0.view == 1 and not r0.changing and 1 in r0.state.log and r0.state.log[1].block is not None:
            rec = decode_record(n[0].disk_log[1])
            assert rec.view == 1 and rec.pcert is not None and rec.pcert[0].view == 0  # still on disk
            net.pending = [p for p in net.pending if 0 not in p[:2]]
            n[0].restart(net.now)
            assert n[0].r.state.prepared[1][0].digest == c.hash
            crashed = True
        r3 = n[3].r
        if r3.view == 3 and r3.can_propose() and r3.next_seq == 1:
            n[3].handle(r3.propose(make_block(1, view=3, proposer=3, txs=[b"c-prime"])), net)
        if n[0].ledger:
            break
    assert crashed
    net.assert_no_fork()
    assert all(b.txs != (b"c-prime",) for nd in net.nodes for b in nd.ledger[:1])


def test_base_block_certified_only_inside_a_view_change_is_delivered_by_who_prepared_it():
    """Byzantine 3 alone collected the commit certificate of block 1 and shows it in a view change for
    every view, never serving the block; the honest replicas prepared block 1, so they deliver it from
    that certificate and go on."""
    net = HandNet(4)
    n = net.nodes
    honest = [0, 1, 2]
    x = make_block(1, view=0, proposer=0, txs=[b"X"])
    n[0].handle(n[0].r.propose(x), net)
    net.deliver(lambda s, d, m: m.tag in (1, 2) and d in honest)
    commits = [m for s, d, m in net.pending if m.tag == 3 and d == 3]
    net.pending = []
    cert = tuple(sorted([(m.sender, m.sig) for m in commits] + [(3, signed(Commit, 3, 0, 1, x.hash).sig)]))[:3]
    body = vcm.make_body(x.hash, 0, cert, [])
    for w in range(1, 12):
        for d in honest:
            net.inject(d, signed(ViewChange, 3, w, 1, vcm.body_hash(body), body=body, blocks=()))
    for _ in range(3000):
        net.propose_all(honest)
        net.tick(honest)
        net.deliver(lambda s, d, m: s in honest and d in honest and not (m.tag == 3 and m.view == 0))
        net.drop(lambda s, d, m: True)
        if all(len(n[i].ledger) >= 3 for i in honest):
            break
    assert all(len(n[i].ledger) >= 3 for i in honest), [len(n[i].ledger) for i in honest]
    assert all(n[i].ledger[0].hash == x.hash for i in honest)
    net.assert_no_fork()


def test_replica_restarted_during_a_view_change_sends_its_view_change_again():
    """Replica 3 is down for good; 1 and 2 time out and ask for view 1, 0 joins; 2 restarts right after
    persisting view 1, before its view change got out: the view change must still complete."""
    net = HandNet(4)
    n = net.nodes
    alive = [0, 1, 2]
    for step in range(50):
        if step < 10:
            net.propose_all(alive)
        net.tick(alive)
        net.deliver(lambda s, d, m: s in alive and d in alive)
        net.drop(lambda s, d, m: True)
        if all(len(n[i].ledger) >= 2 for i in alive):
            break
    for _ in range(200):
        net.now += 100
        for i in alive:
            n[i].handle(n[i].r.tick(net.now, pending=(i != 0)), net)
        net.deliver(lambda s, d, m: s in alive and d in alive and not (s == 2 and m.tag == 6))
        net.drop(lambda s, d, m: True)
        if n[2].disk_view == 1:
            break
    n[2].restart(net.now)
    assert n[2].r.changing and n[2].r.state.own_vc is not None
    before = [len(n[i].ledger) for i in alive]
    for _ in range(600):
        net.propose_all(alive)
        net.tick(alive)
        net.deliver(lambda s, d, m: s in alive and d in alive)
        net.drop(lambda s, d, m: True)
        if all(len(n[i].ledger) > b for i, b in zip(alive, before, strict=True)):
            break
    assert all(len(n[i].ledger) > b for i, b in zip(alive, before, strict=True)), "stalled"
    net.assert_no_fork()


def _a2_fixed_by_view_1_a1_committed():
    """Blocks A1 and A2 prepared in view 0, nothing committed; the NEW-VIEW of view 1 fixes both; A1
    commits in view 1, A2's messages of view 1 are lost. Returns the network, A1, A2, and B2: another
    block at sequence 2 that byzantine primary 1 may offer."""
    net = HandNet(4)
    n = net.nodes
    a1 = make_block(1, view=0, proposer=0, txs=[b"A1"])
    a2 = make_block(2, view=0, proposer=0, txs=[b"A2"], prev=a1.hash)
    for b in (a1, a2):
        n[0].handle(n[0].r.propose(b), net)
    net.deliver(lambda s, d, m: m.tag in (1, 2))  # pre-prepares and prepares
    net.drop(lambda s, d, m: m.tag == 3)  # no commit in view 0
    for i in range(4):
        n[i].handle(n[i].r.start_view_change(1), net)
    net.deliver(lambda s, d, m: not (m.tag in (1, 2, 3) and m.seq == 2))  # view 1 commits A1 only
    net.drop(lambda s, d, m: True)
    assert all([b.hash for b in nd.ledger] == [a1.hash] and nd.ledger[0].cert_view == 1 for nd in n)
    assert all(nd.r.state.fixed.get(2) == a2.hash for nd in n)
    return net, a1, a2, make_block(2, view=1, proposer=1, txs=[b"B2"], prev=a1.hash)


def test_a_replica_restarted_in_a_view_whose_new_view_it_lost_waits_for_it():
    """As below, but replicas 2 and 3 come back without the NEW-VIEW of view 1 (a checkpoint installed
    there, or a crash between the view's block and its NEW-VIEW): they started NORMAL in view 1 with
    none of its obligations, and byzantine primary 1 could get them to prepare B2 at a sequence the
    NEW-VIEW fixed (a PBFT review). Now they wait for it: B2 is not prepared, their heartbeat names
    view 0, and the NEW-VIEW the others send again installs the view with its obligations."""
    net, a1, a2, b2 = _a2_fixed_by_view_1_a1_committed()
    n = net.nodes
    for i in (2, 3):
        n[i].disk_nv = None  # lost
        n[i].restart(net.now)
        assert n[i].r.view == 1 and n[i].r.changing  # before: NORMAL, nothing fixed
        net.inject(i, pre_prepare(b2))
    assert not [m for s, d, m in net.pending if m.tag == 2 and m.digest == b2.hash]  # nobody prepares B2
    for _ in range(20):  # heartbeats (view 0 from the waiting) and the NEW-VIEW sent again
        net.tick(range(4), dt=500)
        net.deliver(lambda s, d, m: True)
        if not n[2].r.changing and not n[3].r.changing:
            break
    for i in (2, 3):
        r = n[i].r
        assert r.view == 1 and not r.changing and r.state.fixed.get(2) == a2.hash
    net.assert_no_fork()


def test_a_replica_restarted_in_a_view_with_a_block_of_it_committed_keeps_the_new_views_obligations():
    """Blocks A1 and A2 prepared in view 0, nothing committed; the NEW-VIEW of view 1 fixes both; A1
    commits in view 1, A2's messages of view 1 are lost. Replicas 2 and 3 restart: their heads are
    certified in view 1, so they start in that view, not waiting for its NEW-VIEW. Byzantine primary 1
    then offers B2 at sequence 2. Before, the restarted replicas had forgotten what the NEW-VIEW fixed
    and prepared B2; now its obligations are reinstalled, B2 is refused, and the NEW-VIEW is relayed
    again to a replica below the view."""
    net, a1, a2, b2 = _a2_fixed_by_view_1_a1_committed()
    n = net.nodes
    for i in (2, 3):
        n[i].restart(net.now)
        r = n[i].r
        assert r.view == 1 and not r.changing
        assert r.state.fixed.get(2) == a2.hash and r.state.new_view_msg is not None  # before: {} and None
        assert r.view_changes == 0  # a view change reinstalled is not counted as another one
    for i in (2, 3):
        net.inject(i, pre_prepare(b2))
    assert not [m for s, d, m in net.pending if m.tag == 2 and m.digest == b2.hash]  # nobody prepares B2
    assert all(n[i].r.ignored_by_reason().get("not-fixed", 0) == 1 for i in (2, 3))
    net.assert_no_fork()
