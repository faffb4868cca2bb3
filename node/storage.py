"""A full disk: what a validator does when its LMDB stores cannot take a write.

Two failures look alike from above and are told apart here: the filesystem is full (ENOSPC; on a
partial page write LMDB reports EIO instead, so a write error with the filesystem below its
reserve counts as full too) and the LMDB map is full (MDB_MAP_FULL: the file reached the map size
the store was opened with, whatever the filesystem says). LMDB aborts a transaction whose commit
fails, so neither tears anything on disk: the ledger and the block store stay at their last
committed transaction.

Two levels:

- **low**: free space (or room left in a map) under the reserve (`MEDCHAIN_DISK_RESERVE_MB`,
  default 64), until it is a quarter of the reserve above it again (at most 16 MiB), so a disk at
  the edge does not flip every half second. The validator refuses new client work (transactions,
  uploads: 507 with Retry-After) but keeps committing the network's blocks into the reserve it kept.
- **stalled**: a write the consensus task made failed (a block's commit, the consensus log, the
  view). The replica may now believe in a block or a signed message that is not on disk, so it stops
  at once: no vote, no delivery, no proposal, every consensus message dropped (to the others it is a
  crashed replica, which PBFT tolerates). Once the reserve is free again, the consensus stage is
  rebuilt from disk exactly as a restart would (`Validator._new_replica` and `_recover`: the
  ledger's head and certificate, the persisted view, the consensus log of what it signed) and the
  validator catches up by catch-up and state transfer. No restart is needed for a full filesystem;
  a full map needs a restart with a larger `MEDCHAIN_LMDB_MAP_GB`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import lmdb

log = logging.getLogger("medchain.storage")
MIB = 1024 * 1024
RETRY_AFTER_S = 30.0
WATCH_S = 0.5
BACKOFF_S, BACKOFF_MAX_S = 1.0, 60.0  # before a resume; doubled when writes fail again soon after one
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO)


def reserve_bytes() -> int:
    """The free space a validator keeps for committing the network's blocks (MEDCHAIN_DISK_RESERVE_MB)."""
    raw = os.environ.get("MEDCHAIN_DISK_RESERVE_MB", "64")
    try:
        mb = float(raw)
    except ValueError:
        raise SystemExit(f"MEDCHAIN_DISK_RESERVE_MB={raw!r}: a number of MiB") from None
    if mb < 0:
        raise SystemExit(f"MEDCHAIN_DISK_RESERVE_MB={raw!r}: must not be negative")
    return int(mb * MIB)


def map_size() -> int | None:
    """The LMDB map size of the ledger and the block store (address space; the files grow only as
    data is written): MEDCHAIN_LMDB_MAP_GB, to raise it after MDB_MAP_FULL; None: the stores' defaults."""
    raw = os.environ.get("MEDCHAIN_LMDB_MAP_GB")
    if not raw:
        return None
    try:
        size = int(float(raw) * 1024 * MIB)
    except ValueError:
        raise SystemExit(f"MEDCHAIN_LMDB_MAP_GB={raw!r}: a number of GiB") from None
    if size < 16 * MIB:
        raise SystemExit(f"MEDCHAIN_LMDB_MAP_GB={raw!r}: at least 16 MiB")
    return size


class StorageFull(Exception):
    """Refused because this validator's disk (or an LMDB map) is full: the API answers 507."""

    def __init__(self, reason: str, retry_after: float = RETRY_AFTER_S) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


def is_storage_error(exc: BaseException) -> bool:
    """A write that failed for want of space or an I/O error (LMDB reports ENOSPC as DiskError, a
    short page write as a plain Error 'Input/output error', a full map as MapFullError, and every
    call after a failed meta-page write as PanicError)."""
    if isinstance(exc, (lmdb.MapFullError, lmdb.DiskError, lmdb.PanicError)):
        return True
    if isinstance(exc, lmdb.Error):
        msg = str(exc)
        return any(os.strerror(e) in msg for e in _FULL_ERRNOS)
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


