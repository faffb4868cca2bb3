"""The PBFT replica at its edges: certified blocks a peer pushes (every field checked against the
block, the window's last sequence, an index past the validators), pre-prepares whose header does
not match, conflicting votes kept as evidence, stale execution answers, and what delivery resets;
what the constructor takes and its defaults, the view timer's pacing, what a replica sends while its
view changes, and the recovery role's entry points.

A lying peer meets these checks first; each refusal is counted under its reason, and none of them
may raise (an exception in the replica is a crash of the validator's consensus task)."""

from __future__ import annotations

import pytest

from node import merkle
from node.block import GENESIS_PREV, TX_FRAMING, TXS_MAX_BYTES, Block, Header, txs_bytes, vote_digest
from node.consensus import (
    Broadcast,
    Checkpoint,
    Commit,
    ConsensusError,
    NewView,
    Persist,
    Prepare,
    PrePrepare,
    Replica,
    Send,
    ViewChange,
)
from node.consensus import viewchange as vcm
from node.consensus.messages import T_CHECKPOINT, T_PREPARE, T_STATUS, CertifiedBlock, Status, Suspect
from node.consensus.recovery import decode_record
from node.consensus.state import Instance, Phase
from node.crypto import ecdsa
from node.wire import MAX_TX_BYTES
from tests.consensus_sim import (
    CHAIN,
    IDS,
    T0,
    delivered,
    make_block,
    make_replica,
    pre_prepare,
    raw_replica,
    sent,
    signed,
)


def certify(block: Block, signers: range | list[int] = range(3), view: int = 0) -> Block:
    d = vote_digest(CHAIN, view, block.header.seq, block.hash)
    return block.with_cert([(i, IDS[i].sign(d)) for i in signers], view)


def chain(k: int) -> list[Block]:
    """k blocks, each on its parent, each carrying a transaction (work: progress)."""
    out: list[Block] = []
    for seq in range(1, k + 1):
        out.append(make_block(seq, prev=out[-1].hash if out else GENESIS_PREV, txs=[b"tx %d" % seq]))
    return out


def odd_block(height: int, seq: int) -> Block:
    """A block whose header's height and sequence differ."""
    h = Header(CHAIN, height, GENESIS_PREV, 0, seq, T0 + seq, merkle.root([]), ecdsa.sha256(b"odd"), 0)
    return Block(h, ())


# ---- certified blocks pushed by a peer ----

def test_a_certified_block_is_checked_against_what_carries_it():
    r = make_replica(4, 3)
    a = certify(make_block(1))
    assert r.offer_certified(None) == []  # a message whose block did not decode
    assert r.offer_certified(a, digest=ecdsa.sha256(b"another")) == []  # not the block the message names
    assert r.offer_certified(a, seq=2) == []  # offered for another sequence
    assert r.offer_certified(certify(odd_block(2, 1))) == []  # height and sequence differ
    assert r.offer_certified(certify(odd_block(1, 2)), seq=2) == []
    assert r.ignored_by_reason() == {"malformed": 5} and r.last_delivered == 0 and not r.certified
    (d,) = delivered(r.offer_certified(a, digest=a.hash, seq=1))
    assert d.seq == 1 and d.certified


def test_a_certified_header_with_other_transactions_under_it_is_refused():
    """The certificate signs the header only: a peer that swaps the transactions of a truly certified
    block (sync, a pushed certified block) must not get them delivered. Before, the validator executed
    them, found another transaction root and stopped (or stored them beside the honest state)."""
    r = make_replica(4, 3)
    honest = certify(make_block(1, txs=[b"tx-1", b"tx-2"]))
    for txs in ((b"tx-1",), (b"tx-2", b"tx-1"), (b"tx-1", b"tx-2", b"tx-3"), ()):
        swapped = Block(honest.header, txs, honest.cert, honest.cert_view)
        assert r.cert_valid(swapped) and r.offer_certified(swapped, digest=honest.hash, seq=1) == []
    assert r.ignored_by_reason() == {"malformed": 4} and not r.certified and r.last_delivered == 0
    (d,) = delivered(r.offer_certified(honest))  # the honest copy is not crowded out
    assert d.block.txs == (b"tx-1", b"tx-2")


def test_a_certificate_naming_an_index_past_the_validators_is_refused_without_raising():
    r = make_replica(4, 3)
    b = make_block(1)
    d = vote_digest(CHAIN, 0, 1, b.hash)
    forged = b.with_cert([(0, IDS[0].sign(d)), (1, IDS[1].sign(d)), (2, IDS[2].sign(d)), (4, IDS[4].sign(d))], 0)
    assert r.offer_certified(forged) == []
    assert r.ignored_by_reason() == {"bad-certificate": 1} and r.last_delivered == 0


def test_a_delivered_block_offered_again_is_dropped_quietly():
    r = make_replica(4, 3)
    (a,) = chain(1)
    assert delivered(r.offer_certified(certify(a)))
    assert r.offer_certified(certify(a, [1, 2, 3])) == []  # the same block, another quorum
    assert r.certified == {} and r.ignored == 0


def test_certified_blocks_wait_up_to_four_windows_ahead():
    r = make_replica(4, 3, window=2)
    last = certify(make_block(8))
    assert r.offer_certified(last) == [] and r.certified == {8: last}  # kept until its turn
    assert r.offer_certified(certify(make_block(9))) == []
    assert r.ignored_by_reason() == {"outside-window": 1} and set(r.certified) == {8}


