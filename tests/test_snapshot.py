"""`medchain snapshot` / `medchain restore` with real validator processes and real LMDB files: a
snapshot taken while a validator runs restores into a fresh home, which verifies and commits again;
a snapshot of another genesis, a damaged one, or one whose state is not the certified one is refused
with a message that says so, and the home is left as it was."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from devices.net.faultharness import acknowledged_load, assert_committed, converged
from devices.net.localnet import NodeProcess, make_network
from devices.patient.client import NodeClient
from node.checkpoint import MAGIC, end_frame
from node.crypto.keys import Identity
from node.genesis import Genesis, Params
from node.tx import Profile, Tx
from tests.conftest import run, running_network

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


async def _commit_profiles(url: str, chain: str, tag: bytes, count: int) -> list[str]:
    async with NodeClient(url) as c:
        ids = []
        for i in range(count):
            tx = Tx.build(Identity.from_seed(tag + b"%d" % i), chain, 1, Profile(f"p{i}", "r", "o", bytes(32)))
            await c.submit(tx.raw)
            ids.append(tx.id.hex())
        for t in ids:
            assert (await c.wait_committed(t, 20))["status"] == "committed"
    return ids


def _fresh_home(src: Path, dst: Path) -> Path:
    """A home with the validator's own key and genesis, and no ledger (a new or wiped host)."""
    dst.mkdir(parents=True)
    for f in ("genesis.json", "node_key.json"):
        shutil.copy2(src / f, dst / f)
    return dst


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def one_node_snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """A single validator with some state, snapshotted while it runs: (its home, the file, the height)."""
    tmp = tmp_path_factory.mktemp("snap")
    (n,) = make_network(tmp / "net", 1, params=Params(sender_rate=1000, sender_burst=2000))
    n.start()
    try:
        chain = Genesis.load(n.home / "genesis.json").chain_id
        run(_commit_profiles(n.url, chain, b"snap-", 20))
        p = _cli("snapshot", "--home", str(n.home), "--out", str(tmp / "s.snap"), "--json")
        assert p.returncode == 0, p.stderr
        m = json.loads(p.stdout)
        assert m["height"] >= 1 and m["state_keys"] > 20 and m["certificate"]["signers"] == [0]
        assert m["genesis_hash"] == Genesis.load(n.home / "genesis.json").hash.hex()
    finally:
        assert n.stop() == 0
    return n.home, tmp / "s.snap", m["height"]


