"""PBFT normal case on the seeded simulated network: agreement, certificates, and what is ignored."""

from __future__ import annotations

from collections import Counter

import pytest

from node.block import Block, verify_cert, vote_digest
from node.consensus import (
    Checkpoint,
    Commit,
    ConsensusError,
    Execute,
    Persist,
    Prepare,
    PrePrepare,
    Replica,
    Suspect,
    ViewChange,
    ViewChanged,
    decode_message,
)
from node.consensus.state import Ignored, Phase
from node.crypto import ecdsa
from node.wire import MAX_BLOCK_BYTES, encode
from tests.consensus_sim import (
    CHAIN,
    IDS,
    SimNet,
    delivered,
    make_block,
    make_replica,
    pre_prepare,
    pubs,
    sent,
    signed,
)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("n", [1, 4, 7])
def test_agreement_on_shuffled_duplicating_network(n, seed):
    net = SimNet(n, seed)
    proposed = net.run(10 if n < 7 else 6)
    net.check_agreement(proposed)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("n", [4, 7])
def test_agreement_with_bounded_losses(n, seed):
    net = SimNet(n, 1000 + seed, lossy=True)
    proposed = net.run(10 if n < 7 else 6)
    net.check_agreement(proposed)
    assert net.dropped > 0 or all(not s for s, _ in net.loss.values())


@pytest.mark.parametrize("n,silent", [(4, {3}), (4, {1}), (7, {5, 6}), (7, {1, 4})])
def test_f_silent_replicas_still_commit(n, silent):
    net = SimNet(n, 7, silent=silent)
    proposed = net.run(8)
    net.check_agreement(proposed)  # the silent ones still receive, so they deliver too
    assert net.dropped > 0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [4, 7])
def test_unbounded_loss_heals_by_retransmission_and_catchup(n, seed):
    """Any message, pre-prepares included, may be lost; ticks re-send and Status/Catchup fill the gaps."""
    net = SimNet(n, 5000 + seed, p_any=0.25, view_timeout_ms=30_000)  # the normal case heals without one
    proposed = net.run(6, max_ticks=400)
    net.check_agreement(proposed)
    assert net.dropped > 0


def test_f_plus_one_silent_replicas_commit_nothing():
    net = SimNet(4, 3, silent={2, 3})
    net.run(3, pipeline=3)
    assert all(not o for o in net.out)


def test_single_validator_delivers_on_propose():
    r = make_replica(1, 0)
    b = make_block(1, n=1, txs=[b"a", b"b"])
    acts = r.propose(b)
    (d,) = delivered(acts)
    assert d.seq == 1 and d.block.hash == b.hash and verify_cert(d.block, pubs(1))
    assert [i for i, _ in d.block.cert] == [0]


def test_votes_before_pre_prepare_count():
    r = make_replica(4, 1)
    b = make_block(1)
    acts = []
    for s in (2, 3):
        acts += r.on_message(signed(Prepare, s, 0, 1, b.hash))
    for s in (0, 2):
        acts += r.on_message(signed(Commit, s, 0, 1, b.hash))
    assert acts == []
    acts = r.on_message(pre_prepare(b))
    assert len(sent(acts, Prepare)) == 1 and len(sent(acts, Commit)) == 1
    (d,) = delivered(acts)
    assert verify_cert(d.block, pubs(4)) and r.ignored == 0


def _prepared_backup():
    """Replica 1 of 4 holding the pre-prepare for block A at seq 1 (its own prepare sent)."""
    r = make_replica(4, 1)
    a = make_block(1, txs=[b"A"])
    acts = r.on_message(pre_prepare(a))
    assert len(sent(acts, Prepare)) == 1 and not sent(acts, Commit)
    return r, a


def test_bad_signatures_ignored():
    r, a = _prepared_backup()
    good = signed(Prepare, 2, 0, 1, a.hash)
    flipped = Prepare(0, 1, a.hash, 2, good.sig[:-1] + bytes([good.sig[-1] ^ 1]))
    wrong_key = signed(Prepare, 2, 0, 1, a.hash, signer=3)
    wrong_chain = Prepare(0, 1, a.hash, 2, IDS[2].sign(Prepare(0, 1, a.hash, 2, b"").signing_digest("other")))
    for m in (flipped, wrong_key, wrong_chain, Prepare(0, 1, a.hash, 2, bytes(64))):
        assert r.on_message(m) == []
    assert r.ignored == 4 and r.ignored_by_reason() == {"bad-signature": 4}
    assert sent(r.on_message(good), Commit)