def test_delivery_from_certified_blocks_moves_every_cursor():
    r = make_replica(4, 1)
    r.state.vc_attempt = 3
    blocks = chain(2)
    assert r.offer_certified(certify(blocks[1])) == []  # ahead of its turn: kept
    got = delivered(r.offer_certified(certify(blocks[0])))
    assert [d.seq for d in got] == [1, 2]
    assert (r.last_delivered, r.last_hash, r.next_seq) == (2, blocks[1].hash, 3)
    assert r.certified == {} and r.state.vc_attempt == 0


def test_a_delivery_ends_a_suspicion():
    r = make_replica(4, 1)
    r.state.phase = Phase.SUSPECTING
    assert delivered(r.offer_certified(certify(make_block(1, txs=[b"work"]))))
    assert r.state.phase is Phase.NORMAL


def test_an_empty_block_is_not_progress():
    """A byzantine primary proposing empty blocks just inside the view timeout (an honest one proposes
    none) stretched the timeout to 8x through the delivery pace and kept its seat while every client
    transaction waited (a review: 55 empty blocks in 10 minutes, no view change). An empty delivery
    neither resets the timer nor feeds the pace nor ends a suspicion."""
    r = make_replica(4, 1)
    s = r.state
    s.phase, s.round_ema, s.progress_at, s.now_ms, s.vc_attempt = Phase.SUSPECTING, 100.0, 1000, 5000, 2
    s.suspects = {2: 5000}
    assert delivered(r.offer_certified(certify(make_block(1))))
    assert (s.phase, s.round_ema, s.progress_at, s.vc_attempt, s.progress_seq) == (Phase.SUSPECTING, 100.0, 1000, 2, 0)
    assert s.suspects == {2: 5000} and r.last_delivered == 1


def test_a_checkpoint_holds_the_own_signature_and_becomes_stable_with_a_quorum():
    r = make_replica(4, 1, window=4)  # a checkpoint every block
    (a,) = chain(1)
    acts = r.offer_certified(certify(a))
    (cp,) = sent(acts, Checkpoint)
    votes = r.state.checkpoints[1][a.header.state_root]
    assert votes == {1: cp.sig} and ecdsa.verify(IDS[1].public_key, cp.signing_digest(CHAIN), cp.sig)
    assert r.stable == 0
    for s in (2, 3):
        r.on_message(signed(Checkpoint, s, 0, 1, a.header.state_root))
    assert r.stable == 1 and r.state.checkpoints == {}


# ---- pre-prepares ----

def test_a_pre_prepare_whose_block_height_is_not_its_sequence_is_malformed():
    r = make_replica(4, 1)
    assert r.on_message(pre_prepare(odd_block(2, 1))) == []  # no Execute asked, no vote
    assert r.ignored_by_reason() == {"malformed": 1}


def test_each_bad_pre_prepare_is_counted_under_its_reason():
    a = make_block(1)
    r = make_replica(4, 1, check_block=Block.check_tx_root)
    r.on_message(pre_prepare(make_block(1, proposer=2), sender=2))  # not from the primary
    r.on_message(signed(PrePrepare, 0, 0, 1, ecdsa.sha256(b"x"), block=a))  # digest != hash
    r.on_message(pre_prepare(make_block(1, proposer=3), sender=0))  # header proposer != sender
    r.on_message(pre_prepare(Block(make_block(1, salt=b"s").header, (b"t",))))  # does not execute
    assert r.ignored_by_reason() == {"not-primary": 1, "malformed": 2, "invalid-block": 1}


def test_a_fresh_proposal_over_the_byte_budget_is_refused():
    """An honest primary fills a block to TXS_MAX_BYTES; a byzantine one proposing more could get a
    block certified that, with its certificate, passes the 8 MiB every node decodes."""
    fits = (bytes(TXS_MAX_BYTES - TX_FRAMING),)
    over = (bytes(TXS_MAX_BYTES - TX_FRAMING + 1),)
    r = make_replica(4, 1)
    assert r.on_message(pre_prepare(make_block(1, txs=over))) == []
    assert r.ignored_by_reason() == {"too-large": 1}
    assert sent(r.on_message(pre_prepare(make_block(1, txs=fits))), Prepare)


# ---- votes ----

def test_a_second_vote_for_another_block_is_kept_as_evidence():
    r = make_replica(4, 1)
    a, b = make_block(1, txs=[b"A"]), make_block(1, txs=[b"B"])
    r.on_message(pre_prepare(a))
    first = signed(Prepare, 2, 0, 1, a.hash)
    second = signed(Prepare, 2, 0, 1, b.hash)
    r.on_message(first)
    assert r.on_message(second) == []
    assert r.ignored_by_reason() == {"conflicting-vote": 1}
    assert r.evidence == [{"kind": "conflicting-votes", "validator": 2, "tag": T_PREPARE, "view": 0, "seq": 1,
                           "digests": [a.hash.hex(), b.hash.hex()], "sigs": [first.sig.hex(), second.sig.hex()]}]