def test_restore_into_a_fresh_home_verifies_and_commits(one_node_snapshot, tmp_path: Path) -> None:
    src, snap, height = one_node_snapshot
    home = _fresh_home(src, tmp_path / "restored")
    p = _cli("restore", "--home", str(home), str(snap), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["height"] == height
    p = _cli("verify", "--home", str(home), "--json")
    rep = json.loads(p.stdout)
    assert rep["ok"] and rep["base"] == height and rep["height"] == height, rep
    p = _cli("restore", "--home", str(home), str(snap))  # a second restore over a ledger is refused
    assert p.returncode == 1 and "already holds a ledger" in p.stderr
    (n,) = make_network(tmp_path / "unused", 1)  # a free port; the restored home keeps its own genesis
    node = NodeProcess(home, n.port)
    node.start()
    try:
        chain = Genesis.load(home / "genesis.json").chain_id
        run(_commit_profiles(node.url, chain, b"after-", 5))
        st = _get(node.url + "/v1/status")[1]
        assert st["base_height"] == height and st["height"] > height
        code, body = _get(node.url + f"/v1/blocks/{height - 1}") if height > 1 else (404, {"error": "below"})
        assert code == 404 and "below" in body["error"]
        assert _get(node.url + f"/v1/blocks/{height}")[0] == 200
    finally:
        assert node.stop() == 0
    assert "Traceback" not in node.log_tail(100_000)
    rep = json.loads(_cli("verify", "--home", str(home), "--json").stdout)
    assert rep["ok"] and rep["base"] == height and rep["height"] > height, rep


def test_a_restore_into_the_home_of_a_running_validator_is_refused(one_node_snapshot, tmp_path: Path) -> None:
    """A fresh validator's ledger is at height 0, so a restore into its home passed every check and
    replaced the ledger under the running replica, which then committed nothing more (a review). The
    running validator holds its home's lock; a restore takes it or is refused, and nothing is installed."""
    src, snap, height = one_node_snapshot
    home = _fresh_home(src, tmp_path / "busy")
    (n,) = make_network(tmp_path / "unused", 1)
    node = NodeProcess(home, n.port)
    node.start()
    try:
        _refused(home, snap, "in use by another process")
    finally:
        assert node.stop() == 0
    p = _cli("restore", "--home", str(home), str(snap), "--json")  # stopped: the restore goes ahead
    assert p.returncode == 0 and json.loads(p.stdout)["height"] == height, p.stderr


def _refused(home: Path, snap: Path, why: str) -> None:
    p = _cli("restore", "--home", str(home), str(snap))
    assert p.returncode == 1, p.stdout
    assert why in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    # a state that does not prove never touches the ledger (its tree is grown apart, then removed)
    if (home / "ledger" / "data.mdb").exists():  # a validator's own, at height 0
        from node.ledger import Ledger
        led = Ledger(home / "ledger", readonly=True)
        try:
            assert led.head().height == 0 and led.scan_state(b"", limit=1) == []
        finally:
            led.close()
    assert not list(home.glob(".state-tree-*"))


def _frames(raw: bytes) -> list[bytes]:
    out, off = [], len(MAGIC)
    while off < len(raw):
        n = int.from_bytes(raw[off:off + 4], "big")
        out.append(raw[off + 4:off + 4 + n])
        off += 4 + n
    return out


def _reseal(frames: list[bytes]) -> bytes:
    """A file whose digest matches its (altered) content: only the certified root can catch it."""
    import hashlib
    body = MAGIC + b"".join(len(f).to_bytes(4, "big") + f for f in frames[:-1])
    return body + end_frame(hashlib.sha256(body).digest())


def test_the_installer_builds_the_state_tree_batch_by_batch_into_the_ledger(one_node_snapshot, tmp_path: Path,
                                                                             monkeypatch) -> None:
    """The state streams into the ledger's install transaction and its tree is built TREE_BATCH pairs
    at a time (here 5, across the chunks' edges): the ledger holds the certified root's tree, node for
    node the one built at once, and its state."""
    from node import checkpoint
    from node.ledger import Ledger
    from node.snapshot import install, read_snapshot
    from node.state import smt
    from node.wire import decode, encode

    src, whole_file, height = one_node_snapshot
    home = _fresh_home(src, tmp_path / "h")
    gen = Genesis.load(home / "genesis.json")
    _, whole = read_snapshot(whole_file, gen)  # in memory, one batch
    frames = _frames(whole_file.read_bytes())
    pairs = [p for f in frames[1:-1] for p in decode(f)]
    snap = tmp_path / "small-chunks.snap"  # the same state in chunks of 3 pairs
    snap.write_bytes(_reseal([frames[0], *(encode(pairs[i:i + 3]) for i in range(0, len(pairs), 3)), frames[-1]]))
    monkeypatch.setattr(checkpoint, "TREE_BATCH", 5)
    out = install(home / "ledger", gen, snap)
    assert out["height"] == height and out["state_keys"] == len(whole.sink.state) > 20
    led = Ledger(home / "ledger", readonly=True)
    try:
        state = dict(led.scan_state(b"", limit=10**6))
        with led.env.begin(db=led.tree) as txn:
            nodes = dict(txn.cursor())
    finally:
        led.close()
    assert state == whole.sink.state
    assert nodes == smt.update({}.get, state)[1] and smt.root_of(nodes.get).hex() == out["state_root"]


def test_a_damaged_forged_or_foreign_snapshot_is_refused(one_node_snapshot, tmp_path: Path) -> None:
    from node.wire import decode, encode
    src, snap, _ = one_node_snapshot
    home = _fresh_home(src, tmp_path / "h")
    raw = snap.read_bytes()
    bad = tmp_path / "bad.snap"

    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 1  # one bit in a state chunk
    bad.write_bytes(bytes(flipped))
    _refused(home, bad, "")
    bad.write_bytes(raw[: len(raw) - 10])
    _refused(home, bad, "truncated")
    bad.write_bytes(b"hello" + raw)
    _refused(home, bad, "not a medchain snapshot")

    frames = _frames(raw)
    chunk = decode(frames[1])
    chunk[0][1] = chunk[0][1] + b"x"  # a value changed, the file resealed: the root check catches it
    bad.write_bytes(_reseal([frames[0], encode(chunk), *frames[2:]]))
    _refused(home, bad, "is not the state root")
    assert not (home / "ledger").exists()  # proven apart first: not a page of it in a ledger file

    bad.write_bytes(_reseal([frames[0], encode(chunk[1:]), *frames[2:]]))  # a key left out
    _refused(home, bad, "were declared")

    m = decode(frames[0])  # a block whose certificate is not the genesis validators'
    blk = decode(m[7])
    blk[2] = [[0, bytes(64)]]
    m[7] = encode(blk)
    bad.write_bytes(_reseal([encode(m), *frames[1:]]))
    _refused(home, bad, "commit certificate")

    other = make_network(tmp_path / "other", 1)[0].home  # same shape, another chain and genesis
    _refused(_fresh_home(other, tmp_path / "o"), snap, "is of chain")


def test_snapshot_of_a_running_network_restores_a_wiped_validator(tmp_path: Path) -> None:
    """Four validators under load: a snapshot of validator 1 while it runs; validator 3 stopped, its
    ledger and blobs wiped, restored from that snapshot; it rejoins, catches up, commits new load."""
    snap = tmp_path / "v1.snap"
    with running_network(tmp_path, 4) as nodes:
        committed: list[str] = []

        async def go() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(acknowledged_load(nodes, stop, committed, b"restore-", avoid=3))
            while len(committed) < 40:
                await asyncio.sleep(0.1)
            p = await asyncio.to_thread(_cli, "snapshot", "--home", str(nodes[1].home), "--out", str(snap), "--json")
            assert p.returncode == 0, p.stderr
            height = json.loads(p.stdout)["height"]
            assert await asyncio.to_thread(nodes[3].stop) == 0
            for d in ("ledger", "blobs"):
                shutil.rmtree(nodes[3].home / d)
            p = await asyncio.to_thread(_cli, "restore", "--home", str(nodes[3].home), str(snap))
            assert p.returncode == 0, p.stderr
            while len(committed) < 80:  # the network moves on past the snapshot meanwhile
                await asyncio.sleep(0.1)
            await asyncio.to_thread(nodes[3].start)
            before = len(committed)
            while len(committed) < before + 40:
                await asyncio.sleep(0.1)
            stop.set()
            await task
            heads = await converged(nodes, timeout=60.0, same_view=False)
            st = heads[3]
            assert st["base_height"] == height and st["height"] > height
            after = [t for t in committed[before:]]
            await assert_committed(nodes, after)  # validator 3 holds what was committed after its restore
            await assert_committed(nodes[:3], committed)
        run(go())
    rep = json.loads(_cli("verify", "--home", str(nodes[3].home), "--json").stdout)
    assert rep["ok"] and rep["base"] > 0, rep


def test_an_installer_dies_with_the_validator_that_started_it(tmp_path: Path) -> None:
    """A validator killed while its state-transfer installer runs must not find, once restarted, an
    orphan replacing its ledger under it: the installer arms PR_SET_PDEATHSIG against the pid it is
    given and refuses to start if that process is already gone. (Found by a crash-consistency review.)"""
    import os
    import signal
    import time

    child = ("import os, sys, time\n"
             "from node.snapshot import _die_with\n"
             "print(os.getpid(), _die_with(os.getppid()), flush=True)\n"
             "time.sleep(120)\n")
    parent = ("import subprocess, sys\n"
              f"c = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=sys.stdout)\n"
              "c.wait()\n")
    p = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    pid, armed = p.stdout.readline().split()
    assert armed == "True"
    os.kill(p.pid, signal.SIGKILL)  # the validator dies
    p.wait()
    for _ in range(100):
        try:  # gone, or a zombie nobody reaped yet (no init in some containers)
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.05)
    else:
        os.kill(int(pid), signal.SIGKILL)
        raise AssertionError("the installer outlived the validator")
    # a parent already gone: nothing is installed
    out = subprocess.run([sys.executable, "-m", "node.snapshot", str(tmp_path), str(tmp_path / "none"), "--parent=1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "is gone: nothing installed" in out.stderr


def test_a_killed_installer_s_scratch_tree_is_removed_when_the_validator_starts(tmp_path: Path) -> None:
    """An installer killed with its validator leaves `HOME/.state-tree-*`, as large as the state it
    was proving; only a next install removed it, and a node that then caught up by replaying
    blocks kept it for good (a review). The validator's start removes it."""
    from devices.net.localnet import make_network

    (n,) = make_network(tmp_path, 1)
    stale = n.home / ".state-tree-killed"
    stale.mkdir()
    (stale / "data.mdb").write_bytes(b"\0" * 4096)
    n.start()
    try:
        assert not stale.exists()
    finally:
        n.stop()
