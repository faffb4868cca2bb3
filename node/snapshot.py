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
import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

from node.block import Block
from node.checkpoint import (
    MAGIC,
    MAX_CHUNK_FRAME,
    MAX_MANIFEST,
    Checkpoint,
    CheckpointError,
    Manifest,
    StateAssembler,
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
from node.genesis import Genesis, load_checked
from node.ledger import Ledger


def _ledger_dir(home: Path) -> Path:
    return home / "ledger" if (home / "ledger").exists() or (home / "genesis.json").exists() else home


def write_snapshot(home: Path, out: Path) -> dict[str, Any]:
    """Write HOME's certified head and state to `out` (atomically: a temporary file renamed); its manifest."""
    gen = load_checked(home / "genesis.json")
    led = Ledger(_ledger_dir(home), readonly=True, lock=True)
    tmp = out.with_name(out.name + ".partial")
    try:
        view = led.state_view()
        try:
            if view.block_raw is None:
                raise ValueError(f"{home} has committed no block yet: nothing to snapshot")
            block = Block.decode(view.block_raw)
            digest = hashlib.sha256()
            with open(tmp, "wb") as fh:
                def put(data: bytes) -> None:
                    digest.update(data)
                    fh.write(data)
                put(MAGIC)
                put(manifest_frame(gen.hash, view.block_raw, block, view.keys))
                for pairs in chunked(view.pairs()):
                    put(frame(encode_chunk(pairs)))
                fh.write(end_frame(digest.digest()))
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            view.close()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        led.close()
    os.replace(tmp, out)
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


def read_snapshot(path: Path, gen: Genesis) -> tuple[Checkpoint, dict[bytes, bytes], dict[bytes, bytes]]:
    """Read and prove a snapshot file against `gen`: (checkpoint, state, tree nodes). CheckpointError
    (a ValueError) says what is wrong: another chain or genesis, a damaged file, an uncertified block,
    a state that does not hash to the certified root."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        magic = fh.read(len(MAGIC))
        if magic != MAGIC:
            raise CheckpointError(f"{path} is not a medchain snapshot")
        digest.update(magic)
        cp = check_manifest(decode_manifest(_read_frame(fh, MAX_MANIFEST, digest)), gen.chain_id, gen.hash,
                            gen.validator_keys)
        asm = StateAssembler(cp)
        while True:
            at = digest.copy()
            item = chunk_or_end(_read_frame(fh, MAX_CHUNK_FRAME, digest))
            if isinstance(item, bytes):
                if item != at.digest():
                    raise CheckpointError("the snapshot's digest does not match its content: the file is damaged")
                if fh.read(1):
                    raise CheckpointError("bytes after the snapshot's end frame")
                break
            asm.add(item)
    state, nodes = asm.finish()
    return cp, state, nodes


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
    cp, state, nodes = read_snapshot(path, gen)
    led = Ledger(ledger_dir, genesis_root=gen.state_root)
    try:
        led.install_base(cp.block, state, nodes)
    finally:
        led.close()
    return {"height": cp.height, "block_hash": cp.block.hash.hex(), "state_root": cp.state_root.hex(),
            "state_keys": len(state), "home": str(home)}


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
