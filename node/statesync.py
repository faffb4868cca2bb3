"""State transfer from a certified checkpoint: a new or wiped validator far behind its peers asks
one of them for its state at its certified head, instead of replaying every block from genesis.

Protocol `/medchain/state/1.1.0` (request-response over the p2p adapter, like node/sync.py):
- `[0]` -> `[height, block, keys]`: the peer pins its head (one LMDB read transaction) and offers it:
  the head block with its commit certificate and how many state pairs it holds. A chain younger
  than MEDCHAIN_STATE_SYNC_BLOCKS answers `[height]` and pins nothing (cheaper to replay).
- `[1, height, after]` -> `[[key, value], ...]`: the next chunk of that pinned state, keys after
  `after` in order (an empty list: the end). A peer holds a pinned view PIN_IDLE_S after its last
  use and at most PINS of them per asking peer; a request for one it dropped is refused, and the
  node starts over.

No single peer is trusted (node/checkpoint.py): the block must be certified by 2f+1 genesis keys,
and the pairs must hash to its state root. A peer that fails either, answers malformed frames, stalls
or drips its chunks (too_slow) is skipped and another is tried. Only then is the state installed, in the consensus task
between its steps, and the replica is rebuilt on it; node/sync.py pulls the blocks after it as usual.

When: a validator that starts new (it holds fewer than MEDCHAIN_STATE_SYNC_BLOCKS, default 512, blocks
plus one PBFT window: see fresh()) asks every peer for an offer at once, and again RETRY_S after each
round that installs nothing, until f+1 peers have answered that it is not far behind them (an offer
under the threshold ahead, or a young chain's `[height]`), or it has replayed NEW_REPLAY thresholds
of blocks meanwhile. Neither stale heartbeats (those queued for it since the network started) nor
late ones (block sync can replay past the fresh window before f+1 arrive) decide that. What it
replayed meanwhile is dropped as history below the new base. Past that, it asks whenever it is
still fresh and the f+1-th highest height in its peers' signed heartbeats is at least the threshold
ahead. It takes a certified offer that far ahead; a far offer that then fails, or a forged one, does
not count as an answer, so f liars cannot stop the asking alone (an honest peer that is itself
behind can join them: the heartbeats then decide, as for any validator), nor install a state that
does not prove. Known gap: blocks pushed and pulled meanwhile can take it past the offer first; it
then simply replays. A validator that starts with a longer history replays blocks and keeps it; one
less far behind replays too (cheaper than moving the state).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from node.block import max_faulty
from node.checkpoint import (
    MAX_CHUNK_FRAME,
    MAX_MANIFEST,
    MAX_STATE_BYTES,
    MAX_STATE_KEYS,
    PAIR_OVERHEAD,
    Checkpoint,
    CheckpointError,
    StateChecker,
    check_block,
    chunked,
    decode_chunk,
    encode_chunk,
)
from node.multiaddr import peer_id
from node.snapshot import SnapshotWriter
from node.storage import reserve_bytes
from node.wire import WireError, decode_canonical, encode

if TYPE_CHECKING:  # types only
    from node.consensus import Replica
    from node.faults import FaultFile
    from node.genesis import Genesis
    from node.ledger import Ledger, StateView
    from node.p2p import P2PNode

log = logging.getLogger("medchain.statesync")

PROTOCOL = "/medchain/state/1.1.0"
PIN_IDLE_S = 30.0
PINS = 2  # per peer: one peer's requests never evict the view another is fetching
TIMEOUT_S = 20.0
RETRY_S = 5.0  # after a round that installed nothing, before the next
# a validator that started new drops at most this many thresholds of blocks it replayed meanwhile
NEW_REPLAY = 4
# A transfer must keep up this average (counting each pair as in StateChecker, so a peer dripping a
# pair per request fails at once), past its first TIMEOUT_S, and end within TRANSFER_MAX_S: a
# byzantine peer that answers just in time with a few valid pairs cannot hold catch-up for ever.
MIN_RATE = 128 * 1024  # bytes per second
TRANSFER_MAX_S = 1800.0
# the installer process (node/snapshot.py install_main) gets this long, plus a second per INSTALL_RATE
# bytes of the transfer file, before it is killed: the replica waits for it, paused
INSTALLER = (sys.executable, "-m", "node.snapshot")
INSTALL_TIMEOUT_S = 300.0
INSTALL_RATE = 4 * 1024 * 1024  # bytes per second
TRANSFER_FILE = "state-transfer.snapshot"  # in the home, while a transfer is fetched and installed


def min_blocks() -> int:
    raw = os.environ.get("MEDCHAIN_STATE_SYNC_BLOCKS", "512")
    try:
        return max(1, int(raw))
    except ValueError:
        raise SystemExit(f"MEDCHAIN_STATE_SYNC_BLOCKS={raw!r}: a number of blocks") from None


def fresh(delivered: int, window: int) -> bool:
    """Whether a validator that holds `delivered` blocks counts as new (a checkpoint replaces them).
    Fewer than min_blocks(), plus one PBFT window: when a new validator connects, each peer first
    sends it the frames queued for it (up to node/p2p/node.py QUEUE_MAX_AGE_S old), the network's
    recent PBFT messages and heartbeats. With nothing delivered its window is blocks
    1..window, and when that burst arrives faster than it executes, the pre-prepares above the
    window are dropped: it commits that window with its own votes, then hears the live heartbeats
    that say how far behind it is. A validator that merely replayed that window is still new."""
    return delivered < min_blocks() + window


class StateSyncError(ValueError):
    pass


class CheckpointHost(Protocol):
    """What state transfer uses of its validator (node/validator.py provides it)."""

    genesis: Genesis
    home: Path
    index: int
    ledger: Ledger
    net: P2PNode | None
    replica: Replica
    faults: FaultFile
    chain_clock: Any
    metrics: Any

    async def in_consensus(self, fn: Callable[[], Awaitable[None]]) -> None: ...

    async def rebuild_from_disk(self) -> tuple[int, int]: ...


def decode_request(raw: bytes) -> tuple[int, int, bytes]:
    """(0, 0, b"") for an offer, (1, height, after) for a chunk."""
    try:
        req = decode_canonical(raw, 1024)
    except WireError as exc:
        raise StateSyncError(f"state request: {exc}") from None
    if req == [0]:
        return 0, 0, b""
    if (isinstance(req, list) and len(req) == 3 and req[0] == 1 and type(req[1]) is int and req[1] >= 1
            and isinstance(req[2], bytes)):
        return 1, req[1], req[2]
    raise StateSyncError("a state request is [0] (offer) or [1, height, after_key] (chunk)")


def transfer_budget(home: Path) -> int:
    """The counted bytes (StateChecker) a transfer into `home` may take before its root is checked:
    a third of what its filesystem has free above the validator's reserve (node/storage.py), at most
    MAX_STATE_BYTES. The transfer file, the state tree the installer proves it with (apart from the
    ledger: node/ledger/scratch.py) and, once proven, the installed state each take about them (more
    with values that fill LMDB overflow pages, which the state's records do not). A lying peer's
    state that will not prove cannot fill the disk the validator commits to, nor leave a page of it
    in the ledger's file."""
    st = os.statvfs(home)
    return max(0, min(MAX_STATE_BYTES, (st.f_bavail * st.f_frsize - reserve_bytes()) // 3))


def decode_offer(raw: bytes) -> tuple[int, bytes, int]:
    """`[height, block, keys]`, or `[height]` from a chain too young to offer (block b"", no keys)."""
    try:
        o = decode_canonical(raw, MAX_MANIFEST, 16)
    except WireError as exc:
        raise StateSyncError(f"state offer: {exc}") from None
    if isinstance(o, list) and len(o) == 1 and type(o[0]) is int and 0 <= o[0] < 1 << 64:
        return o[0], b"", 0
    if not (isinstance(o, list) and len(o) == 3 and type(o[0]) is int and isinstance(o[1], bytes)
            and type(o[2]) is int and o[2] >= 0):
        raise StateSyncError("a state offer is [height, block, keys] or [height]")
    if o[2] > MAX_STATE_KEYS:
        raise StateSyncError(f"a state offer of {o[2]} keys: more than the {MAX_STATE_KEYS} a transfer may hold")
    return o[0], o[1], o[2]


class CheckpointServer:
    """Serves pinned views of our state (see the module doc)."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger
        # (peer, height) -> (view, last used, pinned at)
        self._pins: dict[tuple[str, int], tuple[StateView, float, float]] = {}
        self._expiry: asyncio.TimerHandle | None = None

    def expire_idle(self, now: float | None = None) -> None:
        """Close the views idle for PIN_IDLE_S, or pinned for TRANSFER_MAX_S (as long as a transfer may
        take: a peer asking for a chunk every few seconds held one for good; a review). Each holds
        an LMDB read transaction, and while one is open LMDB reuses no page freed after it: the
        ledger file (and the pages mapped from it) grows by every block's rewritten pages until it
        closes."""
        now = time.monotonic() if now is None else now
        for h, (view, used, pinned) in list(self._pins.items()):
            if now - used > PIN_IDLE_S or now - pinned > TRANSFER_MAX_S:
                view.close()
                del self._pins[h]

    def _expire_later(self) -> None:
        """Expire on a timer, not only at the next request: after a transfer (or a newcomer's offers)
        no request may ever come."""
        self._expiry = None
        self.expire_idle()
        if self._pins:
            self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        if self._expiry is None:
            self._expiry = asyncio.get_running_loop().call_later(PIN_IDLE_S / 2, self._expire_later)

    def _pin(self, peer: str) -> StateView:
        now = time.monotonic()
        self.expire_idle(now)
        head = self.ledger.head().height
        if (peer, head) in self._pins:
            return self._pins[peer, head][0]
        mine = [k for k in self._pins if k[0] == peer]
        if len(mine) >= PINS:  # the peer's own oldest view gives way, never another peer's
            oldest = min(mine, key=lambda k: self._pins[k][1])
            self._pins.pop(oldest)[0].close()
        view = self.ledger.state_view()
        self._pins[peer, view.height] = (view, now, now)
        self._schedule_expiry()
        return view

    async def serve(self, peer: str, raw: bytes) -> bytes:
        kind, height, after = decode_request(raw)
        if kind == 0:
            head = self.ledger.head().height
            if head < min_blocks():  # min_blocks() >= 1: so past this there is a head block to offer
                # a young chain is cheaper to replay than to transfer, and every validator of a new
                # network asks each peer at start: pinning a view for each would hold LMDB's freed
                # pages from reuse on every one of them for PIN_IDLE_S. Its height alone answers.
                return encode([head])
            view = self._pin(peer)  # heights only grow: the view is at `head` or above, with its block
            return encode([view.height, view.block_raw, view.keys])
        pinned = self._pins.get((peer, height))
        if pinned is None:
            raise StateSyncError(f"the state at block {height} is no longer held here: ask for a new offer")
        view = pinned[0]
        self._pins[peer, height] = (view, time.monotonic(), pinned[2])
        return encode_chunk(next(chunked(view.pairs(after)), []))

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for view, *_ in self._pins.values():
            view.close()
        self._pins.clear()


def too_slow(size: int, elapsed: float) -> None:
    """CheckpointError if a transfer that has taken `elapsed` seconds for `size` bytes (as counted by
    StateChecker) falls under MIN_RATE past its first TIMEOUT_S, or runs past TRANSFER_MAX_S."""
    if elapsed > TRANSFER_MAX_S:
        raise CheckpointError(f"the transfer ran past {TRANSFER_MAX_S:.0f} s")
    if elapsed > TIMEOUT_S and size < MIN_RATE * (elapsed - TIMEOUT_S):
        raise CheckpointError(f"the transfer is too slow: {size} bytes in {elapsed:.0f} s")


class CheckpointClient:
    """Fetches, proves and installs a peer's checkpoint (see the module doc)."""

    def __init__(self, v: CheckpointHost) -> None:
        self.v = v
        self.stats: dict[str, Any] = {"installed_height": 0, "attempts": 0, "failures": 0, "chunks": 0,
                                      "keys": 0, "last_error": None}
        self._next_try = 0.0
        self._new: bool | None = None  # whether it started new: decided at the first due()
        self._answered: set[int] = set()  # peers whose answer said we are not far behind them
        self._failed_peers: set[int] = set()  # asked last in the next round
        for leftover in (TRANSFER_FILE, TRANSFER_FILE + ".partial"):  # of a transfer a crash cut short
            (v.home / leftover).unlink(missing_ok=True)

    def due(self) -> bool:
        """Whether to ask for offers now (see the module doc): a validator that started new asks until f+1
        peers have answered that it is not far behind, a checkpoint installs, or it has replayed
        NEW_REPLAY thresholds of blocks; then, while still fresh, whenever its peers are far ahead by the
        replica's own measure (the f+1-th highest height in signed heartbeats: f liars cannot send us
        after a height that does not exist). Otherwise it asks nobody: each offer pins a read
        transaction on the peer for a while."""
        r = self.v.replica
        if self._new is None:
            self._new = fresh(r.last_delivered, r.window)
        if time.monotonic() < self._next_try:
            return False
        if (self._new and len(self._answered) <= max_faulty(r.n)
                and r.last_delivered < NEW_REPLAY * min_blocks() + r.window):
            return True
        return fresh(r.last_delivered, r.window) and r.behind_by() >= min_blocks()

    async def run(self) -> bool:
        """Ask every peer for an offer at once, then try those far enough ahead in random order (those
        that failed before at the end) until one's checkpoint proves and installs. Whatever ends it,
        the next round waits RETRY_S."""
        try:
            return await self._round()
        finally:
            self._next_try = time.monotonic() + RETRY_S

    async def _round(self) -> bool:
        v = self.v
        peers = [j for j in range(len(v.genesis.validators)) if j != v.index and j not in v.faults.cut]
        # at once: a silent (blackholed, stalling) peer costs the round one TIMEOUT_S, not one per peer,
        # while block sync waits for the round
        offers = await asyncio.gather(*(self._offer(j) for j in peers))
        far = [(j, o) for j, o in zip(peers, offers, strict=True) if o is not None]
        random.shuffle(far)
        far.sort(key=lambda jo: jo[0] in self._failed_peers)
        for j, (height, block_raw, keys) in far:
            stage = ["block"]  # what failed, for the refusal metric: "block", then "peer" or "state"
            try:
                cp, path = await self._fetch(j, height, block_raw, keys, stage)
            except Exception as exc:  # noqa: BLE001 - P2PError, a refusal, a lie: try another peer
                self._failed(j, exc, stage[0] if isinstance(exc, CheckpointError) else "peer")
                continue
            try:
                if await self._install(cp, path):
                    return True
            except CheckpointError as exc:  # the installer proved it wrong (its root), or failed
                self._failed(j, exc, "state")
                continue
            finally:
                path.unlink(missing_ok=True)
            v.metrics.xfer_refused.labels("overtaken").inc()
            break
        return False

    async def _offer(self, j: int) -> tuple[int, bytes, int] | None:
        """Peer j's offer if it is far enough ahead of us. None if it is not (the peer then counts as
        having answered: a far offer that then fails, or a forged one, does not), or if it did not
        answer (asked at once with the others, a silent peer costs the round one TIMEOUT_S)."""
        v = self.v
        try:
            raw = await v.net.request(peer_id(v.genesis.validators[j].p2p), PROTOCOL, encode([0]), TIMEOUT_S,
                                      MAX_MANIFEST)
        except Exception as exc:  # noqa: BLE001 - P2PError: not connected yet, down, or silent
            log.info("no state offer from validator %d: %s", j, exc)
            return None
        v.metrics.xfer_bytes.inc(len(raw))
        try:
            height, block_raw, keys = decode_offer(raw)
        except StateSyncError as exc:
            self._failed(j, exc, "peer")
            return None
        if not block_raw or height < v.replica.last_delivered + min_blocks():
            # not far ahead (a young chain's [height] included): f+1 such answers hold an honest one,
            # unless an honest peer is itself behind; then the heartbeats decide, as for any validator
            self._answered.add(j)
            return None
        return height, block_raw, keys

    def _failed(self, j: int, exc: Exception, reason: str) -> None:
        self._failed_peers.add(j)
        self.stats["failures"] += 1
        self.stats["last_error"] = f"validator {j}: {exc}"
        self.v.metrics.xfer_refused.labels(reason).inc()
        log.warning("state transfer from validator %d failed: %s", j, exc)

    async def _fetch(self, j: int, height: int, block_raw: bytes, keys: int,
                     stage: list[str]) -> tuple[Checkpoint, Path]:
        """Peer j's checkpoint at the offered block, its chunks checked as they come (order, limits,
        count) and streamed to a snapshot file in the home (never held here); its root is proven by
        the installer."""
        v = self.v
        peer = peer_id(v.genesis.validators[j].p2p)
        self.stats["attempts"] += 1
        v.metrics.xfer_started.inc()
        block = check_block(block_raw, v.genesis.chain_id, v.genesis.validator_keys)
        if block.header.height != height:
            raise CheckpointError(f"offered height {height}, but its block is {block.header.height}")
        cp = Checkpoint(block, keys)
        budget = transfer_budget(v.home)
        if keys * PAIR_OVERHEAD > budget:
            raise CheckpointError(f"an offer of {keys} state keys: more than this disk has room for "
                                  f"({budget} bytes for a transfer, each pair counted at {PAIR_OVERHEAD} at least)")
        checker = StateChecker(cp, budget)
        log.info("state transfer: validator %d offers block %d with %d state keys", j, height, keys)
        writer = SnapshotWriter(v.home / TRANSFER_FILE, v.genesis.hash, block_raw, block, keys)
        started = time.monotonic()
        try:
            after = b""
            while True:
                stage[0] = "peer"
                raw = await v.net.request(peer, PROTOCOL, encode([1, height, after]), TIMEOUT_S, MAX_CHUNK_FRAME)
                stage[0] = "state"
                v.metrics.xfer_bytes.inc(len(raw))
                pairs = decode_chunk(raw)
                if not pairs:
                    break
                checker.add(pairs)
                too_slow(checker.size, time.monotonic() - started)
                await asyncio.to_thread(writer.chunk, pairs)
                self.stats["chunks"] += 1
                v.metrics.xfer_chunks.inc()
                after = pairs[-1][0]
            checker.complete()
            await asyncio.to_thread(writer.finish, False)
        except BaseException:
            writer.abort()
            raise
        return cp, writer.out

    async def _install(self, cp: Checkpoint, path: Path) -> bool:
        """Install in the consensus task (between its steps), then rebuild the replica on it. The install
        (the root check, then one LMDB transaction) runs in a process of its own (node/snapshot.py
        install_main): LMDB keeps a copy of every page a transaction wrote for the process's life, the
        whole state here. CheckpointError if it fails (the state does not prove, the disk is full)."""
        v = self.v
        installed: list[bool] = []
        budget = INSTALL_TIMEOUT_S + path.stat().st_size / INSTALL_RATE

        async def step() -> None:
            if v.ledger.head().height >= cp.height:
                installed.append(False)  # blocks got us there meanwhile: keep replaying
                return
            proc = await asyncio.create_subprocess_exec(
                *INSTALLER, str(v.home), str(path), f"--parent={os.getpid()}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            try:
                out, err = await asyncio.wait_for(proc.communicate(), budget)
            except BaseException as exc:
                # too slow, or the validator stops: kill it rather than leave the replica paused for
                # it (its LMDB transaction dies with it: the writer lock is robust)
                with contextlib.suppress(ProcessLookupError):  # it may have just exited
                    proc.kill()
                await proc.wait()
                v.ledger.invalidate_reads()
                if v.ledger.base_height() == cp.height:  # killed between its commit and its exit
                    await v.rebuild_from_disk()
                if isinstance(exc, TimeoutError):
                    raise CheckpointError(f"the installer did not finish within {budget:.0f} s: killed") from None
                raise
            v.ledger.invalidate_reads()  # another process wrote: cached read transactions are stale
            if proc.returncode != 0:
                why = err.decode(errors="replace").strip().splitlines()
                raise CheckpointError("the installer failed: " + (why[-1] if why else f"exit {proc.returncode}"))
            done = json.loads(out)
            self.stats["keys"], self.stats["installer_peak_mb"] = done["state_keys"], done.get("peak_rss_mb")
            v.chain_clock.committed(cp.block.header.time_ms)
            v.metrics.height.set(cp.height)
            await v.rebuild_from_disk()
            installed.append(True)

        # the outer bound adds the wait for the consensus task's turn
        await asyncio.wait_for(v.in_consensus(step), budget + INSTALL_TIMEOUT_S)  # raises what the step raised
        ok = installed[0]
        if ok:
            self._new = False  # installed: the blocks after it come by block sync
            self.stats["installed_height"] = cp.height
            v.metrics.xfer_installed.inc()
            v.metrics.xfer_height.set(cp.height)
            log.warning("state transfer: installed the certified state at block %d (%d keys; the installer's "
                        "peak RSS %s MB); pulling the blocks after it", cp.height, self.stats["keys"],
                        self.stats["installer_peak_mb"])
        return ok
