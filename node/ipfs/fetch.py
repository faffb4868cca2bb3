"""Fetching whole UnixFS DAGs by root CID (one or many roots per session) from several peers: a pure schedule (time passed in).

The adapter asks ``requests(now)`` what to send (one want-block per (peer, CID), at most
``window`` in flight), reports what happened (``on_block``, ``on_dont_have``, ``on_bad_peer``)
and calls ``expire(now)`` on a timer. Every block handed to ``on_block`` has already been hashed
against its CID by the caller (bitswap rebuilds the CID from the data); a peer that sent bytes
matching none of our wants is reported with ``on_bad_peer`` and is not asked again.

Peer choice per block: peers not yet tried for that block, rotating, skipping bad peers. When
every usable peer said DONT_HAVE or timed out, the block waits ``retry_after`` seconds and the
round starts again (a replica may still be fetching it), until the caller's deadline.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .cid import CODEC_DAG_PB, Cid
from .unixfs import decode_pbnode

BLOCK_TIMEOUT = 5.0  # a want-block unanswered this long goes to the next peer
RETRY_AFTER = 0.5


class FetchError(Exception):
    """The DAG cannot be fetched (malformed, too large, no usable peer)."""


@dataclass
class _Flight:
    cid: Cid
    peer: str
    deadline: float


class DagFetch:
    def __init__(self, roots: Cid | list[Cid], peers: list[str], *, window: int = 128, max_bytes: int = 1 << 30,
                 max_blocks: int = 1 << 16, block_timeout: float = BLOCK_TIMEOUT,
                 retry_after: float = RETRY_AFTER) -> None:
        if not peers:
            raise FetchError("no peers to fetch from")
        self.roots = [roots] if isinstance(roots, Cid) else list(dict.fromkeys(roots))
        self.root = self.roots[0] if self.roots else None
        self.peers = list(dict.fromkeys(peers))
        self.window = window
        self.max_bytes, self.max_blocks = max_bytes, max_blocks
        self.block_timeout, self.retry_after = block_timeout, retry_after
        self.blocks: dict[bytes, tuple[Cid, bytes]] = {}  # multihash -> (cid, data), all verified
        self.todo: deque[Cid] = deque(self.roots)
        self.queued: set[bytes] = {r.multihash for r in self.roots}
        self._root_cid = {r.multihash: r for r in self.roots}
        self.flight: dict[bytes, _Flight] = {}
        self.tried: dict[bytes, set[str]] = {}
        self.waiting: dict[bytes, tuple[Cid, float]] = {}  # every peer tried: retry at time
        self.bad_peers: set[str] = set()
        self.stats = {"blocks": 0, "bytes": 0, "dont_have": 0, "timeouts": 0, "bad_blocks": 0}
        self._rr = 0
        self.failed: FetchError | None = None  # what on_block raised, when a caller records it

    @property
    def done(self) -> bool:
        return not (self.todo or self.flight or self.waiting)

    def usable(self) -> list[str]:
        return [p for p in self.peers if p not in self.bad_peers]

    def add_peer(self, peer: str) -> None:
        if peer not in self.peers:
            self.peers.append(peer)

    # ---- what to send ----------------------------------------------------------------------------
    def requests(self, now: float) -> list[tuple[str, Cid]]:
        for mh, (cid, at) in list(self.waiting.items()):
            if at <= now:
                del self.waiting[mh]
                self.tried.pop(mh, None)
                self.todo.appendleft(cid)
        usable = self.usable()
        if not usable:
            raise FetchError(f"no usable peer left for {self.root} (bad: {sorted(self.bad_peers)})")
        out = []
        while self.todo and len(self.flight) < self.window:
            cid = self.todo.popleft()
            mh = cid.multihash
            tried = self.tried.setdefault(mh, set())
            fresh = [p for p in usable if p not in tried]
            if not fresh:  # every peer asked: wait, then start over
                self.waiting[mh] = (cid, now + self.retry_after)
                continue
            peer = fresh[self._rr % len(fresh)]
            self._rr += 1
            tried.add(peer)
            self.flight[mh] = _Flight(cid, peer, now + self.block_timeout)
            out.append((peer, cid))
        return out

    # ---- what happened ---------------------------------------------------------------------------
    def on_block(self, peer: str, cid: Cid, data: bytes) -> bool:
        """A verified block; False if it is not one of ours (already held or never wanted)."""
        mh = cid.multihash
        if mh in self.blocks or mh not in self.queued:
            return False
        self.flight.pop(mh, None)
        self.waiting.pop(mh, None)
        self.blocks[mh] = (self._root_cid.get(mh, cid), data)  # roots keep the CID they were asked by
        self.stats["blocks"] += 1
        self.stats["bytes"] += len(data)
        if self.stats["bytes"] > self.max_bytes or len(self.blocks) > self.max_blocks:
            raise FetchError(f"{self.root}: DAG larger than {self.max_bytes} bytes / {self.max_blocks} blocks")
        if cid.codec == CODEC_DAG_PB:
            try:
                links = decode_pbnode(data).links
            except ValueError as exc:
                raise FetchError(f"{self.root}: block {cid} is not valid dag-pb: {exc}") from None
            for link in links:
                if link.hash.multihash not in self.queued:
                    self.queued.add(link.hash.multihash)
                    self.todo.append(link.hash)
        return True

    def on_dont_have(self, peer: str, cid: Cid) -> None:
        f = self.flight.get(cid.multihash)
        if f is not None and f.peer == peer:
            self.stats["dont_have"] += 1
            del self.flight[cid.multihash]
            self.todo.appendleft(f.cid)

    def on_bad_peer(self, peer: str) -> None:
        """``peer`` sent bytes that match none of our wants: never ask it again; its blocks go
        to the next peer now."""
        self.stats["bad_blocks"] += 1
        self.bad_peers.add(peer)
        for mh, f in list(self.flight.items()):
            if f.peer == peer:
                del self.flight[mh]
                self.todo.appendleft(f.cid)

    def expire(self, now: float) -> list[tuple[str, Cid]]:
        """Wants that timed out; returned so the adapter can cancel them at that peer."""
        out = []
        for mh, f in list(self.flight.items()):
            if f.deadline <= now:
                self.stats["timeouts"] += 1
                del self.flight[mh]
                self.todo.appendleft(f.cid)
                out.append((f.peer, f.cid))
        return out

    def next_deadline(self) -> float | None:
        times = [f.deadline for f in self.flight.values()] + [at for _, at in self.waiting.values()]
        return min(times) if times else None

    def in_flight_with(self, peer: str) -> bool:
        return any(f.peer == peer for f in self.flight.values())
