"""The PBFT normal case (Castro & Liskov, section 4.2) as a sans-IO state machine.

Inputs are method calls (propose, on_message); outputs are actions for the driver: Broadcast a
message to the other replicas, Deliver a block with its commit certificate in sequence order.
Signing and verifying are injected pure functions, so the same core runs in seeded simulations
and over libp2p. With n = 1 every quorum is this replica alone: the single-validator node runs
exactly this code path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from node.block import Block, quorum
from node.consensus.messages import T_COMMIT, T_PREPARE, T_PREPREPARE, Commit, Prepare, PrePrepare, _Msg

Signer = Callable[[bytes], bytes]
Verifier = Callable[[int, bytes, bytes], bool]  # (validator index, digest, sig) -> ok
BlockCheck = Callable[[Block], bool]


@dataclass(frozen=True)
class Broadcast:
    msg: _Msg


@dataclass(frozen=True)
class Deliver:
    seq: int
    block: Block  # carries its 2f+1 commit certificate


Action = Broadcast | Deliver


@dataclass
class _Instance:
    digest: bytes | None = None
    block: Block | None = None
    prepares: dict[int, bytes] = field(default_factory=dict)
    commits: dict[int, bytes] = field(default_factory=dict)
    sent_commit: bool = False
    committed: bool = False


class Replica:
    def __init__(self, chain_id: str, n: int, index: int, sign: Signer, verify: Verifier,
                 check_block: BlockCheck | None = None, window: int = 64, last_delivered: int = 0,
                 view: int = 0) -> None:
        if not 0 <= index < n:
            raise ValueError("replica index out of range")
        self.chain_id, self.n, self.index = chain_id, n, index
        self.q = quorum(n)
        self._sign, self._verify = sign, verify
        self._check_block = check_block or (lambda b: True)
        self.window = window
        self.view = view
        self.low = last_delivered  # low watermark: everything at or below is delivered
        self.last_delivered = last_delivered
        self.next_seq = last_delivered + 1
        self.log: dict[int, _Instance] = {}
        self.ignored = 0  # messages dropped (bad signature, non-validator, outside window, conflicting)

    @property
    def primary(self) -> int:
        return self.view % self.n

    @property
    def is_primary(self) -> bool:
        return self.primary == self.index

    def in_flight(self) -> int:
        return self.next_seq - 1 - self.last_delivered

    def _make(self, cls: type, seq: int, digest: bytes, **kw: object) -> _Msg:
        tmp = cls(self.view, seq, digest, self.index, bytes(64), **kw)
        return cls(self.view, seq, digest, self.index, self._sign(tmp.signing_digest(self.chain_id)), **kw)

    def propose(self, block: Block) -> list[Action]:
        """Primary only: order a block at the next sequence number."""
        if not self.is_primary:
            raise RuntimeError("only the primary proposes")
        seq = self.next_seq
        if seq > self.low + self.window:
            raise RuntimeError("sequence window full")
        if block.header.seq != seq or block.header.view != self.view:
            raise ValueError("block header must carry the view and sequence it is proposed at")
        self.next_seq += 1
        pp = self._make(PrePrepare, seq, block.hash, block=block)
        return [Broadcast(pp), *self._on_preprepare(pp)]

    def on_message(self, msg: _Msg) -> list[Action]:
        if not 0 <= msg.sender < self.n or msg.sender == self.index:
            self.ignored += 1
            return []
        if not self._verify(msg.sender, msg.signing_digest(self.chain_id), msg.sig):
            self.ignored += 1
            return []
        if msg.view != self.view or not self.low < msg.seq <= self.low + self.window:
            self.ignored += 1
            return []
        if msg.tag == T_PREPREPARE:
            return self._on_preprepare(msg)
        if msg.tag == T_PREPARE:
            return self._on_vote(msg, prepare=True)
        if msg.tag == T_COMMIT:
            return self._on_vote(msg, prepare=False)
        self.ignored += 1
        return []

    def _on_preprepare(self, pp: PrePrepare) -> list[Action]:
        if pp.sender != self.primary or pp.block is None or pp.block.hash != pp.digest:
            self.ignored += 1
            return []
        h = pp.block.header
        if h.seq != pp.seq or h.view != pp.view or h.proposer != pp.sender:
            self.ignored += 1
            return []
        inst = self.log.setdefault(pp.seq, _Instance())
        if inst.digest is not None and inst.block is not None:
            if inst.digest != pp.digest:
                self.ignored += 1  # equivocation: a second block for one sequence number
            return []
        if not self._check_block(pp.block):
            self.ignored += 1
            return []
        if inst.digest is not None and inst.digest != pp.digest:
            # votes seen before the pre-prepare were for another block: drop them
            inst.prepares.clear()
            inst.commits.clear()
        inst.digest, inst.block = pp.digest, pp.block
        out: list[Action] = []
        if not self.is_primary:
            prep = self._make(Prepare, pp.seq, pp.digest)
            out.append(Broadcast(prep))
            inst.prepares[self.index] = prep.sig
        out += self._progress(pp.seq)
        return out

    def _on_vote(self, msg: _Msg, prepare: bool) -> list[Action]:
        inst = self.log.setdefault(msg.seq, _Instance())
        if inst.digest is None:
            inst.digest = msg.digest  # provisional until the pre-prepare arrives
        if msg.digest != inst.digest:
            self.ignored += 1
            return []
        votes = inst.prepares if prepare else inst.commits
        if prepare and msg.sender == self.primary:
            self.ignored += 1  # the primary's pre-prepare stands for its prepare
            return []
        votes.setdefault(msg.sender, msg.sig)
        return self._progress(msg.seq)

    def _prepared(self, inst: _Instance) -> bool:
        # pre-prepare plus 2f prepares from others (the primary's pre-prepare counts as its vote)
        return inst.block is not None and len(inst.prepares) + 1 >= self.q

    def _progress(self, seq: int) -> list[Action]:
        inst = self.log[seq]
        out: list[Action] = []
        if not inst.sent_commit and self._prepared(inst):
            inst.sent_commit = True
            c = self._make(Commit, seq, inst.digest)
            inst.commits[self.index] = c.sig
            out.append(Broadcast(c))
        if inst.sent_commit and not inst.committed and len(inst.commits) >= self.q:
            inst.committed = True
        out += self._deliver()
        return out

    def _deliver(self) -> list[Action]:
        out: list[Action] = []
        while True:
            inst = self.log.get(self.last_delivered + 1)
            if inst is None or not inst.committed:
                return out
            seq = self.last_delivered + 1
            cert = sorted(inst.commits.items())[: max(self.q, len(inst.commits))]
            out.append(Deliver(seq, inst.block.with_cert(cert)))
            self.last_delivered = seq
            self.low = seq  # no checkpoints yet: the window slides with delivery
            del self.log[seq]


__all__ = ["T_COMMIT", "Action", "Broadcast", "Deliver", "Replica"]
