"""The trio half of the adapter: one libp2p host, direct streams and (optionally) gossipsub.

Everything here runs on the trio thread (or, for measurement, in trio guest mode). The asyncio
half (``node.py``) talks to it only through thread-safe primitives: it appends frames to the
per-peer ``deque``s and calls :meth:`TrioSide.kick`; inbound payloads leave through the
``deliver`` callback, which must itself be thread-safe.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INotifee
from libp2p.custom_types import TProtocol
from libp2p.network.config import RetryConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from libp2p.transport.exceptions import SecurityUpgradeFailure

log = logging.getLogger("medchain.p2p")


class _QuietDialFailures(logging.Filter):
    """py-libp2p logs every refused TCP dial at ERROR; a validator redials peers that are down
    (or not up yet) every second, so those records are dropped here (we log them at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to open TCP stream")


logging.getLogger("libp2p.transport.tcp.tcp").addFilter(_QuietDialFailures())

DIRECT_PROTOCOL = TProtocol("/medchain/pbft/1.0.0")
READ_CHUNK = 256 * 1024  # bytes asked of the muxer per read
WRITE_BATCH_BYTES = 256 * 1024  # queued frames coalesced into one stream write
WRITE_BATCH_FRAMES = 1024
DIAL_TIMEOUT = 5.0
BACKOFF_MIN, BACKOFF_MAX = 0.05, 1.0
GOSSIP_QUEUE = 100_000  # pubsub's per-peer outbound RPC queue (library default: 32)


class PeerOut:
    """Outbound state for one validator: its frame queue and the trio wake-up plumbing."""

    __slots__ = ("pid", "name", "addr", "queue", "event", "waiting", "sessions")

    def __init__(self, name: str, addr: str, queue: deque) -> None:
        self.name = name
        self.pid = ID.from_base58(name)
        self.addr = multiaddr.Multiaddr(addr)
        self.queue = queue
        self.event = trio.Event()
        self.waiting = False
        self.sessions = 0


class _Sink:
    """Stands in for pubsub's 32-slot subscription channel (which drops when full): every
    message is handed straight to the adapter, in the trio thread, without a queue."""

    def __init__(self, fn: Callable[[Any], None]) -> None:
        self.send_nowait = fn

    async def aclose(self) -> None:
        return None

    def close(self) -> None:
        return None


class _BigQueues(dict):
    """pubsub.peer_queues replacement: raises each new per-peer RpcQueue's bound."""

    def __setitem__(self, key: Any, queue: Any) -> None:
        with contextlib.suppress(AttributeError):
            queue._queue.max_size = GOSSIP_QUEUE
        super().__setitem__(key, queue)


class _ConnWatch(INotifee):
    def __init__(self, side: TrioSide) -> None:
        self.side = side

    async def connected(self, network: Any, conn: Any) -> None:
        self.side._conn_changed(conn.muxed_conn.peer_id, +1)

    async def disconnected(self, network: Any, conn: Any) -> None:
        self.side._conn_changed(conn.muxed_conn.peer_id, -1)

    async def opened_stream(self, network: Any, stream: Any) -> None:
        return None

    async def closed_stream(self, network: Any, stream: Any) -> None:
        return None

    async def listen(self, network: Any, maddr: Any) -> None:
        return None

    async def listen_close(self, network: Any, maddr: Any) -> None:
        return None


class TrioSide:
    def __init__(
        self,
        *,
        key_pair: Any,
        listen_host: str,
        listen_port: int,
        peers: dict[str, str],  # peer id -> multiaddr (without self)
        queues: dict[str, deque],
        gossip_queue: deque,
        deliver: Callable[[str, bytes], None],
        stats: dict[str, int],
        mode: str,
        topic: str,
        max_frame: int,
        muxer: str,
        strict_signing: bool,
    ) -> None:
        self.key_pair = key_pair
        self.my_id = ID.from_pubkey(key_pair.public_key)
        self.listen = multiaddr.Multiaddr(f"/ip4/{listen_host}/tcp/{listen_port}")
        self.outs = {name: PeerOut(name, addr, queues[name]) for name, addr in peers.items()}
        self.allowed: dict[ID, str] = {o.pid: o.name for o in self.outs.values()}
        self.allowed_bytes: dict[bytes, str] = {o.pid.to_bytes(): o.name for o in self.outs.values()}
        self.gossip_queue = gossip_queue
        self.deliver = deliver
        self.stats = stats
        self.mode = mode
        self.topic = topic
        self.max_frame = max_frame
        self.muxer = muxer
        self.strict_signing = strict_signing
        self.token: trio.lowlevel.TrioToken | None = None
        self.port = listen_port
        self.connected: tuple[str, ...] = ()  # snapshot read by the asyncio side
        self._conns: dict[str, int] = {}
        self._kick_pending = False
        self._gossip_event = trio.Event()
        self._gossip_waiting = False
        self._stop = trio.Event()
        self._pubsub: Any = None
        self.host: Any = None

    # ---- called from any thread -------------------------------------------------------------
    def kick(self) -> None:
        """Wake the writers after frames were queued. Coalesced: one hop per burst."""
        if self._kick_pending or self.token is None:
            return
        self._kick_pending = True
        try:
            self.token.run_sync_soon(self._on_kick)
        except trio.RunFinishedError:
            pass

    def request_stop(self) -> None:
        if self.token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(self._stop.set)

    # ---- trio thread ------------------------------------------------------------------------
    def _on_kick(self) -> None:
        self._kick_pending = False
        for o in self.outs.values():
            if o.waiting:
                o.event.set()
        if self._gossip_waiting:
            self._gossip_event.set()

    def _build_host(self) -> Any:
        noise = NoiseTransport(self.key_pair, noise_privkey=_x25519_key())
        if self.muxer == "mplex":
            muxers = {TProtocol(MPLEX_PROTOCOL_ID): Mplex}
        else:
            muxers = {TProtocol(YAMUX_PROTOCOL_ID): Yamux}
        host = new_host(
            key_pair=self.key_pair,
            sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},  # noise only: no plaintext/secio/TLS
            muxer_opt=muxers,
            listen_addrs=[self.listen],
        )
        swarm = host.get_network()
        swarm.retry_config = RetryConfig(max_retries=0)  # we redial ourselves, with backoff
        upgrader = swarm.upgrader
        inner = upgrader.upgrade_security

        async def gated_upgrade_security(raw_conn: Any, is_initiator: bool, peer_id: Any = None) -> Any:
            secured = await inner(raw_conn, is_initiator, peer_id)
            remote = secured.get_remote_peer()
            if remote not in self.allowed:
                self.stats["refused_peers"] += 1
                log.info("refused connection from non-validator peer %s", remote)
                with contextlib.suppress(Exception):
                    await secured.close()
                raise SecurityUpgradeFailure(f"peer {remote} is not a validator")
            return secured

        upgrader.upgrade_security = gated_upgrade_security  # admission by peer id, right after noise
        swarm.register_notifee(_ConnWatch(self))
        host.set_stream_handler(DIRECT_PROTOCOL, self._on_stream)
        return host

    def _conn_changed(self, pid: ID, delta: int) -> None:
        name = self.allowed.get(pid)
        if name is None:
            return
        n = self._conns.get(name, 0) + delta
        if n > 0:
            self._conns[name] = n
        else:
            self._conns.pop(name, None)
        self.connected = tuple(sorted(self._conns))

    async def main(self, ready: Callable[[BaseException | None, int], None]) -> None:
        self.token = trio.lowlevel.current_trio_token()
        signalled = False
        try:
            with trio.CancelScope() as self._scope:
                self.host = host = self._build_host()
                async with contextlib.AsyncExitStack() as stack:
                    await stack.enter_async_context(host.run(listen_addrs=[self.listen]))
                    self.port = self._bound_port(host)
                    if self.mode == "gossipsub":
                        await self._start_gossipsub(stack)
                    async with trio.open_nursery() as nursery:
                        for o in self.outs.values():
                            nursery.start_soon(self._peer_loop, o)
                        if self.mode == "gossipsub":
                            nursery.start_soon(self._gossip_pump)
                        signalled = True
                        ready(None, self.port)
                        await self._stop.wait()
                        # bound the shutdown: a stuck close must not hang stop()
                        self._scope.deadline = trio.current_time() + 2.0
                        nursery.cancel_scope.cancel()
        except BaseException as exc:  # noqa: BLE001 - reported to the asyncio side
            if not signalled:
                ready(exc, 0)
                return
            raise
        finally:
            self.connected = ()

    def _bound_port(self, host: Any) -> int:
        """py-libp2p only logs a failed listen; find our TCP address or fail loudly."""
        want = int(self.listen.value_for_protocol("tcp"))
        for addr in host.get_addrs():
            try:
                port = int(addr.value_for_protocol("tcp"))
            except Exception:  # noqa: BLE001
                continue
            if want == 0 or port == want:
                return port
        raise OSError(f"could not listen on {self.listen} (port busy?)")

    # ---- direct streams ---------------------------------------------------------------------
    async def _peer_loop(self, o: PeerOut) -> None:
        """Dial, open one long-lived stream, pump the queue into it; redial with backoff."""
        swarm = self.host.get_network()
        delay = BACKOFF_MIN
        while True:
            try:
                swarm.unblock_peer(o.pid)  # py-libp2p blocks a failed peer for 60 s otherwise
                with trio.fail_after(DIAL_TIMEOUT):
                    await self.host.connect(PeerInfo(o.pid, [o.addr]))
                    stream = await self.host.new_stream(o.pid, [DIRECT_PROTOCOL])
            except Exception as exc:  # noqa: BLE001 - peer down / not up yet / refused
                log.debug("dial %s failed: %r", o.name, exc)
                await trio.sleep(delay * (0.75 + random.random() / 2))
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            delay = BACKOFF_MIN
            if o.sessions:
                self.stats["reconnects"] += 1
            o.sessions += 1
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch, stream, nursery.cancel_scope)
                    await self._pump(o, stream)
            except Exception as exc:  # noqa: BLE001
                log.debug("stream to %s ended: %r", o.name, exc)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(0.5), contextlib.suppress(Exception):
                    await stream.reset()
            await trio.sleep(BACKOFF_MIN)

    async def _watch(self, stream: Any, scope: trio.CancelScope) -> None:
        """The peer never writes on our outbound stream: any read result means it is gone."""
        with contextlib.suppress(Exception):
            while await stream.read(1024):
                pass
        scope.cancel()

    async def _pump(self, o: PeerOut, stream: Any) -> None:
        q = o.queue
        stats = self.stats
        while True:
            while not q:
                o.waiting = True
                if q:
                    o.waiting = False
                    break
                await o.event.wait()
                o.event = trio.Event()
                o.waiting = False
            batch: list[bytes] = []
            size = 0
            while q and size < WRITE_BATCH_BYTES and len(batch) < WRITE_BATCH_FRAMES:
                frame = q.popleft()
                batch.append(frame)
                size += len(frame)
            try:
                await stream.write(batch[0] if len(batch) == 1 else b"".join(batch))
            except BaseException:
                stats["send_failed"] += len(batch)  # lost with the stream; PBFT retransmits
                raise
            stats["msgs_sent"] += len(batch)
            stats["bytes_sent"] += size - 4 * len(batch)

    async def _on_stream(self, stream: Any) -> None:
        name = self.allowed.get(stream.muxed_conn.peer_id)
        if name is None:  # cannot happen past the gate, but never trust a stream
            self.stats["unknown_dropped"] += 1
            with contextlib.suppress(Exception):
                await stream.reset()
            return
        stats, deliver, max_frame = self.stats, self.deliver, self.max_frame
        buf = bytearray()
        try:
            while True:
                chunk = await stream.read(READ_CHUNK)
                if not chunk:
                    return
                buf += chunk
                pos, end = 0, len(buf)
                while end - pos >= 4:
                    n = int.from_bytes(buf[pos : pos + 4], "big")
                    if n > max_frame:
                        stats["oversized"] += 1
                        log.warning("frame of %d bytes from %s over the %d limit: stream closed", n, name, max_frame)
                        await stream.reset()
                        return
                    if end - pos - 4 < n:
                        break
                    payload = bytes(buf[pos + 4 : pos + 4 + n])
                    pos += 4 + n
                    stats["msgs_recv"] += 1
                    stats["bytes_recv"] += n
                    deliver(name, payload)
                if pos:
                    del buf[:pos]
        except Exception as exc:  # noqa: BLE001 - EOF / reset / connection gone
            log.debug("inbound stream from %s ended: %r", name, exc)

    # ---- gossipsub --------------------------------------------------------------------------
    async def _start_gossipsub(self, stack: contextlib.AsyncExitStack) -> None:
        from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
        from libp2p.pubsub.pubsub import Pubsub

        d = max(1, min(6, len(self.outs)))
        router = GossipSub(
            protocols=[PROTOCOL_ID_V11],  # v1.1: no IDONTWANT per message (that is v1.2+)
            degree=d,
            degree_low=max(1, min(4, d)),
            degree_high=max(d, 12),
            heartbeat_initial_delay=0.1,
            heartbeat_interval=1,  # library default: 120 s
            gossip_window=3,
            gossip_history=5,
            adaptive_gossip_enabled=False,
            spam_protection_enabled=False,  # library default: 10 msg/s per topic per peer
            max_messages_per_topic_per_second=1e9,
            eclipse_protection_enabled=False,  # all validators may share one IP (loopback, NAT)
            do_px=False,
        )
        pubsub = Pubsub(self.host, router, strict_signing=self.strict_signing)
        pubsub.peer_queues = _BigQueues()
        inner_drop = router._handle_dropped_rpc

        def counted_drop(peer_id: Any, rpc: Any, reason: str) -> Any:
            self.stats["gossip_dropped"] += 1
            return inner_drop(peer_id, rpc, reason)

        router._handle_dropped_rpc = counted_drop
        await stack.enter_async_context(background_trio_service(pubsub))
        await stack.enter_async_context(background_trio_service(router))
        await pubsub.wait_until_ready()
        await pubsub.subscribe(self.topic)
        pubsub.subscribed_topics_send[self.topic] = _Sink(self._on_gossip)
        self._pubsub = pubsub

    def _on_gossip(self, msg: Any) -> None:
        origin = msg.from_id
        name = self.allowed_bytes.get(origin)
        if name is None:
            if origin != self.my_id.to_bytes():
                self.stats["unknown_dropped"] += 1
            return
        data = msg.data
        self.stats["msgs_recv"] += 1
        self.stats["bytes_recv"] += len(data)
        self.deliver(name, data)

    async def _gossip_pump(self) -> None:
        q, pubsub, topic, stats = self.gossip_queue, self._pubsub, self.topic, self.stats
        while True:
            while not q:
                self._gossip_waiting = True
                if q:
                    self._gossip_waiting = False
                    break
                await self._gossip_event.wait()
                self._gossip_event = trio.Event()
                self._gossip_waiting = False
            data = q.popleft()
            try:
                await pubsub.publish(topic, data)
            except Exception as exc:  # noqa: BLE001
                stats["send_failed"] += 1
                log.debug("publish failed: %r", exc)
                continue
            stats["gossip_published"] += 1
            stats["msgs_sent"] += 1
            stats["bytes_sent"] += len(data)


def _x25519_key() -> Any:
    from libp2p.crypto.x25519 import create_new_key_pair

    return create_new_key_pair().private_key