def test_non_validator_and_own_index_ignored():
    r, a = _prepared_backup()
    for m in (signed(Prepare, 4, 0, 1, a.hash, signer=7), signed(Commit, 99, 0, 1, a.hash, signer=7),
              signed(Prepare, 1, 0, 1, a.hash)):  # a message claiming to be from this replica itself
        assert r.on_message(m) == []
    assert r.ignored == 3 and r.ignored_by_reason() == {"bad-sender": 3}
    assert len(r.state.log[1].prepares) == 1


def test_wrong_view_ignored():
    r, a = _prepared_backup()
    assert r.on_message(signed(Prepare, 2, 1, 1, a.hash)) == []
    assert r.on_message(pre_prepare(make_block(2, view=2))) == []  # from the primary of view 2
    assert r.ignored == 2 and r.ignored_by_reason() == {"future-view": 2}
    assert sent(r.on_message(signed(Prepare, 2, 0, 1, a.hash)), Commit)


def test_outside_window_ignored():
    r = make_replica(4, 1, window=4)  # a checkpoint every window/4 = 1 blocks
    for seq in (0, 5, 100):
        assert r.on_message(pre_prepare(make_block(seq))) == []
        assert r.on_message(signed(Prepare, 2, 0, seq, bytes(32))) == []
    assert r.ignored == 6 and r.ignored_by_reason() == {"outside-window": 6} and r.state.log == {}
    assert sent(r.on_message(pre_prepare(make_block(4))), Prepare)  # the window's top edge is inside
    a = make_block(1)
    acts = r.on_message(pre_prepare(a))
    for m in (signed(Prepare, 2, 0, 1, a.hash), signed(Commit, 0, 0, 1, a.hash), signed(Commit, 2, 0, 1, a.hash)):
        acts += r.on_message(m)
    assert [d.seq for d in delivered(acts)] == [1] and sent(acts, Checkpoint)
    before = r.ignored
    assert r.on_message(signed(Commit, 3, 0, 1, a.hash)) == []  # delivered: below the window now
    assert r.on_message(pre_prepare(make_block(5))) == []  # the low watermark waits for a stable checkpoint
    assert r.ignored == before + 2 and r.low == 0
    root = a.header.state_root
    r.on_message(signed(Checkpoint, 2, 0, 1, root))
    assert r.low == 0  # 2 of 2f+1 = 3
    r.on_message(signed(Checkpoint, 3, 0, 1, ecdsa.sha256(b"another root")))
    assert r.low == 0  # roots must match
    r.on_message(signed(Checkpoint, 0, 0, 1, root))
    assert r.low == 1 and r.state.checkpoints == {}  # stable: the window slides and older checkpoints are collected
    assert sent(r.on_message(pre_prepare(make_block(5))), Prepare)


def test_equivocating_pre_prepare_is_evidence_and_starts_a_view_change():
    r, a = _prepared_backup()
    assert r.on_message(pre_prepare(a)) == [] and r.ignored == 0  # a plain duplicate is harmless
    b = make_block(1, txs=[b"B"])
    acts = r.on_message(pre_prepare(b))
    assert r.ignored_by_reason() == {"equivocation": 1} and r.state.log == {} and r.view == 1 and r.changing
    assert acts[0] == ViewChanged(1, False) and sent(acts, ViewChange)
    (ev,) = r.evidence
    assert ev["kind"] == "equivocating-primary" and ev["validator"] == 0 and ev["seq"] == 1
    # the evidence verifies on its own: two pre-prepare signatures of validator 0 over different blocks
    for d, sig in zip(ev["digests"], ev["sigs"], strict=True):
        assert ecdsa.verify(IDS[0].public_key, PrePrepare(0, 1, bytes.fromhex(d), 0, b"").signing_digest(CHAIN),
                            bytes.fromhex(sig))
    # messages of the abandoned view are ignored now
    assert r.on_message(signed(Prepare, 2, 0, 1, a.hash)) == [] and r.ignored == 2


