"""Every frame a peer, a client or a validator's answer can send is decoded within a budget of values
its kind needs (node/wire/codec.py `max_values`): a frame of one-byte values (empty arrays, small
ints) within the byte limit is refused before millions of Python objects are built. A review sent
one 32 MiB consensus frame of empty arrays: 20 s of CPU and 2.3 GB on the event loop, unsigned,
and a 4-validator devnet committed 6 blocks in 50 s under one such frame every 8 s per validator.
Honest frames at their kind's limits still decode."""

from __future__ import annotations

import os

import pytest

from node.block import Block, BlockError, Header
from node.checkpoint import MAX_CHUNK_KEYS, CheckpointError, decode_chunk, encode_chunk
from node.consensus import ConsensusError, decode_message
from node.consensus.messages import MAX_MESSAGE_BYTES
from node.proof import ProofError, check_bundle
from node.sidecar import MAX_FORWARD_ITEMS, SidecarError, decode_forwarded, decode_submission, forward_messages
from node.sync import MAX_BLOCKS, SyncError, decode_response
from node.wire import WireError, decode, encode


def _array_of_empty_arrays(n: int) -> bytes:
    return b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n


def _frame(head: bytes, size: int) -> bytes:
    """`head` (an array header and its first fields), then one last field: an array of empty arrays
    filling `size` bytes."""
    return head + _array_of_empty_arrays(size - len(head) - 5)


SIG, DIGEST = b"\xc4\x40" + bytes(64), b"\xc4\x20" + bytes(32)


@pytest.mark.parametrize("what, decode, error, raw", [
    ("a view change carrying 33 M 'blocks'", decode_message, ConsensusError,
     _frame(bytes([0x98, 6, 0, 0]) + DIGEST + b"\x00" + SIG + b"\xc4\x00", MAX_MESSAGE_BYTES - 64)),
    ("a pre-prepare's trailing field", decode_message, ConsensusError,
     _frame(bytes([0x98, 1, 0, 0]) + DIGEST + b"\x00" + SIG + b"\xc4\x00", 8 << 20)),
    ("a block's transaction list", Block.decode, BlockError, _frame(b"\x94\xc4\x00", 8 << 20)),
    ("a forwarded batch's item", decode_forwarded, (SidecarError, WireError),
     _frame(bytes([0x92, 16, 0x91]), 16 << 20)),
    ("a sync response", decode_response, SyncError, _array_of_empty_arrays(2 << 20)),
    ("a state chunk", decode_chunk, CheckpointError, _array_of_empty_arrays(1 << 20)),
])
def test_a_frame_of_one_byte_values_is_refused_by_its_budget(what, decode, error, raw) -> None:
    with pytest.raises(error, match=r"more than \d+ values"):
        decode(raw)


@pytest.mark.parametrize("lead", [b"\x80", b"\xcb" + bytes(8), b"\xd4\x01\x00"], ids=["map", "float", "ext"])
def test_a_type_the_wire_refuses_does_not_open_a_way_around_the_budget(lead) -> None:
    """The native decoder leaves a refused type (map, float, ext) to the reference, whose budget walk
    stopped counting there: msgpack then built the whole frame (an empty map before 4 M empty arrays
    cost 1.2 s and 320 MiB; a review). The walk refuses the type itself now."""
    frame = b"\x92" + lead + _array_of_empty_arrays(4_000_000)
    with pytest.raises(WireError, match="a type the wire does not allow"):
        decode(frame, 32 << 20, 1000)
    with pytest.raises(ConsensusError, match="a type the wire does not allow"):
        decode_message(b"\x98\x06\x00\x00" + DIGEST + b"\x00" + SIG + lead + _array_of_empty_arrays(4_000_000))


def test_a_proof_bundle_of_one_byte_values_is_refused_by_its_budget() -> None:
    """The client side: a lying validator's answer to POST /v1/proofs."""
    with pytest.raises(ProofError, match=r"more than \d+ values"):
        check_bundle(_frame(b"\x94\xc4\x00\x90\x00", 16 << 20), [b"k"], "c", [bytes(33)], 0)


def test_a_submission_of_one_byte_values_is_not_decoded_as_one() -> None:
    raw = _frame(b"\x92\xc4\x01\x92", 1 << 20)  # [tx bytes, [[], [], ...]]: not [tx, sidecar]
    assert decode_submission(raw, 2 << 20) == (raw, None)  # the transaction decoder then refuses it


def test_honest_frames_at_their_limits_decode() -> None:
    tx, side = os.urandom(200), os.urandom(100)
    batch = forward_messages([(tx, side)] * MAX_FORWARD_ITEMS, 64 << 20)
    assert len(batch) == 1 and len(decode_forwarded(batch[0])) == MAX_FORWARD_ITEMS
    pairs = [(b"k%06d" % i, b"") for i in range(MAX_CHUNK_KEYS)]  # the smallest values there are
    assert decode_chunk(encode_chunk(pairs)) == pairs
    h = Header("c", 1, bytes(32), 0, 1, 1, bytes(32), bytes(32), 0)
    block = Block(h, tuple(os.urandom(100) for _ in range(20_000)), tuple((i, os.urandom(64)) for i in range(100)), 0)
    assert Block.decode(block.encode()).txs == block.txs
    small = Block(h, tuple(os.urandom(100) for _ in range(100)), block.cert, 0)
    assert len(decode_response(encode([small.encode()] * MAX_BLOCKS))) == MAX_BLOCKS
