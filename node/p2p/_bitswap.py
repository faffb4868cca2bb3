"""Bitswap 1.2.0 on the libp2p host (trio side): streams, per-peer writers, DAG fetches.

The protocol decisions are ``node.ipfs.bitswap.Engine`` and ``node.ipfs.fetch.DagFetch`` (pure);
this module only moves their messages. As the spec (and kubo/Helia) require, and unlike
py-libp2p 0.8.1's ``libp2p.bitswap``: inbound streams are only read, every reply goes out on our
own outbound stream to that peer (one long-lived stream per peer, reopened when it breaks), and
wants we cannot answer yet are answered when the block arrives (the engine's ledger).

Peers: the validator set (admitted by the connection gate) and, for bitswap only, the external
IPFS peers named by multiaddr in the configuration. The PBFT and request-response handlers
refuse external peers; this one accepts both.
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
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from node.ipfs.bitswap import REPLY_BUDGET, Engine, merge
from node.ipfs.bitswap_pb import HAVE, MAX_MESSAGE, WANT_BLOCK, WANT_HAVE, MessageError, decode_message, encode_message
from node.ipfs.blockstore import IntegrityError
from node.ipfs.cid import Cid, encode_varint
from node.ipfs.fetch import BLOCK_TIMEOUT, DagFetch, FetchError
from node.ipfs.unixfs import export_bytes

from ._streamio import StreamReader
from ._wake import wait_for_items, wake

log = logging.getLogger("medchain.bitswap")

PROTOCOLS = [TProtocol("/ipfs/bitswap/1.2.0"), TProtocol("/ipfs/bitswap/1.1.0")]
OUT_QUEUE = 4096  # messages queued per peer; beyond this, or OUT_BYTES, new ones are dropped
OUT_BYTES = 64 * 1024 * 1024  # (a peer that asks for much and reads slowly cannot grow our memory)
DIAL_TIMEOUT = 5.0
MAX_BITSWAP_STREAMS = 8  # inbound bitswap streams open at once per peer
STAT_KEYS = ("msgs_in", "msgs_out", "blocks_in", "blocks_out", "bytes_in", "bytes_out", "haves_in",
             "dont_haves_in", "unwanted_blocks", "duplicate_blocks", "bad_messages", "oversized",
             "corrupt_local", "dropped_out", "send_failed", "fetches", "fetch_failures")


class _Out:
    __slots__ = ("addr", "bytes", "event", "name", "pid", "queue", "running", "waiting")

    def __init__(self, name: str, pid: ID, addr: multiaddr.Multiaddr | None) -> None:
        self.name, self.pid, self.addr = name, pid, addr
        self.queue: deque[bytes] = deque()
        self.bytes = 0
        self.event = trio.Event()
        self.waiting = False
        self.running = False


class BitswapService:
    def __init__(self, side: Any, store: Any, on_have: Callable[[str, list[bytes]], None] | None,
                 external: dict[str, str]) -> None:
        self.side = side
        self.store = store
        self.on_have = on_have
        # a validator's blobs are at most the genesis's max_blob_bytes: a fetch of n roots holds at
        # most n times that in memory (twice it and 64 KiB for the DAG's links), not 1 GiB
        self.max_blob_bytes: int | None = None
        self.engine = Engine(self._get_block, has_block=store.has)
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self.outs: dict[str, _Out] = {}
        for name, o in side.outs.items():
            self.outs[name] = _Out(name, o.pid, o.addr)
        self.external: dict[ID, str] = {}
        for name, addr in external.items():
            pid = ID.from_base58(name)
            self.external[pid] = name
            self.outs[name] = _Out(name, pid, multiaddr.Multiaddr(addr))
        self.fetches: set[DagFetch] = set()
        self._wakeups: dict[DagFetch, trio.Event] = {}
        self._running: dict[bytes, trio.Event] = {}  # root multihash -> done, for de-duplication

    # ---- plumbing ------------------------------------------------------------------------------
    def register(self, host: Any) -> None:
        for proto in PROTOCOLS:
            host.set_stream_handler(proto, self._on_stream)

    def name_of(self, pid: ID) -> str | None:
        return self.side.allowed.get(pid) or self.external.get(pid)

    def _get_block(self, cid: Cid) -> bytes | None:
        try:
            return self.store.get(cid)
        except IntegrityError:  # never serve bytes that do not match their CID
            self.stats["corrupt_local"] += 1
            return None

    def send(self, replies: list[tuple[str, Any]]) -> None:
        for peer, msg in merge(replies):
            o = self.outs.get(peer)
            if o is None:
                continue
            body = encode_message(msg)
            if len(o.queue) >= OUT_QUEUE or o.bytes + len(body) > OUT_BYTES:
                self.stats["dropped_out"] += 1  # the peer re-asks (wants stay in its list)
                continue
            o.queue.append(encode_varint(len(body)) + body)
            o.bytes += len(o.queue[-1])
            self.stats["blocks_out"] += len(msg.blocks)
            if not o.running:
                o.running = True
                self.side.nursery.start_soon(self._writer, o)
            else:
                wake(o)

    async def _writer(self, o: _Out) -> None:
        """One outbound stream per peer carrying all our messages to it; reopened on failure."""
        host = self.side.host
        stream = None
        retried = False
        try:
            while True:
                await wait_for_items(o, o.queue)
                if stream is None:
                    try:
                        with trio.fail_after(DIAL_TIMEOUT):
                            if not host.get_network().get_connections(o.pid) and o.addr is not None:
                                host.get_network().unblock_peer(o.pid)
                                await host.connect(PeerInfo(o.pid, [o.addr]))
                            stream = await host.new_stream(o.pid, PROTOCOLS)
                    except Exception as exc:  # noqa: BLE001 - peer down: drop what is queued
                        log.debug("bitswap: no stream to %s: %r", o.name, exc)
                        self.stats["send_failed"] += len(o.queue)
                        o.queue.clear()
                        o.bytes = 0
                        continue
                batch, size = [], 0
                while o.queue and size < MAX_MESSAGE:
                    batch.append(o.queue.popleft())
                    size += len(batch[-1])
                o.bytes -= size
                try:
                    await stream.write(b"".join(batch))
                    self.stats["msgs_out"] += len(batch)
                    self.stats["bytes_out"] += size
                    retried = False
                except Exception as exc:  # noqa: BLE001 - stream broke: reopen once for this batch
                    log.debug("bitswap: write to %s failed: %r", o.name, exc)
                    stream = None
                    if retried:  # failed on a fresh stream too: drop it (fetches re-ask)
                        self.stats["send_failed"] += len(batch)
                        retried = False
                    else:
                        o.queue.extendleft(reversed(batch))
                        o.bytes += size
                        retried = True
                    await trio.sleep(0.05)
        finally:
            o.running = False
            if stream is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(0.5), contextlib.suppress(Exception):
                    await stream.reset()

    async def _on_stream(self, stream: Any) -> None:
        peer = self.name_of(stream.muxed_conn.peer_id)
        if peer is None:
            with contextlib.suppress(Exception):
                await stream.reset()
            return
        # each open stream may hold a partial message of up to MAX_MESSAGE
        await self.side.slots.serve(stream, peer, "bitswap", MAX_BITSWAP_STREAMS,
                                    lambda: self._read_messages(stream, peer))

    async def _read_messages(self, stream: Any, peer: str) -> None:
        reader = StreamReader(stream)
        try:
            while True:
                n = await reader.uvarint()
                if n is None:
                    return
                if n > MAX_MESSAGE:
                    self.stats["oversized"] += 1
                    log.warning("bitswap message of %d bytes from %s over %d: stream reset", n, peer, MAX_MESSAGE)
                    await stream.reset()
                    return
                raw = await reader.exactly(n)
                try:
                    msg = decode_message(raw)
                except (MessageError, ValueError) as exc:
                    self.stats["bad_messages"] += 1
                    log.info("bad bitswap message from %s: %s", peer, exc)
                    continue
                self.stats["msgs_in"] += 1
                self.stats["bytes_in"] += n
                self.handle(peer, msg)
        except Exception as exc:  # noqa: BLE001 - EOF / reset / connection gone
            log.debug("bitswap stream from %s ended: %r", peer, exc)

    def handle(self, peer: str, msg: Any) -> None:
        o = self.outs.get(peer)
        r = self.engine.receive(peer, msg, min(REPLY_BUDGET, OUT_BYTES - (o.bytes if o is not None else 0)))
        self.send(r.replies)
        self.stats["blocks_in"] += len(r.blocks)
        self.stats["duplicate_blocks"] += r.duplicates
        self.stats["oversized"] += r.oversized
        haves = [cid.to_bytes() for cid, _ in r.blocks]  # a peer that sends a block holds it
        for cid, data in r.blocks:
            for f in self.fetches:
                try:
                    if f.on_block(peer, cid, data):
                        self._wakeups[f].set()
                except FetchError as exc:  # that fetch fails (too large, malformed): not the stream
                    f.failed = exc
                    self._wakeups[f].set()
        if r.unwanted:  # bytes that hash to nothing we asked for: a corrupt or lying peer
            self.stats["unwanted_blocks"] += r.unwanted
            log.warning("bitswap: %d block(s) from %s match no want (corrupt?)", r.unwanted, peer)
            for f in self.fetches:
                if f.in_flight_with(peer):
                    f.on_bad_peer(peer)
                    self._wakeups[f].set()
        for cid, kind in r.presences:
            if kind == HAVE:
                self.stats["haves_in"] += 1
                haves.append(cid.to_bytes())
            else:
                self.stats["dont_haves_in"] += 1
                for f in self.fetches:
                    f.on_dont_have(peer, cid)
                    self._wakeups[f].set()
        if haves and self.on_have is not None:
            self.on_have(peer, haves)  # one hop to the asyncio loop per message

    async def keep_external(self) -> None:
        """Stay connected to the configured external IPFS peers (they may fetch from us)."""
        net = self.side.host.get_network()
        while True:
            for pid, name in self.external.items():
                if not net.get_connections(pid):
                    try:
                        net.unblock_peer(pid)
                        with trio.fail_after(DIAL_TIMEOUT):
                            await self.side.host.connect(PeerInfo(pid, [self.outs[name].addr]))
                        log.info("bitswap: connected to external peer %s", name)
                    except Exception as exc:  # noqa: BLE001 - retried
                        log.debug("bitswap: external peer %s unreachable: %r", name, exc)
            await trio.sleep(5.0)

    def conn_closed(self, pid: ID) -> None:
        name = self.name_of(pid)
        if name is not None and not self.side.host.get_network().get_connections(pid):
            self.engine.peer_gone(name)

    # ---- called from the asyncio side (via the host nursery) -----------------------------------
    def blocks_added(self, cids: list[Cid]) -> None:
        self.send(self.engine.blocks_added(cids))

    def track(self, cids: list[Cid], peers: list[str], renew: bool = False) -> None:
        """Ask peers to tell us (HAVE) when they hold ``cids`` (now or later; no DONT_HAVE).
        ``renew`` re-sends wants still pending (a peer may have restarted or evicted them)."""
        out = []
        if renew:
            for cid in cids:
                asked = self.engine.wants.get(cid.multihash, {})
                out += self.engine.cancel(cid, [p for p in peers if asked.get(p) == WANT_HAVE])
        self.send(out + self.engine.want(cids, peers, WANT_HAVE, send_dont_have=False))

    def default_peers(self) -> list[str]:
        return list(self.outs)

    async def fetch(self, root: Cid, timeout: float, peers: list[str] | None = None) -> dict:
        """Fetch the whole DAG under ``root``, verify it, store it; stats of the fetch, or
        FetchError (timeout, no usable peer, malformed DAG)."""
        res = await self.fetch_many([root], timeout, peers)
        if root.multihash not in res["held"]:
            raise FetchError(res["error"])
        if res["already_held"]:
            return {"blocks": 0, "bytes": 0, "already_held": True}
        return {k: v for k, v in res.items() if k not in ("held", "error", "already_held")}

    async def fetch_many(self, roots: list[Cid], timeout: float, peers: list[str] | None = None) -> dict:
        """One session for many blobs (a block's worth of committed writes): wants travel in
        shared messages. Every complete DAG is stored, even if others time out. The result has
        ``held`` (root multihashes now held), ``error`` (why not all), and the counters."""
        held: set[bytes] = set()
        waits = []
        todo = []
        for r in dict.fromkeys(roots):
            if r.multihash in self._running:
                waits.append((r, self._running[r.multihash]))
            elif self.store.has_blob(r):
                held.add(r.multihash)
            else:
                todo.append(r)
        res: dict = {"already_held": not todo and not waits, "error": None}
        if todo:
            res.update(await self._session(todo, timeout, peers, held))
        for r, ev in waits:  # fetched by another session meanwhile
            with trio.move_on_after(timeout):
                await ev.wait()
            if self.store.has_blob(r):
                held.add(r.multihash)
        res["held"] = held
        if len(held) < len({r.multihash for r in roots}) and res["error"] is None:
            res["error"] = "fetch of a blob being fetched by another session did not complete"
        return res

    def _bounds(self, n: int) -> dict[str, int]:
        per = self.max_blob_bytes
        return {} if per is None else {"max_bytes": n * (2 * per + 65536), "max_blocks": n * (per // 256 + 64)}

    async def _session(self, roots: list[Cid], timeout: float, peers: list[str] | None, held: set[bytes]) -> dict:
        done = trio.Event()
        for r in roots:
            self._running[r.multihash] = done
        self.stats["fetches"] += 1
        # peers in random order, and a block unanswered for a quarter of the fetch's time goes to the
        # next one: with the whole budget per block and genesis order, one silent (or crashed) first
        # validator failed every fetch of a large blob in time for a vote (a review)
        order = list(peers or self.default_peers())
        random.shuffle(order)
        f = DagFetch(roots, order, block_timeout=max(0.5, min(BLOCK_TIMEOUT, timeout / 4)),
                     **self._bounds(len(roots)))
        wakeup = self._wakeups[f] = trio.Event()
        self.fetches.add(f)
        error = None
        try:
            with trio.fail_after(timeout):
                while not f.done:
                    if f.failed is not None:
                        raise f.failed
                    now = trio.current_time()
                    out = [m for peer, cid in f.expire(now) for m in self.engine.cancel(cid, [peer])]
                    out += [m for peer, cid in f.requests(now)
                            for m in self.engine.want(cid, [peer], WANT_BLOCK, send_dont_have=True)]
                    self.send(out)
                    if f.done:
                        break
                    nxt = f.next_deadline()
                    with trio.move_on_after(max(0.0, (nxt or now + 1.0) - now)):
                        await wakeup.wait()
                    wakeup = self._wakeups[f] = trio.Event()
                if f.failed is not None:  # its last block may have been the one that failed it
                    raise f.failed
        except trio.TooSlowError:
            error = (f"fetching {roots[0]}{f' and {len(roots) - 1} more' if len(roots) > 1 else ''} timed out "
                     f"after {timeout:g} s ({len(f.blocks)} blocks in; {f.stats})")
        except FetchError as exc:
            error = str(exc)
        finally:
            self.fetches.discard(f)
            self._wakeups.pop(f, None)
            if not f.done:
                self.send([m for fl in f.flight.values() for m in self.engine.cancel(fl.cid, [fl.peer])])
        try:
            sizes = {}
            blocks = {c.multihash: d for c, d in f.blocks.values()}
            for r in roots:  # every complete, well-formed file is kept, even after a timeout
                try:
                    size = len(export_bytes(r, lambda c: blocks[c.multihash], self.max_blob_bytes))
                except KeyError:
                    continue  # incomplete
                except ValueError as exc:
                    error = error or f"{r}: not a valid UnixFS file: {exc}"
                    continue
                if self.max_blob_bytes is not None and size > self.max_blob_bytes:
                    error = error or f"{r}: {size} bytes, past the {self.max_blob_bytes} a blob may hold"
                    continue
                sizes[r.multihash] = size
            if sizes:
                await trio.to_thread.run_sync(self._store_complete, roots, sizes, f.blocks)
                held.update(sizes)
                cids = [c for c, _ in f.blocks.values()]
                self.send(self.engine.got(cids) + self.engine.blocks_added(cids))
        finally:
            for r in roots:
                self._running.pop(r.multihash, None)
            done.set()
        if error:
            self.stats["fetch_failures"] += 1
        size = sum(sizes.values())
        return dict(f.stats, size=size, bad_peers=sorted(f.bad_peers), error=error)

    def _store_complete(self, roots: list[Cid], sizes: dict[bytes, int], blocks: dict) -> None:
        self.store.put_dags([(r, [blocks[c.multihash] for c in _dag(r, blocks)], sizes[r.multihash])
                             for r in roots if r.multihash in sizes])


def _dag(root: Cid, blocks: dict) -> list[Cid]:
    """The CIDs of ``root``'s DAG among fetched ``blocks`` (multihash -> (cid, data))."""
    from node.ipfs.cid import CODEC_DAG_PB
    from node.ipfs.unixfs import decode_pbnode

    out, stack, seen = [], [root], set()
    while stack:
        c = stack.pop()
        if c.multihash in seen:
            continue
        seen.add(c.multihash)
        out.append(c)
        if c.codec == CODEC_DAG_PB:
            stack.extend(link.hash for link in decode_pbnode(blocks[c.multihash][1]).links)
    return out