def test_a_prepare_carrying_another_signed_pre_prepare_names_the_sequence_in_its_evidence():
    r = make_replica(4, 1)
    a, b = make_block(1, txs=[b"A"]), make_block(1, txs=[b"B"])
    r.on_message(pre_prepare(a))
    other = pre_prepare(b)
    r.on_message(signed(Prepare, 2, 0, 1, b.hash, pp_sig=other.sig))
    (ev,) = [e for e in r.evidence if e["kind"] != "conflicting-votes"]
    assert ev["seq"] == 1 and ev["validator"] == 0 and set(ev["digests"]) == {a.hash.hex(), b.hash.hex()}


# ---- proposing ----

def test_the_primary_may_propose_up_to_the_window_s_last_sequence():
    p = make_replica(4, 0, window=2)
    b1 = make_block(1)
    p.propose(b1)
    assert p.can_propose()  # sequence 2 is the window's last
    p.propose(make_block(2, prev=b1.hash))
    assert not p.can_propose()
    with pytest.raises(RuntimeError, match="^sequence window full$"):
        p.propose(make_block(3))


def test_proposing_says_why_it_cannot():
    with pytest.raises(RuntimeError, match="^only the primary of an active view proposes$"):
        make_replica(4, 1).propose(make_block(1))
    with pytest.raises(ValueError, match=r"^block header must carry the view and sequence \(= height\) it is proposed at$"):
        make_replica(4, 0).propose(make_block(2))


def test_votes_after_delivery_leave_the_log_empty():
    r = make_replica(4, 1)
    a = make_block(1)
    acts = r.on_message(pre_prepare(a))
    for m in (signed(Prepare, 2, 0, 1, a.hash), signed(Commit, 0, 0, 1, a.hash), signed(Commit, 2, 0, 1, a.hash)):
        acts += r.on_message(m)
    assert [d.seq for d in delivered(acts)] == [1] and 1 not in r.state.log


# ---- what delivery and checkpoints keep ----

def test_the_round_time_average_and_the_view_change_attempts_follow_each_delivery():
    r = make_replica(4, 1)
    s = r.state
    s.round_ema, s.progress_at, s.now_ms, s.vc_attempt = 100.0, 1000, 1300, 2
    blocks = chain(2)
    assert delivered(r.offer_certified(certify(blocks[0])))
    assert s.round_ema == pytest.approx(0.7 * 100 + 0.3 * 300) and s.progress_at == 1300 and s.vc_attempt == 0
    assert delivered(r.offer_certified(certify(blocks[1])))  # at once: a round of no time
    assert s.round_ema == pytest.approx(0.7 * 160)


def test_a_single_validator_is_stable_at_each_delivery_and_sends_no_checkpoint():
    r = make_replica(1, 0, window=4)
    acts = r.propose(make_block(1, n=1))
    assert delivered(acts) and not sent(acts, Checkpoint) and r.stable == 1


def test_checkpoints_that_came_first_make_the_own_delivery_stable_at_once():
    r = make_replica(4, 1, window=4)
    (a,) = chain(1)
    for s in (0, 2):
        r.on_message(signed(Checkpoint, s, 0, 1, a.header.state_root))
    assert r.stable == 0
    assert delivered(r.offer_certified(certify(a)))
    assert r.stable == 1


def test_a_quorum_on_another_state_root_is_kept_as_evidence_of_divergence():
    r = make_replica(4, 1, window=4)
    (a,) = chain(1)
    acts = r.offer_certified(certify(a))
    (mine,) = sent(acts, Checkpoint)
    other = ecdsa.sha256(b"another state")
    for s in (0, 2, 3):
        r.on_message(signed(Checkpoint, s, 0, 1, other))
    assert r.stable == 0  # ours differs: never stable on a root we did not compute
    assert r.evidence == [{"kind": "state-divergence", "validator": 1, "tag": T_CHECKPOINT, "view": 0, "seq": 1,
                           "digests": [a.header.state_root.hex(), other.hex()], "sigs": [mine.sig.hex(), ""]}]


def test_a_minority_root_seen_first_does_not_hide_the_quorum():
    r = make_replica(4, 1, window=4)
    (a,) = chain(1)
    r.on_message(signed(Checkpoint, 3, 0, 1, ecdsa.sha256(b"a byzantine root")))  # the first root seen
    r.offer_certified(certify(a))
    for s in (0, 2):
        r.on_message(signed(Checkpoint, s, 0, 1, a.header.state_root))
    assert r.stable == 1 and r.evidence == []


def test_checkpoints_are_kept_only_on_the_interval_and_up_to_sixteen_windows_ahead():
    r = make_replica(4, 1, window=8)  # a checkpoint every 2 blocks; 128 sequences ahead at most
    root = ecdsa.sha256(b"root")
    for seq in (3, 128, 130):
        r.on_message(signed(Checkpoint, 2, 0, seq, root))
    assert set(r.state.checkpoints) == {128}
    cp = signed(Checkpoint, 2, 0, 128, root)
    assert r.state.checkpoints[128] == {root: {2: cp.sig}}  # the signature, kept as proof


# ---- votes and prepared certificates ----

def test_a_retransmitted_vote_is_neither_a_conflict_nor_evidence():
    r = make_replica(4, 1)
    a = make_block(1)
    r.on_message(pre_prepare(a))
    p = signed(Prepare, 2, 0, 1, a.hash)
    r.on_message(p)
    assert r.on_message(p) == []
    assert r.ignored == 0 and r.evidence == []


