"""PBFT under faults on the seeded simulated network (DESIGN.md section 5), and the view-change messages."""

from __future__ import annotations

import pytest

from node.block import verify_cert, vote_digest
from node.consensus import (
    Broadcast,
    Checkpoint,
    Commit,
    ConsensusError,
    NewView,
    Prepare,
    PrePrepare,
    ViewChange,
    decode_message,
)
from node.consensus import viewchange as vcm
from node.crypto import ecdsa
from node.wire import encode
from tests.consensus_sim import (
    CHAIN,
    IDS,
    SimNet,
    chaos_run,
    make_block,
    make_replica,
    pre_prepare,
    pubs,
    sent,
    signed,
)


# ---- DESIGN.md section 5 on the simulated network: view change, crashes, partitions, checkpoints -------
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [4, 7])
def test_silent_primary_is_replaced(n, seed):
    net = SimNet(n, 100 + seed, silent={0})
    proposed = net.run(5, max_ticks=300)
    live = list(range(1, n))
    net.check_agreement(proposed, replicas=live, count=5)
    assert all(net.replicas[i].view >= 1 and not net.replicas[i].changing for i in live)
    assert all(net.replicas[i].view_changes >= 1 for i in live)


@pytest.mark.parametrize("seed", range(4))
def test_primary_crashes_mid_commit_and_rejoins(seed):
    net = SimNet(4, 200 + seed)
    net.run(3, max_ticks=0)
    net.crash(0)
    net.run(6, max_ticks=200)  # the others move to a new view and go on
    assert all(len(net.out[i]) >= 6 for i in (1, 2, 3))
    net.restart(0)
    proposed_all = [d.block for o in net.out for d in o]
    net.run(9, max_ticks=300)
    net.check_agreement(proposed_all + [d.block for o in net.out for d in o], count=9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [4, 7])
def test_f_replicas_killed_and_restarted_converge(n, seed):
    net = SimNet(n, 300 + seed)
    f = (n - 1) // 3
    victims = net.rng.sample(range(n), f)  # may include the primary
    net.run(2)
    for v in victims:
        net.crash(v)
    net.run(5, max_ticks=200)
    for v in victims:
        net.restart(v)
    net.run(8, max_ticks=300)
    blocks = [d.block for o in net.out for d in o]
    net.check_agreement(blocks, count=8)


@pytest.mark.parametrize("seed", range(4))
def test_partitioned_replica_heals_and_converges(seed):
    net = SimNet(4, 400 + seed)
    cut_off = 1 + seed % 3
    net.cut = {frozenset((cut_off, j)) for j in range(4) if j != cut_off}
    net.run(4, max_ticks=100, until=lambda: all(len(net.out[i]) >= 4 for i in range(4) if i != cut_off))
    assert len(net.out[cut_off]) == 0
    net.cut = set()
    net.run(6, max_ticks=400)
    net.check_agreement([d.block for o in net.out for d in o], count=6)


@pytest.mark.parametrize("seed", range(3))
def test_replica_behind_the_window_catches_up_past_stable_checkpoints(seed):
    net = SimNet(4, 500 + seed, window=8)  # a checkpoint every 2 blocks
    net.crash(3)
    net.run(30, max_ticks=50, until=lambda: all(len(net.out[i]) >= 30 for i in range(3)))
    assert all(net.replicas[i].low >= 22 for i in range(3))  # stable checkpoints moved the window on
    assert all(not net.replicas[i].checkpoints or min(net.replicas[i].checkpoints) > net.replicas[i].low
               for i in range(3))  # and what lay below was collected
    net.restart(3)
    net.run(34, max_ticks=400)
    net.check_agreement([d.block for o in net.out for d in o], count=34)


def test_f_plus_one_byzantine_replicas_can_fork_and_the_fork_is_detected():
    """Negative test: with f+1 = 2 colluding validators of 4 (the primary and replica 3), replicas 1 and 2
    deliver different blocks at sequence 1. Safety is gone, as PBFT says; what the harness shows is that
    it is detected: the delivered chains differ, and the prepares carry the primary's two signatures."""
    net = SimNet(4, 7)
    a, b = make_block(1, txs=[b"A"]), make_block(1, txs=[b"B"])
    for honest, blk in ((1, a), (2, b)):
        r = net.replicas[honest]
        acts = r.on_message(pre_prepare(blk))
        acts += r.on_message(signed(Prepare, 3, 0, 1, blk.hash, pp_sig=pre_prepare(blk).sig))
        for s in (0, 3):
            acts += r.on_message(signed(Commit, s, 0, 1, blk.hash))
        net.send(honest, acts)
    assert net.out[1][0].block.hash == a.hash and net.out[2][0].block.hash == b.hash  # the fork
    with pytest.raises(AssertionError, match="fork"):
        net.check_agreement([a, b], replicas=[1, 2], count=1)
    assert verify_cert(net.out[1][0].block, pubs(4)) and verify_cert(net.out[2][0].block, pubs(4))
    for i in (1, 2):
        net.send(i, net.replicas[i].tick(1000))  # status heartbeats: "I delivered this block at height 1"
    while net.queue:
        net.step()
    kinds = {(e["kind"], e["validator"]) for i in (1, 2) for e in net.replicas[i].evidence}
    assert ("fork", 1) in kinds and ("fork", 2) in kinds


