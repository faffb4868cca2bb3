"""The LMDB ledger. One write transaction per committed block (never one per transaction):
the block, its state writes (with every transaction's receipt) and the new head land atomically, so a
process killed mid-write leaves the previous block as the head and nothing half-written."""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lmdb

from node.block import GENESIS_PREV, Block
from node.mapfile import MapFile
from node.state import keys, smt
from node.state.records import Receipt
from node.wire import decode, encode

DEFAULT_MAP_SIZE = _MAP_SIZE = 1 << 36  # 64 GiB of address space; the file grows only as data is written


class LedgerError(RuntimeError):
    pass


@dataclass(frozen=True)
class Head:
    height: int
    hash: bytes
    state_root: bytes
    time_ms: int


class BaseWriter:
    """A proven checkpoint's state going into the ledger's install transaction (Ledger.installing)."""

    def __init__(self, txn: lmdb.Transaction, state: object, tree: object) -> None:
        self._txn, self._state, self._tree = txn, state, tree

    def put_state(self, key: bytes, value: bytes) -> None:
        # appended: the keys come in strictly increasing order (StateChecker) into an emptied table
        if not self._txn.put(key, value, db=self._state, append=True):
            raise LedgerError(f"state key {key.hex()[:32]} out of order in a checkpoint's install")

    def put_nodes(self, nodes: dict[bytes, bytes]) -> None:
        self.append_nodes(sorted(nodes.items()))

    def append_nodes(self, nodes: Iterable[tuple[bytes, bytes]]) -> None:
        """State-tree nodes in strictly increasing position order (into the emptied table)."""
        for k, v in nodes:
            if not self._txn.put(k, v, db=self._tree, append=True):
                raise LedgerError(f"state-tree node {k.hex()[:32]} out of order in a checkpoint's install")


class Snapshot:
    """State lookups inside one LMDB read transaction (Ledger.snapshot)."""

    def __init__(self, txn: lmdb.Transaction, state: object) -> None:
        self._txn, self._state = txn, state

    def get_state(self, key: bytes) -> bytes | None:
        return self._txn.get(key, db=self._state)

    def has_tx(self, txid: bytes) -> bool:
        """Whether the transaction was executed: every executed transaction has a receipt."""
        return self._txn.get(keys.receipt(txid), db=self._state) is not None