def test_the_prepared_certificate_is_the_first_quorum_and_persisted_with_the_commit():
    r = make_replica(4, 1)
    a = make_block(1)
    r.on_message(pre_prepare(a))
    acts = r.on_message(signed(Prepare, 2, 0, 1, a.hash))  # prepared: the primary's pre-prepare, ours, 2's
    cert, block = r.state.prepared[1]
    assert block.hash == a.hash and [i for i, _ in cert.prepares] == [1, 2] and cert.view == 0
    (persist,) = [x for x in acts if isinstance(x, Persist)]
    rec = decode_record(persist.record)
    assert rec.pcert is not None and rec.pcert[0] == cert and rec.pcert[1].hash == a.hash
    r.on_message(signed(Prepare, 3, 0, 1, a.hash))  # a later prepare does not rewrite it
    assert r.state.prepared[1][0] == cert


# ---- certified blocks as messages; pre-prepares after a view change ----

def test_a_certified_block_message_is_checked_against_its_own_sequence_and_digest():
    r = make_replica(4, 3)
    a = certify(make_block(1))
    assert r.on_message(signed(CertifiedBlock, 0, 0, 2, a.hash, block=a)) == []
    assert r.on_message(signed(CertifiedBlock, 0, 0, 1, ecdsa.sha256(b"x"), block=a)) == []
    assert r.ignored_by_reason() == {"malformed": 2}
    assert delivered(r.on_message(signed(CertifiedBlock, 0, 0, 1, a.hash, block=a)))


def test_below_the_new_view_s_floor_a_pre_prepare_is_refused():
    r = make_replica(4, 1)
    r.state.floor = 1  # a new view's base: committed already, taken only from its certificate
    assert r.on_message(pre_prepare(make_block(1))) == []
    assert r.ignored_by_reason() == {"below-floor": 1}


def test_a_sequence_the_new_view_fixed_takes_only_that_block_as_first_proposed():
    a = make_block(1, txs=[b"A"])
    cases = {
        "other block": make_block(1, txs=[b"B"]),
        "header from a later view": make_block(1, view=1, proposer=0, txs=[b"A"]),
        "proposer not the primary of its view": make_block(1, proposer=2, txs=[b"A"]),
    }
    for name, b in cases.items():
        r = make_replica(4, 1)
        r.state.fixed[1] = a.hash if name == "other block" else b.hash
        assert r.on_message(signed(PrePrepare, 0, 0, 1, b.hash, block=b)) == [], name  # in view 0, from its primary
        assert r.ignored_by_reason() == {"not-fixed": 1}, name
    r = make_replica(4, 1)
    r.state.fixed[1] = a.hash
    assert sent(r.on_message(pre_prepare(a)), Prepare)


# ---- time: retransmission, heartbeats; peers' status ----

def test_open_messages_are_resent_with_a_doubling_backoff_capped_at_sixteen_rounds():
    p = make_replica(4, 0)  # the primary, retransmit every 250 ms at first
    p.tick(1_000)
    a = make_block(1)
    p.propose(a)
    p.on_message(signed(Prepare, 2, 0, 1, a.hash))  # 2 holds the block (it voted)
    inst = p.state.log[1]
    sent_at = inst.sent_at
    times, backoffs = [], []
    t = sent_at
    for _ in range(8):
        t += inst.backoff
        assert [x for x in p.tick(t - 1) if isinstance(x, Send)] == []  # not yet
        resent = [x for x in p.tick(t) if isinstance(x, Send)]
        assert sorted(x.to for x in resent) == [1, 3]  # the block only to those that have not voted
        times.append(t)
        backoffs.append(inst.backoff)
    assert backoffs == [500, 1000, 2000, 4000, 4000, 4000, 4000, 4000]


def test_a_backup_resends_its_vote_to_everyone_until_the_block_commits():
    r = make_replica(4, 1)
    r.tick(1_000)
    a = make_block(1)
    r.on_message(pre_prepare(a))
    t = r.state.log[1].sent_at + 250
    acts = r.tick(t)
    assert [type(x.msg).__name__ for x in acts if isinstance(x, Broadcast) and not isinstance(x.msg, Status)] \
        == ["Prepare"]


def test_a_heartbeat_goes_out_every_status_interval_exactly():
    r = make_replica(4, 1)
    first = [x for x in r.tick(10_000) if isinstance(x, Broadcast) and isinstance(x.msg, Status)]
    assert len(first) == 1
    assert not [x for x in r.tick(10_499) if isinstance(x, Broadcast) and isinstance(x.msg, Status)]
    assert [x for x in r.tick(10_500) if isinstance(x, Broadcast) and isinstance(x.msg, Status)]


def test_the_own_checkpoint_is_repeated_with_the_heartbeat_until_it_is_stable():
    r = make_replica(4, 1, window=4)
    (a,) = chain(1)
    r.offer_certified(certify(a))
    beats = [x.msg for x in r.tick(10_000) if isinstance(x, Broadcast)]
    assert [type(m).__name__ for m in beats] == ["Status", "Checkpoint"]
    for s in (0, 2):
        r.on_message(signed(Checkpoint, s, 0, 1, a.header.state_root))
    assert r.stable == 1
    assert [type(x.msg).__name__ for x in r.tick(10_500) if isinstance(x, Broadcast)] == ["Status"]


