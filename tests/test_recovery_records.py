"""The consensus-log record a replica writes before it sends (node/consensus/recovery.py): what a
restart rests on. A real record round-trips field by field; a torn or corrupt one is refused with
ConsensusError naming what is wrong, never taken half-read."""

from __future__ import annotations

import msgpack
import pytest

from node.block import Block, verify_cert
from node.consensus import (
    Broadcast,
    Commit,
    ConsensusError,
    NewView,
    Persist,
    Prepare,
    PrePrepare,
    Replica,
    Send,
    ViewChange,
    decode_message,
)
from node.consensus import viewchange as vcm
from node.consensus.messages import T_COMMIT, T_PREPREPARE, Message
from node.consensus.recovery import decode_record
from node.crypto import ecdsa
from node.wire import encode
from tests.consensus_sim import (
    CHAIN,
    HandNet,
    delivered,
    make_block,
    make_replica,
    pre_prepare,
    pubs,
    sent,
    signed,
)


def _prepared_record(txs: tuple[bytes, ...] = (b"A",)) -> tuple[bytes, object]:
    """The record a backup persists with its commit: its block, the tags it sent, the primary's
    pre-prepare signature and the prepared certificate."""
    r = make_replica(4, 1)
    a = make_block(1, txs=txs)
    r.on_message(pre_prepare(a))
    acts = r.on_message(signed(Prepare, 2, 0, 1, a.hash))
    (p,) = [x for x in acts if isinstance(x, Persist)]
    return p.record, r


def test_a_record_round_trips_field_by_field():
    raw, r = _prepared_record()
    rec = decode_record(raw)
    cert, block = r.state.prepared[1]
    inst = r.state.log[1]
    assert rec.view == 0 and rec.block.hash == block.hash and rec.pp_sig == inst.pp_sig
    assert rec.tags == tuple(sorted({m.tag for m in inst.mine})) and len(rec.tags) == 2  # prepare, commit
    assert rec.pcert is not None and rec.pcert[0] == cert and rec.pcert[1].hash == block.hash
    assert rec.pcert[0].prepares == cert.prepares and [i for i, _ in cert.prepares] == [1, 2]


def test_a_record_of_a_block_larger_than_a_transaction_limit_is_read_whole():
    raw, _ = _prepared_record(txs=tuple(bytes([k]) * 16_000 for k in range(4)))
    assert len(raw) > 2 * 64_000 and len(decode_record(raw).block.txs) == 4


def _fields(raw: bytes) -> list:
    return msgpack.unpackb(raw, raw=True)


SHAPE = "consensus log record: record is [view, block, tags, pp_sig, pcert]"
PCERT = "consensus log record: prepared certificate is [view, block, pp_sig, prepares]"


@pytest.mark.parametrize("break_it", [
    lambda f: f[:4],  # torn: a field short
    lambda f: [*f, 0],  # a field too many
    lambda f: [b"0", *f[1:]],  # the view not an int
    lambda f: [f[0], 7, *f[2:]],  # the block not bytes
    lambda f: [*f[:2], 7, *f[3:]],  # the tags not a list
    lambda f: [*f[:2], [b"x"], *f[3:]],  # a tag not an int
    lambda f: [*f[:3], 7, f[4]],  # the pre-prepare signature not bytes
    lambda f: [*f[:4], 7],  # the prepared certificate not a list
])
def test_a_record_of_the_wrong_shape_is_refused(break_it):
    raw, _ = _prepared_record()
    with pytest.raises(ConsensusError) as ei:
        decode_record(encode(break_it(_fields(raw))))
    assert str(ei.value) == SHAPE


@pytest.mark.parametrize("break_it", [
    lambda c: [b"0", *c[1:]],  # its view not an int
    lambda c: [*c[:2], 7, c[3]],  # the pre-prepare signature not bytes
    lambda c: [*c[:3], 7],  # the prepares not a list
    lambda c: [*c[:3], [[1]]],  # a prepare not [index, signature]
    lambda c: [*c[:3], [[b"1", b"s"]]],  # an index not an int
    lambda c: [*c[:3], [[1, 7]]],  # a signature not bytes
])
def test_a_prepared_certificate_of_the_wrong_shape_is_refused(break_it):
    raw, _ = _prepared_record()
    f = _fields(raw)
    with pytest.raises(ConsensusError) as ei:
        decode_record(encode([*f[:4], break_it(f[4])]))
    assert str(ei.value) == PCERT


