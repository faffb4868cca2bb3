"""Shared fixtures: real validator processes on 127.0.0.1 with real LMDB files in tmp dirs."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import Phase, settings

from devices.net.localnet import NodeProcess, make_network, start_all
from node.genesis import Genesis, Params

# `make mutation` (scripts/mutation.py) asks only whether a test fails: no shrinking of a failure
# (minutes per mutant) and no example database shared between copies of the tree
settings.register_profile("mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate], database=None)

# shared/vectors beside the checkout, or MEDCHAIN_VECTORS (a checkout elsewhere, a mutation-testing copy)
VECTORS = Path(os.environ.get("MEDCHAIN_VECTORS") or Path(__file__).resolve().parents[1].parent / "shared" / "vectors")


def vector_file(name: str) -> Path:
    """A required reference-vector file: a missing one fails and says where it was looked for."""
    path = VECTORS / name
    assert path.is_file(), (f"missing test vectors {path} (required, not optional): set MEDCHAIN_VECTORS "
                            "to the folder holding shared/vectors")
    return path


@pytest.fixture(scope="session", autouse=True)
def _contained_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Temporary directories made by the code under test, and by the processes it starts, go under
    pytest's own (rotated) base directory instead of the system temp dir: a process a test ends
    with SIGKILL, or a timeout, cannot clean up after itself."""
    import tempfile
    inner = tmp_path_factory.mktemp("tmpdir", numbered=False)
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(inner)
    tempfile.tempdir = None  # re-read TMPDIR
    yield
    if old is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old
    tempfile.tempdir = None


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


@contextlib.contextmanager
def running_network(tmp_path: Path, n: int = 4, clean_logs: bool = True, **kw) -> Iterator[list[NodeProcess]]:
    """`n` validator processes with generous per-sender limits (and `kw` for Params or make_network),
    stopped afterwards; with `clean_logs`, no validator may have logged a traceback."""
    net_kw = {k: kw.pop(k) for k in ("private_network", "p2p_mode") if k in kw}
    nodes = make_network(tmp_path, n, params=Params(**{"sender_rate": 1e5, "sender_burst": 1e5, **kw}), **net_kw)
    start_all(nodes)
    try:
        yield nodes
    finally:
        for nd in nodes:
            nd.stop()
    if clean_logs:
        for nd in nodes:
            assert "Traceback" not in nd.log_tail(200_000), nd.log_tail()


def run(coro):
    return asyncio.run(coro)
