"""DESIGN.md section 5 on a real 4-process devnet (PBFT over py-libp2p on 127.0.0.1), under load:
the primary killed (a new view takes over), a replica paused past the checkpoint window (state
transfer), an equivocating primary (real byzantine process), and at n = 7 an equivocating primary and a
killed replica at once (f = 2). After each: identical block hashes and state roots on the honest
replicas, and every acknowledged commit still there.

Figures (time to the first commit in a new view, state-transfer rate) are printed, not asserted:
run with `-s` to see them."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devices.net import faultharness
from devices.net.localnet import make_network, start_all
from devices.patient.client import NodeClient
from node.block import Block
from node.genesis import Params
from tests.conftest import run
from tests.test_devnet import _load_until

WINDOW = 16  # a small PBFT window (checkpoint every 4 blocks), so "past the window" takes seconds


def _network(tmp_path, env=None, n=4):
    nodes = make_network(tmp_path, n, params=Params(sender_rate=1e5, sender_burst=1e5, pbft_window=WINDOW))
    for i, e in (env or {}).items():
        nodes[i].env.update(e)
    start_all(nodes)
    return nodes


@pytest.fixture
def devnet(tmp_path):
    nodes = _network(tmp_path)
    yield nodes
    for n in nodes:
        n.stop()


async def _until_committed(committed, count, seconds=30.0):
    """Wait until `committed` holds more than `count` acknowledged transactions (or `seconds` pass)."""
    for _ in range(int(seconds * 10)):
        if len(committed) > count:
            return
        await asyncio.sleep(0.1)


async def _status(node) -> dict:
    async with NodeClient(node.url) as c:
        return await c.status()


def test_primary_killed_new_view_takes_over_then_it_rejoins(devnet):
    nodes = devnet
    committed: list[str] = []

    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(_load_until(nodes, stop, committed, b"vc-"))
        await asyncio.sleep(2.0)
        assert len(committed) > 10
        h0 = (await _status(nodes[1]))["height"]
        nodes[0].kill()
        t_kill = time.monotonic()
        first = None
        while time.monotonic() - t_kill < 30:
            st = await _status(nodes[1])
            if st["consensus"]["view"] >= 1 and not st["consensus"]["view_changing"] and st["height"] > h0 + 1:
                first = time.monotonic() - t_kill
                break
            await asyncio.sleep(0.02)
        assert first is not None, "no commit in a new view after the primary was killed"
        n_before_restart = len(committed)
        await asyncio.sleep(2.0)
        assert len(committed) > n_before_restart, "commits did not continue in the new view"
        nodes[0].start()  # the old primary rejoins as a backup of the new view
        await asyncio.sleep(3.0)
        stop.set()
        await task
        print(f"\nprimary killed -> first commit in view {st['consensus']['view']}: {first:.2f} s")
        heads = await faultharness.converged(nodes, timeout=30.0, same_view=False)
        assert all(h["consensus"]["view"] >= 1 for h in heads)
        await faultharness.assert_committed([nodes[0]], committed)
    run(go())


async def _fall_behind(nodes, victim, committed, tag, blocks):
    """Load the network until the others are `blocks` past the victim's height (it is paused or down)."""
    stop = asyncio.Event()
    # not through the victim's API: a paused process would hold its clients until they time out
    task = asyncio.create_task(faultharness.acknowledged_load(nodes, stop, committed, tag, avoid=victim))
    start = (await _status(nodes[(victim + 1) % 4]))["height"]
    try:
        for _ in range(900):
            if (await _status(nodes[(victim + 1) % 4]))["height"] > start + blocks:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await task
    return start, (await _status(nodes[(victim + 1) % 4]))["height"]


async def _time_catch_up(node, target) -> float:
    t0 = time.monotonic()
    while (await _status(node))["height"] < target:
        assert time.monotonic() - t0 < 60, "the replica did not catch up"
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


def test_paused_replica_catches_up(devnet):
    """SIGSTOP past the checkpoint window, SIGCONT: what waited in its sockets and state transfer bring
    it level (which of the two does most depends on how much the peers' streams buffered)."""
    nodes = devnet
    committed: list[str] = []

    async def go():
        nodes[3].pause()
        try:
            start, target = await _fall_behind(nodes, 3, committed, b"st-", 2 * WINDOW)
        finally:
            nodes[3].resume()
        took = await _time_catch_up(nodes[3], target)
        st = await _status(nodes[3])
        print(f"\npaused replica: {target - start} blocks behind, level in {took:.2f} s "
              f"({st['consensus']['synced_blocks']} by state transfer)")
        await faultharness.converged(nodes, timeout=30.0, same_view=False)
        await faultharness.assert_committed([nodes[3]], committed)
    run(go())


def test_replica_restored_from_an_old_copy_catches_up_by_state_transfer(devnet):
    """A validator killed and restarted from an older copy of its home is far behind the window: it pulls
    the blocks with their certificates over /medchain/sync/1.0.0 and checks each against the keys."""
    import shutil
    nodes = devnet
    committed: list[str] = []

    async def go():
        await _fall_behind(nodes, 3, committed, b"old-", 10)
        nodes[3].stop()
        old = nodes[3].home.parent / "node3-old"
        shutil.copytree(nodes[3].home, old)
        nodes[3].start()
        start, target = await _fall_behind(nodes, 3, committed, b"old2-", 4 * WINDOW)
        nodes[3].kill()
        shutil.rmtree(nodes[3].home)
        shutil.copytree(old, nodes[3].home)
        nodes[3].start()
        height = (await _status(nodes[3]))["height"]
        took = await _time_catch_up(nodes[3], target)
        st = await _status(nodes[3])
        gap = target - height
        print(f"\nstate transfer: {gap} blocks behind, level in {took:.2f} s ({gap / took:.0f} blocks/s, "
              f"{st['consensus']['synced_blocks']} pulled)")
        assert gap > WINDOW and st["consensus"]["synced_blocks"] > WINDOW
        await faultharness.converged(nodes, timeout=30.0, same_view=False)
        await faultharness.assert_committed([nodes[3]], committed)
    run(go())