def test_a_record_that_is_not_msgpack_or_holds_a_bad_block_is_refused():
    raw, _ = _prepared_record()
    with pytest.raises(ConsensusError, match="^consensus log record: "):
        decode_record(raw[:-3])  # torn mid-write
    f = _fields(raw)
    with pytest.raises(ConsensusError, match="^consensus log record: block"):
        decode_record(encode([f[0], b"\x93\x01\x02\x03", *f[2:]]))


def test_how_far_behind_counts_the_f_plus_first_highest_peer_or_a_stable_checkpoint():
    r = make_replica(7, 1)  # f = 2: the third-highest peer is what 2f+1 could have reached
    r.state.peer_delivered.update({0: 10, 2: 9, 3: 8, 4: 3, 5: 2, 6: 1})
    assert r.behind_by() == 8
    r.state.peer_stable = 12
    assert r.behind_by() == 12
    r2 = make_replica(4, 1, last_delivered=5, last_hash=bytes(32))
    r2.state.peer_delivered.update({0: 1, 2: 1, 3: 1})
    assert r2.behind_by() == 0  # everyone else is behind us


# ---- what a restart restores from the records (Recovery.record, restore_record, reinstall, resume_view_change) ----

def _backup_run(second: int = 2) -> tuple[Replica, Block, list[bytes], dict[type, Message]]:
    """Backup 1 in view 0 takes block A's pre-prepare, then a prepare from `second`: the replica, the
    block, its two records (written with its prepare, then with its commit) and what it broadcast."""
    r = make_replica(4, 1)
    a = make_block(1, txs=(b"A",))
    acts = r.on_message(pre_prepare(a)) + r.on_message(signed(Prepare, second, 0, 1, a.hash))
    records = [x.record for x in acts if isinstance(x, Persist)]
    return r, a, records, {type(x.msg): x.msg for x in acts if isinstance(x, Broadcast)}


def _resent(acts: list) -> list[bytes]:
    """The phase messages a tick sent (broadcast or to one replica), encoded, in order."""
    return [x.msg.encode() for x in acts if isinstance(x, Broadcast | Send) and x.msg.tag in (1, 2, 3)]


def test_a_record_is_of_the_instance_given_or_else_of_the_one_in_the_log():
    r, _, (_, raw), _ = _backup_run()
    assert r.record(1) == raw == r.record(1, r.state.log[1])
    # a primary whose block commits on votes that came before its pre-prepare (no honest validator sends
    # them, the replica keeps them all the same): the delivery pops the sequence from the log before the
    # pre-prepare's record is written, so it is written from the instance passed
    p = make_replica(4, 0)
    a = make_block(1, txs=(b"A",))
    for j in (1, 2):
        p.on_message(signed(Prepare, j, 0, 1, a.hash))
        p.on_message(signed(Commit, j, 0, 1, a.hash))
    acts = p.propose(a)
    assert [d.seq for d in delivered(acts)] == [1] and 1 not in p.state.log
    first = decode_record(next(x.record for x in acts if isinstance(x, Persist)))
    assert first.block.hash == a.hash and first.tags == (T_PREPREPARE, T_COMMIT)


def test_a_restored_record_binds_its_messages_again_byte_for_byte_and_the_commit_completes():
    _, a, (_, raw), mine = _backup_run()
    r = make_replica(4, 1)  # restarted: its clock at 0, like a test network's
    assert r.restore_record(1, decode_record(raw)) is True  # the driver re-executes the block
    inst = r.state.log[1]
    assert inst.block is not None and inst.block.hash == a.hash and inst.sent_commit is True
    assert inst.prepares == {1: mine[Prepare].sig} and inst.commits == {1: mine[Commit].sig}
    # the next tick sends them again, whatever the clock reads: the same bytes as before the crash
    assert _resent(r.tick(1)) == [mine[Prepare].encode(), mine[Commit].encode()]
    # the others' commits complete it: delivered under a certificate that holds our own commit
    acts = r.on_message(signed(Commit, 0, 0, 1, a.hash)) + r.on_message(signed(Commit, 2, 0, 1, a.hash))
    (d,) = delivered(acts)
    assert d.block.hash == a.hash and dict(d.block.cert)[1] == mine[Commit].sig
    assert verify_cert(d.block, pubs(4))


def test_a_record_written_before_the_replica_prepared_binds_only_its_prepare():
    _, a, (raw, raw_commit), mine = _backup_run()
    r = make_replica(4, 1)
    assert r.restore_record(1, decode_record(raw)) is True
    assert not r.state.log[1].sent_commit and r.state.log[1].commits == {} and 1 not in r.state.prepared
    assert _resent(r.tick(1)) == [mine[Prepare].encode()]
    # a second prepare makes it prepared: the certificate holds our restored prepare, and the commit and
    # its record are byte for byte those written before the crash
    acts = r.on_message(signed(Prepare, 2, 0, 1, a.hash))
    assert [x.record for x in acts if isinstance(x, Persist)] == [raw_commit]
    assert sent(acts, Commit) == [mine[Commit]]
    assert r.state.prepared[1][0].prepares == ((1, mine[Prepare].sig), (2, signed(Prepare, 2, 0, 1, a.hash).sig))


