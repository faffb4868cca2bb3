"""State transfer: a validator that is behind (past the checkpoint window, freshly started, or restored
from an old copy) pulls committed blocks with their certificates from its peers over a libp2p
request-response protocol.

No single peer is trusted: every block goes through the replica's certified-block check (2f+1 commit
signatures against the genesis validator keys, in sequence order) and is then executed and must reach
the state root in its header. A peer that answers with nothing useful or with blocks that fail is
skipped for the next attempt. How far behind we are is the f+1-th highest height that peers report
in their signed status heartbeats (so f liars cannot make us chase a height that does not exist), or
a stable checkpoint 2f+1 validators signed.

A validator with an empty ledger that far behind (a new or wiped one) first takes a certified
checkpoint of the state from a peer instead (node/statesync.py), then pulls the blocks after it here.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Protocol

from node.block import Block, BlockError
from node.multiaddr import peer_id
from node.statesync import PROTOCOL as STATE_PROTOCOL
from node.statesync import CheckpointClient, CheckpointServer
from node.wire import MAX_BLOCK_BYTES, WireError, decode_canonical, encode

if TYPE_CHECKING:  # types only: none of these imports this module
    from node.consensus import Replica
    from node.faults import FaultFile
    from node.genesis import Genesis
    from node.ledger import Ledger
    from node.p2p import P2PNode



class SyncHost(Protocol):
    """What state transfer uses of its validator (node/validator.py provides it)."""

    genesis: Genesis
    ledger: Ledger
    net: P2PNode | None
    replica: Replica
    faults: FaultFile
    synced_blocks: int
    chain_clock: Any
    metrics: Any
    disk: Any
    io: Executor  # blocking ledger reads (drained before the ledger closes)

    async def submit_certified(self, blocks: list[Block], done: asyncio.Future) -> None: ...

    async def in_consensus(self, fn: Callable[[], Awaitable[None]]) -> None: ...

    async def rebuild_from_disk(self) -> tuple[int, int]: ...

log = logging.getLogger("medchain.sync")

PROTOCOL = "/medchain/sync/1.0.0"
MAX_BLOCKS = 64  # per request
MAX_RESPONSE = 2 * MAX_BLOCK_BYTES  # a response holds at least one block, then stops before this size
THRESHOLD = 8  # blocks behind before pulling (below it the push catch-up in the status exchange suffices)
TIMEOUT_S = 10.0


class SyncError(ValueError):
    pass


class Busy(SyncError):
    """A peer asking for more blocks at once than SERVE_AT_ONCE: an answer, not a fault (logged at debug)."""

    expected = True


# block requests served at once per peer: an honest validator has one in flight to a peer (the loop
# below awaits each); a byzantine one held 16 answers of up to 16 MiB, each held twice while written
SERVE_AT_ONCE = 2


def encode_request(first: int, count: int) -> bytes:
    return encode([first, count])


def decode_request(raw: bytes) -> tuple[int, int]:
    try:
        req = decode_canonical(raw, 64)
    except WireError as exc:
        raise SyncError(f"sync request: {exc}") from None
    if not (isinstance(req, list) and len(req) == 2 and all(type(x) is int for x in req)
            and req[0] >= 1 and 1 <= req[1] <= MAX_BLOCKS):
        raise SyncError(f"sync request is [first >= 1, 1 <= count <= {MAX_BLOCKS}]")
    return req[0], req[1]


def decode_response(raw: bytes) -> list[Block]:
    try:
        blocks = decode_canonical(raw, MAX_RESPONSE, 1 + MAX_BLOCKS)
    except WireError as exc:
        raise SyncError(f"sync response: {exc}") from None
    if not isinstance(blocks, list) or not all(isinstance(b, bytes) for b in blocks) or len(blocks) > MAX_BLOCKS:
        raise SyncError("sync response is a list of at most 64 encoded blocks")
    try:
        return [Block.decode(b) for b in blocks]
    except BlockError as exc:
        raise SyncError(f"sync response block: {exc}") from None


class StateSync:
    def __init__(self, v: SyncHost) -> None:
        self.v = v
        self.fetched = 0  # blocks received and delivered
        self.bad_responses = 0
        self.requests = 0
        self._task: asyncio.Task | None = None
        self.checkpoints = CheckpointClient(v)
        self._state_server = CheckpointServer(v.ledger)
        self._serving: dict[str, int] = {}  # peer -> block requests being served

    @property
    def checkpoint_stats(self) -> dict:
        return self.checkpoints.stats

    def register(self) -> None:
        """Serve our blocks and our state (call before the p2p host starts)."""
        self.v.net.serve(PROTOCOL, self._serve, max_request=64)
        self.v.net.serve(STATE_PROTOCOL, self._state_server.serve, max_request=1024)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="state-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._state_server.close()

    async def _serve(self, peer: str, raw: bytes) -> bytes:
        """Up to `count` blocks from `first`, under MAX_RESPONSE: read and encoded in a worker thread
        (16 MiB on the event loop, per request, held consensus and the API meanwhile; a review)."""
        first, count = decode_request(raw)
        busy = self._serving.get(peer, 0)
        if busy >= SERVE_AT_ONCE:
            raise Busy(f"at most {SERVE_AT_ONCE} block requests are served at once to one peer")
        self._serving[peer] = busy + 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.v.io, self._blocks, first, count)
        finally:
            self._serving[peer] -= 1
            if not self._serving[peer]:
                del self._serving[peer]

    def _blocks(self, first: int, count: int) -> bytes:
        out, size = [], 0
        for h in range(first, first + count):
            b = self.v.ledger.block_raw(h)
            if b is None or (out and size + len(b) > MAX_RESPONSE - 1024):
                break
            out.append(b)
            size += len(b) + 8
        return encode(out)

    async def _loop(self) -> None:
        """Pull while behind, one batch in flight ahead of the one being applied (certified blocks that
        arrive early wait in the replica, up to four windows ahead)."""
        v, skip = self.v, set()
        applying: asyncio.Future | None = None
        applying_from = -1
        next_first = 0
        while True:
            r = v.replica
            if v.disk.stalled:  # its disk is full: nothing fetched could be stored (node/storage.py)
                await asyncio.sleep(0.25)
                continue
            if self.checkpoints.due():
                try:
                    await self.checkpoints.run()
                except Exception:  # never let state transfer end the loop; blocks remain the way
                    log.exception("state transfer from a checkpoint failed")
                    await asyncio.sleep(1.0)
                continue
            ahead = [j for j, h in r.peer_delivered.items()
                     if h > r.last_delivered and j not in skip and j not in v.faults.cut]
            if r.behind_by() < THRESHOLD or not ahead:
                if applying is not None:
                    await applying
                    applying = None
                skip.clear()
                await asyncio.sleep(0.25)
                continue
            first = max(next_first, r.last_delivered + 1)
            # the replica keeps certified blocks up to four windows ahead of its delivery: no further
            count = min(MAX_BLOCKS, r.last_delivered + 4 * r.window - first + 1)
            if count <= 0 or first > r.last_delivered + 2 * MAX_BLOCKS:
                if applying is not None:
                    await applying  # far enough ahead: let the consensus task apply what it has
                applying = None
                next_first = 0
                continue
            j = random.choice(ahead)
            done = await self._fetch_from(j, first, count)
            if done is None:
                skip.add(j)
                next_first = 0
                continue
            next_first = first + count
            if applying is not None and await applying == 0:
                next_first = 0  # the previous batch was refused: start again from what is delivered
                skip.add(applying_from)  # and do not ask that peer again for a while
            applying, applying_from = done, j

    async def _fetch_from(self, j: int, first: int, count: int = MAX_BLOCKS) -> asyncio.Future | None:
        """Request blocks from validator j and hand them to the consensus task; the future it returns
        resolves to how many were delivered. None if the peer did not help."""
        v = self.v
        peer = peer_id(v.genesis.validators[j].p2p)
        self.requests += 1
        try:
            raw = await v.net.request(peer, PROTOCOL, encode_request(first, count), TIMEOUT_S, MAX_RESPONSE)
            blocks = decode_response(raw)
        except Exception as exc:  # noqa: BLE001 - P2PError, SyncError, a dropped stream: try another peer
            self.bad_responses += 1
            log.info("state transfer from validator %d failed: %s", j, exc)
            return None
        if not blocks or blocks[0].header.height != first:
            self.bad_responses += 1
            return None
        log.info("state transfer: blocks %d..%d from validator %d", first, first + len(blocks) - 1, j)
        done = asyncio.get_running_loop().create_future()
        done.add_done_callback(self._count)
        await v.submit_certified(blocks, done)
        return done

    def _count(self, done: asyncio.Future) -> None:
        if not done.cancelled() and done.exception() is None:
            self.fetched += done.result()
            self.v.synced_blocks = self.fetched
