"""PBFT (Castro & Liskov) as a sans-IO state machine: normal case, checkpoints, view change.

Inputs are method calls (propose, on_message, tick, executed); outputs are actions for the driver:
Broadcast a message, Send one to a single replica, Catchup (send certified blocks a peer lacks),
Execute a proposed block (answered by `executed`: nothing calls back into the driver), Deliver a
block with its commit certificate (strictly in sequence order), and ViewChanged (persist the view
before anything of the new view leaves). Signing and verifying are injected pure functions and time
arrives only through tick(), so the same core runs in seeded simulations and over libp2p.
With n = 1 every quorum is this replica alone: the single-validator node runs this code path.

All of the replica's state is one object, `ReplicaState` (node/consensus/state.py), with a named phase
(NORMAL, SUSPECTING, VIEW_CHANGE) and every ignored message counted by its reason. Three roles act on
it: this module (the normal case, and the one entry point), `ViewChanges` (viewchange.py) and
`Recovery` (recovery.py); they hold nothing of their own.

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
  whose heartbeat shows it still below (docs/PROTOCOL.md section 8). "Delivered" counts only blocks
  that carry work, and not those of a primary seen leaving out a transaction this replica holds
  (node/consensus/censor.py).
- Evidence: two conflicting signed messages from one validator are kept (self-verifying) and reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from node.block import TXS_MAX_BYTES, Block, txs_bytes, vote_digest
from node.consensus.actions import Action, Broadcast, Catchup, Deliver, Execute, Persist, Send, ViewChanged
from node.consensus.censor import CensorWatch
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
    Message,
    NewView,
    Prepare,
    PrePrepare,
    Status,
    Suspect,
    signed_digest,
)
from node.consensus.recovery import Record, Recovery
from node.consensus.state import (
    Ignored,
    Instance,
    Phase,
    PreparedCert,
    ReplicaState,
    Signer,
    Verifier,
    Votes,
)
from node.consensus.viewchange import ViewChanges

EARLY_BLOCK_BYTES = 4 * TXS_MAX_BYTES  # blocks of early pre-prepares kept while the view changes


class Replica:
    """The normal case (pre-prepare, prepare, commit, delivery, checkpoints, catch-up) and the one
    entry point of the core: the view-change and recovery roles act on the same state `s`."""

    def __init__(self, chain_id: str, n: int, index: int, sign: Signer, verify: Verifier,
                 window: int = 64, last_delivered: int = 0,
                 view: int = 0, last_hash: bytes = bytes(32), retransmit_ms: int = 250,
                 status_ms: int = 500, catchup_batch: int = 32, last_cert: tuple[int, Votes] = (0, ()),
                 view_timeout_ms: int = 1500, checkpoint_interval: int = 0, awaiting_new_view: bool = False,
                 push_gap_max: int | None = None, censor: CensorWatch | None = None) -> None:
        if not 0 <= index < n:
            raise ValueError("replica index out of range")
        self.s = ReplicaState(
            chain_id=chain_id, n=n, index=index, sign=sign, verify=verify,
            window=window,
            checkpoint_interval=checkpoint_interval or max(1, window // 4), view_timeout_ms=view_timeout_ms,
            retransmit_ms=retransmit_ms, status_ms=status_ms, catchup_batch=catchup_batch,
            push_gap_max=push_gap_max, view=view,
            # sent (or owe) a view change: waiting for the NEW-VIEW
            phase=Phase.VIEW_CHANGE if awaiting_new_view and view > 0 else Phase.NORMAL,
            stable=last_delivered, last_delivered=last_delivered, last_hash=last_hash, last_cert=last_cert,
            next_seq=last_delivered + 1, progress_seq=last_delivered)
        self.views = ViewChanges(self.s, self)
        # a transaction this replica holds, left out by the primary (None: not watched; node/consensus/censor.py)
        self.censor = censor
        self.recovery = Recovery(self.s, self.views)
        # by tag; each handler takes the message class decode_message gives for that tag
        self._handlers: dict[int, Callable[[Any], list[Action]]] = {
            T_STATUS: self._on_status, T_BLOCK: self._on_certified, T_PREPREPARE: self._on_preprepare,
            T_PREPARE: self._on_prepare, T_COMMIT: self._on_commit, T_CHECKPOINT: self._on_checkpoint,
            T_VIEWCHANGE: self.views.on_view_change, T_NEWVIEW: self.views.on_new_view,
            T_SUSPECT: self.views.on_suspect}

    # ---- what the driver, the metrics and state transfer read ----------------------------------------
    @property
    def state(self) -> ReplicaState:
        return self.s

    @property
    def view(self) -> int:
        return self.s.view

    @property
    def phase(self) -> Phase:
        return self.s.phase

    @property
    def changing(self) -> bool:
        return self.s.changing

    @property
    def primary(self) -> int:
        return self.s.primary

    @property
    def is_primary(self) -> bool:
        return self.s.is_primary

    @property
    def n(self) -> int:
        return self.s.n

    @property
    def index(self) -> int:
        return self.s.index

    @property
    def window(self) -> int:
        return self.s.window

    @property
    def low(self) -> int:
        return self.s.stable

    @property
    def stable(self) -> int:
        return self.s.stable

    @property
    def peer_stable(self) -> int:
        return self.s.peer_stable

    @property
    def last_delivered(self) -> int:
        return self.s.last_delivered

    @property
    def last_hash(self) -> bytes:
        return self.s.last_hash

    @property
    def next_seq(self) -> int:
        return self.s.next_seq

    @property
    def certified(self) -> dict[int, Block]:
        return self.s.certified

    @property
    def peer_delivered(self) -> dict[int, int]:
        return self.s.peer_delivered

    @property
    def view_changes(self) -> int:
        return self.s.view_changes

    @property
    def evidence(self) -> list[dict[str, Any]]:
        return self.s.evidence

    @property
    def ignored(self) -> int:
        """Messages dropped, all reasons together (ignored_by_reason has them one by one)."""
        return self.s.ignored.total()

    def ignored_by_reason(self) -> dict[str, int]:
        return {r.value: c for r, c in sorted(self.s.ignored.items(), key=lambda rc: rc[0].value)}

    def in_flight(self) -> int:
        return self.s.next_seq - 1 - self.s.last_delivered

    def can_propose(self) -> bool:
        return self.s.is_primary and not self.s.changing and self.s.next_seq <= self.s.stable + self.s.window

    def is_next(self, block: Block) -> bool:
        """The block is built for this view at the next sequence number: what propose takes (a block
        built while the view moved on is not)."""
        return block.header.view == self.s.view and block.header.seq == self.s.next_seq

    def _send_mine(self, inst: Instance, msg: Message) -> list[Action]:
        """Our own phase message: logged durably first (Persist), then sent; kept for retransmission."""
        inst.mine.append(msg)
        inst.sent_at = self.s.now_ms
        inst.backoff = self.s.retransmit_ms
        if self.s.n == 1:
            return []  # nobody to send to, nothing that could ever conflict
        return [Persist(msg.seq, self.recovery.record(msg.seq, inst)), Broadcast(msg)]

    # ---- inputs ------------------------------------------------------------------------------------
    def propose(self, block: Block) -> list[Action]:
        """Primary only: order a fresh block at the next sequence number."""
        if not self.s.is_primary or self.s.changing:
            raise RuntimeError("only the primary of an active view proposes")
        if self.s.next_seq > self.s.stable + self.s.window:
            raise RuntimeError("sequence window full")
        if not self.is_next(block) or block.header.height != block.header.seq:
            raise ValueError("block header must carry the view and sequence (= height) it is proposed at")
        return self.pre_prepare(block)

    def pre_prepare(self, block: Block) -> list[Action]:
        seq = block.header.seq
        self.s.next_seq = max(self.s.next_seq, seq + 1)
        pp = self.s.make(PrePrepare, seq, block.hash, block=block)
        inst = self.s.log.setdefault(seq, Instance())
        after = self._on_preprepare(pp)  # takes the block in (with n = 1 it is delivered at once)
        mine = self._send_mine(inst, pp)
        if any(isinstance(a, Persist) for a in after):
            # 2f prepares came before our own pre-prepare and we committed at once: that commit's
            # record was made before the pre-prepare joined our messages, and the driver writes the
            # records in order, so the last one written must be the whole of them (a primary
            # restored without its pre-prepare would sign another block at this sequence)
            after.append(Persist(seq, self.recovery.record(seq, inst)))
        return mine + after

    def watch(self, raw: bytes | None, since_ms: int = 0) -> None:
        """The driver's transaction to watch for censorship: the longest waiting one it holds, ready to
        execute, and when it arrived (None: none waits). Ignored unless the replica has a CensorWatch."""
        if self.censor is not None:
            self.censor.offer(raw, since_ms)

    def _proposed_up_to(self) -> int:
        """The highest sequence with a pre-prepare here (a vote alone makes a log entry too: anyone
        could push the censorship watch's horizon a window ahead with one signed COMMIT)."""
        return max((seq for seq, i in self.s.log.items() if i.block is not None or i.executing is not None),
                   default=self.s.last_delivered)

    def tick(self, now_ms: int, pending: bool = False) -> list[Action]:
        """Time passes: heartbeat, re-send our open messages, and run the view-change timer, which
        runs only while work is waiting (`pending`: the driver holds uncommitted transactions)."""
        if now_ms - self.s.now_ms >= self.s.view_timeout_ms:
            self.s.progress_at = now_ms  # we were not running (paused, descheduled): not the primary's fault
        self.s.now_ms = now_ms
        out: list[Action] = []
        if self.s.n == 1:
            return out
        if self.censor is not None:
            self.censor.tick(now_ms, self.s.view, self.s.changing, self._proposed_up_to)
        if now_ms - self.s.last_status >= self.s.status_ms:
            self.s.last_status = now_ms
            # while waiting for a new view, report the view before it, so its primary re-sends NEW-VIEW
            out.append(Broadcast(self.s.make(Status, self.s.last_delivered, self.s.last_hash)
                                 if not self.s.changing else self._status_before_view()))
            if self.s.own_checkpoint is not None and self.s.own_checkpoint.seq > self.s.stable:
                out.append(Broadcast(self.s.own_checkpoint))
            if self.s.phase is Phase.SUSPECTING:
                out.append(Broadcast(self.s.make(Suspect, self.s.last_delivered, self.s.last_hash)))
        out += self.views.timer(now_ms, pending)
        if self.s.changing:
            if self.s.own_vc is not None and now_ms - self.s.vc_sent_at >= 4 * self.s.status_ms:
                self.s.vc_sent_at = now_ms
                out.append(Broadcast(self.s.own_vc))
            return out
        for inst in self.s.log.values():
            if inst.mine and not inst.committed and now_ms - inst.sent_at >= inst.backoff:
                inst.sent_at = now_ms
                inst.backoff = min(2 * max(inst.backoff, self.s.retransmit_ms), 16 * self.s.retransmit_ms)
                for m in inst.mine:
                    if m.tag == T_PREPREPARE:
                        # the block is large: only to replicas that have not shown (by a vote) they hold it
                        out += [Send(j, m) for j in range(self.s.n)
                                if j != self.s.index and j not in inst.prepares and j not in inst.commits]
                    else:
                        out.append(Broadcast(m))
        return out

    def _status_before_view(self) -> Status:
        tmp = Status(self.s.view - 1, self.s.last_delivered, self.s.last_hash, self.s.index, bytes(64))
        return Status(tmp.view, tmp.seq, tmp.digest, self.s.index, self.s.sign(tmp.signing_digest(self.s.chain_id)))

    def on_message(self, msg: Message) -> list[Action]:
        s = self.s
        if not 0 <= msg.sender < s.n or msg.sender == s.index:
            s.ignore(Ignored.BAD_SENDER)
            return []
        ordered = msg.tag in (T_PREPREPARE, T_PREPARE, T_COMMIT)
        early = ordered and s.changing and msg.view == s.view
        # cheap checks before the signature, so out-of-window floods cost little CPU
        if ordered:
            reason = self._unkept(msg) if early else self._out_of_turn(msg)
            if reason is not None:
                s.ignore(reason)
                return []
        if not s.verify(msg.sender, msg.signing_digest(s.chain_id), msg.sig):
            s.ignore(Ignored.BAD_SIGNATURE)
            return []
        if early:  # it overtook the NEW-VIEW (other senders, other paths): keep it
            s.early_view.append(msg)
            s.early_keys.add((msg.tag, msg.sender, msg.seq))
            if isinstance(msg, PrePrepare) and msg.block is not None:
                s.early_bytes += txs_bytes(msg.block.txs)
            return []
        s.heard[msg.sender] = s.now_ms
        handler = self._handlers.get(msg.tag)
        if handler is None:
            s.ignore(Ignored.UNKNOWN_TYPE)
            return []
        return handler(msg)

    def _unkept(self, msg: Message) -> Ignored | None:
        """Why a phase message of the view we wait to enter is not kept for it (None: it is). Kept
        messages are held until the NEW-VIEW comes, so what a byzantine validator can make us hold is
        bounded: one per (type, sender, sequence) in the window, a pre-prepare only from the view's
        primary and for the block it carries, and at most EARLY_BLOCK_BYTES of their blocks."""
        s = self.s
        if not s.last_delivered < msg.seq <= s.stable + s.window:
            return Ignored.OUTSIDE_WINDOW
        if (msg.tag, msg.sender, msg.seq) in s.early_keys:
            return Ignored.VIEW_CHANGING
        if isinstance(msg, PrePrepare):
            if msg.sender != msg.view % s.n:
                return Ignored.NOT_PRIMARY
            if msg.block is None or msg.block.hash != msg.digest:
                return Ignored.MALFORMED
            if s.early_bytes + txs_bytes(msg.block.txs) > EARLY_BLOCK_BYTES:
                return Ignored.VIEW_CHANGING  # the primary sends it again after its NEW-VIEW
        return None

    def _out_of_turn(self, msg: Message) -> Ignored | None:
        """Why a phase message cannot be taken now (None: it can): not of our view, our view is being
        left, or its sequence is not in the window above what we delivered."""
        s = self.s
        if msg.view < s.view:
            return Ignored.OLD_VIEW
        if msg.view > s.view:
            return Ignored.FUTURE_VIEW
        if s.changing:
            return Ignored.VIEW_CHANGING
        if not s.last_delivered < msg.seq <= s.stable + s.window:
            return Ignored.OUTSIDE_WINDOW
        return None

    # ---- the three phases -----------------------------------------------------------------------------
    def _on_preprepare(self, pp: PrePrepare) -> list[Action]:
        if pp.sender != self.s.primary:
            self.s.ignore(Ignored.NOT_PRIMARY)
            return []
        if pp.block is None or pp.block.hash != pp.digest:
            self.s.ignore(Ignored.MALFORMED)
            return []
        h = pp.block.header
        fixed = self.s.fixed.get(pp.seq)
        # at or below the new view's base a block is committed already: a lagging replica must take it
        # from its certificate, never prepare whatever a (byzantine) new primary offers there
        if h.seq != pp.seq or h.height != pp.seq:
            self.s.ignore(Ignored.MALFORMED)
            return []
        if pp.seq <= self.s.floor:
            self.s.ignore(Ignored.BELOW_FLOOR)
            return []
        if fixed is not None:  # the new view decided this sequence: only that block, as first proposed
            if pp.digest != fixed or h.view > pp.view or h.proposer != h.view % self.s.n:
                self.s.ignore(Ignored.NOT_FIXED)
                return []
        elif h.view != pp.view or h.proposer != pp.sender:
            self.s.ignore(Ignored.MALFORMED)
            return []
        elif txs_bytes(pp.block.txs) > TXS_MAX_BYTES:
            # the budget honest primaries fill to: once certified, a larger block could pass the 8 MiB
            # every node decodes (restart, catch-up, verify and proofs would fail on it). Only fresh
            # proposals: a block a view change carried over was proposed under the rules of its time
            self.s.ignore(Ignored.TOO_LARGE)
            return []
        inst = self.s.log.setdefault(pp.seq, Instance())
        ex = inst.executing
        held = (inst.digest, inst.pp_sig) if inst.block is not None else (ex.digest, ex.sig) if ex else None
        if held is not None and held[0] != pp.digest:
            self.s.ignore(Ignored.EQUIVOCATION)  # a second block for one sequence number
            return self.views.primary_equivocated(pp.seq, held[0], held[1], pp.digest, pp.sig)
        if inst.block is not None:
            return []  # a retransmission of the block we hold
        if pp.sender != self.s.index:
            # a backup votes only for a block it executed to the same state root: the driver runs
            # it (the costly part, so only for a signed pre-prepare in turn) and answers `executed`
            inst.executing = pp
            return [Execute(pp.seq, pp.block, fresh=h.view == pp.view)]
        return self._adopt(inst, pp)

    def executed(self, seq: int, digest: bytes, ok: bool) -> list[Action]:
        """The driver's answer to Execute: the block of the pre-prepare for `seq` executed here on its
        parent to the state root it claims (and its blobs are here), or not. Stale answers (the view
        changed, the sequence was delivered meanwhile, another block is in) change nothing."""
        inst = self.s.log.get(seq)
        if inst is None or inst.executing is None or inst.executing.digest != digest:
            return []
        pp, inst.executing = inst.executing, None
        if not ok:
            self.s.ignore(Ignored.INVALID_BLOCK)  # a retransmission asks again (its parent may come)
            return []
        if pp.view != self.s.view or self.s.changing or seq <= self.s.last_delivered or inst.block is not None:
            return []
        return self._adopt(inst, pp)

    def _adopt(self, inst: Instance, pp: PrePrepare) -> list[Action]:
        """The pre-prepare's block is the one for its sequence: vote for it (a backup) and move on."""
        inst.digest, inst.block, inst.pp_sig = pp.digest, pp.block, pp.sig
        # adopt the votes that arrived early for this block; those for any other digest are dropped
        inst.prepares.update(inst.early.get((True, pp.digest), {}))
        inst.commits.update(inst.early.get((False, pp.digest), {}))
        inst.early.clear()
        out: list[Action] = []
        if not self.s.is_primary:
            prep = self.s.make(Prepare, pp.seq, pp.digest, pp_sig=pp.sig)
            out += self._send_mine(inst, prep)
            inst.prepares[self.s.index] = prep.sig
        out += self._progress(pp.seq)
        return out

    def _on_prepare(self, msg: Prepare) -> list[Action]:
        return self._on_vote(msg, prepare=True)

    def _on_commit(self, msg: Commit) -> list[Action]:
        return self._on_vote(msg, prepare=False)

    def _on_vote(self, msg: Prepare | Commit, prepare: bool) -> list[Action]:
        inst = self.s.log.setdefault(msg.seq, Instance())
        if prepare and msg.sender == self.s.primary:
            self.s.ignore(Ignored.PRIMARY_PREPARE)  # the primary's pre-prepare stands for its prepare
            return []
        seen = inst.seen.get((msg.tag, msg.sender))
        if seen is not None and seen[0] != msg.digest:
            self.s.ignore(Ignored.CONFLICTING_VOTE)
            self.s.add_evidence("conflicting-votes", msg.sender, msg.tag, msg.view, msg.seq,
                                (seen[0], seen[1]), (msg.digest, msg.sig))
            return []
        inst.seen[(msg.tag, msg.sender)] = (msg.digest, msg.sig)
        if inst.block is None:
            # before the pre-prepare: keep votes per digest, so a bogus early vote cannot shadow honest ones
            early = inst.early.setdefault((prepare, msg.digest), {})
            if len(inst.early) > 2 * self.s.n:
                self.s.ignore(Ignored.EARLY_VOTES_FULL)
                return []
            early.setdefault(msg.sender, msg.sig)
            return []
        if msg.digest != inst.digest:
            self.s.ignore(Ignored.WRONG_DIGEST)
            # a prepare carries the pre-prepare it answers: a valid one for another block proves equivocation
            if isinstance(msg, Prepare) and self.s.verify(
                    self.s.primary, signed_digest(T_PREPREPARE, self.s.chain_id, msg.view, msg.seq, msg.digest),
                    msg.pp_sig):
                return self.views.primary_equivocated(msg.seq, inst.digest, inst.pp_sig, msg.digest, msg.pp_sig)
            return []
        votes = inst.prepares if prepare else inst.commits
        votes.setdefault(msg.sender, msg.sig)
        return self._progress(msg.seq)

    def _prepared(self, inst: Instance) -> Block | None:
        """The block, if prepared: pre-prepare plus 2f prepares from others (the primary's pre-prepare
        counts as its vote)."""
        return inst.block if inst.block is not None and len(inst.prepares) + 1 >= self.s.q else None

    def _progress(self, seq: int) -> list[Action]:
        inst = self.s.log[seq]
        block = self._prepared(inst)
        if block is not None:
            cur = self.s.prepared.get(seq)
            if cur is None or cur[0].view < self.s.view or cur[0].digest != inst.digest:
                preps = tuple(sorted(inst.prepares.items()))
                self.s.prepared[seq] = (PreparedCert(seq, self.s.view, block.header, inst.pp_sig, preps), block)
        return self._try_commit(seq) + self.deliver()

    def _try_commit(self, seq: int) -> list[Action]:
        inst = self.s.log.get(seq)
        if inst is None:
            return []
        out: list[Action] = []
        if (not inst.sent_commit and (block := self._prepared(inst)) is not None
                and seq == self.s.last_delivered + 1 and block.header.prev_hash == self.s.last_hash):
            inst.sent_commit = True
            c = self.s.make(Commit, seq, inst.digest)
            inst.commits[self.s.index] = c.sig
            out += self._send_mine(inst, c)
        if inst.sent_commit and not inst.committed and len(inst.commits) >= self.s.q:
            inst.committed = True
        return out

    # ---- delivery, checkpoints and catch-up -------------------------------------------------------------
    def deliver(self) -> list[Action]:
        out: list[Action] = []
        while True:
            seq = self.s.last_delivered + 1
            inst = self.s.log.get(seq)
            if inst is not None and inst.committed and inst.block is not None:
                d = Deliver(seq, inst.block.with_cert(sorted(inst.commits.items()), self.s.view))
            elif seq in self.s.certified:
                d = Deliver(seq, self.s.certified[seq], certified=True)
            else:
                return out
            out.append(d)
            out += self._advance(seq, d.block)
            out += self._try_commit(seq + 1)

    def _advance(self, seq: int, block: Block) -> list[Action]:
        self.s.last_delivered = seq
        self.s.last_hash = block.hash
        self.s.last_cert = (block.cert_view, block.cert)
        self.s.log.pop(seq, None)
        self.s.certified.pop(seq, None)
        for s in [s for s in self.s.prepared if s <= seq]:
            del self.s.prepared[s]
        self.s.next_seq = max(self.s.next_seq, seq + 1)
        # Progress is a block that carries work: an honest primary proposes none empty, and a
        # byzantine one proposing empty blocks just inside the timeout (stretching it, through the
        # pace below, to 8x) held its seat for ever while every client transaction waited. Nor is a
        # block progress once the primary has left out a transaction we hold, again and again, from
        # blocks with room for it (censorship: node/consensus/censor.py)
        watch = self.censor if not self.s.is_primary else None
        if watch is not None:
            watch.delivered(seq, block, self.s.now_ms)
        if block.txs and not (watch is not None and watch.censoring):
            # the time this delivery took while work waited feeds the adaptive timeout
            self.s.round_ema = 0.7 * self.s.round_ema + 0.3 * max(0, self.s.now_ms - self.s.progress_at)
            self.s.progress_at, self.s.vc_attempt, self.s.progress_seq = self.s.now_ms, 0, seq
            if self.s.phase is Phase.SUSPECTING:
                self.s.phase = Phase.NORMAL
            # the view went on: a suspicion from before counts no more (a replica still stuck says so
            # again with its next heartbeat, at its new height)
            self.s.suspects.clear()
        if self.s.n == 1:
            self.s.stable = seq
            return []
        if seq % self.s.checkpoint_interval:
            return []
        cp = self.s.make(Checkpoint, seq, block.header.state_root)
        self.s.own_checkpoint = cp
        self.s.checkpoints.setdefault(seq, {}).setdefault(cp.digest, {})[self.s.index] = cp.sig
        self._check_stable(seq)
        return [Broadcast(cp)]

    def _on_checkpoint(self, msg: Checkpoint) -> list[Action]:
        if msg.seq <= self.s.stable or msg.seq % self.s.checkpoint_interval or \
                msg.seq > self.s.last_delivered + 16 * self.s.window:
            return []
        roots = self.s.checkpoints.setdefault(msg.seq, {})
        if any(msg.sender in votes for votes in roots.values()):
            return []  # one root per validator and sequence (a second one would only be noise)
        roots.setdefault(msg.digest, {})[msg.sender] = msg.sig
        self._check_stable(msg.seq)
        return []

    def _check_stable(self, seq: int) -> None:
        for root, votes in self.s.checkpoints.get(seq, {}).items():
            if len(votes) < self.s.q:
                continue
            self.s.peer_stable = max(self.s.peer_stable, seq)
            mine = self.s.own_checkpoint
            if seq > self.s.last_delivered or mine is None or mine.seq != seq:
                return  # we are behind: state transfer brings us there (node/validator.py)
            if mine.digest != root:
                self.s.add_evidence("state-divergence", self.s.index, T_CHECKPOINT, 0, seq, (mine.digest, mine.sig),
                                   (root, b""))
                return
            self.s.stable = seq  # the low watermark moves; what lies below it is collected
            for s in [s for s in self.s.checkpoints if s <= seq]:
                del self.s.checkpoints[s]
            return

    def cert_valid(self, block: Block) -> bool:
        """2f+1 distinct validators' valid commit votes, and nothing else. The shape is checked before
        any signature (a peer repeating one genuine vote 100,000 times cost as many verifications per
        message, 5 s, and could send it again), and verifying stops at the first bad one."""
        h = block.header
        idx = [i for i, _ in block.cert]
        if len(idx) > self.s.n or len(set(idx)) != len(idx) or not all(0 <= i < self.s.n for i in idx) \
                or len(idx) < self.s.q:
            return False
        digest = vote_digest(self.s.chain_id, block.cert_view, h.seq, block.hash)
        return all(self.s.verify(i, digest, s) for i, s in block.cert)

    def _on_certified(self, msg: CertifiedBlock) -> list[Action]:
        return self.offer_certified(msg.block, msg.digest, msg.seq)

    def offer_certified(self, b: Block | None, digest: bytes | None = None, seq: int | None = None) -> list[Action]:
        """A committed block with its certificate, pushed by a peer or fetched by state transfer: it is
        checked against the validator keys alone, so no single peer is trusted. The certificate signs
        the header, so the transactions must hash to its tx_root too (checked last: it hashes them all)."""
        if b is None or (digest is not None and b.hash != digest) or b.header.height != b.header.seq or \
                (seq is not None and b.header.seq != seq):
            self.s.ignore(Ignored.MALFORMED)
            return []
        seq = b.header.seq
        if seq <= self.s.last_delivered or seq in self.s.certified:
            return []
        if seq > self.s.last_delivered + 4 * self.s.window:
            self.s.ignore(Ignored.OUTSIDE_WINDOW)
            return []
        if not self.cert_valid(b):
            self.s.ignore(Ignored.BAD_CERTIFICATE)
            return []
        if not b.check_tx_root():  # the certificate signs the header: transactions swapped under it
            self.s.ignore(Ignored.MALFORMED)
            return []
        self.s.certified[seq] = b
        return self.deliver()

    def _on_status(self, msg: Status) -> list[Action]:
        j, theirs = msg.sender, msg.seq
        out: list[Action] = []
        if msg.view < self.s.view and not self.s.changing and self.s.new_view_msg is not None:
            # it missed the NEW-VIEW of our view: the primary sends it again, and (less often) so does every
            # replica in the view, as it is self-certifying: one that cannot hear the primary (a cut link,
            # a primary withholding it) gets in rather than escalating to a view no one else would join
            sent = self.s.nv_sent.get(j)
            if sent is None or self.s.now_ms - sent >= (2 if self.s.is_primary else 4) * self.s.status_ms:
                self.s.nv_sent[j] = self.s.now_ms
                out.append(Send(j, self.s.new_view_msg))
        if theirs == self.s.last_delivered and theirs > 0 and msg.digest != self.s.last_hash:
            # a validator signs that it delivered another block at our height: the chain forked (only
            # more than f faulty validators can cause that), or that validator lies; its signature is
            # evidence against it either way, not by itself of a fork (one byzantine validator can sign it)
            self.s.add_evidence("conflicting-status", j, T_STATUS, msg.view, theirs, (self.s.last_hash, b""), (msg.digest, msg.sig))
        before = self.s.peer_delivered.get(j)
        self.s.peer_delivered[j] = max(before or 0, theirs)
        if theirs >= self.s.last_delivered or before is None or theirs > before:
            return out  # level, or still progressing on its own: certified blocks would only duplicate work
        if self.s.push_gap_max is not None and self.s.last_delivered - theirs > self.s.push_gap_max:
            return out  # far behind: it pulls from several peers by state transfer (node/sync.py)
        # a peer is behind: send it certified blocks, at most one batch per status round per peer
        sent = self.s.catchup_sent.get(j)
        if sent is not None and self.s.now_ms - sent < self.s.status_ms:
            return out
        self.s.catchup_sent[j] = self.s.now_ms
        return out + [Catchup(j, theirs + 1, min(self.s.last_delivered, theirs + self.s.catchup_batch))]

    # ---- the view-change and recovery roles' entry points ---------------------------------------------
    def start_view_change(self, new_view: int) -> list[Action]:
        """Stop accepting the current view and ask for `new_view` (node/consensus/viewchange.py)."""
        return self.views.start_view_change(new_view)

    def record(self, seq: int, inst: Instance | None = None) -> bytes:
        return self.recovery.record(seq, inst)

    def reinstall(self, nv: NewView) -> bool:
        return self.recovery.reinstall(nv)

    def restore_record(self, seq: int, rec: Record) -> bool:
        return self.recovery.restore_record(seq, rec)

    def resume_view_change(self) -> None:
        self.recovery.resume_view_change()

    def behind_by(self) -> int:
        return self.s.behind_by()

    def certified_message(self, block: Block) -> CertifiedBlock:
        """Wrap a committed block (with its certificate) for sending to a replica that is behind."""
        return self.s.make(CertifiedBlock, block.header.seq, block.hash, block=block)


__all__ = ["T_COMMIT", "Action", "Broadcast", "Catchup", "Deliver", "Persist", "Replica", "Send", "ViewChanged"]
