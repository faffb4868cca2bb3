"""Content-addressed block store in LMDB, keyed by multihash (so a CIDv0 and a CIDv1 of the same
bytes share one entry). Every read re-hashes the bytes: a block altered on disk is refused with
an IntegrityError instead of being served (the paper's storage attack)."""

from __future__ import annotations

from pathlib import Path

import lmdb

from node.ipfs.cid import Cid, cid_v1_raw, verify

MAX_BLOCK = 2 * 1024 * 1024  # bitswap peers accept blocks up to 2 MiB


class IntegrityError(RuntimeError):
    """Stored bytes do not hash to their CID."""


class BlockStore:
    def __init__(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), map_size=1 << 38, max_dbs=4, sync=True)
        self.blocks = self.env.open_db(b"blocks")
        self.corrupt_reads = 0

    def close(self) -> None:
        self.env.close()

    def put(self, data: bytes) -> Cid:
        """Store one raw block; returns its CIDv1 (raw codec, sha2-256)."""
        if len(data) > MAX_BLOCK:
            raise ValueError(f"block of {len(data)} bytes exceeds {MAX_BLOCK}")
        cid = cid_v1_raw(data)
        with self.env.begin(write=True, db=self.blocks) as txn:
            txn.put(cid.multihash, data, overwrite=False)
        return cid

    def put_block(self, cid: Cid, data: bytes) -> None:
        """Store a block received from elsewhere, after checking it against its CID."""
        if len(data) > MAX_BLOCK:
            raise ValueError(f"block of {len(data)} bytes exceeds {MAX_BLOCK}")
        if not verify(cid, data):
            raise IntegrityError(f"bytes do not match {cid}")
        with self.env.begin(write=True, db=self.blocks) as txn:
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
        with self.env.begin(write=True, db=self.blocks) as txn:
            return txn.delete(cid.multihash)

    def count(self) -> int:
        with self.env.begin(db=self.blocks) as txn:
            return txn.stat(self.blocks)["entries"]