@dataclass
class Store:
    name: str  # "ledger", "block store"
    path: Path
    env: lmdb.Environment
    spare: Callable[[], int] = lambda: 0  # blocks the store allocated ahead (node/mapfile.py): free to it

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize + self.spare()

    def total(self) -> int:
        st = os.statvfs(self.path)
        return st.f_blocks * st.f_frsize

    def map_room(self) -> int:
        """Bytes the LMDB map can still grow by (pages past the last one used)."""
        info = self.env.info()
        return info["map_size"] - (info["last_pgno"] + 1) * self.env.stat()["psize"]


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


class DiskGuard:
    """Watches the stores' free space and holds the validator's storage state (see the module doc)."""

    def __init__(self, stores: list[Store], reserve: int | None = None) -> None:
        self.stores = stores
        self.reserve = reserve_bytes() if reserve is None else reserve
        self.margin = min(self.reserve // 4, 16 * MIB)  # free above the reserve before work is taken again
        self.low: str | None = None  # why new work is refused (below the reserve), or None
        self.stalled: str | None = None  # why consensus stopped (a write failed), or None
        self.map_full = False  # an LMDB map filled: only a restart with a larger map helps
        self.panic = False  # an LMDB environment is unusable (MDB_PANIC): only a restart helps
        self.failures = 0
        self.resumed = 0
        self.backoff = BACKOFF_S
        self._stalled_at = 0.0
        self._resumed_at: float | None = None
        self.refresh()

    def _shortage(self, margin: int = 0) -> str | None:
        """Why the stores are below their reserve (plus `margin`) now, or None."""
        if self.panic:
            return "an LMDB environment hit a fatal error (MDB_PANIC): restart this validator once the disk is fixed"
        if self.map_full:
            used = ", ".join(f"the {s.name} at {s.path}: {_mib(s.env.info()['map_size'] - s.map_room())} of "
                             f"{_mib(s.env.info()['map_size'])}" for s in self.stores)
            return (f"an LMDB map is full ({used}): stop this validator and restart it with a larger "
                    f"MEDCHAIN_LMDB_MAP_GB")
        for s in self.stores:
            try:
                free, room = s.free(), s.map_room()
            except (OSError, lmdb.Error) as exc:
                return f"the {s.name} at {s.path} cannot be checked: {exc}"
            if room < self.reserve + margin:
                return (f"the {s.name}'s LMDB map at {s.path} is full ({_mib(room)} left of "
                        f"{_mib(s.env.info()['map_size'])}): restart with a larger MEDCHAIN_LMDB_MAP_GB")
            if free < self.reserve + margin:
                return (f"the filesystem holding the {s.name} at {s.path} is full ({_mib(free)} free of "
                        f"{_mib(s.total())}, reserve {_mib(self.reserve)})")
        return None

    def _too_full_for(self, exc: BaseException) -> str | None:
        """The store whose filesystem could not hold a transaction's room (node/mapfile.py), though
        its free space is above the reserve: a transaction larger than what is left."""
        if not (isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS and exc.filename):
            return None
        for s in self.stores:
            if Path(exc.filename).is_relative_to(s.path):
                return (f"the filesystem holding the {s.name} at {s.path} is full ({_mib(s.free())} free of "
                        f"{_mib(s.total())}: less than its next write needs)")
        return None

    def refresh(self) -> None:
        """Re-read free space; log when new work starts or stops being refused."""
        why = self._shortage(self.margin if self.low or self.stalled else 0)  # no flapping at the edge
        if why and not self.low:
            log.error("DISK FULL: %s; refusing new transactions and uploads (507) until space is freed", why)
        elif self.low and not why and not self.stalled:
            log.warning("disk space is back above the reserve: accepting transactions and uploads again")
        self.low = why

    def check(self) -> None:
        """Raise StorageFull while new work must be refused."""
        why = self.stalled or self.low
        if why:
            raise StorageFull(f"insufficient storage on this validator: {why}; retry later or use another validator")

    def failed(self, what: str, exc: BaseException) -> None:
        """A write of the consensus task failed: stop consensus until space is back (module doc)."""
        self.failures += 1
        self.map_full = self.map_full or isinstance(exc, lmdb.MapFullError)
        self.panic = self.panic or isinstance(exc, lmdb.PanicError)
        self.refresh()
        cause = ("LMDB map full" if isinstance(exc, lmdb.MapFullError) else f"{type(exc).__name__}: {exc}")
        why = self.low or self._too_full_for(exc) or f"a write failed ({cause})"
        if self.panic or self.map_full:
            until = "it is restarted" if self.panic else "it is restarted with a larger map"
        else:
            until = f"{_mib(self.reserve)} are free again; then it resumes from its disk and catches up"
        if not self.stalled:
            now = time.monotonic()  # a write error that space does not cure (EIO): do not spin on it
            again = self._resumed_at is not None and now - self._resumed_at < BACKOFF_MAX_S
            self.backoff = min(BACKOFF_MAX_S, 2 * self.backoff) if again else BACKOFF_S
            self._stalled_at = now
            log.critical("STORAGE FULL while %s: %s [%s]. Nothing was half-written (LMDB aborted the "
                         "transaction). This validator does not vote, propose or deliver until %s",
                         what, why, cause, until)
        self.stalled = why

    def refusal(self, what: str, exc: BaseException) -> BaseException:
        """What to raise for a failed write outside consensus (an upload): StorageFull for a storage
        error (refreshing the state so the next requests are refused before writing), else `exc`."""
        if not is_storage_error(exc):
            return exc
        self.refresh()
        log.error("%s failed: %s: %s", what, type(exc).__name__, exc)
        return StorageFull(f"insufficient storage on this validator: {self.low or exc}; retry later")

    def can_resume(self) -> bool:
        return (self.stalled is not None and time.monotonic() - self._stalled_at >= self.backoff
                and self._shortage(self.margin) is None)

    def mark_resumed(self) -> None:
        self.resumed += 1
        self._resumed_at = time.monotonic()

    def status(self) -> dict:
        return {"low": self.low, "stalled": self.stalled, "reserve_bytes": self.reserve,
                "free_bytes": min((s.free() for s in self.stores), default=0), "write_failures": self.failures,
                "resumed": self.resumed}


# ---- the validator's side: drop consensus work while stalled, rebuild from disk to resume --------
async def watch(disk: DiskGuard, request_resume: Callable[[], Awaitable[None]]) -> None:
    """Refresh free space every WATCH_S; once a stalled validator has its reserve back, ask the
    consensus task to rebuild its stage from disk (it does that in order with its other work)."""
    while True:
        await asyncio.sleep(WATCH_S)
        try:
            disk.refresh()
            if disk.can_resume():
                await request_resume()
                await asyncio.sleep(2 * WATCH_S)  # one resume request at a time
        except (OSError, lmdb.Error):
            log.exception("checking free space failed")


async def while_stalled(disk: DiskGuard, kind: str, item: object,
                        rebuild: Callable[[], Awaitable[tuple[int, int]]]) -> None:
    """The consensus task's step while stalled: everything is dropped except a resume, which
    `rebuild`s the consensus stage from disk as a restart would (returns its height and view)."""
    if kind == "synced":
        done = item[1]  # type: ignore[index]
        if not done.done():
            done.set_result(0)
    if kind != "resume" or not disk.can_resume():
        return
    t0 = time.monotonic()
    disk.stalled = None
    try:
        height, view = await rebuild()
    except Exception as exc:
        if is_storage_error(exc):
            disk.failed("resuming", exc)
            return
        raise
    disk.mark_resumed()
    disk.refresh()
    log.warning("storage writable again: consensus resumed from height %d in view %d (rebuilt from disk in "
                "%.2f s); catching up with the network", height, view, time.monotonic() - t0)
