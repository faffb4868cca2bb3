"""`medchain ipfs add` / `medchain ipfs get` as real processes, and a fetch over bitswap."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from node.crypto.keys import Identity
from node.ipfs.blockstore import BlockStore
from node.p2p import P2PNode, peer_id_from_secret
from tests.test_p2p import free_ports

HELLO_V0 = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
HELLO_V1_RAW = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"


def medchain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, timeout=120)


def test_add_and_get_from_a_store(tmp_path: Path) -> None:
    f = tmp_path / "hello.txt"
    f.write_bytes(b"hello world\n")
    assert medchain("ipfs", "add", str(f), "--only-hash").stdout.strip() == HELLO_V1_RAW
    assert medchain("ipfs", "add", str(f), "--only-hash", "--profile", "kubo-default").stdout.strip() == HELLO_V0
    store = tmp_path / "store"
    big = tmp_path / "big.bin"
    data = os.urandom(3 * 1024 * 1024 + 1)
    big.write_bytes(data)
    r = medchain("ipfs", "add", str(big), "--store", str(store), "--pin", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["size"] == len(data) and out["blocks"] == 5 and out["cid"].startswith("bafy")
    r = medchain("ipfs", "get", out["cid"], "--store", str(store), "--out", str(tmp_path / "back.bin"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back.bin").read_bytes() == data
    s = BlockStore(store)
    try:
        assert s.pin_count(s.put_blob(data)[0]) == 1
        s.put_blob(b"an unpinned upload")
    finally:
        s.close()
    r = medchain("ipfs", "gc", "--store", str(store), "--grace", "0", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"deleted": 1, "blocks_before": 6}
    assert medchain("ipfs", "gc").returncode == 1
    # clear errors
    r = medchain("ipfs", "get", "notacid", "--store", str(store))
    assert r.returncode == 1 and "bad CID" in r.stderr
    r = medchain("ipfs", "get", HELLO_V1_RAW, "--store", str(store))
    assert r.returncode == 1 and "--peer" in r.stderr
    r = medchain("ipfs", "add", str(tmp_path / "missing"), "--only-hash")
    assert r.returncode == 1 and "missing" in r.stderr
    r = medchain("ipfs", "add", str(f), "--home", str(tmp_path))
    assert r.returncode == 1 and "not a validator home" in r.stderr


def test_get_fetches_over_bitswap_from_a_peer(tmp_path: Path) -> None:
    key = tmp_path / "op.json"
    assert medchain("keygen", "--out", str(key)).returncode == 0
    cli_id = peer_id_from_secret(Identity.load(key).p2p_secret)
    (port,) = free_ports(1)
    data = os.urandom(1024 * 1024 + 123)

    async def main() -> None:
        store = BlockStore(tmp_path / "host")
        root, _ = store.put_blob(data)
        # a host that admits the operator's peer id for bitswap (as a validator does with --ipfs-peer)
        host = P2PNode(b"\x07" * 32, "127.0.0.1", port, [], lambda p, d: None, blockstore=store,
                       external_peers=[f"/ip4/127.0.0.1/tcp/1/p2p/{cli_id}"])
        await host.start()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "node.cli", "ipfs", "get", str(root), "--peer", host.listen_addr,
                "--key", str(key), "--out", str(tmp_path / "got.bin"), "--json", "--timeout", "30",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 90)
            assert proc.returncode == 0, err.decode()
            assert json.loads(out)["fetch"]["blocks"] == 3  # two leaves and a root
            assert host.bitswap_stats()["blocks_out"] == 3
            # without the admitted key the host refuses the connection: a clear failure
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "node.cli", "ipfs", "get", str(root), "--peer", host.listen_addr,
                "--timeout", "5", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 90)
            assert proc.returncode == 1 and "fetch failed" in err.decode()
        finally:
            await host.stop()
            store.close()

    asyncio.run(main())
    assert (tmp_path / "got.bin").read_bytes() == data
