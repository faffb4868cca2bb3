"""Which pooled writes a primary may propose: those whose blob is here with the size they state.

The backups vote for a block only once they hold every blob its writes record (node/availability.py),
so a write whose blob is not here is not proposed: its blob is fetched in the background, and the
write proposed once it is here, or refused (with its sender's later transactions, which could never
commit behind it) when no reachable validator holds it or it is not the size the write states.
A write no one votes for, proposed by every honest primary in turn, would hold the chain in view
changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from node.admission import Admission, size_mismatch
from node.availability import FETCH_TIMEOUT_S
from node.ipfs.blockstore import BlockStore
from node.ipfs.cid import CODEC_RAW, Cid
from node.mempool import Mempool, Refusal
from node.replication import Replicator
from node.sidecar import SidecarCache
from node.tx import KIND_GRANT, Tx, Write

log = logging.getLogger("medchain.validator")

MAX_BLOB_CHECKS = 256  # writes whose missing blob the producer fetches at once


class BlobChecks:
    def __init__(self, mempool: Mempool, admission: Admission, sidecars: SidecarCache, blobs: BlockStore,
                 replicator: Replicator, wake: Callable[[], None], byzantine: str | None = None) -> None:
        self.mempool, self.admission, self.sidecars, self.blobs = mempool, admission, sidecars, blobs
        self.replicator, self._wake, self.byzantine = replicator, wake, byzantine
        self.running: dict[bytes, asyncio.Task[None]] = {}  # writes whose blob is being fetched

    def size(self, txid: bytes, cid: Cid) -> int | None:
        """The size of a write's blob if it is here: its sidecar in the pool or the forwarded-sidecar
        cache, or stored (None if it is not)."""
        side = self.mempool.sidecar(txid)
        if side is None and cid.codec == CODEC_RAW:
            side = self.sidecars.get(cid.digest)
        if side is not None:
            return len(side)
        return self.blobs.blob_size(cid) if self.blobs.has(cid) else None

    def proposable(self, txs: list[Tx]) -> list[Tx]:
        """The batch without the writes whose blob is not here with the size they state, nor the later
        transactions of their senders. A missing blob is fetched in the background (its write is
        proposed once it is here); a blob of another size, or one no reachable validator holds, gets
        its write refused."""
        if self.byzantine in ("withhold", "missize"):
            return txs  # fault injection: a byzantine primary proposes them anyway
        if self.byzantine == "drop":  # fault injection: its own clients' transactions are never proposed
            txs = [t for t in txs if t.id not in self.admission.submitted_at]
        if self.byzantine in ("censor", "fill"):  # fault injection: every sender with an access change waiting is left out
            censored = {t.address for t in txs if t.kind == KIND_GRANT}
            txs = [t for t in txs if t.address not in censored]
        out: list[Tx] = []
        held_back: set[bytes] = set()
        for t in txs:
            if t.address in held_back:
                continue
            w = t.body
            if isinstance(w, Write):
                size = self.size(t.id, w.root)
                if size != w.size:
                    held_back.add(t.address)
                    if size is None:
                        self.check(t)
                    else:
                        self.withdraw(t, size_mismatch(w.root, size, w.size))
                    continue
            out.append(t)
        return out

    def check_bare(self, t: Tx) -> None:
        """A bare forwarded write (a dag-pb upload held elsewhere): its blob is fetched and checked now,
        at every validator, so a write no honest validator could propose leaves every pool (a backup
        holding it pending would suspect each honest primary that leaves it out)."""
        if isinstance(t.body, Write) and self.size(t.id, t.body.root) is None:
            self.check(t)

    def check(self, t: Tx) -> None:
        """Fetch a write's missing blob in the background (at most MAX_BLOB_CHECKS at once), then wake
        the producer, or refuse the write if the blob cannot be had or is not its size."""
        w = t.body
        if not isinstance(w, Write) or t.id in self.running or len(self.running) >= MAX_BLOB_CHECKS:
            return

        async def check() -> None:
            try:
                got = await self.replicator.ensure(w.root, FETCH_TIMEOUT_S, "vote")
                size = self.size(t.id, w.root)
                if not got or size is None:
                    self.withdraw(t, f"blob not held: {w.root} is held by no reachable validator")
                elif size != w.size:
                    self.withdraw(t, size_mismatch(w.root, size, w.size))
            finally:
                self.running.pop(t.id, None)
                self._wake()
        self.running[t.id] = asyncio.get_running_loop().create_task(check())

    def withdraw(self, t: Tx, reason: str) -> None:
        """Refuse a pending write that cannot be proposed, and its sender's later transactions."""
        for gone in self.mempool.withdraw(t):
            why = reason if gone.id == t.id else f"held back: nonce {t.nonce} of this sender was refused ({reason})"
            self.admission.forget(gone, Refusal.UNPROCESSABLE, why[:200])
        log.warning("refused pending write %s: %s", t.id.hex()[:16], reason)

    async def stop(self) -> None:
        checks = list(self.running.values())
        for t in checks:
            t.cancel()
        await asyncio.gather(*checks, return_exceptions=True)