@pytest.mark.parametrize("seed", range(6))
def test_seeded_chaos_schedules_converge(seed):
    chaos_run(9000 + seed)


# ---- view change messages: wire form and the checks on their certificates ------------------------------
def _committed_pair():
    """Replicas of a 4-network that committed block 1 and prepared block 2 (primary 0, view 0)."""
    net = SimNet(4, 1)
    a = make_block(1, txs=[b"a"])
    net.send(0, net.replicas[0].propose(a))
    while net.queue:
        net.step()
    b = make_block(2, txs=[b"b"], prev=a.hash)
    net.send(0, net.replicas[0].propose(b))
    # deliver only pre-prepares and prepares of block 2: it is prepared, not committed
    while net.queue:
        dst, raw = net.queue.pop(0)
        m = decode_message(raw)
        if not isinstance(m, Commit):
            net.send(dst, net.replicas[dst].on_message(m))
    return net, a, b


def test_view_change_carries_commit_proof_and_prepared_certificate():
    net, a, b = _committed_pair()
    r = net.replicas[2]
    assert r.last_delivered == 1 and 2 in r.prepared
    acts = r.start_view_change(1)
    (vc,) = sent(acts, ViewChange)
    back = decode_message(vc.encode())
    assert back == vc
    info = vcm.parse(back, CHAIN, 4, lambda i, d, s: ecdsa.verify(pubs(4)[i], d, s))
    assert info.last_seq == 1 and info.last_hash == a.hash and info.prepared[2].digest == b.hash
    assert info.blocks[b.hash].txs == b.txs
    sel = vcm.select([info])
    assert sel.base_seq == 1 and sel.chain == ((2, b.hash),)


def test_tampered_view_changes_are_refused():
    net, a, b = _committed_pair()
    vc = sent(net.replicas[2].start_view_change(1), ViewChange)[0]
    verify = lambda i, d, s: ecdsa.verify(pubs(4)[i], d, s)  # noqa: E731
    stripped = vcm.parse(ViewChange(vc.view, vc.seq, vc.digest, vc.sender, vc.sig, vc.body, ()), CHAIN, 4, verify)
    assert stripped.blocks == {} and 2 in stripped.prepared  # blocks are optional, certificates are not
    other = make_block(2, txs=[b"other"], prev=a.hash).encode()
    with pytest.raises(ConsensusError, match="did not prepare"):
        vcm.parse(ViewChange(vc.view, vc.seq, vc.digest, vc.sender, vc.sig, vc.body, (other,)), CHAIN, 4, verify)
    # a body whose certificates do not verify: claims block 1 committed with signatures over another hash
    body = vcm.make_body(b.hash, 0, net.out[2][0].block.cert, [])
    with pytest.raises(ConsensusError, match="certificate does not verify"):
        vcm.parse(ViewChange(1, 1, vcm.body_hash(body), 2, bytes(64), body, ()), CHAIN, 4, verify)
    # a prepared certificate with too few prepares
    cert, _ = net.replicas[2].prepared[2]
    weak = vcm.PreparedCert(2, 0, cert.header, cert.pp_sig, cert.prepares[:1])
    body = vcm.make_body(a.hash, 0, net.out[2][0].block.cert, [weak])
    with pytest.raises(ConsensusError, match="fewer than 2f"):
        vcm.parse(ViewChange(1, 1, vcm.body_hash(body), 2, bytes(64), body, ()), CHAIN, 4, verify)
    # the digest must be the hash of the body (else the signature would not cover it)
    raw = encode([6, 1, 1, bytes(32), 2, bytes(64), body, []])
    with pytest.raises(ConsensusError, match="hash of the body"):
        decode_message(raw)


