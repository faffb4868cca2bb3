"""A peer's outbound queue, bounded in frames and in bytes: when full, the oldest frames go (PBFT
retransmits what still matters, heartbeats repeat). Bounded in frames alone, a peer that keeps its
connection open and never reads held 10,000 frames of up to 32 MiB each queued toward it (a review
queued 2 GB). The asyncio loop appends (and drops) and the trio thread takes: the queued bytes are
three counters, each written by one thread only, so no lock is needed."""

from __future__ import annotations

from collections import deque
from typing import Any

MAX_BYTES = 64 * 1024 * 1024  # per peer: several of the largest blocks


def _size(item: Any) -> int:
    """A direct queue's item is (time queued, frame); a gossip queue's, the payload."""
    return len(item[1]) if type(item) is tuple else len(item)


class FrameQueue(deque):
    def __init__(self, maxlen: int, max_bytes: int = MAX_BYTES) -> None:
        super().__init__(maxlen=maxlen)
        self.max_bytes = max_bytes
        self.added = self.dropped = 0  # the asyncio loop's
        self.taken = 0  # the trio thread's

    @property
    def queued_bytes(self) -> int:
        return self.added - self.dropped - self.taken

    def put(self, item: Any) -> int:
        """Append `item` (asyncio loop); the number of oldest frames dropped to make room."""
        drops = 0
        while self and (len(self) >= (self.maxlen or 0) or self.queued_bytes + _size(item) > self.max_bytes):
            try:
                old = super().popleft()
            except IndexError:  # the trio thread took the last one meanwhile
                break
            self.dropped += _size(old)
            drops += 1
        self.append(item)
        self.added += _size(item)
        return drops

    def popleft(self) -> Any:
        """Take the oldest frame (trio thread)."""
        item = super().popleft()
        self.taken += _size(item)
        return item
