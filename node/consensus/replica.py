"""PBFT (Castro & Liskov) as a sans-IO state machine: normal case, checkpoints, view change.

Inputs are method calls (propose, on_message, tick); outputs are actions for the driver:
Broadcast a message, Send one to a single replica, Catchup (send certified blocks a peer lacks),
Deliver a block with its commit certificate (strictly in sequence order), and ViewChanged (persist
the view before anything of the new view leaves). Signing and verifying are injected pure functions
and time arrives only through tick(), so the same core runs in seeded simulations and over libp2p.
With n = 1 every quorum is this replica alone: the single-validator node runs this code path.

- Loss tolerance: every tick re-sends this replica's own messages of open instances (with backoff);
  signed Status heartbeats let a replica that is behind receive certified blocks.
- Chained commits: a replica sends COMMIT for sequence s only once s-1 is delivered here and is the
  block's parent. Blocks are hash-chained, so this is what lets a view change carry over exactly the
  blocks that may have committed (node/consensus/viewchange.py).
- Checkpoints every `checkpoint_interval` blocks: 2f+1 matching state roots make it stable; the low
  watermark moves to it and what lies below is garbage-collected.
- View change: when work is pending and nothing was delivered for `view_timeout_ms` a replica says
  SUSPECT, and the view changes once 2f+1 do (f+1 make the others join the suspicion); at once on proof
  that the primary equivocated, or when f+1 replicas moved to later views. The timeout doubles with each
  view change that does not lead to a delivery, so views do not churn. A replica waiting for a NEW-VIEW
  asks for the next view only after 2f+1 replicas gave up on its view (a VIEW-CHANGE for it or a later
  one) and a timeout in which it heard 2f others; any replica in a view relays its NEW-VIEW to one
  whose heartbeat shows it still below (docs/PROTOCOL.md section 8).
- Evidence: two conflicting signed messages from one validator are kept (self-verifying) and reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from node.block import Block, max_faulty, quorum, vote_digest
from node.consensus import viewchange as vcm
from node.consensus.actions import Action, Broadcast, Catchup, Deliver, Persist, Send, ViewChanged
from node.consensus.messages import (
    T_BLOCK,
    T_CHECKPOINT,
    T_COMMIT,
    T_NEWVIEW,
    T_PREPARE,
    T_PREPREPARE,
    T_STATUS,
    T_SUSPECT,
    T_VIEWCHANGE,
    CertifiedBlock,
    Checkpoint,
    Commit,
    NewView,
    Prepare,
    PrePrepare,
    Status,
    Suspect,
    ViewChange,
    _Msg,
    signed_digest,
)
from node.consensus.recovery import RecoveryRole
from node.consensus.viewchange import ViewChangeRole

Signer = Callable[[bytes], bytes]
Verifier = Callable[[int, bytes, bytes], bool]  # (validator index, digest, sig) -> ok
BlockCheck = Callable[[Block], bool]




@dataclass
class _Instance:
    digest: bytes | None = None
    block: Block | None = None
    pp_sig: bytes = bytes(64)
    prepares: dict[int, bytes] = field(default_factory=dict)
    commits: dict[int, bytes] = field(default_factory=dict)
    sent_commit: bool = False
    committed: bool = False
    early: dict[tuple[bool, bytes], dict[int, bytes]] = field(default_factory=dict)  # votes before the pre-prepare
    seen: dict[tuple[int, int], tuple[bytes, bytes]] = field(default_factory=dict)  # (tag, sender) -> (digest, sig)
    mine: list[_Msg] = field(default_factory=list)  # what this replica sent, for retransmission
    sent_at: int = 0
    backoff: int = 0  # ms until the next retransmission; doubles each time, so slow rounds are not flooded


class Replica(ViewChangeRole, RecoveryRole):
    def __init__(self, chain_id: str, n: int, index: int, sign: Signer, verify: Verifier,
                 check_block: BlockCheck | None = None, window: int = 64, last_delivered: int = 0,
                 view: int = 0, last_hash: bytes = bytes(32), retransmit_ms: int = 250,
                 status_ms: int = 500, catchup_batch: int = 32, last_cert: tuple[int, tuple] = (0, ()),
                 view_timeout_ms: int = 1500, checkpoint_interval: int = 0, awaiting_new_view: bool = False,
                 push_gap_max: int | None = None) -> None:
        if not 0 <= index < n:
            raise ValueError("replica index out of range")
        self.chain_id, self.n, self.index = chain_id, n, index
        self.f = max_faulty(n)
        self.q = quorum(n)
        self._sign, self._verify = sign, verify
        self._check_block = check_block or (lambda b: True)
        self.window = window
        self.checkpoint_interval = checkpoint_interval or max(1, window // 4)
        self.view = view
        self.changing = awaiting_new_view and view > 0  # sent (or owe) a view change; waiting for NEW-VIEW
        self.stable = last_delivered  # low watermark h: the last stable checkpoint (or where we started)
        self.last_delivered = last_delivered
        self.last_hash = last_hash
        self.last_cert = last_cert  # (cert_view, cert) of the last delivered block, for view changes
        self.next_seq = last_delivered + 1
        self.log: dict[int, _Instance] = {}
        self.certified: dict[int, Block] = {}  # certified blocks that arrived ahead of their turn
        self.prepared: dict[int, tuple[vcm.PreparedCert, Block]] = {}  # highest-view prepared, above delivered
        self.checkpoints: dict[int, dict[bytes, dict[int, bytes]]] = {}  # seq -> root -> sender -> sig
        self._own_checkpoint: Checkpoint | None = None
        self.peer_stable = 0  # highest checkpoint 2f+1 others agree on (above ours: we are behind)
        self.vcs: dict[int, dict[int, vcm.ViewChangeInfo]] = {}  # view -> sender -> checked view change
        self._own_vc: ViewChange | None = None
        self.new_view_msg: NewView | None = None
        self.fixed: dict[int, bytes] = {}  # seq -> digest the current view must re-propose there
        self.floor = 0  # the new view's base: committed at or below (by a certificate), never re-proposed
        self._early_view: list[_Msg] = []  # messages of the view we wait to enter, replayed once in it
        self.view_timeout_ms = view_timeout_ms
        self._vc_attempt = 0  # view changes since the last delivery: the timeout doubles with each
        self._round_ema = 0.0  # moving average of the time between deliveries while work waited (ms)
        self._vc_started = 0
        self._progress_at = 0
        self._vc_sent_at = -(10**12)
        self.suspects: dict[int, int] = {}  # validator -> when its SUSPECT for our view last came
        self._suspecting = False  # our view timer ran out and nothing was delivered since
        self.view_changes = 0  # views entered through a new view
        self.evidence: list[dict] = []
        self._evidence_keys: set[tuple] = set()
        self.peer_delivered: dict[int, int] = {}
        self._heard: dict[int, int] = {}  # validator -> when we last got a valid message from it
        self._checked: tuple | None = None  # (sender, digest, sig) of the pre-prepare worth_executing verified
        self._catchup_sent: dict[int, int] = {}
        self._nv_sent: dict[int, int] = {}
        self.retransmit_ms, self.status_ms, self.catchup_batch = retransmit_ms, status_ms, catchup_batch
        self.push_gap_max = push_gap_max  # a peer further behind pulls by state transfer instead (None: push all)
        self.now_ms = 0
        self._last_status = -(10**12)
        self.ignored = 0  # messages dropped (bad signature, non-validator, outside window, conflicting)

    @property
    def primary(self) -> int:
        return self.view % self.n

    @property
    def is_primary(self) -> bool:
        return self.primary == self.index

    @property
    def low(self) -> int:
        return self.stable

    def in_flight(self) -> int:
        return self.next_seq - 1 - self.last_delivered

    def can_propose(self) -> bool:
        return self.is_primary and not self.changing and self.next_seq <= self.stable + self.window

    @staticmethod
    def _new_instance() -> _Instance:
        return _Instance()

    def _make(self, cls: type, seq: int, digest: bytes, **kw: object) -> _Msg:
        tmp = cls(self.view, seq, digest, self.index, bytes(64), **kw)
        return cls(self.view, seq, digest, self.index, self._sign(tmp.signing_digest(self.chain_id)), **kw)

    def _send_mine(self, inst: _Instance, msg: _Msg) -> list[Action]:
        """Our own phase message: logged durably first (Persist), then sent; kept for retransmission."""
        inst.mine.append(msg)
        inst.sent_at = self.now_ms
        inst.backoff = self.retransmit_ms
        if self.n == 1:
            return []  # nobody to send to, nothing that could ever conflict
        return [Persist(msg.seq, self.record(msg.seq, inst)), Broadcast(msg)]

    # ---- inputs ------------------------------------------------------------------------------------
    def propose(self, block: Block) -> list[Action]:
        """Primary only: order a fresh block at the next sequence number."""
        if not self.is_primary or self.changing:
            raise RuntimeError("only the primary of an active view proposes")
        seq = self.next_seq
        if seq > self.stable + self.window:
            raise RuntimeError("sequence window full")
        h = block.header
        if h.seq != seq or h.view != self.view or h.height != seq:
            raise ValueError("block header must carry the view and sequence (= height) it is proposed at")
        return self._pre_prepare(block)

    def _pre_prepare(self, block: Block) -> list[Action]:
        seq = block.header.seq
        self.next_seq = max(self.next_seq, seq + 1)
        pp = self._make(PrePrepare, seq, block.hash, block=block)
        inst = self.log.setdefault(seq, _Instance())
        after = self._on_preprepare(pp)  # takes the block in (with n = 1 it is delivered at once)
        return self._send_mine(inst, pp) + after

    def tick(self, now_ms: int, pending: bool = False) -> list[Action]:
        """Time passes: heartbeat, re-send our open messages, and run the view-change timer, which
        runs only while work is waiting (`pending`: the driver holds uncommitted transactions)."""
        if now_ms - self.now_ms >= self.view_timeout_ms:
            self._progress_at = now_ms  # we were not running (paused, descheduled): not the primary's fault
        self.now_ms = now_ms
        out: list[Action] = []
        if self.n == 1:
            return out
        if now_ms - self._last_status >= self.status_ms:
            self._last_status = now_ms
            # while waiting for a new view, report the view before it, so its primary re-sends NEW-VIEW
            out.append(Broadcast(self._make(Status, self.last_delivered, self.last_hash)
                                 if not self.changing else self._status_before_view()))
            if self._own_checkpoint is not None and self._own_checkpoint.seq > self.stable:
                out.append(Broadcast(self._own_checkpoint))
            if self._suspecting and not self.changing:
                out.append(Broadcast(self._make(Suspect, self.last_delivered, self.last_hash)))
        out += self._view_timer(now_ms, pending)
        if self.changing:
            if self._own_vc is not None and now_ms - self._vc_sent_at >= 4 * self.status_ms:
                self._vc_sent_at = now_ms
                out.append(Broadcast(self._own_vc))
            return out
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

    def _status_before_view(self) -> Status:
        tmp = Status(self.view - 1, self.last_delivered, self.last_hash, self.index, bytes(64))
        return Status(tmp.view, tmp.seq, tmp.digest, self.index, self._sign(tmp.signing_digest(self.chain_id)))

    def _timeout(self) -> int:
        """The view-change timeout: view_timeout_ms, or 4x the recent time between deliveries while work
        waited if that is longer (an overloaded primary is slow, not faulty: changing view would only
        add work), at most 8x; doubled for each view change that brought no delivery."""
        base = min(max(self.view_timeout_ms, 4 * int(self._round_ema)), 8 * self.view_timeout_ms)
        return base << min(self._vc_attempt, 6)

    def _view_timer(self, now_ms: int, pending: bool) -> list[Action]:
        # heard: sent us something within two heartbeats. Counted over the whole timeout instead, a replica
        # cut off just after the view slowed down ran out its timer before it noticed the cut, and left alone.
        window = min(self.view_timeout_ms, 2 * self.status_ms)
        heard = sum(1 for t in self._heard.values() if now_ms - t <= window)
        if self.changing:
            # PBFT: the timer for the next view starts once 2f+1 replicas are in this view change, and here it
            # runs only while we hear 2f others: cut off or paused we could not have received the NEW-VIEW, and
            # a replica that escalated then would be stranded in a view the others (working in the one it
            # missed) never join; it may not act in a lower view again (its VIEW-CHANGE still counts there).
            # A replica asking for a later view has given up on this one too: counting it lets the others
            # reach a replica left behind in a higher view instead of waiting for its VIEW-CHANGE here.
            given_up = {s for v, vs in self.vcs.items() if v >= self.view for s in vs}
            if heard < self.q - 1 or len(given_up) < self.q:
                self._vc_started = now_ms  # the timer starts (again) from here
                return []
            if now_ms - self._vc_started >= self._timeout():
                return self.start_view_change(self.view + 1)
            return []
        if not pending and not any(i.block is not None for i in self.log.values()):
            self._progress_at = now_ms  # nothing waiting: the timer is not running
            return []
        if self.behind_by() > 0 or heard < self.q - 1:
            # the others are ahead (we must catch up, the view is live), or we cannot hear 2f of them (cut
            # off: a view change could not complete, and a replica that raced ahead alone could not rejoin)
            self._progress_at = now_ms
            return []
        if now_ms - self._progress_at >= self._timeout():
            return self.suspect()
        return []

    def worth_executing(self, pp: PrePrepare) -> bool:
        """Whether the driver should execute a pre-prepare's block before handing it in: only a signed
        one from the primary of our (awaited) view, inside the window. Execution is the costly part,
        so nobody else gets to spend our CPU on it."""
        if not (0 <= pp.sender < self.n and pp.view == self.view and pp.sender == self.primary
                and self.last_delivered < pp.seq <= self.stable + self.window and pp.seq > self.floor):
            return False
        signed = (pp.sender, pp.signing_digest(self.chain_id), pp.sig)
        if not self._verify(*signed):
            return False
        self._checked = signed  # on_message need not verify this one again
        return True

    def on_message(self, msg: _Msg) -> list[Action]:
        if not 0 <= msg.sender < self.n or msg.sender == self.index:
            self.ignored += 1
            return []
        ordered = msg.tag in (T_PREPREPARE, T_PREPARE, T_COMMIT)
        early = ordered and self.changing and msg.view == self.view and len(self._early_view) < 4 * self.n * self.window
        # cheap checks before the signature, so out-of-window floods cost little CPU
        if ordered and not early and (msg.view != self.view or self.changing
                                      or not self.last_delivered < msg.seq <= self.stable + self.window):
            self.ignored += 1
            return []
        signed = (msg.sender, msg.signing_digest(self.chain_id), msg.sig)
        if signed != self._checked and not self._verify(*signed):
            self.ignored += 1
            return []
        if early:
            self._early_view.append(msg)  # it overtook the NEW-VIEW (other senders, other paths): keep it
            return []
        self._heard[msg.sender] = self.now_ms
        handler = {T_STATUS: self._on_status, T_BLOCK: self._on_certified, T_PREPREPARE: self._on_preprepare,
                   T_PREPARE: self._on_prepare, T_COMMIT: self._on_commit, T_CHECKPOINT: self._on_checkpoint,
                   T_VIEWCHANGE: self._on_view_change, T_NEWVIEW: self._on_new_view,
                   T_SUSPECT: self._on_suspect}.get(msg.tag)
        if handler is None:
            self.ignored += 1
            return []
        return handler(msg)

    # ---- the three phases -----------------------------------------------------------------------------
    def _on_preprepare(self, pp: PrePrepare) -> list[Action]:
        if pp.sender != self.primary or pp.block is None or pp.block.hash != pp.digest:
            self.ignored += 1
            return []
        h = pp.block.header
        fixed = self.fixed.get(pp.seq)
        # at or below the new view's base a block is committed already: a lagging replica must take it
        # from its certificate, never prepare whatever a (byzantine) new primary offers there
        if h.seq != pp.seq or h.height != pp.seq or pp.seq <= self.floor:
            self.ignored += 1
            return []
        if fixed is not None:  # the new view decided this sequence: only that block, as first proposed
            if pp.digest != fixed or h.view > pp.view or h.proposer != h.view % self.n:
                self.ignored += 1
                return []
        elif h.view != pp.view or h.proposer != pp.sender:
            self.ignored += 1
            return []
        inst = self.log.setdefault(pp.seq, _Instance())
        if inst.block is not None:
            if inst.digest != pp.digest:
                self.ignored += 1  # equivocation: a second block for one sequence number
                return self._primary_equivocated(pp.seq, inst.digest, inst.pp_sig, pp.digest, pp.sig)
            return []
        if pp.sender != self.index and not self._check_block(pp.block):
            self.ignored += 1
            return []
        inst.digest, inst.block, inst.pp_sig = pp.digest, pp.block, pp.sig
        # adopt the votes that arrived early for this block; those for any other digest are dropped
        inst.prepares.update(inst.early.get((True, pp.digest), {}))
        inst.commits.update(inst.early.get((False, pp.digest), {}))
        inst.early.clear()
        out: list[Action] = []
        if not self.is_primary:
            prep = self._make(Prepare, pp.seq, pp.digest, pp_sig=pp.sig)
            out += self._send_mine(inst, prep)
            inst.prepares[self.index] = prep.sig
        out += self._progress(pp.seq)
        return out

    def _on_prepare(self, msg: Prepare) -> list[Action]:
        return self._on_vote(msg, prepare=True)

    def _on_commit(self, msg: Commit) -> list[Action]:
        return self._on_vote(msg, prepare=False)

    def _on_vote(self, msg: _Msg, prepare: bool) -> list[Action]:
        inst = self.log.setdefault(msg.seq, _Instance())
        if prepare and msg.sender == self.primary:
            self.ignored += 1  # the primary's pre-prepare stands for its prepare
            return []
        seen = inst.seen.get((msg.tag, msg.sender))
        if seen is not None and seen[0] != msg.digest:
            self.ignored += 1
            self._add_evidence("conflicting-votes", msg.sender, msg.tag, msg.view, msg.seq,
                               (seen[0], seen[1]), (msg.digest, msg.sig))
            return []
        inst.seen[(msg.tag, msg.sender)] = (msg.digest, msg.sig)
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
            if prepare and self._verify(self.primary, signed_digest(T_PREPREPARE, self.chain_id, msg.view,
                                                                    msg.seq, msg.digest), msg.pp_sig):
                return self._primary_equivocated(msg.seq, inst.digest, inst.pp_sig, msg.digest, msg.pp_sig)
            return []
        votes = inst.prepares if prepare else inst.commits
        votes.setdefault(msg.sender, msg.sig)
        return self._progress(msg.seq)

    def _prepared(self, inst: _Instance) -> bool:
        # pre-prepare plus 2f prepares from others (the primary's pre-prepare counts as its vote)
        return inst.block is not None and len(inst.prepares) + 1 >= self.q

    def _progress(self, seq: int) -> list[Action]:
        inst = self.log[seq]
        if self._prepared(inst):
            cur = self.prepared.get(seq)
            if cur is None or cur[0].view < self.view or cur[0].digest != inst.digest:
                preps = tuple(sorted(inst.prepares.items()))
                self.prepared[seq] = (vcm.PreparedCert(seq, self.view, inst.block.header, inst.pp_sig, preps),
                                      inst.block)
        return self._try_commit(seq) + self._deliver()

    def _try_commit(self, seq: int) -> list[Action]:
        inst = self.log.get(seq)
        if inst is None:
            return []
        out: list[Action] = []
        if (not inst.sent_commit and self._prepared(inst) and seq == self.last_delivered + 1
                and inst.block.header.prev_hash == self.last_hash):
            inst.sent_commit = True
            c = self._make(Commit, seq, inst.digest)
            inst.commits[self.index] = c.sig
            out += self._send_mine(inst, c)
        if inst.sent_commit and not inst.committed and len(inst.commits) >= self.q:
            inst.committed = True
        return out

    # ---- delivery, checkpoints and catch-up -------------------------------------------------------------
    def _deliver(self) -> list[Action]:
        out: list[Action] = []
        while True:
            seq = self.last_delivered + 1
            inst = self.log.get(seq)
            if inst is not None and inst.committed:
                out.append(Deliver(seq, inst.block.with_cert(sorted(inst.commits.items()), self.view)))
            elif seq in self.certified:
                out.append(Deliver(seq, self.certified[seq], certified=True))
            else:
                return out
            out += self._advance(seq, out[-1].block)
            out += self._try_commit(seq + 1)

    def _advance(self, seq: int, block: Block) -> list[Action]:
        self.last_delivered = seq
        self.last_hash = block.hash
        self.last_cert = (block.cert_view, block.cert)
        self.log.pop(seq, None)
        self.certified.pop(seq, None)
        for s in [s for s in self.prepared if s <= seq]:
            del self.prepared[s]
        self.next_seq = max(self.next_seq, seq + 1)
        # the time this delivery took while work waited feeds the adaptive timeout
        self._round_ema = 0.7 * self._round_ema + 0.3 * max(0, self.now_ms - self._progress_at)
        self._progress_at, self._vc_attempt, self._suspecting = self.now_ms, 0, False
        if self.n == 1:
            self.stable = seq
            return []
        if seq % self.checkpoint_interval:
            return []
        cp = self._make(Checkpoint, seq, block.header.state_root)
        self._own_checkpoint = cp
        self.checkpoints.setdefault(seq, {}).setdefault(cp.digest, {})[self.index] = cp.sig
        self._check_stable(seq)
        return [Broadcast(cp)]

    def _on_checkpoint(self, msg: Checkpoint) -> list[Action]:
        if msg.seq <= self.stable or msg.seq % self.checkpoint_interval or \
                msg.seq > self.last_delivered + 16 * self.window:
            return []
        roots = self.checkpoints.setdefault(msg.seq, {})
        if any(msg.sender in votes for votes in roots.values()):
            return []  # one root per validator and sequence (a second one would only be noise)
        roots.setdefault(msg.digest, {})[msg.sender] = msg.sig
        self._check_stable(msg.seq)
        return []

    def _check_stable(self, seq: int) -> None:
        for root, votes in self.checkpoints.get(seq, {}).items():
            if len(votes) < self.q:
                continue
            self.peer_stable = max(self.peer_stable, seq)
            mine = self._own_checkpoint
            if seq > self.last_delivered or mine is None or mine.seq != seq:
                return  # we are behind: state transfer brings us there (node/validator.py)
            if mine.digest != root:
                self._add_evidence("state-divergence", self.index, T_CHECKPOINT, 0, seq, (mine.digest, mine.sig),
                                   (root, b""))
                return
            self.stable = seq  # the low watermark moves; what lies below it is collected
            for s in [s for s in self.checkpoints if s <= seq]:
                del self.checkpoints[s]
            return

    def cert_valid(self, block: Block) -> bool:
        h = block.header
        digest = vote_digest(self.chain_id, block.cert_view, h.seq, block.hash)
        signers = {i for i, s in block.cert if 0 <= i < self.n and self._verify(i, digest, s)}
        return len(signers) >= self.q and len(signers) == len(block.cert)

    def _on_certified(self, msg: CertifiedBlock) -> list[Action]:
        return self.offer_certified(msg.block, msg.digest, msg.seq)

    def offer_certified(self, b: Block | None, digest: bytes | None = None, seq: int | None = None) -> list[Action]:
        """A committed block with its certificate, pushed by a peer or fetched by state transfer: it is
        checked against the validator keys alone, so no single peer is trusted."""
        if b is None or (digest is not None and b.hash != digest) or b.header.height != b.header.seq or \
                (seq is not None and b.header.seq != seq):
            self.ignored += 1
            return []
        seq = b.header.seq
        if seq <= self.last_delivered or seq in self.certified:
            return []
        if seq > self.last_delivered + 4 * self.window or not self.cert_valid(b):
            self.ignored += 1
            return []
        self.certified[seq] = b
        return self._deliver()

    def _on_status(self, msg: Status) -> list[Action]:
        j, theirs = msg.sender, msg.seq
        out: list[Action] = []
        if msg.view < self.view and not self.changing and self.new_view_msg is not None:
            # it missed the NEW-VIEW of our view: the primary sends it again, and (less often) so does every
            # replica in the view, as it is self-certifying: one that cannot hear the primary (a cut link,
            # a primary withholding it) gets in rather than escalating to a view no one else would join
            sent = self._nv_sent.get(j)
            if sent is None or self.now_ms - sent >= (2 if self.is_primary else 4) * self.status_ms:
                self._nv_sent[j] = self.now_ms
                out.append(Send(j, self.new_view_msg))
        if theirs == self.last_delivered and theirs > 0 and msg.digest != self.last_hash:
            # a validator signs that it delivered another block at our height: the chain forked, which
            # only more than f faulty validators can cause (kept as evidence, reported loudly)
            self._add_evidence("fork", j, T_STATUS, msg.view, theirs, (self.last_hash, b""), (msg.digest, msg.sig))
        before = self.peer_delivered.get(j)
        self.peer_delivered[j] = max(before or 0, theirs)
        if theirs >= self.last_delivered or before is None or theirs > before:
            return out  # level, or still progressing on its own: certified blocks would only duplicate work
        if self.push_gap_max is not None and self.last_delivered - theirs > self.push_gap_max:
            return out  # far behind: it pulls from several peers by state transfer (node/sync.py)
        # a peer is behind: send it certified blocks, at most one batch per status round per peer
        sent = self._catchup_sent.get(j)
        if sent is not None and self.now_ms - sent < self.status_ms:
            return out
        self._catchup_sent[j] = self.now_ms
        return out + [Catchup(j, theirs + 1, min(self.last_delivered, theirs + self.catchup_batch))]

    def behind_by(self) -> int:
        """How far the f+1-th most advanced peer is ahead of us (a lower bound no liar can inflate)."""
        ahead = sorted(self.peer_delivered.values(), reverse=True)
        if len(ahead) <= self.f:
            return 0
        return max(0, ahead[self.f] - self.last_delivered, self.peer_stable - self.last_delivered)

    def certified_message(self, block: Block) -> CertifiedBlock:
        """Wrap a committed block (with its certificate) for sending to a replica that is behind."""
        return self._make(CertifiedBlock, block.header.seq, block.hash, block=block)


__all__ = ["T_COMMIT", "Action", "Broadcast", "Catchup", "Deliver", "Persist", "Replica", "Send", "ViewChanged"]
