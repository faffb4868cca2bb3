"""Data availability before a vote: a backup prepares a block only once it holds the ciphertext of
every write the block records (the sidecars of Protocol 4).

Why: a commit certificate then proves more than an order. Each honest replica that sent PREPARE
(and so COMMIT) held every blob of the block, and 2f+1 COMMITs include f+1 honest ones: a
certified block's blobs are held by at least f+1 honest validators, so the repair path (bitswap
from holders) always finds them. Without the gate a byzantine primary could certify writes whose
ciphertext nobody holds, and the patient's data would be named on the chain and lost.

How: the driver asks `missing` for each block it executed on the replica's Execute; a backup that
lacks blobs parks its answer (`executed`, which makes the replica vote) here instead of giving it.
The sidecars usually arrive a moment later (a forwarded batch the block overtook): `recheck`
releases the answer then. After `GRACE_S` what is still missing is fetched from peers (bitswap);
once held, the answer is released, and if a blob cannot be had it is dropped, this replica does not
vote, and a block that 2f+1 others certify reaches it through its certificate (and its blobs through
repair). The gate holds no state the replica depends on: dropping a parked answer is always safe
(the primary's retransmission makes the replica ask again).

A blob held here (or fetched) whose size is not the one its write states means no vote either: the
signed write names its size, admission refuses a sidecar of another length, and a byzantine primary
must not record a false size by proposing the write itself. So a certified write's size was checked
against its blob by f+1 honest validators; repair then fetches by CID, which fixes the bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from node.execution import Executed
from node.ipfs.cid import Cid
from node.state import OK
from node.tx import Write

log = logging.getLogger("medchain.availability")

GRACE_S = 0.5  # a forwarded batch overtaken by its block arrives within this on a healthy network
FETCH_TIMEOUT_S = 5.0  # well under the view timeout's doublings: a stuck fetch does not hold a view
MAX_PARKED = 64  # pre-prepares waiting for blobs (the PBFT window is far smaller)

Held = Callable[[bytes, Cid], "int | None"]  # (txid, cid) -> the blob's size if held here (sidecar or stored)
Fetch = Callable[[Cid, float], Awaitable[bool]]  # fetch from peers within the timeout; True once held
Release = Callable[[Any], None]  # hand the parked answer to the consensus task


Want = tuple[bytes, Cid, int]  # a recorded write's (txid, cid, stated size)


def blobs_of(ex: Executed) -> list[Want]:
    """(txid, cid, size) for each write the block records (those that executed OK)."""
    out = []
    for t, c in zip(ex.txs, ex.codes, strict=True):
        if isinstance(t.body, Write) and c == OK:
            out.append((t.id, t.body.root, t.body.size))  # parses: Write.parse takes only a CIDv1 of sha2-256
    return out


class SizeMismatch(Exception):
    """A blob held here is not the size its write states: the block gets no vote from this replica."""


class _Parked:
    __slots__ = ("answer", "missing", "task")

    def __init__(self, answer: Any, missing: list[Want]) -> None:
        self.answer, self.missing = answer, missing
        self.task: asyncio.Task[None] | None = None


class AvailabilityGate:
    def __init__(self, held: Held, fetch: Fetch, release: Release, grace_s: float = GRACE_S,
                 fetch_timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self._held, self._fetch, self._release = held, fetch, release
        self.grace_s, self.fetch_timeout_s = grace_s, fetch_timeout_s
        self._parked: OrderedDict[bytes, _Parked] = OrderedDict()  # block hash -> waiting pre-prepare
        self.stats = {"parked": 0, "released_by_sidecar": 0, "released_by_fetch": 0, "fetched": 0,
                      "unavailable": 0, "dropped": 0, "size_mismatch": 0}

    def missing(self, ex: Executed) -> list[Want]:
        """The block's recorded writes whose blob is not here yet. Raises SizeMismatch if a blob
        that is here has another size than its write states."""
        return self._still_missing(blobs_of(ex))

    def _still_missing(self, wants: list[Want]) -> list[Want]:
        out = []
        for w in wants:
            size = self._held(w[0], w[1])
            if size is None:
                out.append(w)
            elif size != w[2]:
                self.stats["size_mismatch"] += 1
                raise SizeMismatch(f"blob {w[1]} is {size} bytes, its write {w[0].hex()[:16]} says {w[2]}")
        return out

    def parked(self) -> int:
        return len(self._parked)

    def park(self, block_hash: bytes, answer: Any, missing: list[Want]) -> None:
        """Hold the `answer` to the replica's Execute until the `missing` blobs are here; a block
        already parked (the replica asked again) changes nothing."""
        if block_hash in self._parked:
            return
        while len(self._parked) >= MAX_PARKED:
            _, old = self._parked.popitem(last=False)
            self._cancel(old)
            self.stats["dropped"] += 1
        p = _Parked(answer, missing)
        self._parked[block_hash] = p
        self.stats["parked"] += 1
        p.task = asyncio.get_running_loop().create_task(self._fetch_after_grace(block_hash, p))

    def recheck(self) -> None:
        """Sidecars arrived (a forwarded batch): release each parked answer now complete."""
        for h, p in list(self._parked.items()):
            try:
                p.missing = self._still_missing(p.missing)
            except SizeMismatch as exc:
                del self._parked[h]
                self._cancel(p)
                log.warning("not voting for block %s: %s", h.hex()[:16], exc)
                continue
            if not p.missing:
                del self._parked[h]
                self._cancel(p)
                self.stats["released_by_sidecar"] += 1
                self._release(p.answer)

    def forget(self, block_hash: bytes) -> None:
        """The block was decided without our vote (its certificate came): nothing to wait for."""
        p = self._parked.pop(block_hash, None)
        if p is not None:
            self._cancel(p)

    def close(self) -> None:
        for p in self._parked.values():
            self._cancel(p)
        self._parked.clear()

    @staticmethod
    def _cancel(p: _Parked) -> None:
        if p.task is not None and p.task is not asyncio.current_task():
            p.task.cancel()

    async def _fetch_after_grace(self, block_hash: bytes, p: _Parked) -> None:
        await asyncio.sleep(self.grace_s)
        if self._parked.get(block_hash) is not p:
            return
        try:
            todo = self._still_missing(p.missing)
            self.stats["fetched"] += len(todo)
            got = await asyncio.gather(*(self._fetch(cid, self.fetch_timeout_s) for _, cid, _ in todo),
                                       return_exceptions=True)
            if self._parked.get(block_hash) is not p:
                return  # released by sidecars meanwhile, or forgotten
            del self._parked[block_hash]
            self._still_missing([w for w, ok in zip(todo, got, strict=True) if ok is True])  # fetched: sizes
        except SizeMismatch as exc:
            self._parked.pop(block_hash, None)
            log.warning("not voting for block %s: %s", block_hash.hex()[:16], exc)
            return
        lacking = [w[1] for w, ok in zip(todo, got, strict=True) if ok is not True]
        if lacking:
            self.stats["unavailable"] += 1
            log.warning("not voting for block %s: %d blob(s) it records are held by no reachable peer "
                        "(first %s)", block_hash.hex()[:16], len(lacking), lacking[0])
            return
        self.stats["released_by_fetch"] += 1
        self._release(p.answer)
