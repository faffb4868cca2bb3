"""Client transactions on their way to the other validators: the driver's forwarding stage.

A validator admits its clients' transactions and forwards them, with their sidecars, so every
validator holds them (and their blobs) before a block names them:
- a steady stream goes out FORWARD_S at a time (py-libp2p costs about the same CPU per message
  whatever its size), the first submission after a quiet spell within FORWARD_SOON_S;
- what stays pending past REFORWARD_S goes to the primary again (a forwarded batch can be lost);
- the transaction a backup watches for censorship goes to the primary itself at the end of its grace
  and at each skip (node/consensus/censor.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from node.admission import REFORWARD_S, Admission
from node.consensus import Replica
from node.consensus.censor import CensorWatch
from node.crypto import ecdsa
from node.mempool import Mempool
from node.pipeline import Pipeline
from node.sidecar import forward_messages

MAX_REFORWARD = 4000
FORWARD_SOON_S = 0.005  # client transactions after a quiet spell are forwarded this soon
# client transactions go to the other validators in one message per peer this often: py-libp2p
# spends ~0.5 ms of CPU per message at each end, whatever its size, so under load fewer and fuller
# messages (50 -> 150 ms: 9% less CPU per write at 700 writes/s, and a lower p99, bench/README.md)
FORWARD_S = 0.15
QUIET_S = 0.05  # a client submission after this long without one is forwarded within FORWARD_SOON_S


class Forwarder:
    def __init__(self, admission: Admission, mempool: Mempool, pipeline: Pipeline, replica: Callable[[], Replica],
                 send: Callable[[int, bytes], None], broadcast: Callable[[bytes], None],
                 networked: Callable[[], bool], dropping: bool = False) -> None:
        self.admission, self.mempool, self.pipeline = admission, mempool, pipeline
        self._replica = replica  # the driver's current replica (a full disk's resume builds another)
        self._send, self._broadcast, self._networked = send, broadcast, networked
        self.dropping = dropping  # fault injection (MEDCHAIN_BYZANTINE=drop): its clients' transactions go nowhere
        self.early: asyncio.TimerHandle | None = None
        self.last_flush = self.last_client = 0.0
        self.last_reforward = time.monotonic()
        self._pushed: tuple[int, bytes, int] | None = None  # view, watched transaction, skips: last sent

    def quiet(self, now: float) -> bool:
        """Whether a client submission now ends a quiet spell (its forward then goes out at once)."""
        return now - self.last_client >= QUIET_S

    def submitted(self, now: float, admitted: bool, quiet: bool) -> None:
        """A client submission was handled at `now`: the first admitted one after a quiet spell is
        forwarded within FORWARD_SOON_S, not at the next FORWARD_S, so a lightly loaded network (a
        phone writing and waiting for each commit) commits sooner; a refused one (and its retry) does
        not end the spell."""
        if admitted:
            self.last_client = now
        if quiet and self.admission.forward and self.early is None:
            self.early = asyncio.get_running_loop().call_later(FORWARD_SOON_S, self.flush)

    def flush(self) -> None:
        """Send what clients gave this validator since the last flush to every other validator."""
        if self.early is not None:
            self.early.cancel()
            self.early = None
        if self._networked() and self.admission.forward:
            self.last_flush = time.monotonic()
            for msg in forward_messages(self.admission.take_forward()):
                self._broadcast(msg)

    def tick(self, now: float, tick_s: float) -> None:
        """The ticker's turn: a round of forwards every FORWARD_S, re-forwards every REFORWARD_S."""
        if now - self.last_flush >= FORWARD_S - tick_s / 2:
            self.flush()
        if now - self.last_reforward >= REFORWARD_S:
            self.last_reforward = now
            self.reforward(now)

    def reforward(self, now: float) -> None:
        """A forwarded batch can be lost (a peer down or restarting): transactions still pending here
        after REFORWARD_S go to the primary again, so a client's accepted transaction is not stranded.
        Every validator, the primary too, forgets here what left the pool without a commit."""
        if self.dropping:
            return
        replica = self._replica()
        primary = replica.is_primary
        # first after REFORWARD_S, then every 4 x REFORWARD_S while it stays pending, so an overloaded
        # primary is not flooded with copies; ones already proposed are not resent
        proposed = set() if primary else self.pipeline.proposed_ids()
        adm = self.admission
        stale: list[bytes] = []
        for t, due in list(adm.pending_since.items()):
            if t not in self.mempool:  # dropped without a commit here (its nonce committed with another body)
                del adm.pending_since[t]
                adm.submitted_at.pop(t, None)  # a subset of pending_since's ids
            elif not primary and due <= now and t not in proposed and len(stale) < MAX_REFORWARD:
                stale.append(t)
        if primary:
            return
        for t in stale:
            adm.pending_since[t] = now + REFORWARD_S * 4
        items = [(self.mempool.by_id[t].raw, self.mempool.sidecar(t)) for t in stale]
        for msg in forward_messages(items):
            self._send(replica.primary, msg)

    def push_watched(self, c: CensorWatch) -> None:
        """PBFT's backup sends a request it waits on to the primary itself: the watched transaction
        goes to the primary (with its sidecar) when its grace runs out and again at each skip, so a
        primary that lacked it (a forward lost, or its nonce taken by a body it cannot propose, which
        this one supersedes: node/admission.py) has it before a third skip."""
        if c.target is None or c.horizon is None or not self._networked() or self.dropping \
                or (c.view, c.target, c.skipped) == self._pushed:
            return
        self._pushed = (c.view, c.target, c.skipped)
        tx = self.mempool.by_id.get(ecdsa.sha256(c.target))
        if tx is not None:
            for msg in forward_messages([(tx.raw, self.mempool.sidecar(tx.id))]):
                self._send(self._replica().primary, msg)
