"""View change (Castro & Liskov section 4.4, the signature variant) as pure functions.

A replica that gives up on view v broadcasts VIEW-CHANGE(v+1) carrying
- its last committed block (seq, hash) with that block's commit certificate: everything at or below
  it is final, so the new view starts above the highest such block in the set (PBFT's min-s);
- P: for every sequence above that, the prepared certificate of the highest view it prepared in:
  the block header, the primary's pre-prepare signature and 2f prepare signatures. Blocks ride
  along outside the signed body so the new primary can re-propose them.

The new primary collects 2f+1 of them and broadcasts NEW-VIEW with those view changes (without
their blocks); every replica recomputes the same selection from them (``select``), so a byzantine
new primary cannot choose differently. Per sequence the highest-view prepared certificate wins
(PBFT's rule); blocks form a hash chain, so the selection is the longest prefix whose prev hashes
link from the base block. That prefix contains every block that may have committed: a replica
sends COMMIT for a block only once the block before it is delivered here and is its parent, so a
committed block's parent is committed and (by PBFT's invariant) selected too.

`ViewChanges` is the replica's role that runs all this on its state (node/consensus/state.py): when
to suspect the view and when to leave it, the messages of a view change, and installing the new view.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from node.block import GENESIS_PREV, Block, BlockError, Header, quorum, vote_digest
from node.consensus.actions import Action, Broadcast, Send, ViewChanged
from node.consensus.messages import (
    T_PREPARE,
    T_PREPREPARE,
    ConsensusError,
    Message,
    NewView,
    Suspect,
    ViewChange,
    signed_digest,
)
from node.consensus.state import Ignored, Phase, PreparedCert, ReplicaState, Verifier, ViewChangeInfo
from node.crypto import ecdsa
from node.wire import MAX_BLOCK_BYTES, WireError, decode_canonical, encode, value_budget

VC_BLOCK_BUDGET = 3 * MAX_BLOCK_BYTES  # prepared blocks a view change carries (the message limit is 4 blocks)


def make_body(last_hash: bytes, cert_view: int, cert: tuple[tuple[int, bytes], ...],
              prepared: list[PreparedCert]) -> bytes:
    return encode([last_hash, cert_view, [list(c) for c in cert], [p.wire() for p in prepared]])


def strip(vc: ViewChange) -> bytes:
    """The view change without its blocks, as the new view carries it (the signature still holds)."""
    return ViewChange(vc.view, vc.seq, vc.digest, vc.sender, vc.sig, vc.body, ()).encode()


def _quorum_signed(pairs: list[object], digest: bytes, n: int, verify: Verifier, exclude: int = -1) -> set[int] | None:
    signers: set[int] = set()
    for p in pairs:
        if not (isinstance(p, list) and len(p) == 2 and type(p[0]) is int and isinstance(p[1], bytes)):
            return None
        i, sig = p
        if not 0 <= i < n or i == exclude or i in signers or len(sig) != 64 or not verify(i, digest, sig):
            return None
        signers.add(i)
    return signers


def parse(vc: ViewChange, chain_id: str, n: int, verify: Verifier, window: int = 1 << 16) -> ViewChangeInfo:
    """Check a view change's certificates (its own signature is checked by the caller); raise
    ConsensusError on anything that does not hold. Blocks are optional (a view change carries as many
    of its prepared blocks as fit in one message; a new primary lacking one cannot lead the view).
    Prepared entries lie in (vc.seq, vc.seq + window]: a replica prepares only within its window
    above its stable checkpoint, which is at or below what it delivered. Without that bound a view
    change could carry the chain's whole history of genuine certificates, each verified."""
    q = quorum(n)
    try:
        body = decode_canonical(vc.body, len(vc.body), value_budget(vc.body))
    except WireError as exc:
        raise ConsensusError(f"view change body: {exc}") from None
    if not (isinstance(body, list) and len(body) == 4 and isinstance(body[0], bytes) and len(body[0]) == 32
            and type(body[1]) is int and isinstance(body[2], list) and isinstance(body[3], list)):
        raise ConsensusError("view change body is [last_hash, cert_view, cert, prepared]")
    last_hash, cert_view, cert, plist = body
    if vc.seq == 0:
        if last_hash != GENESIS_PREV or cert:
            raise ConsensusError("a view change from height 0 carries no certificate")
    else:
        signers = _quorum_signed(cert, vote_digest(chain_id, cert_view, vc.seq, last_hash), n, verify)
        if signers is None or len(signers) < q:
            raise ConsensusError("the last committed block's certificate does not verify")
    if len(plist) > window:
        raise ConsensusError(f"more than {window} prepared entries")
    prepared: dict[int, PreparedCert] = {}
    for e in plist:
        if not (isinstance(e, list) and len(e) == 5 and type(e[0]) is int and type(e[1]) is int
                and isinstance(e[2], bytes) and isinstance(e[3], bytes) and isinstance(e[4], list)):
            raise ConsensusError("prepared entry is [seq, view, header, pp_sig, prepares]")
        seq, view, hraw, pp_sig, preps = e
        try:
            header = Header.decode(hraw)
        except BlockError as exc:
            raise ConsensusError(f"prepared header: {exc}") from None
        if seq <= vc.seq or seq > vc.seq + window or seq in prepared or not 0 <= view < vc.view \
                or header.seq != seq or header.view > view:
            raise ConsensusError("prepared entry out of range or repeated")
        primary = view % n
        if not verify(primary, signed_digest(T_PREPREPARE, chain_id, view, seq, header.hash), pp_sig):
            raise ConsensusError("prepared entry: bad pre-prepare signature")
        signers = _quorum_signed(preps, signed_digest(T_PREPARE, chain_id, view, seq, header.hash), n, verify,
                                 exclude=primary)
        if signers is None or len(signers) + 1 < q:
            raise ConsensusError("prepared entry: fewer than 2f valid prepares")
        prepared[seq] = PreparedCert(seq, view, header, pp_sig, tuple((p[0], p[1]) for p in preps))
    blocks: dict[bytes, Block] = {}
    digests = {p.digest for p in prepared.values()}
    if sum(len(raw) for raw in vc.blocks) > VC_BLOCK_BUDGET:  # what an honest sender packs (build_view_change)
        raise ConsensusError(f"view change carries more than {VC_BLOCK_BUDGET} bytes of blocks")
    for raw in vc.blocks:
        try:
            b = Block.decode(raw)
        except BlockError as exc:
            raise ConsensusError(f"view change block: {exc}") from None
        if b.hash not in digests:
            raise ConsensusError("view change carries a block it did not prepare")
        if not b.check_tx_root():  # the prepares sign the header: transactions swapped under it
            raise ConsensusError("view change block: its transactions do not match its header's tx_root")
        blocks[b.hash] = b
    return ViewChangeInfo(vc, vc.seq, last_hash, prepared, blocks, cert_view,
                          tuple((c[0], c[1]) for c in cert))


