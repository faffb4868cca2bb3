"""Interoperability with Helia (JavaScript IPFS, an independent bitswap implementation).

Run with `make interop`: it installs Node 22 (npm package `node@22`) and Helia into build/interop
and runs this file. Not part of `make test`: it needs the npm registry and ~1 minute to install.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import subprocess
import threading
from pathlib import Path

import pytest

from node.ipfs.blockstore import BlockStore
from node.ipfs.cid import Cid
from node.ipfs.unixfs import Profile, import_bytes
from node.p2p import P2PNode
from tests.test_p2p import free_ports

ROOT = Path(__file__).resolve().parents[1]
HELIA_DIR = Path(os.environ.get("MEDCHAIN_HELIA_DIR", ROOT / "build" / "interop")).resolve()
NODE = HELIA_DIR / "node_modules" / ".bin" / "node"
MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(not NODE.exists(), reason=f"Helia not installed in {HELIA_DIR} (run `make interop`)")


class Helia:
    """The Helia peer process (interop/helia_peer.mjs), one JSON command per line."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([str(NODE), str(HELIA_DIR / "helia_peer.mjs")], cwd=HELIA_DIR, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        info = self._read(60)
        self.peer_id, self.addr = info["peer_id"], info["addrs"][0]

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def _read(self, timeout: float) -> dict:
        try:
            return json.loads(self.lines.get(timeout=timeout))
        except queue.Empty:
            err = self.proc.stderr.read()[-3000:] if self.proc.poll() is not None else ""
            raise AssertionError(f"Helia did not answer: {err}") from None

    def cmd(self, obj: dict, timeout: float = 90) -> dict:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()
        res = self._read(timeout)
        assert "error" not in res, res["error"]
        return res

    def stop(self) -> None:
        try:
            self.proc.stdin.write('{"cmd": "stop"}\n')
            self.proc.stdin.flush()
            self.proc.wait(10)
        except Exception:  # noqa: BLE001
            self.proc.kill()


def test_helia_and_medchain_exchange_blobs_both_ways(tmp_path: Path) -> None:
    helia = Helia()
    store = BlockStore(tmp_path / "store")
    (port,) = free_ports(1)
    node = P2PNode(b"\x09" * 32, "127.0.0.1", port, [], lambda p, d: None, blockstore=store,
                   external_peers=[helia.addr])

    async def main() -> None:
        await node.start()
        try:
            # Helia fetches from a medchain host: multi-block CIDv1 (1 MiB raw leaves), a 2 MiB raw
            # block, a single small block, and a CIDv0 dag-pb DAG (the v0 prefix)
            blobs = {
                "helia-default 3 MiB": (os.urandom(3 * MiB + 5), "helia-default"),
                "12 B": (b"hello world\n", "helia-default"),
                "kubo-default 600 kB (CIDv0)": (os.urandom(600_000), "kubo-default"),
            }
            for name, (data, profile) in blobs.items():
                root, _ = store.put_blob(data, profile)
                res = await asyncio.to_thread(helia.cmd, {"cmd": "cat", "cid": str(root), "peer": node.listen_addr})
                assert res == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}, name
            # one 2 MiB raw block (the most a bitswap peer must accept; py-libp2p refused > 512 KiB)
            two = os.urandom(2 * MiB)
            root2, blocks2 = import_bytes(two, Profile(1, True, 2 * MiB, 174, True))
            assert list(blocks2) == [root2]
            store.put_dag(root2, blocks2.items(), len(two))
            res = await asyncio.to_thread(helia.cmd, {"cmd": "cat", "cid": str(root2), "peer": node.listen_addr})
            assert res["sha256"] == hashlib.sha256(two).hexdigest()
            # a want that reaches us before we hold the block is answered once we do
            late = os.urandom(MiB + 7)
            late_root, late_blocks = import_bytes(late)
            pending = asyncio.ensure_future(asyncio.to_thread(
                helia.cmd, {"cmd": "cat", "cid": str(late_root), "peer": node.listen_addr}))
            await asyncio.sleep(2.0)
            assert not pending.done()
            store.put_dag(late_root, late_blocks.items(), len(late))
            node.blocks_added(list(late_blocks))
            assert (await pending)["sha256"] == hashlib.sha256(late).hexdigest()
            # a medchain host fetches from Helia
            for size in (12, 3 * MiB + 1):
                data = os.urandom(size)
                f = tmp_path / f"h{size}.bin"
                f.write_bytes(data)
                cid = Cid.parse((await asyncio.to_thread(helia.cmd, {"cmd": "add", "path": str(f)}))["cid"])
                assert cid == import_bytes(data)[0]  # identical CIDs for identical bytes and options
                await node.fetch_blob(cid, 60, peers=[helia.peer_id])
                assert store.get_blob(cid) == data
            assert node.bitswap_stats()["unwanted_blocks"] == 0
        finally:
            await node.stop()

    try:
        asyncio.run(asyncio.wait_for(main(), 300))
    finally:
        helia.stop()
        store.close()