def test_prepare_carrying_another_pre_prepare_proves_equivocation():
    r, a = _prepared_backup()
    b = make_block(1, txs=[b"B"])
    pp_b = pre_prepare(b)
    acts = r.on_message(signed(Prepare, 2, 0, 1, b.hash, pp_sig=pp_b.sig))
    assert r.changing and sent(acts, ViewChange) and r.evidence[0]["kind"] == "equivocating-primary"


@pytest.mark.parametrize("seed", range(5))
def test_equivocating_primary_on_network(seed):
    """The primary sends A to everyone, then a conflicting B: everyone holds proof, changes view, and
    the next primary's blocks commit everywhere."""
    net = SimNet(4, seed)
    a = make_block(1, txs=[b"A"])
    b = make_block(1, txs=[b"B"])
    net.replicas[0].propose(a)
    for i in (1, 2, 3):
        net.send(i, net.replicas[i].on_message(pre_prepare(a)))
        net.send(i, net.replicas[i].on_message(pre_prepare(b)))
        assert net.replicas[i].evidence
    proposed = net.run(3, max_ticks=200)
    net.check_agreement(proposed + [a, b], count=3)
    assert all(r.view >= 1 for r in net.replicas)


@pytest.mark.parametrize("seed", range(5))
def test_split_equivocation_never_forks(seed):
    """A byzantine primary sends A to replica 1 and B to 2 and 3, and commits both: B may commit (only 2 and
    3 can prepare it), A never can; proofs travel in the prepares, and after the view change everyone
    agrees on one block at each sequence."""
    net = SimNet(4, seed)
    a, b = make_block(1, txs=[b"A"]), make_block(1, txs=[b"B"])
    for i, blk in ((1, a), (2, b), (3, b)):
        net.send(i, net.replicas[i].on_message(pre_prepare(blk)))
    for i in (1, 2, 3):
        for blk in (a, b):
            net.send(i, net.replicas[i].on_message(signed(Commit, 0, 0, 1, blk.hash)))
    net.crash(0)  # the byzantine primary goes quiet
    proposed = net.run(3, max_ticks=300)
    assert any(e["kind"] == "equivocating-primary" for e in net.replicas[1].evidence)
    net.check_agreement(proposed + [a, b], count=3)
    assert len({net.out[r][0].block.hash for r in (1, 2, 3)} - {a.hash}) == 1


def test_prepares_for_other_digest_do_not_count():
    r, a = _prepared_backup()
    other = ecdsa.sha256(b"other")
    for s in (2, 3):
        assert r.on_message(signed(Prepare, s, 0, 1, other)) == []
    assert r.ignored == 2 and set(r.state.log[1].prepares) == {1} and not r.evidence  # no pre-prepare proof attached
    assert r.on_message(signed(Prepare, 0, 0, 1, a.hash)) == []  # the primary's prepare is not a vote
    assert r.ignored == 3
    # replica 3 now prepares A too: two prepares from one replica for one sequence are evidence, not a vote
    assert r.on_message(signed(Prepare, 3, 0, 1, a.hash)) == []
    assert r.evidence[0]["kind"] == "conflicting-votes" and r.evidence[0]["validator"] == 3


def test_commit_certificate_needs_quorum_of_distinct_signers():
    r, a = _prepared_backup()
    assert sent(r.on_message(signed(Prepare, 2, 0, 1, a.hash)), Commit)
    c2 = signed(Commit, 2, 0, 1, a.hash)
    assert r.on_message(c2) == [] and r.on_message(c2) == []  # a duplicate vote counts once
    assert r.last_delivered == 0
    (d,) = delivered(r.on_message(signed(Commit, 3, 0, 1, a.hash)))
    cert = d.block.cert
    assert [i for i, _ in cert] == [1, 2, 3]
    keys = pubs(4)
    assert verify_cert(d.block, keys)
    assert not verify_cert(d.block.with_cert(cert[:2]), keys)  # 2 < 2f+1
    assert not verify_cert(d.block.with_cert([*cert[:2], cert[1]]), keys)  # duplicate signer
    assert not verify_cert(d.block.with_cert([*cert[:2], (7, IDS[7].sign(bytes(32)))]), keys)
    bad = (3, cert[2][1][:-1] + bytes([cert[2][1][-1] ^ 1]))
    assert not verify_cert(d.block.with_cert([*cert[:2], bad]), keys)
    other = make_block(1, txs=[b"other"])
    assert not verify_cert(other.with_cert(cert), keys)  # votes are bound to the block hash


