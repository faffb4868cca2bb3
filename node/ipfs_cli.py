"""`medchain ipfs add FILE`, `medchain ipfs get CID`, `medchain ipfs gc`: the block store and bitswap
for operators.

``add`` imports a file as UnixFS (kubo/Helia CIDs for the chosen profile) into a block store, by
default a validator's (``--home``; LMDB lets the running validator serve it at once), and pins it.
``get`` exports a blob from a block store, fetching it first over bitswap from ``--peer``
multiaddrs (kubo, Helia, another medchain host with this one listed) if the store lacks it;
every block is verified against its CID either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from node.ipfs.blockstore import BlockStore, IntegrityError, MissingBlock
from node.ipfs.cid import Cid, CidError
from node.ipfs.unixfs import PROFILES, import_bytes


def _store_dir(args: argparse.Namespace) -> Path | None:
    if args.store:
        return Path(args.store)
    if args.home:
        home = Path(args.home)
        if not (home / "genesis.json").exists():
            raise FileNotFoundError(f"{home} is not a validator home (no genesis.json)")
        return home / "blobs"
    return None


def _emit(args: argparse.Namespace, obj: dict, text: str) -> None:
    print(json.dumps(obj) if args.json else text)


def cmd_add(args: argparse.Namespace) -> int:
    data = Path(args.file).read_bytes()
    where = None if args.only_hash else _store_dir(args)
    if where is None:
        root, blocks = import_bytes(data, args.profile)
        n = len(blocks)
    else:
        store = BlockStore(where)
        try:
            root, cids = store.put_blob(data, args.profile)
            if args.pin:
                store.pin(root)
            n = len(cids)
        finally:
            store.close()
    _emit(args, {"cid": str(root), "size": len(data), "blocks": n, "profile": args.profile,
                 "stored": str(where) if where else None}, str(root))
    return 0


async def _fetch(store: BlockStore, root: Cid, peers: list[str], timeout: float, secret: bytes) -> dict:
    from node.p2p import P2PNode

    node = P2PNode(secret, "127.0.0.1", 0, [], lambda p, d: None, blockstore=store, external_peers=peers)
    await node.start()
    try:
        return await node.fetch_blob(root, timeout, peers=node.external_peers)
    finally:
        await node.stop()


def cmd_get(args: argparse.Namespace) -> int:
    try:
        root = Cid.parse(args.cid)
    except CidError as exc:
        raise ValueError(f"bad CID {args.cid!r}: {exc}") from None
    where = _store_dir(args)
    tmp = None
    if where is None:
        tmp = tempfile.TemporaryDirectory(prefix="medchain-ipfs-")
        where = Path(tmp.name)
    store = BlockStore(where)
    stats: dict = {}
    try:
        if not store.has_blob(root):
            if not args.peer:
                raise ValueError(f"{root} is not in {where}; name --peer MULTIADDR to fetch it over bitswap")
            from node.p2p import P2PError

            try:
                secret = os.urandom(32)
                if args.key:  # a stable peer id, for peers that admit only listed ids (medchain hosts)
                    from node.crypto.keys import Identity

                    secret = Identity.load(args.key).p2p_secret
                stats = asyncio.run(_fetch(store, root, args.peer, args.timeout, secret))
            except P2PError as exc:
                raise ConnectionError(f"fetch failed: {exc}") from None
        try:
            data = store.get_blob(root)
        except (IntegrityError, MissingBlock) as exc:
            raise ValueError(f"{root}: {exc}") from None
    finally:
        store.close()
        if tmp is not None:
            tmp.cleanup()
    if args.out:
        Path(args.out).write_bytes(data)
        _emit(args, {"cid": str(root), "size": len(data), "out": args.out, "fetch": stats},
              f"{root}: {len(data)} bytes -> {args.out}")
    elif args.json:
        _emit(args, {"cid": str(root), "size": len(data), "fetch": stats}, "")
    else:
        sys.stdout.buffer.write(data)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    where = _store_dir(args)
    if where is None:
        raise ValueError("name the block store: --home DIR or --store DIR")
    store = BlockStore(where)
    try:
        before = store.count()
        deleted = store.gc(grace=args.grace)
    finally:
        store.close()
    _emit(args, {"deleted": deleted, "blocks_before": before}, f"deleted {deleted} of {before} blocks")
    return 0


def ipfs_cmd(args: argparse.Namespace) -> int:
    return {"add": cmd_add, "get": cmd_get, "gc": cmd_gc}[args.action](args)


def register(sub: argparse._SubParsersAction, add) -> None:  # noqa: ANN001
    p = add("ipfs", ipfs_cmd, "IPFS for operators: import a file as UnixFS, export or fetch a blob by CID.")
    ps = p.add_subparsers(dest="action", required=True)
    a = ps.add_parser("add", help="import FILE as UnixFS into a block store; prints the CID")
    a.add_argument("file")
    a.add_argument("--profile", choices=list(PROFILES), default="helia-default",
                   help="chunking and CID options of kubo or Helia (default: helia-default)")
    a.add_argument("--only-hash", action="store_true", help="only print the CID, store nothing")
    a.add_argument("--pin", action="store_true", help="pin it (kept by garbage collection)")
    g = ps.add_parser("get", help="write a blob's bytes (to stdout or --out), fetching over bitswap if needed")
    g.add_argument("cid")
    g.add_argument("--peer", action="append", default=[], help="multiaddr with /p2p/<id> of a peer to fetch from "
                   "(repeatable): a kubo or Helia node, or a medchain host that lists this one")
    g.add_argument("--out", help="write the bytes here instead of stdout")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole fetch")
    g.add_argument("--key", help="key file (`medchain keygen`) whose libp2p identity to fetch with (default: a "
                   "fresh one); not a running validator's own key")
    c = ps.add_parser("gc", help="delete blocks of blobs that are neither pinned (on chain) nor recent uploads")
    c.add_argument("--grace", type=float, default=3600.0, help="keep unpinned uploads younger than this (s)")
    for sp in (a, g, c):
        sp.add_argument("--home", help="validator home: use its block store (HOME/blobs)")
        sp.add_argument("--store", help="a block store directory (instead of --home)")
        sp.add_argument("--json", action="store_true", help="machine-readable output")