class StateView:
    """One read transaction pinned at a head: its block and its state in key order, in chunks. It
    holds LMDB pages from reuse while open, so its holders close it when done (or idle)."""

    def __init__(self, txn: lmdb.Transaction, led: Ledger) -> None:
        self._txn, self._state = txn, led.state
        head = decode(txn.get(b"head", db=led.meta))
        self.height: int = head[0]
        raw = txn.get(_h(self.height), db=led.blocks) if self.height else None
        self.block_raw: bytes | None = None if raw is None else bytes(raw)
        self.keys: int = txn.stat(led.state)["entries"]

    def pairs(self, after: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """The state's pairs with keys after `after`, in key order."""
        cur = self._txn.cursor(db=self._state)
        if not (cur.set_range(after) if after else cur.first()):
            return
        for k, v in cur:
            if bytes(k) > after:
                yield bytes(k), bytes(v)

    def close(self) -> None:
        self._txn.abort()


def _h(height: int) -> bytes:
    return struct.pack(">Q", height)


class Ledger:
    def __init__(self, path: str | Path, readonly: bool = False, genesis_root: bytes | None = None,
                 map_size: int | None = None, lock: bool | None = None) -> None:
        """`lock`: take LMDB's reader lock (default: only when writing). A reader beside a running
        validator needs it (`medchain snapshot`), or the writer may reuse the pages it reads."""
        path = Path(path)
        if not readonly:
            path.mkdir(parents=True, exist_ok=True)
        elif not (path / "data.mdb").exists():
            raise LedgerError(f"no ledger at {path}")
        lock = (not readonly) if lock is None else lock
        self._map: MapFile | None = None
        if readonly:
            self.env = lmdb.open(str(path), map_size=map_size or _MAP_SIZE, max_dbs=8, readonly=True, lock=lock)
        else:  # writes in place (node/mapfile.py), each transaction begun through self._map.write
            self._map = MapFile(path, map_size or _MAP_SIZE, 8, lock=lock, sync=True, metasync=True)
            self.env = self._map.env
        self.blocks = self.env.open_db(b"blocks", create=not readonly)
        self.hashes = self.env.open_db(b"hashes", create=not readonly)
        # txid -> (height, index), written by ledgers before the receipts (keys.receipt) took its place:
        # kept only so a replace (install_base) empties it
        self.txloc = self.env.open_db(b"txloc", create=not readonly)
        self.state = self.env.open_db(b"state", create=not readonly)
        self.meta = self.env.open_db(b"meta", create=not readonly)
        self.consensus = self.env.open_db(b"consensus", create=not readonly)
        self.tree = self.env.open_db(b"smt", create=not readonly)  # state tree nodes: position -> record
        self._local = threading.local()  # per thread: a read transaction at the head (_head_reader)
        self._gen = 0  # bumped by every commit: cached read transactions are then stale
        if self._map is not None and genesis_root is not None and self.head() is None:
            with self._map.write() as txn:
                txn.put(b"head", encode([0, GENESIS_PREV, genesis_root, 0]), db=self.meta)

    def close(self) -> None:
        self._gen += 1
        if self._map is not None:
            self._map.close()
        else:
            self.env.close()

    def _write(self, puts: int = 1, payload: int = 0, db: object = None) -> lmdb.Transaction:
        if self._map is None:
            raise LedgerError("this ledger was opened read-only")
        return self._map.write(puts, payload, db)

    def spare(self) -> int:
        """Disk space allocated ahead for the next transactions (node/mapfile.py)."""
        return 0 if self._map is None else self._map.spare()

    def invalidate_reads(self) -> None:
        """After a write made straight to `env` (benchmark set-up): cached read transactions are stale."""
        self._gen += 1

    def head(self) -> Head | None:
        with self.env.begin() as txn:
            raw = txn.get(b"head", db=self.meta)
        if raw is None:
            return None
        h, hsh, root, t = decode(raw)
        return Head(h, hsh, root, t)

    def network(self) -> str | None:
        """The name of the network (its genesis hash, shortened) this ledger was first run on; None
        for one written before ledgers kept it."""
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(b"network")
        return None if raw is None else bytes(raw).decode()

    def mark_network(self, network: str) -> None:
        if self._map is None:
            raise LedgerError("a read-only ledger is not marked")
        with self._map.write() as txn:
            txn.put(b"network", network.encode(), db=self.meta)

    def base_height(self) -> int:
        """The checkpoint this ledger starts from (restored or state-transferred), 0 for genesis:
        blocks below it are not held here."""
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(b"base")
        return 0 if raw is None else decode(raw)

    def state_view(self) -> StateView:
        """The head block and the whole state at it, pinned in one read transaction (close it)."""
        return StateView(self.env.begin(), self)

    def install_base(self, block: Block, state: dict[bytes, bytes], nodes: dict[bytes, bytes],
                     replace: bool = False) -> Head:
        """installing() with the whole state and its state-tree nodes in hand (tests, small tools)."""
        payload = sum(len(k) + len(v) + 8 for d in (state, nodes) for k, v in d.items())
        with self.installing(block, replace, payload) as base:
            for k, v in sorted(state.items()):
                base.put_state(k, v)
            base.put_nodes(nodes)
        return Head(block.header.height, block.hash, block.header.state_root, block.header.time_ms)

    @contextmanager
    def installing(self, block: Block, replace: bool = False, payload: int = 0) -> Iterator[BaseWriter]:
        """Start the ledger from a proven checkpoint (node/checkpoint.py): its block (the new head and
        base), the whole state at it and its state-tree nodes, in one transaction, which the caller
        fills through the writer it is given (the state and the nodes each in key order) and which
        commits only if the caller's block raises nothing. Into an
        empty ledger only, or with `replace` over one whose head is below the checkpoint (state
        transfer to a validator that took a few blocks meanwhile: they are history below the new
        base). `payload`: about how many bytes the state and its tree take (room is made ahead)."""
        h = block.header
        raw = block.encode()
        # the state goes in in key order: pages fill up, so its bytes (and LMDB's 8 per entry) bound
        # what it takes, not a path of pages per put as for a block's scattered writes
        with self._write(64, payload + len(raw)) as txn:
            cur = decode(txn.get(b"head", db=self.meta))
            if replace and cur[0] < h.height:
                for db in (self.blocks, self.hashes, self.txloc, self.state, self.tree):
                    txn.drop(db, delete=False)
            elif cur[0] != 0 or txn.stat(self.blocks)["entries"] or txn.stat(self.state)["entries"]:
                raise LedgerError(f"the ledger already holds blocks (head {cur[0]}): a checkpoint is installed "
                                  "only into an empty ledger")
            else:
                txn.drop(self.tree, delete=False)  # the tree is built on what it holds: nothing
            for seq, _ in list(txn.cursor(db=self.consensus)):  # what we signed at or below it binds nothing
                if struct.unpack(">Q", seq)[0] <= h.height:
                    txn.delete(seq, db=self.consensus)
            txn.put(_h(h.height), raw, db=self.blocks)
            txn.put(block.hash, _h(h.height), db=self.hashes)
            yield BaseWriter(txn, self.state, self.tree)
            txn.put(b"head", encode([h.height, block.hash, h.state_root, h.time_ms]), db=self.meta)
            txn.put(b"base", encode(h.height), db=self.meta)
        self._gen += 1

    def get_state(self, key: bytes) -> bytes | None:
        with self.env.begin(db=self.state) as txn:
            return txn.get(key)

    def state_reader(self):  # noqa: ANN201 - returns (get, close)
        """A consistent snapshot for executing a block: one read transaction."""
        txn = self.env.begin(db=self.state)
        return txn.get, txn.abort

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """One read transaction for many lookups (admission of a batch): a consistent view, and one
        transaction begun instead of one per lookup."""
        txn = self.env.begin()
        try:
            yield Snapshot(txn, self.state)
        finally:
            txn.abort()

    def scan_state(self, prefix: bytes, limit: int = 10_000, after: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Up to `limit` state pairs whose key starts with `prefix`, in key order, past the key `after`."""
        out = []
        with self.env.begin(db=self.state) as txn:
            cur = txn.cursor()
            if cur.set_range(max(prefix, after)):
                for k, v in cur:
                    if not k.startswith(prefix) or len(out) >= limit:
                        break
                    if k != after:
                        out.append((bytes(k), bytes(v)))
        return out

    def _head_reader(self) -> lmdb.Transaction:
        """This thread's read transaction at the committed head, renewed after every commit: a
        block's execution reads about four state keys and a dozen state-tree nodes per transaction,
        and a transaction begun per read costs ~1.5 us (and two GIL hand-offs) more."""
        loc = self._local
        if getattr(loc, "gen", -1) != self._gen:
            if getattr(loc, "txn", None) is not None:
                loc.txn.abort()
            gen = self._gen  # read first: a commit between the two leaves the next call renewing again
            loc.txn, loc.gen = self.env.begin(), gen
        return loc.txn

    def head_state(self, key: bytes) -> bytes | None:
        """A state value at the committed head, for executing blocks (the pipeline's tip): one
        snapshot with `get_node`. Other readers use get_state or snapshot, which hold no transaction."""
        return self._head_reader().get(key, db=self.state)

    def get_node(self, pos: bytes) -> bytes | None:
        """A state-tree node at the committed head (see head_state)."""
        return self._head_reader().get(pos, db=self.tree)

    def iter_nodes(self) -> Iterator[tuple[bytes, bytes]]:
        with self.env.begin(db=self.tree) as txn:
            for k, v in txn.cursor():
                yield bytes(k), bytes(v)

    def prove(self, state_keys: list[bytes]) -> tuple[int, list[tuple[bytes | None, smt.Proof]]]:
        """The head's height and each key's value and proof against the head's state root, from one
        read transaction so they agree (the caller takes that block's header and certificate)."""
        with self.env.begin() as txn:
            height = decode(txn.get(b"head", db=self.meta))[0]

            def node(pos: bytes) -> bytes | None:
                return txn.get(pos, db=self.tree)
            out = []
            for k in state_keys:
                v = txn.get(k, db=self.state)
                out.append((None if v is None else bytes(v), smt.prove(node, k)))
        return height, out

    def commit_block(self, block: Block, writes: dict[bytes, bytes],
                     nodes: dict[bytes, bytes] | None = None) -> Head:
        """Append a certified block and its state writes atomically; refuses anything but head+1."""
        h = block.header
        raw = block.encode()
        nodes = nodes or {}
        payload = len(raw) + sum(map(len, writes.values())) + sum(map(len, nodes.values()))
        with self._write(len(writes) + len(nodes) + 4, payload) as txn:
            cur = decode(txn.get(b"head", db=self.meta))
            if h.height != cur[0] + 1 or h.prev_hash != cur[1]:
                raise LedgerError(f"block {h.height} does not extend head {cur[0]}")
            txn.put(_h(h.height), raw, db=self.blocks)
            txn.put(block.hash, _h(h.height), db=self.hashes)
            for k, v in writes.items():
                txn.put(k, v, db=self.state)
            for k, v in nodes.items():  # the state tree's dirty nodes for this block
                txn.put(k, v, db=self.tree)
            txn.delete(_h(h.height), db=self.consensus)
            head = Head(h.height, block.hash, h.state_root, h.time_ms)
            txn.put(b"head", encode([head.height, head.hash, head.state_root, head.time_ms]), db=self.meta)
        self._gen += 1
        return head

    def block(self, height: int) -> Block | None:
        with self.env.begin(db=self.blocks) as txn:
            raw = txn.get(_h(height))
        return None if raw is None else Block.decode(raw)

    def block_raw(self, height: int) -> bytes | None:
        with self.env.begin(db=self.blocks) as txn:
            raw = txn.get(_h(height))
        return None if raw is None else bytes(raw)

    def receipt(self, txid: bytes) -> Receipt | None:
        """A committed transaction's receipt (where it is, and its result), if its block is held here
        (None for one below a checkpoint this ledger started from: its block is not held)."""
        with self.env.begin() as txn:
            raw = txn.get(keys.receipt(txid), db=self.state)
            if raw is None:
                return None
            rec = Receipt.decode(raw)
            base = txn.get(b"base", db=self.meta)
            return None if base is not None and rec.height < decode(base) else rec

    def tx_location(self, txid: bytes) -> tuple[int, int] | None:
        """(height, index) of a committed transaction whose block is held here (see receipt)."""
        rec = self.receipt(txid)
        return None if rec is None else (rec.height, rec.tx_index)

    def iter_blocks(self, start: int = 1) -> Iterator[tuple[int, bytes]]:
        with self.env.begin(db=self.blocks) as txn:
            cur = txn.cursor()
            if cur.set_range(_h(start)):
                for k, v in cur:
                    yield struct.unpack(">Q", k)[0], bytes(v)

    def iter_state(self) -> Iterator[tuple[bytes, bytes]]:
        with self.env.begin(db=self.state) as txn:
            for k, v in txn.cursor():
                yield bytes(k), bytes(v)

    def get_view(self) -> int:
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(b"view")
        return 0 if raw is None else decode(raw)

    def put_view(self, view: int, new_view: bytes | None = None) -> None:
        """The replica's view and the NEW-VIEW that installed it (None while it waits for one), synced
        before any message of that view is sent."""
        with self._write(2, len(new_view or b""), db=self.meta) as txn:
            txn.put(b"view", encode(view))
            if new_view is None:
                txn.delete(b"new_view")
            else:
                txn.put(b"new_view", new_view)

    def get_new_view(self) -> bytes | None:
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(b"new_view")
        return None if raw is None else bytes(raw)

    # The consensus log: what this replica signed for sequences not yet committed, persisted
    # (synced) before the message is sent, and dropped in the same transaction that commits the block.
    def log_put(self, seq: int, value: bytes) -> None:
        with self._write(1, len(value), db=self.consensus) as txn:
            txn.put(_h(seq), value)

    def log_entries(self) -> list[tuple[int, bytes]]:
        with self.env.begin(db=self.consensus) as txn:
            return [(struct.unpack(">Q", k)[0], bytes(v)) for k, v in txn.cursor()]