def test_a_restarted_primary_sends_its_pre_prepare_again_and_never_a_second_block_there():
    p = make_replica(4, 0)
    a = make_block(1, txs=(b"A",))
    acts = p.propose(a)
    (raw,) = [x.record for x in acts if isinstance(x, Persist)]
    (pp,) = sent(acts, PrePrepare)
    r = make_replica(4, 0)
    assert r.restore_record(1, decode_record(raw)) is True and r.next_seq == 2
    out = r.tick(1)
    assert [(x.to, x.msg) for x in out if isinstance(x, Send)] == [(j, pp) for j in (1, 2, 3)]
    assert _resent(out) == [pp.encode()] * 3  # the block only: a primary sends no prepare
    with pytest.raises(ValueError, match="^block header must carry"):
        r.propose(make_block(1, txs=(b"B",)))  # a second block at the sequence it pre-prepared
    assert sent(r.propose(make_block(2, txs=(b"C",), prev=a.hash)), PrePrepare)[0].seq == 2


def test_a_record_at_or_below_the_delivered_height_or_under_another_key_restores_nothing():
    _, a, (_, raw), _ = _backup_run()
    rec = decode_record(raw)
    # delivered before the crash, its record not yet dropped from the log
    r = make_replica(4, 1, last_delivered=1, last_hash=a.hash)
    assert r.restore_record(1, rec) is False and r.state.log == {} and r.state.prepared == {}
    r = make_replica(4, 1)
    assert r.restore_record(2, rec) is False and r.state.log == {} and r.state.prepared == {}


def test_a_prepared_certificate_of_fewer_than_2f_prepares_is_not_restored():
    _, _, (_, raw), _ = _backup_run()
    f = _fields(raw)
    short = decode_record(encode([*f[:4], [*f[4][:3], f[4][3][:1]]]))
    assert short.pcert is not None and len(short.pcert[0].prepares) == 1
    r = make_replica(4, 1)
    assert r.restore_record(1, short) is True and r.state.prepared == {}  # the signed messages still bind


def test_a_certificate_of_the_same_view_does_not_replace_the_one_held():
    ra, _, (_, raw_a), _ = _backup_run(2)
    rb, _, (_, raw_b), _ = _backup_run(3)
    held, other = ra.state.prepared[1][0], rb.state.prepared[1][0]
    assert held.view == other.view == 0 and held.prepares != other.prepares
    r = make_replica(4, 1)
    for raw in (raw_a, raw_b):
        r.restore_record(1, decode_record(raw))
    assert r.state.prepared[1][0] == held


@pytest.fixture(scope="module")
def two_views() -> dict[str, bytes]:
    """Block A prepared everywhere in view 0 (commits lost); view 1 installed (its primary re-proposes A,
    prepared again, commits lost); then view 2. Replica 2's records of A in views 0 and 1, and the
    NEW-VIEWs of views 1 and 2, as the replicas persisted them."""
    net = HandNet(4)
    n = net.nodes
    n[0].handle(n[0].r.propose(make_block(1, txs=(b"A",))), net)
    net.deliver(lambda s, d, m: m.tag in (1, 2))
    net.drop(lambda s, d, m: m.tag == 3)
    out = {"rec0": n[2].disk_log[1]}
    for i in range(4):
        n[i].handle(n[i].r.start_view_change(1), net)
    net.deliver(lambda s, d, m: m.tag in (6, 7))
    assert n[2].disk_view == 1 and n[2].disk_log[1] == out["rec0"]
    out["nv1"] = n[2].disk_nv
    net.deliver(lambda s, d, m: m.tag in (1, 2))
    net.drop(lambda s, d, m: m.tag == 3)
    out["rec1"] = n[2].disk_log[1]
    for i in range(4):
        n[i].handle(n[i].r.start_view_change(2), net)
    net.deliver(lambda s, d, m: m.tag in (6, 7))
    out["nv2"] = n[2].disk_nv
    assert [decode_record(out[k]).pcert[0].view for k in ("rec0", "rec1")] == [0, 1]
    return out


def _in_view_1(two_views: dict[str, bytes]) -> Replica:
    """Replica 2 restarted after view 1 was installed: its NEW-VIEW reinstalled."""
    r = make_replica(4, 2, view=1, awaiting_new_view=True)
    assert r.reinstall(decode_message(two_views["nv1"])) is True
    assert r.view == 1 and not r.changing and r.view_changes == 0
    return r