@dataclass(frozen=True)
class Selection:
    base_seq: int  # everything at or below is committed (a certificate exists)
    base_hash: bytes
    chain: tuple[tuple[int, bytes], ...]  # (seq, digest) the new view re-proposes, in order from base_seq + 1
    base_cert_view: int = 0
    base_cert: tuple[tuple[int, bytes], ...] = ()

    @property
    def top(self) -> int:
        return self.chain[-1][0] if self.chain else self.base_seq


def select(infos: list[ViewChangeInfo]) -> Selection:
    """The deterministic new-view decision from 2f+1 checked view changes."""
    base = max(infos, key=lambda i: (i.last_seq, i.last_hash))
    best: dict[int, PreparedCert] = {}
    for info in infos:
        for seq, p in info.prepared.items():
            cur = best.get(seq)
            if seq > base.last_seq and (cur is None or (p.view, p.digest) > (cur.view, cur.digest)):
                best[seq] = p
    chain: list[tuple[int, bytes]] = []
    prev, seq = base.last_hash, base.last_seq + 1
    while seq in best and best[seq].header.prev_hash == prev:
        prev = best[seq].digest
        chain.append((seq, prev))
        seq += 1
    return Selection(base.last_seq, base.last_hash, tuple(chain), base.cert_view, base.cert)


def parse_new_view_body(body: bytes) -> list[ViewChange]:
    from node.consensus.messages import decode_message  # local: messages imports nothing from here

    try:
        raws = decode_canonical(body, len(body), value_budget(body))
    except WireError as exc:
        raise ConsensusError(f"new view body: {exc}") from None
    if not isinstance(raws, list) or not all(isinstance(r, bytes) for r in raws):
        raise ConsensusError("new view body is a list of view changes")
    out = []
    for r in raws:
        m = decode_message(r)
        if not isinstance(m, ViewChange):
            raise ConsensusError("new view body holds a message that is not a view change")
        out.append(m)
    return out


def body_hash(body: bytes) -> bytes:
    return ecdsa.sha256(body)


class Ordering(Protocol):
    """What installing a new view asks of the normal case (node.consensus.replica.Replica)."""

    def deliver(self) -> list[Action]: ...

    def pre_prepare(self, block: Block) -> list[Action]: ...

    def on_message(self, msg: Message) -> list[Action]: ...