def test_certified_blocks_need_a_quorum_certificate_and_deliver_in_order():
    r, peer = make_replica(4, 3), make_replica(4, 1)
    a = make_block(1, txs=[b"A"])
    b = make_block(2, prev=a.hash)
    votes = {blk.hash: [(i, IDS[i].sign(vote_digest(CHAIN, 0, blk.header.seq, blk.hash))) for i in range(4)]
             for blk in (a, b)}
    va = votes[a.hash]
    for cert in (va[:2], [*va[:2], va[1]], [*va[:2], (2, va[3][1])], [*va[:3], (7, va[3][1])]):
        assert r.on_message(peer.certified_message(a.with_cert(cert))) == []
    assert r.ignored == 4 and r.last_delivered == 0
    assert r.on_message(peer.certified_message(b.with_cert(votes[b.hash][1:]))) == []  # ahead of its turn
    got = delivered(r.on_message(peer.certified_message(a.with_cert(va[:3]))))
    assert [(d.seq, d.block.hash, d.certified) for d in got] == [(1, a.hash, True), (2, b.hash, True)]
    assert r.last_delivered == 2 and r.last_hash == b.hash


def test_bad_pre_prepares_ignored():
    a = make_block(1)
    cases = [
        pre_prepare(make_block(1, proposer=2), sender=2),  # not from the primary
        PrePrepare(0, 1, ecdsa.sha256(b"x"), 0, IDS[0].sign(PrePrepare(0, 1, ecdsa.sha256(b"x"), 0, b"")
                                                           .signing_digest(CHAIN)), block=a),  # digest != hash
        signed(PrePrepare, 0, 0, 2, make_block(1).hash, block=make_block(1)),  # header seq != seq
        pre_prepare(make_block(1, proposer=3), sender=0),  # header proposer != sender
        pre_prepare(Block(make_block(1, salt=b"s").header, (b"t",))),  # tx root does not match
    ]
    r = make_replica(4, 1, check_block=Block.check_tx_root)
    for m in cases:
        assert r.on_message(m) == []
    assert r.ignored == len(cases)
    assert sent(r.on_message(pre_prepare(a)), Prepare)


def test_propose_preconditions():
    with pytest.raises(RuntimeError):
        make_replica(4, 1).propose(make_block(1))
    p = make_replica(4, 0, window=2)
    with pytest.raises(ValueError):
        p.propose(make_block(2))
    with pytest.raises(ValueError):
        p.propose(make_block(1, view=4))
    p.propose(make_block(1))
    p.propose(make_block(2))
    with pytest.raises(RuntimeError):
        p.propose(make_block(3))
    assert p.in_flight() == 2
    with pytest.raises(ValueError):
        make_replica(4, 4)


def test_messages_round_trip():
    b = make_block(3, txs=[b"x", b"yz"]).with_cert([(0, bytes(64))])
    msgs = [pre_prepare(b), signed(Prepare, 2, 5, 3, b.hash), signed(Commit, 3, 0, 2**40, b.hash),
            signed(Suspect, 1, 4, 2, b.hash)]
    for m in msgs:
        back = decode_message(m.encode())
        assert back == m and type(back) is type(m) and back.encode() == m.encode()
        assert back.signing_digest(CHAIN) == m.signing_digest(CHAIN)
    assert decode_message(msgs[0].encode()).block.hash == b.hash
    # domains differ per phase, so a prepare signature is no commit signature
    assert msgs[1].signing_digest(CHAIN) != Commit(*list(vars(msgs[1]).values())[:5]).signing_digest(CHAIN)


