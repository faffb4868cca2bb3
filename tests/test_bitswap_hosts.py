"""Bitswap between real libp2p hosts on 127.0.0.1, each with its own LMDB block store."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from node.ipfs.blockstore import BlockStore, MissingBlock
from node.ipfs.cid import Cid
from node.ipfs.unixfs import PROFILES, import_bytes
from node.p2p import P2PError, P2PNode, peer_id_from_secret
from tests.test_p2p import free_ports, secret, until

MiB = 1024 * 1024


class CorruptingStore(BlockStore):
    """A real LMDB store whose owner serves flipped bytes (a lying or broken peer)."""

    def get(self, cid: Cid) -> bytes | None:
        data = super().get(cid)
        if data is None:
            return None
        return bytes([data[0] ^ 0xFF]) + data[1:] if data else b"\x00"


class Hosts:
    def __init__(self, tmp: Path, n: int, store_cls: dict[int, type] | None = None) -> None:
        self.ports = free_ports(n)
        self.ids = [peer_id_from_secret(secret(i)) for i in range(n)]
        self.addrs = [f"/ip4/127.0.0.1/tcp/{self.ports[i]}/p2p/{self.ids[i]}" for i in range(n)]
        self.stores = [(store_cls or {}).get(i, BlockStore)(tmp / f"s{i}") for i in range(n)]
        self.haves: list[list[tuple[str, bytes]]] = [[] for _ in range(n)]
        self.nodes = [
            P2PNode(secret(i), "127.0.0.1", self.ports[i], self.addrs, lambda p, d: None,
                    blockstore=self.stores[i], on_have=lambda p, cs, i=i: self.haves[i].extend((p, c) for c in cs))
            for i in range(n)
        ]

    async def start(self) -> None:
        await asyncio.gather(*(n.start() for n in self.nodes))
        k = len(self.nodes) - 1
        await until(lambda: all(len(n.connected_peers()) == k for n in self.nodes), 15)

    async def stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes))
        for s in self.stores:
            s.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 240))


@pytest.mark.parametrize("profile", ["helia-default", "kubo-default"])
def test_two_hosts_exchange_0b_12b_1mib_10mib(tmp_path: Path, profile: str) -> None:
    h = Hosts(tmp_path, 2)

    async def main() -> None:
        await h.start()
        a, b = h.nodes
        try:
            for size in (0, 12, MiB, 10 * MiB):
                data = os.urandom(size)
                root, blocks = h.stores[0].put_blob(data, profile)
                assert (root.version == 0) == (profile == "kubo-default")
                assert (len(blocks) > 1) == (size > PROFILES[profile].chunk_size)  # single and multi-block
                stats = await b.fetch_blob(root, timeout=60)
                assert stats["size"] == size and stats["blocks"] == len(blocks)
                assert h.stores[1].get_blob(root) == data
                assert h.stores[1].blob_size(root) == size
                # already held: no network round
                assert (await b.fetch_blob(root, timeout=5)).get("already_held")
            st = a.bitswap_stats()
            assert st["blocks_out"] >= 1 and st["unwanted_blocks"] == 0
        finally:
            await h.stop()

    run(main())


def test_a_validator_fetches_no_dag_past_its_blob_bound(tmp_path: Path) -> None:
    """A validator's node bounds what one fetched blob may hold (the genesis's max_blob_bytes): a
    peer serving a 10 MiB DAG under a root is refused once the fetch passes twice the bound (it was
    1 GiB per fetch, held in memory until it ended); a blob within it is fetched as before."""
    h = Hosts(tmp_path, 2)
    bound = 2 * MiB
    h.nodes[1].max_blob_bytes = bound  # what the validator passes at construction (max_blob_bytes=)

    async def main() -> None:
        await h.start()
        b = h.nodes[1]
        try:
            small, _ = h.stores[0].put_blob(os.urandom(bound), "kubo-default")
            assert (await b.fetch_blob(small, timeout=60))["size"] == bound
            big, _ = h.stores[0].put_blob(os.urandom(10 * MiB), "kubo-default")
            with pytest.raises(P2PError, match=f"DAG larger than {2 * bound + 65536} bytes"):
                await b.fetch_blob(big, timeout=60)
            assert not h.stores[1].has_blob(big)
            over, _ = h.stores[0].put_blob(os.urandom(bound + 1), "kubo-default")  # whole, and one byte too many
            with pytest.raises(P2PError, match=f"declares more than the {bound} bytes it may hold"):
                await b.fetch_blob(over, timeout=60)
            assert not h.stores[1].has_blob(over)
            # the refusals failed those fetches, not the peer's stream: the next one still comes
            after, _ = h.stores[0].put_blob(os.urandom(1000), "kubo-default")
            assert (await b.fetch_blob(after, timeout=20))["size"] == 1000
        finally:
            await h.stop()

    run(main())


def test_deleted_copy_is_refetched_and_late_want_is_answered(tmp_path: Path) -> None:
    h = Hosts(tmp_path, 3)

    async def main() -> None:
        await h.start()
        a, b, c = h.nodes
        try:
            data = os.urandom(3 * MiB + 5)
            root, blocks = h.stores[0].put_blob(data)
            await b.fetch_blob(root, timeout=60)
            # b loses its copy (operator error, disk loss): reads fail, a fetch restores it
            assert h.stores[1].delete_blob(root) == len(blocks)
            with pytest.raises(MissingBlock):
                h.stores[1].get_blob(root)
            await b.fetch_blob(root, timeout=60)
            assert h.stores[1].get_blob(root) == data
            # a want that arrives before the block is held is answered once it is: c asks only
            # a, which does not hold `late` yet; a stores it afterwards and announces it
            late = os.urandom(100_000)
            late_root, late_blocks = import_bytes(late)
            fetch = asyncio.ensure_future(c.fetch_blob(late_root, timeout=30, peers=[a.peer_id]))
            await asyncio.sleep(1.0)
            assert not fetch.done()
            h.stores[0].put_dag(late_root, late_blocks.items(), len(late))
            a.blocks_added(list(late_blocks))
            stats = await fetch
            assert h.stores[2].get_blob(late_root) == late and stats["dont_have"] >= 1
            # availability: HAVE now (held) and later (b fetches after c asked)
            c.track_have([late_root])
            await until(lambda: any(p == a.peer_id for p, _ in h.haves[2]), 10)
            assert not any(p == b.peer_id for p, _ in h.haves[2])
            await b.fetch_blob(late_root, timeout=30)
            await until(lambda: any(p == b.peer_id for p, _ in h.haves[2]), 10)
            assert all(cid == late_root.to_bytes() for _, cid in h.haves[2])
        finally:
            await h.stop()

    run(main())


def test_corrupting_peer_is_detected_and_blob_fetched_elsewhere(tmp_path: Path) -> None:
    h = Hosts(tmp_path, 3, store_cls={0: CorruptingStore})

    async def main() -> None:
        await h.start()
        a, b, c = h.nodes
        try:
            data = os.urandom(2 * MiB + 17)
            root, _ = h.stores[0].put_blob(data)  # the corrupting peer holds it ...
            h.stores[1].put_blob(data)  # ... and so does an honest one
            stats = await c.fetch_blob(root, timeout=60, peers=[a.peer_id, b.peer_id])
            assert h.stores[2].get_blob(root) == data
            assert stats["bad_peers"] == [a.peer_id] and stats["bad_blocks"] >= 1
            assert c.bitswap_stats()["unwanted_blocks"] >= 1
            # only the corrupting peer holds the next one: the fetch fails with a clear error
            solo = os.urandom(1000)
            root2, _ = h.stores[0].put_blob(solo)
            with pytest.raises(P2PError, match="no usable peer left"):
                await c.fetch_blob(root2, timeout=30, peers=[a.peer_id])
            assert h.stores[2].blob_size(root2) is None
            with pytest.raises(P2PError, match="not configured"):
                await c.fetch_blob(root2, timeout=5, peers=["12D3KooWnotapeer"])
            with pytest.raises(P2PError, match="timed out"):  # nobody holds it
                await c.fetch_blob(Cid.parse("bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"),
                                   timeout=2)
        finally:
            await h.stop()

    run(main())


def test_replies_come_on_a_new_outbound_stream_to_a_plain_bitswap_client(tmp_path: Path) -> None:
    """py-libp2p 0.8.1's defect: it wrote replies on the asker's inbound stream, which kubo and
    Helia never read. A bare py-libp2p host (not our adapter) speaking raw bitswap asks a
    medchain host for a CIDv0 block, a 2 MiB CIDv1 block and a missing one: the block messages
    and the DONT_HAVE arrive on a stream *the medchain host* opened, and nothing comes back on
    the asker's own stream."""
    import threading

    import multiaddr
    import trio
    from libp2p import new_host
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
    from libp2p.security.noise.transport import Transport as Noise
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
    from libp2p.stream_muxer.yamux.yamux import Yamux

    from node.ipfs.bitswap_pb import DONT_HAVE, Entry, Message, decode_message, encode_message
    from node.ipfs.cid import encode_varint
    from node.ipfs.unixfs import Profile
    from node.p2p._streamio import StreamReader
    from node.p2p._trio_side import _x25519_key
    from node.p2p.identity import key_pair_from_secret

    proto = TProtocol("/ipfs/bitswap/1.2.0")
    ports = free_ports(2)
    client_secret = b"\x0c" * 32
    client_id = peer_id_from_secret(client_secret)
    store = BlockStore(tmp_path / "srv")
    v0_root, _ = store.put_blob(b"hello world\n", "kubo-default")
    big = os.urandom(2 * MiB)
    big_root, big_blocks = import_bytes(big, Profile(1, True, 2 * MiB, 174, True))
    store.put_dag(big_root, big_blocks.items(), len(big))
    missing = import_bytes(b"nobody has this")[0]
    node = P2PNode(b"\x0b" * 32, "127.0.0.1", ports[0], [], lambda p, d: None, blockstore=store,
                   external_peers=[f"/ip4/127.0.0.1/tcp/{ports[1]}/p2p/{client_id}"])
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()
    asyncio.run_coroutine_threadsafe(node.start(), loop).result(30)
    got: list[Message] = []

    async def client() -> bytes:
        kp = key_pair_from_secret(client_secret)
        host = new_host(key_pair=kp, sec_opt={TProtocol(NOISE_ID): Noise(kp, noise_privkey=_x25519_key())},
                        muxer_opt={TProtocol(YAMUX_ID): Yamux},
                        listen_addrs=[multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{ports[1]}")])
        done = trio.Event()

        async def on_stream(stream) -> None:  # the medchain host's outbound stream
            reader = StreamReader(stream)
            while (n := await reader.uvarint()) is not None:
                got.append(decode_message(await reader.exactly(n)))
                if sum(len(m.blocks) for m in got) == 2 and any(m.presences for m in got):
                    done.set()

        host.set_stream_handler(proto, on_stream)
        async with host.run([multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{ports[1]}")]):
            pid = ID.from_base58(node.peer_id)
            await host.connect(PeerInfo(pid, [multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{ports[0]}")]))
            s = await host.new_stream(pid, [proto])
            want = encode_message(Message(entries=[Entry(v0_root), Entry(big_root),
                                                   Entry(missing, send_dont_have=True)]))
            await s.write(encode_varint(len(want)) + want)
            with trio.fail_after(30):
                await done.wait()
            back = b""
            with trio.move_on_after(0.5):
                back = await s.read(1)
            await host.close()
            return back

    try:
        assert trio.run(client) == b""  # nothing on the asker's own stream
    finally:
        asyncio.run_coroutine_threadsafe(node.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(5)
        loop.close()
        store.close()
    blocks = {c: d for m in got for c, d in m.blocks}
    assert blocks == {v0_root: import_bytes(b"hello world\n", "kubo-default")[1][v0_root], big_root: big}
    assert sorted(c.version for c in blocks) == [0, 1]  # the v0 block came with a v0 prefix
    assert [(c, k) for m in got for c, k in m.presences] == [(missing, DONT_HAVE)]

