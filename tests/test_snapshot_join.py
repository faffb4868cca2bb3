"""A fresh validator joins a network whose chain is longer than the state-transfer threshold: it takes
a certified checkpoint of the state from a peer over libp2p instead of replaying every block, pulls
only the blocks after it, and then commits new transactions with the others (real processes)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from devices.net.faultharness import acknowledged_load, assert_committed, converged
from devices.net.localnet import make_network, start_all, stop_all
from devices.patient.client import NodeClient
from devices.patient.phone import Phone
from devices.wearable.wearables import make_wearable
from node.crypto.keys import Identity
from node.genesis import Genesis, Params
from node.ipfs.blockstore import BlockStore
from node.ipfs.cid import Cid
from tests.conftest import run

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 25
AHEAD = 300


def _status(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url + "/v1/status", timeout=5).read())


def test_fresh_validator_catches_up_by_state_transfer(tmp_path: Path) -> None:
    nodes = make_network(tmp_path, 4, params=Params(sender_rate=1e5, sender_burst=1e5))
    for n in nodes:
        n.env["MEDCHAIN_STATE_SYNC_BLOCKS"] = str(THRESHOLD)
    late = nodes[3]
    try:
        start_all(nodes[:3])  # 2f+1 = 3: the network commits without validator 3
        committed: list[str] = []
        windows: list[str] = []

        async def go() -> None:
            async with NodeClient(nodes[0].url) as c0:  # blobs committed below the coming checkpoint
                g = Genesis.load(nodes[0].home / "genesis.json")
                phone = Phone(Identity.from_seed(b"join-patient"), c0, g.chain_id, g.validator_keys)
                t0 = int(time.time() * 1000) - 600_000
                hr = make_wearable("heart_rate", "hr", 1)
                for k in range(3):
                    windows.append((await phone.write_window(
                        "heart_rate", list(hr.frames_between(t0 + k * 60_000, t0 + (k + 1) * 60_000)))).cid)
            stop = asyncio.Event()
            task = asyncio.create_task(acknowledged_load(nodes[:3], stop, committed, b"join-", avoid=None))
            # far enough ahead that the newcomer is still THRESHOLD behind after what it replays before
            # its first offers arrive: its peers' queued PBFT frames (up to a window, 64) and pushes
            while _status(nodes[0].url)["height"] < AHEAD:
                await asyncio.sleep(0.2)
            height = _status(nodes[0].url)["height"]
            await asyncio.to_thread(late.start)  # a new validator with an empty ledger
            deadline = asyncio.get_running_loop().time() + 60
            while (st := _status(late.url))["state_transfer"]["installed_height"] == 0 or st["height"] < height:
                assert asyncio.get_running_loop().time() < deadline, (st["height"], st["state_transfer"],
                                                                      st["consensus"], late.log_tail(6000))
                await asyncio.sleep(0.2)
            xfer = st["state_transfer"]
            assert xfer["installed_height"] >= height and xfer["keys"] > 0, xfer
            assert st["base_height"] == xfer["installed_height"]
            # it fetched only blocks after the checkpoint, never the history before it: every range that
            # block sync pulled starts above the checkpoint, and they add up to no more than the blocks since
            pulled = [(int(a), int(b)) for a, b in re.findall(r"state transfer: blocks (\d+)\.\.(\d+) from",
                                                               late.log_tail(1_000_000))]
            assert all(a > xfer["installed_height"] for a, _ in pulled), (pulled, xfer)
            assert st["consensus"]["synced_blocks"] <= st["height"] - xfer["installed_height"], (st["consensus"], xfer)
            # and says so to Prometheus
            exported = urllib.request.urlopen(late.url + "/metrics", timeout=5).read().decode()
            metrics = dict(re.findall(r"^(medchain_state_transfer_[a-z_]+(?:\{[^}]*\})?) (\S+)$", exported, re.M))
            assert float(metrics["medchain_state_transfer_installed_total"]) == 1, metrics
            assert float(metrics["medchain_state_transfer_started_total"]) >= 1, metrics
            assert float(metrics["medchain_state_transfer_installed_height"]) == xfer["installed_height"], metrics
            assert float(metrics["medchain_state_transfer_chunks_total"]) == xfer["chunks"] >= 1, metrics
            assert float(metrics["medchain_state_transfer_received_bytes_total"]) > 0, metrics
            # the blobs committed below its checkpoint: pinned and fetched in the background
            while (rep := _status(late.url)["replication"])["fetched"] < len(windows):
                assert asyncio.get_running_loop().time() < deadline + 30, rep
                await asyncio.sleep(0.2)
            before = len(committed)
            stop.set()
            await task
            # new load through every validator, the newcomer's API included
            stop2 = asyncio.Event()
            fresh: list[str] = []
            task = asyncio.create_task(acknowledged_load(nodes, stop2, fresh, b"joined-", avoid=None))
            while len(fresh) < 40:
                await asyncio.sleep(0.1)
            stop2.set()
            await task
            await converged(nodes, timeout=60.0, same_view=False)
            await assert_committed(nodes, fresh)
            await assert_committed(nodes[:3], committed[:before])
        run(go())
        try:
            urllib.request.urlopen(late.url + "/v1/blocks/1", timeout=5)
            raise AssertionError("block 1 served by a validator that started from a checkpoint")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404 and "below this validator's checkpoint" in json.loads(exc.read())["error"]
    finally:
        codes = stop_all(nodes)
    assert codes == [0, 0, 0, 0], codes
    for n in nodes:
        assert "Traceback" not in n.log_tail(1_000_000), n.log_tail()
    store = BlockStore(late.home / "blobs")
    try:
        assert [(store.has_blob(Cid.parse(c)), store.pin_count(Cid.parse(c))) for c in windows] == [(True, 1)] * 3
        assert store.wanted_blobs() == []
    finally:
        store.close()
    p = subprocess.run([sys.executable, "-m", "node.cli", "verify", "--home", str(late.home), "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    rep = json.loads(p.stdout)
    assert rep["ok"] and rep["base"] > 0 and rep["height"] > rep["base"], rep
