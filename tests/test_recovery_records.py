"""The consensus-log record a replica writes before it sends (node/consensus/recovery.py): what a
restart rests on. A real record round-trips field by field; a torn or corrupt one is refused with
ConsensusError naming what is wrong, never taken half-read."""

from __future__ import annotations

import msgpack
import pytest

from node.consensus import ConsensusError, Persist, Prepare
from node.consensus.recovery import decode_record
from node.wire import encode
from tests.consensus_sim import make_block, make_replica, pre_prepare, signed


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