def test_equivocating_primary_commits_at_most_one_block_per_sequence(tmp_path):
    nodes = _network(tmp_path, env={0: {"MEDCHAIN_BYZANTINE": "equivocate"}})
    committed: list[str] = []
    try:
        async def go():
            stop = asyncio.Event()
            task = asyncio.create_task(_load_until(nodes, stop, committed, b"eq-"))
            await _until_committed(committed, 30)
            stop.set()
            await task
            assert len(committed) > 30, "no progress after the equivocation"
            honest = {1, 2, 3}
            heads = await faultharness.converged([nodes[i] for i in sorted(honest)], timeout=30.0, same_view=False)
            assert all(h["consensus"]["view"] >= 1 for h in heads)
            ev = [e for h in heads for e in h["consensus"]["evidence"]]
            assert any(e["kind"] == "equivocating-primary" and e["validator"] == 0 for e in ev), ev
            # and the operators' metrics count it
            counts = []
            for i in honest:
                text = await asyncio.to_thread(lambda u=nodes[i].url: urllib.request.urlopen(u + "/metrics").read())
                fams = {f.name: f for f in text_string_to_metric_families(text.decode())}
                counts.append(fams["medchain_consensus_evidence"].samples[0].value)
                assert fams["medchain_view"].samples[0].value >= 1
            assert max(counts) >= 1
            await faultharness.assert_committed([nodes[i] for i in sorted(honest)], committed)
            # at most one block per height: the honest ledgers agree block by block
            async with NodeClient(nodes[1].url) as a, NodeClient(nodes[2].url) as b, NodeClient(nodes[3].url) as c:
                for height in range(1, heads[0]["height"] + 1):
                    # (certificates may hold different 2f+1 subsets of signatures: compare the block hashes)
                    hashes = {Block.decode(await x.block_raw(height)).hash for x in (a, b, c)}
                    assert len(hashes) == 1, height
        run(go())
        assert "equivocated at sequence" in nodes[0].log_tail(200_000)
    finally:
        for n in nodes:
            n.stop()


async def _same_blocks(nodes, height):
    """The validators hold the same block at every height (certificates may hold different 2f+1 subsets of
    signatures: the block hashes are compared)."""
    clients = [NodeClient(n.url) for n in nodes]
    try:
        for c in clients:
            await c.__aenter__()
        for h in range(1, height + 1):
            assert len({Block.decode(await c.block_raw(h)).hash for c in clients}) == 1, h
    finally:
        for c in clients:
            await c.close()


def test_equivocating_primary_and_a_killed_replica_at_seven(tmp_path):
    """f = 2 at n = 7 (issue 19): validator 0 equivocates as primary (its second block goes to 4, 5 and 6)
    while validator 4 is SIGKILLed. The five honest validators left prove the equivocation, change view and
    commit; restarted, 4 catches up into their view; the honest ledgers agree block by block and hold every
    acknowledged commit."""
    nodes = _network(tmp_path, env={0: {"MEDCHAIN_BYZANTINE": "equivocate"}}, n=7)
    killed, honest = 4, [1, 2, 3, 4, 5, 6]
    committed: list[str] = []
    try:
        async def go():
            nodes[killed].kill()
            stop = asyncio.Event()
            task = asyncio.create_task(_load_until(nodes, stop, committed, b"eq7-"))
            await _until_committed(committed, 30, 60.0)
            assert len(committed) > 30, "no progress with a byzantine primary and a validator down"
            await asyncio.to_thread(nodes[killed].start)
            await _until_committed(committed, len(committed) + 20)
            stop.set()
            await task
            heads = await faultharness.converged([nodes[i] for i in honest], timeout=60.0)
            assert heads[0]["consensus"]["view"] >= 1
            ev = [e for h in heads for e in h["consensus"]["evidence"]]
            assert any(e["kind"] == "equivocating-primary" and e["validator"] == 0 for e in ev), ev
            await faultharness.assert_committed([nodes[i] for i in honest], committed)
            await _same_blocks([nodes[i] for i in honest], heads[0]["height"])
        run(go())
        assert "equivocated at sequence" in nodes[0].log_tail(200_000)
    finally:
        for n in nodes:
            n.stop()


def test_seeded_fault_schedule_under_load(tmp_path):
    """Kills, pauses and p2p partitions of f validators on a seeded schedule (MEDCHAIN_FAULT_SEED replays
    one; `medchain faults --seed N --steps K` runs longer ones), then healing: everything converges."""
    seed = int(os.environ.get("MEDCHAIN_FAULT_SEED", "3"))
    nodes = make_network(tmp_path, 4, params=Params(sender_rate=1e5, sender_burst=1e5))
    for n in nodes:
        n.env["MEDCHAIN_FAULTS"] = "1"
    start_all(nodes)
    try:
        result = run(faultharness.run(nodes, seed, steps=3))
        print("\n", result)
        assert result["acknowledged"] > 20
        assert {s["action"] for s in result["schedule"]} <= set(faultharness.ACTIONS)
    finally:
        for n in nodes:
            n.stop()
