"""Request-response on the libp2p adapter, with real py-libp2p hosts on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import threading

import pytest

from node.p2p import P2PError, P2PNode, peer_id_from_secret
from tests.test_p2p import free_ports, secret, until

PROTO = "/medchain/test-echo/1"
SLOW = "/medchain/test-slow/1"
BOOM = "/medchain/test-boom/1"
BIG = "/medchain/test-big/1"
NOPE = "/medchain/test-nope/1"


class Nothing(ValueError):
    """A handler's expected refusal (an `expected` error is logged at debug, not as a fault)."""

    expected = True


class Pair:
    """Validators 0 and 1 (peers of each other) and an outsider 2 that knows them."""

    def __init__(self) -> None:
        from node.p2p import peer_id_from_secret

        self.ports = free_ports(3)
        self.ids = [peer_id_from_secret(secret(i)) for i in range(3)]
        self.addrs = [f"/ip4/127.0.0.1/tcp/{self.ports[i]}/p2p/{self.ids[i]}" for i in range(3)]
        self.seen: list[tuple[str, bytes, int]] = []
        self.nodes: list[P2PNode] = []

    def make(self, i: int, peers: list[str]) -> P2PNode:
        node = P2PNode(secret(i), "127.0.0.1", self.ports[i], peers, lambda p, d: None)
        self.nodes.append(node)
        return node

    async def start(self) -> tuple[P2PNode, P2PNode]:
        a, b = self.make(0, self.addrs[:2]), self.make(1, self.addrs[:2])

        async def echo(peer: str, req: bytes) -> bytes:
            self.seen.append((peer, req, threading.get_ident()))
            return b"echo:" + req

        async def slow(peer: str, req: bytes) -> bytes:
            await asyncio.sleep(float(req.decode()))
            return b"late"

        async def boom(peer: str, req: bytes) -> bytes:
            raise KeyError("no such block")

        async def nope(peer: str, req: bytes) -> bytes:
            raise Nothing("nothing to offer here")

        async def big(peer: str, req: bytes) -> bytes:
            n = int(req.decode())
            return hashlib.sha256(req).digest() * (n // 32)

        for node in (a, b):
            node.serve(PROTO, echo, max_request=64 * 1024)
            node.serve(SLOW, slow)
            node.serve(BOOM, boom)
            node.serve(NOPE, nope)
            node.serve(BIG, big)
        await asyncio.gather(a.start(), b.start())
        await until(lambda: a.connected_peers() and b.connected_peers(), 15)
        return a, b

    async def stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_request_response_happy_path_and_limits() -> None:
    pair = Pair()

    async def main() -> None:
        a, b = await pair.start()
        try:
            loop_thread = threading.get_ident()
            assert await a.request(b.peer_id, PROTO, b"hello", timeout=10) == b"echo:hello"
            assert await b.request(a.peer_id, PROTO, b"", timeout=10) == b"echo:"
            assert pair.seen[0][:2] == (a.peer_id, b"hello")
            assert {t for _, _, t in pair.seen} == {loop_thread}  # handler ran on the asyncio loop
            # concurrent requests, each on its own stream
            outs = await asyncio.gather(*(a.request(b.peer_id, PROTO, b"%d" % k, timeout=10) for k in range(20)))
            assert outs == [b"echo:%d" % k for k in range(20)]
            # 16 MiB response (the default max_response) comes through whole
            n = 16 * 1024 * 1024
            body = await a.request(b.peer_id, BIG, str(n).encode(), timeout=60)
            assert len(body) == n and body == hashlib.sha256(str(n).encode()).digest() * (n // 32)
            # a request over the server's max_request is refused with the reason
            with pytest.raises(P2PError, match="over the limit of 65536"):
                await a.request(b.peer_id, PROTO, os.urandom(64 * 1024 + 1), timeout=10)
            # the host keeps working afterwards
            assert await a.request(b.peer_id, PROTO, b"again", timeout=10) == b"echo:again"
        finally:
            await pair.stop()

    run(main())


def test_timeout_oversized_handler_error_unknown_protocol_and_peer(caplog: pytest.LogCaptureFixture) -> None:
    pair = Pair()

    async def main() -> None:
        a, b = await pair.start()
        try:
            loop = asyncio.get_running_loop()
            with pytest.raises(P2PError, match="timed out after 0.5 s"):
                await a.request(b.peer_id, SLOW, b"5", timeout=0.5)
            with pytest.raises(P2PError, match="over max_response 1000"):
                await a.request(b.peer_id, BIG, b"4096", timeout=10, max_response=1000)
            with caplog.at_level(logging.DEBUG, logger="medchain.p2p"):
                with pytest.raises(P2PError, match=r"handler failed: KeyError: 'no such block'"):
                    await a.request(b.peer_id, BOOM, b"x", timeout=10)
                # an expected refusal reaches the requester the same way, but is no warning on the server
                with pytest.raises(P2PError, match="handler failed: Nothing: nothing to offer here"):
                    await a.request(b.peer_id, NOPE, b"x", timeout=10)
            failed = [r for r in caplog.records if "handler failed" in r.getMessage()]
            assert [(r.levelno, "KeyError" in r.getMessage()) for r in failed] == [
                (logging.WARNING, True), (logging.DEBUG, False)]
            with pytest.raises(P2PError, match="does not serve this protocol"):
                await a.request(b.peer_id, "/medchain/nobody/1", b"x", timeout=10)
            with pytest.raises(P2PError, match="unknown peer"):
                await a.request(pair.ids[2], PROTO, b"x", timeout=10)
            # a cancelled caller does not wedge anything
            task = loop.create_task(a.request(b.peer_id, SLOW, b"5", timeout=30))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await a.request(b.peer_id, PROTO, b"ok", timeout=10) == b"echo:ok"
            with pytest.raises(P2PError, match="before start"):
                a.serve("/late/1", lambda p, r: r)  # type: ignore[arg-type]
        finally:
            await pair.stop()
        with pytest.raises(P2PError, match="not started"):
            await a.request(b.peer_id, PROTO, b"x", timeout=1)

    run(main())


def test_serve_registration_errors_and_outsider_cannot_ask() -> None:
    pair = Pair()

    async def main() -> None:
        a, b = await pair.start()
        # an outsider (not in the validator set) listing a as its peer: the gate refuses it
        c = pair.make(2, pair.addrs[:1] + pair.addrs[2:])
        await c.start()
        try:
            with pytest.raises(P2PError):
                await c.request(a.peer_id, PROTO, b"let me in", timeout=5)
            assert all(p != pair.ids[2] for p, _, _ in pair.seen)
            assert a.stats["refused_peers"] >= 1
        finally:
            await pair.stop()

    run(main())
    node = P2PNode(secret(0), "127.0.0.1", 0, [], lambda p, d: None)
    with pytest.raises(ValueError, match="bad protocol id"):
        node.serve("no-slash", lambda p, r: r)  # type: ignore[arg-type]
    node.serve("/x/1", lambda p, r: r)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already served"):
        node.serve("/x/1", lambda p, r: r)  # type: ignore[arg-type]


def test_a_flood_of_inbound_messages_never_holds_the_asyncio_loop() -> None:
    """Messages are handed to the handler on the asyncio loop; with a peer streaming tiny frames
    faster than they are handled, the inbox never emptied and the drain never returned: timers,
    consensus and the API stood still (a review). It now yields every DRAIN_BATCH messages."""
    from node.p2p import node as p2p_node

    async def go() -> tuple[int, int]:
        calls = [0]
        n = p2p_node.P2PNode(secret(0), "127.0.0.1", 0, [], lambda peer, payload: flood(peer))

        def flood(peer: str) -> None:  # the trio side delivering one more for each one handled
            calls[0] += 1
            if calls[0] < 50_000:
                n._deliver(peer, b"\x01x")

        n._loop = asyncio.get_running_loop()
        seen_at: list[int] = []

        async def other_work() -> None:
            await asyncio.sleep(0)
            seen_at.append(calls[0])

        task = asyncio.create_task(other_work())
        n._deliver("peer", b"\x01x")
        await task
        while calls[0] < 50_000:
            await asyncio.sleep(0)
        return seen_at[0], calls[0]

    ran_at, total = asyncio.run(go())
    assert ran_at <= 1024 and total == 50_000  # DRAIN_BATCH (512) a turn


@pytest.mark.parametrize("gate", [True, False])
def test_connections_from_addresses_no_peer_has_are_closed_before_any_handshake(gate: bool) -> None:
    """The peer check after the noise handshake held one of the swarm's inbound slots for up to the
    upgrade timeout: ~40 idle sockets from anywhere kept every validator from reconnecting (a
    review). Connections from an address no peer has are closed at once (node.toml p2p.gate; off,
    every address is held for the handshake as before)."""
    port, peer_port = free_ports(2)
    peer = f"/ip4/127.0.0.1/tcp/{peer_port}/p2p/{peer_id_from_secret(secret(1))}"

    async def go() -> dict[str, bool]:
        node = P2PNode(secret(0), "127.0.0.1", port, [peer], lambda p, d: None, gate=gate)
        await node.start()
        try:
            def closed_at_once(src: str) -> bool:
                with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(src, 0)) as s:
                    s.settimeout(1.0)
                    try:
                        while s.recv(4096):  # what the responder says first, if anything
                            pass
                        return True  # closed
                    except TimeoutError:
                        return False  # held open, waiting for our handshake
            return {src: await asyncio.to_thread(closed_at_once, src) for src in ("127.0.0.5", "127.0.0.1")}
        finally:
            await node.stop()

    assert asyncio.run(go()) == {"127.0.0.5": gate, "127.0.0.1": False}