def test_a_record_of_an_earlier_view_binds_nothing_but_its_certificate_counts(two_views):
    r = _in_view_1(two_views)
    assert r.restore_record(1, decode_record(two_views["rec0"])) is False
    assert r.state.prepared[1][0].view == 0
    assert 1 not in r.state.log and _resent(r.tick(1)) == []  # nothing signed in view 1 for it


def test_the_highest_view_certificate_is_held_whatever_order_the_records_come_in(two_views):
    for order in (("rec0", "rec1"), ("rec1", "rec0")):
        r = _in_view_1(two_views)
        for k in order:
            assert r.restore_record(1, decode_record(two_views[k])) is (k == "rec1")
        assert r.state.prepared[1][0] == decode_record(two_views["rec1"]).pcert[0]


def test_only_the_new_view_of_the_replicas_view_is_reinstalled(two_views):
    nv1, nv2 = decode_message(two_views["nv1"]), decode_message(two_views["nv2"])
    r = make_replica(4, 2, view=1, awaiting_new_view=True)
    assert r.reinstall(nv2) is False and r.view == 1 and r.changing  # a later view's
    r = make_replica(4, 2, view=1)  # in view 1 already (a block of it on the ledger): its obligations come back
    assert r.reinstall(nv2) is False and r.view == 1 and not r.changing
    assert r.reinstall(signed(NewView, 3, 1, 0, nv1.digest, body=nv1.body)) is False and not r.changing  # stays NORMAL
    assert r.reinstall(nv1) is True and r.view_changes == 0 and not r.changing and r.state.new_view_msg == nv1
    # one that does not hold: not from the view's primary, or fewer than 2f+1 view changes
    r = make_replica(4, 2, view=1, awaiting_new_view=True)
    assert r.reinstall(signed(NewView, 3, 1, 0, nv1.digest, body=nv1.body)) is False and r.changing
    body = encode(_fields(nv1.body)[:2])
    assert r.reinstall(signed(NewView, 1, 1, 0, vcm.body_hash(body), body=body)) is False and r.changing
    assert r.reinstall(nv1) is True and not r.changing


def test_a_replica_restarted_in_a_view_change_sends_its_view_change_on_the_next_tick(two_views):
    r = make_replica(4, 2, view=1, awaiting_new_view=True)  # persisted view 1, not yet its NEW-VIEW
    assert r.restore_record(1, decode_record(two_views["rec0"])) is False
    r.resume_view_change()
    (vc,) = sent(r.tick(1), ViewChange)
    info = vcm.parse(vc, CHAIN, 4, lambda i, d, s: ecdsa.verify(pubs(4)[i], d, s))
    assert vc.view == 1 and info.prepared[1] == decode_record(two_views["rec0"]).pcert[0]


def test_resuming_leaves_a_view_change_under_way_as_it_is():
    r = make_replica(4, 2)
    r.start_view_change(1)  # at clock 0: its VIEW-CHANGE has just gone out
    vc = r.state.own_vc
    r.resume_view_change()
    assert r.state.own_vc is vc and sent(r.tick(1), ViewChange) == []  # not rebuilt, not sent again early


def test_a_primary_whose_last_record_was_its_commit_is_still_bound_by_its_pre_prepare():
    """A primary that commits at once on 2f prepares that came before its own pre-prepare (votes no
    honest validator sends first) made that commit's record before the pre-prepare joined its
    messages; the driver writes records in order, so the last one must hold both, or the primary,
    restored from it, would sign a second block at the sequence (found by mutation testing)."""
    p = make_replica(4, 0)
    a = make_block(1, txs=(b"A",))
    for j in (1, 2):  # votes no honest validator sends before the block is proposed
        p.on_message(signed(Prepare, j, 0, 1, a.hash))
    acts = p.propose(a)
    assert sent(acts, PrePrepare) and sent(acts, Commit)
    persisted = [x for x in acts if isinstance(x, Persist)]
    last = persisted[-1].record  # the driver writes them in order
    rec = decode_record(last)
    assert persisted[-1].seq == 1 and set(rec.tags) == {T_PREPREPARE, T_COMMIT}
    assert rec.pcert is not None and rec.pcert[0].seq == 1 and rec.pcert[1] == a  # the certificate it committed on
    r = make_replica(4, 0)
    assert r.restore_record(1, rec) is True
    with pytest.raises(ValueError):
        r.propose(make_block(1, txs=(b"B",)))  # it signed B's pre-prepare at (view 0, seq 1) before the fix
