"""Four operators, four hosts: each validator in its own Linux network namespace with its own address
on a veth bridge, built from four separately made homes and a genesis assembled from their public
parts only. Under an acknowledged load: one host's link is cut and restored (it catches up), one
host is stopped with SIGTERM and restarted, then a rolling restart of every validator, one at a
time; every acknowledged transaction ends up committed on every validator, every ledger verifies.

Needs root and iproute2 (`ip netns`), as in CI; skipped with the reason otherwise. The namespaces
and the bridge are removed afterwards, whatever happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devices.net.faultharness import acknowledged_load, assert_committed, converged
from devices.net.localnet import NodeProcess, start_all, stop_all
from node.cli import main
from tests.conftest import run

N = 4
API, P2P = 8545, 9545  # every host uses the same ports, as real hosts would: only the addresses differ
TAG = f"mc{os.getpid() % 100000}"  # short: interface names are at most 15 characters
SUBNET = f"10.231.{os.getpid() % 250}"


def _why_not() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs the tests as root)"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`): apt-get install iproute2"
    p = subprocess.run(["ip", "netns", "add", f"{TAG}-probe"], capture_output=True, text=True)
    if p.returncode != 0:
        return f"`ip netns add` is not permitted here: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", f"{TAG}-probe"], capture_output=True)
    return None


pytestmark = pytest.mark.skipif(bool(_why_not()), reason=_why_not() or "")


def ip(*args: str, check: bool = True) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")


def ns(i: int) -> str:
    return f"{TAG}-{i}"


def addr(i: int) -> str:
    return f"{SUBNET}.{i + 1}"


def veth(i: int) -> str:
    return f"v{TAG}-{i}"  # the host's end; the namespace's end is its eth0


BRIDGE = f"b{TAG}"


def _teardown() -> None:
    for i in range(N):
        ip("netns", "del", ns(i), check=False)  # takes its veth pair with it
    ip("link", "del", BRIDGE, check=False)


@pytest.fixture
def hosts() -> Iterator[None]:
    """A bridge in the test's namespace (it reaches every API, like the clients of a hospital LAN)
    and one namespace per host, joined to it by a veth pair."""
    _teardown()  # leftovers of a run killed before its cleanup
    try:
        ip("link", "add", BRIDGE, "type", "bridge")
        ip("addr", "add", f"{SUBNET}.254/24", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")
        for i in range(N):
            ip("netns", "add", ns(i))
            ip("link", "add", veth(i), "type", "veth", "peer", "name", f"p{TAG}-{i}")
            ip("link", "set", f"p{TAG}-{i}", "netns", ns(i))
            ip("-n", ns(i), "link", "set", f"p{TAG}-{i}", "name", "eth0")
            ip("-n", ns(i), "addr", "add", f"{addr(i)}/24", "dev", "eth0")
            ip("-n", ns(i), "link", "set", "eth0", "up")
            ip("-n", ns(i), "link", "set", "lo", "up")
            ip("link", "set", veth(i), "master", BRIDGE)
            ip("link", "set", veth(i), "up")
        yield
    finally:
        _teardown()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def test_four_hosts_in_namespaces(hosts: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # each operator on its own host: keys made there, only the public part leaves
    coord = tmp_path / "coordinator"
    coord.mkdir()
    homes = []
    for i in range(N):
        home = tmp_path / f"host{i}" / "medchain"
        part = _cli(capsys, "operator", "init", "--home", str(home), "--api", f"{addr(i)}:{API}",
                    "--p2p", f"{addr(i)}:{P2P}", "--name", f"hospital-{i}")
        shutil.copy(part["part"], coord / f"part{i}.json")
        homes.append(home)
    g = coord / "genesis.json"
    _cli(capsys, "genesis", "new", "--out", str(g), "--param", "sender_rate=1e5", "--param", "sender_burst=1e5")
    for i in range(N):
        _cli(capsys, "genesis", "add-validator", str(g), str(coord / f"part{i}.json"))
    fin = _cli(capsys, "genesis", "finalize", str(g))
    for home in homes:
        _cli(capsys, "operator", "install-genesis", "--home", str(home), str(g), "--expect-hash", fin["genesis_hash"])
    # host 1 runs from a configuration file that binds every interface (it still advertises its address)
    cfg = tmp_path / "host1" / "node.toml"
    cfg.write_text(f'home = "{homes[1]}"\n[api]\nlisten = "0.0.0.0:{API}"\n[p2p]\nlisten = "0.0.0.0:{P2P}"\n')
    nodes = [NodeProcess(h, API, host=addr(i), chain_id=fin["chain_id"], index=i,
                         prefix=["ip", "netns", "exec", ns(i)], args=["--config", str(cfg)] if i == 1 else [])
             for i, h in enumerate(homes)]
    try:
        start_all(nodes, timeout=60)
        committed: list[str] = []

        async def progress(n: int, timeout: float = 90.0) -> None:
            target = len(committed) + n
            deadline = time.monotonic() + timeout
            while len(committed) < target:
                assert time.monotonic() < deadline, f"{len(committed)} acknowledged, waiting for {target}"
                await asyncio.sleep(0.1)

        async def restart(i: int) -> None:
            nodes[i].proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(nodes[i].proc.wait, 30) == 0, nodes[i].log_tail()
            await asyncio.to_thread(nodes[i].start, 60)

        async def go() -> None:
            stop = asyncio.Event()
            # the load's clients stay off host 3, whose link is cut (a cut link is a connect timeout)
            load = asyncio.create_task(acknowledged_load(nodes, stop, committed, b"netns-", avoid=3))
            try:
                await progress(30)
                ip("link", "set", veth(3), "down")  # host 3 is cut off
                assert not await asyncio.to_thread(_reachable, addr(3), API)
                await progress(30)  # the other three commit without it
                ip("link", "set", veth(3), "up")
                await progress(10)
                await converged(nodes, timeout=60.0, same_view=False)  # host 3 caught up
                await restart(2)  # one host stopped with SIGTERM and restarted
                await progress(20)
                for i in range(N):  # a rolling restart, one validator at a time
                    await restart(i)
                    await progress(10)
            finally:
                stop.set()
                await load
            await converged(nodes, timeout=60.0, same_view=False)
            await assert_committed(nodes, committed)
        run(go())
        assert len(committed) >= 150
    finally:
        codes = stop_all(nodes)
    assert codes == [0] * N, [n.log_tail() for n in nodes]
    for n in nodes:
        assert "Traceback" not in n.log_tail(1_000_000), n.log_tail()
        p = subprocess.run([sys.executable, "-m", "node.cli", "verify", "--home", str(n.home), "--json"],
                           capture_output=True, text=True, timeout=120)
        assert json.loads(p.stdout)["ok"], p.stdout
