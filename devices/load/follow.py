"""Following the chain as a load generator does: each next block by a long poll, counted only once
it is proven.

Given the genesis, a block counts only when its certificate holds 2f+1 genesis signatures and its
transaction ids hash to the header's tx_root (node/proof.py `verify_block_json`), its height is the
one asked for and it extends the block proven before it: a lying validator can neither invent a
commit nor hide one (by a made-up id, or a replayed certified block of another height), and a block
it answers falsely makes the follower ask the next validator. Without a genesis (a benchmark pointed
at validators whose genesis it was not given), every block is taken on the followed validator's word
and `proven_or_none` says so (None).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

import aiohttp

from devices.patient.client import ApiError, NodeClient
from node.block import max_faulty
from node.genesis import Genesis
from node.proof import ProofError, verify_block_json

log = logging.getLogger("medchain.follow")

WAIT_S = 10  # the long poll for the next block (one request per block)
RETRY_S = 0.1  # after a failed request or a refused block, before asking again
FAILURES_BEFORE_MOVING = 5  # failed requests in a row before the follower asks another validator
# empty waits in a row before it asks another: a validator that withholds blocks ("not yet", for
# ever) must not stall it; on an idle chain this only moves it round the honest ones
EMPTY_BEFORE_MOVING = 3


async def start_height(clients: Sequence[NodeClient]) -> int:
    """The height a run follows from: one no honest validator had passed when the run began, so no
    block of the run is skipped. One validator's word would not do: a liar reporting a higher head
    had the follower skip the run's first blocks (their commits never counted, the drain timing
    out). With 2f+1 reports the (f+1)-th lowest is at or below an honest one; with fewer, the lowest
    (a liar reporting less only costs the follower blocks it reads and ignores)."""
    async def one(c: NodeClient) -> int | None:
        try:
            h = (await c.status())["height"]
        except (TimeoutError, ApiError, aiohttp.ClientError, KeyError, TypeError, ValueError):
            return None
        return h if type(h) is int and h >= 0 else None
    heights = sorted(h for h in await asyncio.gather(*(one(c) for c in clients)) if h is not None)
    if not heights:
        raise ConnectionError("no validator reported its head height")
    f = max_faulty(len(clients))
    return heights[f] if len(heights) >= 2 * f + 1 else heights[0]


def describe(proven: int | None, refused: int) -> str:
    """How a run's blocks were counted, for a report line."""
    if proven is None:
        return "taken on the followed validator's word (no genesis given)"
    return f"{proven} proven by certificate, {refused} refused"


class Follower:
    """The chain's blocks after `height`, in order, from `clients[start]` and, after a refused block
    or a run of failed requests, from the next validator in turn."""

    def __init__(self, clients: Sequence[NodeClient], genesis: Genesis | None, chain: str, height: int,
                 start: int = -1) -> None:
        self.clients, self.genesis, self.chain, self.height = clients, genesis, chain, height
        self.ask = start % len(clients)  # default: the last, a backup (the harness stays off the primary)
        self.proven = self.refused = 0
        self.last_hash: bytes | None = None  # the last proven block's: the next must extend it

    @property
    def proven_or_none(self) -> int | None:
        """Blocks proven, or None when no genesis was given (then nothing was checked)."""
        return self.proven if self.genesis is not None else None

    def _next_validator(self) -> None:
        self.ask = (self.ask + 1) % len(self.clients)

    def check(self, blk: dict) -> None:
        """ProofError unless `blk` is the next block: the height asked for and, given the genesis,
        certified by 2f+1 of its keys, its transaction ids the ones under its tx_root, and extending
        the last block proven. A certified block of the right height is the only one there can be
        (PBFT's safety); a certified block of another height is a replay that would hide commits."""
        want = self.height + 1
        if self.genesis is None:
            if blk.get("height") != want:
                raise ProofError(f"asked for block {want}, answered with {blk.get('height')!r}")
            return
        header = verify_block_json(blk, self.genesis.validator_keys, self.chain)
        if header.height != want:
            raise ProofError(f"asked for block {want}, answered with block {header.height} (certified, but another)")
        if self.last_hash is not None and header.prev_hash != self.last_hash:
            raise ProofError(f"block {want} does not extend the block {want - 1} proven before it")
        self.last_hash = header.hash

    async def blocks(self, wait_s: int = WAIT_S) -> AsyncIterator[dict | None]:
        """Each next block's JSON (GET /v1/blocks/{h}), in order and forever (the caller stops), and
        None after each wait of `wait_s` that brought none (or brought a refused answer)."""
        failures = empty = 0
        while True:
            c = self.clients[self.ask]
            try:
                blk = await c.next_block(self.height + 1, wait_s)
            except (aiohttp.ClientError, ApiError, TimeoutError) as exc:
                failures += 1
                if failures >= FAILURES_BEFORE_MOVING:  # a validator down or refusing: ask another
                    log.warning("%s failed %d requests in a row (%s); following another validator",
                                c.base, failures, exc)
                    failures = 0
                    self._next_validator()
                await asyncio.sleep(RETRY_S)
                continue
            failures = 0
            if blk is None:  # nothing new within the wait: the caller may see whether it is done
                empty += 1
                if empty >= EMPTY_BEFORE_MOVING:
                    empty = 0
                    self._next_validator()
                yield None
                continue
            empty = 0
            try:
                self.check(blk)
            except ProofError as exc:  # a lying (or broken) validator: follow another one
                self.refused += 1
                log.warning("block %d from %s refused (%s); following another validator",
                            self.height + 1, c.base, exc)
                self._next_validator()
                await asyncio.sleep(RETRY_S)  # every validator refusing must not spin
                yield None
                continue
            if self.genesis is not None:
                self.proven += 1
            self.height += 1
            yield blk
