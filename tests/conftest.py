"""Shared fixtures: real validator processes on 127.0.0.1 with real LMDB files in tmp dirs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from devices.localnet import NodeProcess, make_network
from node.genesis import Genesis, Params

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"


@pytest.fixture
def node(tmp_path: Path):
    """One running validator (PBFT with a quorum of one)."""
    (n,) = make_network(tmp_path, 1, params=Params(sender_rate=1000, sender_burst=2000))
    n.start()
    yield n
    n.stop()
    assert "Traceback" not in n.log_tail(100_000), n.log_tail()


@pytest.fixture
def genesis(node: NodeProcess) -> Genesis:
    return Genesis.load(node.home / "genesis.json")


def run(coro):
    return asyncio.run(coro)