D, S = bytes(32), bytes(64)
BLOCK = make_block(1).encode()
MALFORMED = [
    b"", b"\xc1", encode([2, 0, 1, D, 0, S]) + b"\x00", encode(5), encode([2, 0, 1, D, 0]),
    encode([2, -1, 1, D, 0, S]), encode([2, 0, 1, D[:31], 0, S]), encode([2, 0, 1, D, 0, S[:63]]),
    encode([2, 0, 1, "d" * 32, 0, S]), encode([1, 0, 1, D, 0, S]), encode([1, 0, 1, D, 0, S, "blk"]),
    encode([1, 0, 1, D, 0, S, encode([1, 2])]), encode([2, 0, 1, D, 0, S, BLOCK]), encode([10, 0, 1, D, 0, S]),
    b"\x96\x02\xcd\x00\x00\x01" + encode(D) + b"\x00" + encode(S),  # non-canonical int width
    encode([2, 0, 1, D, 0, S, b"x" * (MAX_BLOCK_BYTES + 1024)]),
]


@pytest.mark.parametrize("raw", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_messages_raise(raw):
    with pytest.raises(ConsensusError):
        decode_message(raw)


def test_malformed_header_inside_pre_prepare_raises_consensus_error():
    with pytest.raises(ConsensusError):
        decode_message(encode([1, 0, 1, D, 0, S, encode([b"\xc1", [], []])]))


def test_bool_fields_cannot_smuggle_a_bad_signature_into_the_certificate():
    r, a = _prepared_backup()
    r.on_message(signed(Prepare, 2, 0, 1, a.hash))
    raw = signed(Commit, 3, False, True, a.hash).encode()  # byzantine replica 3 signs over bool fields
    try:
        acts = r.on_message(decode_message(raw))
    except ConsensusError:
        acts = []
    acts += r.on_message(signed(Commit, 0, 0, 1, a.hash))
    acts += r.on_message(signed(Commit, 2, 0, 1, a.hash))
    (d,) = delivered(acts)
    assert verify_cert(d.block, pubs(4))


def test_early_bogus_vote_does_not_discard_honest_votes():
    r = make_replica(4, 1)
    a = make_block(1)
    r.on_message(signed(Prepare, 3, 0, 1, ecdsa.sha256(b"bogus")))  # byzantine replica 3, ahead of the primary
    r.on_message(signed(Prepare, 2, 0, 1, a.hash))  # honest, reordered before the pre-prepare
    assert sent(r.on_message(pre_prepare(a)), Commit)


def test_ignored_messages_are_counted_by_reason():
    """Each dropped message counts once, under why it was dropped (ReplicaState.ignored; /v1/status)."""
    r, a = _prepared_backup()
    assert r.phase is Phase.NORMAL
    r.start_view_change(1)
    assert r.phase is Phase.VIEW_CHANGE
    # waiting for the NEW-VIEW of view 1: a vote of the view we left is from a stale view
    assert r.on_message(signed(Prepare, 2, 0, 1, a.hash)) == []
    assert r.state.ignored == Counter({Ignored.OLD_VIEW: 1})
    assert r.on_message(signed(Commit, 2, 2, 1, a.hash)) == []  # and one of a view beyond ours is early
    assert r.state.ignored[Ignored.FUTURE_VIEW] == 1
    assert r.on_message(signed(Prepare, 3, 1, 1, a.hash)) == [] and len(r.state.early_view) == 1  # kept for view 1
    assert r.on_message(signed(Prepare, 3, 1, 1, a.hash)) == []  # the same one again is not kept twice
    assert r.state.ignored[Ignored.VIEW_CHANGING] == 1 and len(r.state.early_view) == 1
    assert r.on_message(signed(Suspect, 9, 1, 0, bytes(32), signer=2)) == []
    assert r.state.ignored[Ignored.BAD_SENDER] == 1
    assert r.ignored == 4 == sum(r.ignored_by_reason().values())

    q = make_replica(4, 1)
    assert q.on_message(signed(PrePrepare, 2, 0, 1, make_block(1).hash, block=make_block(1))) == []
    assert q.on_message(signed(Prepare, 0, 0, 1, make_block(1).hash)) == []  # the primary's own prepare
    b = make_block(1)
    q.on_message(pre_prepare(b))
    assert q.on_message(signed(Prepare, 2, 0, 1, bytes(32))) == []  # a vote for another block
    uncertified = make_block(1)
    assert q.offer_certified(make_block(9 * q.window)) == [] and q.offer_certified(uncertified) == []
    assert q.ignored_by_reason() == {"not-primary": 1, "primary-prepare": 1, "wrong-digest": 1,
                                     "outside-window": 1, "bad-certificate": 1}


# ---- the execution contract: Execute out, `executed` in (what node/validator.py drives) -------------
def _counting_replica(n=4, i=1):
    keys, calls = pubs(n), Counter()

    def verify(idx, d, s):
        calls[d] += 1
        return ecdsa.verify(keys[idx], d, s)
    return Replica(CHAIN, n, i, IDS[i].sign, verify), calls


def test_a_backup_asks_for_execution_and_votes_only_on_the_answer():
    r, calls = _counting_replica()
    a = make_block(1, txs=[b"A"])
    pp = pre_prepare(a)
    assert r.on_message(pp) == [Execute(1, a, fresh=True)]  # no vote before the block executed here
    assert r.state.log[1].block is None
    acts = r.executed(1, a.hash, True)
    (prep,) = sent(acts, Prepare)
    assert prep.digest == a.hash and prep.pp_sig == pp.sig
    assert isinstance(acts[0], Persist)  # logged durably before it leaves
    assert r.state.log[1].block == a
    assert calls[pp.signing_digest(CHAIN)] == 1  # the pre-prepare's signature was checked once
    assert r.executed(1, a.hash, True) == []  # a second answer changes nothing


def test_a_block_that_did_not_execute_gets_no_vote_and_is_asked_for_again():
    r, _ = _counting_replica()
    a = make_block(1, txs=[b"A"])
    assert r.on_message(pre_prepare(a)) == [Execute(1, a, fresh=True)]
    assert r.executed(1, a.hash, False) == []
    assert r.ignored_by_reason() == {"invalid-block": 1} and r.state.log[1].block is None
    # the primary retransmits (its parent may have arrived meanwhile): asked again, and this time it runs
    assert r.on_message(pre_prepare(a)) == [Execute(1, a, fresh=True)]
    assert sent(r.executed(1, a.hash, True), Prepare)


def test_a_retransmission_while_executing_asks_again_and_a_dropped_request_costs_nothing():
    r, _ = _counting_replica()
    a = make_block(1, txs=[b"A"])
    assert r.on_message(pre_prepare(a)) == [Execute(1, a, fresh=True)]
    # the driver dropped that request (a parked pre-prepare whose blobs never came): the next copy asks again
    assert r.on_message(pre_prepare(a)) == [Execute(1, a, fresh=True)]
    assert sent(r.executed(1, a.hash, True), Prepare)
    assert r.on_message(pre_prepare(a)) == []  # held now: a plain duplicate


def test_a_second_block_while_the_first_executes_is_equivocation():
    r, _ = _counting_replica()
    a, b = make_block(1, txs=[b"A"]), make_block(1, txs=[b"B"])
    r.on_message(pre_prepare(a))
    acts = r.on_message(pre_prepare(b))
    assert r.ignored_by_reason() == {"equivocation": 1} and r.changing and sent(acts, ViewChange)
    assert r.evidence[0]["kind"] == "equivocating-primary"
    assert r.executed(1, a.hash, True) == [] and r.executed(1, b.hash, True) == []  # that view is gone


def test_stale_answers_change_nothing():
    r, _ = _counting_replica()
    a = make_block(1, txs=[b"A"])
    r.on_message(pre_prepare(a))
    assert r.executed(1, make_block(1, txs=[b"B"]).hash, True) == []  # not the block it asked about
    assert r.executed(2, a.hash, True) == []  # nor that sequence
    assert r.state.log[1].executing is not None
    r.start_view_change(1)
    assert r.executed(1, a.hash, True) == [] and 1 not in r.state.log  # asked in a view since left


def test_a_re_proposed_block_is_executed_untimed():
    """A block a new view carries over was timed when first proposed: `fresh` is False for it."""
    r, _ = _counting_replica(i=2)
    old = make_block(1, view=0, txs=[b"A"])
    pp = signed(PrePrepare, 1, 1, 1, old.hash, block=old)  # view 1's primary re-proposes view 0's block
    r.state.view, r.state.fixed = 1, {1: old.hash}
    assert r.on_message(pp) == [Execute(1, old, fresh=False)]
