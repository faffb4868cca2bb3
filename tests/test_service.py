"""The validator and the devnet as a service: real processes, real signals, real ports and LMDB.

- `medchain devnet` stopped by SIGTERM, SIGINT or SIGHUP leaves no validator running and no
  temporary home behind; killed by SIGKILL, its validators die with it (PR_SET_PDEATHSIG).
- A port already taken makes it exit 1 with a message naming the port, before anything starts; an
  API answering for another network is never reported as one of its validators.
- A validator SIGTERMed under load drains and exits 0 within seconds, restarts, catches up, and
  its ledger verifies offline; /healthz and /readyz answer as documented.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from devices.net.faultharness import acknowledged_load, assert_committed, converged
from devices.net.localnet import NodeProcess, free_ports
from tests.conftest import run, running_network

ROOT = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent counts as gone: it holds no port, no file)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _devnet(tmp_path: Path, *extra: str, validators: int = 4) -> subprocess.Popen:
    # TMPDIR: the devnet's temporary homes land under tmp_path, where the test can look for them
    return subprocess.Popen([sys.executable, "-m", "node.cli", "devnet", "--json", "--validators", str(validators),
                             *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp_path)})


def _listing(p: subprocess.Popen) -> dict:
    """The devnet's JSON listing, printed once every validator answers as itself."""
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line == "}\n":
            return json.loads("".join(lines))
    raise AssertionError(f"devnet exited {p.wait()} before listing: {p.stderr.read()[-3000:]}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_devnet_signal_stops_every_validator(tmp_path: Path, sig: signal.Signals) -> None:
    p = _devnet(tmp_path, "--base-port", "0")
    try:
        listing = _listing(p)
        pids = [v["pid"] for v in listing["validators"]]
        homes = [Path(v["home"]) for v in listing["validators"]]
        assert len(pids) == 4 and all(_alive(q) for q in pids)
        for v in listing["validators"]:  # each answers as the validator the devnet made
            st = json.loads(urllib.request.urlopen(v["api"] + "/v1/status", timeout=5).read())
            assert (st["chain_id"], st["validator_index"]) == (listing["chain_id"], v["index"])
        p.send_signal(sig)
        assert p.wait(timeout=30) == 0, p.stderr.read()
        assert _wait_gone(pids, 5) == [], "validators outlived their devnet"
        assert not any(h.exists() for h in homes), "the devnet left its temporary homes behind"
        assert list(tmp_path.glob("medchain-devnet-*")) == []
    finally:
        p.kill()
        p.wait()


def test_devnet_killed_takes_its_validators_along(tmp_path: Path) -> None:
    """SIGKILL runs no handler: the kernel's parent-death signal stops the validators instead."""
    p = _devnet(tmp_path, "--base-port", "0")
    try:
        pids = [v["pid"] for v in _listing(p)["validators"]]
        p.kill()
        p.wait()
        assert _wait_gone(pids, 20) == [], "validators outlived a SIGKILLed devnet"
    finally:
        p.kill()
        p.wait()


def test_devnet_port_taken_exits_nonzero(tmp_path: Path) -> None:
    api, _ = free_ports(2)
    with socket.socket() as held:  # another process's listener on validator 2's API port
        held.bind(("127.0.0.1", api + 2))
        held.listen()
        p = _devnet(tmp_path, "--base-port", str(api))
        out, err = p.communicate(timeout=60)
    assert p.returncode == 1, (out, err)
    assert f"validator 2 API: 127.0.0.1:{api + 2} is already in use" in err
    assert "validators" not in out  # nothing was reported up


def test_an_api_answering_for_another_network_is_not_reported_up(node: NodeProcess, tmp_path: Path) -> None:
    """The devnet's check after start: an orphan validator of another chain on our port is refused."""
    impostor = NodeProcess(tmp_path, node.port, chain_id="medchain-other", index=0, log_path=tmp_path / "log")
    impostor.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(RuntimeError, match=f"port {node.port} is taken by another process"):
        impostor.wait_ready(10)
    assert impostor.proc.poll() is not None  # and what we started is stopped


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_sigterm_under_load_drains_restarts_and_verifies(tmp_path: Path) -> None:
    with running_network(tmp_path, 4) as nodes:
        victim = nodes[2]
        committed: list[str] = []

        async def go() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(acknowledged_load(nodes, stop, committed, b"term-", avoid=2))
            while len(committed) < 30:
                await asyncio.sleep(0.1)
            t0 = time.monotonic()
            victim.proc.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(victim.proc.wait, 30)
            took = time.monotonic() - t0
            assert rc == 0, victim.log_tail()
            assert took < 20, f"SIGTERM took {took:.1f} s"  # generous: a drain is ~3 s at most
            assert "stopped cleanly" in victim.log_tail()
            status, body = _get(nodes[0].url + "/readyz")  # 3 of 4 still form a quorum
            assert status == 200 and body["ready"], body
            before = len(committed)
            await asyncio.to_thread(victim.start)
            while len(committed) < before + 30:
                await asyncio.sleep(0.1)
            stop.set()
            await task
            await converged(nodes, timeout=20.0, same_view=False)
            await assert_committed(nodes, committed)
        run(go())
        text = urllib.request.urlopen(nodes[1].url + "/metrics", timeout=5).read().decode()
        for direction in ("in", "out"):  # the p2p counters split by message type
            for kind in ("pre_prepare", "prepare", "commit", "forwarded_txs"):
                line = f'medchain_p2p_messages_by_type_total{{direction="{direction}",type="{kind}"}}'
                if (direction, kind) != ("out", "pre_prepare"):  # validator 1 is a backup: it proposes nothing
                    assert line in text and float(text.split(line)[1].split()[0]) > 0, (line, text[-3000:])
        for step in ("execute", "persist", "deliver"):  # what the consensus stage awaited the ledger for
            line = f'medchain_consensus_wait_seconds_total{{step="{step}"}}'
            assert line in text and float(text.split(line)[1].split()[0]) > 0, (line, text[-3000:])
        status, body = _get(victim.url + "/readyz")
        assert status == 200 and body["ready"] and body["peers"] == 3, body
    for n in nodes:
        assert "Traceback" not in n.log_tail(1_000_000), n.log_tail()
        p = subprocess.run([sys.executable, "-m", "node.cli", "verify", "--home", str(n.home), "--json"],
                           capture_output=True, text=True, timeout=120)
        assert json.loads(p.stdout)["ok"], p.stdout


def test_healthz_and_readyz(node: NodeProcess) -> None:
    from tests.test_protocol_doc import _Api
    api = _Api(node.url)
    assert _get(node.url + "/healthz") == (200, {"alive": True})
    api.check("get", "/healthz", 200, {"alive": True})
    status, body = _get(node.url + "/readyz")
    assert status == 200 and body["ready"] and body["failed"] == [] and body["quorum_peers"] == 0
    api.check("get", "/readyz", 200, body)
    api.check("get", "/readyz", 503, {**body, "ready": False, "failed": ["shutting down"]})


def test_readyz_without_a_quorum_of_peers(tmp_path: Path) -> None:
    from tests.test_protocol_doc import _Api
    with running_network(tmp_path, 4) as nodes:
        for n in nodes[1:3]:
            n.stop()
        deadline = time.monotonic() + 30
        while (got := _get(nodes[0].url + "/readyz"))[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        status, body = got
        assert status == 503 and not body["ready"] and body["quorum_peers"] == 2, body
        assert any("a quorum needs" in f for f in body["failed"]), body
        _Api(nodes[0].url).check("get", "/readyz", 503, body)


def test_message_tags_are_read_without_decoding() -> None:
    from node.consensus.messages import T_COMMIT, Prepare
    from node.p2p.node import message_tag
    from node.sidecar import T_TXS
    from node.wire import encode
    assert message_tag(Prepare(1, 2, bytes(32), 0, bytes(64)).encode()) == 2
    assert message_tag(encode([T_COMMIT, *range(20)])) == T_COMMIT  # array16
    assert message_tag(encode([T_TXS, [b"x"]])) == T_TXS
    assert message_tag(b"") == message_tag(b"\x91") == message_tag(encode([300, 1])) == message_tag(b"junk") == -1


def _validators_under(root: Path) -> list[int]:
    """Pids of the validator processes whose home is below `root`."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"node.cli" in cmd and b"node" in cmd and any(str(root).encode() in c for c in cmd):
                pids.append(int(d.name))
    return [p for p in pids if _alive(p)]


def test_loadtest_sigterm_mid_run_leaves_no_validator(tmp_path: Path) -> None:
    """`medchain loadtest` (like demo and faults) runs its network as `medchain devnet` does
    (devices/net/localnet.py supervised): SIGTERM while it loads stops every validator it started."""
    p = subprocess.Popen([sys.executable, "-m", "node.cli", "loadtest", "--validators", "4", "--kind", "profile",
                          "--senders", "50", "--per-sender", "100000", "--rate", "200"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        deadline = time.monotonic() + 120
        while len(pids := _validators_under(tmp_path)) < 4 or not all(
                "serving http" in log.read_text() for log in tmp_path.glob("medchain-load-*/node*/node.log")):
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.2)
        time.sleep(2)  # mid-run: the load is on
        assert p.poll() is None and len(pids) == 4
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 128 + signal.SIGTERM, (out, err[-3000:])
        assert "SIGTERM: stopping 4 validator(s)" in err and "Traceback" not in err, err[-3000:]
        assert _wait_gone(pids, 5) == [], "validators outlived their loadtest"
        assert _validators_under(tmp_path) == [] and list(tmp_path.glob("medchain-load-*")) == []
    finally:
        p.kill()
        p.wait()
        for q in _validators_under(tmp_path):  # never leave one behind, even when the test fails
            os.kill(q, signal.SIGKILL)


def test_readyz_while_far_behind_its_peers(tmp_path: Path) -> None:
    """A validator catching up (or in a state transfer) answered ready: a load balancer sent clients to
    stale reads and 404s for committed transactions (a review). More than a PBFT window behind the
    (f+1)-th most advanced peer, it is not ready; within it, that check passes."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from node.api.server import make_app
    from node.genesis import Params, init_home
    from node.validator import Validator
    homes = init_home(tmp_path, "ready-test", [f"127.0.0.1:{9000 + i}" for i in range(4)],
                      int(time.time() * 1000), Params(), p2p=[f"127.0.0.1:{9100 + i}" for i in range(4)])
    v = Validator(homes[0])

    async def failed() -> list[str]:
        async with TestClient(TestServer(make_app(v))) as c:
            r = await c.get("/readyz")
            return (await r.json())["failed"]
    try:
        v.replica.state.peer_delivered = {1: 5000, 2: 5000, 3: 0}  # f+1 = 2 peers far ahead
        assert "5000 blocks behind its peers: catching up" in asyncio.run(failed())
        v.replica.state.peer_delivered = {1: v.replica.window, 2: 5000, 3: 0}  # within a window of f+1
        assert not any("behind" in f for f in asyncio.run(failed()))
    finally:
        v.close()
