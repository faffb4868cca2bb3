"""Crash recovery for the PBFT replica: what goes into the consensus log, and how a restart reloads it.

Before any of its own phase messages leaves, the replica asks the driver to persist (synced) a record
for that sequence: the view, the block, which messages it signed, the pre-prepare signature it
answered, and the highest-view prepared certificate it holds there (which survives the record being
rewritten in a later view: a restarted replica's view change must still carry it, or a new view
could drop a block that committed). The NEW-VIEW that installed the current view is persisted with
the view, so a restart is back in the same view with the same obligations (`fixed`, `floor`), and
its records of that view bind it again: it never signs two blocks for one (view, seq).

record = msgpack [view, block, [tag, ...], pp_sig, pcert]
pcert  = [] | [view, block, pp_sig, [[validator_index, prepare_sig], ...]]
"""

from __future__ import annotations

from dataclasses import dataclass

from node.block import Block, BlockError
from node.consensus.messages import (
    T_COMMIT,
    T_PREPARE,
    T_PREPREPARE,
    Commit,
    ConsensusError,
    NewView,
    Prepare,
    PrePrepare,
)
from node.consensus.state import Instance, Phase, PreparedCert, ReplicaState
from node.consensus.viewchange import ViewChanges
from node.wire import MAX_BLOCK_BYTES, WireError, decode_canonical, encode

MAX_RECORD_BYTES = 2 * MAX_BLOCK_BYTES + 64 * 1024


@dataclass(frozen=True)
class Record:
    view: int
    block: Block
    tags: tuple[int, ...]
    pp_sig: bytes
    pcert: tuple[PreparedCert, Block] | None


def decode_record(raw: bytes) -> Record:
    """A consensus-log record, or ConsensusError: a torn or corrupt log must stop the replica loudly."""
    try:
        r = decode_canonical(raw, MAX_RECORD_BYTES)
        if not (isinstance(r, list) and len(r) == 5 and type(r[0]) is int and isinstance(r[1], bytes)
                and isinstance(r[2], list) and all(type(t) is int for t in r[2]) and isinstance(r[3], bytes)
                and isinstance(r[4], list)):
            raise ConsensusError("record is [view, block, tags, pp_sig, pcert]")
        block = Block.decode(r[1])
        pcert = None
        if r[4]:
            pv, pblock_raw, ppp, preps = r[4]
            pblock = Block.decode(pblock_raw)
            if type(pv) is not int or not isinstance(ppp, bytes) or not isinstance(preps, list) or not all(
                    isinstance(p, list) and len(p) == 2 and type(p[0]) is int and isinstance(p[1], bytes)
                    for p in preps):
                raise ConsensusError("prepared certificate is [view, block, pp_sig, prepares]")
            cert = PreparedCert(pblock.header.seq, pv, pblock.header, ppp, tuple((p[0], p[1]) for p in preps))
            pcert = (cert, pblock)
        return Record(r[0], block, tuple(r[2]), r[3], pcert)
    except (WireError, BlockError, ValueError, TypeError) as exc:
        raise ConsensusError(f"consensus log record: {exc}") from None


