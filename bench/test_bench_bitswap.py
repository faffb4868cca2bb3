"""Bitswap throughput between two libp2p hosts on 127.0.0.1 (real py-libp2p, noise + yamux, LMDB).

One round = host B fetches a whole blob from host A over bitswap: want-blocks out, blocks back on
A's own stream, every block hashed against its CID, the DAG written to B's LMDB store in one
synced transaction. B's copy is deleted between rounds (outside the timing). MB/s = blob bytes
(10^6) / median round time. Run: `.venv/bin/python -m pytest bench/test_bench_bitswap.py
--benchmark-only -q` (part of `make bench`).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
from pathlib import Path

import pytest

from node.ipfs.blockstore import BlockStore
from node.p2p import P2PNode, peer_id_from_secret

MiB = 1024 * 1024
FIGURES: list[str] = []


class Pair:
    """Two hosts on an asyncio loop in a background thread (pytest-benchmark calls are sync)."""

    def __init__(self, tmp: Path) -> None:
        import socket

        socks = [socket.socket() for _ in range(2)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        ports = [s.getsockname()[1] for s in socks]
        for s in socks:
            s.close()
        secrets = [bytes([40 + i]) * 32 for i in range(2)]
        addrs = [f"/ip4/127.0.0.1/tcp/{ports[i]}/p2p/{peer_id_from_secret(secrets[i])}" for i in range(2)]
        self.stores = [BlockStore(tmp / f"s{i}") for i in range(2)]
        self.nodes = [P2PNode(secrets[i], "127.0.0.1", ports[i], addrs, lambda p, d: None,
                              blockstore=self.stores[i]) for i in range(2)]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self._start())

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(300)

    async def _start(self) -> None:
        await asyncio.gather(*(n.start() for n in self.nodes))
        while not all(n.connected_peers() for n in self.nodes):
            await asyncio.sleep(0.05)

    async def _stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes))

    def close(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        for s in self.stores:
            s.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory, request):
    p = Pair(tmp_path_factory.mktemp("bitswap"))
    yield p
    p.close()
    if FIGURES:  # printed past output capture, after the last round
        cap = request.config.pluginmanager.get_plugin("capturemanager")
        with cap.global_and_fixture_disabled():
            print("\nmedchain bitswap: throughput between two hosts on loopback (MB = 10^6 bytes)")
            for line in FIGURES:
                print(line)


@pytest.mark.parametrize("size_mib", [1, 10])
def test_bitswap_fetch_throughput(benchmark, pair: Pair, size_mib: int) -> None:
    data = os.urandom(size_mib * MiB)
    root, blocks = pair.stores[0].put_blob(data)  # Helia's defaults: 1 MiB raw leaves
    _a, b = pair.nodes

    def setup() -> None:
        pair.stores[1].delete_blob(root)

    def fetch() -> None:
        pair.run(b.fetch_blob(root, 120))

    benchmark.group = "bitswap fetch"
    benchmark.extra_info["bytes"] = len(data)
    benchmark.pedantic(fetch, setup=setup, rounds=8 if size_mib == 1 else 4, warmup_rounds=1)
    assert pair.stores[1].get_blob(root) == data
    med = statistics.median(benchmark.stats.stats.data)
    FIGURES.append(f"  {size_mib:>2} MiB blob ({len(blocks)} blocks): {len(data) / med / 1e6:6.1f} MB/s "
                   f"(median of {len(benchmark.stats.stats.data)} rounds, {med * 1000:.0f} ms per fetch)")
