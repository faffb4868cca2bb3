"""Blob replication among validators (the asyncio-side driver over the block store and bitswap).

When block h commits, every data write in it with result OK names a blob (its root CID):

1. the commit (node/commit.py) pinned them (on chain now: never garbage-collected), stored the
   sidecars held here and recorded the rest as wanted, in the block store (so this survives a
   restart);
2. the wanted ones are fetched over bitswap from the other validators (and external IPFS
   peers), every block verified against its CID; what is still missing is retried with backoff.
   A fetched DAG is stored in one LMDB transaction, so a listed root means the whole DAG is here;
3. once this validator holds every blob of block h, it tells each other validator so, in one
   small message per batch of blocks on the validators' direct stream (``[T_HELD, heights we hold,
   heights we ask about]``); a validator asked about heights answers with the same message:
   ``[T_HELD, the asked heights it holds, []]``. One-way: a message lost to a peer that was down
   is made good by asking (an unavailable block is asked about every ASK_EVERY_S). Until the
   thirteenth session this was a request on a new libp2p stream (``/medchain/blobs-held/1.0.0``):
   a stream, its protocol negotiation and its close cost about a sixth of a validator's p2p CPU at
   light load.

Holders of a blob of block h = this validator (if it holds the blob) + the validators that said
they hold block h. The blob is **available** once holders >= 2f+1: it survives f validators
losing it, and f+1 honest validators hold it. Announcing per block, not per blob, keeps the cost
at one message per peer per batch of blocks instead of a bitswap want-have and a HAVE per blob
per peer (measured: that per-blob tracking cost more CPU than the fetches themselves). What peers
said is kept in memory; after a restart ``availability`` asks them again (rate-limited).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from node.block import availability, max_faulty
from node.ipfs.blockstore import BlockStore
from node.ipfs.cid import Cid
from node.state import Code, keys
from node.state.records import BlobRec, Receipt
from node.tx import KIND_WRITE, Tx
from node.wire import WireError, decode, encode

T = TypeVar("T")
log = logging.getLogger("medchain.replication")

T_HELD = 17  # p2p message tag (beside PBFT's and node/sidecar.py's T_TXS = 16)
HELD_PREFIX = bytes([0x93, T_HELD])  # how an encoded [T_HELD, held, ask] starts: checked before decoding
MAX_HELD_BYTES = 64 * 1024
FETCH_TIMEOUT = 20.0  # per session; what is still missing is retried with backoff
SESSIONS = 4  # bitswap sessions in flight at once
RETRY_MIN, RETRY_MAX = 1.0, 30.0
ANNOUNCE_EVERY_S = 1.0  # holdings are announced at most this often (availability lags by as much)
ASK_EVERY_S = 5.0  # an unavailable block is asked about at most this often
MAX_HEIGHTS = 100_000  # heights remembered (ours pending, peers' announcements)
MAX_MSG_HEIGHTS = 4096
# what a peer's message may ask and claim: an honest validator asks about one height at a time (a
# client's status poll), and each asked height we cannot answer from memory costs a block's decode
MAX_ASK = 16  # asked heights answered per message, and per peer per ASK_BUDGET_S
ASK_BUDGET_S = 1.0
AHEAD = MAX_MSG_HEIGHTS  # held heights believed this far above our head (a peer may be ahead of us)


class Replicator:
    def __init__(self, store: BlockStore, n: int, roots_of: Callable[[int], list[Cid]] | None = None,
                 head_of: Callable[[], int] | None = None, io: Executor | None = None) -> None:
        self.store = store
        # blocking store calls run here: the validator's own executor, which it drains before it
        # closes the stores (a thread still in LMDB at the close could crash the process)
        self.io = io
        self.n = n
        self.f = max_faulty(n)
        self.quorum = availability(n)  # holders for "available": 2f+1 (node/block.py says why)
        self.roots_of = roots_of  # height -> blob roots of that committed block (from the ledger)
        self.head_of = head_of  # our committed height (None: no bound on what peers may claim or ask)
        self._ask_budget: dict[str, tuple[float, int]] = {}  # peer -> (window start, heights answered)
        self.net: Any = None  # the P2PNode, with bitswap on (None for a single validator)
        self.peer_held: OrderedDict[int, set[str]] = OrderedDict()  # height -> peers holding all its blobs
        self._pending: OrderedDict[int, set[bytes]] = OrderedDict()  # height -> roots not held yet
        self._complete: OrderedDict[int, None] = OrderedDict()
        self._announce: dict[str, set[int]] = {}  # peer -> heights to tell it about
        self._announce_evt = asyncio.Event()
        # height -> when we last asked peers about it, or saw it commit: each peer announces the
        # heights it completes unasked, within ANNOUNCE_EVERY_S, so a fresh commit is not asked about
        self._asked: dict[int, float] = {}
        self._queue: asyncio.Queue[list[Cid]] = asyncio.Queue()
        self._retry: dict[bytes, tuple[Cid, float, float]] = {}  # mh -> (cid, due, backoff)
        self._tasks: list[asyncio.Task] = []
        self._sessions: set[asyncio.Task] = set()
        self._inflight: set[bytes] = set()
        self._wanted: set[bytes] = set()  # multihashes recorded in the store's wanted table
        self.stats = {"committed_blobs": 0, "fetched": 0, "fetch_failures": 0, "read_fetches": 0,
                      "vote_fetches": 0, "announced": 0, "announce_failures": 0, "asked": 0}

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, net: Any) -> None:
        """Replicate over ``net`` (a started P2PNode with bitswap). Without one (a single
        validator) the loop starts on the first commit and only pins."""
        self.net = net
        # repair survives restarts: blobs of committed blocks that were still missing at the stop
        for root, height in self.store.wanted_blobs():
            self._pending.setdefault(height, set()).add(root.multihash)
            self._wanted.add(root.multihash)
            self._queue.put_nowait([root])
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._run(), name="replicator")]
            if net is not None:
                self._tasks.append(loop.create_task(self._announcer(), name="blob-announcer"))

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._sessions]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []

    # ---- events --------------------------------------------------------------------------------
    def on_commit(self, height: int, roots: list[Cid], wanted: list[Cid]) -> None:
        """Block ``height`` committed, recording ``roots`` (its data writes with result OK). The
        commit stored and pinned what it held and recorded the rest as ``wanted`` (node/commit.py):
        only those are fetched."""
        if not roots:
            return
        self.stats["committed_blobs"] += len(roots)
        now = time.monotonic()
        self._asked[height] = now
        while self._asked:  # entries older than ASK_EVERY_S mean what absence means: oldest first
            h, t = next(iter(self._asked.items()))
            if now - t <= ASK_EVERY_S:
                break
            del self._asked[h]
        _trim(self._asked)
        self._pending[height] = {r.multihash for r in wanted}
        _trim(self._pending)
        self._wanted.update(r.multihash for r in wanted)
        if not wanted:
            self._mark_complete()  # every blob rode in as a sidecar
            return
        self._queue.put_nowait(wanted)
        if not self._tasks:
            self.start(self.net)

    def refetch(self, root: Cid, height: int) -> None:
        """A committed blob (recorded at `height`) found missing or corrupt here: unlisted and wanted in
        one transaction, then fetched like any wanted blob until held (a read may fetch it first)."""
        self.store.unlist(root, height)
        self.want([(root, height)])

    async def adopt(self, base: int, scan: Callable[[bytes], list[tuple[bytes, bytes]]]) -> int:
        """Pin, and fetch where not held, the blobs committed below checkpoint `base`, the height this
        ledger started from (a state transfer, a restore): no commit here pinned them, and without
        this every validator rebuilt that way lowered how many copies of the history the network
        keeps. `scan(after)`: the next blob records (keys.blob) after a state key. In batches,
        resumable after a crash (BlockStore.adopt); returns how many were adopted now."""
        at, done, after = self.store.adoption()
        if at == base and done:
            return 0
        if at != base:
            after = b""
        adopted = 0
        while True:
            pairs = await self._off(scan, after)
            roots = [(Cid.from_bytes(k[1:]), rec.height) for k, raw in pairs
                     if (rec := BlobRec.decode(raw)).height <= base]  # above it: a commit here pinned it
            after = pairs[-1][0] if pairs else after
            self.want(await self._off(self.store.adopt, roots, base, after, not pairs))
            adopted += len(roots)
            if not pairs:
                log.info("adopted %d blobs committed below the checkpoint at %d", adopted, base)
                return adopted

    async def _off(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    def want(self, roots: list[tuple[Cid, int]]) -> None:
        """Blobs the store recorded as wanted meanwhile (a refetch, a checkpoint's history): fetched like
        those a commit wanted."""
        for root, height in roots:
            self._pending.setdefault(height, set()).add(root.multihash)
            self._wanted.add(root.multihash)
        if roots:
            self._queue.put_nowait([r for r, _ in roots])

    def stored(self, cids: list[Cid]) -> None:
        """Blocks stored here by the API (an upload): answer wants that were waiting for them."""
        if self.net is not None:
            self.net.blocks_added(cids)

    # ---- queries -------------------------------------------------------------------------------
    def availability(self, root: Cid, height: int) -> dict:
        held_here = self.store.has_blob(root)
        peers = self.peer_held.get(height, set())
        count = len(peers) + (1 if held_here else 0)
        if count < self.quorum and self.net is not None:
            now = time.monotonic()
            # asked only about a height older than that (e.g. committed before our restart): asking
            # about every fresh one, as a status poll right after commit did, opened three libp2p
            # streams per block and was the largest p2p cost of `medchain demo`
            if now - self._asked.get(height, 0.0) > ASK_EVERY_S:
                self._asked[height] = now
                _trim(self._asked)
                self.stats["asked"] += 1
                self._ask([height])
        return {"cid": str(root), "holders": count, "held_here": held_here, "quorum": self.quorum,
                "available": count >= self.quorum}

    async def ensure(self, root: Cid, timeout: float = 15.0, purpose: str = "read") -> bool:
        """Hold ``root`` (fetching it from peers if needed) for a read (or, `purpose` "vote", before
        preparing a block that records it); False if it cannot be had."""
        if self.store.has_blob(root):
            return True
        if self.net is None:
            return False
        self.stats[f"{purpose}_fetches"] += 1
        try:
            await self.net.fetch_blob(root, timeout)
        except Exception as exc:  # noqa: BLE001 - P2PError: no peer holds it (yet)
            log.info("%s fetch of %s failed: %s", purpose, root, exc)
            return False
        return self.store.has_blob(root)

    # ---- announcements ---------------------------------------------------------------------------
    def _held_block(self, height: int) -> bool:
        if height in self._complete:
            return True
        if height in self._pending or self.roots_of is None:
            return False
        roots = self.roots_of(height)  # not seen since our start: check the store
        return bool(roots) and all(self.store.has_blob(r) for r in roots)

    def on_held(self, peer: str, data: bytes) -> None:
        """A peer's [T_HELD, heights it holds, heights it asks about] (its direct stream, on the
        asyncio loop): record what it holds, and answer what it asks with what we hold of it. A
        malformed message is dropped (logged). What one message can cost is bounded: heights are
        positive and at most AHEAD above our head (made-up future heights would push real ones out
        of `peer_held`), at most MAX_ASK asked heights at or below our head are answered per peer
        per ASK_BUDGET_S, and the answer is worked out off the loop (a height not in memory costs a
        block's decode), so a byzantine peer cannot hold up this validator's PBFT messages."""
        try:
            tag, held, ask = decode(data, MAX_HELD_BYTES)
            if tag != T_HELD or not (isinstance(held, list) and isinstance(ask, list)):
                raise ValueError("not [T_HELD, [height, ...], [height, ...]]")
        except (WireError, ValueError, TypeError) as exc:
            log.debug("dropped a bad blobs-held message from %s: %s", peer, exc)
            return
        head = self.head_of() if self.head_of is not None else 2 ** 63 - 1 - AHEAD
        for h in [h for h in held if type(h) is int and 0 < h <= head + AHEAD][:MAX_MSG_HEIGHTS]:
            self.peer_held.setdefault(h, set()).add(peer)
        _trim(self.peer_held)
        ask = self._allowed(peer, [h for h in ask if type(h) is int and 0 < h <= head])
        if ask:
            self._spawn(self._answer(peer, ask))

    def _allowed(self, peer: str, ask: list[int]) -> list[int]:
        """The asked heights this peer may have answered now: at most MAX_ASK per ASK_BUDGET_S."""
        now = time.monotonic()
        start, used = self._ask_budget.get(peer, (now, 0))
        if now - start >= ASK_BUDGET_S:
            start, used = now, 0
        ask = ask[:MAX_ASK - used]
        self._ask_budget[peer] = (start, used + len(ask))
        return ask

    async def _answer(self, peer: str, ask: list[int]) -> None:
        mine = await self._off(lambda: [h for h in ask if self._held_block(h)])
        self._send(peer, mine, [])

    def _mark_complete(self) -> None:
        done = [h for h, left in self._pending.items() if not left]
        for h in done:
            del self._pending[h]
            self._complete[h] = None
            for p in self._peers():
                self._announce.setdefault(p, set()).add(h)
        _trim(self._complete)
        if done:
            self._announce_evt.set()

    def _peers(self) -> list[str]:
        return self.net.peers if self.net is not None else []

    async def _announcer(self) -> None:
        """Tell peers which blocks' blobs we now hold; what fails is retried next round."""
        while True:
            await self._announce_evt.wait()
            # gather a round's worth of heights first: one message per peer per round, not per block
            await asyncio.sleep(ANNOUNCE_EVERY_S)
            self._announce_evt.clear()
            batch, self._announce = self._announce, {}
            # a peer whose stream is down would lose the message (frames for it expire): it is
            # told in a later round instead, as a failed send is
            up = set(self.net.streaming_peers())
            results = [p in up and self._send(p, sorted(hs)[:MAX_MSG_HEIGHTS], []) for p, hs in batch.items()]
            for (p, hs), ok in zip(batch.items(), results, strict=True):
                # what failed goes again, and so does what one message could not hold (after an
                # outage more than MAX_MSG_HEIGHTS heights may wait): the newest were left out
                left = hs if ok is not True else set(sorted(hs)[MAX_MSG_HEIGHTS:])
                if left:
                    keep = self._announce.setdefault(p, set())
                    keep.update(left)
                    if len(keep) > MAX_HEIGHTS:  # a peer down for long: the newest, it asks for the rest
                        self._announce[p] = set(sorted(keep)[-MAX_HEIGHTS:])
            if self._announce:
                await asyncio.sleep(RETRY_MIN)
                self._announce_evt.set()

    def _send(self, peer: str, held: list[int], ask: list[int]) -> bool:
        """Queue [T_HELD, held, ask] on the direct stream to `peer`; False if it is not a peer (or
        the network is not running). Delivery is not confirmed: see the module doc."""
        try:
            self.net.send(peer, encode([T_HELD, held, ask]))
        except Exception as exc:  # noqa: BLE001 - P2PError: not started, or not a peer
            self.stats["announce_failures"] += 1
            log.debug("blobs-held to %s failed: %s", peer, exc)
            return False
        self.stats["announced"] += len(held)
        return True

    def _ask(self, heights: list[int]) -> None:
        mine = [h for h in heights if self._held_block(h)]
        for p in self._peers():
            self._send(p, mine, heights)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)

    # ---- the fetch loop --------------------------------------------------------------------------
    async def _run(self) -> None:
        slots = asyncio.Semaphore(SESSIONS)
        while True:
            try:
                roots = [r for r in dict.fromkeys(await self._next_batch()) if r.multihash not in self._inflight]
                self._settle(roots)
                roots = [r for r in roots if not self.store.has_blob(r)]
                if not roots or self.net is None:
                    continue
                await slots.acquire()
                self._inflight.update(r.multihash for r in roots)
                self._spawn(self._session(roots, slots))
            except asyncio.CancelledError:
                raise
            except Exception:  # keep replicating
                log.exception("replication step failed")
                await asyncio.sleep(RETRY_MIN)

    async def _next_batch(self) -> list[Cid]:
        """New commits (all that queued up, so one bitswap session serves many), or due retries."""
        due = min((d for c, d, _ in self._retry.values() if c.multihash not in self._inflight), default=None)
        wait = None if due is None else max(0.0, due - time.monotonic())
        roots: list[Cid] = []
        with contextlib.suppress(TimeoutError):
            roots += await asyncio.wait_for(self._queue.get(), wait) if wait is not None else await self._queue.get()
        while not self._queue.empty():
            roots += self._queue.get_nowait()
        now = time.monotonic()
        for cid, at, b in list(self._retry.values()):
            if at <= now and cid.multihash not in self._inflight:
                roots.append(cid)
                self._retry[cid.multihash] = (cid, now + RETRY_MAX, b)  # the session reschedules it
        return roots

    def _settle(self, roots: list[Cid]) -> None:
        """Roots now held leave the per-block pending sets (and their retries)."""
        now_held = [r for r in roots if self.store.has_blob(r)]
        held = {r.multihash for r in now_held}
        unwant = [r for r in now_held if r.multihash in self._wanted]
        if unwant:
            self._wanted.difference_update(r.multihash for r in unwant)
            self._spawn(self._off(self.store.unwant, unwant))
        for mh in held:
            self._retry.pop(mh, None)
        if held:
            for left in self._pending.values():
                left -= held
            self._mark_complete()

    async def _session(self, roots: list[Cid], slots: asyncio.Semaphore) -> None:
        try:
            try:
                res = await self.net.fetch_blobs(roots, FETCH_TIMEOUT)
                held, error = res["held"], res.get("error")
            except Exception as exc:  # noqa: BLE001 - the host stopped, or a wedged fetch
                held, error = set(), str(exc)
            now = time.monotonic()
            for r in roots:
                if r.multihash in held:
                    self.stats["fetched"] += 1
                else:
                    self.stats["fetch_failures"] += 1
                    _c, _at, backoff = self._retry.get(r.multihash, (r, 0.0, RETRY_MIN / 2))
                    backoff = min(backoff * 2, RETRY_MAX)
                    self._retry[r.multihash] = (r, now + backoff, backoff)
            self._settle([r for r in roots if r.multihash in held])
            if error:
                log.info("replication: %d of %d blobs not fetched yet (%s)", len(roots) - len(held), len(roots), error)
        except Exception:
            log.exception("replication session failed")
        finally:
            self._inflight.difference_update(r.multihash for r in roots)
            slots.release()
            self._queue.put_nowait([])  # wake the loop: retries may be due now


def head_from_ledger(ledger: Any) -> Callable[[], int]:
    """Our committed height, for bounding what peers' blobs-held messages may claim and ask."""

    def head_of() -> int:
        head = ledger.head()
        return head.height if head is not None else 0
    return head_of


def roots_from_ledger(ledger: Any) -> Callable[[int], list[Cid]]:
    """height -> the blob roots its data writes recorded with result OK (for peers' questions
    about blocks committed before our last restart)."""

    def roots_of(height: int) -> list[Cid]:
        block = ledger.block(height)
        out = []
        for raw in block.txs if block is not None else ():
            tx = Tx.decode(raw, check_sig=False)
            if tx.kind == KIND_WRITE:
                rec = ledger.get_state(keys.receipt(tx.id))
                if rec is not None and Receipt.decode(rec).code == Code.OK:
                    out.append(tx.body.root)
        return out

    return roots_of


def _trim(d: OrderedDict | dict) -> None:
    while len(d) > MAX_HEIGHTS:
        d.pop(next(iter(d)))
