"""Content-addressed block store in LMDB, keyed by multihash (so a CIDv0 and a CIDv1 of the same
bytes share one entry). Every read re-hashes the bytes: a block altered on disk is refused with
an IntegrityError instead of being served (the paper's storage attack).

Blobs (whole UnixFS files) on top of blocks:

- ``roots``: root multihash -> (file size, added time). Written in the same LMDB transaction as
  the blob's blocks, so "the root is listed" means "every block of the DAG was stored".
- ``pins``: root multihash -> reference count. A blob referenced by a committed transaction is
  pinned; ``gc`` deletes every block not reachable from a pinned root or from a root added less
  than ``grace`` seconds ago (an upload whose transaction has not committed yet).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable
from pathlib import Path

import lmdb

from node.ipfs.cid import CODEC_DAG_PB, Cid, cid_v1_raw, verify
from node.ipfs.unixfs import decode_pbnode, export_bytes, import_bytes
from node.mapfile import MapFile

MAX_BLOCK = 2 * 1024 * 1024  # bitswap peers accept blocks up to 2 MiB
_ROOT = struct.Struct(">QdB")  # file size, time added, root codec


def _upload_key(t: float) -> bytes:
    return struct.pack(">Q", max(0, int(t * 1000)))


class IntegrityError(RuntimeError):
    """Stored bytes do not hash to their CID."""


class MissingBlock(LookupError):
    """A block of a blob is not in the store (never fetched, or deleted)."""


class BlockStore:
    def __init__(self, path: str | Path, map_size: int | None = None) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        # written in place, each write transaction begun through self._map.write (node/mapfile.py)
        self._map = MapFile(path, map_size or 1 << 38, 6, sync=True)
        self.env = self._map.env
        self.blocks = self.env.open_db(b"blocks")
        self.roots = self.env.open_db(b"roots")
        self.pins = self.env.open_db(b"pins")
        # standalone uploads by time added (8-byte big-endian ms + root multihash): what no committed
        # write pins within the grace is collected by a range scan, never a scan of the whole store
        self.uploads = self.env.open_db(b"uploads")
        # blobs committed blocks recorded but this store lacks (root CID -> height): repair survives a
        # restart, so a validator killed before its fetch finished still fetches them afterwards
        self.wanted = self.env.open_db(b"wanted")
        # b"pinned": the height and hash of the last block whose pins were counted (commit_blobs)
        self.meta = self.env.open_db(b"meta")
        self.corrupt_reads = 0

    def close(self) -> None:
        self._map.close()

    def spare(self) -> int:
        """Disk space allocated ahead for the next transactions (node/mapfile.py)."""
        return self._map.spare()

    def put(self, data: bytes) -> Cid:
        """Store one raw block; returns its CIDv1 (raw codec, sha2-256)."""
        if len(data) > MAX_BLOCK:
            raise ValueError(f"block of {len(data)} bytes exceeds {MAX_BLOCK}")
        cid = cid_v1_raw(data)
        with self._map.write(1, len(data), db=self.blocks) as txn:
            txn.put(cid.multihash, data, overwrite=False)
        return cid

    def put_block(self, cid: Cid, data: bytes) -> None:
        """Store a block received from elsewhere, after checking it against its CID."""
        if len(data) > MAX_BLOCK:
            raise ValueError(f"block of {len(data)} bytes exceeds {MAX_BLOCK}")
        if not verify(cid, data):
            raise IntegrityError(f"bytes do not match {cid}")
        with self._map.write(1, len(data), db=self.blocks) as txn:
            txn.put(cid.multihash, data)

    def has(self, cid: Cid) -> bool:
        with self.env.begin(db=self.blocks) as txn:
            return txn.get(cid.multihash) is not None

    def size(self, cid: Cid) -> int | None:
        with self.env.begin(db=self.blocks, buffers=True) as txn:
            v = txn.get(cid.multihash)
            return None if v is None else len(v)

    def get(self, cid: Cid) -> bytes | None:
        with self.env.begin(db=self.blocks) as txn:
            data = txn.get(cid.multihash)
        if data is None:
            return None
        if not verify(cid, data):
            self.corrupt_reads += 1
            raise IntegrityError(f"stored bytes of {cid} do not match its hash: the block store was altered")
        return data

    def delete(self, cid: Cid) -> bool:
        with self._map.write(db=self.blocks) as txn:
            return txn.delete(cid.multihash)

    def count(self) -> int:
        with self.env.begin(db=self.blocks) as txn:
            return txn.stat(self.blocks)["entries"]

    # ---- blobs: whole UnixFS files ---------------------------------------------------------------
    def put_blob(self, data: bytes, profile: str = "helia-default") -> tuple[Cid, list[Cid]]:
        """Import ``data`` as a UnixFS file (the profile's chunking and CIDs; a blob of at most
        one chunk is a single raw block, as Helia makes it); returns the root and every block."""
        root, blocks = import_bytes(data, profile)
        self.put_dag(root, blocks.items(), len(data))
        return root, list(blocks)

    def put_dag(self, root: Cid, blocks: Iterable[tuple[Cid, bytes]], filesize: int) -> None:
        """Store a complete DAG (every block checked against its CID) and list its root, in one
        transaction."""
        self.put_dags([(root, blocks, filesize)])

    def put_dags(self, dags: Iterable[tuple[Cid, Iterable[tuple[Cid, bytes]], int]], upload: bool = False) -> None:
        """Several complete DAGs in one (synced) transaction; `upload`: standalone uploads, collected
        by ``collect_uploads`` unless a committed write pins them in time."""
        now = time.time()
        dags = [(root, list(blocks), filesize) for root, blocks, filesize in dags]
        puts = sum(len(blocks) + 2 for _, blocks, _ in dags)
        with self._map.write(puts, sum(len(d) for _, blocks, _ in dags for _, d in blocks)) as txn:
            for root, blocks, filesize in dags:
                for cid, data in blocks:
                    if len(data) > MAX_BLOCK:
                        raise ValueError(f"block of {len(data)} bytes exceeds {MAX_BLOCK}")
                    if not verify(cid, data):
                        raise IntegrityError(f"bytes do not match {cid}")
                    txn.put(cid.multihash, data, db=self.blocks)
                listed = txn.get(root.multihash, db=self.roots)
                if listed is not None and _ROOT.unpack(bytes(listed))[2] != root.codec:
                    continue  # its digest is listed as the other codec's blob: that listing stands
                txn.put(root.multihash, _ROOT.pack(filesize, now, root.codec), db=self.roots)
                if upload:
                    txn.put(_upload_key(now) + root.multihash, b"", db=self.uploads)

    def touch(self, root: Cid) -> None:
        """Restart a listed root's collection grace, as an upload of it again would: a write naming it
        was admitted and must find it at commit (collect_uploads reads the listing's time in the
        transaction that deletes), and if no commit pins it, it is collected after the grace."""
        now = time.time()
        with self._map.write(2) as txn:
            listed = txn.get(root.multihash, db=self.roots)
            if listed is None:
                return
            size, _, codec = _ROOT.unpack(bytes(listed))
            if codec != root.codec:
                return
            txn.put(root.multihash, _ROOT.pack(size, now, codec), db=self.roots)
            if not txn.get(root.to_bytes(), db=self.pins):
                txn.put(_upload_key(now) + root.multihash, b"", db=self.uploads)

    def commit_blobs(self, sidecars: Iterable[tuple[Cid, bytes]], pins: Iterable[Cid],
                     height: int = 0, block_hash: bytes = b"") -> tuple[list[Cid], list[Cid]]:
        """A committed block's blobs: its sidecars (raw blocks, each checked against its CID) stored
        and listed, every blob the block records pinned, and the ones still not held here recorded
        as wanted, in one synced transaction. Returns (CIDs newly stored, roots wanted).

        A block's pins are counted once: the ledger commits the block after this, in another store,
        so a commit retried after the ledger write failed (a crash, a full disk) must not pin again.
        The marker names the block, not only its height: a single validator (whose blocks no
        certificate fixes) may commit another block at that height after a crash, and its pins
        count (the lost block's stay: blobs kept too long, never one deleted too soon)."""
        now = time.time()
        stored, wanted = [], []
        sidecars, pins = list(sidecars), list(pins)
        with self._map.write(2 * len(sidecars) + 2 * len(pins) + 1, sum(len(d) for _, d in sidecars)) as txn:
            counted = bool(height) and _counted(txn.get(b"pinned", db=self.meta), height, block_hash)
            for cid, data in sidecars:
                if not verify(cid, data):
                    raise IntegrityError(f"bytes do not match {cid}")
                if txn.put(cid.multihash, data, db=self.blocks, overwrite=False):
                    stored.append(cid)
                if txn.get(cid.multihash, db=self.roots) is None:
                    txn.put(cid.multihash, _ROOT.pack(len(data), now, cid.codec), db=self.roots)
            for root in pins:
                if not counted:
                    self._pin_in(txn, root)
                if txn.get(root.multihash, db=self.roots) is None:
                    self._want_in(txn, root, height)
                    wanted.append(root)
            if height and not counted:
                txn.put(b"pinned", struct.pack(">Q", height) + block_hash, db=self.meta)
        return stored, wanted

    def adoption(self) -> tuple[int, bool, bytes]:
        """How far the blobs recorded below a checkpoint were adopted (see adopt): (the checkpoint's
        height, whether done, the last state key taken); (0, True, b"") if none was begun."""
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(b"adopted")
        if raw is None:
            return 0, True, b""
        base, done = struct.unpack(">QB", bytes(raw[:9]))
        return base, bool(done), bytes(raw[9:])

    def adopt(self, roots: Iterable[tuple[Cid, int]], base: int, last_key: bytes, done: bool) -> list[tuple[Cid, int]]:
        """Blobs committed below checkpoint `base` (a state transfer or a restore started this ledger
        there, and no commit here pinned them): each pinned once and, where not held, recorded as
        wanted at its height, with the progress (the last state key taken) in the same transaction, so
        a crash resumes without pinning twice. Returns the wanted ones."""
        roots = list(roots)
        wanted = []
        with self._map.write(2 * len(roots) + 1) as txn:
            for root, height in roots:
                self._pin_in(txn, root)
                if txn.get(root.multihash, db=self.roots) is None:
                    self._want_in(txn, root, height)
                    wanted.append((root, height))
            txn.put(b"adopted", struct.pack(">QB", base, done) + last_key, db=self.meta)
        return wanted

    def wanted_blobs(self, limit: int = 100_000) -> list[tuple[Cid, int]]:
        """Blobs committed blocks recorded that this store still lacks, with their heights."""
        with self.env.begin(db=self.wanted) as txn:
            out = []
            for k, v in txn.cursor():
                if len(out) >= limit:
                    break
                out.append((Cid.from_bytes(bytes(k)), struct.unpack(">Q", bytes(v))[0]))
            return out

    def unwant(self, roots: Iterable[Cid]) -> None:
        roots = list(roots)
        with self._map.write(len(roots), db=self.wanted) as txn:
            for r in roots:
                txn.delete(r.to_v1().to_bytes())

    def collect_uploads(self, grace: float, now: float | None = None, limit: int = 10_000) -> int:
        """Delete standalone uploads older than `grace` seconds that no committed write pinned;
        returns how many blobs were deleted. A block that is itself a listed blob is kept; a chunk two
        dag-pb uploads share (identical 1 MiB chunks) is not tracked: `medchain ipfs gc` and repair
        over bitswap cover that corner."""
        now = time.time() if now is None else now
        cutoff = _upload_key(now - grace)
        expired: list[bytes] = []
        with self.env.begin(db=self.uploads) as txn:
            for k in txn.cursor().iternext(keys=True, values=False):
                if bytes(k[:8]) >= cutoff or len(expired) >= limit:
                    break
                expired.append(bytes(k))
        deleted = 0
        for k in expired:
            mh = k[8:]
            with self.env.begin(db=self.roots) as txn:
                meta = txn.get(mh)
            root = None if meta is None else Cid(1, _ROOT.unpack(bytes(meta))[2], mh)
            inner = [] if root is None else self.dag_cids(root)
            # the pin check and the delete in one write transaction: a commit pinning it meanwhile wins
            with self._map.write(len(inner) + 2) as txn:
                txn.delete(k, db=self.uploads)
                if root is None or txn.get(root.to_bytes(), db=self.pins):
                    continue
                listed = txn.get(mh, db=self.roots)  # the newest upload of the same bytes set its time
                if listed is None or now - _ROOT.unpack(bytes(listed))[1] < grace:
                    continue
                txn.delete(mh, db=self.roots)
                for c in inner:
                    if c.multihash == mh or txn.get(c.multihash, db=self.roots) is None:
                        txn.delete(c.multihash, db=self.blocks)
                deleted += 1
        return deleted

    def pin_many(self, roots: Iterable[Cid]) -> None:
        """One more on-chain reference to each root, in one transaction."""
        roots = list(roots)
        with self._map.write(len(roots)) as txn:
            for root in roots:
                self._pin_in(txn, root)

    def _want_in(self, txn: lmdb.Transaction, root: Cid, height: int) -> None:
        """Record a committed blob not held here, with the height of the block that recorded it."""
        txn.put(root.to_v1().to_bytes(), struct.pack(">Q", height), db=self.wanted)

    def _pin_in(self, txn: lmdb.Transaction, root: Cid) -> None:
        key = root.to_v1().to_bytes()
        v = txn.get(key, db=self.pins)
        txn.put(key, ((0 if v is None else int.from_bytes(v, "big")) + 1).to_bytes(8, "big"), db=self.pins)

    def blob_size(self, root: Cid) -> int | None:
        """File size of a stored blob: one listed as a root (a sidecar, an upload, a fetched DAG) of
        this CID's codec. A block inside another blob's DAG, or a root named with another codec, is no
        blob: a write naming it would make its writer the patient of record of another's bytes."""
        with self.env.begin(buffers=True) as txn:
            meta = txn.get(root.multihash, db=self.roots)
        if meta is None:
            return None
        size, _, codec = _ROOT.unpack(bytes(meta))
        return size if codec == root.codec else None

    def has_blob(self, root: Cid) -> bool:
        """True if the root is listed and its root block is present (a cheap check: a deleted
        inner block shows up as MissingBlock on read)."""
        return self.blob_size(root) is not None and self.has(root)

    def get_blob(self, root: Cid) -> bytes:
        """The file's bytes, every block verified; MissingBlock or IntegrityError otherwise."""

        def block(cid: Cid) -> bytes:
            data = self.get(cid)
            if data is None:
                raise MissingBlock(f"block {cid} of {root} is not held")
            return data

        return export_bytes(root, block, self.blob_size(root))  # never more than it was listed with

    def dag_cids(self, root: Cid, txn: lmdb.Transaction | None = None) -> list[Cid]:
        """Every CID of the DAG below ``root`` that is held (root first); in `txn` if given."""
        if txn is None:
            with self.env.begin() as own:
                return self.dag_cids(root, own)
        out, stack, seen = [], [root], set()
        while stack:
            cid = stack.pop()
            if cid.multihash in seen:
                continue
            seen.add(cid.multihash)
            data = txn.get(cid.multihash, db=self.blocks)
            if data is None:
                continue
            out.append(cid)
            if cid.codec == CODEC_DAG_PB:
                try:
                    stack.extend(link.hash for link in decode_pbnode(data).links)
                except ValueError:
                    pass  # a corrupt block: nothing below it is reachable
        return out

    def unlist(self, root: Cid, height: int | None = None) -> None:
        """Forget that the blob is complete here (a block went missing or is corrupt), so the
        next fetch re-downloads it; fetched blocks overwrite the bad ones. With the `height` of the
        block that recorded it: wanted too, in the same transaction, so a fetch that fails (or a
        crash) leaves it to repair, not forgotten."""
        with self._map.write(2) as txn:
            txn.delete(root.multihash, db=self.roots)
            if height is not None:
                self._want_in(txn, root, height)

    def delete_blob(self, root: Cid) -> int:
        """Delete a blob's blocks and its listing (pins are kept); returns blocks deleted."""
        cids = self.dag_cids(root)
        with self._map.write(len(cids) + 1) as txn:
            txn.delete(root.multihash, db=self.roots)
            return sum(bool(txn.delete(c.multihash, db=self.blocks)) for c in cids)

    # ---- pins and garbage collection ------------------------------------------------------------
    def pin(self, root: Cid) -> int:
        """One more on-chain reference to ``root``; returns the new count."""
        self.pin_many([root])
        return self.pin_count(root)

    def unpin(self, root: Cid) -> int:
        with self._map.write(db=self.pins) as txn:
            key = root.to_v1().to_bytes()
            v = txn.get(key)
            n = max(0, (0 if v is None else int.from_bytes(v, "big")) - 1)
            if n:
                txn.put(key, n.to_bytes(8, "big"))
            else:
                txn.delete(key)
            return n

    def pin_count(self, root: Cid) -> int:
        with self.env.begin(db=self.pins) as txn:
            v = txn.get(root.to_v1().to_bytes())
            return 0 if v is None else int.from_bytes(v, "big")

    def gc(self, grace: float = 3600.0, now: float | None = None) -> int:
        """Delete blocks not reachable from a pinned root or a root younger than ``grace``
        seconds; returns how many blocks were deleted."""
        started = time.time()
        now = started if now is None else now
        with self.env.begin() as txn:
            keep = self._kept(txn, grace, now, started)
        live: set[bytes] = set()
        for root in keep:
            live.update(c.multihash for c in self.dag_cids(root))
        deleted = 0
        with self.env.begin() as txn:  # the deletes copy at most every page of the two trees once
            stats = [txn.stat(db) for db in (self.blocks, self.roots)]
        entries = sum(s["entries"] for s in stats) + 1
        with self._map.write(entries, most_pages=sum(s["branch_pages"] + s["leaf_pages"] + 8 for s in stats)) as txn:
            # what a commit pinned, or an upload or a repair listed, since the walk above (it ran
            # outside this transaction, and a live validator writes meanwhile) is walked again, in
            # here: a root kept before but listed since (a pinned blob repair fetched meanwhile,
            # which the first walk found absent) too
            for root, added in self._kept(txn, grace, now, started).items():
                if root not in keep or added >= started:
                    live.update(c.multihash for c in self.dag_cids(root, txn))
            doomed = [bytes(k) for k in txn.cursor(db=self.blocks).iternext(keys=True, values=False)
                      if bytes(k) not in live]
            for k in doomed:
                deleted += bool(txn.delete(k, db=self.blocks))
            for k in [bytes(k) for k in txn.cursor(db=self.roots).iternext(keys=True, values=False)]:
                if k not in live:
                    txn.delete(k, db=self.roots)
        return deleted

    def _kept(self, txn: lmdb.Transaction, grace: float, now: float, started: float) -> dict[Cid, float]:
        """The roots gc keeps, with when each was listed (-1: pinned, not listed here): pinned ones,
        and listed ones younger than `grace` at `now` or listed since `started` (the gc's own start)."""
        keep: dict[Cid, float] = {}
        for k, _ in txn.cursor(db=self.pins):
            cid = Cid.from_bytes(bytes(k))
            meta = txn.get(cid.multihash, db=self.roots)
            keep[cid] = -1.0 if meta is None else _ROOT.unpack(bytes(meta))[1]
        for k, v in txn.cursor(db=self.roots):
            _size, added, codec = _ROOT.unpack(bytes(v))
            if now - added < grace or added >= started:
                keep.setdefault(Cid(1, codec, bytes(k)), added)
        return keep


def _counted(marker: bytes | None, height: int, block_hash: bytes) -> bool:
    """Whether block `height` (`block_hash`) had its pins counted, by the last block that did: any
    block below it (committed in order), or this very block (a marker without a hash: this one)."""
    if marker is None:
        return False
    last = struct.unpack(">Q", marker[:8])[0]
    return height < last or (height == last and (len(marker) == 8 or not block_hash or marker[8:] == block_hash))