def test_a_peer_that_signs_another_block_at_our_height_is_evidence_of_a_fork():
    r = make_replica(4, 1)
    (a,) = chain(1)
    r.offer_certified(certify(a))
    other = ecdsa.sha256(b"another block 1")
    st = signed(Status, 2, 0, 1, other)
    r.on_message(st)
    assert r.evidence == [{"kind": "conflicting-status", "validator": 2, "tag": T_STATUS, "view": 0, "seq": 1,
                           "digests": [a.hash.hex(), other.hex()], "sigs": ["", st.sig.hex()]}]
    r2 = make_replica(4, 1)
    r2.on_message(signed(Status, 2, 0, 0, other))  # at height 0 there is no block to fork from
    assert r2.evidence == []


def test_a_peer_behind_is_sent_certified_blocks_once_a_status_round():
    r = make_replica(4, 1)
    blocks = chain(3)
    for b in blocks:
        r.offer_certified(certify(b))
    r.tick(10_000)
    assert r.on_message(signed(Status, 2, 0, 1, blocks[0].hash)) == []  # first word from it: it may be moving
    r.tick(10_100)
    (c,) = r.on_message(signed(Status, 2, 0, 1, blocks[0].hash))  # still at 1: behind, not moving
    assert (c.to, c.first, c.last) == (2, 2, 3)
    r.tick(10_599)
    assert r.on_message(signed(Status, 2, 0, 1, blocks[0].hash)) == []  # within the status interval
    r.tick(10_600)
    assert len(r.on_message(signed(Status, 2, 0, 1, blocks[0].hash))) == 1


def test_a_peer_far_behind_is_left_to_state_transfer():
    r = make_replica(4, 1, push_gap_max=2)
    blocks = chain(4)
    for b in blocks:
        r.offer_certified(certify(b))
    r.tick(10_000)
    for _ in range(2):
        assert r.on_message(signed(Status, 2, 0, 1, blocks[0].hash)) == []  # 3 behind: more than 2
    r3 = make_replica(4, 1, push_gap_max=3)
    for b in blocks:
        r3.offer_certified(certify(b))
    r3.tick(10_000)
    r3.on_message(signed(Status, 2, 0, 1, blocks[0].hash))
    assert len(r3.on_message(signed(Status, 2, 0, 1, blocks[0].hash))) == 1  # exactly the gap: pushed


def test_a_single_validator_proposes_delivers_and_ticks_with_nothing_to_send():
    r = make_replica(1, 0)
    acts = r.propose(make_block(1, n=1))
    assert acts == delivered(acts) and len(acts) == 1  # no consensus-log record, no broadcast
    assert r.tick(10_000) == []


def test_a_quorum_for_an_older_checkpoint_is_not_compared_with_a_newer_own_one():
    """Our own checkpoint moved on to sequence 2 when a quorum for 1 arrives: 1's root is not
    compared with 2's (that would be false evidence of divergence); 2's quorum then makes 2 stable."""
    blocks = chain(2)
    r = make_replica(4, 1, window=4)  # a checkpoint every block
    for b in blocks:
        r.offer_certified(certify(b))
    for s in (0, 2, 3):
        r.on_message(signed(Checkpoint, s, 0, 1, blocks[0].header.state_root))
    assert r.evidence == [] and r.peer_stable == 1
    for s in (0, 2):
        r.on_message(signed(Checkpoint, s, 0, 2, blocks[1].header.state_root))
    assert r.stable == 2 and r.evidence == []


# ---- the constructor: what the validator passes, and the defaults it leaves ----
# (mutation testing found these unchecked: docs/TESTING.md, the replica paragraph)

def test_a_replica_index_outside_the_validators_is_refused_with_its_reason():
    for index in (-1, 4):
        with pytest.raises(ValueError, match="^replica index out of range$"):
            Replica(CHAIN, 4, index, IDS[0].sign, lambda i, d, s: True)


def test_a_replica_waits_for_a_new_view_only_when_told_and_only_above_view_0():
    assert make_replica(4, 2, view=1).phase is Phase.NORMAL  # the default: not waiting
    assert make_replica(4, 2, view=1, awaiting_new_view=True).changing
    assert make_replica(4, 2, view=2, awaiting_new_view=True).changing
    assert make_replica(4, 2, view=0, awaiting_new_view=True).phase is Phase.NORMAL  # no view change into view 0


def test_a_replica_restarted_at_a_height_proposes_commits_and_changes_view_from_there():
    """What node/validator.py passes after a restart: the height, the last block's hash and its
    certificate, the view. The low watermark, the next sequence and the parent a commit needs all
    start there, and a view change carries that certificate."""
    b10 = certify(make_block(10, prev=ecdsa.sha256(b"block 9")))
    p = make_replica(4, 2, window=2, view=2, last_delivered=10, last_hash=b10.hash, last_cert=(0, b10.cert))
    assert (p.view, p.primary, p.stable, p.next_seq, p.last_hash) == (2, 2, 10, 11, b10.hash)
    assert p.can_propose()  # 11 is within the window above the watermark 10
    b11 = make_block(11, view=2, prev=b10.hash)
    pp = sent(p.propose(b11), PrePrepare)[0]
    assert pp.view == 2
    acts = p.on_message(signed(Prepare, 0, 2, 11, b11.hash, pp_sig=pp.sig))
    acts += p.on_message(signed(Prepare, 1, 2, 11, b11.hash, pp_sig=pp.sig))
    assert [c.seq for c in sent(acts, Commit)] == [11]  # 11's parent is the block we restarted on
    (vc,) = sent(p.start_view_change(3), ViewChange)
    other = make_replica(4, 3, view=2, last_delivered=10, last_hash=b10.hash, last_cert=(0, b10.cert))
    other.on_message(vc)
    assert other.ignored == 0 and other.state.vcs[3][2].cert == b10.cert  # its certificate holds


