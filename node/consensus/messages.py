"""Signed PBFT messages and their wire form: [tag, view, seq, digest, sender, sig, ...extra].

Each message is signed by its validator over SHA-256 of [domain, chain_id, view, seq, digest];
the commit domain is the block's vote digest, so 2f+1 commits form the block's certificate.
Messages with a body (view change, new view) sign digest = SHA-256(body), so the body is covered.
A prepare also carries the primary's pre-prepare signature it answers (unsigned by the preparer, but
self-verifying): two of those for one (view, seq) and different digests prove the primary equivocated.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.block import Block, BlockError, vote_digest
from node.crypto import ecdsa
from node.wire import MAX_BLOCK_BYTES, WireError, decode_canonical, encode

T_PREPREPARE, T_PREPARE, T_COMMIT, T_STATUS, T_BLOCK = 1, 2, 3, 4, 5
T_VIEWCHANGE, T_NEWVIEW, T_CHECKPOINT, T_SUSPECT = 6, 7, 8, 9
_DOMAIN = {T_PREPREPARE: "medchain/pre-prepare", T_PREPARE: "medchain/prepare", T_STATUS: "medchain/status",
           T_BLOCK: "medchain/certified-block", T_VIEWCHANGE: "medchain/view-change",
           T_NEWVIEW: "medchain/new-view", T_CHECKPOINT: "medchain/checkpoint", T_SUSPECT: "medchain/suspect"}
# a view change carries the sender's prepared blocks (at most a window of them) and a new view carries
# 2f+1 view changes without their blocks: both may exceed one block
MAX_MESSAGE_BYTES = 4 * MAX_BLOCK_BYTES + 64 * 1024
MAX_CARRIED_BLOCKS = 65536  # blocks a view change may carry (its window's prepared ones, at most)


class ConsensusError(ValueError):
    pass


def signed_digest(tag: int, chain_id: str, view: int, seq: int, digest: bytes) -> bytes:
    if tag == T_COMMIT:
        return vote_digest(chain_id, view, seq, digest)
    return ecdsa.sha256(encode([_DOMAIN[tag], chain_id, view, seq, digest]))


@dataclass(frozen=True)
class Message:
    view: int
    seq: int
    digest: bytes  # the block hash
    sender: int  # validator index
    sig: bytes

    tag = 0

    def signing_digest(self, chain_id: str) -> bytes:
        return signed_digest(self.tag, chain_id, self.view, self.seq, self.digest)

    def encode(self) -> bytes:
        return encode([self.tag, self.view, self.seq, self.digest, self.sender, self.sig])


@dataclass(frozen=True)
class Prepare(Message):
    pp_sig: bytes = bytes(64)  # the primary's pre-prepare signature this prepare answers
    tag = T_PREPARE

    def encode(self) -> bytes:
        return encode([self.tag, self.view, self.seq, self.digest, self.sender, self.sig, self.pp_sig])


@dataclass(frozen=True)
class Commit(Message):
    tag = T_COMMIT


@dataclass(frozen=True)
class Status(Message):
    """Heartbeat: seq = the sender's last delivered sequence, digest = that block's hash."""

    tag = T_STATUS


@dataclass(frozen=True)
class Checkpoint(Message):
    """seq = a multiple of the checkpoint interval, digest = the state root after that block."""

    tag = T_CHECKPOINT


@dataclass(frozen=True)
class Suspect(Message):
    """The sender's view timer for `view` ran out (sent again with each heartbeat while it lasts);
    seq, digest = its last delivered block. 2f+1 of them for a view make it change."""

    tag = T_SUSPECT


@dataclass(frozen=True)
class ViewChange(Message):
    """view = the view moved to, seq = the sender's last committed sequence, digest = H(body);
    body = [last_hash, cert_view, cert, prepared]; blocks = the prepared blocks (outside the signature,
    each must hash to a prepared digest). See node/consensus/viewchange.py."""

    body: bytes = b""
    blocks: tuple[bytes, ...] = ()
    tag = T_VIEWCHANGE

    def encode(self) -> bytes:
        return encode([self.tag, self.view, self.seq, self.digest, self.sender, self.sig, self.body,
                       list(self.blocks)])


@dataclass(frozen=True)
class NewView(Message):
    """From the new primary: body = [view change without blocks, ...] (2f+1 of them), digest = H(body)."""

    body: bytes = b""
    tag = T_NEWVIEW

    def encode(self) -> bytes:
        return encode([self.tag, self.view, self.seq, self.digest, self.sender, self.sig, self.body])


@dataclass(frozen=True)
class PrePrepare(Message):
    block: Block | None = None
    tag = T_PREPREPARE

    def encode(self) -> bytes:
        if self.block is None:
            raise ConsensusError("a pre-prepare is sent with its block")
        return encode([self.tag, self.view, self.seq, self.digest, self.sender, self.sig, self.block.encode()])


@dataclass(frozen=True)
class CertifiedBlock(PrePrepare):
    """A committed block with its 2f+1 certificate, sent to a replica that is behind."""

    tag = T_BLOCK


def decode_message(raw: bytes) -> Message:
    try:
        # its fields and, in a view change, one value per block it carries: the block and body are
        # bytes, decoded (with budgets of their own) only once the frame's shape holds
        m = decode_canonical(raw, MAX_MESSAGE_BYTES, 8 + MAX_CARRIED_BLOCKS)
    except WireError as exc:
        raise ConsensusError(f"consensus message: {exc}") from None
    if not isinstance(m, list) or len(m) < 6:
        raise ConsensusError("consensus message is [tag, view, seq, digest, sender, sig, ...]")
    tag, view, seq, digest, sender, sig = m[:6]
    if not all(type(x) is int and x >= 0 for x in (tag, view, seq, sender)):
        raise ConsensusError("bad integer field")
    if not (isinstance(digest, bytes) and len(digest) == 32 and isinstance(sig, bytes) and len(sig) == 64):
        raise ConsensusError("bad digest or signature length")
    if tag in (T_PREPREPARE, T_BLOCK):
        if len(m) != 7 or not isinstance(m[6], bytes):
            raise ConsensusError("pre-prepare and certified block carry the block")
        try:
            block = Block.decode(m[6])
        except BlockError as exc:
            raise ConsensusError(str(exc)) from None
        return (PrePrepare if tag == T_PREPREPARE else CertifiedBlock)(view, seq, digest, sender, sig, block)
    if tag == T_PREPARE:
        if len(m) != 7 or not (isinstance(m[6], bytes) and len(m[6]) == 64):
            raise ConsensusError("a prepare carries the 64-byte pre-prepare signature it answers")
        return Prepare(view, seq, digest, sender, sig, m[6])
    if tag in (T_VIEWCHANGE, T_NEWVIEW):
        want = 8 if tag == T_VIEWCHANGE else 7
        if len(m) != want or not isinstance(m[6], bytes):
            raise ConsensusError("view change is [..., body, blocks]; new view is [..., body]")
        if ecdsa.sha256(m[6]) != digest:
            raise ConsensusError("digest is not the hash of the body")
        if tag == T_NEWVIEW:
            return NewView(view, seq, digest, sender, sig, m[6])
        if not isinstance(m[7], list) or not all(isinstance(b, bytes) for b in m[7]):
            raise ConsensusError("view change blocks must be a list of byte strings")
        return ViewChange(view, seq, digest, sender, sig, m[6], tuple(m[7]))
    if len(m) != 6:
        raise ConsensusError("trailing fields")
    if tag == T_COMMIT:
        return Commit(view, seq, digest, sender, sig)
    if tag == T_STATUS:
        return Status(view, seq, digest, sender, sig)
    if tag == T_CHECKPOINT:
        return Checkpoint(view, seq, digest, sender, sig)
    if tag == T_SUSPECT:
        return Suspect(view, seq, digest, sender, sig)
    raise ConsensusError(f"unknown consensus message tag {tag}")
