"""A checkpoint's state tree built apart from the ledger, to prove its root before the ledger is touched.

The installer (node/snapshot.py) reads a checkpoint twice: first it grows the state tree here, in a
throwaway LMDB environment beside the ledger, committing after every batch so that its memory stays
at one batch whatever the state's size; only if the root is the certified one does it read the
pairs again into the ledger's install transaction, with these nodes (Ledger.installing). A state
that does not prove never touches the ledger: no page of it is left in the ledger's file, and LMDB's
copies of the pages one large transaction writes are taken only for a proven state.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import lmdb

from node.ledger.store import DEFAULT_MAP_SIZE

NODES_READ = 65_536  # nodes read back per opening of the environment


def remove_stale(home: Path) -> None:
    """Remove the scratch trees a killed installer left in `home` (one can be as large as the state):
    the next install does it, and so does the validator's start, for a node that then catches up by
    replaying blocks and never installs again."""
    for stale in home.glob(".state-tree-*"):
        shutil.rmtree(stale, ignore_errors=True)


class ScratchTree:
    """The node/checkpoint.py StateSink of the first pass: tree nodes only (the pairs are read again).

    Its environment is closed after every batch and every NODES_READ nodes read back: the pages a
    batch touched at random across the tree stay mapped (resident) while it is open, and would add
    up to the whole tree."""

    def __init__(self, beside: Path, map_size: int | None = None) -> None:
        """`map_size`: as the ledger's (node/storage.py map_size; None: its default, 64 GiB of address
        space: the file grows only as nodes are written)."""
        beside.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=".state-tree-", dir=beside))
        self._map_size = map_size or DEFAULT_MAP_SIZE
        self._env: lmdb.Environment | None = None
        self._read: lmdb.Transaction | None = None

    @property
    def env(self) -> lmdb.Environment:
        if self._env is None:
            self._env = lmdb.open(str(self.path), map_size=self._map_size, sync=False, metasync=False, lock=False)
        return self._env

    def put_state(self, key: bytes, value: bytes) -> None:
        """Not kept: the second pass reads the pairs from the checkpoint again."""

    def get_node(self, pos: bytes) -> bytes | None:
        if self._read is None:
            self._read = self.env.begin()
        return self._read.get(pos)

    def put_nodes(self, nodes: dict[bytes, bytes]) -> None:
        self._end_read()
        with self.env.begin(write=True) as txn:
            for k, v in sorted(nodes.items()):
                txn.put(k, v)
        self._unmap()

    def nodes(self) -> Iterator[tuple[bytes, bytes]]:
        """Every node, in key order."""
        self._unmap()
        after = b""
        while True:
            with self.env.begin() as txn:
                cur = txn.cursor()
                got = cur.set_range(after) if after else cur.first()
                batch = []
                while got and len(batch) < NODES_READ:
                    k, v = cur.item()
                    if k != after:
                        batch.append((bytes(k), bytes(v)))
                    got = cur.next()
            self._unmap()
            if not batch:
                return
            yield from batch
            after = batch[-1][0]

    def size(self) -> int:
        """Bytes of its data file (for the room the ledger makes ahead)."""
        return (self.path / "data.mdb").stat().st_size

    def _end_read(self) -> None:
        if self._read is not None:
            self._read.abort()
            self._read = None

    def _unmap(self) -> None:
        self._end_read()
        if self._env is not None:
            self._env.close()
            self._env = None

    def close(self) -> None:
        """Close and delete it (it is scratch: a crash leaves a `.state-tree-*` directory to remove)."""
        self._unmap()
        shutil.rmtree(self.path, ignore_errors=True)