def test_the_default_window_is_64_and_its_checkpoint_interval_a_quarter_rounded_down():
    r = make_replica(4, 1)
    assert r.offer_certified(certify(make_block(256))) == [] and set(r.certified) == {256}  # 4 windows ahead
    assert r.offer_certified(certify(make_block(257))) == []
    assert r.ignored_by_reason() == {"outside-window": 1}
    blocks = chain(16)
    cps = [cp.seq for b in blocks for cp in sent(r.offer_certified(certify(b)), Checkpoint)]
    assert cps == [16]
    r7 = make_replica(4, 1, window=7)  # 7 // 4 = 1: a checkpoint every block
    assert [cp.seq for cp in sent(r7.offer_certified(certify(blocks[0])), Checkpoint)] == [1]


def test_a_peer_behind_is_sent_32_blocks_at_most_by_default():
    r = make_replica(4, 1, last_delivered=40, last_hash=ecdsa.sha256(b"block 40"))
    r.tick(10_000)
    assert r.on_message(signed(Status, 2, 0, 0, GENESIS_PREV)) == []  # first word: it may be moving
    r.tick(10_100)
    (c,) = r.on_message(signed(Status, 2, 0, 0, GENESIS_PREV))
    assert (c.to, c.first, c.last) == (2, 1, 32)


def test_a_peer_level_with_us_is_sent_nothing():
    r = make_replica(4, 1)
    (a,) = chain(1)
    r.offer_certified(certify(a))
    r.tick(10_000)
    for t in (10_000, 10_600):
        r.tick(t)
        assert r.on_message(signed(Status, 2, 0, 1, a.hash)) == []


# ---- the view timer in tick ----

def _hear(r, senders=(0, 2)):
    for j in senders:
        r.on_message(signed(Status, j, r.view, r.last_delivered, r.last_hash))


def _suspects(acts):
    return [a for a in acts if isinstance(a, Broadcast) and isinstance(a.msg, Suspect)]


def test_the_default_view_timeout_is_1500_ms_while_work_waits():
    r = raw_replica(4, 1)
    t0 = 10_000
    for t in (t0, t0 + 500, t0 + 1000, t0 + 1499):
        assert not _suspects(r.tick(t, pending=True))
        _hear(r)
    assert _suspects(r.tick(t0 + 1500, pending=True))


def test_without_work_waiting_the_view_timer_does_not_run_by_default():
    r = raw_replica(4, 1)
    for t in range(10_000, 14_001, 500):
        assert not _suspects(r.tick(t))
        _hear(r)
    assert r.phase is Phase.NORMAL


def test_a_pause_of_exactly_the_view_timeout_restarts_the_timer():
    """A replica not run for a whole timeout (paused, descheduled) does not blame the primary for it."""
    r = raw_replica(4, 1, view_timeout_ms=1000)
    r.tick(10_000, pending=True)
    _hear(r)
    assert not _suspects(r.tick(11_000, pending=True))  # 1000 ms since the last tick: the timer starts here
    _hear(r)
    assert not _suspects(r.tick(11_500, pending=True))
    _hear(r)
    assert _suspects(r.tick(12_000, pending=True))


# ---- while a view changes: the status sent, the own VIEW-CHANGE repeated, early messages kept ----

def _view_1(prepared=None):
    """Replicas 0..3 of view 0 leave it for view 1 (each after `prepared`'s pre-prepare and prepares,
    if given); 1, the new primary, gathers 2's and 3's VIEW-CHANGE and installs view 1.
    Returns the replicas, the NEW-VIEW and what 1 did on installing it."""
    rs = [make_replica(4, i) for i in range(4)]
    for r in rs:
        r.tick(10_000)
    if prepared is not None:
        pp = pre_prepare(prepared)
        for r in rs[1:]:
            r.on_message(pp)
        for r in rs[1:]:
            for j in (1, 2, 3):
                if j != r.index:
                    r.on_message(signed(Prepare, j, 0, prepared.header.seq, prepared.hash, pp_sig=pp.sig))
    vcs = {r.index: sent(r.start_view_change(1), ViewChange)[0] for r in rs}
    acts = rs[1].on_message(vcs[2]) + rs[1].on_message(vcs[3])
    (nv,) = sent(acts, NewView)
    return rs, nv, acts


def test_a_replica_awaiting_a_new_view_reports_the_view_before_it_and_its_primary_answers():
    rs, nv, _ = _view_1()
    late = make_replica(4, 2, view=1, awaiting_new_view=True)
    (st,) = [a.msg for a in late.tick(20_000) if isinstance(a, Broadcast) and isinstance(a.msg, Status)]
    assert (st.view, st.seq, st.digest, st.sender) == (0, 0, late.last_hash, 2)
    assert ecdsa.verify(IDS[2].public_key, st.signing_digest(CHAIN), st.sig)
    assert rs[1].on_message(st) == [Send(2, nv)]


