"""A network built the way separate operators build it: four homes made apart (each key stays in
its home), a genesis assembled by a coordinator from the public parts alone, installed after a hash
check, then real validator processes that commit. And the refusals: a tampered part, a draft, a
genesis changed after it was finalized, a hash other than the one announced."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devices.net.faultharness import acknowledged_load, assert_committed, converged
from devices.net.localnet import NodeProcess, free_ports, start_all, stop_all
from node.cli import main
from node.crypto.keys import Identity
from node.genesis import Genesis
from node.operator import check_part
from tests.conftest import run


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def build_network(root: Path, capsys: pytest.CaptureFixture[str], n: int = 4,
                  hosts: list[str] | None = None) -> tuple[list[Path], Path, str]:
    """n operator homes under root/hostI, a coordinator's genesis from their parts only, installed
    in each home; (homes, genesis file, genesis hash)."""
    ports = free_ports(2 * n)
    hosts = hosts or ["127.0.0.1"] * n
    homes = []
    coord = root / "coordinator"
    coord.mkdir()
    for i in range(n):
        home = root / f"host{i}" / "medchain"
        part = _cli(capsys, "operator", "init", "--home", str(home), "--api", f"{hosts[i]}:{ports[i]}",
                    "--p2p", f"{hosts[i]}:{ports[n + i]}", "--name", f"hospital-{i}")
        shutil.copy(part["part"], coord / f"part{i}.json")  # only the public part travels
        homes.append(home)
    g = coord / "genesis.json"
    _cli(capsys, "genesis", "new", "--out", str(g), "--chain-id", "medchain-consortium",
         "--param", "sender_rate=1e5", "--param", "sender_burst=1e5")
    for i in range(n):
        _cli(capsys, "genesis", "add-validator", str(g), str(coord / f"part{i}.json"))
    issuer = Identity.from_seed(b"medical-council")
    _cli(capsys, "genesis", "add-issuer", str(g), f"Medical Council={issuer.public_key.hex()}")
    digest = _cli(capsys, "genesis", "finalize", str(g))["genesis_hash"]
    for i, home in enumerate(homes):
        got = _cli(capsys, "operator", "install-genesis", "--home", str(home), str(g), "--expect-hash", digest)
        assert got["validator_index"] == i and got["genesis_hash"] == digest
    return homes, g, digest


def test_four_operators_build_a_network_that_commits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    homes, g, digest = build_network(tmp_path, capsys)
    secrets = [json.loads((h / "node_key.json").read_text())["secp256k1_secret"] for h in homes]
    for f in (tmp_path / "coordinator").iterdir():  # nothing secret reached the coordinator
        assert not any(s in f.read_text() for s in secrets), f
    gen = Genesis.load(g)
    assert gen.hash.hex() == digest and gen.params.sender_rate == 1e5 and len(gen.validators) == 4
    assert [i.name for i in gen.issuers] == ["Medical Council"]
    nodes = [NodeProcess(h, int(gen.validators[i].api.rsplit(":", 1)[1]), chain_id=gen.chain_id, index=i)
             for i, h in enumerate(homes)]
    start_all(nodes)
    try:
        committed: list[str] = []

        async def go() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(acknowledged_load(nodes, stop, committed, b"op-", avoid=None))
            while len(committed) < 40:
                await asyncio.sleep(0.1)
            stop.set()
            await task
            await converged(nodes, timeout=20.0, same_view=False)
            await assert_committed(nodes, committed)
        run(go())
    finally:
        assert stop_all(nodes) == [0, 0, 0, 0]
    for n in nodes:
        assert "Traceback" not in n.log_tail(1_000_000), n.log_tail()


def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    homes, g, digest = build_network(tmp_path, capsys, n=1)
    home = homes[0]
    part = json.loads((home / "validator.json").read_text())
    with pytest.raises(ValueError, match="bad signature"):  # a coordinator cannot redirect a validator
        check_part({**part, "api": "203.0.113.9:8545"})
    # a co-operator copying this public part's peer id and p2p address into a part of its own key
    # (signed by that key) was accepted, and the real validator's part then refused (a review)
    from node.operator import make_part
    evil = Identity.from_seed(b"evil operator")
    forged = make_part(evil, "203.0.113.7:8545", "203.0.113.7:9000")
    forged = {**forged, "peer_id": part["peer_id"], "p2p": part["p2p"], "p2p_signature": part["p2p_signature"]}
    from node.operator import _part_digest
    forged["signature"] = evil.sign(_part_digest(forged)).hex()
    with pytest.raises(ValueError, match="not signed by the libp2p key of peer id"):
        check_part(forged)
    with pytest.raises(ValueError, match="p2p_signature"):
        check_part({k: v for k, v in part.items() if k != "p2p_signature"})
    # a co-operator's own part, signed by both its keys, with an address libp2p cannot parse: every
    # validator dials every genesis address at start, so it stopped the whole network (a review)
    from node.p2p.identity import key_pair_from_secret
    odd = {**make_part(evil, "203.0.113.7:8545", "203.0.113.7:9000")}
    odd["p2p"] = odd["p2p"].replace("/tcp/9000", "/tcp/9000/bogus")
    odd["signature"] = evil.sign(_part_digest(odd)).hex()
    odd["p2p_signature"] = key_pair_from_secret(evil.p2p_secret).private_key.sign(_part_digest(odd)).hex()
    with pytest.raises(ValueError, match="not a /ip4"):
        check_part(odd)
    # an operator's host name or IPv6 address becomes an address libp2p dials (/ip4/NAME was written)
    for p2p, want in (("hospital-a.example:9545", "/dns4/hospital-a.example/tcp/9545/p2p/"),
                      ("[2001:db8::7]:9545", "/ip6/2001:db8::7/tcp/9545/p2p/")):
        named = make_part(evil, "hospital-a.example:8545", p2p)
        assert named["p2p"].startswith(want) and check_part(named).p2p == named["p2p"]
    with pytest.raises(ValueError, match="every interface"):  # the listen address is no address to advertise
        make_part(evil, "203.0.113.7:8545", "0.0.0.0:9545")
    assert main(["operator", "init", "--home", str(home), "--api", "h:1", "--p2p", "h:2"]) == 1  # key kept
    assert "exists" in capsys.readouterr().err
    assert main(["genesis", "add-validator", str(g), str(home / "validator.json")]) == 1  # finalized: closed
    assert "is finalized" in capsys.readouterr().err
    draft = tmp_path / "draft.json"
    assert main(["genesis", "new", "--out", str(draft)]) == 0
    assert main(["operator", "install-genesis", "--home", str(home), str(draft)]) == 1
    assert "draft genesis" in capsys.readouterr().err
    assert main(["operator", "install-genesis", "--home", str(home), str(g), "--expect-hash", "ab" * 32]) == 1
    assert "not the" in capsys.readouterr().err
    # a genesis edited after it was finalized: the node refuses to start on it, and says why
    d = json.loads((home / "genesis.json").read_text())
    d["params"]["block_max_txs"] = 1
    (home / "genesis.json").write_text(json.dumps(d))
    p = subprocess.run([sys.executable, "-m", "node.cli", "node", "--home", str(home)], capture_output=True,
                       text=True, timeout=60)
    # exit 2: the service unit does not restart on it (RestartPreventExitStatus=2 3; it exited 1)
    assert p.returncode == 2 and "genesis hash mismatch" in p.stderr, p.stderr[-2000:]


def test_a_validator_s_key_is_listed_once_however_it_is_spelled(tmp_path: Path) -> None:
    """A part carrying a listed validator's key in upper-case hex (signed by that key, with another
    libp2p key) was added to the draft, and `finalize` wrote the file before refusing the duplicate:
    the file was left neither a draft nor hashed. The key compares as one spelling now, and
    finalize checks everything before it writes (a review)."""
    from node.genesis import DRAFT_FIELD
    from node.operator import _part_digest, genesis_add, genesis_finalize, genesis_new, make_part, parse_params
    from node.p2p import peer_id_from_secret
    from node.p2p.identity import key_pair_from_secret

    draft = tmp_path / "draft.json"
    genesis_new(draft, "medchain-spelling", None, parse_params([]))
    me = Identity.from_seed(b"spelled twice")
    (tmp_path / "a.json").write_text(json.dumps(make_part(me, "203.0.113.1:8545", "203.0.113.1:9545")))
    genesis_add(draft, tmp_path / "a.json")
    other = bytes([7]) * 32  # another libp2p key, its own peer id
    twin = make_part(me, "203.0.113.2:8545", "203.0.113.2:9545")
    pid = peer_id_from_secret(other)
    twin = {**twin, "public_key": twin["public_key"].upper(), "peer_id": pid,
            "p2p": f"/ip4/203.0.113.2/tcp/9545/p2p/{pid}"}
    twin["signature"] = me.sign(_part_digest(twin)).hex()
    twin["p2p_signature"] = key_pair_from_secret(other).private_key.sign(_part_digest(twin)).hex()
    (tmp_path / "twin.json").write_text(json.dumps(twin))
    with pytest.raises(ValueError, match="already has this public_key"):
        genesis_add(draft, tmp_path / "twin.json")
    # one that got into a draft all the same (an older release, an edit): finalize leaves the draft as it was
    d = json.loads(draft.read_text())
    d["validators"].append({**d["validators"][0], "public_key": d["validators"][0]["public_key"].upper(),
                            "api": "203.0.113.2:8545", "p2p": twin["p2p"]})
    draft.write_text(json.dumps(d))
    before = draft.read_text()
    with pytest.raises(ValueError, match="the key of validator 0 again"):
        genesis_finalize(draft)
    assert draft.read_text() == before and json.loads(before)[DRAFT_FIELD] is True


def test_a_home_runs_one_network(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A trial network's home given the real genesis (same parts, same chain id, another parameter):
    `install-genesis --force` took it over the trial's ledger, and the validator ran that ledger as
    the new network's (a review). Now install-genesis refuses while a ledger is there, and a
    validator whose genesis file was replaced all the same refuses to start (exit 2, named)."""
    homes, g, _ = build_network(tmp_path, capsys, n=1)
    home = homes[0]
    port = int(Genesis.load(home / "genesis.json").validators[0].api.rpartition(":")[2])
    trial = NodeProcess(home, port)
    trial.start()
    trial.stop()
    real = tmp_path / "real.json"
    _cli(capsys, "genesis", "new", "--out", str(real), "--chain-id", "medchain-consortium",
         "--param", "sender_rate=1e5", "--param", "sender_burst=2e5")
    _cli(capsys, "genesis", "add-validator", str(real), str(tmp_path / "coordinator" / "part0.json"))
    _cli(capsys, "genesis", "finalize", str(real))
    assert main(["operator", "install-genesis", "--home", str(home), str(real)]) == 1
    assert "holds another genesis" in capsys.readouterr().err
    assert main(["operator", "install-genesis", "--home", str(home), str(real), "--force"]) == 1
    assert "holds the ledger of chain medchain-consortium" in capsys.readouterr().err
    shutil.copy(real, home / "genesis.json")  # the file replaced by hand
    p = subprocess.run([sys.executable, "-m", "node.cli", "node", "--home", str(home)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "is not this network's: it was first run on network" in p.stderr, p.stderr[-2000:]
    # nor is the trial's state packed into a snapshot under the real genesis's hash, nor verified as its
    assert main(["snapshot", "--home", str(home), "--out", str(tmp_path / "s.snap")]) == 1
    assert "is not this genesis's network" in capsys.readouterr().err
    assert main(["verify", "--home", str(home)]) == 1
    assert "the ledger was first run on network" in capsys.readouterr().out
    shutil.copy(g, home / "genesis.json")  # its own genesis back: it runs
    trial.start()
    try:  # installing the genesis it runs on again (a configuration tool's second pass) changes nothing
        assert main(["operator", "install-genesis", "--home", str(home), str(g)]) == 0
    finally:
        trial.stop()
    capsys.readouterr()
    (home / "genesis.json").write_text("{damaged")  # --force may replace a file that does not load, not a ledger
    assert main(["operator", "install-genesis", "--home", str(home), str(g), "--force"]) == 1
    assert "holds the ledger of chain unknown" in capsys.readouterr().err


def test_operator_init_makes_its_home_private_but_leaves_an_existing_directory_as_it_was(tmp_path: Path) -> None:
    """`operator init --home /srv` (a typo, as root) made /srv mode 0700 (a review): only a home it
    creates is made private; the key file is 0600 either way."""
    import os
    import stat

    from node.operator import operator_init
    made, existing = tmp_path / "new" / "medchain", tmp_path / "srv"
    existing.mkdir()
    os.chmod(existing, 0o755)
    for home in (made, existing):
        operator_init(home, "203.0.113.1:8545", "203.0.113.1:9545")
        assert stat.S_IMODE((home / "node_key.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(made.stat().st_mode) == 0o700 and stat.S_IMODE(existing.stat().st_mode) == 0o755
