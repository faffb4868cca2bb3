"""asyncio-facing libp2p adapter: PBFT messages among the validator set.

The libp2p host (trio, py-libp2p 0.8.1) runs on a dedicated thread. The asyncio side never blocks
on it: ``broadcast``/``send`` append a length-prefixed frame to a bounded per-peer deque
(thread-safe in CPython) and wake the trio writers with one coalesced ``TrioToken.run_sync_soon``;
inbound payloads are queued by the trio thread and drained on the asyncio loop by one coalesced
``loop.call_soon_threadsafe``, where ``on_message`` runs.

Choices, measured with ``python -m node.p2p.measure`` (4 processes on loopback, 2-core VM):

- Thread, not trio guest mode: equal cost when the validator's loop is idle (both ~60-100k
  deliveries/s of 1 KiB, ~0.055 ms CPU per broadcast summed over 4 nodes, send() round trip
  ~1.1-1.5 ms), but with the loop busy in GIL-releasing calls (``--busy-ms 2``, like LMDB commits
  or coincurve verifies) the thread keeps ~100k/s while guest mode falls to ~15k/s at twice the
  CPU per broadcast: guest-mode trio only runs when the asyncio loop gets round to it.
- Muxer per mode: yamux for direct streams (0.055 ms vs mplex's 0.25 ms CPU per broadcast),
  mplex for gossipsub (4.7 ms vs yamux's 9.6 ms per broadcast). Security: noise only.
- Direct streams beat gossipsub by ~90x in CPU per broadcast (0.055 vs ~4.7-5 ms) and ~60x in
  throughput (60-100k vs ~1.1k deliveries/s); gossipsub round trip ~4 ms vs ~1.1 ms.
  ``mode="direct"`` is the default.
- Yamux credit goes back at half the receive window, not after every read (below).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from node.multiaddr import split_peer, tcp_addr

from .framequeue import FrameQueue
from .identity import key_pair_from_secret, peer_id_from_secret

log = logging.getLogger("medchain.p2p")

# py-libp2p 0.8's yamux answers every read of stream data with a WINDOW_UPDATE frame by default
# (PY_YAMUX_RELEASE_ON_READ=1, read at each call): PBFT's messages are small and come one at a time,
# so that is a frame back, encrypted, written, read, decrypted and parsed, for every frame sent.
# Off, the library credits every other read (its "partial slack" branch, which no setting turns
# off) and otherwise at half the window: 404 -> 308 frames for 200 small messages; in a validator
# the CPU saved is within the noise (bench/README.md). An operator's own setting wins.
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")

MODES = ("direct", "gossipsub")
QUEUE_MAX = 10_000  # frames per peer, and framequeue.MAX_BYTES; when full the oldest go (PBFT retransmits)
# A frame still queued after this long is dropped unsent: PBFT retransmits what still matters,
# heartbeats repeat, forwarded transactions are forwarded again. Without it, a validator that joins
# (or comes back) was sent everything queued for it since the network started, up to QUEUE_MAX
# frames of old rounds and heartbeats, and replayed them before it learned where the network was.
QUEUE_MAX_AGE_S = 10.0
DRAIN_BATCH = 512  # inbound messages handled per turn of the asyncio loop
GOSSIP_MAX = 1024 * 1024 - 16 * 1024  # pubsub refuses RPCs over 1 MiB: larger payloads go direct
STOP_TIMEOUT = 3.0
# undelivered inbound bytes at which direct-stream reads pause (as at 20,000 messages): a frame may be
# up to max_frame, so a count alone let a peer's big frames pile up while the asyncio loop was busy
INBOX_HIGH_BYTES = 64 * 1024 * 1024
NETWORK_RE = re.compile(r"[0-9a-z]{0,32}")
MAX_REQUEST = 1024 * 1024  # default request size a served protocol accepts
MAX_RESPONSE = 16 * 1024 * 1024  # default response size request() accepts (blocks are <= 8 MiB)
STAT_KEYS = (
    "msgs_sent",  # frames written to streams + messages published
    "bytes_sent",
    "msgs_recv",
    "bytes_recv",
    "drops",  # dropped from a full outbound queue (oldest first)
    "expired",  # dropped unsent from an outbound queue after queue_max_age seconds
    "send_failed",  # lost with a broken stream, or a failed publish
    "oversized",  # inbound frames over max_frame (stream closed)
    "refused_peers",  # connections from peer ids outside the validator set
    "network_mismatch",  # a validator answered but speaks another network's protocol (another genesis)
    "unknown_dropped",  # messages from peers outside the validator set
    "reconnects",  # outbound streams re-established after the first
    "gossip_published",
    "gossip_dropped",  # RPCs gossipsub itself dropped (queue full, oversized)
    "direct_fallback",  # gossipsub-mode broadcasts sent over direct streams (too big for pubsub)
    "inbound_paused",  # direct-stream reads paused because on_message fell behind
)


def message_tag(data: bytes) -> int:
    """The tag of a validator message (a msgpack array whose first element is a small int: PBFT's
    T_* and T_TXS), read from its first bytes without decoding; -1 for anything else. Counting by
    it keeps the adapter ignorant of what the tags mean (node/metrics.py names them)."""
    n = len(data)
    if n > 1 and 0x90 <= data[0] <= 0x9F:
        tag = data[1]
    elif n > 3 and data[0] == 0xDC:
        tag = data[3]
    elif n > 5 and data[0] == 0xDD:
        tag = data[5]
    else:
        return -1
    return tag if tag < 0x80 else -1


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups, for a readable message."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class P2PError(Exception):
    """Adapter failure: busy port, not started, unknown peer, oversized message."""


def direct_protocol(network: str = "") -> str:
    """The protocol id of the PBFT streams of a network ("" : the one before networks were named)."""
    return f"/medchain/{network}/pbft/1.0.0" if network else "/medchain/pbft/1.0.0"


class P2PNode:
    """One validator's network endpoint. Delivery semantics (PBFT must retransmit; it does):

    - direct streams are FIFO per sender; frames queued while a peer is down or not up yet wait
      in its bounded queue (oldest dropped when full, ``stats["drops"]``) and go out on reconnect,
      unless they waited more than ``queue_max_age`` seconds (``stats["expired"]``);
    - a batch whose write fails is retried once on the next stream, so a frame can (rarely) arrive
      twice, and frames in flight when a peer dies are lost (``send_failed`` counts what we know);
    - gossipsub may drop silently while a (re)connected peer is not yet in the mesh (~1 heartbeat);
    - ``on_message(peer_id, payload)`` runs on the asyncio loop, never on the trio thread.

    Keyword-only extras: ``queue_max`` (frames per peer), ``queue_max_age`` (seconds),
    ``inbox_high_bytes`` (undelivered inbound bytes at which reads pause; default 64 MiB), ``muxer``
    ("yamux"/"mplex"; default per mode), ``strict_signing`` (gossipsub message signatures), ``runner`` ("thread", or "guest" for
    measurement only).
    """

    def __init__(
        self,
        secret32: bytes,
        listen_host: str,
        listen_port: int,
        peers: list[str],
        on_message: Callable[[str, bytes], None],
        mode: str = "direct",
        topic: str = "medchain/pbft/1",
        max_frame: int = 9 * 1024 * 1024,
        *,
        queue_max: int = QUEUE_MAX,
        queue_max_age: float = QUEUE_MAX_AGE_S,
        muxer: str | None = None,
        strict_signing: bool = True,
        runner: str = "thread",
        blockstore: Any = None,
        external_peers: list[str] | None = None,
        on_have: Callable[[str, list[bytes]], None] | None = None,
        psk: bytes | None = None,
        max_blob_bytes: int | None = None,
        inbox_high_bytes: int = INBOX_HIGH_BYTES,
        network: str = "",
        gate: bool = True,
    ) -> None:
        self.gate = gate  # connections only from the peers' addresses, refused before the handshake
        if not NETWORK_RE.fullmatch(network):
            raise ValueError(f"network must be 0-32 lowercase letters or digits, not {network!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if muxer is None:  # measured fastest per mode (see measure.py / the module docstring)
            muxer = "mplex" if mode == "gossipsub" else "yamux"
        if muxer not in ("mplex", "yamux"):
            raise ValueError("muxer must be 'mplex' or 'yamux'")
        if runner not in ("thread", "guest"):
            raise ValueError("runner must be 'thread' or 'guest'")
        self._secret = bytes(secret32)
        self._peer_id = peer_id_from_secret(self._secret)
        self._host = listen_host
        self._port = listen_port
        self._peers: dict[str, str] = {}
        for addr in peers:
            head, pid = split_peer(addr)
            if pid != self._peer_id:
                self._peers[pid] = head
        self._on_message = on_message
        self.mode = mode
        # the network (node/validator.py: the genesis hash) is in every medchain protocol id and the
        # topic: a validator running another genesis under the same keys cannot open a PBFT stream
        self.network = network
        self.direct_protocol = direct_protocol(network)
        self.topic = f"medchain/{network}/pbft/1" if network and topic == "medchain/pbft/1" else topic
        self.max_frame = max_frame
        self.muxer = muxer
        self.strict_signing = strict_signing
        self.runner = runner
        self._queues: dict[str, FrameQueue] = {pid: FrameQueue(queue_max) for pid in self._peers}
        self._queue_max_age = queue_max_age
        self._gossip_queue = FrameQueue(queue_max)
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        # messages by tag (message_tag): out counts send/broadcast calls, in counts deliveries
        self.tags_out: dict[int, int] = {}
        self.tags_in: dict[int, int] = {}
        self._side: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._done: asyncio.Future | None = None
        self._inbox: deque = deque()
        self._inbox_scheduled = False
        # the undelivered inbound bytes, as two counters each written by one thread only (the trio
        # thread adds, the asyncio loop takes): their difference needs no lock
        self._inbox_in = self._inbox_out = 0
        self._inbox_high_bytes = inbox_high_bytes
        self._services: dict[str, tuple[Callable[[str, bytes], Awaitable[bytes]], int]] = {}
        # bitswap (node/p2p/_bitswap.py): on when a block store is given; external peers are
        # IPFS nodes (kubo, Helia, a cluster) admitted for bitswap only
        self.blockstore = blockstore
        self.max_blob_bytes = max_blob_bytes  # what one fetched blob may hold (None: no bound but 1 GiB)
        self._on_have = on_have
        self._external: dict[str, str] = {}
        for addr in external_peers or ():
            head, pid = split_peer(addr)
            if pid in self._peers:
                raise ValueError(f"external peer {pid} is a validator")
            self._external[pid] = head
        self._rids = itertools.count(1)
        if psk is not None and len(psk) != 32:
            raise ValueError("the private-network key (psk) must be 32 bytes")
        # libp2p private network: every connection is encrypted with the pre-shared key under noise, so a
        # host without it cannot even complete the handshake (py-libp2p's pnet: Salsa20, 8-byte nonce; it
        # does not interoperate with go-libp2p's XSalsa20 swarm keys, so external IPFS peers need psk=None)
        self.psk = psk

    # ---- properties -------------------------------------------------------------------------
    @property
    def peer_id(self) -> str:
        return self._peer_id

    @property
    def listen_addr(self) -> str:
        return f"{tcp_addr(self._host, self._port)}/p2p/{self._peer_id}"

    @property
    def peers(self) -> list[str]:
        """The other validators' peer ids."""
        return list(self._peers)

    def connected_peers(self) -> list[str]:
        return list(self._side.connected()) if self._side is not None else []

    def streaming_peers(self) -> list[str]:
        """Peers our direct stream to is open for (a connection alone may be the peer's, with our
        writer still dialling): what a frame sent now reaches without a dial."""
        side = self._side
        return [o.name for o in side.outs.values() if o.stream is not None] if side is not None else []

    # ---- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._side is not None:
            raise P2PError("already started")
        from ._trio_side import TrioSide  # imports trio + libp2p (~1 s the first time)

        loop = self._loop = asyncio.get_running_loop()
        ready: asyncio.Future = loop.create_future()
        done: asyncio.Future = loop.create_future()
        self._done = done
        side = TrioSide(
            key_pair=key_pair_from_secret(self._secret),
            listen_host=self._host,
            listen_port=self._port,
            peers=self._peers,
            queues=self._queues,
            queue_max_age=self._queue_max_age,
            gossip_queue=self._gossip_queue,
            deliver=self._deliver,
            backlog=self._backlog,
            inbox_high_bytes=self._inbox_high_bytes,
            stats=self.stats,
            mode=self.mode,
            topic=self.topic,
            max_frame=self.max_frame,
            muxer=self.muxer,
            strict_signing=self.strict_signing,
            services={proto: limit for proto, (_h, limit) in self._services.items()},
            call=self._call_handler,
            blockstore=self.blockstore,
            on_have=self._have_from_trio if self._on_have is not None else None,
            external=self._external,
            psk=self.psk,
            direct=self.direct_protocol,
            gate=self.gate,
        )

        def set_once(fut: asyncio.Future, value: Any) -> None:
            if not fut.done():
                fut.set_result(value)

        def on_ready(exc: BaseException | None, port: int) -> None:  # trio thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(set_once, ready, (exc, port))

        if self.runner == "thread":

            def run() -> None:
                import trio

                try:
                    trio.run(side.main, on_ready)
                except BaseException as exc:  # noqa: BLE001
                    log.error("p2p trio thread failed: %r", exc)
                    on_ready(exc, 0)
                finally:
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(set_once, done, None)

            self._thread = threading.Thread(target=run, name=f"p2p-{self._peer_id[-6:]}", daemon=True)
            self._thread.start()
        else:  # trio guest mode on this asyncio loop (kept for measurement)
            import trio

            def guest_done(outcome: Any) -> None:
                if isinstance(getattr(outcome, "error", None), BaseException):
                    on_ready(outcome.error, 0)
                set_once(done, None)

            trio.lowlevel.start_guest_run(
                side.main,
                on_ready,
                run_sync_soon_threadsafe=loop.call_soon_threadsafe,
                done_callback=guest_done,
                host_uses_signal_set_wakeup_fd=True,
            )
        self._side = side
        if side.bitswap is not None:
            side.bitswap.max_blob_bytes = self.max_blob_bytes
        try:
            exc, port = await ready
        except asyncio.CancelledError:
            side.request_stop()
            self._side = None
            raise
        if exc is not None:
            await self._join()
            self._side = None
            raise P2PError(f"p2p start failed on {self._host}:{self._port}: {_leaf(exc)!r}") from exc
        self._port = port

    async def stop(self) -> None:
        side = self._side
        if side is None:
            return
        side.request_stop()
        await self._join()
        self._side = None
        self._drain_inbox()

    async def _join(self) -> None:
        if self._done is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._done), STOP_TIMEOUT)
            except TimeoutError:
                log.warning("p2p trio side did not stop within %.1f s", STOP_TIMEOUT)
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            if self._thread.is_alive():
                log.warning("p2p thread still alive after stop (daemon; will not block exit)")
            self._thread = None

    # ---- sending (asyncio loop, non-blocking) -------------------------------------------------
    def _frame(self, data: bytes) -> bytes:
        n = len(data)
        if n > self.max_frame:
            raise P2PError(f"message of {n} bytes over max_frame {self.max_frame}")
        return n.to_bytes(4, "big") + data

    def _enqueue(self, q: FrameQueue, item: Any) -> None:
        """`item`: a direct queue's (time queued, frame), or a gossip queue's payload."""
        self.stats["drops"] += q.put(item)

    def broadcast(self, data: bytes) -> None:
        """Queue ``data`` for every other validator."""
        side = self._require()
        tag = message_tag(data)
        self.tags_out[tag] = self.tags_out.get(tag, 0) + 1
        if self.mode == "gossipsub":
            if len(data) <= GOSSIP_MAX:
                self._enqueue(self._gossip_queue, bytes(data))
                side.kick()
                return
            self.stats["direct_fallback"] += 1
        item = (time.monotonic(), self._frame(data))
        for q in self._queues.values():
            self._enqueue(q, item)
        side.kick()

    def send(self, peer_id: str, data: bytes) -> None:
        """Queue ``data`` for one validator, always over the direct stream."""
        side = self._require()
        q = self._queues.get(peer_id)
        if q is None:
            raise P2PError(f"unknown peer {peer_id}")
        tag = message_tag(data)
        self.tags_out[tag] = self.tags_out.get(tag, 0) + 1
        self._enqueue(q, (time.monotonic(), self._frame(data)))
        side.kick()

    def _require(self) -> Any:
        if self._side is None:
            raise P2PError("not started")
        return self._side

    # ---- request-response (asyncio loop) ------------------------------------------------------
    def serve(
        self,
        protocol_id: str,
        handler: Callable[[str, bytes], Awaitable[bytes]],
        max_request: int = MAX_REQUEST,
    ) -> None:
        """Answer requests on ``protocol_id`` (register before ``start()``). ``handler(peer_id,
        request)`` runs on the asyncio loop; its return value is the response, and an exception
        it raises reaches the requester as a P2PError naming it. Only validator peers can ask."""
        if self._side is not None:
            raise P2PError("serve() must be called before start()")
        if not protocol_id.startswith("/") or protocol_id == "/medchain/pbft/1.0.0":
            raise ValueError(f"bad protocol id {protocol_id!r}")
        protocol_id = self.scoped(protocol_id)
        if protocol_id in self._services:
            raise ValueError(f"protocol {protocol_id} is already served")
        if max_request < 0:
            raise ValueError("max_request must be >= 0")
        self._services[protocol_id] = (handler, max_request)

    def scoped(self, protocol_id: str) -> str:
        """A medchain protocol id as this network speaks it ("/medchain/<network>/..."); others
        (bitswap) as they are."""
        if self.network and protocol_id.startswith("/medchain/"):
            return f"/medchain/{self.network}/{protocol_id[len('/medchain/'):]}"
        return protocol_id

    async def request(
        self,
        peer_id: str,
        protocol_id: str,
        payload: bytes,
        timeout: float,
        max_response: int = MAX_RESPONSE,
    ) -> bytes:
        """Send ``payload`` to validator ``peer_id`` on a new stream and return its response.
        Every failure (unknown peer, not started, timeout, stream reset, protocol not served,
        response over ``max_response``, the peer's handler raising or refusing the request as too
        large) raises P2PError with a message saying which."""
        side = self._require()
        protocol_id = self.scoped(protocol_id)
        if peer_id not in self._peers:
            raise P2PError(f"{protocol_id} request to unknown peer {peer_id} (not a validator)")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        fut, finish = self._trio_future()
        rid = next(self._rids)
        side.start_request(rid, peer_id, protocol_id, bytes(payload), timeout, max_response, finish)
        return await self._await_trio(side, rid, fut, timeout, f"{protocol_id} request to {peer_id}")

    def _trio_future(self) -> tuple[asyncio.Future, Callable[[Any, str | None], None]]:
        """A future on this loop, and a thread-safe ``finish(result, error)`` that settles it."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def settle(result: Any, error: str | None) -> None:
            if not fut.done():
                if error is not None:
                    fut.set_exception(P2PError(error))
                else:
                    fut.set_result(result)

        def finish(result: Any, error: str | None) -> None:  # trio thread
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(settle, result, error)

        return fut, finish

    async def _await_trio(self, side: Any, rid: int, fut: asyncio.Future, timeout: float, what: str) -> Any:
        try:
            # the trio side enforces the timeout; this bound only guards against a wedged host
            return await asyncio.wait_for(fut, timeout + STOP_TIMEOUT)
        except P2PError:
            raise
        except TimeoutError:
            side.cancel_request(rid)
            raise P2PError(f"{what} timed out after {timeout:g} s") from None
        except BaseException:  # the caller was cancelled: stop the exchange on the trio side
            side.cancel_request(rid)
            raise

    # ---- bitswap (asyncio loop) ----------------------------------------------------------------
    async def fetch_blob(self, root: Any, timeout: float, peers: list[str] | None = None) -> dict:
        """Fetch the UnixFS DAG under CID ``root`` over bitswap from ``peers`` (default: every
        validator and external peer), verify every block against its CID, store it; returns the
        fetch's counters. P2PError on timeout or when no usable peer is left."""
        from node.ipfs.fetch import FetchError

        side = self._require()
        self._check_bitswap_peers(side, peers)
        fut, finish = self._trio_future()
        rid = next(self._rids)
        side.run_task(rid, lambda: side.bitswap.fetch(root, timeout, peers), finish, (FetchError,))
        return await self._await_trio(side, rid, fut, timeout, f"bitswap fetch of {root}")

    async def fetch_blobs(self, roots: list[Any], timeout: float, peers: list[str] | None = None) -> dict:
        """Fetch many blobs in one bitswap session; never raises for blobs that stay missing:
        the result's ``held`` lists the root multihashes now held and ``error`` says why not all."""
        side = self._require()
        self._check_bitswap_peers(side, peers)
        fut, finish = self._trio_future()
        rid = next(self._rids)
        side.run_task(rid, lambda: side.bitswap.fetch_many(list(roots), timeout, peers), finish)
        return await self._await_trio(side, rid, fut, timeout, f"bitswap fetch of {len(roots)} blobs")

    def _check_bitswap_peers(self, side: Any, peers: list[str] | None) -> None:
        if side.bitswap is None:
            raise P2PError("bitswap is off (no block store given)")
        unknown = [p for p in peers or () if p not in self._peers and p not in self._external]
        if unknown:
            raise P2PError(f"bitswap peers not configured (neither validators nor external peers): {unknown}")

    def blocks_added(self, cids: list[Any]) -> None:
        """Tell bitswap we now hold ``cids`` (stored by someone else): answers waiting wants."""
        side = self._require()
        if side.bitswap is not None and cids:
            side.spawn(self._sync_call, side.bitswap.blocks_added, list(cids))

    def track_have(self, cids: list[Any], peers: list[str] | None = None, renew: bool = False) -> None:
        """Ask validators (default: all) to send HAVE for each of ``cids`` once they hold it (now
        or later); HAVEs reach ``on_have(peer_id, [cid_bytes, ...])`` on this loop (a peer that
        sends us a block counts as saying HAVE for it)."""
        side = self._require()
        if side.bitswap is not None and cids:
            side.spawn(self._sync_call, side.bitswap.track, list(cids), list(peers or self._peers), renew)

    @staticmethod
    async def _sync_call(fn: Callable[..., Any], *args: Any) -> None:
        fn(*args)

    def bitswap_stats(self) -> dict[str, int]:
        side = self._side
        return dict(side.bitswap.stats) if side is not None and side.bitswap is not None else {}

    @property
    def external_peers(self) -> list[str]:
        return list(self._external)

    def _have_from_trio(self, peer: str, cids: list[bytes]) -> None:  # trio thread
        loop = self._loop
        if loop is not None and self._on_have is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_have, peer, cids)

    def _call_handler(self, protocol: str, peer: str, request: bytes) -> concurrent.futures.Future:
        """Trio thread: run the protocol's handler on the asyncio loop."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("no asyncio loop")
        return asyncio.run_coroutine_threadsafe(self._run_handler(protocol, peer, request), loop)

    async def _run_handler(self, protocol: str, peer: str, request: bytes) -> tuple[int, bytes]:
        handler = self._services[protocol][0]
        try:
            body = await handler(peer, request)
            if not isinstance(body, bytes | bytearray | memoryview):
                raise TypeError(f"handler returned {type(body).__name__}, not bytes")
            return 0, bytes(body)
        except Exception as exc:  # noqa: BLE001 - reported to the requester, logged here
            # an exception marked `expected` is a handler's ordinary answer (nothing to offer, say),
            # not a fault worth an operator's attention
            (log.debug if getattr(exc, "expected", False) else log.warning)(
                "%s handler failed for %s: %r", protocol, peer, exc)
            return 1, f"{type(exc).__name__}: {exc}".encode()[:1024]

    # ---- receiving ----------------------------------------------------------------------------
    def _backlog(self) -> tuple[int, int]:  # trio thread
        return len(self._inbox), self._inbox_in - self._inbox_out

    def _deliver(self, peer: str, payload: bytes) -> None:  # trio thread
        self._inbox_in += len(payload)
        self._inbox.append((peer, payload))
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            loop = self._loop
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                    loop.call_soon_threadsafe(self._drain_inbox)

    def _drain_inbox(self) -> None:  # asyncio loop
        """Hand at most DRAIN_BATCH messages to the handler, then yield to the loop's other work (timers,
        consensus, the API) and go on: a peer streaming tiny frames faster than they are handled kept
        this loop here for good (a review)."""
        self._inbox_scheduled = False
        inbox, cb, tags = self._inbox, self._on_message, self.tags_in
        for _ in range(DRAIN_BATCH):
            if not inbox:
                return
            peer, payload = inbox.popleft()
            self._inbox_out += len(payload)
            tag = message_tag(payload)
            tags[tag] = tags.get(tag, 0) + 1
            try:
                cb(peer, payload)
            except Exception:  # a handler bug must not stall the network
                log.exception("on_message handler failed")
        if inbox:
            self._inbox_scheduled = True  # the trio side need not schedule another: this one goes on
            asyncio.get_running_loop().call_soon(self._drain_inbox)
