"""`medchain snapshot` and `medchain restore`: a validator's certified state in one file.

A snapshot is the head block (with its commit certificate) and the whole state at it, read in one
LMDB read transaction, so it is consistent while the validator runs and commits (the transaction
registers as a reader, so the writer never reuses the pages it reads). Not a copy of the LMDB file
(`env.copy`): that would carry the source validator's consensus log and view (what *it* signed,
which a restored node must never replay as its own), every historical block, and nothing a receiver
could check short of replaying it all. This form is what state transfer moves too (node/sync.py),
is checked the same way (node/checkpoint.py), and is small: the state, not the history.

`restore` installs it into a fresh home (its own node key and genesis) only if it is of that
genesis, intact (the file's digest), certified by 2f+1 of that genesis's validators, and its state
hashes to the certified root. The node then catches up the blocks after it from its peers. It holds
no blocks below the snapshot's height (/v1/blocks answers 404 for those; `medchain verify` checks
from the snapshot on).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from node.block import Block
from node.checkpoint import (
    MAGIC,
    MAX_CHUNK_FRAME,
    MAX_MANIFEST,
    Checkpoint,
    CheckpointError,
    Manifest,
    Pairs,
    StateAssembler,
    StateChecker,
    StateSink,
    check_manifest,
    chunk_or_end,
    chunked,
    decode_manifest,
    encode_chunk,
    end_frame,
    frame,
    manifest_frame,
)
from node.crypto.keys import Identity
from node.files import create_fresh, hold_home, replace_durably
from node.genesis import Genesis, load_checked
from node.ledger import Ledger
from node.ledger.scratch import ScratchTree, remove_stale
from node.storage import map_size
from node.verify import other_network


def _ledger_dir(home: Path) -> Path:
    return home / "ledger" if (home / "ledger").exists() or (home / "genesis.json").exists() else home


class SnapshotWriter:
    """A snapshot file as it is written: MAGIC, the manifest, the state chunks in key order, then the end
    frame with the digest of every byte before it; into OUT.partial, renamed to OUT by `finish`."""

    def __init__(self, out: Path, genesis_hash: bytes, block_raw: bytes, block: Block, keys: int) -> None:
        self.out, self.tmp = out, out.with_name(out.name + ".partial")
        self._digest = hashlib.sha256()
        self._fh = os.fdopen(create_fresh(self.tmp, 0o644), "wb")  # closed by finish or abort
        self._put(MAGIC)
        self._put(manifest_frame(genesis_hash, block_raw, block, keys))

    def _put(self, data: bytes) -> None:
        self._digest.update(data)
        self._fh.write(data)

    def chunk(self, pairs: Pairs) -> None:
        self._put(frame(encode_chunk(pairs)))

    def finish(self, sync: bool = True) -> None:
        """`sync`: make it durable (a file kept; a transfer's file is read back at once and dropped)."""
        self._fh.write(end_frame(self._digest.digest()))
        self._fh.flush()
        if sync:
            os.fsync(self._fh.fileno())
        self._fh.close()
        if sync:
            replace_durably(self.tmp, self.out)
        else:
            os.replace(self.tmp, self.out)

    def abort(self) -> None:
        self._fh.close()
        self.tmp.unlink(missing_ok=True)


def write_snapshot(home: Path, out: Path) -> dict[str, Any]:
    """Write HOME's certified head and state to `out` (atomically: a temporary file renamed); its manifest."""
    gen = load_checked(home / "genesis.json")
    led = Ledger(_ledger_dir(home), readonly=True, lock=True)
    try:
        if (why := other_network(led, gen, gen.network)) is not None:  # packed under this genesis's hash
            raise ValueError(f"{home}: the ledger is not this genesis's network: {why}")
        view = led.state_view()
        try:
            if view.block_raw is None:
                raise ValueError(f"{home} has committed no block yet: nothing to snapshot")
            block = Block.decode(view.block_raw)
            w = SnapshotWriter(out, gen.hash, view.block_raw, block, view.keys)
            try:
                for pairs in chunked(view.pairs()):
                    w.chunk(pairs)
                w.finish()
            except BaseException:
                w.abort()
                raise
        finally:
            view.close()
    finally:
        led.close()
    m = Manifest(gen.chain_id, gen.hash, block.header.height, block.hash, block.header.state_root, view.keys,
                 view.block_raw)
    return {**m.as_json(block), "file": str(out), "bytes": out.stat().st_size}


def _read_frame(fh: BinaryIO, limit: int, digest: Any) -> bytes:
    head = fh.read(4)
    if len(head) != 4:
        raise CheckpointError("the snapshot is truncated (a frame is cut off)")
    n = int.from_bytes(head, "big")
    if n > limit:
        raise CheckpointError(f"a snapshot frame of {n} bytes (at most {limit}): corrupt")
    body = fh.read(n)
    if len(body) != n:
        raise CheckpointError("the snapshot is truncated (a frame is cut off)")
    digest.update(head + body)
    return body


def _chunks(path: Path, gen: Genesis) -> tuple[Checkpoint, Iterator[Pairs]]:
    """The snapshot's checked manifest, and its state chunks as they are read; the iterator raises
    CheckpointError (a ValueError) at a damaged, truncated or foreign file, its digest checked at the
    end (so only a fully consumed iterator has proven the file intact)."""
    frames = _read(path, gen)
    cp = next(frames)
    assert isinstance(cp, Checkpoint)
    return cp, cast(Iterator[Pairs], frames)


def _read(path: Path, gen: Genesis) -> Iterator[Checkpoint | Pairs]:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        magic = fh.read(len(MAGIC))
        if magic != MAGIC:
            raise CheckpointError(f"{path} is not a medchain snapshot")
        digest.update(magic)
        yield check_manifest(decode_manifest(_read_frame(fh, MAX_MANIFEST, digest)), gen.chain_id, gen.hash,
                             gen.validator_keys)
        while True:
            at = digest.copy()
            item = chunk_or_end(_read_frame(fh, MAX_CHUNK_FRAME, digest))
            if isinstance(item, bytes):
                if item != at.digest():
                    raise CheckpointError("the snapshot's digest does not match its content: the file is damaged")
                if fh.read(1):
                    raise CheckpointError("bytes after the snapshot's end frame")
                return
            yield item


def read_snapshot(path: Path, gen: Genesis, sink: StateSink | None = None) -> tuple[Checkpoint, StateAssembler]:
    """Read and prove a snapshot file against `gen`, its pairs and tree going to `sink` (memory when
    None): (checkpoint, the assembler). CheckpointError (a ValueError) says what is wrong: another
    chain or genesis, a damaged file, an uncertified block, a state that does not hash to the
    certified root."""
    cp, chunks = _chunks(path, gen)
    asm = StateAssembler(cp, sink=sink)
    for c in chunks:
        asm.add(c)
    asm.finish()
    return cp, asm


def restore(home: Path, path: Path) -> dict[str, Any]:
    """Install a proven snapshot into HOME's empty ledger; what was installed."""
    gen = load_checked(home / "genesis.json")
    if not (home / "node_key.json").exists():
        raise ValueError(f"{home} has no node_key.json: restore into a validator home (its own key and genesis)")
    gen.index_of(Identity.load(home / "node_key.json").public_key)  # a home of this network's validator
    ledger_dir = home / "ledger"
    if (ledger_dir / "data.mdb").exists():
        led = Ledger(ledger_dir, readonly=True)
        try:
            head = led.head()
        finally:
            led.close()
        if head is not None and head.height > 0:
            raise ValueError(f"{ledger_dir} already holds a ledger at height {head.height}: restore only into a "
                             "fresh or wiped home (stop the validator and move that directory away first)")
    fd = hold_home(home)  # refused while a validator runs on this home
    try:
        return {**install(ledger_dir, gen, path), "home": str(home)}
    finally:
        os.close(fd)


def install(ledger_dir: Path, gen: Genesis, path: Path, replace: bool = False) -> dict[str, Any]:
    """Prove the snapshot at `path` against `gen` and install it into the ledger at `ledger_dir`: into an
    empty ledger, or with `replace` over one whose head is below it."""
    # first the proof: the tree is grown apart (node/ledger/scratch.py), so a state that does not
    # prove never touches the ledger and its memory stays at one batch; then the pairs again, with it
    remove_stale(ledger_dir.parent)  # an earlier installer's, killed
    tree = ScratchTree(ledger_dir.parent, map_size())
    try:
        cp, asm = read_snapshot(path, gen, tree)
        # the running validator's map size, if it runs (two sizes on one environment do not mix)
        led = Ledger(ledger_dir, genesis_root=gen.state_root, map_size=map_size())
        try:
            again, chunks = _chunks(path, gen)
            check = StateChecker(again)
            with led.installing(cp.block, replace, path.stat().st_size + tree.size()) as base:
                for c in chunks:  # the file again, its order, count and digest checked again
                    check.add(c)
                    for k, v in c:
                        base.put_state(k, v)
                check.complete()
                if again.block.hash != cp.block.hash:
                    raise CheckpointError("the snapshot changed while it was installed")
                base.append_nodes(tree.nodes())
        finally:
            led.close()
    finally:
        tree.close()
    return {"height": cp.height, "block_hash": cp.block.hash.hex(), "state_root": cp.state_root.hex(),
            "state_keys": asm.count}


def install_main(argv: list[str] | None = None) -> int:
    """`python -m node.snapshot HOME FILE`: a running validator's state transfer installs the snapshot
    it received into HOME's ledger (over the blocks it holds below it) here, in a process of its own.
    LMDB keeps a copy of every page one transaction wrote (its dirty-page list is reused, never
    freed): memory the validator would otherwise keep for its lifetime (the state itself streams,
    node/checkpoint.py StateAssembler). Prints what was installed as JSON;
    exit 1 with the reason on stderr."""
    ap = argparse.ArgumentParser(prog="python -m node.snapshot")
    ap.add_argument("home")
    ap.add_argument("file")
    ap.add_argument("--parent", type=int, default=0, help="the validator's pid: die with it")
    args = ap.parse_args(argv)
    if args.parent and not _die_with(args.parent):
        print(f"the validator (pid {args.parent}) is gone: nothing installed", file=sys.stderr)
        return 1
    try:
        home = Path(args.home)
        out = install(home / "ledger", Genesis.load(home / "genesis.json"), Path(args.file), replace=True)
    except Exception as exc:  # noqa: BLE001 - the validator reads the reason
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({**out, "peak_rss_mb": _peak_rss_mb()}))
    return 0


