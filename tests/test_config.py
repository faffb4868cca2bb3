"""The node configuration file: precedence (flags, then environment, then the file, then the genesis
defaults), clear errors for a bad file, and a real validator process run from one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from devices.net.localnet import free_ports
from node.cli import _parser, main
from node.config import ConfigError, NodeSettings, read_file, resolve
from node.genesis import init_home

FULL = """
home = "/srv/medchain"
[api]
listen = "0.0.0.0:8600"
[p2p]
listen = "0.0.0.0:9600"
mode = "gossipsub"
ipfs_peers = ["/ip4/10.0.0.9/tcp/4001/p2p/12D3KooWabc"]
[log]
format = "json"
level = "warning"
[metrics]
listen = "127.0.0.1:9100"
[limits]
lmdb_map_gb = 2
disk_reserve_mb = 32.5
lmdb_writemap = true
max_queue_s = 0.5
mempool_mb = 12
"""


def _settings(tmp_path: Path, text: str, *flags: str, env: dict[str, str] | None = None) -> NodeSettings:
    cfg = tmp_path / "node.toml"
    cfg.write_text(text)
    return resolve(_parser().parse_args(["node", "--config", str(cfg), *flags]), env or {})


def test_the_file_alone(tmp_path: Path) -> None:
    s = _settings(tmp_path, FULL)
    assert (str(s.home), s.api_host, s.api_port, s.p2p_listen, s.p2p_mode) == (
        "/srv/medchain", "0.0.0.0", 8600, "0.0.0.0:9600", "gossipsub")
    assert s.ipfs_peers == ["/ip4/10.0.0.9/tcp/4001/p2p/12D3KooWabc"]
    assert (s.log_format, s.log_level, s.metrics_listen, s.lmdb_map_gb, s.disk_reserve_mb, s.max_queue_s) == (
        "json", "warning", "127.0.0.1:9100", 2.0, 32.5, 0.5)
    assert s.lmdb_writemap is True and s.mempool_mb == 12.0


def test_flags_then_environment_then_file(tmp_path: Path) -> None:
    s = _settings(tmp_path, FULL, "--home", "/elsewhere", "--port", "8700", "--p2p-mode", "direct",
                  "--p2p-listen", "10.1.1.1:9700", "--log-level", "debug",
                  env={"MEDCHAIN_LMDB_MAP_GB": "5", "MEDCHAIN_P2P_MODE": "gossipsub"})
    assert (str(s.home), s.api_host, s.api_port) == ("/elsewhere", "0.0.0.0", 8700)  # --port only: host from file
    assert (s.p2p_mode, s.p2p_listen, s.log_level) == ("direct", "10.1.1.1:9700", "debug")  # flag over env
    assert (s.lmdb_map_gb, s.disk_reserve_mb) == (5.0, 32.5)  # environment over file; file otherwise
    assert _settings(tmp_path, FULL, env={"MEDCHAIN_LMDB_WRITEMAP": "0"}).lmdb_writemap is False
    assert _settings(tmp_path, 'home = "/h"\n').lmdb_writemap is None  # unset: node/mapfile.py's default
    s = _settings(tmp_path, FULL, "--host", "127.0.0.2", env={"MEDCHAIN_P2P_MODE": "direct"})
    assert (s.api_host, s.api_port, s.p2p_mode) == ("127.0.0.2", 8600, "direct")
    s = _settings(tmp_path, 'home = "/h"\n')  # nothing else set: the genesis gives the addresses
    assert (s.api_host, s.api_port, s.p2p_listen, s.p2p_mode, s.log_format) == (None, None, None, "direct", "text")


@pytest.mark.parametrize(("text", "message"), [
    ("[api\nlisten = 1", "not valid TOML"),
    ('[apii]\nlisten = "h:1"', "unknown section [apii]"),
    ('[api]\nlisen = "h:1"', "unknown setting [api] lisen (known: listen, ready_file)"),
    ('hme = "/x"', "unknown setting hme"),
    ("[api]\nlisten = 8545", "api.listen must be a str, not int"),
    ('[limits]\nlmdb_map_gb = "big"', "limits.lmdb_map_gb must be a int or float"),
    ('home = "/h"\n[p2p]\nmode = "carrier-pigeon"', "p2p.mode 'carrier-pigeon': one of direct, gossipsub"),
    ('home = "/h"\n[p2p]\nlisten = "nowhere"', "p2p.listen: 'nowhere' is not HOST:PORT"),
    # libp2p binds an address: a name there stopped the validator at start with a traceback
    ('home = "/h"\n[p2p]\nlisten = "hospital-a.example:9545"', "the host must be an IP address"),
    ('home = "/h"\n[log]\nformat = "xml"', "log.format 'xml'"),
    ('home = "/h"\n[limits]\nmax_queue_s = 0', "limits.max_queue_s must be above 0"),
    ('home = "/h"\n[limits]\nmempool_mb = 8', "limits.mempool_mb must be at least 9 (a block's worth)"),
    # TOML takes inf and nan; they passed every range check and crashed the node at start, or answered
    # every submission 500 (a review)
    ('home = "/h"\n[limits]\nmax_queue_s = inf', "inf is not a finite number"),
    ('home = "/h"\n[limits]\ndisk_reserve_mb = nan', "nan is not a finite number"),
    ('home = "/h"\n[limits]\nlmdb_map_gb = 1e30', "limits.lmdb_map_gb must be at most"),
    ("[log]\nlevel = \"info\"", "no home"),
])
def test_bad_files_are_refused_clearly(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as exc:
        _settings(tmp_path, text)
    assert message in str(exc.value) and str(tmp_path / "node.toml") in str(exc.value)


@pytest.mark.parametrize(("env", "message"), [
    ({"MEDCHAIN_LMDB_MAP_GB": "abc"}, "environment MEDCHAIN_LMDB_MAP_GB: 'abc' is not a number"),
    ({"MEDCHAIN_LMDB_WRITEMAP": "true"}, "environment MEDCHAIN_LMDB_WRITEMAP: 'true' is not 1 or 0"),
    ({"MEDCHAIN_P2P_MODE": "x"}, "environment MEDCHAIN_P2P_MODE 'x': one of direct, gossipsub"),
    ({"MEDCHAIN_LOG_FORMAT": "xml"}, "environment MEDCHAIN_LOG_FORMAT 'xml': one of"),
])
def test_a_bad_environment_value_is_named_as_the_environment_s(tmp_path: Path, env: dict, message: str) -> None:
    """A bad value from the environment was reported as the configuration file's key, or named
    nothing at all (a review): the operator looked for it in the wrong place."""
    with pytest.raises(ConfigError) as exc:
        _settings(tmp_path, FULL, env=env)
    assert message in str(exc.value) and "node.toml" not in str(exc.value), str(exc.value)


def test_the_command_line_says_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["node", "--config", str(tmp_path / "missing.toml")]) == 2  # not restarted by the service unit
    assert "missing.toml: no such configuration file" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        read_file(tmp_path / "missing.toml")


def test_a_validator_runs_from_a_configuration_file(tmp_path: Path) -> None:
    genesis_port, api, metrics = free_ports(3)
    (home,) = init_home(tmp_path, "medchain-cfg", [f"127.0.0.1:{genesis_port}"], int(time.time() * 1000))
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'home = "{home}"\n[api]\nlisten = "127.0.0.1:{api}"\n[metrics]\nlisten = "127.0.0.1:{metrics}"\n'
                   '[log]\nformat = "json"\n[limits]\ndisk_reserve_mb = 1\nmempool_mb = 10\n')
    log = tmp_path / "node.log"
    with open(log, "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "node.cli", "node", "--config", str(cfg)], stdout=out,
                             stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                st = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{api}/v1/status", timeout=1).read())
                break
            except OSError:
                assert p.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.1)
        assert st["chain_id"] == "medchain-cfg"
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        assert "medchain_block_height" in text and "medchain_p2p_messages_total" in text
        from prometheus_client.parser import text_string_to_metric_families
        pool = {f.name: f.samples[0].value for f in text_string_to_metric_families(text) if f.name.startswith("medchain_mempool")}
        assert pool["medchain_mempool_max_bytes"] == 10 * 2**20  # limits.mempool_mb reached the pool
        reserve = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{api}/v1/status").read())["storage"]
        assert reserve["reserve_bytes"] == 1024 * 1024, reserve
    finally:
        p.terminate()
        assert p.wait(30) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]  # every line JSON
    assert any("stopped cleanly" in rec.get("msg", rec.get("message", "")) for rec in lines), lines[-3:]


def test_the_example_in_deploy_parses() -> None:
    example = Path(__file__).resolve().parents[1] / "deploy" / "node.toml"
    s = resolve(_parser().parse_args(["node", "--config", str(example)]), {})
    assert str(s.home) == "/var/lib/medchain" and s.api_port == 8545 and s.metrics_listen == "127.0.0.1:9615"


def test_the_backlog_bound_reaches_the_validator_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from node.config import max_queue_s
    monkeypatch.delenv("MEDCHAIN_MAX_QUEUE_S", raising=False)
    assert max_queue_s() == 2.0
    monkeypatch.setenv("MEDCHAIN_MAX_QUEUE_S", "0.25")
    assert max_queue_s() == 0.25
    for bad in ("soon", "0", "-1", "inf", "nan"):
        monkeypatch.setenv("MEDCHAIN_MAX_QUEUE_S", bad)
        with pytest.raises(ConfigError, match="MEDCHAIN_MAX_QUEUE_S"):
            max_queue_s()


def test_the_pool_s_byte_bound_reaches_the_validator_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from node.config import mempool_bytes
    monkeypatch.delenv("MEDCHAIN_MEMPOOL_MB", raising=False)
    assert mempool_bytes() == 64 * 2**20
    monkeypatch.setenv("MEDCHAIN_MEMPOOL_MB", "9.5")
    assert mempool_bytes() == int(9.5 * 2**20)
    for bad in ("lots", "8.9", "0", "-64"):
        monkeypatch.setenv("MEDCHAIN_MEMPOOL_MB", bad)
        with pytest.raises(ConfigError, match="MEDCHAIN_MEMPOOL_MB"):
            mempool_bytes()


def test_p2p_listen_on_a_network_of_one_changes_nothing(tmp_path: Path) -> None:
    """deploy/node.toml sets p2p.listen; a network of one validator has no p2p entry to rewrite, and
    the node exited with a traceback from split_peer("") (a review)."""
    from node.genesis import Genesis
    from node.run import _listening_on
    (home,) = init_home(tmp_path / "one", "medchain-one", ["127.0.0.1:8545"], 0)
    gen = Genesis.load(home / "genesis.json")
    assert gen.validators[0].p2p == "" and _listening_on(gen, 0, "0.0.0.0:9545") is gen