def test_the_new_primary_sends_its_new_view_to_a_replica_below_it_every_two_heartbeats():
    rs, nv, _ = _view_1()
    p = rs[1]
    below = signed(Status, 0, 0, 0, GENESIS_PREV)
    assert p.on_message(below) == [Send(0, nv)]
    p.tick(10_999)
    assert p.on_message(below) == []
    p.tick(11_000)  # 2 x 500 ms
    assert p.on_message(below) == [Send(0, nv)]
    p.tick(12_000)
    assert p.on_message(signed(Status, 0, 1, 0, GENESIS_PREV)) == []  # in the view: it has the NEW-VIEW


def test_the_own_view_change_is_repeated_every_four_heartbeats_while_the_view_changes():
    r = make_replica(4, 2)
    r.tick(10_000)
    (vc,) = sent(r.start_view_change(1), ViewChange)
    assert not sent(r.tick(11_999), ViewChange)
    assert sent(r.tick(12_000), ViewChange) == [vc]
    assert not sent(r.tick(13_999), ViewChange)
    assert sent(r.tick(14_000), ViewChange) == [vc]


def test_a_view_change_keeps_one_message_per_type_sender_and_sequence_of_the_window():
    """While a view changes, phase messages of the awaited view are kept until its NEW-VIEW: a
    byzantine validator could otherwise make every replica hold thousands of blocks (the count
    bound of 4 x n x window messages allowed 1,024 pre-prepares of up to 8 MiB each). Kept: one per
    (type, sender, sequence) in the window, a pre-prepare only from the view's primary and for the
    block it carries, and at most EARLY_BLOCK_BYTES of blocks."""
    r = make_replica(4, 2, window=2, view=1, awaiting_new_view=True)  # view 1: validator 1 is primary
    digest = ecdsa.sha256(b"a block of view 1")
    for seq in (1, 2):
        for j in (0, 1, 3):
            assert r.on_message(signed(Commit, j, 1, seq, digest)) == []
    assert r.ignored == 0 and len(r.state.early_view) == 6
    r.on_message(signed(Commit, 0, 1, 1, digest))  # again
    r.on_message(signed(Commit, 0, 1, 1, ecdsa.sha256(b"another")))  # another digest, same slot
    r.on_message(signed(Commit, 0, 1, 3, digest))  # past the window
    r.on_message(signed(Commit, 0, 1, 0, digest))  # at the delivered height (0): below it
    a = make_block(1, view=1, proposer=1)
    assert r.on_message(pre_prepare(a, sender=3)) == []  # not the view's primary
    forged = PrePrepare(1, 1, ecdsa.sha256(b"not a"), 1, bytes(64), block=a)
    r.on_message(forged)  # its block is not the digest it names
    assert r.ignored_by_reason() == {"view-changing": 2, "outside-window": 2, "not-primary": 1, "malformed": 1}
    assert r.on_message(pre_prepare(a, sender=1)) == [] and r.state.early_bytes == txs_bytes(a.txs)
    assert len(r.state.early_view) == 7


def test_early_pre_prepares_are_kept_up_to_their_byte_budget():
    from node.consensus.replica import EARLY_BLOCK_BYTES
    r = make_replica(4, 2, view=1, awaiting_new_view=True)
    tx = bytes(MAX_TX_BYTES)
    per = TXS_MAX_BYTES // (len(tx) + TX_FRAMING)
    txs = (tx,) * per
    txs += (bytes(TXS_MAX_BYTES - txs_bytes(txs) - TX_FRAMING),)  # each block exactly at the budget
    blocks = [make_block(seq, view=1, proposer=1, txs=txs) for seq in range(1, 6)]
    assert txs_bytes(blocks[0].txs) == TXS_MAX_BYTES and EARLY_BLOCK_BYTES == 4 * TXS_MAX_BYTES
    for b in blocks[:4]:  # the fourth fills the budget to the byte: kept
        assert r.on_message(pre_prepare(b, sender=1)) == []
    assert r.ignored == 0 and r.state.early_bytes == EARLY_BLOCK_BYTES
    r.on_message(pre_prepare(blocks[4], sender=1))  # past the budget: its primary sends it again
    assert r.ignored_by_reason() == {"view-changing": 1} and len(r.state.early_view) == 4


def test_a_block_prepared_again_in_a_new_view_holds_that_view_s_certificate():
    """Prepared in view 0 and re-proposed by view 1's primary: the certificate of view 1 replaces the
    older one, in the state and in the consensus-log record written with the commit."""
    a = make_block(1)
    rs, nv, acts = _view_1(prepared=a)
    p = rs[1]
    assert p.state.prepared[1][0].view == 0
    (pp,) = sent(acts, PrePrepare)
    assert (pp.view, pp.seq, pp.digest) == (1, 1, a.hash)
    acts = p.on_message(signed(Prepare, 2, 1, 1, a.hash, pp_sig=pp.sig))
    acts += p.on_message(signed(Prepare, 3, 1, 1, a.hash, pp_sig=pp.sig))
    cert = p.state.prepared[1][0]
    assert cert.view == 1 and [i for i, _ in cert.prepares] == [2, 3] and cert.pp_sig == pp.sig
    (persist,) = [x for x in acts if isinstance(x, Persist)]
    assert decode_record(persist.record).pcert[0] == cert


# ---- the recovery role's entry points ----

