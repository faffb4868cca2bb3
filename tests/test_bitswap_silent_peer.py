"""The real BitswapService (engine, DagFetch, LMDB store, the protobuf codec both ways) fetching from
in-process peers, one of which reads wants and never answers: a validator that is down, or byzantine.
(The transport is replaced because a real libp2p peer that accepts streams and stays silent is what
this stands for; tests/test_bitswap_hosts.py runs the real hosts.)"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from libp2p.peer.id import ID

from node.availability import FETCH_TIMEOUT_S
from node.ipfs.bitswap import Engine, merge
from node.ipfs.bitswap_pb import decode_message, encode_message
from node.ipfs.blockstore import BlockStore
from node.ipfs.unixfs import import_bytes
from node.p2p._bitswap import BitswapService


def _service(tmp_path: Path, peers: dict[str, dict | None]) -> tuple[BitswapService, SimpleNamespace, BlockStore]:
    """`peers`: name -> the blocks it serves (None: silent)."""
    store = BlockStore(tmp_path / "blobs")
    side = SimpleNamespace(outs={n: SimpleNamespace(pid=ID(n.encode()), addr=None) for n in peers}, allowed={},
                           nursery=None)
    svc = BitswapService(side, store, None, {})
    svc.max_blob_bytes = 2 * 1024 * 1024
    engines = {n: Engine(lambda c, b=b: {k.multihash: d for k, d in b.items()}.get(c.multihash))
               for n, b in peers.items() if b is not None}

    async def deliver(name: str, msg) -> None:
        await trio.sleep(0.01)
        if name in engines:
            for _, out in merge(engines[name].receive("me", msg).replies):
                svc.handle(name, decode_message(encode_message(out)))

    def send(replies) -> None:
        for peer, msg in merge(replies):
            side.nursery.start_soon(deliver, peer, decode_message(encode_message(msg)))
    svc.send = send  # type: ignore[method-assign]
    return svc, side, store


@pytest.mark.parametrize("order", [("silent", "honest"), ("honest", "silent")])
def test_a_silent_validator_does_not_fail_a_vote_time_fetch(tmp_path: Path, order) -> None:
    """A large (dag-pb) blob, uploaded to one validator, is fetched by every backup before it votes,
    within FETCH_TIMEOUT_S. A block's want waited the whole 5 s on an unanswering peer, and the first
    went to the first validator in genesis order: one silent validator failed every such fetch (and
    the write was refused as held by no reachable validator). A quarter of the time per block now,
    peers in random order (a review)."""
    blob = os.urandom(1_500_000)
    root, blocks = import_bytes(blob)
    for i in range(3):  # whichever order the shuffle picks: each a fresh store
        svc, side, store = _service(tmp_path / str(i), {n: (blocks if n == "honest" else None) for n in order})

        try:
            assert trio.run(_fetch, svc, side, root)["size"] == len(blob) and store.get_blob(root) == blob
        finally:
            store.close()


async def _fetch(svc: BitswapService, side: SimpleNamespace, root) -> dict:
    async with trio.open_nursery() as n:
        side.nursery = n
        res = await svc.fetch(root, FETCH_TIMEOUT_S)
        n.cancel_scope.cancel()
    return res