class Recovery:
    """The replica's crash-recovery role, on the replica's one state: the records it persists before
    sending, and reloading them (and the NEW-VIEW of its view) after a restart."""

    def __init__(self, s: ReplicaState, views: ViewChanges) -> None:
        self.s = s
        self.views = views
        self.reinstalled: int | None = None  # the view whose persisted NEW-VIEW a restart reinstalled

    def record(self, seq: int, inst: Instance | None = None) -> bytes:
        """The consensus-log record for `seq` (of instance `inst`, default the one in the log)."""
        inst = inst if inst is not None else self.s.log[seq]
        assert inst.block is not None  # a record is written for our own message, which follows the block
        best = self.s.prepared.get(seq)
        pcert = [] if best is None else [best[0].view, best[1].encode(), best[0].pp_sig,
                                         [list(p) for p in best[0].prepares]]
        return encode([self.s.view, inst.block.encode(), sorted({m.tag for m in inst.mine}), inst.pp_sig, pcert])

    def reinstall(self, nv: NewView) -> bool:
        """After a restart: re-enter the view the persisted NEW-VIEW installed (checked again), with
        its obligations: the blocks it fixed above the head (a pre-prepare of another block there is
        refused), its floor, and the message itself (relayed to a replica still below the view). Also
        when the replica restarts in that view already, a block of it certified on its ledger (the
        driver starts it NORMAL then): without this, a byzantine primary could get it to prepare
        another block at a sequence the NEW-VIEW fixed, and a straggler could not be given the view."""
        if nv.view != self.s.view or nv.view == 0:
            return False
        phase = self.s.phase
        self.s.phase = Phase.VIEW_CHANGE  # on_new_view installs only a view being changed to
        before = self.s.view_changes
        self.s.bad_new_views.discard(nv.view)  # what is on our disk is judged afresh, not by the network's
        self.views.on_new_view(nv)
        if self.s.view_changes == before:
            self.s.bad_new_views.discard(nv.view)
            self.s.phase = phase
            return False
        self.s.view_changes = before  # the same view change, not another one
        self.reinstalled = nv.view
        return True

    def restore_record(self, seq: int, rec: Record) -> bool:
        """Reload one record. Its prepared certificate always counts (view changes carry it); its signed
        messages bind only in the view they were signed in, which it returns True for (the driver then
        re-executes the block). The next tick re-sends them: RFC 6979 signatures are deterministic, so
        they are byte for byte what was sent before."""
        if seq <= self.s.last_delivered or rec.block.header.seq != seq:
            return False
        if rec.pcert is not None:
            cert, block = rec.pcert
            cur = self.s.prepared.get(seq)
            if cert.seq == seq and len(cert.prepares) + 1 >= self.s.q and (cur is None or cur[0].view < cert.view):
                self.s.prepared[seq] = (cert, block)
        if rec.view != self.s.view or self.s.changing:
            return False
        inst = self.s.log.setdefault(seq, Instance())
        block = rec.block
        inst.digest, inst.block, inst.pp_sig = block.hash, block, rec.pp_sig
        if T_PREPREPARE in rec.tags and self.s.is_primary:
            inst.mine.append(self.s.make(PrePrepare, seq, block.hash, block=block))
            self.s.next_seq = max(self.s.next_seq, seq + 1)
        if T_PREPARE in rec.tags:
            prep = self.s.make(Prepare, seq, block.hash, pp_sig=rec.pp_sig)
            inst.prepares[self.s.index] = prep.sig
            inst.mine.append(prep)
        if T_COMMIT in rec.tags:
            c = self.s.make(Commit, seq, block.hash)
            inst.sent_commit = True
            inst.commits[self.s.index] = c.sig
            inst.mine.append(c)
        inst.sent_at = -(10**12)
        inst.backoff = self.s.retransmit_ms
        return True

    def resume_view_change(self) -> None:
        """After a restart in the middle of a view change: our VIEW-CHANGE goes out again on the next
        tick (rebuilt from the restored prepared certificates), or the change could never complete.
        A replica in a view above 0 whose NEW-VIEW it did not reinstall (a checkpoint installed, a
        crash between a block of the view and its NEW-VIEW) waits for it the same way (its heartbeat
        names the view before, so peers send it again): started NORMAL with none of the view's
        obligations, a byzantine primary could get it to prepare another block at a sequence the
        NEW-VIEW fixed (a review)."""
        if self.s.view > 0 and not self.s.changing and self.reinstalled != self.s.view:
            self.s.phase = Phase.VIEW_CHANGE
        if self.s.changing and self.s.own_vc is None:
            self.s.own_vc = self.views.build_view_change()
            self.s.vc_sent_at = -(10**12)
