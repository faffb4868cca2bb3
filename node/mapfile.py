"""How the LMDB stores open their environment: with MDB_WRITEMAP, and the guard that keeps that
safe on a full disk.

Why writemap: without it LMDB copies every page a write transaction dirties into malloc'd memory and
keeps those copies on a free list until the environment closes, so a validator's anonymous memory
never falls below its largest block's dirty pages (about 15 per write). With writemap a transaction
writes the mapped file in place: no copies, no extra write(2) per page. Measured on one core
(`medchain bench edge`; bench/README.md, "Writing in place"): anonymous memory 74 -> 56 MB at 1,200
writes/s and 209 -> 81 MB at 2,400/s, the same throughput and CPU per write.

The price, and the guard: LMDB then sizes the data file to the whole map (a sparse file: it takes
only the pages written, but `ls` shows the map size), and a page written into a hole of a full
filesystem is a SIGBUS that kills the process, not an error. So every write transaction is begun
through `MapFile.write`, which first makes sure the file's blocks are allocated (fallocate) past its
last page by as much as the transaction can add: a full disk then fails that call with ENOSPC before
LMDB writes anything, and the storage-full path (node/storage.py) takes over as it does for a failed
write(2).

Off by default: MEDCHAIN_LMDB_WRITEMAP=1 (or `lmdb_writemap = true` under [limits] in the node's
configuration file) turns it on. The sparse files are the reason: the ledger's data file then shows
64 GiB and the block store's 256 GiB (the default maps), and a copy by a tool that does not keep
holes (Python's shutil, rsync without -S, scp) writes all of it; a home is backed up with
`medchain snapshot`, or with `cp` (GNU cp keeps the holes). For an edge host whose memory is the
limit, and a filesystem with sparse files and fallocate (ext4, XFS, btrfs, tmpfs).
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import lmdb

MIB = 1024 * 1024
# What a write transaction can add to the file, estimated before it begins: it copies each page it
# changes once (about one leaf and a share of the branches per scattered put: 2 pages per put, and
# never more pages than the file has), and it adds pages for what it inserts (pages at worst half
# full). An estimate, not a proof: GRAIN more is allocated ahead of it.
PAGES_PER_PUT = 2
ENTRY = 64  # a key and LMDB's node header, per put
SLACK = 64 * 1024  # the meta and free-list pages of any transaction
GRAIN = 4 * MIB  # allocate at least this much at a time: one fallocate every few blocks, not per block


def writemap_enabled() -> bool:
    raw = os.environ.get("MEDCHAIN_LMDB_WRITEMAP", "0").strip()
    if raw not in ("0", "1"):
        raise SystemExit(f"MEDCHAIN_LMDB_WRITEMAP={raw!r}: 1, or 0 (the default)")
    return raw == "1"


class MapFile:
    """A writable LMDB environment and its data file's allocated room (see the module doc)."""

    def __init__(self, path: str | Path, map_size: int, max_dbs: int, **kw: object) -> None:
        self.writemap = writemap_enabled()
        self.env = lmdb.open(str(path), map_size=map_size, max_dbs=max_dbs, writemap=self.writemap, **kw)
        self._psize: int = self.env.stat()["psize"]
        self._file = Path(path) / "data.mdb"
        self._fd = os.open(self._file, os.O_RDWR | os.O_CLOEXEC) if self.writemap else -1
        self._ready = 0  # the file's blocks are allocated up to this offset (past the last page)
        self._lock = threading.Lock()
        if self.writemap:  # opening a named database writes too (the caller's open_db calls)
            self._reserve(4 * SLACK)

    def close(self) -> None:
        self.env.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def write(self, puts: int = 1, payload: int = 0, db: object = None,
              most_pages: int | None = None) -> lmdb.Transaction:
        """A write transaction that makes at most `puts` puts and deletes of `payload` value bytes
        in all, begun once the file has room for it. `most_pages`: a tighter bound on the pages it
        can copy (many deletes are bound by the size of the tree)."""
        txn = self.env.begin(write=True, db=db)
        if not self.writemap:
            return txn
        # measured inside the write transaction: no other writer (thread or process) can move the
        # file's end between this measure and this transaction's own pages
        try:
            with self._lock:
                pages = self._end() // self._psize
                copies = min(puts * PAGES_PER_PUT, pages, pages if most_pages is None else most_pages)
                fresh = 2 * (payload + ENTRY * puts) // self._psize + 16
                self._reserve((copies + fresh) * self._psize + SLACK)
        except BaseException:
            txn.abort()
            raise
        return txn

    def _end(self) -> int:
        """Where the file's last used page ends (as of the last commit)."""
        return (self.env.info()["last_pgno"] + 1) * self._psize

    def _reserve(self, need: int) -> None:
        """Allocate the file's blocks through `need` bytes past its end; OSError (ENOSPC) if the
        filesystem cannot hold them. Allocated blocks stay allocated: LMDB uses them next."""
        end, map_size = self._end(), self.env.info()["map_size"]
        want = min(end + need, map_size)  # past the map LMDB refuses with MDB_MAP_FULL itself
        if want <= self._ready:
            return
        start = max(self._ready, end)
        try:
            grain = min(max(want, start + GRAIN), map_size)
            os.posix_fallocate(self._fd, start, grain - start)
            want = grain
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            try:
                os.posix_fallocate(self._fd, start, want - start)  # only what this transaction needs
            except OSError as again:  # named, so the storage-full report says which store
                raise OSError(again.errno, f"{os.strerror(again.errno)}: no room for the next write "
                              f"transaction ({want - start} bytes)", str(self._file)) from None
        self._ready = want

    def spare(self) -> int:
        """Bytes allocated past the last page: free space the store holds, not uses."""
        if not self.writemap:
            return 0
        return max(0, self._ready - self._end())
