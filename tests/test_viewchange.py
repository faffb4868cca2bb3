"""PBFT under faults on the seeded simulated network (DESIGN.md section 5), and the view-change messages."""

from __future__ import annotations

import pytest

from node.block import GENESIS_PREV, Block, verify_cert, vote_digest
from node.consensus import (
    Broadcast,
    Checkpoint,
    Commit,
    ConsensusError,
    Deliver,
    NewView,
    Prepare,
    PrePrepare,
    Send,
    ViewChange,
    ViewChanged,
    decode_message,
)
from node.consensus import viewchange as vcm
from node.consensus.messages import Status, Suspect
from node.consensus.state import MAX_EVIDENCE, Ignored, Instance
from node.crypto import ecdsa
from node.wire import encode
from tests.consensus_sim import (
    CHAIN,
    IDS,
    HandNet,
    SimNet,
    chaos_run,
    delivered,
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
    assert all(not net.replicas[i].state.checkpoints or min(net.replicas[i].state.checkpoints) > net.replicas[i].low
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
    assert ("conflicting-status", 1) in kinds and ("conflicting-status", 2) in kinds


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
    assert r.last_delivered == 1 and 2 in r.state.prepared
    acts = r.start_view_change(1)
    (vc,) = sent(acts, ViewChange)
    back = decode_message(vc.encode())
    assert back == vc
    info = vcm.parse(back, CHAIN, 4, lambda i, d, s: ecdsa.verify(pubs(4)[i], d, s))
    assert info.last_seq == 1 and info.last_hash == a.hash and info.prepared[2].digest == b.hash
    assert info.blocks[b.hash].txs == b.txs
    assert info.prepared[2] == r.state.prepared[2][0]  # the certificate as the sender holds it, every field
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
    cert, _ = net.replicas[2].state.prepared[2]
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
    assert net.replicas[2].view == 1 and not net.replicas[2].changing and net.replicas[2].state.fixed == {2: b.hash}
    got += net.replicas[2].on_message(pps[0])
    assert sent(got, Prepare)
    # a new view with a view change dropped (2 < 2f+1) or from the wrong sender is refused
    body = vcm.parse_new_view_body(nv[0].body)
    short = encode([m.encode() for m in body[:2]])
    bad = signed(NewView, 1, 1, 0, vcm.body_hash(short), body=short)
    fresh = make_replica(4, 3)
    fresh.start_view_change(1)
    assert fresh.on_message(bad) == [] and fresh.changing
    fresh = make_replica(4, 3)
    fresh.start_view_change(1)
    wrong = signed(NewView, 2, 1, 0, nv[0].digest, body=nv[0].body)
    assert fresh.on_message(wrong) == [] and fresh.changing
    assert fresh.on_message(nv[0]) and not fresh.changing
    # what a bad NEW-VIEW costs: counted before any view change's signature is checked, refused for a
    # view far above ours, and not checked again once its primary's NEW-VIEW for that view failed
    checks = [0]
    counting = make_replica(4, 3)
    inner = counting.state.verify
    counting.state.verify = lambda *a: checks.__setitem__(0, checks[0] + 1) or inner(*a)
    counting.start_view_change(1)
    assert counting.on_message(bad) == [] and checks[0] == 1  # its own signature only (2 < 2f+1 senders)
    far_view = 1 + 4 * 4 * 4
    far = signed(NewView, far_view % 4, far_view, 0, vcm.body_hash(short), body=short)
    assert counting.on_message(far) == [] and checks[0] == 2
    forged = encode([m.encode() for m in body[:2]] + [body[1].encode()])  # 3 entries, 2 senders
    again = signed(NewView, 1, 1, 0, vcm.body_hash(forged), body=forged)
    assert counting.on_message(again) == [] and checks[0] == 3
    assert counting.state.bad_new_views == {1}
    assert counting.on_message(nv[0]) == [] and checks[0] == 4  # view 1's primary failed once: not again


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
    assert lagging.view == 1 and lagging.state.floor == 1
    forged = make_block(1, view=1, proposer=1, txs=[b"conflicting"])
    assert lagging.on_message(pre_prepare(forged)) == [] and 1 not in lagging.state.log


def test_buffers_hold_only_verified_bounded_input(monkeypatch):
    r = make_replica(4, 2)
    r.start_view_change(1)
    a = make_block(1, view=1, proposer=1)
    junk = Prepare(1, 1, a.hash, 3, bytes(64))  # unsigned, for the view we wait to enter
    assert r.on_message(junk) == [] and r.state.early_view == []
    assert r.on_message(signed(Prepare, 3, 1, 1, a.hash)) == [] and len(r.state.early_view) == 1
    # one checkpoint root per validator and sequence
    q = make_replica(4, 1, window=4)
    for k in range(50):
        q.on_message(signed(Checkpoint, 3, 0, 1, ecdsa.sha256(b"root %d" % k)))
    assert sum(len(v) for v in q.state.checkpoints[1].values()) == 1
    # view changes for far-future views are not kept
    net, _, _ = _committed_pair()
    far = sent(net.replicas[3].start_view_change(100), ViewChange)[0]
    assert net.replicas[1].on_message(far) == [] and 100 not in net.replicas[1].state.vcs
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


# ---- viewchange.parse and select as pure functions, on hand-made certificates ---------------------------
def _vc_parts(n=4):
    """Block A committed at seq 1 (view 0); block B prepared at seq 2 in view 1 (primary 1)."""
    a = make_block(1, n=n)
    b = make_block(2, n=n, view=1, prev=a.hash)
    vd = vote_digest(CHAIN, 0, 1, a.hash)
    cert = [[i, IDS[i].sign(vd)] for i in range(3)]
    pp_sig = IDS[1].sign(m_signed(1, 1, 2, b.hash))
    preps = [[i, IDS[i].sign(m_signed(2, 1, 2, b.hash))] for i in (0, 2)]
    return a, b, cert, [2, 1, b.header.encode(), pp_sig, preps]


def m_signed(tag, view, seq, digest):
    from node.consensus.messages import signed_digest
    return signed_digest(tag, CHAIN, view, seq, digest)


def _vc(body_obj, seq=1, blocks=(), view=2):
    body = encode(body_obj)
    return ViewChange(view, seq, vcm.body_hash(body), 3, bytes(64), body, tuple(blocks))


def test_parse_and_select_accept_well_formed_certificates():
    a, b, cert, prep = _vc_parts()
    verify = lambda i, d, s: ecdsa.verify(pubs(4)[i], d, s)  # noqa: E731
    info = vcm.parse(_vc([a.hash, 0, cert, [prep]], blocks=[b.encode()]), CHAIN, 4, verify)
    assert (info.last_seq, info.last_hash, info.cert_view) == (1, a.hash, 0)
    assert info.prepared[2].view == 1 and info.prepared[2].digest == b.hash and info.blocks[b.hash] == b
    assert info.prepared[2].prepares == ((0, prep[4][0][1]), (2, prep[4][1][1]))
    sel = vcm.select([info])
    assert (sel.base_seq, sel.base_hash, sel.chain, sel.top) == (1, a.hash, ((2, b.hash),), 2)
    assert sel.base_cert == tuple((c[0], c[1]) for c in cert) and sel.base_cert_view == 0
    genesis = vcm.parse(_vc([bytes(32), 0, [], []], seq=0), CHAIN, 4, verify)
    assert genesis.last_seq == 0 and genesis.prepared == {} and vcm.select([genesis]).top == 0


def _bad_bodies():
    a, b, cert, prep = _vc_parts()
    p = lambda i, v: [*prep[:i], v, *prep[i + 1:]]  # noqa: E731
    other = make_block(2, view=1, prev=a.hash, txs=[b"x"])
    return [
        (_vc([a.hash, 0, cert]), r"^view change body is \[last_hash, cert_view, cert, prepared\]$"),
        (_vc([a.hash[:31], 0, cert, []]), r"^view change body is \["),
        (_vc([a.hash, "0", cert, []]), r"^view change body is \["),
        (_vc([a.hash, 0, b"c", []]), r"^view change body is \["),
        (_vc([a.hash, 0, cert, b"p"]), r"^view change body is \["),
        (_vc(b"x"), r"^view change body is \["),
        (_vc([a.hash, 0, [], []], seq=0), "^a view change from height 0 carries no certificate$"),
        (_vc([bytes(32), 0, cert, []], seq=0), "^a view change from height 0 carries no certificate$"),
        (_vc([a.hash, 0, cert[:1] + [[1, "s"]], []]), "^the last committed block's certificate does not verify$"),
        (_vc([a.hash, 0, cert[:2] + [[3, cert[2][1]]], []]), "certificate does not verify"),  # not 3's vote
        (_vc([a.hash, 0, cert[:2] + [[4, cert[2][1]]], []]), "certificate does not verify"),  # index out of range
        (_vc([a.hash, 1, cert, []]), "certificate does not verify"),  # votes were over view 0
        (_vc([a.hash, 0, cert, [prep[:4]]]), r"^prepared entry is \[seq, view, header, pp_sig, prepares\]$"),
        (_vc([a.hash, 0, cert, [p(0, "2")]]), r"^prepared entry is \["),
        (_vc([a.hash, 0, cert, [p(2, "h")]]), r"^prepared entry is \["),
        (_vc([a.hash, 0, cert, [p(4, b"x")]]), r"^prepared entry is \["),
        (_vc([a.hash, 0, cert, [p(2, b"bad")]]), "^prepared header: "),
        (_vc([a.hash, 0, cert, [prep, prep]]), "^prepared entry out of range or repeated$"),
        (_vc([a.hash, 0, cert, [[1, 1, make_block(1, view=1).header.encode(), prep[3], prep[4]]]]),
         "out of range or repeated"),  # at or below its last commit
        (_vc([a.hash, 0, cert, [prep]], view=1), "out of range or repeated"),  # prepared in the view it enters
        (_vc([a.hash, 0, cert, [p(0, 3)]]), "out of range or repeated"),  # header is for seq 2
        (_vc([a.hash, 0, cert, [p(1, 0)]]), "out of range or repeated"),  # header's view 1 > entry's view 0
        (_vc([a.hash, 0, cert, [p(3, bytes(64))]]), "^prepared entry: bad pre-prepare signature$"),
        (_vc([a.hash, 0, cert, [p(4, prep[4][:1])]]), "^prepared entry: fewer than 2f valid prepares$"),
        (_vc([a.hash, 0, cert, [p(4, [prep[4][0], [1, IDS[1].sign(m_signed(2, 1, 2, b.hash))]])]]),
         "fewer than 2f"),  # the primary's own prepare does not count
        (_vc([a.hash, 0, cert[:2] + [["2", cert[2][1]]], []]), "certificate does not verify"),  # entry shapes
        (_vc([a.hash, 0, cert[:2] + [[2]], []]), "certificate does not verify"),
        (_vc([a.hash, 0, cert[:2] + [[2, cert[2][1], b""]], []]), "certificate does not verify"),
        (_vc([a.hash, 0, cert, [prep]], blocks=[other.encode()]), "^view change carries a block it did not prepare$"),
        (_vc([a.hash, 0, cert, [prep]], blocks=[b"junk"]), "^view change block: "),
        (_vc([a.hash, 0, cert, [prep]], blocks=[Block(b.header, (b"swapped",)).encode()]),
         "^view change block: its transactions do not match its header's tx_root$"),
    ]


@pytest.mark.parametrize("i", range(31))
def test_parse_refuses_each_malformed_view_change_for_its_own_reason(i):
    vc, why = _bad_bodies()[i]
    verify = lambda i, d, s: ecdsa.verify(pubs(4)[i], d, s)  # noqa: E731
    with pytest.raises(ConsensusError, match=why):
        vcm.parse(vc, CHAIN, 4, verify)
    bad = ViewChange(2, 1, vcm.body_hash(b"\xc1"), 3, bytes(64), b"\xc1", ())
    with pytest.raises(ConsensusError, match="^view change body: "):
        vcm.parse(bad, CHAIN, 4, verify)


def test_select_takes_the_highest_view_per_sequence_and_stops_at_a_broken_link():
    a, b, cert, prep = _vc_parts()
    verify = lambda i, d, s: ecdsa.verify(pubs(4)[i], d, s)  # noqa: E731
    low = vcm.parse(_vc([a.hash, 0, cert, [prep]]), CHAIN, 4, verify)
    # another replica prepared a different block 2 in the same view: the larger digest wins, in any order
    b2 = make_block(2, view=1, prev=a.hash, txs=[b"later"])
    pp2 = IDS[1].sign(m_signed(1, 1, 2, b2.hash))
    pr2 = [[i, IDS[i].sign(m_signed(2, 1, 2, b2.hash))] for i in (0, 2)]
    tie = vcm.parse(_vc([a.hash, 0, cert, [[2, 1, b2.header.encode(), pp2, pr2]]]), CHAIN, 4, verify)
    want = max((b.hash, b2.hash))
    assert vcm.select([low, tie]).chain == ((2, want),) == vcm.select([tie, low]).chain
    # a certificate whose block does not link to the base is not selected
    stray = make_block(2, view=1, prev=bytes(range(32)))
    pp3 = IDS[1].sign(m_signed(1, 1, 2, stray.hash))
    pr3 = [[i, IDS[i].sign(m_signed(2, 1, 2, stray.hash))] for i in (0, 2)]
    off = vcm.parse(_vc([a.hash, 0, cert, [[2, 1, stray.header.encode(), pp3, pr3]]]), CHAIN, 4, verify)
    assert vcm.select([off]).chain == () and vcm.select([off]).top == 1
    # the base is the highest committed block among the view changes
    genesis = vcm.parse(_vc([bytes(32), 0, [], []], seq=0), CHAIN, 4, verify)
    assert vcm.select([genesis, low]).base_seq == 1 and vcm.select([low, genesis]).base_hash == a.hash


def test_parse_new_view_body_refuses_each_malformed_body():
    vc = sent(make_replica(4, 2).start_view_change(1), ViewChange)[0]
    assert vcm.parse_new_view_body(encode([vcm.strip(vc)])) == [ViewChange(1, 0, vc.digest, 2, vc.sig, vc.body, ())]
    for body, why in ((b"\xc1", "^new view body: "), (encode(b"x"), "^new view body is a list of view changes$"),
                      (encode([vcm.strip(vc), "x"]), "^new view body is a list of view changes$"),
                      (encode([signed(Commit, 1, 0, 1, bytes(32)).encode()]),
                       "^new view body holds a message that is not a view change$")):
        with pytest.raises(ConsensusError, match=why):
            vcm.parse_new_view_body(body)


def test_new_view_refuses_repeated_foreign_or_unsigned_view_changes():
    net, a, b = _committed_pair()
    vcs = [sent(net.replicas[i].start_view_change(1), ViewChange)[0] for i in (0, 2, 3)]
    stripped = [vcm.strip(v) for v in vcs]
    forged = ViewChange(1, vcs[2].seq, vcs[2].digest, 3, bytes(64), vcs[2].body, ())  # 3's body, no signature
    outsider = signed(ViewChange, 4, 1, vcs[2].seq, vcs[2].digest, body=vcs[2].body)  # index 4: not a validator
    later = sent(make_replica(4, 3).start_view_change(2), ViewChange)[0]  # a view change for view 2
    for raws in ([stripped[0], stripped[0], stripped[1]], [stripped[0], stripped[1], forged.encode()],
                 [stripped[0], stripped[1], outsider.encode()], [stripped[0], stripped[1], vcm.strip(later)]):
        fresh = make_replica(4, 2)  # each refused for its own reason (a second from that primary is not checked)
        fresh.start_view_change(1)
        body = encode(raws)
        nv = signed(NewView, 1, 1, 0, vcm.body_hash(body), body=body)
        assert fresh.on_message(nv) == [] and fresh.changing and fresh.view == 1
        assert fresh.ignored_by_reason() == {"bad-new-view": 1}  # counted once, as one ignored message
    # the honest new view installs, and says so: active, carrying block 2 over, with itself to persist
    body = encode(stripped)
    nv = signed(NewView, 1, 1, 0, vcm.body_hash(body), body=body)
    r = net.replicas[2]
    acts = r.on_message(nv)
    changed = [x for x in acts if isinstance(x, ViewChanged)]
    assert changed[0] == ViewChanged(1, False)
    assert changed[1] == ViewChanged(1, True, (b,), nv.encode())
    assert r.view_changes == 1 and r.state.fixed == {2: b.hash} and not r.changing


def test_select_follows_a_chain_of_several_prepared_blocks():
    """Built from checked view changes' contents directly: the chain from the base runs through every
    linked sequence, and a higher view's certificate replaces a lower one."""
    b1 = make_block(1, view=1, proposer=1)
    b2 = make_block(2, view=1, prev=b1.hash, proposer=1)
    b2_later = make_block(2, view=2, prev=b1.hash, proposer=2, salt=b"later")

    def cert(blk, view):
        return vcm.PreparedCert(blk.header.seq, view, blk.header, bytes(64), ())

    def info(*certs):
        return vcm.ViewChangeInfo(None, 0, bytes(32), {c.seq: c for c in certs}, {})

    sel = vcm.select([info(cert(b1, 1), cert(b2, 1))])
    assert sel.base_seq == 0 and sel.chain == ((1, b1.hash), (2, b2.hash)) and sel.top == 2
    for order in ([info(cert(b1, 1), cert(b2, 1)), info(cert(b2_later, 2))],
                  [info(cert(b2_later, 2)), info(cert(b1, 1), cert(b2, 1))]):
        assert vcm.select(order).chain == ((1, b1.hash), (2, b2_later.hash))


def test_the_new_primary_resends_its_new_view_to_stragglers_only():
    net, a, b = _committed_pair()
    vcs = [sent(net.replicas[i].start_view_change(1), ViewChange)[0] for i in (0, 2, 3)]
    primary, backup = net.replicas[1], net.replicas[2]
    acts = [x for vc in vcs for x in primary.on_message(vc)]
    nv = [x.msg for x in acts if isinstance(x, Broadcast) and x.msg.tag == 7][0]
    # the new primary installs its own view (persisted first) and re-proposes the carried-over block
    assert ViewChanged(1, True, (b,), nv.encode()) in acts and [p.digest for p in sent(acts, PrePrepare)] == [b.hash]
    # persisted (ViewChanged) before it leaves (a review: a primary killed in between built another)
    assert acts.index(ViewChanged(1, True, (b,), nv.encode())) < next(
        i for i, x in enumerate(acts) if isinstance(x, Broadcast) and x.msg.tag == 7)
    assert (nv.view, nv.seq, nv.sender) == (1, 0, 1)
    backup.on_message(nv)
    assert primary.view == backup.view == 1 and not primary.changing and not backup.changing
    # a straggler's view change for the installed view: only the view's primary answers, with its NEW-VIEW
    # (replica 3's came after the quorum: it was answered at once)
    assert Send(3, nv) in acts
    assert backup.on_message(vcs[2]) == []
    # ...once per two heartbeats: a byzantine replica repeating its view change had a NEW-VIEW queued
    # toward it for every copy (a review: 1,000 copies, 1,000 sends)
    assert all(primary.on_message(vcs[2]) == [] for _ in range(1000))
    primary.tick(primary.state.now_ms + 2 * primary.state.status_ms)
    assert primary.on_message(vcs[2]) == [Send(3, nv)]
    # a view change for a view already left is dropped unread
    body = vcs[2].body
    stale = signed(ViewChange, 3, 0, vcs[2].seq, vcm.body_hash(body), body=body)
    for r in (primary, backup):
        before = r.ignored
        assert r.on_message(stale) == [] and 0 not in r.state.vcs and r.ignored == before


def test_evidence_records_are_complete_deduplicated_and_bounded():
    r = make_replica(4, 1)
    a, b = make_block(1, txs=[b"A"]), make_block(1, txs=[b"B"])
    pa, pb = pre_prepare(a), pre_prepare(b)
    r.on_message(pa)
    r.on_message(pb)
    (ev,) = r.evidence  # exactly what a third party needs to check it, nothing guessed
    assert ev == {"kind": "equivocating-primary", "validator": 0, "tag": 1, "view": 0, "seq": 1,
                  "digests": [a.hash.hex(), b.hash.hex()], "sigs": [pa.sig.hex(), pb.sig.hex()]}
    r.state.add_evidence("equivocating-primary", 0, 1, 0, 1, (a.hash, pa.sig), (b.hash, pb.sig))
    assert len(r.evidence) == 1  # the same (kind, validator, view, seq) is recorded once
    for seq in range(2, 1000):  # a flood of distinct evidence about one validator stops at its bound
        r.state.add_evidence("conflicting-status", 3, 2, seq, seq, (a.hash, pa.sig), (b.hash, pb.sig))
    assert len(r.evidence) == 1 + MAX_EVIDENCE
    # and leaves room for evidence about the others (one validator filed junk about itself to fill
    # the log, and a real equivocation went unrecorded; a review)
    r.state.add_evidence("equivocating-primary", 2, 1, 1, 5, (a.hash, pa.sig), (b.hash, pb.sig))
    assert len(r.evidence) == 2 + MAX_EVIDENCE and r.evidence[-1]["validator"] == 2


def test_a_replica_that_missed_the_commits_delivers_the_base_from_the_new_view():
    """Replica 2 prepared block 1 but lost every commit; the others committed it. The new view's
    certificates prove it committed, and replica 2 holds the block: it delivers it, certified."""
    net = SimNet(4, 1)
    a = make_block(1, txs=[b"a"])
    net.send(0, net.replicas[0].propose(a))
    while net.queue:
        dst, raw = net.queue.pop(0)
        m = decode_message(raw)
        if not (dst == 2 and isinstance(m, Commit)):
            net.send(dst, net.replicas[dst].on_message(m))
    lagging = net.replicas[2]
    assert lagging.last_delivered == 0 and 1 in lagging.state.prepared
    assert all(net.replicas[i].last_delivered == 1 for i in (0, 1, 3))
    vcs = [sent(net.replicas[i].start_view_change(1), ViewChange)[0] for i in (0, 2, 3)]
    nv_acts = [x for vc in vcs for x in net.replicas[1].on_message(vc)]
    nv = [x.msg for x in nv_acts if isinstance(x, Broadcast) and x.msg.tag == 7][0]
    acts = lagging.on_message(nv)
    (d,) = [x for x in acts if isinstance(x, Deliver)]
    committed = net.out[0][0].block
    assert d.seq == 1 and d.block.hash == a.hash and d.block.txs == a.txs
    assert d.block.cert == committed.cert and d.block.cert_view == 0 and verify_cert(d.block, pubs(4))
    assert acts.index(d) > 0 and isinstance(acts[0], ViewChanged)  # after the view is persisted
    assert [x for x in acts if isinstance(x, ViewChanged)] == [ViewChanged(1, False), ViewChanged(1, True, (), nv.encode())]
    assert lagging.last_delivered == 1 and lagging.view == 1 and not lagging.changing


def test_a_new_view_body_may_exceed_one_transaction_s_size_limit():
    """2f+1 view changes with their prepared certificates easily pass 16 KiB (the wire default)."""
    body = bytes(20_000)
    vc = ViewChange(1, 0, vcm.body_hash(body), 2, bytes(64), body, ())
    assert vcm.parse_new_view_body(encode([vcm.strip(vc)] * 3)) == [vc] * 3


def test_view_changes_are_held_for_at_most_4n_views_ahead_and_refusals_counted():
    r = make_replica(4, 2)
    for view, held in ((16, True), (17, False)):  # 4n = 16 views ahead of view 0
        vc = sent(make_replica(4, 3).start_view_change(view), ViewChange)[0]
        r.on_message(vc)
        assert (view in r.state.vcs) is held
    r.state.ignored[Ignored.BAD_SIGNATURE] = 5  # added to, not set
    bad = ViewChange(1, 0, vcm.body_hash(b"\xc1"), 3, bytes(64), b"\xc1", ())
    r.on_message(signed(ViewChange, 3, 1, 0, bad.digest, body=bad.body))
    assert r.ignored == 6 and r.state.ignored[Ignored.BAD_VIEW_CHANGE] == 1


def test_a_view_change_body_may_exceed_one_transaction_s_size_limit():
    """A replica with a window of prepared blocks sends one certificate each: well past 16 KiB."""
    a, b, cert, prep = _vc_parts()
    entries = []
    for seq in range(2, 60):
        blk = make_block(seq, view=1, prev=a.hash)
        entries.append([seq, 1, blk.header.encode(), IDS[1].sign(m_signed(1, 1, seq, blk.hash)),
                        [[i, IDS[i].sign(m_signed(2, 1, seq, blk.hash))] for i in (0, 2)]])
    vc = _vc([a.hash, 0, cert, entries])
    assert len(vc.body) > 16 * 1024
    info = vcm.parse(vc, CHAIN, 4, lambda i, d, s: ecdsa.verify(pubs(4)[i], d, s))
    assert sorted(info.prepared) == list(range(2, 60))


def test_only_the_new_views_primary_keeps_the_carried_blocks_and_view_changes_start_once():
    net, a, b = _committed_pair()
    vc = sent(net.replicas[3].start_view_change(1), ViewChange)[0]
    assert vc.blocks  # replica 3 prepared block 2 and carries it
    primary, backup = net.replicas[1], net.replicas[2]
    backup.start_view_change(1)
    primary.on_message(vc)
    backup.on_message(vc)
    assert primary.state.vcs[1][3].blocks == {b.hash: b} and backup.state.vcs[1][3].blocks == {}
    # nor their bytes: a backup held every view change's raw blocks too (up to ~32 MiB each)
    assert primary.state.vcs[1][3].msg.blocks == vc.blocks and backup.state.vcs[1][3].msg.blocks == ()
    assert vcm.strip(backup.state.vcs[1][3].msg) == vcm.strip(vc)  # what a NEW-VIEW would carry is unchanged
    assert backup.state.vcs[1][3].prepared == primary.state.vcs[1][3].prepared  # the certificates stay
    # a replica already changing to view 1 does not start it again, nor go back to an older view
    assert backup.start_view_change(1) == [] and backup.start_view_change(0) == []
    assert backup.view == 1 and backup.changing


# ---- the view-change paths mutation testing found unexercised (issue 21) -------------------------------
def _commit_cert(block, view, signers=(0, 1, 3)):
    return tuple((i, IDS[i].sign(vote_digest(CHAIN, view, block.header.seq, block.hash))) for i in signers)


def _prepared_in(block, view, n=4):
    """A prepared certificate for `block` in `view`: its primary's pre-prepare and 2f prepares from others."""
    primary, seq = view % n, block.header.seq
    preps = [i for i in range(n) if i != primary][:2 * ((n - 1) // 3)]
    return vcm.PreparedCert(seq, view, block.header, IDS[primary].sign(m_signed(1, view, seq, block.hash)),
                            tuple((i, IDS[i].sign(m_signed(2, view, seq, block.hash))) for i in preps))


def _signed_vc(sender, view, last_seq, last_hash, cert_view=0, cert=(), prepared=(), blocks=()):
    body = vcm.make_body(last_hash, cert_view, cert, list(prepared))
    return signed(ViewChange, sender, view, last_seq, vcm.body_hash(body), body=body,
                  blocks=tuple(b.encode() for b in blocks))


def _vc_for(sender, view):
    """The view change a fresh replica `sender` sends for `view` (nothing delivered, nothing prepared)."""
    return sent(make_replica(4, sender).start_view_change(view), ViewChange)[0]


@pytest.mark.parametrize("carried", [True, False])
def test_a_new_primary_leads_with_blocks_only_the_view_changes_carried(carried):
    """Replica 2, the primary of view 2, saw nothing of blocks 1 and 2. The others committed block 1 in
    view 1 (its certificate is over view 1, its header says view 0) and prepared block 2 in view 1.
    Replica 2 delivers block 1 from a view change's blocks, with the view-1 certificate, and re-proposes
    block 2 if a view change carried it; if none did, it proposes nothing (a later primary leads)."""
    b1 = make_block(1)
    b2 = make_block(2, view=1, prev=b1.hash)
    vc0 = _signed_vc(0, 2, 0, GENESIS_PREV, prepared=[_prepared_in(b1, 1), _prepared_in(b2, 1)],
                     blocks=[b1, b2] if carried else [b1])
    vc3 = _signed_vc(3, 2, 1, b1.hash, cert_view=1, cert=_commit_cert(b1, 1), prepared=[_prepared_in(b2, 1)])
    r = make_replica(4, 2)
    acts = r.start_view_change(2) + r.on_message(vc0) + r.on_message(vc3)
    (nv,) = [x.msg for x in acts if isinstance(x, Broadcast) and isinstance(x.msg, NewView)]
    (d,) = delivered(acts)
    assert d.seq == 1 and d.block.hash == b1.hash and d.block.txs == b1.txs
    assert d.block.cert_view == 1 and verify_cert(d.block, pubs(4))
    assert r.last_delivered == 1 and r.view == 2 and not r.changing
    assert ViewChanged(2, True, (b2,) if carried else (), nv.encode()) in acts
    assert [(p.view, p.seq, p.digest) for p in sent(acts, PrePrepare)] == ([(2, 2, b2.hash)] if carried else [])


def test_a_new_primary_that_delivered_past_the_base_re_proposes_nothing_it_delivered():
    """The new primary (1) delivered block 2 from its certificate after it sent its view change; the
    view changes' base is block 1 and they carry block 2 as prepared. Block 2 is not proposed again."""
    net, a, b = _committed_pair()
    r = net.replicas[1]
    r.start_view_change(1)
    assert delivered(r.offer_certified(b.with_cert(_commit_cert(b, 0, (0, 2, 3)), 0)))[0].seq == 2
    vcs = [sent(net.replicas[i].start_view_change(1), ViewChange)[0] for i in (0, 2)]
    acts = [x for vc in vcs for x in r.on_message(vc)]
    (nv,) = [x.msg for x in acts if isinstance(x, Broadcast) and isinstance(x.msg, NewView)]
    assert ViewChanged(1, True, (), nv.encode()) in acts and sent(acts, PrePrepare) == []
    assert r.view == 1 and not r.changing and r.next_seq == 3 and r.can_propose()


def test_a_pre_prepare_that_overtakes_the_new_view_is_replayed_once_installed():
    net, a, b = _committed_pair()
    vcs = [sent(net.replicas[i].start_view_change(1), ViewChange)[0] for i in (0, 2, 3)]
    acts = [x for vc in vcs for x in net.replicas[1].on_message(vc)]
    (nv,) = [x.msg for x in acts if isinstance(x, Broadcast) and isinstance(x.msg, NewView)]
    (pp,) = sent(acts, PrePrepare)
    r = net.replicas[3]
    assert r.on_message(pp) == [] and r.state.early_view == [pp]  # kept for the view it waits to enter
    got = r.on_message(nv)
    assert ViewChanged(1, True, (b,), nv.encode()) in got  # the install's own actions ...
    assert [p.digest for p in sent(got, Prepare)] == [b.hash]  # ... and the replayed pre-prepare's
    assert r.state.early_view == []


def test_f_plus_one_view_changes_for_later_views_pull_a_replica_along_and_one_each_is_read():
    r = make_replica(4, 3)
    r.start_view_change(1)
    r.on_message(_vc_for(0, 1))  # a view change for the view it is changing to: not a later one
    assert r.on_message(_vc_for(1, 2)) == [] and r.view == 1  # f replicas in later views: maybe faulty
    acts = r.on_message(_vc_for(2, 2))  # f+1: one of them is honest, follow
    assert r.view == 2 and r.changing and [vc.view for vc in sent(acts, ViewChange)] == [2]
    # one view change per sender and view is read: a second one, valid or not, is dropped unparsed
    first, before = r.state.vcs[2][1].msg, r.ignored
    b1 = make_block(1)
    other = _signed_vc(1, 2, 0, GENESIS_PREV, prepared=[_prepared_in(b1, 1)])
    junk = signed(ViewChange, 1, 2, 0, vcm.body_hash(b"\xc1"), body=b"\xc1")
    assert r.on_message(other) == [] and r.on_message(junk) == []
    assert r.state.vcs[2][1].msg == first and r.ignored == before


def test_the_view_change_timeout_doubles_with_each_view_change_in_a_row():
    """Replica 0 leaves view 0, then views 1 and 2 whose primaries stay silent (2f+1 view changes
    each, so it escalates): it waits 2, then 4 times the timeout (simulated time, in ms). The others
    stay heard throughout (their view changes are repeated): the next view's timer runs only while
    a replica hears 2f others."""
    r = make_replica(4, 0, view_timeout_ms=1000)
    r.tick(10_000)
    r.start_view_change(1)
    for view, t0, wait in ((1, 10_000, 2000), (2, 12_000, 4000)):
        vcs = [_vc_for(s, view) for s in sorted({1, 2, 3} - {view % 4})]
        for vc in vcs:
            r.on_message(vc)
        assert r.view == view and len(r.state.vcs[view]) == 3 and r.changing
        for t in range(t0, t0 + wait, 250):
            assert {vc.view for vc in sent(r.tick(t), ViewChange)} <= {view} and r.view == view, t  # resends only
            for vc in vcs:
                r.on_message(vc)
        assert {vc.view for vc in sent(r.tick(t0 + wait - 1), ViewChange)} <= {view} and r.view == view
        assert [vc.view for vc in sent(r.tick(t0 + wait), ViewChange)] == [view + 1] and r.view == view + 1


def test_two_view_changes_in_a_row_are_both_counted():
    net = HandNet(4)
    for view in (1, 2):
        for nd in net.nodes:
            nd.handle(nd.r.start_view_change(view), net)
        net.deliver(lambda s, d, m: True)
        assert all(nd.r.view == view and not nd.r.changing for nd in net.nodes)
    assert [nd.r.view_changes for nd in net.nodes] == [2, 2, 2, 2]


def test_a_view_change_carries_the_lowest_prepared_blocks_that_fit_its_budget_exactly(monkeypatch):
    """Blocks 1-3 prepared (no commits delivered), all of one size: a budget of exactly two blocks
    carries blocks 1 and 2; one byte less carries block 1 only."""
    net = SimNet(4, 1)
    prev, blocks = GENESIS_PREV, []
    for seq in (1, 2, 3):
        blocks.append(make_block(seq, txs=[b"tx %d" % seq], prev=prev))
        prev = blocks[-1].hash
        net.send(0, net.replicas[0].propose(blocks[-1]))
    while net.queue:
        dst, raw = net.queue.pop(0)
        m = decode_message(raw)
        if not isinstance(m, Commit):
            net.send(dst, net.replicas[dst].on_message(m))
    r = net.replicas[2]
    assert sorted(r.state.prepared) == [1, 2, 3] and r.last_delivered == 0
    sizes = [len(b.encode()) for b in blocks]
    assert len(set(sizes)) == 1
    for view, budget, carried in ((1, 2 * sizes[0], blocks[:2]), (2, 2 * sizes[0] - 1, blocks[:1])):
        monkeypatch.setattr(vcm, "VC_BLOCK_BUDGET", budget)
        (vc,) = sent(r.start_view_change(view), ViewChange)
        assert vc.blocks == tuple(b.encode() for b in carried), (view, budget)


# ---- suspicion (SUSPECT, tag 9) and the NEW-VIEW relay: their thresholds, found by mutation testing -----
def _suspect(sender, view=0):
    return signed(Suspect, sender, view, 0, GENESIS_PREV)


def test_f_plus_1_suspicions_are_joined_and_2f_plus_1_change_the_view_to_the_next():
    """n = 7 (f = 2, 2f+1 = 5), replica 1 has no work of its own: f suspicions move it to nothing,
    f+1 make it suspect too (one of them is honest), and with 2f+1 in all it asks for view 1."""
    r = make_replica(7, 1)
    r.tick(1000, pending=False)
    for s in (2, 3):
        assert not sent(r.on_message(_suspect(s)), Suspect)
    assert not r.state.suspecting
    acts = r.on_message(_suspect(4))
    assert sent(acts, Suspect) and r.state.suspecting and not r.changing and r.view == 0  # 4 of 5
    acts = r.on_message(_suspect(5))
    assert [vc.view for vc in sent(acts, ViewChange)] == [1] and r.view == 1 and r.changing


def test_a_suspicion_counts_while_repeated_with_the_heartbeats_and_only_for_our_view():
    for late, changes in ((0, True), (1, False)):
        r = make_replica(7, 1)  # status_ms 500: a SUSPECT counts for 2 heartbeats, 1000 ms
        r.tick(1000, pending=False)
        for s in (2, 3, 4):
            r.on_message(_suspect(s))
        assert r.state.suspecting
        r.tick(2000 + late, pending=False)
        r.on_message(_suspect(5))
        assert r.changing is changes, late
    r = make_replica(7, 1)
    r.tick(1000, pending=False)
    for s in (2, 3, 4, 5):
        r.on_message(_suspect(s, view=1))  # for another view: not ours to suspect
    assert not r.state.suspecting and not r.changing


def test_view_changes_of_others_for_later_views_count_as_suspicion():
    """f view changes for a later view (too few to pull it along) and one SUSPECT make f+1 that
    suspect the view (it joins), a second SUSPECT makes 2f+1 with ours."""
    r = make_replica(7, 1)
    r.tick(1000, pending=False)
    for s in (2, 3):
        r.on_message(sent(make_replica(7, s).start_view_change(1), ViewChange)[0])
    assert not r.changing
    r.on_message(_suspect(4))
    assert r.state.suspecting and not r.changing
    acts = r.on_message(_suspect(5))
    assert r.changing and r.view == 1 and sent(acts, ViewChange)


def test_a_backup_relays_its_new_view_to_a_laggard_two_heartbeats_after_installing_it():
    """Every replica in a view relays its NEW-VIEW to one whose heartbeat shows it below, the
    primary at once, the others only once two heartbeats (1000 ms) passed since they installed it."""
    net = HandNet(4)
    for nd in net.nodes:
        nd.handle(nd.r.start_view_change(1), net)
    net.deliver(lambda s, d, m: True)
    assert all(nd.r.view == 1 and not nd.r.changing for nd in net.nodes)
    behind = signed(Status, 3, 0, 0, GENESIS_PREV)  # validator 3 says it is still in view 0
    backup, primary = net.nodes[2].r, net.nodes[1].r
    assert [a.to for a in primary.on_message(behind) if isinstance(a, Send) and isinstance(a.msg, NewView)] == [3]
    for t, relays in ((0, False), (999, False), (1000, True)):
        backup.tick(t, pending=False)
        got = [a for a in backup.on_message(behind) if isinstance(a, Send) and isinstance(a.msg, NewView)]
        assert bool(got) is relays, t


# ---- the view timer's boundaries (node/consensus/viewchange.py ViewChanges.timer and _timeout) --------
def _timed(view_timeout_ms: int = 1000, status_ms: int = 500):
    """Replica 1 of 4 in view 0 at t=10 s, hearing replicas 0 and 2 (2f others) just now."""
    r = make_replica(4, 1, view_timeout_ms=view_timeout_ms, status_ms=status_ms)
    r.state.now_ms = r.state.progress_at = 10_000
    r.state.heard = {0: 10_000, 2: 10_000}
    return r


def test_the_view_timeout_follows_the_delivery_pace_within_its_bounds():
    r = _timed()
    assert r.views._timeout() == 1000
    r.state.round_ema = 300.0
    assert r.views._timeout() == 1200  # 4 rounds of the recent pace when that is longer
    r.state.round_ema = 3000.0
    assert r.views._timeout() == 8000  # at most 8x the configured timeout
    r.state.vc_attempt = 6
    assert r.views._timeout() == 8000 << 6
    r.state.vc_attempt = 9
    assert r.views._timeout() == 8000 << 6  # the doubling stops after six view changes in a row


def test_the_view_timer_suspects_exactly_when_the_timeout_has_passed_with_work_waiting():
    r = _timed()
    for t in (10_500, 10_999):
        r.state.heard = {0: t, 2: t}
        assert r.views.timer(t, pending=True) == [], t
    r.state.heard = {0: 11_000, 2: 11_000}
    assert sent(r.views.timer(11_000, pending=True), Suspect)


def test_a_block_in_flight_runs_the_timer_without_pending_transactions():
    r = _timed()
    r.state.log[1] = Instance(block=make_block(1))
    r.state.heard = {0: 11_000, 2: 11_000}
    assert sent(r.views.timer(11_000, pending=False), Suspect)


def test_an_instance_without_a_block_is_not_work_in_flight():
    r = _timed()
    r.state.log[1] = Instance()  # votes that came before their pre-prepare
    r.state.heard = {0: 20_000, 2: 20_000}
    assert r.views.timer(20_000, pending=False) == [] and r.state.progress_at == 20_000


def test_with_nothing_waiting_the_timer_does_not_run():
    r = _timed()
    r.state.heard = {0: 20_000, 2: 20_000}
    assert r.views.timer(20_000, pending=False) == [] and r.state.progress_at == 20_000
    assert r.views.timer(20_000, pending=True) == []  # it starts now, not at the last progress


def test_the_timer_waits_while_behind_or_while_fewer_than_2f_others_are_heard():
    r = _timed()
    r.state.peer_delivered = {0: 1, 2: 1, 3: 0}  # f+1 peers one block ahead: catch up first
    r.state.heard = {0: 11_000, 2: 11_000}
    assert r.views.timer(11_000, pending=True) == [] and r.state.progress_at == 11_000
    r = _timed()
    r.state.heard = {0: 11_000}  # one other heard, not 2f: cut off, a view change could not complete
    assert r.views.timer(11_000, pending=True) == [] and r.state.progress_at == 11_000


def test_heard_means_within_two_heartbeats():
    r = _timed(view_timeout_ms=5000, status_ms=500)  # the window: min(5000, 2 x 500) = 1000 ms
    r.state.heard = {0: 14_000, 2: 14_000}  # exactly two heartbeats ago: heard
    assert sent(r.views.timer(15_000, pending=True), Suspect)
    r = _timed(view_timeout_ms=5000, status_ms=500)
    r.state.heard = {0: 15_000, 2: 13_800}  # one of them 1.2 s ago: not heard
    assert r.views.timer(15_000, pending=True) == [] and r.state.progress_at == 15_000


def test_in_a_view_change_the_next_view_waits_for_2f_others_heard():
    r = _timed()
    r.start_view_change(1)
    for s in (0, 2, 3):
        r.state.vcs.setdefault(1, {})[s] = None  # 2f+1 have given up on view 1's predecessor
    r.state.vc_started = 10_000
    r.state.heard = {0: 30_000}  # but only one other is heard
    assert r.views.timer(30_000, pending=True) == [] and r.state.vc_started == 30_000 and r.view == 1


def test_a_view_change_carries_at_most_the_block_budget_and_only_the_primary_decodes_them():
    """A view change's blocks were bounded only by the 32 MiB message cap on receipt, decoded by every
    replica, and kept raw and decoded for four views ahead (a review). Past VC_BLOCK_BUDGET (what an
    honest sender packs) it is refused; a replica not the new view's primary drops them unread."""
    vc = sent(make_replica(4, 2).start_view_change(1), ViewChange)[0]
    heavy = signed(ViewChange, 2, 1, vc.seq, vc.digest, body=vc.body, blocks=(b"\x00" * (vcm.VC_BLOCK_BUDGET + 1),))
    with pytest.raises(ConsensusError, match="bytes of blocks"):
        vcm.parse(heavy, CHAIN, 4, lambda *a: True)
    backup = make_replica(4, 3)  # view 1's primary is replica 1
    backup.on_message(heavy)
    assert backup.state.vcs[1][2].msg.blocks == () and backup.ignored_by_reason() == {}
    primary = make_replica(4, 1)
    primary.on_message(heavy)
    assert 2 not in primary.state.vcs.get(1, {}) and primary.ignored_by_reason() == {"bad-view-change": 1}
