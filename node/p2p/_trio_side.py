"""The trio half of the adapter: one libp2p host, direct streams and (optionally) gossipsub.

Everything here runs on the trio thread (or, for measurement, in trio guest mode). The asyncio
half (``node.py``) talks to it only through thread-safe primitives: it appends frames to the
per-peer ``deque``s and calls :meth:`TrioSide.kick`; inbound payloads leave through the
``deliver`` callback, which must itself be thread-safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INotifee
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.transport.exceptions import SecurityUpgradeFailure

from node.multiaddr import ip_of, tcp_addr
from node.p2p._streamio import StreamSlots
from node.p2p._wake import wait_for_items, wake

log = logging.getLogger("medchain.p2p")


class _QuietChurn(logging.Filter):
    """py-libp2p logs every refused dial and every stream that could not be opened on a closing
    connection at ERROR (with multi-line dumps). A validator redials peers that are down, or not
    up yet, every second; those records are dropped here (the adapter logs its own at DEBUG)."""

    PREFIXES = ("Failed to open TCP stream", "Failed to open stream to peer", "MultiselectClient handshake")
    # the identify answer to a peer that hangs up meanwhile (a validator stopping): a whole traceback
    # in the message at ERROR; only a write that failed on the closed connection is dropped
    CLOSED = ("StreamError", "ConnectionClosedError", "StreamClosed", "StreamReset")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if msg.startswith("Error sending identify response"):
            return not any(type(a).__name__ in self.CLOSED for a in record.args or ())
        if msg.startswith("[ADDCONN_FAIL]"):
            # a connection still being added when the host stops is cancelled: not an error, but
            # py-libp2p logs it with a whole traceback; any other failure is kept
            return not any(type(a).__name__ == "Cancelled" for a in record.args or ())
        return not msg.startswith(self.PREFIXES)


for _name in ("libp2p.transport.tcp.tcp", "libp2p.host.basic_host", "libp2p.protocol_muxer.multiselect_client",
              "libp2p.network.swarm", "libp2p.identity.identify.identify"):
    logging.getLogger(_name).addFilter(_QuietChurn())

# py-libp2p's yamux (read at call time) answers every read with a WINDOW_UPDATE frame by default:
# one more noise message and socket write per message received. Off, it sends one only when its
# hysteresis says the sender's credit has fallen far enough (for small messages, about every other
# read); flow control is unchanged (8 MiB messages and 16 MiB responses still pass). Two pairs
# each, us of CPU per write per validator: `medchain demo` 890, 903 -> 842, 820; `medchain bench
# fleet --rate 700` 453, 448 -> 444, 432. An operator's own setting is kept.
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")

DIRECT_PROTOCOL = TProtocol("/medchain/pbft/1.0.0")
MISMATCH_WARN_S = 60.0  # a peer that answers but speaks another network's protocol: warned this often
READ_CHUNK = 256 * 1024  # bytes asked of the muxer per read
MAX_DIRECT_STREAMS = 4  # inbound PBFT streams open per peer (it keeps one; more while it redials)
WRITE_BATCH_BYTES = 256 * 1024  # queued frames coalesced into one stream write
WRITE_BATCH_FRAMES = 1024
DIAL_TIMEOUT = 5.0
BACKOFF_MIN, BACKOFF_MAX = 0.05, 1.0
TEARDOWN_S = 2.0  # graceful close of connections and listener after stop(); then sockets are closed hard
INBOX_HIGH = 20_000  # undelivered inbound messages at which direct-stream reads pause


class PeerOut:
    """Outbound state for one validator: its frame queue and the trio wake-up plumbing."""

    __slots__ = ("addr", "event", "name", "pid", "queue", "redial", "retry", "scope", "sessions", "stream", "waiting")

    def __init__(self, name: str, addr: str, queue: deque) -> None:
        self.name = name
        self.pid = ID.from_base58(name)
        self.addr = multiaddr.Multiaddr(addr)
        self.queue = queue
        self.event = trio.Event()
        self.waiting = False
        self.sessions = 0
        self.stream: Any = None
        self.scope: trio.CancelScope | None = None
        self.retry: list[bytes] | None = None  # a batch whose write failed: retried once
        self.redial = trio.Event()  # set when the peer connects to us: end a dial backoff early


class _ConnWatch(INotifee):
    def __init__(self, side: TrioSide) -> None:
        self.side = side

    async def connected(self, network: Any, conn: Any) -> None:
        self.side._conn_opened(conn.muxed_conn.peer_id)

    async def disconnected(self, network: Any, conn: Any) -> None:
        self.side._conn_lost(conn.muxed_conn)

    async def opened_stream(self, network: Any, stream: Any) -> None:
        return None

    async def closed_stream(self, network: Any, stream: Any) -> None:
        return None

    async def listen(self, network: Any, maddr: Any) -> None:
        return None

    async def listen_close(self, network: Any, maddr: Any) -> None:
        return None


def _not_spoken(exc: BaseException) -> bool:
    """Whether a new stream failed because the peer does not serve the protocol (multistream-select
    answered "na"), not because the connection broke."""
    seen: BaseException | None = exc
    for _ in range(4):  # py-libp2p wraps it: StreamFailure from MultiselectClientError("protocols not supported")
        if seen is None:
            return False
        if "protocols not supported" in str(seen) or "protocol not supported" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class TrioSide:
    def __init__(
        self,
        *,
        key_pair: Any,
        listen_host: str,
        listen_port: int,
        peers: dict[str, str],  # peer id -> multiaddr (without self)
        queues: dict[str, deque],  # per peer: (time.monotonic() when queued, frame)
        gossip_queue: deque,
        deliver: Callable[[str, bytes], None],
        backlog: Callable[[], tuple[int, int]],  # undelivered inbound (messages, bytes)
        stats: dict[str, int],
        mode: str,
        topic: str,
        max_frame: int,
        muxer: str,
        strict_signing: bool,
        services: dict[str, int] | None = None,  # request-response protocol -> max_request
        call: Callable[[str, str, bytes], Any] | None = None,  # runs a handler on asyncio
        blockstore: Any = None,  # enables bitswap
        on_have: Callable[[str, list[bytes]], None] | None = None,  # bitswap HAVEs (peer, cids), trio thread
        external: dict[str, str] | None = None,  # bitswap-only peers: peer id -> multiaddr
        psk: bytes | None = None,  # private network: a 32-byte pre-shared key wraps every connection
        direct: str = DIRECT_PROTOCOL,  # the PBFT stream's protocol id (node.py direct_protocol: per network)
        queue_max_age: float = float("inf"),  # a frame queued longer is dropped unsent
        inbox_high_bytes: int,  # undelivered inbound bytes at which reads pause (node.py INBOX_HIGH_BYTES)
        gate: bool = True,  # refuse, before any handshake, connections from addresses no peer has
    ) -> None:
        self.gate = gate
        self.external_addrs: list[object] = list((external or {}).values())
        self.queue_max_age = queue_max_age
        self.inbox_high_bytes = inbox_high_bytes
        self.direct = TProtocol(direct)
        self._mismatch_warned: dict[str, float] = {}
        self.key_pair = key_pair
        self.psk = psk
        self.services = dict(services or {})
        self.call = call
        self.nursery: trio.Nursery | None = None
        self._requests: dict[int, trio.CancelScope] = {}
        self.my_id = ID.from_pubkey(key_pair.public_key)
        self.listen = multiaddr.Multiaddr(tcp_addr(listen_host, listen_port))
        self.outs = {name: PeerOut(name, addr, queues[name]) for name, addr in peers.items()}
        self.allowed: dict[ID, str] = {o.pid: o.name for o in self.outs.values()}
        self.allowed_bytes: dict[bytes, str] = {o.pid.to_bytes(): o.name for o in self.outs.values()}
        self.bitswap: Any = None
        if blockstore is not None:
            from ._bitswap import BitswapService

            self.bitswap = BitswapService(self, blockstore, on_have, external or {})
        self.gossip_queue = gossip_queue
        self.deliver = deliver
        self.backlog = backlog
        self.stats = stats
        self.slots = StreamSlots(stats)  # inbound streams open per peer (direct, request, bitswap)
        self.request_slots: dict[str, trio.Semaphore] = {}  # requests served at once per peer (_reqresp)
        self.mode = mode
        self.topic = topic
        self.max_frame = max_frame
        self.muxer = muxer
        self.strict_signing = strict_signing
        self.token: trio.lowlevel.TrioToken | None = None
        self.port = listen_port
        self._running = False  # the host is up: connected() reads its swarm
        self._connected: tuple[str, ...] = ()  # connected()'s last answer
        self._kick_pending = False
        self.gossip: Any = None  # GossipChannel in gossipsub mode
        self._stop = trio.Event()
        self._stop_requested = False
        self.host: Any = None

    # ---- called from any thread -------------------------------------------------------------
    def kick(self) -> None:
        """Wake the writers after frames were queued. Coalesced: one hop per burst."""
        if self._kick_pending or self.token is None:
            return
        self._kick_pending = True
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(self._on_kick)

    def spawn(self, fn: Callable[..., Any], *args: Any, on_fail: Callable[[], None] | None = None) -> None:
        """Start ``fn(*args)`` in the host's nursery, from any thread. If the host is not running
        (or stops before the task starts) ``on_fail()`` is called instead."""

        def start() -> None:
            if self.nursery is None:
                if on_fail is not None:
                    on_fail()
                return
            self.nursery.start_soon(fn, *args)

        try:
            if self.token is None:
                raise trio.RunFinishedError
            self.token.run_sync_soon(start)
        except trio.RunFinishedError:
            if on_fail is not None:
                on_fail()

    def run_task(self, rid: int, afn: Callable[[], Any], finish: Callable[[Any, str | None], None],
                 expected: tuple[type[BaseException], ...] = ()) -> None:
        """Run ``await afn()`` on the host; ``finish(result, error)`` is called exactly once (error
        is str(exc) for the ``expected`` exception types, a generic reason otherwise)."""

        async def run() -> None:
            scope = self._requests[rid] = trio.CancelScope()
            try:
                with scope:
                    result = await afn()
                if scope.cancelled_caught:
                    finish(None, "cancelled")
                    return
            except expected as exc:
                finish(None, str(exc))
            except BaseException as exc:  # host stopping, or a bug: still answer the caller
                finish(None, f"aborted: {exc!r}")
                if not isinstance(exc, Exception):
                    raise
                log.exception("p2p task failed")
            else:
                finish(result, None)
            finally:
                self._requests.pop(rid, None)

        self.spawn(run, on_fail=lambda: finish(None, "p2p host is not running"))

    def start_request(self, rid: int, name: str, protocol: str, payload: bytes, timeout: float,
                      max_response: int, finish: Callable[[bytes | None, str | None], None]) -> None:
        """Run one request-response exchange; ``finish(body, error)`` is called exactly once."""
        from ._reqresp import RequestFailed, request

        async def afn() -> bytes:
            return await request(self, name, protocol, payload, timeout, max_response)

        self.run_task(rid, afn, finish, (RequestFailed,))

    def cancel_request(self, rid: int) -> None:
        def cancel() -> None:
            scope = self._requests.get(rid)
            if scope is not None:
                scope.cancel()

        if self.token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self.token.run_sync_soon(cancel)

    def request_stop(self) -> None:
        self._stop_requested = True  # seen by main() if the trio run has no token yet
        if self.token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(self._stop.set)

    # ---- trio thread ------------------------------------------------------------------------
    def _on_kick(self) -> None:
        self._kick_pending = False
        for o in self.outs.values():
            wake(o)
        if self.gossip is not None:
            wake(self.gossip)

    def _allow_list(self) -> list[str]:
        """The addresses connections may come from, checked before the handshake: the peers' (validators
        and external IPFS peers). The peer check after the handshake held one of the swarm's inbound
        slots for up to DIAL_TIMEOUT: ~40 idle sockets from anywhere kept every validator from
        reconnecting (a review). Empty (every address) when gating is off, or when a peer is named by
        DNS: its address is not known ahead."""
        addrs = [o.addr for o in self.outs.values()] + self.external_addrs
        ips = [ip_of(a) for a in addrs]
        if not self.gate or not ips or None in ips:
            return []
        return sorted({ip for ip in ips if ip is not None})

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
            psk=self.psk.hex() if self.psk is not None else None,
            connection_config=ConnectionConfig(
                allow_list=self._allow_list(),
                # a closed validator set: no auto-connector dialing strangers to fill a quota
                max_connections=16 + 4 * len(self.outs),
                high_watermark=16 + 4 * len(self.outs),
                low_watermark=0,
                min_connections=0,
                auto_connect_interval=3600.0,
                dial_timeout=DIAL_TIMEOUT,
                inbound_upgrade_timeout=DIAL_TIMEOUT,
                outbound_upgrade_timeout=DIAL_TIMEOUT,
            ),
        )
        swarm = host.get_network()
        swarm.retry_config = RetryConfig(max_retries=0)  # we redial ourselves, with backoff
        upgrader = swarm.upgrader
        inner = upgrader.upgrade_security

        async def gated_upgrade_security(raw_conn: Any, is_initiator: bool, peer_id: Any = None) -> Any:
            secured = await inner(raw_conn, is_initiator, peer_id)
            remote = secured.get_remote_peer()
            if remote not in self.allowed and (self.bitswap is None or remote not in self.bitswap.external):
                self.stats["refused_peers"] += 1
                log.info("refused connection from non-validator peer %s", remote)
                with contextlib.suppress(Exception):
                    await secured.close()
                raise SecurityUpgradeFailure(f"peer {remote} is not a validator")
            return secured

        upgrader.upgrade_security = gated_upgrade_security  # admission by peer id, right after noise
        swarm.register_notifee(_ConnWatch(self))
        for o in self.outs.values():
            swarm.protect(o.pid, "medchain-validator")  # never pruned by the connection manager
        host.set_stream_handler(self.direct, self._on_stream)
        if self.services:
            from ._reqresp import serve_stream

            for proto, max_request in self.services.items():
                async def on_request(stream: Any, proto: str = proto, limit: int = max_request) -> None:
                    await serve_stream(self, stream, proto, limit, self.call)

                host.set_stream_handler(TProtocol(proto), on_request)
        if self.bitswap is not None:
            self.bitswap.register(host)
        return host

    def _conn_opened(self, pid: ID) -> None:
        name = self.allowed.get(pid)
        o = self.outs.get(name) if name is not None else None
        if o is not None and o.stream is None:
            o.redial.set()  # it is up (it dialled us): our writer need not sit out its backoff

    def connected(self) -> tuple[str, ...]:
        """The validators we hold an open connection to, read from the swarm itself (called from
        the asyncio thread too). Not a count kept from connect/disconnect notifications: py-libp2p
        notifies a disconnect only at the end of a connection's clean-up (after resetting its
        streams), notifies one for a duplicate it never announced, and skips it when that clean-up
        is cancelled, so a kept count could hold a closed peer as connected for good."""
        if not self._running or self.host is None:
            return ()
        conns = self.host.get_network().connections
        for _ in range(8):  # the trio thread may change the dict or a list while it is copied
            try:
                live = [(pid, tuple(cs)) for pid, cs in list(conns.items())]
                break
            except RuntimeError:
                continue
        else:
            return self._connected
        names = {self.allowed.get(pid) for pid, cs in live
                 if any(not c.is_closed and not c.muxed_conn.is_closed for c in cs)}
        names.discard(None)
        self._connected = tuple(sorted(names))  # type: ignore[arg-type]
        return self._connected

    def _conn_lost(self, muxed_conn: Any) -> None:
        """A connection closed: end the session whose stream rode on it, so the writer redials
        now instead of finding out on its next write (mplex cannot read and write a stream
        concurrently, so an idle outbound stream cannot watch for EOF itself)."""
        if self.bitswap is not None:
            self.bitswap.conn_closed(muxed_conn.peer_id)
        name = self.allowed.get(muxed_conn.peer_id)
        o = self.outs.get(name) if name else None
        if (o is not None and o.stream is not None and o.scope is not None
                and getattr(o.stream, "muxed_conn", None) is muxed_conn):
                o.scope.cancel()

    async def main(self, ready: Callable[[BaseException | None, int], None]) -> None:
        self.token = trio.lowlevel.current_trio_token()
        signalled = False
        try:
            with trio.CancelScope() as self._scope:
                self.host = host = self._build_host()
                async with contextlib.AsyncExitStack() as stack:
                    if self.mode == "gossipsub":  # entered first so it is torn down after the host
                        from ._gossip import GossipChannel

                        self.gossip = GossipChannel(self)
                        await self.gossip.start(stack)
                    await stack.enter_async_context(host.run(listen_addrs=[self.listen]))
                    self.port = self._bound_port(host)
                    self._running = True
                    async with trio.open_nursery() as nursery:
                        self.nursery = nursery
                        for o in self.outs.values():
                            nursery.start_soon(self._peer_loop, o)
                        if self.gossip is not None:
                            nursery.start_soon(self.gossip.pump)
                        if self.bitswap is not None and self.bitswap.external:
                            nursery.start_soon(self.bitswap.keep_external)
                        signalled = True
                        ready(None, self.port)
                        if self._stop_requested:
                            self._stop.set()
                        await self._stop.wait()
                        # bound the shutdown: a stuck close must not hang stop()
                        self._scope.deadline = trio.current_time() + TEARDOWN_S
                        nursery.cancel_scope.cancel()
                    self.nursery = None
                    # Close connections and listener explicitly: leaving host.run() only cancels
                    # tasks, and the peers would keep seeing open sockets until garbage collection.
                    # In parallel: each py-libp2p connection close sleeps 0.2 s or more.
                    async with trio.open_nursery() as closer:
                        for conn in host.get_network().get_connections():
                            closer.start_soon(_close_quietly, conn)
                    await host.close()
        except BaseException as exc:  # reported to the asyncio side
            if not signalled:
                ready(exc, 0)
                return
            if self._stop.is_set():  # py-libp2p services can trip over each other while closing
                log.debug("error during p2p teardown (ignored): %r", exc)
                return
            raise
        finally:
            self._running = False
            if self.host is not None:
                # A close cut short by the deadline (a loaded machine) leaves sockets that only the
                # garbage collector would close: peers would keep a dead validator "connected" and
                # a restart on the same port would find it busy.
                n = _close_sockets(self.host.get_network())
                if n:
                    log.info("closed %d socket(s) left open by the p2p teardown", n)

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
    def _warn_mismatch(self, o: PeerOut) -> None:
        """The peer is a genesis validator and completed the handshake, but does not speak this
        network's PBFT protocol: it runs another genesis (other parameters under the same keys, or
        an old copy). Said plainly, at most once a minute per peer, not buried in debug logs."""
        now = time.monotonic()
        if now - self._mismatch_warned.get(o.name, -MISMATCH_WARN_S) < MISMATCH_WARN_S:
            return
        self._mismatch_warned[o.name] = now
        self.stats["network_mismatch"] += 1
        log.warning("validator %s at %s answers but does not speak %s: it runs another genesis than this "
                    "validator (compare the genesis_hash of both genesis.json files)", o.name, o.addr, self.direct)

    async def _peer_loop(self, o: PeerOut) -> None:
        """Dial, open one long-lived stream, pump the queue into it; redial with backoff."""
        swarm = self.host.get_network()
        delay = BACKOFF_MIN
        while True:
            connected = False
            try:
                swarm.unblock_peer(o.pid)  # py-libp2p blocks a failed peer for 60 s otherwise
                with trio.fail_after(DIAL_TIMEOUT):
                    await self.host.connect(PeerInfo(o.pid, [o.addr]))
                    connected = True
                    stream = await self.host.new_stream(o.pid, [self.direct])
            except Exception as exc:  # noqa: BLE001 - peer down / not up yet / refused
                log.debug("dial %s failed: %r", o.name, exc)
                if connected and _not_spoken(exc):
                    self._warn_mismatch(o)
                o.redial = trio.Event()
                with trio.move_on_after(delay * (0.75 + random.random() / 2)):
                    await o.redial.wait()  # at startup peers come up in any order: a connection
                    # from the peer ends the wait, so its stream opens in ms, not after up to 1 s
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            delay = BACKOFF_MIN
            log.debug("stream to %s open (session %d)", o.name, o.sessions + 1)
            if o.sessions:
                self.stats["reconnects"] += 1
            o.sessions += 1
            try:
                with trio.CancelScope() as o.scope:
                    o.stream = stream
                    await self._pump(o, stream)
            except Exception as exc:  # noqa: BLE001
                log.debug("stream to %s ended: %r", o.name, exc)
            finally:
                o.stream = o.scope = None
                with trio.CancelScope(shield=True), trio.move_on_after(0.5), contextlib.suppress(Exception):
                    await stream.reset()
            await trio.sleep(BACKOFF_MIN)

    async def _pump(self, o: PeerOut, stream: Any) -> None:
        q = o.queue
        stats = self.stats
        while True:
            batch, o.retry = o.retry, None
            retrying = batch is not None
            if batch is None:
                await wait_for_items(o, q)
                batch = []
                size = 0
                oldest = time.monotonic() - self.queue_max_age
                while q and size < WRITE_BATCH_BYTES and len(batch) < WRITE_BATCH_FRAMES:
                    queued, frame = q.popleft()
                    if queued < oldest:
                        stats["expired"] += 1  # stale: PBFT retransmits what still matters
                        continue
                    batch.append(frame)
                    size += len(frame)
                if not batch:
                    continue
            size = sum(map(len, batch))
            try:
                await stream.write(batch[0] if len(batch) == 1 else b"".join(batch))
            except BaseException:
                # A write on a stream the peer already reset or dropped: retry the batch once on
                # the next stream (once only, so a frame the peer refuses cannot loop forever).
                if retrying:
                    stats["send_failed"] += len(batch)  # PBFT retransmits
                else:
                    o.retry = batch
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
        # a peer keeps one stream to us; a few more while it redials
        await self.slots.serve(stream, name, "direct", MAX_DIRECT_STREAMS, lambda: self._read_frames(stream, name))

    def _behind(self, div: int) -> bool:
        """Whether the undelivered inbound messages are over 1/div of their bounds (count or bytes)."""
        n, nbytes = self.backlog()
        return n > INBOX_HIGH // div or nbytes > self.inbox_high_bytes // div

    async def _read_frames(self, stream: Any, name: str) -> None:
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
                if self._behind(1):  # the asyncio loop is behind: stop reading, so the
                    stats["inbound_paused"] += 1  # muxer/TCP windows push back on the sender
                    while self._behind(2):
                        await trio.sleep(0.002)
        except Exception as exc:  # noqa: BLE001 - EOF / reset / connection gone
            log.debug("inbound stream from %s ended: %r", name, exc)


_SOCKET_PATH = ("muxed_conn", "secured_conn", "conn", "read_writer", "stream", "socket", "listeners")


def _close_sockets(swarm: Any) -> int:
    """Close, synchronously, every OS socket still open under the swarm's connections and
    listeners (py-libp2p nests them: connection, muxer, secure session, raw connection, trio
    stream, socket). Returns how many were open."""
    seen: set[int] = set()
    closed = 0

    def walk(obj: Any, depth: int) -> None:
        nonlocal closed
        if obj is None or id(obj) in seen or depth > 12:
            return
        seen.add(id(obj))
        if isinstance(obj, trio.socket.SocketType):
            if obj.fileno() != -1:
                obj.close()
                closed += 1
            return
        if isinstance(obj, list | tuple):
            for item in obj:
                walk(item, depth + 1)
            return
        for attr in _SOCKET_PATH:
            walk(getattr(obj, attr, None), depth + 1)

    for conn in list(swarm.get_connections()):
        walk(conn, 0)
    for listener in list(getattr(swarm, "listeners", {}).values()):
        walk(listener, 0)
    return closed


async def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        await conn.close()


def _x25519_key() -> Any:
    from libp2p.crypto.x25519 import create_new_key_pair

    return create_new_key_pair().private_key