def test_record_is_of_the_instance_given_or_else_of_the_log_s():
    r = make_replica(4, 1)
    a = make_block(1)
    r.on_message(pre_prepare(a))
    acts = r.on_message(signed(Prepare, 2, 0, 1, a.hash))  # prepared: the commit's record
    (persist,) = [x for x in acts if isinstance(x, Persist)]
    assert r.record(1) == persist.record
    other = Instance(digest=ecdsa.sha256(b"b"), block=make_block(1, txs=[b"B"]))
    rec = decode_record(r.record(1, other))
    assert rec.block.hash == other.block.hash and rec.tags == () and rec.pcert == r.state.prepared[1]


def test_a_restarted_replica_reinstalls_its_new_view_and_resumes_its_view_change():
    _, nv, _ = _view_1()
    r = make_replica(4, 2, view=1, awaiting_new_view=True)
    assert r.reinstall(nv)
    assert not r.changing and r.view == 1 and r.view_changes == 0
    w = make_replica(4, 3, view=1, awaiting_new_view=True)  # no NEW-VIEW on its disk: still changing
    w.resume_view_change()
    (vc,) = sent(w.tick(20_000), ViewChange)
    assert (vc.view, vc.sender) == (1, 3)


def test_a_certificate_is_checked_for_its_shape_before_any_signature() -> None:
    """A certified block whose certificate repeats one genuine commit vote 100,000 times cost as many
    verifications (5 s a message, refused, so sent again and again): a certificate of more entries
    than validators, a repeated or unknown index, is refused with no verification at all; a good one
    verifies its 2f+1 votes. (Found by a review.)"""
    victim = raw_replica(4, 0)
    calls = []
    verify = victim.s.verify
    victim.s.verify = lambda i, d, s: calls.append(i) or verify(i, d, s)
    b = make_block(1)
    vote = [IDS[1].sign(vote_digest(CHAIN, 0, 1, b.hash))]
    for cert in ([(1, vote[0])] * 100_000, [(1, vote[0]), (1, vote[0]), (2, vote[0])], [(1, vote[0]), (9, vote[0])]):
        assert not victim.cert_valid(Block(b.header, b.txs, tuple(cert), 0))
    assert calls == []
    good = tuple((i, IDS[i].sign(vote_digest(CHAIN, 0, 1, b.hash))) for i in (0, 1, 2))
    assert victim.cert_valid(Block(b.header, b.txs, good, 0)) and sorted(calls) == [0, 1, 2]


def test_a_view_change_carries_prepared_entries_only_within_a_window_above_what_it_delivered() -> None:
    """A prepared entry above vc.seq + window is refused: otherwise a view change could carry the
    chain's whole history of genuine certificates, every one verified (~98,000 in one message)."""
    r = make_replica(4, 1)
    b = make_block(2, prev=make_block(1).hash)  # prepared at 2 (block 1 still on its way)
    r.on_message(pre_prepare(b))
    for j in (2, 3):
        r.on_message(signed(Prepare, j, 0, 2, b.hash))
    (vc,) = [a.msg for a in r.start_view_change(1) if isinstance(a, Broadcast) and isinstance(a.msg, ViewChange)]
    verify = r.s.verify
    assert vc.seq == 0 and list(vcm.parse(vc, CHAIN, 4, verify, window=2).prepared) == [2]  # within (0, 2]
    with pytest.raises(ConsensusError, match="out of range"):
        vcm.parse(vc, CHAIN, 4, verify, window=1)
    with pytest.raises(ConsensusError, match="more than 0 prepared entries"):
        vcm.parse(vc, CHAIN, 4, verify, window=0)


def test_a_suspect_from_below_our_height_is_stale_and_a_delivery_clears_suspicion() -> None:
    """A SUSPECT carries the height its sender had delivered. A byzantine replica replaying an honest
    one's old SUSPECT (its timer ran out once, the view went on) beside its own made f+1 and forced a
    view change at a moment of its choosing (a review did so 1,200 blocks later). Counted now: only
    one from at or above our last progress, and only until the next delivery carrying work."""
    r = raw_replica(4, 0, last_delivered=5)
    stale, own = signed(Suspect, 2, 0, 2, bytes(32)), signed(Suspect, 3, 0, 5, bytes(32))
    r.on_message(stale)
    r.on_message(own)
    assert r.phase is Phase.NORMAL and r.ignored_by_reason().get("outside-window") == 1
    fresh = signed(Suspect, 2, 0, 5, bytes(32))
    assert sent(r.on_message(fresh), Suspect)  # f+1 = 2 stuck where we are: we join, and with us 2f+1
    assert r.phase is Phase.VIEW_CHANGE
    r2 = make_replica(4, 1)
    r2.on_message(signed(Suspect, 2, 0, 0, bytes(32)))
    a = make_block(1, txs=[b"work"])
    r2.on_message(pre_prepare(a))
    for j in (2, 3):
        r2.on_message(signed(Prepare, j, 0, 1, a.hash))
    for j in (0, 2):
        r2.on_message(signed(Commit, j, 0, 1, a.hash))
    assert r2.last_delivered == 1 and r2.s.suspects == {}  # delivered: the suspicion before it is gone
    r2.on_message(signed(Suspect, 3, 0, 1, bytes(32)))
    assert r2.phase is Phase.NORMAL  # one suspicion, not f+1
