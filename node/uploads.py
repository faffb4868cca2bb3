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
    """The bytes of recent uploads no write has pinned: per account, per client address (a quarter
    of the total: Sybil accounts from one address, each within its own share, filled the total and
    held every other uploader at 503 for the whole grace) and in all."""

    def __init__(self, window_s: float, per_account: int, total: int, per_origin: int | None = None) -> None:
        self.window_s, self.per_account, self.total = window_s, per_account, total
        self.per_origin = total // 4 if per_origin is None else per_origin
        # (time taken, root multihash, account, client address), oldest first
        self._log: deque[tuple[float, bytes, bytes, str]] = deque()
        self._live: dict[bytes, tuple[bytes, str, int, float]] = {}  # root -> (account, address, bytes, time)
        # the log's entries per account and per client address (("o", address)), oldest first
        self._mine: dict[bytes | tuple[str, str], deque[tuple[float, bytes]]] = {}
        self._by: dict[bytes | tuple[str, str], int] = {}  # bytes counted, likewise: live and being stored
        self.bytes = 0

    @classmethod
    def for_params(cls, grace_s: float, max_blob_bytes: int) -> UploadBudget:
        """At least 32 of the largest uploads per account, and 16 accounts' worth in all (>= 1 GiB)."""
        per_account = max(64 * MIB, 32 * max_blob_bytes)
        return cls(grace_s, per_account, max(GIB, 16 * per_account))

    @staticmethod
    def _keys(who: bytes, origin: str) -> tuple[bytes, tuple[str, str]]:
        """What an upload is counted under besides the total: its account and its client address."""
        return who, ("o", origin)

    def _count(self, who: bytes, origin: str, n: int) -> None:
        for k in self._keys(who, origin):
            left = self._by.get(k, 0) + n
            if left:
                self._by[k] = left
            else:
                del self._by[k]
        self.bytes += n

    def _forget(self, root: bytes, taken: float | None = None) -> None:
        """Off the budget: pinned, or (`taken`: the log entry's time) its grace ended, unless the
        same blob was uploaded again after a pin and that later upload is the one counted."""
        entry = self._live.get(root)
        if entry is None or (taken is not None and entry[3] != taken):
            return
        del self._live[root]
        self._count(entry[0], entry[1], -entry[2])

    def _pop_log(self) -> tuple[float, bytes]:
        """The log's oldest entry, off the log and off its account's and address's entries (each a
        subsequence of it)."""
        t, root, who, origin = self._log.popleft()
        for k in self._keys(who, origin):
            mine = self._mine.get(k)
            if mine and mine[0] == (t, root):
                mine.popleft()
            if mine is not None and not mine:
                del self._mine[k]
        return t, root

    def _expire(self, now: float) -> None:
        while self._log and self._log[0][0] + self.window_s <= now:
            t, root = self._pop_log()
            self._forget(root, t)

    def _counted(self, t: float, root: bytes) -> bool:
        entry = self._live.get(root)
        return entry is not None and entry[3] == t

    def _oldest(self, who: bytes | tuple[str, str] | None) -> float | None:
        """The time of the oldest upload still counted (of `who`, if given). Entries pinned meanwhile
        leave the head as they are met, so a refusal's Retry-After costs no walk of the log (up to
        262,144 entries)."""
        if who is None:
            while self._log and not self._counted(*self._log[0][:2]):
                self._pop_log()
            return self._log[0][0] if self._log else None
        mine = self._mine.get(who)
        while mine and not self._counted(*mine[0]):
            mine.popleft()  # still in the log, which expires it
        return mine[0][0] if mine else None

    def refusal(self, who: bytes, size: int, now: float, origin: str = "") -> tuple[int, str, float] | None:
        """None if `who` may upload `size` bytes now from client address `origin`; else (HTTP
        status, reason, seconds to wait)."""
        self._expire(now)
        n = max(size, MIN_CHARGE)
        for key, most, what in zip(self._keys(who, origin), (self.per_account, self.per_origin),
                                   ("account", "client address"), strict=True):
            if self._by.get(key, 0) + n > most:
                first = self._oldest(key)
                first = now if first is None else first
                return 429, (f"upload budget: at most {most // MIB} MiB of uploads per {what} within "
                             f"{self.window_s:.0f} s (what no write names is collected after that)"), \
                    first + self.window_s - now
        if self.bytes + n > self.total:
            oldest = self._oldest(None)
            oldest = now if oldest is None else oldest
            return 503, (f"upload budget: this validator holds {self.total // MIB} MiB of recent uploads, "
                         "not yet collected: retry later"), oldest + self.window_s - now
        return None

    def hold(self, who: bytes, size: int, origin: str = "") -> int:
        """Count an upload being stored (checked by `refusal` just before): concurrent uploads of one
        account each see the others' bytes. Returns what `release` takes back once it is stored."""
        n = max(size, MIN_CHARGE)
        self._count(who, origin, n)
        return n

    def release(self, who: bytes, held: int, origin: str = "") -> None:
        self._count(who, origin, -held)

    def take(self, who: bytes, size: int, now: float, root: bytes, origin: str = "") -> None:
        """Count an upload stored under `root` (its multihash), from client address `origin`. The
        same blob uploaded again while counted is not counted twice."""
        if root in self._live:
            return
        n = max(size, MIN_CHARGE)
        self._log.append((now, root, who, origin))
        for k in self._keys(who, origin):
            self._mine.setdefault(k, deque()).append((now, root))
        self._live[root] = (who, origin, n, now)
        self._count(who, origin, n)

    def pinned(self, roots: Iterable[bytes]) -> None:
        """A committed block pinned these roots: their bytes are the chain's now, not the budget's."""
        for r in roots:
            self._forget(r)
