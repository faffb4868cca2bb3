"""What standalone uploads may hold on a validator's disk before a write pins them (pure bookkeeping;
the API asks it before storing an upload, the commit stage tells it what a block pinned).

An upload that no committed write names stays for the collection grace (`upload_grace_s`), so its
bytes are counted for that long, per uploading account and in all, unless a write pins it sooner.
Without a bound one account stored ~113 MB/s, as fast as its sender rate let it, and could fill a
validator's disk; without the release on pin, Sybil accounts' honest-looking uploads could keep
everyone's at 503 for the whole grace."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

MIB = 1024 * 1024
GIB = 1024 * MIB
MIN_CHARGE = 4096  # an upload counts at least this: the log's entries are bounded by the total too


class UploadBudget:
    def __init__(self, window_s: float, per_account: int, total: int) -> None:
        self.window_s, self.per_account, self.total = window_s, per_account, total
        self._log: deque[tuple[float, bytes]] = deque()  # (time taken, root multihash), oldest first
        self._live: dict[bytes, tuple[bytes, int]] = {}  # root -> (account, bytes): counted, not pinned
        self._by: dict[bytes, int] = {}
        self.bytes = 0

    @classmethod
    def for_params(cls, grace_s: float, max_blob_bytes: int) -> UploadBudget:
        """At least 32 of the largest uploads per account, and 16 accounts' worth in all (>= 1 GiB)."""
        per_account = max(64 * MIB, 32 * max_blob_bytes)
        return cls(grace_s, per_account, max(GIB, 16 * per_account))

    def _forget(self, root: bytes) -> None:
        entry = self._live.pop(root, None)
        if entry is None:
            return
        who, n = entry
        left = self._by[who] - n
        if left:
            self._by[who] = left
        else:
            del self._by[who]
        self.bytes -= n

    def _expire(self, now: float) -> None:
        while self._log and self._log[0][0] + self.window_s <= now:
            self._forget(self._log.popleft()[1])

    def refusal(self, who: bytes, size: int, now: float) -> tuple[int, str, float] | None:
        """None if `who` may upload `size` bytes now; else (HTTP status, reason, seconds to wait)."""
        self._expire(now)
        n = max(size, MIN_CHARGE)
        if self._by.get(who, 0) + n > self.per_account:
            first = next((t for t, root in self._log if self._live.get(root, (b"",))[0] == who), now)
            return 429, (f"upload budget: at most {self.per_account // MIB} MiB of uploads per account within "
                         f"{self.window_s:.0f} s (what no write names is collected after that)"), first + self.window_s - now
        if self.bytes + n > self.total:
            oldest = next((t for t, root in self._log if root in self._live), now)
            return 503, (f"upload budget: this validator holds {self.total // MIB} MiB of recent uploads, "
                         "not yet collected: retry later"), oldest + self.window_s - now
        return None

    def take(self, who: bytes, size: int, now: float, root: bytes) -> None:
        """Count an upload stored under `root` (its multihash). The same blob uploaded again while
        counted is not counted twice."""
        if root in self._live:
            return
        n = max(size, MIN_CHARGE)
        self._log.append((now, root))
        self._live[root] = (who, n)
        self._by[who] = self._by.get(who, 0) + n
        self.bytes += n

    def pinned(self, roots: Iterable[bytes]) -> None:
        """A committed block pinned these roots: their bytes are the chain's now, not the budget's."""
        for r in roots:
            self._forget(r)