class ViewChanges:
    """The replica's view-change role, on the replica's one state: the view timer, suspecting the view,
    leaving it, gathering view changes, the new primary's NEW-VIEW, installing a view, the primary's
    equivocation."""

    def __init__(self, s: ReplicaState, ordering: Ordering) -> None:
        self.s = s
        self.ordering = ordering

    # ---- suspicion: the view timer ran out -------------------------------------------------------------
    def suspect(self) -> list[Action]:
        """Our view timer ran out: say so (SUSPECT, again with each heartbeat until something is delivered).
        The view changes once 2f+1 replicas say so, not on one timer: a replica whose timer ran out just
        before the view went on for the others would otherwise be left alone in a view nobody joins."""
        out: list[Action] = []
        if self.s.phase is Phase.NORMAL:
            self.s.phase = Phase.SUSPECTING
            out.append(Broadcast(self.s.make(Suspect, self.s.last_delivered, self.s.last_hash)))
        return out + self._suspicion_ripe()

    def on_suspect(self, msg: Suspect) -> list[Action]:
        """A peer's suspicion of this view counts if it is stuck where we are or beyond (its SUSPECT's
        seq is what it had delivered): one from below our last progress is stale, the view went on
        since (empty blocks are not progress, so suspicion of a primary making only those holds). A
        byzantine replica replaying an honest one's old SUSPECT beside its own forced a view change
        at a moment of its choosing, 1,200 blocks later."""
        if msg.view != self.s.view or self.s.changing:
            return []
        if msg.seq < self.s.progress_seq:
            self.s.ignore(Ignored.OUTSIDE_WINDOW)
            return []
        self.s.suspects[msg.sender] = self.s.now_ms
        return self._suspicion_ripe()

    def _suspicion_ripe(self) -> list[Action]:
        window = 2 * self.s.status_ms  # a SUSPECT counts while its sender repeats it with its heartbeats
        others = {j for j, t in self.s.suspects.items() if self.s.now_ms - t <= window}
        others |= {j for v, vs in self.s.vcs.items() if v > self.s.view for j in vs if j != self.s.index}
        if self.s.phase is Phase.NORMAL and len(others) > self.s.f:
            return self.suspect()  # f+1 suspect the view: at least one honest one does; join it
        if self.s.phase is Phase.SUSPECTING and len(others) + 1 >= self.s.q:
            return self.start_view_change(self.s.view + 1)
        return []

    def _timeout(self) -> int:
        """The view-change timeout: view_timeout_ms, or 4x the recent time between deliveries while work
        waited if that is longer (an overloaded primary is slow, not faulty: changing view would only
        add work), at most 8x; doubled for each view change that brought no delivery."""
        base = min(max(self.s.view_timeout_ms, 4 * int(self.s.round_ema)), 8 * self.s.view_timeout_ms)
        return base << min(self.s.vc_attempt, 6)

    def timer(self, now_ms: int, pending: bool) -> list[Action]:
        """The view-change timer, run on each tick: suspect the view (or, in a view change, ask for the
        next one) once it ran out; it runs only while work waits (`pending`, or blocks in flight)."""
        # heard: sent us something within two heartbeats. Counted over the whole timeout instead, a replica
        # cut off just after the view slowed down ran out its timer before it noticed the cut, and left alone.
        window = min(self.s.view_timeout_ms, 2 * self.s.status_ms)
        heard = sum(1 for t in self.s.heard.values() if now_ms - t <= window)
        if self.s.changing:
            # PBFT: the timer for the next view starts once 2f+1 replicas are in this view change, and here it
            # runs only while we hear 2f others: cut off or paused we could not have received the NEW-VIEW, and
            # a replica that escalated then would be stranded in a view the others (working in the one it
            # missed) never join; it may not act in a lower view again (its VIEW-CHANGE still counts there).
            # A replica asking for a later view has given up on this one too: counting it lets the others
            # reach a replica left behind in a higher view instead of waiting for its VIEW-CHANGE here.
            given_up = {s for v, vs in self.s.vcs.items() if v >= self.s.view for s in vs}
            if heard < self.s.q - 1 or len(given_up) < self.s.q:
                self.s.vc_started = now_ms  # the timer starts (again) from here
                return []
            if now_ms - self.s.vc_started >= self._timeout():
                return self.start_view_change(self.s.view + 1)
            return []
        if not pending and not any(i.block is not None for i in self.s.log.values()):
            self.s.progress_at = now_ms  # nothing waiting: the timer is not running
            return []
        if self.s.behind_by() > 0 or heard < self.s.q - 1:
            # the others are ahead (we must catch up, the view is live), or we cannot hear 2f of them (cut
            # off: a view change could not complete, and a replica that raced ahead alone could not rejoin)
            self.s.progress_at = now_ms
            return []
        if now_ms - self.s.progress_at >= self._timeout():
            return self.suspect()
        return []

    # ---- view change -----------------------------------------------------------------------------------
    def start_view_change(self, new_view: int) -> list[Action]:
        """Stop accepting view `self.s.view` and ask for `new_view` (its primary will gather 2f+1 of these)."""
        if new_view <= self.s.view and (self.s.changing or new_view < self.s.view):
            return []
        if self.s.changing or new_view > self.s.view:
            self.s.vc_attempt += 1
        self.s.view, self.s.phase = new_view, Phase.VIEW_CHANGE
        self.s.suspects = {}
        self.s.vc_started = self.s.now_ms
        self.s.early_view, self.s.early_keys, self.s.early_bytes = [], set(), 0
        self.s.fixed, self.s.new_view_msg = {}, None
        self.s.log = {s: i for s, i in self.s.log.items() if s <= self.s.last_delivered}
        vc = self.build_view_change()
        self.s.own_vc, self.s.vc_sent_at = vc, self.s.now_ms
        out: list[Action] = [ViewChanged(new_view, False), Broadcast(vc)]
        return out + self._maybe_new_view()

    def build_view_change(self) -> ViewChange:
        certs = [p for _, (p, _) in sorted(self.s.prepared.items())]
        body = make_body(self.s.last_hash, self.s.last_cert[0], tuple(self.s.last_cert[1]), certs)
        blocks, size = [], 0
        for _, (_, b) in sorted(self.s.prepared.items()):  # the lowest first, within what one message may carry
            raw = b.encode()
            if size + len(raw) > VC_BLOCK_BUDGET:
                break
            blocks.append(raw)
            size += len(raw)
        vc = self.s.make(ViewChange, self.s.last_delivered, body_hash(body), body=body, blocks=tuple(blocks))
        info = ViewChangeInfo(vc, self.s.last_delivered, self.s.last_hash, {p.seq: p for p in certs},
                              {b.hash: b for _, b in self.s.prepared.values()}, self.s.last_cert[0],
                              tuple(self.s.last_cert[1]))
        self.s.vcs.setdefault(self.s.view, {})[self.s.index] = info
        return vc

    def on_view_change(self, msg: ViewChange) -> list[Action]:
        if msg.view < self.s.view or (msg.view == self.s.view and not self.s.changing):
            if self.s.is_primary and msg.view == self.s.view and self.s.new_view_msg is not None:
                # a straggler: it missed our NEW-VIEW. Once per two heartbeats per sender (as a STATUS
                # gets it): a byzantine one repeating its VIEW-CHANGE had one NEW-VIEW queued per copy
                sent = self.s.nv_answered.get(msg.sender)
                if sent is None or self.s.now_ms - sent >= 2 * self.s.status_ms:
                    self.s.nv_answered[msg.sender] = self.s.now_ms
                    return [Send(msg.sender, self.s.new_view_msg)]
            return []
        if msg.view > self.s.view + 4 * self.s.n or msg.sender in self.s.vcs.get(msg.view, {}):
            return []  # bounded: a byzantine replica cannot make us hold view changes for endless views
        if msg.view % self.s.n != self.s.index:  # only that view's primary needs the blocks: not even decoded
            msg = replace(msg, blocks=())
        try:
            info = parse(msg, self.s.chain_id, self.s.n, self.s.verify, self.s.window)
        except ConsensusError:
            self.s.ignore(Ignored.BAD_VIEW_CHANGE)
            return []
        self.s.vcs.setdefault(msg.view, {})[msg.sender] = info
        out: list[Action] = []
        # f+1 replicas moved past our view: at least one is honest, so follow to the lowest such view
        later = {s: v for v, vs in self.s.vcs.items() if v > self.s.view for s in vs if s != self.s.index}
        if len(later) >= self.s.f + 1:
            out += self.start_view_change(min(later.values()))
        return out + self._maybe_new_view()

    def _maybe_new_view(self) -> list[Action]:
        vs = self.s.vcs.get(self.s.view, {})
        if not (self.s.changing and self.s.is_primary and len(vs) >= self.s.q):
            return []
        infos = [vs[s] for s in sorted(vs)]
        body = encode([strip(i.msg) for i in infos])
        nv = self.s.make(NewView, 0, body_hash(body), body=body)
        blocks = {h: b for i in infos for h, b in i.blocks.items()}
        acts = self._install(nv, select(infos), blocks)
        # the NEW-VIEW leaves after ViewChanged (which the driver persists first, with the NEW-VIEW):
        # a primary killed in between would otherwise build another one for the view after restart
        return acts[:1] + [Broadcast(nv)] + acts[1:]

    def on_new_view(self, msg: NewView) -> list[Action]:
        w = msg.view
        if msg.sender != w % self.s.n or w < self.s.view or (w == self.s.view and not self.s.changing):
            return []
        if w > self.s.view + 4 * self.s.n:
            return []  # bounded as view changes are
        if w in self.s.bad_new_views:
            # that view's primary signed a NEW-VIEW that failed (every check below depends on nothing
            # else): it is byzantine, the view ends by timeout; its next ones are not paid for again
            self.s.ignore(Ignored.BAD_NEW_VIEW)
            return []
        try:
            vcs = parse_new_view_body(msg.body)
            # counted before any signature is checked: one view change and 64 certificates cost ~200
            # checks, and a byzantine primary of a far view could send such NEW-VIEWs without end
            if len({vc.sender for vc in vcs if vc.view == w and 0 <= vc.sender < self.s.n}) < self.s.q:
                raise ConsensusError("new view holds fewer than 2f+1 view changes")
            infos, senders = [], set()
            for vc in vcs:
                if vc.view != w or vc.sender in senders or not 0 <= vc.sender < self.s.n or \
                        not self.s.verify(vc.sender, vc.signing_digest(self.s.chain_id), vc.sig):
                    raise ConsensusError("new view holds a bad or repeated view change")
                senders.add(vc.sender)
                infos.append(parse(vc, self.s.chain_id, self.s.n, self.s.verify, self.s.window))
        except ConsensusError:
            self.s.ignore(Ignored.BAD_NEW_VIEW)
            self.s.bad_new_views.add(w)
            return []
        self.s.view = w
        self.s.bad_new_views = {v for v in self.s.bad_new_views if v > w}
        return [ViewChanged(w, False)] + self._install(msg, select(infos), {})

    def _install(self, nv: NewView, sel: Selection, blocks: dict[bytes, Block]) -> list[Action]:
        self.s.phase, self.s.new_view_msg = Phase.NORMAL, nv
        self.s.suspects = {}
        # the others relay it only to a replica still below the view two heartbeats on (it missed the
        # primary's broadcast), not to every one the broadcast is still on its way to
        self.s.nv_sent = {} if self.s.is_primary else dict.fromkeys(range(self.s.n), self.s.now_ms - 2 * self.s.status_ms)
        self.s.view_changes += 1
        self.s.fixed = {s: d for s, d in sel.chain if s > self.s.last_delivered}
        self.s.floor = sel.base_seq
        self.s.log = {s: i for s, i in self.s.log.items() if s <= self.s.last_delivered}
        self.s.next_seq = max(self.s.last_delivered, sel.top) + 1
        self.s.progress_at = self.s.now_ms
        self.s.vcs = {v: vs for v, vs in self.s.vcs.items() if v > self.s.view}
        own = {b.hash: b for _, b in self.s.prepared.values()}
        chain = [own.get(d) or blocks.get(d) for s, d in sel.chain if s > self.s.last_delivered]
        out: list[Action] = [ViewChanged(self.s.view, True, tuple(b for b in chain if b is not None), nv.encode())]
        base = own.get(sel.base_hash) or blocks.get(sel.base_hash)
        if sel.base_seq == self.s.last_delivered + 1 and base is not None and sel.base_cert:
            # the base may be certified only inside a view change (its holder need not serve it): we
            # prepared it, so we hold the block; with that certificate it is ours to deliver
            self.s.certified[sel.base_seq] = base.with_cert(sel.base_cert, sel.base_cert_view)
            out += self.ordering.deliver()
        if self.s.is_primary:
            for b in chain:
                if b is None:
                    break  # a view change could not carry it: this view times out, a later primary leads
                out += self.ordering.pre_prepare(b)
        early, self.s.early_view, self.s.early_keys, self.s.early_bytes = self.s.early_view, [], set(), 0
        for m in early:
            out += self.ordering.on_message(m)
        return out

    # ---- evidence ---------------------------------------------------------------------------------------
    def primary_equivocated(self, seq: int, d1: bytes, s1: bytes, d2: bytes, s2: bytes) -> list[Action]:
        self.s.add_evidence("equivocating-primary", self.s.primary, T_PREPREPARE, self.s.view, seq, (d1, s1), (d2, s2))
        return self.start_view_change(self.s.view + 1)  # proof in hand: no need to wait for the timer
