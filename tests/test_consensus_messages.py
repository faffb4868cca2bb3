"""PBFT messages on the wire (node/consensus/messages.py): what each signature covers, every message
type's round trip, and each malformed form refused for its own reason."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from node.block import vote_digest
from node.consensus import messages as m
from node.consensus.messages import ConsensusError, decode_message
from tests.consensus_sim import CHAIN, make_block

D, SIG = bytes(range(32)), bytes(range(64))
DOMAINS = {m.T_PREPREPARE: "medchain/pre-prepare", m.T_PREPARE: "medchain/prepare", m.T_STATUS: "medchain/status",
           m.T_BLOCK: "medchain/certified-block", m.T_VIEWCHANGE: "medchain/view-change",
           m.T_NEWVIEW: "medchain/new-view", m.T_CHECKPOINT: "medchain/checkpoint"}


def enc(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_tags_and_signed_digests_are_the_documented_ones() -> None:
    assert (m.T_PREPREPARE, m.T_PREPARE, m.T_COMMIT, m.T_STATUS, m.T_BLOCK, m.T_VIEWCHANGE, m.T_NEWVIEW,
            m.T_CHECKPOINT) == (1, 2, 3, 4, 5, 6, 7, 8)
    for tag, domain in DOMAINS.items():
        assert m.signed_digest(tag, CHAIN, 3, 9, D) == hashlib.sha256(enc([domain, CHAIN, 3, 9, D])).digest()
    # a commit signs the block's vote digest, so 2f+1 commits are the block's certificate
    assert m.signed_digest(m.T_COMMIT, CHAIN, 3, 9, D) == vote_digest(CHAIN, 3, 9, D)
    assert m.Commit(3, 9, D, 1, SIG).signing_digest(CHAIN) == vote_digest(CHAIN, 3, 9, D)
    assert m.Prepare(3, 9, D, 1, SIG).signing_digest(CHAIN) == m.signed_digest(m.T_PREPARE, CHAIN, 3, 9, D)


def _all_messages() -> list:
    block = make_block(1)
    body = enc([b"x"])
    bd = hashlib.sha256(body).digest()
    return [m.PrePrepare(0, 1, block.hash, 0, SIG, block), m.CertifiedBlock(0, 1, block.hash, 2, SIG, block),
            m.Prepare(0, 1, D, 1, SIG, bytes(range(1, 65))), m.Commit(0, 1, D, 2, SIG), m.Status(0, 1, D, 3, SIG),
            m.Checkpoint(0, 1, D, 3, SIG), m.Suspect(2, 1, D, 4, SIG), m.ViewChange(1, 0, bd, 2, SIG, body, (b"b1", b"b2")),
            m.ViewChange(1, 0, bd, 2, SIG, body, ()), m.NewView(1, 0, bd, 1, SIG, body)]


@pytest.mark.parametrize("msg", _all_messages(), ids=lambda x: type(x).__name__)
def test_every_message_type_round_trips_exactly(msg) -> None:
    raw = msg.encode()
    back = decode_message(raw)
    assert type(back) is type(msg) and back == msg and back.encode() == raw
    assert msgpack.unpackb(raw)[0] == msg.tag


def _head(tag: int, *extra: object, view: object = 0, seq: object = 1, digest: object = D, sender: object = 0,
          sig: object = SIG) -> bytes:
    return enc([tag, view, seq, digest, sender, sig, *extra])


BODY = enc([b"x"])
BD = hashlib.sha256(BODY).digest()
BAD = [
    (b"\xc1", "^consensus message: "),
    (enc({"a": 1}), "^consensus message: a type the wire does not allow"),  # maps are not on the wire at all
    (enc(b"x" * 40), r"^consensus message is \[tag, view, seq, digest, sender, sig, \.\.\.\]$"),
    (enc([2, 0, 1, D, 0]), r"^consensus message is \[tag"),
    (_head(3, view=-1), "^bad integer field$"),
    (_head(3, seq=True), "^bad integer field$"),
    (_head(-1), "^bad integer field$"),
    (_head(3, sender="0"), "^bad integer field$"),
    (_head(3, digest=D[:31]), "^bad digest or signature length$"),
    (_head(3, digest="x" * 32), "^bad digest or signature length$"),
    (_head(3, sig=SIG[:63]), "^bad digest or signature length$"),
    (_head(3, sig="s" * 64), "^bad digest or signature length$"),
    (_head(1), "^pre-prepare and certified block carry the block$"),
    (_head(5, "block"), "^pre-prepare and certified block carry the block$"),
    (_head(1, b"x", b"y"), "^pre-prepare and certified block carry the block$"),
    (_head(1, b"not a block"), "^block encoding: "),  # the block's own reason, not a wrapper's
    (_head(2), "^a prepare carries the 64-byte pre-prepare signature it answers$"),
    (_head(2, SIG[:63]), "^a prepare carries the 64-byte"),
    (_head(2, "s" * 64), "^a prepare carries the 64-byte"),
    (_head(2, SIG, b""), "^a prepare carries the 64-byte"),
    (_head(6, BODY, digest=BD), r"^view change is \[\.\.\., body, blocks\]; new view is \[\.\.\., body\]$"),
    (_head(7, BODY, [], digest=BD), r"^view change is \[\.\.\., body, blocks\]"),
    (_head(7, "body", digest=BD), r"^view change is \[\.\.\., body, blocks\]"),
    (_head(6, BODY, [], digest=D), "^digest is not the hash of the body$"),
    (_head(7, BODY, digest=D), "^digest is not the hash of the body$"),
    (_head(6, BODY, b"blocks", digest=BD), "^view change blocks must be a list of byte strings$"),
    (_head(6, BODY, [b"ok", "no"], digest=BD), "^view change blocks must be a list of byte strings$"),
    (_head(3, b""), "^trailing fields$"),
    (_head(4, b""), "^trailing fields$"),
    (_head(9, b""), "^trailing fields$"),
    (_head(10), "^unknown consensus message tag 10$"),
    (_head(0), "^unknown consensus message tag 0$"),
]


@pytest.mark.parametrize("raw,why", BAD)
def test_malformed_messages_are_refused_for_their_own_reason(raw: bytes, why: str) -> None:
    with pytest.raises(ConsensusError, match=why):
        decode_message(raw)


def test_a_message_over_the_size_limit_is_refused() -> None:
    big = enc([m.T_NEWVIEW, 0, 0, D, 0, SIG, bytes(m.MAX_MESSAGE_BYTES)])
    with pytest.raises(ConsensusError, match="^consensus message: "):
        decode_message(big)
    assert m.MAX_MESSAGE_BYTES == 4 * m.MAX_BLOCK_BYTES + 64 * 1024