def test_new_view_needs_2f_plus_1_valid_view_changes():
    net, a, b = _committed_pair()
    vcs = [sent(net.replicas[i].start_view_change(1), ViewChange)[0] for i in (0, 2, 3)]
    r = net.replicas[1]  # the primary of view 1 receives them
    acts = []
    for vc in vcs[:1]:
        acts += r.on_message(vc)
    assert not any(isinstance(x, Broadcast) and x.msg.tag == 7 for x in acts)  # 1 + its own: not yet (f+1 joins)
    for vc in vcs[1:]:
        acts += r.on_message(vc)
    nv = [x.msg for x in acts if isinstance(x, Broadcast) and x.msg.tag == 7]
    assert nv and r.view == 1 and not r.changing
    pps = sent(acts, PrePrepare)
    assert [p.digest for p in pps] == [b.hash] and pps[0].view == 1 and pps[0].block.header.view == 0
    # a backup installs the same new view and prepares the carried-over block
    got = net.replicas[2].on_message(nv[0])
    assert net.replicas[2].view == 1 and not net.replicas[2].changing and net.replicas[2].fixed == {2: b.hash}
    got += net.replicas[2].on_message(pps[0])
    assert sent(got, Prepare)
    # a new view with a view change dropped (2 < 2f+1) or from the wrong sender is refused
    body = vcm.parse_new_view_body(nv[0].body)
    short = encode([m.encode() for m in body[:2]])
    bad = signed(NewView, 1, 1, 0, vcm.body_hash(short), body=short)
    fresh = make_replica(4, 3)
    fresh.start_view_change(1)
    assert fresh.on_message(bad) == [] and fresh.changing
    wrong = signed(NewView, 2, 1, 0, nv[0].digest, body=nv[0].body)
    assert fresh.on_message(wrong) == [] and fresh.changing
    assert fresh.on_message(nv[0]) and not fresh.changing


def test_lagging_replica_refuses_a_new_primary_block_below_the_new_view_base():
    """A byzantine new primary offers a lagging replica a fresh block at a height the new view's
    certificates prove committed: it must not be prepared (only the certified block may land there)."""
    net, a, b = _committed_pair()
    vcs = [sent(net.replicas[i].start_view_change(1), ViewChange)[0] for i in (0, 2, 3)]
    lagging = make_replica(4, 2)  # has delivered nothing
    lagging.start_view_change(1)
    nv_acts = []
    for vc in vcs:
        nv_acts += net.replicas[1].on_message(vc)
    nv = [x.msg for x in nv_acts if isinstance(x, Broadcast) and x.msg.tag == 7][0]
    lagging.on_message(nv)
    assert lagging.view == 1 and lagging.floor == 1
    forged = make_block(1, view=1, proposer=1, txs=[b"conflicting"])
    assert lagging.on_message(pre_prepare(forged)) == [] and 1 not in lagging.log


def test_buffers_hold_only_verified_bounded_input(monkeypatch):
    r = make_replica(4, 2)
    r.start_view_change(1)
    a = make_block(1, view=1, proposer=1)
    junk = Prepare(1, 1, a.hash, 3, bytes(64))  # unsigned, for the view we wait to enter
    assert r.on_message(junk) == [] and r._early_view == []
    assert r.on_message(signed(Prepare, 3, 1, 1, a.hash)) == [] and len(r._early_view) == 1
    # one checkpoint root per validator and sequence
    q = make_replica(4, 1, window=4)
    for k in range(50):
        q.on_message(signed(Checkpoint, 3, 0, 1, ecdsa.sha256(b"root %d" % k)))
    assert sum(len(v) for v in q.checkpoints[1].values()) == 1
    # view changes for far-future views are not kept
    net, _, _ = _committed_pair()
    far = sent(net.replicas[3].start_view_change(100), ViewChange)[0]
    assert net.replicas[1].on_message(far) == [] and 100 not in net.replicas[1].vcs
    # a view change carries only the prepared blocks that fit in one message
    monkeypatch.setattr(vcm, "VC_BLOCK_BUDGET", 10)
    (vc,) = sent(net.replicas[2].start_view_change(1), ViewChange)
    assert vc.blocks == () and 2 in vcm.parse(vc, CHAIN, 4, lambda i, d, s: ecdsa.verify(pubs(4)[i], d, s)).prepared


@pytest.mark.parametrize("n", [4, 7])
def test_view_change_needs_a_full_quorum_on_its_last_commit_certificate(n):
    """2f+1 commit signatures certify the last committed block; 2f (one short) do not, nor do 2f+1
    entries with a repeated signer. Checked for n=4 (q=3) and n=7 (q=5)."""
    q = (n + (n - 1) // 3) // 2 + 1
    last = make_block(1, n=n)
    digest = vote_digest(CHAIN, 0, 1, last.hash)
    votes = [[i, IDS[i].sign(digest)] for i in range(n)]
    verify = lambda i, d, s: ecdsa.verify(pubs(n)[i], d, s)  # noqa: E731

    def vc_with(cert):
        body = vcm.make_body(last.hash, 0, tuple(map(tuple, cert)), [])
        return ViewChange(1, 1, vcm.body_hash(body), 1, bytes(64), body, ())

    info = vcm.parse(vc_with(votes[:q]), CHAIN, n, verify)
    assert info.last_seq == 1 and len(info.cert) == q
    for short in (votes[:q - 1], votes[n - q + 1:], votes[:q - 1] + [votes[0]]):
        with pytest.raises(ConsensusError, match="certificate does not verify"):
            vcm.parse(vc_with(short), CHAIN, n, verify)