def _peak_rss_mb() -> int | None:
    """This process's peak resident set (VmHWM: of this program, unlike ru_maxrss, which keeps the
    parent's at the fork), for the validator's log and the benchmarks."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _die_with(parent: int) -> bool:
    """Be killed when `parent` dies (Linux PR_SET_PDEATHSIG), so a validator killed mid-install and
    restarted never has an orphan installer replace its ledger under it; False if it died already."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    return os.getppid() == parent  # checked after: a parent that died before the prctl is seen here


def _cmd_snapshot(args: argparse.Namespace) -> int:
    m = write_snapshot(Path(args.home), Path(args.out))
    print(json.dumps(m, indent=1) if args.json else
          f"wrote {m['file']} ({m['bytes']} bytes): block {m['height']} {m['block_hash'][:16]}…, "
          f"{m['state_keys']} state keys, state root {m['state_root'][:16]}…, certified by validators "
          f"{m['certificate']['signers']}")
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    m = restore(Path(args.home), Path(args.file))
    print(json.dumps(m, indent=1) if args.json else
          f"restored block {m['height']} ({m['state_keys']} state keys, root {m['state_root'][:16]}…) into "
          f"{m['home']}: start the validator and it catches up the rest from its peers")
    return 0


def register(sub: argparse._SubParsersAction, add: Any) -> None:
    s = add("snapshot", _cmd_snapshot, "Write a validator's certified head block and state to a file "
            "(consistent while it runs).")
    s.add_argument("--home", required=True, help="the validator's home (running or stopped)")
    s.add_argument("--out", required=True, help="snapshot file to write")
    r = add("restore", _cmd_restore, "Install a snapshot into a fresh validator home, once it is proven "
            "against the home's genesis.")
    r.add_argument("--home", required=True, help="a home with its own node_key.json and genesis.json, no ledger")
    r.add_argument("file", help="the snapshot file")


if __name__ == "__main__":
    sys.exit(install_main())
