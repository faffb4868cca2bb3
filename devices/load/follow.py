"""Following the chain as a load generator does: each next block by a long poll, counted only once
it is proven.

Given the genesis, a block counts only when its certificate holds 2f+1 genesis signatures and its
transaction ids hash to the header's tx_root (node/proof.py `verify_block_json`): a lying validator
can neither invent a commit nor hide one, and a block it answers falsely makes the follower ask the
next validator. Without a genesis (a benchmark pointed at validators whose genesis it was not
given), every block is taken on the followed validator's word and `proven` says so (None).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

import aiohttp

from devices.patient.client import ApiError, NodeClient
from node.genesis import Genesis
from node.proof import ProofError, verify_block_json

log = logging.getLogger("medchain.follow")

WAIT_S = 10  # the long poll for the next block (one request per block)
RETRY_S = 0.1  # after a failed request: a slow or busy validator is asked again


class Follower:
    """The chain's blocks after `height`, in order, from `clients[start]` and, after a refused block,
    from the next validator in turn."""

    def __init__(self, clients: Sequence[NodeClient], genesis: Genesis | None, chain: str, height: int,
                 start: int = -1) -> None:
        self.clients, self.genesis, self.chain, self.height = clients, genesis, chain, height
        self.ask = start % len(clients)  # default: the last, a backup (the harness stays off the primary)
        self.proven = self.refused = 0

    @property
    def proven_or_none(self) -> int | None:
        """Blocks proven, or None when no genesis was given (then nothing was checked)."""
        return self.proven if self.genesis is not None else None

    async def blocks(self, wait_s: int = WAIT_S) -> AsyncIterator[dict | None]:
        """Each next block's JSON (GET /v1/blocks/{h}), in order and forever (the caller stops), and
        None after each wait of `wait_s` that brought none."""
        while True:
            c = self.clients[self.ask]
            try:
                blk = await c.next_block(self.height + 1, wait_s)
            except (aiohttp.ClientError, ApiError, TimeoutError):
                await asyncio.sleep(RETRY_S)
                continue
            if blk is None:  # nothing new within the wait: the caller may see whether it is done
                yield None
                continue
            if self.genesis is not None:
                try:
                    verify_block_json(blk, self.genesis.validator_keys, self.chain)
                except ProofError as exc:  # a lying validator: follow another one
                    self.refused += 1
                    log.warning("block %d from %s refused (%s); following another validator",
                                self.height + 1, c.base, exc)
                    self.ask = (self.ask + 1) % len(self.clients)
                    continue
                self.proven += 1
            self.height += 1
            yield blk
