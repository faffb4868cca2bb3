"""The PBFT normal case (Castro & Liskov, section 4.2) as a sans-IO state machine.

Inputs are method calls (propose, on_message, tick); outputs are actions for the driver:
Broadcast a message, Send one to a single replica, Catchup (send certified blocks a peer lacks),
and Deliver a block with its commit certificate, strictly in sequence order. Signing and verifying
are injected pure functions and time arrives only through tick(), so the same core runs in seeded
simulations and over libp2p. With n = 1 every quorum is this replica alone: the single-validator
node runs exactly this code path.

Loss tolerance: pubsub may drop silently, so every tick re-sends this replica's own messages for
instances not yet delivered, and replicas exchange signed Status heartbeats; a replica that is
behind receives the committed blocks with their certificates (it checks 2f+1 signatures).
View change and checkpoints are not here yet: a silent primary stalls the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from node.block import Block, quorum, vote_digest
from node.consensus.messages import (
    T_BLOCK,
    T_COMMIT,
    T_PREPARE,
    T_PREPREPARE,
    T_STATUS,
    CertifiedBlock,
    Commit,
    Prepare,
    PrePrepare,
    Status,
    _Msg,
)

Signer = Callable[[bytes], bytes]
Verifier = Callable[[int, bytes, bytes], bool]  # (validator index, digest, sig) -> ok
BlockCheck = Callable[[Block], bool]


@dataclass(frozen=True)
class Broadcast:
    msg: _Msg


@dataclass(frozen=True)
class Send:
    to: int
    msg: _Msg


@dataclass(frozen=True)
class Catchup:
    """Send replica `to` the committed blocks first..last (the driver reads them from the ledger)."""

    to: int
    first: int
    last: int


@dataclass(frozen=True)
class Deliver:
    seq: int
    block: Block  # carries its 2f+1 commit certificate
    certified: bool = False  # True when it arrived as a certified block rather than through our own votes


Action = Broadcast | Send | Catchup | Deliver


@dataclass
class _Instance:
    digest: bytes | None = None
    block: Block | None = None
    prepares: dict[int, bytes] = field(default_factory=dict)
    commits: dict[int, bytes] = field(default_factory=dict)
    sent_commit: bool = False
    committed: bool = False
    early: dict[tuple[bool, bytes], dict[int, bytes]] = field(default_factory=dict)  # votes before the pre-prepare
    mine: list[_Msg] = field(default_factory=list)  # what this replica sent, for retransmission
    sent_at: int = 0
    backoff: int = 0  # ms until the next retransmission; doubles each time, so slow rounds are not flooded


class Replica:
    def __init__(self, chain_id: str, n: int, index: int, sign: Signer, verify: Verifier,
                 check_block: BlockCheck | None = None, window: int = 64, last_delivered: int = 0,
                 view: int = 0, last_hash: bytes = bytes(32), retransmit_ms: int = 250,
                 status_ms: int = 500, catchup_batch: int = 32) -> None:
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
        self.last_hash = last_hash
        self.next_seq = last_delivered + 1
        self.log: dict[int, _Instance] = {}
        self.certified: dict[int, Block] = {}  # certified blocks that arrived ahead of their turn
        self.peer_delivered: dict[int, int] = {}
        self._catchup_sent: dict[int, int] = {}
        self.retransmit_ms, self.status_ms, self.catchup_batch = retransmit_ms, status_ms, catchup_batch
        self.now_ms = 0
        self._last_status = -(10**12)
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

    def _send_mine(self, inst: _Instance, msg: _Msg) -> Broadcast:
        inst.mine.append(msg)
        inst.sent_at = self.now_ms
        inst.backoff = self.retransmit_ms
        return Broadcast(msg)

    # ---- inputs ------------------------------------------------------------------------------------
    def propose(self, block: Block) -> list[Action]:
        """Primary only: order a block at the next sequence number."""
        if not self.is_primary:
            raise RuntimeError("only the primary proposes")
        seq = self.next_seq
        if seq > self.low + self.window:
            raise RuntimeError("sequence window full")
        h = block.header
        if h.seq != seq or h.view != self.view or h.height != seq:
            raise ValueError("block header must carry the view and sequence (= height) it is proposed at")
        self.next_seq += 1
        pp = self._make(PrePrepare, seq, block.hash, block=block)
        inst = self.log.setdefault(seq, _Instance())
        out: list[Action] = [self._send_mine(inst, pp)]
        return out + self._on_preprepare(pp)

    def tick(self, now_ms: int) -> list[Action]:
        """Time passes: heartbeat our progress, re-send our messages of instances still open."""
        self.now_ms = now_ms
        out: list[Action] = []
        if self.n == 1:
            return out
        if now_ms - self._last_status >= self.status_ms:
            self._last_status = now_ms
            out.append(Broadcast(self._make(Status, self.last_delivered, self.last_hash)))
        for inst in self.log.values():
            if inst.mine and not inst.committed and now_ms - inst.sent_at >= inst.backoff:
                inst.sent_at = now_ms
                inst.backoff = min(2 * max(inst.backoff, self.retransmit_ms), 16 * self.retransmit_ms)
                for m in inst.mine:
                    if m.tag == T_PREPREPARE:
                        # the block is large: only to replicas that have not shown (by a vote) they hold it
                        out += [Send(j, m) for j in range(self.n)
                                if j != self.index and j not in inst.prepares and j not in inst.commits]
                    else:
                        out.append(Broadcast(m))
        return out

    def on_message(self, msg: _Msg) -> list[Action]:
        if not 0 <= msg.sender < self.n or msg.sender == self.index:
            self.ignored += 1
            return []
        ordered = msg.tag in (T_PREPREPARE, T_PREPARE, T_COMMIT)
        # cheap checks before the signature, so out-of-window floods cost little CPU
        if ordered and (msg.view != self.view or not self.low < msg.seq <= self.low + self.window):
            self.ignored += 1
            return []
        if not self._verify(msg.sender, msg.signing_digest(self.chain_id), msg.sig):
            self.ignored += 1
            return []
        if msg.tag == T_STATUS:
            return self._on_status(msg)
        if msg.tag == T_BLOCK:
            return self._on_certified(msg)
        if msg.tag == T_PREPREPARE:
            return self._on_preprepare(msg)
        if msg.tag == T_PREPARE:
            return self._on_vote(msg, prepare=True)
        if msg.tag == T_COMMIT:
            return self._on_vote(msg, prepare=False)
        self.ignored += 1
        return []

    # ---- the three phases -----------------------------------------------------------------------------
    def _on_preprepare(self, pp: PrePrepare) -> list[Action]:
        if pp.sender != self.primary or pp.block is None or pp.block.hash != pp.digest:
            self.ignored += 1
            return []
        h = pp.block.header
        if h.seq != pp.seq or h.view != pp.view or h.proposer != pp.sender or h.height != pp.seq:
            self.ignored += 1
            return []
        inst = self.log.setdefault(pp.seq, _Instance())
        if inst.block is not None:
            if inst.digest != pp.digest:
                self.ignored += 1  # equivocation: a second block for one sequence number
            return []
        if not self._check_block(pp.block):
            self.ignored += 1
            return []
        inst.digest, inst.block = pp.digest, pp.block
        # adopt the votes that arrived early for this block; those for any other digest are dropped
        inst.prepares.update(inst.early.get((True, pp.digest), {}))
        inst.commits.update(inst.early.get((False, pp.digest), {}))
        inst.early.clear()
        out: list[Action] = []
        if not self.is_primary:
            prep = self._make(Prepare, pp.seq, pp.digest)
            out.append(self._send_mine(inst, prep))
            inst.prepares[self.index] = prep.sig
        out += self._progress(pp.seq)
        return out

    def _on_vote(self, msg: _Msg, prepare: bool) -> list[Action]:
        inst = self.log.setdefault(msg.seq, _Instance())
        if prepare and msg.sender == self.primary:
            self.ignored += 1  # the primary's pre-prepare stands for its prepare
            return []
        if inst.block is None:
            # before the pre-prepare: keep votes per digest, so a bogus early vote cannot shadow honest ones
            early = inst.early.setdefault((prepare, msg.digest), {})
            if len(inst.early) > 2 * self.n:
                self.ignored += 1
                return []
            early.setdefault(msg.sender, msg.sig)
            return []
        if msg.digest != inst.digest:
            self.ignored += 1
            return []
        votes = inst.prepares if prepare else inst.commits
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
            out.append(self._send_mine(inst, c))
        if inst.sent_commit and not inst.committed and len(inst.commits) >= self.q:
            inst.committed = True
        out += self._deliver()
        return out

    # ---- delivery and catch-up ------------------------------------------------------------------------
    def _deliver(self) -> list[Action]:
        out: list[Action] = []
        while True:
            seq = self.last_delivered + 1
            inst = self.log.get(seq)
            if inst is not None and inst.committed:
                out.append(Deliver(seq, inst.block.with_cert(sorted(inst.commits.items()))))
            elif seq in self.certified:
                out.append(Deliver(seq, self.certified[seq], certified=True))
            else:
                return out
            self._advance(seq, out[-1].block.hash)

    def _advance(self, seq: int, block_hash: bytes) -> None:
        self.last_delivered = seq
        self.last_hash = block_hash
        self.low = seq  # no checkpoints yet: the window slides with delivery
        self.log.pop(seq, None)
        self.certified.pop(seq, None)
        self.next_seq = max(self.next_seq, seq + 1)

    def cert_valid(self, block: Block) -> bool:
        h = block.header
        digest = vote_digest(self.chain_id, h.view, h.seq, block.hash)
        signers = {i for i, s in block.cert if 0 <= i < self.n and self._verify(i, digest, s)}
        return len(signers) >= self.q and len(signers) == len(block.cert)

    def _on_certified(self, msg: CertifiedBlock) -> list[Action]:
        b = msg.block
        if b is None or b.hash != msg.digest or b.header.seq != msg.seq or b.header.height != msg.seq:
            self.ignored += 1
            return []
        if msg.seq <= self.last_delivered or msg.seq in self.certified:
            return []
        if msg.seq > self.last_delivered + 4 * self.window or not self.cert_valid(b):
            self.ignored += 1
            return []
        self.certified[msg.seq] = b
        return self._deliver()

    def _on_status(self, msg: Status) -> list[Action]:
        j, theirs = msg.sender, msg.seq
        before = self.peer_delivered.get(j)
        self.peer_delivered[j] = max(before or 0, theirs)
        if theirs >= self.last_delivered or before is None or theirs > before:
            return []  # level, or still progressing on its own: certified blocks would only duplicate work
        # a peer is behind: send it certified blocks, at most one batch per status round per peer
        sent = self._catchup_sent.get(j)
        if sent is not None and self.now_ms - sent < self.status_ms:
            return []
        self._catchup_sent[j] = self.now_ms
        return [Catchup(j, theirs + 1, min(self.last_delivered, theirs + self.catchup_batch))]

    # ---- crash recovery ----------------------------------------------------------------------------------
    def signed_record(self, seq: int) -> tuple[int, Block, list[int]] | None:
        """What this replica has signed for `seq` (view, block, message tags): the driver persists it
        before the message leaves, so a restarted replica never signs anything that conflicts."""
        inst = self.log.get(seq)
        if inst is None or inst.block is None:
            return None
        return self.view, inst.block, sorted({m.tag for m in inst.mine})

    def restore(self, seq: int, view: int, block: Block, tags: list[int]) -> None:
        """Reload a persisted record after a restart; the next tick re-sends the messages (RFC 6979
        signatures are deterministic, so they are byte for byte what was sent before)."""
        if view != self.view or seq <= self.last_delivered or block.header.seq != seq:
            return
        inst = self.log.setdefault(seq, _Instance())
        inst.digest, inst.block = block.hash, block
        if T_PREPREPARE in tags and self.is_primary:
            inst.mine.append(self._make(PrePrepare, seq, block.hash, block=block))
            self.next_seq = max(self.next_seq, seq + 1)
        if T_PREPARE in tags:
            prep = self._make(Prepare, seq, block.hash)
            inst.prepares[self.index] = prep.sig
            inst.mine.append(prep)
        if T_COMMIT in tags:
            c = self._make(Commit, seq, block.hash)
            inst.sent_commit = True
            inst.commits[self.index] = c.sig
            inst.mine.append(c)
        inst.sent_at = -(10**12)
        inst.backoff = self.retransmit_ms

    def certified_message(self, block: Block) -> CertifiedBlock:
        """Wrap a committed block (with its certificate) for sending to a replica that is behind."""
        return self._make(CertifiedBlock, block.header.seq, block.hash, block=block)


__all__ = ["T_COMMIT", "Action", "Broadcast", "Catchup", "Deliver", "Replica", "Send"]
